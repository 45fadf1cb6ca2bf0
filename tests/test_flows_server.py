"""A real Prefect server: `unihope deploy` serves both deployments; each build run triggers a training run
of its own (one run folder per dataset version), and `unihope build --train` keys its runs the same way."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 420
FRAMES_PER_SEQUENCE = 24  # the fixture's sequences: 12 frames x 2 cameras
MAX_STEPS = 2

pytestmark = pytest.mark.slow

TINY_TRAIN = {
    "name": "triggered", "device": "cpu", "cpu_threads": 1,
    "model": {"depth": 18, "width_multiplier": 0.125, "norm": "group", "input_size_px": 32, "fpn_channels": 16,
              "roi_size": 8, "num_heads": 4, "mano_hidden": [64, 32], "num_hand_res_blocks": 2,
              "switcher_channels": 8, "switcher_hidden": 32},
    "optim": {"batch_size": 4, "learning_rate": 1e-3, "epochs": 1, "max_steps": MAX_STEPS},
    # every sequence trains (the first build has one); evaluation reads the training split
    "data": {"val_fraction": 0.0, "eval_split": "train"},
    "eval_batch_size": 8, "loss_window_steps": 1,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(predicate, timeout_s: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in logs if p.is_file())
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tails}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _check_deploy_build_and_trigger(api_url: str, build_yaml: Path, train_yaml: Path, out: Path, train_out: Path,
                                    deploy_log: Path) -> None:
    """Steps 2-6 against the server at `api_url` (this process talks to it too)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        _check_against_current_api(build_yaml, train_yaml, out, train_out, deploy_log)


def _check_against_current_api(build_yaml: Path, train_yaml: Path, out: Path, train_out: Path, deploy_log: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterName, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId)
    from prefect.deployments import run_deployment

    from unihope.build_cli import run_build_from_cli
    from unihope.run_keys import dataset_version, run_dir_for
    from unihope.train_config import TrainConfig
    from unihope.train.checkpoints import resume_hash

    def deployments() -> dict | None:
        with get_client(sync_client=True) as client:
            found = {d.name: d for d in client.read_deployments()}
        return found if {"build-dataset", "train"} <= set(found) else None

    found = _wait_for(deployments, 180, "both deployments", [deploy_log])
    assert found["build-dataset"].schedules and found["build-dataset"].schedules[0].schedule.cron == "0 3 * * *"
    with get_client(sync_client=True) as client:
        # one gpu slot per GPU in the pool: flow.gpu_concurrency = 2 GPUs
        assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 2
    config_digest = resume_hash(TrainConfig.from_yaml(train_yaml))

    def build_then_triggered_training(num_builds: int) -> tuple[str, dict]:
        """Run the build deployment by hand, into another folder than its default (the trigger must pass
        this run's `out` on); wait for the training it triggers; its version and metrics."""
        build_run = run_deployment("scheduled-build/build-dataset", parameters={"out": str(out)}, timeout=RUN_TIMEOUT_S)
        assert build_run.state.is_completed(), f"{build_run.state}\n{deploy_log.read_text()[-4000:]}"
        version = dataset_version(str(out))
        # the deployment's run shows the build's task graph itself: no parent with the work in a subflow
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[build_run.id])))
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[build_run.id])))
        names = [run.name for run in task_runs]
        for stage in ("index", "grasp-part", "annotate-batch", "deocclude-batch", "pack-shard", "finalize"):
            assert any(name.startswith(stage) for name in names), (stage, names)
        assert children == [], [run.name for run in children]

        def train_runs():
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train"])))
            return runs if len(runs) >= num_builds else None

        runs = _wait_for(train_runs, 60, f"triggered training run {num_builds}", [deploy_log])
        assert len(runs) == num_builds and all(r.parameters["data_url"] == str(out) for r in runs)
        assert all(r.created_by is not None and r.created_by.type == "AUTOMATION" for r in runs)
        newest = max(runs, key=lambda r: r.created)

        def finished():
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(newest.id)
            return run if run.state and run.state.is_final() else None

        train_run = _wait_for(finished, RUN_TIMEOUT_S, f"training run {num_builds} to finish", [deploy_log])
        assert train_run.state.is_completed(), f"{train_run.state}\n{deploy_log.read_text()[-4000:]}"
        run_dir = run_dir_for(train_out, version, config_digest)
        return version, json.loads((run_dir / "metrics.json").read_text())

    # 3. The first night: sequence 0 only; its training runs in the run folder of this version.
    first_version, first = build_then_triggered_training(1)
    assert first["train_steps"] == MAX_STEPS and first["dataset_version"] == first_version

    # 4. The second night into the same `out`, with one more sequence: a new version, trained with its
    #    full budget on the new data (not a resume of the finished first run), the first run kept.
    build_cfg = yaml.safe_load(build_yaml.read_text())
    build_cfg["source"]["max_frames"] = 2 * FRAMES_PER_SEQUENCE
    build_yaml.write_text(yaml.safe_dump(build_cfg))  # scheduled builds read their YAML at run time
    second_version, second = build_then_triggered_training(2)
    assert second_version != first_version
    assert second["train_steps"] == MAX_STEPS and second["dataset_version"] == second_version
    assert second["num_samples"] > first["num_samples"]  # trained and evaluated on the larger build
    assert second["hand_model"]["kind"] == "procedural"
    kept = json.loads((run_dir_for(train_out, first_version, config_digest) / "metrics.json").read_text())
    assert kept == first

    # 5. `unihope build --train` keys its runs the same way. A rebuild with nothing changed keeps the
    #    version (every stage item cached, the same manifest): it lands in the second run's folder,
    #    which is finished, and trains no further steps.
    run_build_from_cli(build_yaml, None, str(out), train=True, train_config_path=train_yaml, train_out=train_out)
    assert dataset_version(str(out)) == second_version
    again = json.loads((run_dir_for(train_out, second_version, config_digest) / "metrics.json").read_text())
    assert again["train_steps"] == MAX_STEPS and again["train_loss_first"] == second["train_loss_first"]

    # 6. A build that rewrites the shards (another shard size: only packing reruns) is a new version:
    #    `--train` trains its full budget in that version's own run folder.
    build_cfg["storage"]["shard_size"] = 12
    build_yaml.write_text(yaml.safe_dump(build_cfg))
    run_build_from_cli(build_yaml, None, str(out), train=True, train_config_path=train_yaml, train_out=train_out)
    third_version = dataset_version(str(out))
    third = json.loads((run_dir_for(train_out, third_version, config_digest) / "metrics.json").read_text())
    assert third_version not in (first_version, second_version)
    assert third["train_steps"] == MAX_STEPS and third["dataset_version"] == third_version
    assert third["num_samples"] == second["num_samples"]
    assert sorted(p.name for p in train_out.iterdir()) == sorted(
        f"{v}-{config_digest}" for v in (first_version, second_version, third_version))


def test_nightly_builds_into_one_out_each_train_their_own_run(tmp_path, synthetic_dexycb):
    # 1. A real server with its own home.
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    env.pop("UNIHOPE_FAIL_ONCE", None)
    server_log, deploy_log = tmp_path / "server.log", tmp_path / "deploy.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=open(server_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deploy = None
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        _wait_for(healthy, SERVER_START_TIMEOUT_S, "the Prefect server", [server_log])

        # 2. `unihope deploy`: the build deployment (cron) and the triggered train deployment; the
        #    first build reads sequence 0 of the fixture (its first 24 frames), two GPUs in the pool.
        build_cfg = {
            "name": "served", "source": {"kind": "dexycb", "root": str(synthetic_dexycb),
                                         "max_frames": FRAMES_PER_SEQUENCE},
            "crop": {"size_px": 64}, "storage": {"shard_size": 16},
            "flow": {"frames_per_task": 24, "retries": 1, "retry_delay_s": 0.0, "gpu_concurrency": 2},
        }
        build_yaml, train_yaml = tmp_path / "build.yaml", tmp_path / "train.yaml"
        build_yaml.write_text(yaml.safe_dump(build_cfg))
        train_yaml.write_text(yaml.safe_dump(TINY_TRAIN))
        default_out, out, train_out = tmp_path / "default-data", tmp_path / "data", tmp_path / "runs"
        client_env = {**env, "PREFECT_API_URL": api_url}
        deploy = subprocess.Popen(
            [sys.executable, "-m", "unihope.cli", "deploy", "--config", str(build_yaml), "--out",
             str(default_out), "--cron", "0 3 * * *", "--train-config", str(train_yaml), "--train-out", str(train_out)],
            cwd=REPO, env=client_env, stdout=open(deploy_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

        _check_deploy_build_and_trigger(api_url, build_yaml, train_yaml, out, train_out, deploy_log)
    finally:
        if deploy is not None:
            _stop(deploy)
        _stop(server)
