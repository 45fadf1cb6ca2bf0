"""Layering (issue 15.3 / 15.4): flows only wire tasks, and every task is a stage call plus options.

Checked on the source (AST), so the rules hold for every module, not only the ones a build imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What belongs to entry points (unihope.build_cli, unihope.launch, unihope.prefect_server), never to a flow.
FLOW_FORBIDDEN_IMPORTS = ("typer", "subprocess", "rich", "click", "signal")


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).glob("*.py"))


def _imported_top_level_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_flow_module_imports_cli_process_or_terminal_libraries_or_prints():
    """A flow module reads like the pipeline diagram: no CLI (typer), processes (subprocess), signals,
    terminal output (rich, print): those live in unihope.build_cli / unihope.launch / unihope.prefect_server."""
    offenders = []
    for path in _modules("flows"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in sorted(_imported_top_level_names(tree) & set(FLOW_FORBIDDEN_IMPORTS)):
            offenders.append(f"{path.name} imports {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.name}:{node.lineno} calls print")
            if isinstance(node, ast.Attribute) and node.attr in ("_exit", "exit") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("os", "sys"):
                offenders.append(f"{path.name}:{node.lineno} exits the process")
    assert len(_modules("flows")) >= 4  # build, train, deploy, runners: the scan saw them
    assert not offenders, offenders


# Tasks that are not a work-folder item: they call one plain function and reuse nothing.
NON_ITEM_TASKS = {"claim_output", "plan_shards_task", "train_model", "evaluate_model"}  # their run folder resumes them
BEGIN, FINISH = "begin_item", "finish_item"
MAX_TASK_STATEMENTS = 8
CONTROL_FLOW = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match,
                ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Lambda)


def _is_task_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "task") or \
        (isinstance(target, ast.Attribute) and target.attr == "task")


def _called_name(node: ast.expr) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _is_reuse_check(stmt: ast.stmt) -> bool:
    """`if (x := <reuse call>(...)) is not None: return x`: the one `if` a task body may hold."""
    test = stmt.test if isinstance(stmt, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.NamedExpr)
            and _called_name(test.left.value) is not None and _called_name(test.left.value).startswith("reuse")
            and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)
            and not stmt.orelse and len(stmt.body) == 1 and isinstance(stmt.body[0], ast.Return)
            and isinstance(stmt.body[0].value, ast.Name) and stmt.body[0].value.id == test.left.target.id)


def _top_level_calls(stmt: ast.stmt) -> list[str]:
    """Names of the calls a straight-line statement makes, outermost first."""
    return [name for node in ast.walk(stmt) if (name := _called_name(node)) is not None]


def test_every_task_reads_straight_through():
    """Every `@task` in tasks/ reads top to bottom: reuse check -> load -> stage function -> save.

    The rule, per task function (its docstring aside):
    - straight-line: no loop / try / with / nested def / lambda / import anywhere in it, and one `if`,
      the reuse check `if (reused := reuse_...(...)) is not None: return reused`, which comes before any work;
    - then, in this order: `begin_item(...)` (fault injection, start time), a `load_*` call (the item's
      inputs), the stage call, a `save_*` call (summary sidecar, then the output written last), and it
      ends in `return finish_item(...)` (the execution log), at most 8 statements in all;
    - the tasks that are no work-folder item (claim-output, plan-shards, train) are a single `return <plain call>`.
    Load and save helpers are plain functions in unihope/buildplan that never call back into tasks/.
    """
    found, offenders = set(), []
    for path in _modules("tasks"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            if not any(_is_task_decorator(d) for d in func.decorator_list):
                continue
            found.add(func.name)
            body = func.body[1:] if ast.get_docstring(func) is not None else func.body
            where = f"{path.name}:{func.name}"
            last = body[-1] if body else None
            if not isinstance(last, ast.Return) or _called_name(last.value) is None:
                offenders.append(f"{where}: does not end in `return <call>`")
                continue
            if func.name in NON_ITEM_TASKS:
                if len(body) != 1:
                    offenders.append(f"{where}: a non-item task is one `return <call>`")
                continue
            if len(body) > MAX_TASK_STATEMENTS:
                offenders.append(f"{where}: {len(body)} statements (> {MAX_TASK_STATEMENTS})")
            checks = [i for i, stmt in enumerate(body) if _is_reuse_check(stmt)]
            nested = [type(n).__name__ for i, stmt in enumerate(body) if i not in checks for n in ast.walk(stmt)
                      if isinstance(n, CONTROL_FLOW)]
            if len(checks) != 1 or nested:
                offenders.append(f"{where}: {len(checks)} reuse checks, {sorted(set(nested))} besides")
                continue
            calls = [(i, name) for i, stmt in enumerate(body) if i not in checks for name in _top_level_calls(stmt)]
            begin = [i for i, name in calls if name == BEGIN]
            loads = [i for i, name in calls if name.startswith("load_")]
            saves = [i for i, name in calls if name.startswith("save_")]
            if _called_name(last.value) != FINISH:
                offenders.append(f"{where}: returns {_called_name(last.value)}(...), not {FINISH}(...)")
            elif len(begin) != 1 or not loads or not saves:
                offenders.append(f"{where}: needs one {BEGIN}, a load_* and a save_* call")
            elif not (checks[0] < begin[0] < min(loads) and max(loads) < min(saves) - 1):
                offenders.append(f"{where}: not reuse check -> {BEGIN} -> load -> stage -> save -> {FINISH}")
    assert found >= {"index_source", "label_grasp_part", "annotate_batch", "deocclude_batch", "pack_shard",
                     "finalize_dataset"} | NON_ITEM_TASKS, found
    assert not offenders, offenders


def test_buildplan_never_calls_back_into_tasks():
    """Load / save helpers take values, not callables: no parameter of a buildplan function is a Callable."""
    offenders = []
    for path in sorted((REPO / "unihope" / "buildplan").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for arg in [*func.args.args, *func.args.kwonlyargs]:
                if arg.annotation is not None and "Callable" in ast.unparse(arg.annotation):
                    offenders.append(f"{path.name}:{func.name}({arg.arg})")
    assert not offenders, offenders


def test_build_planning_is_plain_python_outside_tasks():
    """Planning, hashing and work files are unihope.buildplan (importable without Prefect); tasks/ has no work.py."""
    import subprocess
    import sys

    assert not (REPO / "tasks" / "work.py").exists()
    modules = sorted(f"unihope.buildplan.{p.stem}" for p in (REPO / "unihope" / "buildplan").glob("*.py")
                     if p.stem != "__init__")
    assert {"unihope.buildplan.hashes", "unihope.buildplan.plan", "unihope.buildplan.workfiles"} <= set(modules)
    code = f"import sys; import {', '.join(modules)}; print('prefect' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.stdout.strip() == "False"


# The one owner of per-process state in a build worker (render thread, renderers, de-occluders, GPU slots).
RESOURCES_MODULE = "resources.py"


def _is_empty_container(node: ast.expr | None) -> bool:
    return (isinstance(node, (ast.Dict, ast.List, ast.Set)) and not getattr(node, "keys", getattr(node, "elts", None))) \
        or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("dict", "list", "set")
            and not node.args)


def test_stages_and_tasks_keep_no_hidden_process_state():
    """No module-level cache (an empty dict / list / set filled at run time) and no `global` rebinding in the
    stage modules or tasks/: what a worker reuses lives in one `WorkerResources` (tasks/resources.py) that
    the tasks pass into the stages (`annotate_frames(..., resources=...)`, the de-occluder, the device slot).
    """
    paths = [*sorted((REPO / "unihope" / "render").glob("*.py")), *sorted((REPO / "unihope" / "deocclude").glob("*.py")),
             REPO / "unihope" / "grasp.py", REPO / "unihope" / "crop.py",
             *[p for p in _modules("tasks") if p.name != RESOURCES_MODULE]]
    offenders = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt in tree.body:
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
            if _is_empty_container(value):
                offenders.append(f"{path.name}:{stmt.lineno} module-level container {ast.unparse(stmt)[:60]!r}")
        offenders += [f"{path.name}:{node.lineno} global {', '.join(node.names)}"
                      for node in ast.walk(tree) if isinstance(node, ast.Global)]
    assert not offenders, offenders


def _calls_of(name: str, paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(tree)
                  if _called_name(node) == name]
    return found


def test_the_build_lock_has_one_owner():
    """Every build takes its output's lock in one place: `hold_output` (buildplan/output_lock.py) calls
    `build_lock`, and only `build_steps` (flows/build.py) calls `hold_output`; the CLI only asks `output_busy`.
    No registry makes a second hold in the same process pass silently (tests/test_faults.py checks that)."""
    symlinked = {"storage", "flows", "tasks"}  # unihope/<these> point at the top-level folders, scanned once
    code = [p for folder in ("unihope", "flows", "tasks", "storage", "bench") for p in sorted((REPO / folder).rglob("*.py"))
            if not (folder == "unihope" and p.relative_to(REPO / "unihope").parts[0] in symlinked)
            and p != REPO / "storage" / "lock.py"]
    assert len(code) > 100  # the scan saw the code base
    assert [c.split(":")[0] for c in _calls_of("build_lock", code)] == ["unihope/buildplan/output_lock.py"]
    assert [c.split(":")[0] for c in _calls_of("hold_output", code)] == ["flows/build.py"]
    lock_source = (REPO / "storage" / "lock.py").read_text()
    tree = ast.parse(lock_source)
    module_containers = [ast.unparse(stmt)[:60] for stmt in tree.body
                         if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and _is_empty_container(stmt.value)]
    assert module_containers == [], f"storage/lock.py keeps process state: {module_containers}"


def test_the_synthetic_source_keeps_no_renderer_cache():
    """The generator renders with the caller's `SceneRenderers` (a build worker's `WorkerResources` owns one):
    no module-level cache in the synthetic source's modules."""
    paths = [*sorted((REPO / "unihope" / "sources" / "synthetic").glob("*.py")),
             REPO / "unihope" / "sources" / "synthetic_render.py"]
    offenders = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.name}:{stmt.lineno}" for stmt in tree.body
                      if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and _is_empty_container(stmt.value)]
        offenders += [f"{path.name}:{node.lineno} global" for node in ast.walk(tree) if isinstance(node, ast.Global)]
    assert len(paths) >= 9 and not offenders, offenders
