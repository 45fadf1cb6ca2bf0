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
NON_ITEM_TASKS = {"claim_output", "plan_shards_task", "train_and_evaluate"}  # train: its run folder resumes it
SKELETON = "run_stage_item"
MAX_TASK_STATEMENTS = 3
CONTROL_FLOW = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match,
                ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)


def _is_task_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "task") or \
        (isinstance(target, ast.Attribute) and target.attr == "task")


def _called_name(node: ast.expr) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def test_every_task_is_a_stage_call_plus_options():
    """Every `@task` in tasks/ is a stage call plus options; the skeleton is written once.

    The rule, per task function (its docstring aside):
    - at most 3 statements, straight-line: no if / loop / try / with / nested def / import anywhere in it,
      so reuse, fault injection, timing, summary and save cannot be written out again in a task;
    - it ends in `return run_stage_item(...)` (the one skeleton: tasks/common.py), or, for the tasks
      that are no work-folder item (claim-output, plan-shards, train), it is that single `return <plain call>`.
    Where the work runs (render thread, watchdog, GPU slot) may be a module-level helper the task binds
    with functools.partial; what the stage computes lives in unihope/buildplan (no Prefect).
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
            if len(body) > MAX_TASK_STATEMENTS:
                offenders.append(f"{where}: {len(body)} statements (> {MAX_TASK_STATEMENTS})")
            nested = [type(n).__name__ for stmt in body for n in ast.walk(stmt) if isinstance(n, CONTROL_FLOW)]
            if nested:
                offenders.append(f"{where}: {sorted(set(nested))} in a task body")
            last = body[-1] if body else None
            if not isinstance(last, ast.Return) or _called_name(last.value) is None:
                offenders.append(f"{where}: does not end in `return <call>`")
            elif func.name in NON_ITEM_TASKS:
                if len(body) != 1:
                    offenders.append(f"{where}: a non-item task is one `return <call>`")
            elif _called_name(last.value) != SKELETON:
                offenders.append(f"{where}: returns {_called_name(last.value)}(...), not {SKELETON}(...)")
    assert found >= {"index_source", "label_grasp_part", "annotate_batch", "deocclude_batch", "pack_shard",
                     "finalize_dataset"} | NON_ITEM_TASKS, found
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
