"""Faults and hostile input (issue 14): pickles that would run code, damaged images, disk full,
symlinked dataset folders, batch-invariant annotation. CLI-level faults are in tests/test_cli.py."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from unihope.hand.convert import load_mano_pickle


# ----------------------------------------------------------------------------------------------
# 1. MANO pickles that would run code
# ----------------------------------------------------------------------------------------------


def _exploit_pickle(module: str, name: str, code_or_arg: str, marker: Path) -> bytes:
    """A protocol-0 pickle calling `module.name(<text>, {})`; the text, when run, creates `marker`."""
    text = code_or_arg.format(marker=str(marker))
    return f"c{module}\n{name}\n(V{text}\n(dtR.".encode()


@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        # numpy.testing's runstring exec()s its first argument: allowed by a "numpy.*" rule
        ("numpy.testing._private.utils", "runstring", "open({marker!r}, 'w').close()"),
        # builtins are partly allowed (set, slice, ...); eval must not be among them
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("__builtin__", "exec", "open({marker!r}, 'w').close()"),
    ],
)
def test_mano_pickle_naming_code_is_refused_before_running(tmp_path: Path, module: str, name: str, code: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "MANO_RIGHT.pkl"
    evil.write_bytes(_exploit_pickle(module, name, code, marker))
    # the payload really runs code under a plain unpickler (so the test would catch a lax allow-list)
    if module.startswith("numpy"):
        pickle.loads(evil.read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing to load {module}\.{name} from a MANO pickle"):
        load_mano_pickle(evil)
    assert not marker.exists()


def test_mano_converter_cli_refuses_exploit_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from unihope.cli import app

    marker = tmp_path / "pwned"
    evil = tmp_path / "MANO_RIGHT.pkl"
    evil.write_bytes(_exploit_pickle("numpy.testing._private.utils", "runstring", "open({marker!r}, 'w').close()", marker))
    result = CliRunner().invoke(app, ["convert-mano", str(evil), str(tmp_path / "out.pkl")])
    assert result.exit_code == 2
    assert "refusing to load numpy.testing._private.utils.runstring" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()
