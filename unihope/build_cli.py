"""`unihope build` around the flow: config checks, exit codes, SIGTERM and Ctrl-C, the summary lines, `--train`.

Every fault a user can act on ends in one line and a non-zero exit, never a traceback: a bad
config or environment (exit 2, before Prefect starts), a busy output (3), a full or read-only
disk (1), Ctrl-C (130) or SIGTERM (143).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import ExitStack, suppress
from contextvars import copy_context
from pathlib import Path

import typer

from unihope.buildplan.resolve import mano_dir_parameter, resolve_build_config
from unihope.config import PipelineConfig
from unihope.buildplan.faults import FAIL_ONCE_ENV
from unihope.buildplan.workdir import local_output_path, resolve_work_dir
from unihope.buildplan.workfiles import read_executions

EXIT_DRAIN_TIMEOUT_S = 3.0  # an interrupted build waits this long for its last logs to reach the API
# After Ctrl-C / SIGTERM, Prefect's own exit path gets this long to record the stop. It joins the task
# threads on the way out, and a task parked in a retry delay (or mid-batch) would hold the exit for
# minutes; past the grace the build records the crash itself and exits. A second Ctrl-C exits at once.
STOP_GRACE_S = 10.0


class BuildTerminated(BaseException):
    """SIGTERM reached a CLI build (a BaseException, like KeyboardInterrupt, so no task retries it)."""


def run_build_from_cli(
    config_path: Path, source: str | None, out: str, train: bool, train_config_path: Path,
    train_out: Path | None = None, wait_lock: bool = False, overrides: tuple[str, ...] = (),
    train_overrides: tuple[str, ...] = (),
) -> None:
    """`unihope build`: load, resolve and check the config (with `--set` overrides), build, print the summary, optionally train.

    Exit codes as in the module docstring. The API server is the build's own
    (`unihope.prefect_server.owned_api_server_class`), so it survives the terminal's Ctrl-C long enough to
    record the stop, and never outlives the build.

    With `train`, the training runs as the train deployment's does: in `<train_out>/<dataset
    version>-<config digest>/` (default `runs/<build name>`), with the build's MANO files.
    """
    from unihope import launch
    from unihope.overrides import apply_overrides
    from unihope.preflight import check_build, describe_os_error
    from unihope.prefect_server import own_api_server
    from unihope.storage.lock import OutputBusyError, output_busy
    from unihope.unchanged_build import unchanged_build_summary

    def fail(message: str, code: int) -> None:
        typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(code=code)

    # 1. Config and environment checks: one line each, before Prefect starts.
    try:
        cfg = resolve_build_config(apply_overrides(PipelineConfig.from_yaml(Path(config_path)), overrides), out, source,
                                   fail_once_env=os.environ.get(FAIL_ONCE_ENV))
        if train:  # a bad training override fails now, not after the build
            from unihope.train.run import load_train_config

            load_train_config(train_config_path, train_overrides)
        unchanged = None if train else unchanged_build_summary(cfg, out)
        if unchanged is None:
            check_build(cfg, out, local_output_path(out), resolve_work_dir(out, cfg.flow.work_dir))
    except ValueError as err:  # ConfigError, PreflightError, a remote --out without flow.work_dir
        fail(str(err), code=2)
    if unchanged is not None:  # nothing changed: the stored summary, with no server, flow or stage import
        for line in unchanged.describe():
            typer.echo(line)
        typer.echo(f"unchanged: {out} already holds this build (config and version as finalized); nothing to do")
        return

    # 2. Build, with SIGTERM turned into the same clean stop as Ctrl-C, and no traceback for a full disk.
    previous_handlers = {signum: signal.signal(signum, _on_stop_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_drop_traceback_of_permanent_os_errors)
    api_server = ExitStack()  # the build's server stays up for --train's flow (Prefect's own would outlive a kill)
    work_root = resolve_work_dir(out, cfg.flow.work_dir)
    num_computed_before = len(read_executions(work_root))
    try:
        if not wait_lock and (busy := output_busy(out)) is not None:  # a refused build starts no server
            raise busy
        api_server.enter_context(own_api_server())
        summary = launch.run_build(cfg, out, wait_lock=wait_lock)  # the flow holds the lock
    except OutputBusyError as err:
        fail(str(err), code=3)
    except OSError as err:
        from unihope.tasks.options import PERMANENT_OS_ERRNOS

        if err.errno not in PERMANENT_OS_ERRNOS:
            raise
        fail(f"build failed: {describe_os_error(err)}; finished batches are kept, the rerun resumes", code=1)
    except (KeyboardInterrupt, BuildTerminated) as err:
        _stop(143 if isinstance(err, BuildTerminated) else 130)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if len(read_executions(work_root)) == num_computed_before:  # every stage item was reused
        typer.echo(f"nothing to do: {out} is up to date with this config (every stage item was already built)")
    for line in summary.describe():
        typer.echo(line)
    with api_server:
        if train:
            from unihope.flows.train import train_flow

            runs_dir = Path(train_out) if train_out is not None else Path("runs") / cfg.name
            run_dir = train_flow(data_url=out, train_config_path=str(train_config_path), runs_dir=str(runs_dir),
                                 mano_dir=mano_dir_parameter(cfg), overrides=list(train_overrides))
            typer.echo(f"trained on {out} -> {run_dir}")


def _drop_traceback_of_permanent_os_errors(record: logging.LogRecord) -> bool:
    """Log filter: a full or read-only disk is one line (the CLI says what to do), not a 100-line traceback."""
    from unihope.tasks.options import PERMANENT_OS_ERRNOS  # loaded with Prefect by then

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in PERMANENT_OS_ERRNOS:
        record.exc_info, record.exc_text = None, None
    return True


_STOP_LOCK = threading.Lock()
_stop_requested = threading.Event()


def _on_stop_signal(signum: int, frame) -> None:
    """Ctrl-C (SIGINT) or SIGTERM: unwind through Prefect as before, with a deadline (`STOP_GRACE_S`)."""
    code = 143 if signum == signal.SIGTERM else 130
    if _stop_requested.is_set():  # the second one: no more waiting
        _stop(code)
    _stop_requested.set()
    # The watchdog runs in this thread's context: the build's API settings are context variables.
    watchdog = threading.Thread(target=copy_context().run, args=(_stop_after_grace, code, _current_flow_run_id()),
                                name="unihope-stop", daemon=True)
    watchdog.start()
    if signum == signal.SIGTERM:
        raise BuildTerminated(f"signal {signum}")
    raise KeyboardInterrupt


def _current_flow_run_id():
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.id if context is not None and context.flow_run is not None else None


def _stop_after_grace(code: int, flow_run_id) -> None:  # noqa: ANN001 (a UUID or None)
    """Past the grace, record the flow run as crashed (what Prefect's exit path would have done) and exit."""
    import time

    time.sleep(STOP_GRACE_S)
    if flow_run_id is not None:
        with suppress(Exception):  # best effort: the stop matters more than its record
            from prefect.client.orchestration import get_client
            from prefect.states import Crashed

            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Crashed(message="the build was interrupted"), force=True)
    _stop(code)


def _stop(code: int) -> None:
    """Say how the build stopped and exit with `code` (once, whichever thread gets here first)."""
    with _STOP_LOCK:
        typer.secho(f"build {'terminated' if code == 143 else 'interrupted'}: stopped; run the same command "
                    "again to resume (finished batches are kept)", fg=typer.colors.RED, err=True)
        _exit_now(code)


def _exit_now(code: int) -> None:
    """Exit without waiting for running tasks: worker threads would finish their batch first (minutes).

    What they leave half-written is temp files only, which the next run sweeps.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from unihope.prefect_server import stop_owned_api_servers

    for worker in (APILogWorker, EventsWorker):  # the crash record and last logs reach the API first
        worker.drain_all(timeout=EXIT_DRAIN_TIMEOUT_S)
    stop_owned_api_servers()
    for pid in _descendant_pids(os.getpid()):  # process-pool / Dask workers that missed the terminal's signal
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _descendant_pids(root_pid: int) -> list[int]:
    """Pids of every live descendant of `root_pid`, from /proc (empty where /proc is absent)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            parent_pid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent_pid, []).append(int(entry.name))
    found, todo = [], list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found
