"""A real Prefect server: `unihope deploy` serves both deployments; a build run triggers a training run."""

from __future__ import annotations

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

pytestmark = pytest.mark.slow

TINY_TRAIN = {
    "name": "triggered", "device": "cpu", "cpu_threads": 1,
    "model": {"depth": 18, "width_multiplier": 0.125, "norm": "group", "input_size_px": 32, "fpn_channels": 16,
              "roi_size": 8, "num_heads": 4, "mano_hidden": [64, 32], "num_hand_res_blocks": 2,
              "switcher_channels": 8, "switcher_hidden": 32},
    "optim": {"batch_size": 4, "learning_rate": 1e-3, "epochs": 1, "max_steps": 2},
    "data": {"val_fraction": 0.5},
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


def _check_deploy_build_and_trigger(api_url: str, out: Path, train_out: Path, deploy_log: Path) -> None:
    """Steps 2-4 against the server at `api_url` (this process talks to it too)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        _check_against_current_api(out, train_out, deploy_log)


def _check_against_current_api(out: Path, train_out: Path, deploy_log: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.deployments import run_deployment

    def deployments() -> dict | None:
        with get_client(sync_client=True) as client:
            found = {d.name: d for d in client.read_deployments()}
        return found if {"build-dataset", "train"} <= set(found) else None

    found = _wait_for(deployments, 180, "both deployments", [deploy_log])
    assert found["build-dataset"].schedules and found["build-dataset"].schedules[0].schedule.cron == "0 3 * * *"
    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 1

    # 3. Run the build by hand, into another folder than the deployment's default (the trigger must
    #    pass this run's `out` on, not the train deployment's default data_url).
    build_run = run_deployment("scheduled-build/build-dataset", parameters={"out": str(out)}, timeout=RUN_TIMEOUT_S)
    assert build_run.state.is_completed(), f"{build_run.state}\n{deploy_log.read_text()[-4000:]}"
    assert (out / "manifest.json").is_file()

    # 4. The trigger starts a training run on the dataset the build wrote; it completes.
    def train_runs():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train"])))
        return runs or None

    runs = _wait_for(train_runs, 60, "a triggered training run", [deploy_log])
    assert len(runs) == 1 and runs[0].parameters["data_url"] == str(out)
    assert runs[0].created_by is not None and runs[0].created_by.type == "AUTOMATION"

    def finished():
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(runs[0].id)
        return run if run.state and run.state.is_final() else None

    train_run = _wait_for(finished, RUN_TIMEOUT_S, "the training run to finish", [deploy_log])
    assert train_run.state.is_completed(), f"{train_run.state}\n{deploy_log.read_text()[-4000:]}"
    assert (train_out / "metrics.json").is_file()


def test_build_deployment_run_triggers_training(tmp_path, synthetic_dexycb):
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

        # 2. `unihope deploy`: the build deployment (cron) and the triggered train deployment.
        build_cfg = {
            "name": "served", "source": {"kind": "dexycb", "root": str(synthetic_dexycb)},
            "crop": {"size_px": 64}, "storage": {"shard_size": 16},
            "flow": {"frames_per_task": 24, "retries": 1, "retry_delay_s": 0.0},
        }
        (tmp_path / "build.yaml").write_text(yaml.safe_dump(build_cfg))
        (tmp_path / "train.yaml").write_text(yaml.safe_dump(TINY_TRAIN))
        default_out, out, train_out = tmp_path / "default-data", tmp_path / "data", tmp_path / "runs"
        client_env = {**env, "PREFECT_API_URL": api_url}
        deploy = subprocess.Popen(
            [sys.executable, "-m", "unihope.cli", "deploy", "--config", str(tmp_path / "build.yaml"), "--out",
             str(default_out), "--cron", "0 3 * * *", "--train-config", str(tmp_path / "train.yaml"), "--train-out", str(train_out)],
            cwd=REPO, env=client_env, stdout=open(deploy_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

        _check_deploy_build_and_trigger(api_url, out, train_out, deploy_log)
    finally:
        if deploy is not None:
            _stop(deploy)
        _stop(server)
