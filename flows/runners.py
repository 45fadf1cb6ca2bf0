"""The task runner a build uses (threads, processes, or Dask) and the temporary API server a CLI build starts."""

from __future__ import annotations

import os
import subprocess
import sys

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from unihope.config import FlowConfig

TASK_RUNNERS = ("threads", "processes", "dask")


def make_task_runner(flow_cfg: FlowConfig) -> TaskRunner:
    """Build the runner `flow.task_runner` names, with `flow.max_workers` workers.

    - threads: Prefect's ThreadPoolTaskRunner (one process; rendering and numpy release the GIL
      for most of their time).
    - processes: Prefect's ProcessPoolTaskRunner (one Python per worker; each keeps its own
      renderer and de-occluder).
    - dask: prefect-dask's DaskTaskRunner: a LocalCluster of `max_workers` single-threaded worker
      processes, or the scheduler at `flow.dask_address` (e.g. tcp://10.0.0.5:8786).

    Raises:
        ValueError: for an unknown runner name.
    """
    if flow_cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=flow_cfg.max_workers)
    if flow_cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=flow_cfg.max_workers)
    if flow_cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if flow_cfg.dask_address:
            return DaskTaskRunner(address=flow_cfg.dask_address)
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": flow_cfg.max_workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None,
        })
    raise ValueError(f"flow.task_runner must be one of {TASK_RUNNERS}, got {flow_cfg.task_runner!r}")


# ----------------------------------------------------------------------------------------------
# The build's own temporary Prefect API server
# ----------------------------------------------------------------------------------------------

# Runs in the server process before uvicorn: exit when the build that started it is gone. Linux
# delivers SIGTERM on the parent's death (PR_SET_PDEATHSIG, set by the child itself so no preexec_fn
# runs in a threaded parent); a thread polling the parent pid covers other systems and the window
# before prctl took effect.
_SERVER_WATCHDOG = """
import ctypes, os, signal, sys, threading, time
parent_pid = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
except (OSError, AttributeError):
    pass
def watch():
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
if os.getppid() != parent_pid:
    os._exit(1)
import uvicorn.main
sys.argv[0] = "uvicorn"
uvicorn.main.main()
"""


class OwnedAPIServer(SubprocessASGIServer):
    """Prefect's temporary API server, started so that it never outlives the build.

    Prefect's own ephemeral server runs in the build's process group, so Ctrl-C (SIGINT to the
    terminal's group) kills it under the build, which then retries the dead API for minutes; and a
    SIGKILLed or SIGTERMed build leaves it running (~230 MB). This one runs in its own session
    (the terminal's Ctrl-C does not reach it; the build stops it) and exits when its parent dies.
    """

    _instances: dict = {}  # its own singleton table: never handed out as Prefect's ephemeral server

    def _run_uvicorn_command(self) -> subprocess.Popen:
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        args = [
            sys.executable, "-c", _SERVER_WATCHDOG, str(os.getpid()),
            "--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
        ]
        env = {**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)}
        return subprocess.Popen(args, env=env, start_new_session=True)


def start_owned_api_server() -> OwnedAPIServer:
    """Start (once per process) the build's own API server; see `OwnedAPIServer`."""
    server = OwnedAPIServer()
    server.start()
    return server
