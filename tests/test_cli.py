"""The `unihope` command: inspect reports the hand model and renderer; bad input fails before work."""

from __future__ import annotations

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
