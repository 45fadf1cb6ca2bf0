"""The `unihope` command: inspect reports the hand model and renderer; bad input fails before work."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from typer.testing import CliRunner

from unihope.cli import app

runner = CliRunner()


def test_inspect_names_hand_model_and_renderer():
    result = runner.invoke(app, ["inspect"])
    assert result.exit_code == 0, result.output
    assert "hand model (right): kind=procedural" in result.output
    assert "hand model (left): kind=procedural" in result.output
    assert "num_vertices=778" in result.output
    assert "renderer: pyrender/egl" in result.output and "FAILED" not in result.output


def test_build_with_bad_source_fails_with_actionable_message(tmp_path):
    result = runner.invoke(app, ["build", "--config", "configs/demo.yaml", "--source", "dexycb", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "dexycb needs a path" in result.output
    assert not (tmp_path / "d").exists()


def test_build_with_invalid_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grasp:\n  rte_threshold_m: -1\n")
    result = runner.invoke(app, ["build", "--config", str(bad), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "grasp.rte_threshold_m" in result.output
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# Validation before work (issue 14, item 3): one line, non-zero exit, no Prefect server started
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def no_server(monkeypatch):
    """Fail the test loudly if a build got as far as starting a Prefect API server or the flow."""
    import flows.build
    from prefect.server.api.server import SubprocessASGIServer

    started: list[str] = []
    monkeypatch.setattr(SubprocessASGIServer, "start", lambda self, timeout=None: started.append("server"))
    monkeypatch.setattr(flows.build, "run_build", lambda *args, **kwargs: started.append("flow"))
    yield started
    assert started == [], f"a build that should fail in pre-flight started {started}"


def _assert_one_line_failure(result, expected: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expected in lines[0], result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("render:\n  occlusion_bin_edges: [0.5, 0.25, 0.75]\n", "render.occlusion_bin_edges=[0.5, 0.25, 0.75] must be strictly increasing"),
        ("render:\n  occlusion_bin_edges: [0.25, 0.5, 1.5]\n", "inside (0, 1)"),
        ("crop:\n  size_px: 130\n", "crop.size_px=130 must be a multiple of render.feature_downsample=4"),
        ("source:\n  split: s9_train\n", "source.split='s9_train' is not a dexycb split"),
    ],
)
def test_build_rejects_bad_config_in_one_line(tmp_path, no_server, yaml_text, expected):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    result = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "d")])
    _assert_one_line_failure(result, expected)
    assert not (tmp_path / "d").exists()


def test_build_rejects_unknown_split_for_the_source_override(tmp_path, no_server):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("source:\n  split: s0_train\n")
    (tmp_path / "ho3d").mkdir()
    result = runner.invoke(app, ["build", "--config", str(cfg), "--source", f"ho3d:{tmp_path / 'ho3d'}",
                                 "--out", str(tmp_path / "d")])
    _assert_one_line_failure(result, "source.split='s0_train' is not a ho3d split; valid splits: all, train, evaluation")


def test_build_rejects_bad_source_and_output_folders_in_one_line(tmp_path, no_server):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = str(tmp_path / "d")
    cases = [
        (["--source", f"dexycb:{tmp_path / 'missing'}", "--out", out], "does not exist"),
        (["--source", f"ho3d:{a_file}", "--out", out], f"source root {a_file} is not a folder"),
        (["--source", f"dexycb:{empty}", "--out", out], f"source dexycb:{empty} (split 'all') lists no frames"),
        (["--source", f"ho3d:{empty}", "--out", out], "lists no frames"),
        (["--out", str(a_file)], f"--out {a_file} exists and is not a folder"),
        # root ignores permission bits, so "cannot create the folder" is a path under a file
        (["--out", str(a_file / "d")], f"--out {a_file / 'd'} is not writable"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, ["build", "--config", "configs/demo.yaml", *args])
        _assert_one_line_failure(result, expected)


def test_build_rejects_read_only_filesystem_in_one_line(tmp_path, no_server, monkeypatch):
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro_dir)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:  # no mount permission here: simulate the kernel's answer for a read-only filesystem
            import unihope.preflight

            def read_only_mkstemp(*args, **kwargs):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(ro_dir))

            monkeypatch.setattr(unihope.preflight.tempfile, "mkstemp", read_only_mkstemp)
        result = runner.invoke(app, ["build", "--config", "configs/demo.yaml", "--out", str(ro_dir)])
        _assert_one_line_failure(result, f"--out {ro_dir} is not writable: the filesystem is read-only")
    finally:
        if mounted:
            subprocess.run(["umount", str(ro_dir)], check=True)


def test_build_refuses_a_mano_pickle_that_names_code_before_work(tmp_path, no_server):
    marker = tmp_path / "pwned"
    mano_dir = tmp_path / "mano"
    mano_dir.mkdir()
    (mano_dir / "MANO_RIGHT.pkl").write_bytes(
        f"cnumpy.testing._private.utils\nrunstring\n(Vopen({str(marker)!r}, 'w').close()\n(dtR.".encode())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"hand:\n  mano_dir: {mano_dir}\n  cache_dir: {tmp_path / 'cache'}\n")
    result = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "d")])
    _assert_one_line_failure(result, "hand.mano_dir: refusing to load numpy.testing._private.utils.runstring")
    assert not marker.exists()
