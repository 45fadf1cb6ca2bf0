"""Task: crop and render the annotation of one batch of grasp-labelled frames (on the render thread)."""

from __future__ import annotations

from functools import partial

from prefect import task

from unihope.buildplan.batch_items import load_annotate_inputs, save_annotate_output
from unihope.buildplan.plan import BatchSpec
from unihope.buildplan.workdir import WorkLayout
from unihope.buildplan.workfiles import reuse_summary
from unihope.config import PipelineConfig
from unihope.storage.schema import StageSummary
from unihope.tasks.common import StageItem, begin_item, finish_item, set_torch_threads
from unihope.tasks.options import injected_hang_s
from unihope.tasks.resources import WorkerResources, worker_resources


def _annotate_on_render_thread(resources: WorkerResources, cfg: PipelineConfig, batch_idx: int,
                               fail_once: tuple[str, ...], torch_threads: int, records: list, grasps: list) -> list:
    """`annotate_frames` with the worker's renderers, on its render thread, with its torch threads, under the watchdog.

    Raises:
        StageTimeout: when rendering takes longer than `cfg.flow.annotate_timeout_s` (retried).
    """
    from unihope.render.annotate import annotate_frames

    resources.on_render_thread(set_torch_threads, torch_threads)  # the hand layer runs there (OpenMP settings are per thread)
    timeout_s = cfg.flow.annotate_timeout_s
    annotate = partial(annotate_frames, resources=resources.annotation)
    return resources.on_render_thread_within(
        timeout_s, f"annotate batch {batch_idx}", annotate, records, grasps, cfg.crop, cfg.render, cfg.hand,
        cfg.source.resolved_tip_convention(), hang_s=injected_hang_s("annotate", batch_idx, fail_once, timeout_s),
    )


@task(name="annotate", task_run_name="annotate-batch-{batch.batch_idx}")
def annotate_batch(
    cfg: PipelineConfig, layout: WorkLayout, batch: BatchSpec, index_path: str, part_path: str, out_path: str,
    skips_path: str, fail_once: tuple[str, ...] = (), torch_threads: int = 1,
) -> StageSummary:
    """Crop and render the annotation (masks, depth, visibility, 2D feature maps) of one batch.

    Args:
        cfg: pipeline config (crop, render, hand).
        layout: work layout (execution log).
        batch: refs[start:stop] of one grasp part.
        index_path: the index (to know which refs the batch covers).
        part_path: the grasp part file holding the batch's loaded frames and labels.
        out_path: the batch file (`layout.annotate_batch_path`); reused when it exists.
        skips_path: where this batch's skips go (JSON lines).
        fail_once: fault injection list (`annotate` or `annotate:<batch_idx>`; `...@hang` hangs the render).
        torch_threads: torch CPU threads of this worker (`flow.torch_threads`).

    Returns:
        Summary: frames of the batch the source loaded, frames annotated, annotate skips by reason.

    Raises:
        StageTimeout: when rendering takes longer than `cfg.flow.annotate_timeout_s` (retried).
    """
    item = StageItem(layout, "annotate", batch.batch_idx, out_path, fail_once)
    if (reused := reuse_summary(out_path)) is not None:
        return reused
    started_s = begin_item(item)
    records, grasps = load_annotate_inputs(batch, index_path, part_path)
    outputs = _annotate_on_render_thread(worker_resources(), cfg, batch.batch_idx, fail_once, torch_threads, records,
                                         grasps)
    summary = save_annotate_output(out_path, skips_path, len(records), outputs)
    return finish_item(item, started_s, len(records), summary)
