"""The build_dataset flow: source -> grasp -> annotate -> de-occlude (gpu) -> pack -> finalize, wired from tasks."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager, suppress
from functools import lru_cache, partial
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from pydantic import ValidationError

from unihope.storage.io import sweep_temp_files
from unihope.storage.lock import build_lock
from unihope.tasks.annotate import annotate_batch, label_grasp_part
from unihope.tasks.artifacts import ProgressArtifacts, publish_build_artifacts
from unihope.tasks.deocclude import deocclude_batch
from unihope.tasks.finalize import finalize_dataset
from unihope.tasks.options import FAIL_ONCE_ENV, configure_task, parse_fail_once, result_storage_for
from unihope.tasks.pack import claim_output, dataset_attrs, pack_shard, plan_shards_task
from unihope.tasks.source import index_source
from unihope.tasks.work import WorkLayout, local_output_path, make_layout, resolve_work_dir
from unihope.config import ConfigError, FlowConfig, PipelineConfig, describe_validation_error
from unihope.progress import BuildProgress

from unihope.flows.runners import make_task_runner, start_owned_api_server

SYNTHETIC_DIR_NAME = "_synthetic"
REPORT_DIR_NAME = "report"
SOURCE_KINDS = ("synthetic", "dexycb", "ho3d")
EXIT_DRAIN_TIMEOUT_S = 3.0  # an interrupted build waits this long for its last logs to reach the API


# ----------------------------------------------------------------------------------------------
# Entry-point resolution (CLI, deployments, demo): done once, before the flow starts
# ----------------------------------------------------------------------------------------------


def resolve_build_config(
    cfg: PipelineConfig, out: str, source: str | None = None, fail_once_env: str | None = None
) -> PipelineConfig:
    """Apply the command-line overrides and fill the paths the config leaves open.

    Args:
        cfg: the config as loaded from YAML.
        out: dataset path or URL.
        source: `synthetic`, `dexycb:PATH` or `ho3d:PATH`; replaces the config's source kind and root.
        fail_once_env: the value of UNIHOPE_FAIL_ONCE (comma-separated task names), added to
            `flow.fail_once`; read by the caller so no stage or task reads the environment.

    Returns:
        The resolved config: source root set (synthetic: `<out>/_synthetic`, or `<work>/_synthetic`
        for a remote output), fault injection merged.

    Raises:
        ConfigError: on a malformed `source` or a dataset kind without a path.
    """
    # 1. Check inputs and parse the source override.
    source_cfg = cfg.source
    if source is not None:
        kind, _, root = source.partition(":")
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"--source {source!r}: kind must be one of {SOURCE_KINDS} (e.g. dexycb:/data/dex-ycb)")
        if kind != "synthetic" and not root:
            raise ConfigError(f"--source {source!r}: {kind} needs a path, e.g. --source {kind}:/data/{kind}")
        source_cfg = source_cfg.model_copy(update={"kind": kind, "root": Path(root).expanduser() if root else None})

    # 2. Default the synthetic source's folder next to the output.
    if source_cfg.kind == "synthetic" and source_cfg.root is None:
        local = local_output_path(out)
        base = local if local is not None and cfg.flow.work_dir is None else resolve_work_dir(out, cfg.flow.work_dir)
        source_cfg = source_cfg.model_copy(update={"root": base / SYNTHETIC_DIR_NAME})

    # 3. Merge fault injection from the environment.
    fail_once = tuple(dict.fromkeys(cfg.flow.fail_once + parse_fail_once(fail_once_env)))
    flow_cfg = cfg.flow.model_copy(update={"fail_once": fail_once})

    # Re-validate the whole model so the overrides pass the same checks as YAML values.
    data = cfg.model_dump(mode="json")
    data["source"] = source_cfg.model_dump(mode="json")
    data["flow"] = flow_cfg.model_dump(mode="json")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error("command-line overrides", err)) from err


def default_report_dir(out: str, layout: WorkLayout) -> Path:
    """`<out>/report` for a local output, `<work>/report` for a remote one."""
    local = local_output_path(out)
    return (local if local is not None else layout.root) / REPORT_DIR_NAME


def deocclude_tags(cfg: PipelineConfig) -> list[str]:
    """Tags of the de-occlusion tasks: `flow.gpu_tag` when the backend runs on a GPU, else none.

    One tag for the whole pool: its server-side limit is the number of GPUs (`flow.gpu_concurrency`),
    and which GPU a batch runs on is decided in the worker (one worker per GPU, pinned with
    CUDA_VISIBLE_DEVICES, and `unihope.tasks.device_pool` inside each process); docs/OPERATIONS.md.
    """
    from unihope.deocclude import uses_gpu

    return [cfg.flow.gpu_tag] if cfg.flow.gpu_tag and uses_gpu(cfg.deocclusion) else []


# ----------------------------------------------------------------------------------------------
# The flow
# ----------------------------------------------------------------------------------------------


def _track(progress: BuildProgress, futures: list[tuple[str, int, PrefectFuture]]) -> None:
    """Advance the progress lines as futures finish; re-raise the first failure."""
    by_id = {future.task_run_id: (stage, num_frames) for stage, num_frames, future in futures}
    for future in as_completed([future for _, _, future in futures]):
        future.result()
        stage, num_frames = by_id[future.task_run_id]
        progress.advance(stage, num_frames)


@flow(name="build-dataset")
def build_dataset(config: PipelineConfig, out: str, write_report: bool = True):
    """Build a paired dataset from a resolved config (see `resolve_build_config`) into `out`.

    Tasks exchange paths of batch files in the work folder (`unihope.tasks.work`), never arrays; each
    task reuses its output when it exists, so a rerun recomputes only what changed.

    Args:
        config: resolved pipeline config.
        out: dataset path or fsspec URL.
        write_report: also write the HTML report (`<out>/report`).

    Returns:
        `unihope.report.DatasetSummary` of the finished dataset.
    """
    logger = get_run_logger()
    layout = make_layout(config, out)
    fail_once = config.flow.fail_once
    storage = result_storage_for(layout.results_dir)
    options = partial(configure_task, flow_cfg=config.flow, result_storage=storage)
    index_task = options(index_source, cached=False)
    grasp_task = options(label_grasp_part, cached=True)
    annotate_task = options(annotate_batch, cached=True)
    deocclude_task = options(deocclude_batch, cached=True, tags=deocclude_tags(config))
    plan_task = options(plan_shards_task, cached=False)
    claim_task = options(claim_output, cached=False)
    pack_task = options(pack_shard, cached=False)
    finalize_task = options(finalize_dataset, cached=False)
    logger.info("work folder %s; stage hashes %s", layout.root, layout.hashes.as_dict())

    # 1. Source: list frames, plan grasp parts and batches.
    plan = index_task(config, layout, str(layout.index_path), fail_once)
    logger.info("source: %d frames -> %d grasp parts, %d batches", plan.num_frames, len(plan.part_sizes),
                len(plan.batches))
    progress = BuildProgress(emit=logger.info, observers=(ProgressArtifacts(),))
    for stage in ("grasp", "annotate", "deocclude"):
        progress.add_stage(stage, plan.num_frames)

    # 2. Grasp labels per part (whole sequence x camera groups).
    grasp_futures = [
        grasp_task.submit(config, layout, part_idx, plan.index_path, str(layout.grasp_part_path(part_idx)), fail_once)
        for part_idx in range(len(plan.part_sizes))
    ]
    # 3. Rendered annotation per batch, once its part is labelled.
    annotate_futures = [
        annotate_task.submit(
            config, layout, batch, plan.index_path, str(layout.grasp_part_path(batch.part_idx)),
            str(layout.annotate_batch_path(batch.batch_idx)), str(layout.annotate_skips_path(batch.batch_idx)),
            fail_once, config.flow.torch_threads, wait_for=[grasp_futures[batch.part_idx]],
        )
        for batch in plan.batches
    ]
    # 4. De-occlusion per batch (tagged gpu for GPU backends), once its batch is annotated.
    deocclude_futures = [
        deocclude_task.submit(
            config.deocclusion, layout, batch.batch_idx, str(layout.annotate_batch_path(batch.batch_idx)),
            str(layout.deocclude_results_path(batch.batch_idx)), fail_once, config.flow.torch_threads,
            config.flow.deocclude_timeout_s, wait_for=[annotate_futures[batch.batch_idx]],
        )
        for batch in plan.batches
    ]
    _track(progress,
           [("grasp", size, f) for size, f in zip(plan.part_sizes, grasp_futures)]
           + [("annotate", batch.num_frames, f) for batch, f in zip(plan.batches, annotate_futures)]
           + [("deocclude", batch.num_frames, f) for batch, f in zip(plan.batches, deocclude_futures)])

    # 5. Pack: shards cut from the annotated counts, one task per shard.
    shards = plan_task([future.result().num_out for future in annotate_futures], config.storage.shard_size)
    claim_task(layout, out)
    attrs = dataset_attrs(config)
    batch_paths = {batch.batch_idx: (str(layout.annotate_batch_path(batch.batch_idx)),
                                     str(layout.deocclude_results_path(batch.batch_idx))) for batch in plan.batches}
    progress.add_stage("pack", sum(shard.num_samples for shard in shards))
    pack_futures = [
        pack_task.submit(
            config.storage, layout, out, shard, {s.batch_idx: batch_paths[s.batch_idx] for s in shard.slices}, attrs,
            str(layout.shard_marker_path(shard.shard_idx)), fail_once,
        )
        for shard in shards
    ]
    _track(progress, [("pack", shard.num_samples, f) for shard, f in zip(shards, pack_futures)])

    # 6. Finalize: manifest, skips, root attrs, summary, report; then the summary as Prefect artifacts.
    report_dir = str(default_report_dir(out, layout)) if write_report else None
    summary = finalize_task(layout, out, attrs, len(plan.part_sizes), len(plan.batches), len(shards), report_dir,
                            fail_once)
    publish_build_artifacts(summary)
    return summary


@flow(name="ping")
def ping() -> bool:
    """A no-op flow: starts (or reaches) the Prefect API, e.g. before timing a build."""
    return True


@flow(name="scheduled-build")
def scheduled_build(config_path: str, out: str, source: str | None = None, write_report: bool = True):
    """Deployment entry: read the YAML at run time (edits apply to the next scheduled run), then build.

    Returns:
        The summary of the dataset; the `train` deployment's trigger fires when this run completes.
    """
    cfg = resolve_build_config(PipelineConfig.from_yaml(Path(config_path)), out, source,
                               fail_once_env=os.environ.get(FAIL_ONCE_ENV))
    with build_lock(out):  # a scheduled run never writes over a build that is still running
        return build_flow_for(cfg.flow)(config=cfg, out=out, write_report=write_report)


def build_flow_for(flow_cfg: FlowConfig):
    """`build_dataset` with the task runner `flow_cfg` names (the runner is duplicated per run)."""
    return _build_flow_for(flow_cfg.task_runner, flow_cfg.max_workers, flow_cfg.dask_address)


@lru_cache(maxsize=8)
def _build_flow_for(task_runner: str, max_workers: int, dask_address: str | None):
    # Cached: Flow.with_options regenerates the parameter schema of PipelineConfig (~0.2 s a call).
    runner_cfg = FlowConfig(task_runner=task_runner, max_workers=max_workers, dask_address=dask_address)
    return build_dataset.with_options(task_runner=make_task_runner(runner_cfg))


# ----------------------------------------------------------------------------------------------
# In-process entry points
# ----------------------------------------------------------------------------------------------


@contextmanager
def api_for_worker_processes(flow_cfg: FlowConfig):
    """Make worker processes (processes / dask runners) report to this process's Prefect API.

    Without PREFECT_API_URL, Prefect starts an ephemeral API inside each process that needs one,
    so every Dask worker would start (and wait 15-20 s for) its own server and record its task
    runs in a database nobody looks at. Here the ephemeral server is started once, here, and its
    URL set for the build; the runners pass it on to their workers with the settings context.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if flow_cfg.task_runner == "threads" or PREFECT_API_URL.value():
        yield
        return
    server = start_owned_api_server()  # in its own session, and exits with this process
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def run_build(cfg: PipelineConfig, out: str, write_report: bool = True, wait_lock: bool = False):
    """Run `build_dataset` with the task runner the config names (config already resolved).

    Holds the output's build lock (`unihope.storage.lock`) for the whole run, and first sweeps the temp
    files a failed or killed build left in the output and work folders (safe: the lock is held).

    Returns:
        `unihope.report.DatasetSummary`.

    Raises:
        OutputBusyError: when another build writes `out` (and `wait_lock` is False).
    """
    with build_lock(out, wait=wait_lock):
        for folder in (local_output_path(out), resolve_work_dir(out, cfg.flow.work_dir)):
            if folder is not None:
                sweep_temp_files(folder)
        with api_for_worker_processes(cfg.flow):
            return build_flow_for(cfg.flow)(config=cfg, out=out, write_report=write_report)


def run_build_from_cli(
    config_path: Path, source: str | None, out: str, train: bool, train_config_path: Path,
    train_out: Path | None = None, wait_lock: bool = False, overrides: tuple[str, ...] = (),
    train_overrides: tuple[str, ...] = (),
) -> None:
    """`unihope build`: load, resolve and check the config (with `--set` overrides), build, print the summary, optionally train.

    Every fault a user can act on ends in one line and a non-zero exit, never a traceback: a bad
    config or environment (exit 2, before Prefect starts), a busy output (3), a full or read-only
    disk (1), Ctrl-C (130) or SIGTERM (143). The API server is the build's own (`OwnedAPIServer`),
    so it survives the terminal's Ctrl-C long enough to record the stop, and never outlives the build.

    With `train`, the training runs as the train deployment's does: in `<train_out>/<dataset
    version>-<config digest>/` (default `runs/<build name>`), with the build's MANO files.
    """
    import typer

    from unihope.storage.lock import OutputBusyError
    from unihope.tasks.options import PERMANENT_OS_ERRNOS
    from unihope.overrides import apply_overrides
    from unihope.preflight import check_build, describe_os_error

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
        check_build(cfg, out, local_output_path(out), resolve_work_dir(out, cfg.flow.work_dir))
    except ValueError as err:  # ConfigError, PreflightError, a remote --out without flow.work_dir
        fail(str(err), code=2)

    # 2. Build, with SIGTERM turned into the same clean stop as Ctrl-C, and no traceback for a full disk.
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_drop_traceback_of_permanent_os_errors)
    try:
        with build_lock(out, wait=wait_lock), _own_api_server():  # lock first: a refused build starts no server
            summary = run_build(cfg, out, wait_lock=wait_lock)
    except OutputBusyError as err:
        fail(str(err), code=3)
    except OSError as err:
        if err.errno not in PERMANENT_OS_ERRNOS:
            raise
        fail(f"build failed: {describe_os_error(err)}; finished batches are kept, the rerun resumes", code=1)
    except (KeyboardInterrupt, BuildTerminated) as err:
        code = 143 if isinstance(err, BuildTerminated) else 130
        typer.secho(f"build {'terminated' if code == 143 else 'interrupted'}: stopped; run the same command "
                    "again to resume (finished batches are kept)", fg=typer.colors.RED, err=True)
        _exit_now(code)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    for line in summary.describe():
        typer.echo(line)
    if train:
        from unihope.flows.train import train_flow

        runs_dir = Path(train_out) if train_out is not None else Path("runs") / cfg.name
        run_dir = train_flow(data_url=out, train_config_path=str(train_config_path), runs_dir=str(runs_dir),
                             mano_dir=mano_dir_parameter(cfg), overrides=list(train_overrides))
        typer.echo(f"trained on {out} -> {run_dir}")


def mano_dir_parameter(cfg: PipelineConfig) -> str | None:
    """The build's `hand.mano_dir` as the train flow's parameter: training loads the files the build used."""
    return str(Path(cfg.hand.mano_dir).expanduser().resolve()) if cfg.hand.mano_dir is not None else None


def _drop_traceback_of_permanent_os_errors(record: logging.LogRecord) -> bool:
    """Log filter: a full or read-only disk is one line (the CLI says what to do), not a 100-line traceback."""
    from unihope.tasks.options import PERMANENT_OS_ERRNOS

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in PERMANENT_OS_ERRNOS:
        record.exc_info, record.exc_text = None, None
    return True


class BuildTerminated(BaseException):
    """SIGTERM reached a CLI build (a BaseException, like KeyboardInterrupt, so no task retries it)."""


def _raise_terminated(signum: int, frame) -> None:
    raise BuildTerminated(f"signal {signum}")


@contextmanager
def _own_api_server():
    """Point this process at the build's own API server (unless PREFECT_API_URL names one).

    A finished build leaves stopping it to the exit handlers (Prefect's log and event workers
    drain first, then the server stops); an interrupted one stops it in `_exit_now`.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = start_owned_api_server()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def _exit_now(code: int) -> None:
    """Exit without waiting for running tasks: worker threads would finish their batch first (minutes).

    What they leave half-written is temp files only, which the next run sweeps.
    """
    import sys

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from unihope.flows.runners import OwnedAPIServer

    for worker in (APILogWorker, EventsWorker):  # the crash record and last logs reach the API first
        worker.drain_all(timeout=EXIT_DRAIN_TIMEOUT_S)
    for server in list(OwnedAPIServer._instances.values()):
        server.stop()
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
