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
