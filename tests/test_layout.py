"""Package layout (issue 15.1 / 15.2): one `unihope` import namespace, and imports change nothing process-wide."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The design card's top-level folders, installed as unihope.storage / .tasks / .flows / .model.
FOLDER_NAMES = ("storage", "tasks", "flows", "unihope_model")


def test_wheel_installs_only_the_unihope_namespace(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    source = tmp_path / "src"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        path = REPO / name
        if path.is_symlink():
            (source / name).symlink_to(path.readlink())
        else:
            shutil.copy2(path, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert all(name == "unihope" or name.startswith("unihope_datagen-") for name in top_level), top_level
    for module in ("unihope/storage/schema.py", "unihope/tasks/annotate.py", "unihope/flows/build.py",
                   "unihope/model/model.py", "unihope/cli.py", "unihope/configs/demo.yaml",
                   "unihope/configs/train_demo.yaml"):
        assert module in names, module


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def test_no_module_imports_a_folder_by_its_top_level_name():
    # Importing `storage.x` beside `unihope.storage.x` would load the module twice (two classes, two caches).
    offenders = []
    for folder in ("unihope", *FOLDER_NAMES, "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            if (REPO / "unihope") in path.parents and path.resolve() != path:
                continue  # the namespace links: their files are scanned under their own folder
            for module in _imported_modules(path):
                if module.split(".")[0] in FOLDER_NAMES:
                    offenders.append(f"{path.relative_to(REPO)}: {module}")
    assert not offenders, offenders


def test_importing_the_flows_leaves_the_environment_alone():
    code = ("import json, os; before = dict(os.environ); import unihope.flows.build, unihope.flows.train, "
            "unihope.flows.deploy, unihope.cli; after = dict(os.environ); "
            "print(json.dumps(sorted(set(after.items()) ^ set(before.items()))))")
    env = {key: value for key, value in __import__("os").environ.items()
           if not key.startswith(("PREFECT_", "DO_NOT_TRACK"))}
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_a_checkout_without_symlinks_fails_at_once_saying_how_to_fix_it(tmp_path):
    """git with core.symlinks=false writes each linked folder (unihope/flows -> ../flows) as a text file
    holding the target: importing the package stops at once with the fix, not with "No module named"."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    package = tmp_path / "unihope"
    shutil.copytree(REPO / "unihope", package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    linked = [path for path in package.iterdir() if path.is_symlink()]
    assert {path.name for path in linked} == {"configs", "flows", "model", "storage", "tasks"}
    for path in linked:  # what git writes without symlink support
        target = os.readlink(path)
        path.unlink()
        path.write_text(target)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    start_s = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "unihope.cli", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - start_s < 10.0  # at once: before any heavy import
    last_line = proc.stderr.strip().splitlines()[-1]
    assert "this checkout has no symlinks" in last_line and "unihope/flows" in last_line
    assert "git config core.symlinks true" in last_line


def test_storage_and_train_export_what_users_need_without_importing_it_early():
    """`unihope.storage` and `unihope.train` name their public functions; importing the schema loads no torch or zarr."""
    import subprocess
    import sys

    import unihope.storage as storage
    import unihope.train as train
    from unihope.storage import PairedDataset, make_loader, open_dataset, write_shard
    from unihope.train import EvalReport, load_train_config, run_training_in_runs_dir

    assert {"open_dataset", "PairedDataset", "make_loader", "write_shard", "finalize", "SCHEMA"} <= set(storage.__all__)
    assert {"run_training_in_runs_dir", "load_train_config", "run_evaluation_from_cli", "train"} <= set(train.__all__)
    for module in (storage, train):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert open_dataset.__module__ == "unihope.storage.view" and PairedDataset.__module__ == "unihope.storage.paired"
    assert callable(make_loader) and callable(write_shard) and isinstance(EvalReport, type) and callable(load_train_config)
    assert callable(run_training_in_runs_dir)
    with pytest.raises(AttributeError, match="no attribute 'open_datset'"):
        storage.open_datset  # noqa: B018
    code = ("import sys, unihope.storage.schema, unihope.train.weights; "
            "print(sorted(m for m in ('torch', 'zarr', 'unihope.storage.view', 'unihope.train.loop') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "['torch']", out  # train.weights loads model tensors (torch), nothing of the readers or the loop
