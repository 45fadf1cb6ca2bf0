"""The `unihope` command: inspect reports the hand model and renderer; bad input fails before work."""

from __future__ import annotations

import errno
import os
import re
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
    import unihope.launch
    from prefect.server.api.server import SubprocessASGIServer

    started: list[str] = []
    monkeypatch.setattr(SubprocessASGIServer, "start", lambda self, timeout=None: started.append("server"))
    monkeypatch.setattr(unihope.launch, "run_build", lambda *args, **kwargs: started.append("flow"))
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


# ----------------------------------------------------------------------------------------------
# CLI conventions (issue 15, item 7): --version, --set, choices, one-line errors, eval's own config
# ----------------------------------------------------------------------------------------------


def test_version_prints_the_package_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"unihope {version('unihope-datagen')}"


def test_build_set_override_lands_in_the_resolved_config(tmp_path, no_server, monkeypatch):
    import unihope.preflight

    seen = []

    def stop_after_resolving(cfg, *args, **kwargs):  # pre-flight sees the resolved config; stop there
        seen.append(cfg)
        raise unihope.preflight.PreflightError("stopped by the test")

    monkeypatch.setattr(unihope.preflight, "check_build", stop_after_resolving)
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "d"), "--set", "grasp.rte_threshold_m=0.03",
                                 "--set", "flow.task_runner=processes", "--set", "render.occlusion_bin_edges=[0.2, 0.4, 0.8]"])
    _assert_one_line_failure(result, "stopped by the test")
    (cfg,) = seen
    assert cfg.grasp.rte_threshold_m == 0.03 and cfg.flow.task_runner == "processes"
    assert tuple(cfg.render.occlusion_bin_edges) == (0.2, 0.4, 0.8)
    assert cfg.crop == type(cfg.crop)()  # untouched sections keep the config file's values (demo: defaults)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("grasp.rte_treshold_m=0.03", "unknown key 'grasp.rte_treshold_m' (fields of grasp:"),
        ("grap.rte_threshold_m=0.03", "unknown key 'grap'"),
        ("grasp.rte_threshold_m=-1", "grasp.rte_threshold_m: Input should be greater than 0"),
        ("grasp.rte_threshold_m=abc", "grasp.rte_threshold_m: Input should be a valid number"),
        ("flow.task_runner=bogus", "flow.task_runner: Input should be 'threads', 'processes' or 'dask'"),
        ("render.occlusion_bin_edges=[0.5, 0.25, 0.75]", "must be strictly increasing"),
        ("grasp", "expected key=value"),
    ],
)
def test_build_refuses_a_bad_set_override_in_one_line_before_work(tmp_path, no_server, override, expected):
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "d"), "--set", override])
    _assert_one_line_failure(result, expected)
    assert not (tmp_path / "d").exists()


def test_train_refuses_a_bad_set_override_before_opening_the_data(tmp_path):
    for override, expected in (("optim.learning_rat=0.1", "unknown key 'optim.learning_rat'"),
                               ("optim.max_steps=many", "optim.max_steps: Input should be a valid integer")):
        result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"),
                                     "--set", override])
        _assert_one_line_failure(result, expected)
    assert not (tmp_path / "run").exists()


def test_enumerated_options_show_and_validate_their_choices(tmp_path):
    for args in (["synth", "--out", str(tmp_path / "s"), "--format", "freihand"],
                 ["inspect", "--render-platform", "wgl"],
                 ["export-unihope", "--data", str(tmp_path), "--out", str(tmp_path / "e"), "--split", "s7"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value" in result.output and "is not one of" in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()
    help_text = runner.invoke(app, ["synth", "--help"]).output
    assert "dexycb|ho3d" in help_text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["synth", "--out", "{tmp}/s", "--sequences", "0"], "synth: invalid configuration: num_sequences"),
        (["report", "--data", "{tmp}/missing", "--out", "{tmp}/r"], "report: no finished dataset at"),
        (["ls-versions", "--data", "{tmp}/missing"], "no dataset at"),
        (["gc", "--data", "{tmp}/missing", "--keep", "0"], "gc: keep must be >= 1"),
        (["deploy", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/d"], "deploy: config file not found"),
        (["convert-mano", "{tmp}/missing.pkl", "{tmp}/out.pkl"], "convert-mano:"),
        (["eval", "--checkpoint", "{tmp}/missing.safetensors", "--data", "{tmp}/d", "--out", "{tmp}/e"],
         "checkpoint not found"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, expected):
    result = runner.invoke(app, [arg.format(tmp=tmp_path) for arg in args])
    _assert_one_line_failure(result, expected)


def test_eval_without_config_uses_the_checkpoint_config(tmp_path, monkeypatch):
    import torch

    import unihope.train.run as train_run
    from unihope.train.checkpoints import TrainState, resume_hash, save_checkpoint
    from unihope.train.spec import build_hand_layer, build_model
    from unihope.train_config import TrainConfig

    cfg = TrainConfig.from_yaml("name: from-checkpoint\ndevice: cpu\n"
                                "model: {depth: 18, width_multiplier: 0.25, norm: group, input_size_px: 64, "
                                "fpn_channels: 32, roi_size: 8, num_heads: 4, mano_hidden: [64, 32], "
                                "num_hand_res_blocks: 2, switcher_channels: 8, switcher_hidden: 16}\n"
                                "optim: {max_steps: 7}\n")
    model = build_model(cfg, build_hand_layer())
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001.safetensors", model,
                           torch.optim.Adam(model.parameters(), 1e-3),
                           TrainState(step=1, epoch=0, config_hash=resume_hash(cfg)), None, cfg)
    seen = []

    def stop_at_the_hand_model(cfg, data_url, **kwargs):  # the first step that needs the data: stop there
        seen.append(cfg)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(train_run, "resolve_hand_model", stop_at_the_hand_model)
    result = runner.invoke(app, ["eval", "--checkpoint", str(path), "--data", str(tmp_path / "d"),
                                 "--out", str(tmp_path / "e")])
    _assert_one_line_failure(result, "stopped by the test")
    assert seen == [cfg]
    # with --config the file wins over the checkpoint's record
    other = tmp_path / "other.yaml"
    other.write_text("name: from-file\n")
    runner.invoke(app, ["eval", "--checkpoint", str(path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "e"),
                        "--config", str(other)])
    assert seen[-1].name == "from-file"


def test_progress_observers_and_the_terminal_display_follow_every_update():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from unihope.progress import BuildProgress, add_display, remove_display
    from unihope.rich_progress import RichStageDisplay, is_interactive, terminal_progress

    seen, lines = [], []
    bars = Progress(console=Console(file=io.StringIO()))
    display = RichStageDisplay(bars)
    add_display(display)
    try:
        progress = BuildProgress(emit=lines.append, min_interval_s=1e9, clock=lambda: 1.0,
                                 observers=(lambda *update: seen.append(update),))
        progress.add_stage("annotate", 12)
        progress.advance("annotate", 8)  # throttled: no line, but observers see it
        progress.advance("annotate", 4)
    finally:
        remove_display(display)
    assert seen == [("annotate", 0, 12), ("annotate", 8, 12), ("annotate", 12, 12)]
    assert len(lines) == 2  # the first update and the completion
    (task,) = bars.tasks
    assert (task.description, task.completed, task.total) == ("annotate", 12, 12)
    # not a terminal (CliRunner, CI, a pipe): no display is registered, plain lines only
    assert not is_interactive(io.StringIO())
    with terminal_progress(enabled=False) as none:
        assert none is None


def test_cli_forwards_stage_loggers_to_prefect_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_LOGGING_EXTRA_LOGGERS", raising=False)
    runner.invoke(app, ["ls-versions", "--data", str(tmp_path / "missing")])
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == "unihope"
    monkeypatch.setenv("PREFECT_LOGGING_EXTRA_LOGGERS", "mine")
    runner.invoke(app, ["ls-versions", "--data", str(tmp_path / "missing")])
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == "mine"


def test_cli_conventions_short_help_switches_without_type_and_typed_values():
    for args in (["-h"], ["build", "-h"], ["gc", "-h"]):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Usage:" in result.output, (args, result.output)
    build_help = runner.invoke(app, ["build", "-h"], env={"COLUMNS": "200"}).output
    assert "<bool>" not in build_help and "<list[str]>" not in build_help
    assert re.search(r"--train\s+Train on the dataset", build_help)  # a switch: its name, no value
    assert re.search(r"--set\s+KEY=VALUE", build_help) and re.search(r"--out\s+<str>", build_help)
    assert "--dry-run" in runner.invoke(app, ["gc", "-h"], env={"COLUMNS": "200"}).output


def test_gc_dry_run_lists_what_would_go_and_removes_nothing(tmp_path):
    from storage_fixtures import STORAGE_ATTRS, make_batch
    from unihope.config import StorageConfig
    from unihope.storage.versions import list_versions
    from unihope.storage.writer import finalize, write_shard

    url = str(tmp_path / "ds")
    for build in range(3):  # three versions, each with its own shard folder
        annotated, results = make_batch([f"20200709-subject-01/20200709_1{build:05d}/836212060125/000000"])
        write_shard(url, 0, annotated, results, STORAGE_ATTRS, StorageConfig(shard_size=4))
        finalize(url, STORAGE_ATTRS, [])
    versions = [row.version_id for row in list_versions(url)]  # newest first
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "ds").rglob("*"))
    result = runner.invoke(app, ["gc", "--data", url, "--keep", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would remove 2 version(s) {versions[1:]}" in result.output
    assert result.output.count("  would remove shards/") == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "ds").rglob("*")) == before
    real = runner.invoke(app, ["gc", "--data", url, "--keep", "1"])
    assert "removed 2 version(s)" in real.output and [r.version_id for r in list_versions(url)] == versions[:1]


def test_log_lines_print_above_the_bars_in_a_narrow_terminal(monkeypatch):
    """A handler made before the bars (as Prefect's is) writes through the display, not across the bars."""
    import io
    import logging

    from rich.console import Console

    from unihope.progress import BuildProgress
    from unihope.rich_progress import terminal_progress

    real_stderr, screen = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", real_stderr)
    handler = logging.StreamHandler(real_stderr)  # holds the terminal's stream, like Prefect's console handler
    logger = logging.getLogger("unihope.test_bars")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with terminal_progress(enabled=True, console=Console(file=screen, force_terminal=True, width=40)):
            progress = BuildProgress(emit=logger.warning, min_interval_s=1e9)
            progress.add_stage("annotate", 4)
            progress.advance("annotate", 4)
        assert handler.stream is real_stderr  # given back
    finally:
        logger.removeHandler(handler)
    assert real_stderr.getvalue() == ""  # nothing written under the live display's feet
    drawn = screen.getvalue()
    assert len(re.findall(r"annotate +4/4 +frames 100.0%", drawn)) == 1  # the log line, once, above the bar
    shown = [line.split("\r")[-1] for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn).splitlines() if line.strip()]
    assert shown[-1].startswith("annotate") and "4/4 frames" in shown[-1]  # the bar, last, complete
    assert max(len(line) for line in shown) <= 40  # wrapped to the narrow terminal


def test_an_unchanged_rebuild_says_nothing_to_do(tmp_path, monkeypatch):
    """The build's summary says "nothing to do" exactly when no stage item was computed (executions.jsonl)."""
    from contextlib import nullcontext

    import unihope.launch
    import unihope.prefect_server
    from unihope.buildplan.workfiles import read_executions
    from unihope.report import DatasetSummary

    out = tmp_path / "d"
    summary = DatasetSummary(url=str(out), num_frames_seen=8, num_samples=8, num_pairs_kept=6, skips_by_reason={},
                             skips_by_stage={}, deocclusion_reasons={}, visibility_counts=(8,),
                             occlusion_bin_counts=(0, 0, 8, 0), beta_counts=(0,), version_id="abc123",
                             report_path=str(out / "report" / "index.html"))
    computes = iter([True, False])  # the first build computes an item, the rebuild reuses everything

    def build(cfg, out_url, wait_lock=False):
        if next(computes):
            work = out / "_work"
            work.mkdir(parents=True, exist_ok=True)
            with (work / "executions.jsonl").open("a") as log:
                log.write('{"stage": "annotate", "item": 0, "num_frames": 8}\n')
        return summary

    monkeypatch.setattr(unihope.launch, "run_build", build)
    monkeypatch.setattr(unihope.prefect_server, "own_api_server", nullcontext)
    first = runner.invoke(app, ["build", "--out", str(out)])
    second = runner.invoke(app, ["build", "--out", str(out)])
    assert first.exit_code == second.exit_code == 0, (first.output, second.output)
    assert len(read_executions(out / "_work")) == 1
    assert "nothing to do" not in first.output
    assert second.output.startswith(f"nothing to do: {out} is up to date")
    for output in (first.output, second.output):  # the end summary names the version and the report
        assert f"dataset {out} version abc123: 8 samples" in output and f"report: {out}/report/index.html" in output


def test_artifact_keys_are_per_dataset_and_valid_prefect_keys():
    from unihope.tasks.artifacts import BUILD_SUMMARY_KEY, artifact_key

    a, b = artifact_key(BUILD_SUMMARY_KEY, "/data/night_A/"), artifact_key(BUILD_SUMMARY_KEY, "s3://bucket/night_A")
    assert a.startswith("build-summary-night-a-") and b.startswith("build-summary-night-a-") and a != b
    assert artifact_key(BUILD_SUMMARY_KEY, "/data/night_A") == a  # a trailing slash names the same dataset
    assert all(re.fullmatch(r"[a-z0-9-]+", key) for key in (a, b, artifact_key("train-run", "memory://")))


def test_deploy_set_reaches_both_deployments_and_a_bad_one_fails_before_serving(tmp_path, monkeypatch):
    import unihope.flows.deploy as deploy
    from unihope.demo import DEMO_CONFIG, DEMO_TRAIN_CONFIG

    build, train = deploy.make_deployments(DEMO_CONFIG, str(tmp_path / "d"), None, DEMO_TRAIN_CONFIG, tmp_path / "runs",
                                           overrides=("grasp.rte_threshold_m=0.02",),
                                           train_overrides=("optim.max_steps=3",))
    assert build.parameters["overrides"] == ["grasp.rte_threshold_m=0.02"]
    assert train.parameters["overrides"] == ["optim.max_steps=3"]
    served = []
    monkeypatch.setattr(deploy, "serve", lambda *args, **kwargs: served.append(args))
    monkeypatch.setattr(deploy, "ensure_gpu_concurrency_limit", lambda *args: served.append(args))
    for flag, bad in (("--set", "grasp.rte_threshold=0.02"), ("--train-set", "optim.max_stepz=3")):
        result = runner.invoke(app, ["deploy", "--out", str(tmp_path / "d"), flag, bad])
        _assert_one_line_failure(result, "deploy:")
        assert bad.split("=")[0] in result.output
    assert served == []  # refused before the API was touched


def test_scheduled_build_applies_the_deployment_overrides(tmp_path, monkeypatch):
    import unihope.flows.build as build_flows
    from unihope.demo import DEMO_CONFIG

    built = []
    monkeypatch.setattr(build_flows, "build_steps", lambda config, out, write_report: built.append(config))
    build_flows.scheduled_build.fn(str(DEMO_CONFIG), str(tmp_path / "d"), overrides=["grasp.rte_threshold_m=0.02"])
    assert built[0].grasp.rte_threshold_m == 0.02


_TINY_SYNTHETIC_BUILD = {
    "name": "progress-test",
    "source": {"kind": "synthetic",
               "synthetic": {"format": "dexycb", "num_sequences": 1, "frames_per_sequence": 4, "num_cameras": 1,
                             "seed": 7}},
    "crop": {"size_px": 64}, "deocclusion": {"backend": "render"}, "storage": {"shard_size": 4},
    "flow": {"frames_per_task": 4},
}
BUILD_PHASES = ("index", "synthesize", "grasp", "annotate", "deocclude", "pack")


def test_build_progress_has_a_bar_per_phase_in_a_terminal_and_plain_lines_when_piped(tmp_path):
    """Issue 25.6, through the real CLI: in a (narrow) terminal every phase gets a bar, the index and the
    synthetic source's rendering included; piped, the output is plain lines, each phase's last line once."""
    import pty
    import select
    import sys

    import yaml
    from conftest import build_subprocess_env

    config_path = tmp_path / "build.yaml"
    config_path.write_text(yaml.safe_dump(_TINY_SYNTHETIC_BUILD))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    env = build_subprocess_env(tmp_path, COLUMNS="60")

    def command(out: str) -> list[str]:
        return [sys.executable, "-m", "unihope.cli", "build", "--config", str(config_path), "--out", out]

    # 1. Piped: no terminal control codes, each phase's completion line exactly once.
    piped = subprocess.run(command(str(tmp_path / "piped")), cwd=repo, env=env,
                           capture_output=True, text=True, timeout=600)
    text = piped.stdout + piped.stderr
    assert piped.returncode == 0, text[-3000:]
    assert "\x1b[" not in text and "\r" not in text
    for phase in BUILD_PHASES:
        done = re.findall(rf"{phase} +4/4 +frames 100\.0%", text)
        assert len(done) == 1, (phase, text[-3000:])
    assert re.search(r"synthesize +\d/4 ", text)  # the synthetic source's rendering reports as it goes
    assert text.count("Starting temporary server") <= 1  # the build's own server only

    # 2. In a 60-column terminal (a pty): a bar per phase, each complete, none wider than the terminal.
    leader, follower = pty.openpty()
    with subprocess.Popen(command(str(tmp_path / "tty")), cwd=repo, env=env, stdin=follower,
                          stdout=follower, stderr=follower) as proc:
        os.close(follower)
        chunks = []
        while True:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the build closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    os.close(leader)
    drawn = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, drawn[-3000:]
    screen = _terminal_screen(drawn, width=60)
    log_header = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \| ")
    torn = [line for line in screen if "━" in line and log_header.search(line)]
    assert not torn, torn  # no log line written across a bar
    assert drawn.count("Starting temporary server") <= 1  # a log line from the render thread used to start its own
    # every phase's bar reaches 4/4, within the terminal's width
    bars = [line for line in screen if "━" in line]
    for phase in BUILD_PHASES:
        assert any(line.startswith(f"{phase} ") and "4/4 frames" in line for line in bars), (phase, bars[-8:])
    assert all(len(line) <= 60 for line in bars), bars


def _terminal_screen(raw: str, width: int) -> list[str]:
    """What a terminal `width` columns wide shows after `raw`: text, CR, LF, erase-line and cursor-up are
    applied (what rich's live display uses to redraw its bars); colours and other codes are dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]", raw):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif token.startswith("\x1b["):
            if token == "\x1b[2K":
                lines[row] = []
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
        else:
            if col >= width:  # the terminal wraps
                row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
            lines[row].extend(" " * (col - len(lines[row])))
            if col < len(lines[row]):
                lines[row][col] = token
            else:
                lines[row].append(token)
            col += 1
        while len(lines) <= row:
            lines.append([])
    return [text for text in ("".join(line).rstrip() for line in lines) if text]
