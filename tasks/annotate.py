"""Tasks: load frames and label grasps per part (whole sequence x camera groups); annotate per batch."""

from __future__ import annotations

from functools import partial

from prefect import task

from unihope.buildplan.batch_items import annotate_batch_item, grasp_part_item
from unihope.buildplan.plan import BatchSpec
from unihope.buildplan.workdir import WorkLayout
from unihope.config import PipelineConfig
from unihope.storage.schema import StageSummary
from unihope.tasks.common import StageItem, on_render_thread, on_render_thread_within, run_stage_item, set_torch_threads
from unihope.tasks.options import injected_hang_s


def _open_source(cfg: PipelineConfig):
    """The configured source (reads only: index_source prepared a synthetic one)."""
    from unihope.sources import open_source

    return open_source(cfg.source, cfg.hand)


@task(name="grasp", task_run_name="grasp-part-{part_idx}")
def label_grasp_part(
    cfg: PipelineConfig, layout: WorkLayout, part_idx: int, index_path: str, out_path: str,
    fail_once: tuple[str, ...] = (),
) -> StageSummary:
    """Load one part's frames from the source and label their grasps (RRE/RTE against each group's first frame).

    Args:
        cfg: pipeline config (source, hand, grasp).
        layout: work layout (execution log).
        part_idx: which part of the index.
        index_path: the index the source task wrote.
        out_path: the part file (`layout.grasp_part_path(part_idx)`); reused when it exists.
        fail_once: fault injection list (`grasp` or `grasp:<part_idx>`).

    Returns:
        Summary: frames in, frames loaded and labelled out, source skips by reason.
    """
    item = StageItem(layout, "grasp", part_idx, out_path, fail_once)
    return run_stage_item(item, lambda: grasp_part_item(_open_source(cfg), cfg.grasp, index_path, part_idx, out_path))


def _annotate_on_render_thread(cfg: PipelineConfig, batch_idx: int, fail_once: tuple[str, ...], torch_threads: int,
                               records: list, grasps: list) -> list:
    """`annotate_frames` on the render thread, with the worker's torch threads, under the annotate watchdog.

    Raises:
        StageTimeout: when rendering takes longer than `cfg.flow.annotate_timeout_s` (retried).
    """
    from unihope.render.annotate import annotate_frames

    on_render_thread(set_torch_threads, torch_threads)  # the hand layer runs there (OpenMP settings are per thread)
    timeout_s = cfg.flow.annotate_timeout_s
    return on_render_thread_within(
        timeout_s, f"annotate batch {batch_idx}", annotate_frames, records, grasps, cfg.crop, cfg.render, cfg.hand,
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
    annotate = partial(_annotate_on_render_thread, cfg, batch.batch_idx, fail_once, torch_threads)
    return run_stage_item(item, lambda: annotate_batch_item(batch, index_path, part_path, out_path, skips_path, annotate))
