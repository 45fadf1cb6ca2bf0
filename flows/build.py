"""The build_dataset flow: source -> grasp -> annotate -> de-occlude (gpu) -> pack -> finalize, wired from tasks.

Only wiring: entry points (config resolution, the API server, exit codes) are `unihope.launch`,
`unihope.build_cli` and `unihope.buildplan.resolve`; the output's lock is held by `build_steps`, through
`unihope.buildplan.output_lock.hold_output`, for every entry point alike.

Both flows run the same `build_steps` inside their own flow run, so a deployment's run shows the task graph
itself (no parent flow with the work hidden in a subflow). The tasks go to the task runner the config
names (`flow.task_runner`), entered here at run time: a scheduled run picks up an edited runner too.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from prefect import Task, flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner
from prefect.utilities.callables import get_call_parameters

from unihope.buildplan.resolve import default_report_dir, resolve_build_config
from unihope.buildplan.output_lock import hold_output
from unihope.tasks.annotate import annotate_batch
from unihope.tasks.artifacts import ProgressArtifacts, publish_build_artifacts
from unihope.tasks.deocclude import deocclude_batch, deocclude_tags
from unihope.tasks.finalize import finalize_dataset
from unihope.tasks.options import FAIL_ONCE_ENV, configure_task
from unihope.tasks.pack import claim_output, dataset_attrs, pack_shard, plan_shards_task
from unihope.tasks.grasp import label_grasp_part
from unihope.tasks.index import index_source
from unihope.buildplan.workdir import make_layout
from unihope.config import PipelineConfig
from unihope.overrides import apply_overrides
from unihope.progress import BuildProgress

from unihope.flows.runners import make_task_runner


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


def _submit(runner: TaskRunner, task: Task, *args, wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
    """`task.submit(*args)` on `runner` (what Prefect's `Task.submit` does with the flow's own runner)."""
    return runner.submit(task, get_call_parameters(task.fn, args, {}), wait_for=wait_for)


@flow(name="build-dataset", persist_result=False)  # the work folder holds the results (tasks/options.py)
def build_dataset(config: PipelineConfig, out: str, write_report: bool = True, wait_lock: bool = False):
    """Build a paired dataset from a resolved config (see `resolve_build_config`) into `out`.

    Tasks exchange paths of batch files in the work folder (`unihope.buildplan.workdir`), never arrays; each
    task reuses its output when it exists, so a rerun recomputes only what changed.

    Args:
        config: resolved pipeline config.
        out: dataset path or fsspec URL.
        write_report: also write the HTML report (`<out>/report`).
        wait_lock: wait for another build of `out` to finish instead of refusing at once.

    Returns:
        `unihope.report.DatasetSummary` of the finished dataset.

    Raises:
        OutputBusyError: another build writes `out` (and `wait_lock` is False).
    """
    return build_steps(config, out, write_report, wait_lock)


@flow(name="scheduled-build", persist_result=False)
def scheduled_build(config_path: str, out: str, source: str | None = None, write_report: bool = True,
                    overrides: list[str] | None = None):
    """Deployment entry: read the YAML at run time (edits apply to the next scheduled run), then build.

    `overrides` are `unihope deploy --set key=value` overrides, applied to the YAML each run. The
    tasks run in this flow run (its graph is the build's); a run never writes over a build that is
    still running (the lock refuses it).

    Returns:
        The summary of the dataset; the `train` deployment's trigger fires when this run completes.
    """
    cfg = resolve_build_config(apply_overrides(PipelineConfig.from_yaml(Path(config_path)), overrides or ()), out,
                               source, fail_once_env=os.environ.get(FAIL_ONCE_ENV))
    return build_steps(cfg, out, write_report)


def build_steps(config: PipelineConfig, out: str, write_report: bool, wait_lock: bool = False):
    """The build's tasks, in the calling flow's run: under the output's lock, on the config's task runner."""
    with hold_output(config, out, wait=wait_lock), make_task_runner(config.flow) as runner:
        return _wire(runner, config, out, write_report)


def _wire(runner: TaskRunner, config: PipelineConfig, out: str, write_report: bool):
    logger = get_run_logger()
    layout = make_layout(config, out)
    fail_once = config.flow.fail_once
    options = partial(configure_task, flow_cfg=config.flow)
    index_task = options(index_source)
    grasp_task = options(label_grasp_part)
    annotate_task = options(annotate_batch)
    deocclude_task = options(deocclude_batch, tags=deocclude_tags(config))
    plan_task = options(plan_shards_task)
    claim_task = options(claim_output)
    pack_task = options(pack_shard)
    finalize_task = options(finalize_dataset)
    logger.info("work folder %s; stage hashes %s", layout.root, layout.hashes.as_dict())

    # 1. Source: write it when the pipeline makes it (its own bar), list frames, plan grasp parts and batches.
    progress = BuildProgress(emit=logger.info, observers=(ProgressArtifacts(out),))
    progress.add_stage("index", 0)  # its size is what it finds
    plan = index_task(config, layout, str(layout.index_path), fail_once)
    progress.complete("index", plan.num_frames)
    logger.info("source: %d frames -> %d grasp parts, %d batches", plan.num_frames, len(plan.part_sizes),
                len(plan.batches))
    for stage in ("grasp", "annotate", "deocclude"):
        progress.add_stage(stage, plan.num_frames)

    # 2. Grasp labels per part (whole sequence x camera groups).
    grasp_futures = [
        _submit(runner, grasp_task, config, layout, part_idx, plan.index_path, str(layout.grasp_part_path(part_idx)),
                fail_once)
        for part_idx in range(len(plan.part_sizes))
    ]
    # 3. Rendered annotation per batch, once its part is labelled.
    annotate_futures = [
        _submit(
            runner, annotate_task,
            config, layout, batch, plan.index_path, str(layout.grasp_part_path(batch.part_idx)),
            str(layout.annotate_batch_path(batch.batch_idx)), str(layout.annotate_skips_path(batch.batch_idx)),
            fail_once, config.flow.torch_threads, wait_for=[grasp_futures[batch.part_idx]],
        )
        for batch in plan.batches
    ]
    # 4. De-occlusion per batch (tagged gpu for GPU backends), once its batch is annotated.
    deocclude_futures = [
        _submit(
            runner, deocclude_task,
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
        _submit(
            runner, pack_task,
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


