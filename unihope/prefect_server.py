"""The build's own temporary Prefect API server: started so that it never outlives the build.

Outside `flows/` (which only wires tasks) because it starts and stops a process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from functools import lru_cache

from unihope.config import FlowConfig

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


@lru_cache(maxsize=1)
def owned_api_server_class() -> type:
    """`OwnedAPIServer`, made on first use: Prefect's server module takes ~4 s to import, and a build
    that reports to a running server (PREFECT_API_URL) never needs it."""
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

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

    return OwnedAPIServer


def start_owned_api_server():
    """Start (once per process) the build's own API server; see `owned_api_server_class`."""
    server = owned_api_server_class()()
    server.start()
    return server


def stop_owned_api_servers() -> None:
    """Stop every server this process started (an interrupted build, before it exits)."""
    if owned_api_server_class.cache_info().currsize == 0:
        return  # none was ever made
    for server in list(owned_api_server_class()._instances.values()):
        server.stop()


@contextmanager
def own_api_server():
    """Point this process at the build's own API server (unless PREFECT_API_URL names one).

    A finished build leaves stopping it to the exit handlers (Prefect's log and event workers
    drain first, then the server stops); an interrupted one stops it (`stop_owned_api_servers`).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = start_owned_api_server()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@contextmanager
def api_for_worker_processes(flow_cfg: FlowConfig):
    """Make worker processes (processes / dask runners) report to this process's Prefect API.

    Without PREFECT_API_URL, Prefect starts an ephemeral API inside each process that needs one,
    so every Dask worker would start (and wait 15-20 s for) its own server and record its task
    runs in a database nobody looks at. Here the ephemeral server is started once, here, and its
    URL set for the build; the runners pass it on to their workers with the settings context.
    """
    if flow_cfg.task_runner == "threads":
        yield
        return
    with own_api_server():  # in its own session, and exits with this process
        yield
