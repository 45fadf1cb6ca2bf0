"""Layering (issue 15.2 / 15.8): imports point down the layer map, and every module says its one job.

The map is the one docs/ARCHITECTURE.md draws: a module may import modules of its own layer or of a
lower one, never of a higher one. Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The real folders and the names their modules import as (unihope/storage etc. are links to them).
FOLDERS = {"unihope": "unihope", "storage": "unihope.storage", "tasks": "unihope.tasks",
           "flows": "unihope.flows", "unihope_model": "unihope.model"}

# Lowest first. A module belongs to the layer of the longest prefix that names it (a prefix matches
# the module itself and everything under it), so `unihope.storage.schema` is a foundation module
# while the rest of `unihope.storage` is the storage layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Records, configs and the two conventions every layer shares: what the others are written in.
    ("foundation", ("unihope.config", "unihope.train_config", "unihope.overrides",
                    "unihope.storage.schema", "unihope.storage.io",
                    "unihope.render.camera", "unihope.render.gl", "unihope.seeding", "unihope.rotations")),
    ("hand", ("unihope.hand", "unihope.hand_identity")),
    ("model", ("unihope.model", "unihope.train.spec", "unihope.train.weights")),  # spec: config -> network + hand layer, no data
    ("sources", ("unihope.sources",)),
    ("stages", ("unihope.grasp", "unihope.crop", "unihope.render", "unihope.image_check", "unihope.deocclude")),
    ("storage", ("unihope.storage", "unihope.api")),  # api: load_dataset / open_xarray over the storage readers
    ("training", ("unihope.train", "unihope.checkpoint_config", "unihope.distributed", "unihope.metrics",
                  "unihope.run_keys", "unihope.tip_convention")),
    ("build", ("unihope.preflight", "unihope.progress", "unihope.report", "unihope.export_unihope", "unihope.buildplan",
               "unihope.unchanged_build")),
    ("tasks", ("unihope.tasks", "unihope.prefect_env", "unihope.prefect_server")),
    ("flows", ("unihope.flows",)),
    ("cli", ("unihope.cli", "unihope.build_cli", "unihope.launch", "unihope.demo", "unihope.inspect_env", "unihope.rich_progress")),
)
ROOT_PACKAGE = "unihope"  # its __init__ holds the docstring, the version, the symlink check and the public API's names
# ...which it imports on first use only (PEP 562 __getattr__), from this module and no other
ROOT_IMPORTS = ("unihope.api",)
PREFECT_FREE_BELOW = "tasks"  # stage code never imports Prefect: only tasks/ and flows/ (and the CLI through them)

# Known upward imports waiting for a move another branch makes; each entry must still exist (so the
# list only shrinks) and names where the code is going.
PENDING: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def project_modules() -> dict[str, Path]:
    """Every project module by its import name -> its file in the real folder."""
    modules = {}
    for folder, prefix in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if folder == "unihope" and parts[0] in ("storage", "tasks", "flows", "model"):
                continue  # the links: scanned under their real folder
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The project modules (and `prefect`) that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from unihope import metrics` imports the module unihope.metrics
                submodule = f"{target}.{alias.name}"
                found.append(Import(name, submodule if submodule in modules else target, node.lineno))
    return [i for i in found if i.imported.split(".")[0] in ("unihope", "prefect")]


def layer_of(module: str) -> int | None:
    """The rank of the layer whose longest prefix names `module`; None when no prefix does."""
    best: tuple[int, int] | None = None  # (prefix length, rank)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return None if best is None else best[1]


def rank_of(layer_name: str) -> int:
    return [name for name, _ in LAYERS].index(layer_name)


def all_imports() -> list[Import]:
    """Each (importer, imported) pair once, at its first line."""
    modules = project_modules()
    first: dict[tuple[str, str], Import] = {}
    for name, path in modules.items():
        for i in imports_of(name, path, modules):
            first.setdefault((i.importer, i.imported), i)
    return list(first.values())


def test_every_module_has_a_layer():
    unplaced = [m for m in project_modules() if m != ROOT_PACKAGE and layer_of(m) is None]
    assert not unplaced, f"add these modules to LAYERS (and the picture in docs/ARCHITECTURE.md): {unplaced}"


def test_imports_point_down_the_layers():
    upward = []
    for i in all_imports():
        if i.importer == ROOT_PACKAGE:
            assert i.imported in ROOT_IMPORTS, f"unihope/__init__.py line {i.line} imports {i.imported}"
            continue
        if i.imported.startswith("prefect") or i.imported == ROOT_PACKAGE or (i.importer, i.imported) in PENDING:
            continue
        here, there = layer_of(i.importer), layer_of(i.imported)
        assert there is not None, f"{i.importer}:{i.line} imports {i.imported}, which is no project module"
        if there > here:
            upward.append(f"{i.importer} ({LAYERS[here][0]}) line {i.line} imports {i.imported} ({LAYERS[there][0]})")
    assert not upward, "\n".join(upward)


def test_pending_upward_imports_still_exist():
    # When a move lands, its entry goes: the list never hides an import that is gone.
    present = {(i.importer, i.imported) for i in all_imports()}
    assert set(PENDING) <= present, set(PENDING) - present


def test_no_prefect_below_the_tasks_layer():
    offenders = [f"{i.importer} line {i.line}" for i in all_imports()
                 if i.imported.split(".")[0] == "prefect" and layer_of(i.importer) < rank_of(PREFECT_FREE_BELOW)]
    assert not offenders, offenders


def test_layer_map_names_only_real_modules():
    modules = project_modules()
    stale = [p for _, prefixes in LAYERS for p in prefixes
             if not any(m == p or m.startswith(p + ".") for m in modules)]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_the_architecture_doc_lists_every_layer():
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for name, prefixes in LAYERS:
        assert f"{name}:" in doc, f"docs/ARCHITECTURE.md's layer picture has no {name!r} layer"
        for prefix in prefixes:
            assert f"`{prefix}`" in doc or f"`{prefix.removeprefix('unihope.')}`" in doc, prefix


def test_every_module_says_its_job_in_a_docstring():
    missing = [f"{p.relative_to(REPO)}" for name, p in project_modules().items()
               if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert not missing, f"modules without a docstring (first line: the module's one job): {missing}"
