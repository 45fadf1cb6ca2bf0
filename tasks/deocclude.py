"""Task: de-occlude one annotated batch (tagged `gpu`; one batch per device; halves its chunk size on CUDA OOM; times out)."""

from __future__ import annotations

import logging
from contextlib import nullcontext

from prefect import task

from unihope.buildplan.batch_items import load_annotated, save_deocclude_output
from unihope.buildplan.workdir import WorkLayout
from unihope.buildplan.workfiles import reuse_summary
from unihope.config import DeocclusionConfig, PipelineConfig
from unihope.storage.schema import StageSummary
from unihope.tasks.common import StageItem, begin_item, finish_item, set_torch_threads
from unihope.tasks.options import injected_hang_s, run_with_oom_halving
from unihope.tasks.resources import WorkerResources, worker_resources
from unihope.tasks.timeouts import StageTimeout, call_with_timeout

LOGGER = logging.getLogger(__name__)
DEFAULT_DEOCCLUDE_TIMEOUT_S = 7200.0  # FlowConfig.deocclude_timeout_s's default, for direct calls


def on_device(cfg: DeocclusionConfig, device: str | None) -> DeocclusionConfig:
    """`cfg` with the GPU backend pinned to `device` (the slot this batch holds); unchanged for None."""
    if device is None or device == cfg.controlnet.device:
        return cfg
    return cfg.model_copy(update={"controlnet": cfg.controlnet.model_copy(update={"device": device})})


def deocclude_tags(cfg: PipelineConfig) -> list[str]:
    """Tags of the de-occlusion tasks: `flow.gpu_tag` when the backend runs on a GPU, else none.

    One tag for the whole pool: its server-side limit is the number of GPUs (`flow.gpu_concurrency`),
    and which GPU a batch runs on is decided in the worker (one worker per GPU, pinned with
    CUDA_VISIBLE_DEVICES, and `unihope.tasks.device_pool` inside each process); docs/OPERATIONS.md.
    """
    from unihope.deocclude import uses_gpu

    return [cfg.flow.gpu_tag] if cfg.flow.gpu_tag and uses_gpu(cfg.deocclusion) else []


def _deocclude_on_device(resources: WorkerResources, cfg: DeocclusionConfig, batch_idx: int, fail_once: tuple[str, ...],
                         torch_threads: int, timeout_s: float, annotated: list) -> list:
    """Run the worker's de-occluder over one batch: on one of its device slots (GPU backends), under the watchdog,
    halving on OOM.

    Raises:
        StageTimeout: when the batch takes longer than `timeout_s`; the de-occluder is forgotten so
            the retry builds a fresh one.
    """
    from unihope.deocclude import uses_gpu

    hang_s = injected_hang_s("deocclude", batch_idx, fail_once, timeout_s)
    with resources.device_slot(cfg.controlnet.device) if uses_gpu(cfg) else nullcontext() as device:
        device_cfg = on_device(cfg, device)
        deoccluder = resources.deoccluder(device_cfg)

        def _on_halve(size: int) -> None:
            LOGGER.warning("deocclude batch %d: CUDA out of memory, continuing with %d frames per call",
                           batch_idx, size)

        def _run() -> list:
            set_torch_threads(torch_threads)  # on the watched thread, where torch runs
            return run_with_oom_halving(deoccluder.run, annotated, chunk_size=cfg.batch_size, on_halve=_on_halve)

        try:
            return call_with_timeout(_run, timeout_s=timeout_s, what=f"deocclude batch {batch_idx}", hang_s=hang_s)
        except StageTimeout:
            resources.forget_deoccluder(device_cfg)
            raise


@task(name="deocclude", task_run_name="deocclude-batch-{batch_idx}")
def deocclude_batch(
    cfg: DeocclusionConfig, layout: WorkLayout, batch_idx: int, in_path: str, out_path: str,
    fail_once: tuple[str, ...] = (), torch_threads: int = 1, timeout_s: float = DEFAULT_DEOCCLUDE_TIMEOUT_S,
) -> StageSummary:
    """De-occlude the hands of one annotated batch and store the results.

    A GPU backend holds one of the worker's devices for the whole batch (`WorkerResources.device_slot`): with
    `device: auto` the batch takes a free GPU instead of always cuda:0, and no device runs two batches
    at once. On a CUDA out-of-memory error the batch continues in halves (down to one frame per
    call), so a GPU worker short of memory finishes the batch instead of failing it; a task-level
    retry then only sees an OOM that a single frame causes. A batch that takes longer than
    `timeout_s` (a stuck CUDA call) raises StageTimeout, and the retry starts with a fresh de-occluder.

    Args:
        cfg: the de-occlusion config (`batch_size` is the first chunk size).
        layout: work layout (execution log).
        batch_idx: index of the batch (fault injection, logs).
        in_path: the annotated batch file.
        out_path: the results file (`layout.deocclude_results_path`); reused when it exists.
        fail_once: fault injection list (`deocclude` or `deocclude:<batch_idx>`; `...@hang` hangs it).
        torch_threads: torch CPU threads of this worker (`flow.torch_threads`; a GPU backend ignores it).
        timeout_s: seconds the de-occlusion of the batch may take (`flow.deocclude_timeout_s`).

    Returns:
        Summary: num_in = annotated frames, num_out = kept pairs (UniHOPE's filter passed).

    Raises:
        StageTimeout: when the batch takes longer than `timeout_s` (retried).
    """
    item = StageItem(layout, "deocclude", batch_idx, out_path, fail_once)
    if (reused := reuse_summary(out_path)) is not None:
        return reused
    started_s = begin_item(item)
    annotated = load_annotated(in_path)
    results = _deocclude_on_device(worker_resources(), cfg, batch_idx, fail_once, torch_threads, timeout_s, annotated)
    summary = save_deocclude_output(out_path, len(annotated), results)
    return finish_item(item, started_s, len(annotated), summary)
