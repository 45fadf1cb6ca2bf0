"""Tasks: load frames and label grasps per part (whole sequence x camera groups); annotate per batch."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from unihope.storage.schema import AnnotatedFrame, FrameRecord, Skip, StageSummary
from unihope.tasks.common import (
    ExecutionTimer, on_render_thread, on_render_thread_within, reuse_summary, set_torch_threads, write_summary,
)
from unihope.tasks.options import injected_hang_s, maybe_fail_once
from unihope.tasks.work import (
    BatchSpec, GraspPartOutput, WorkLayout, count_by_reason, load_grasp_part, read_index, save_grasp_part,
    write_skips,
)
from unihope.config import PipelineConfig


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
    from unihope.grasp import label_grasps
    from unihope.sources import open_source

    # 1. Reuse a complete output.
    reused = reuse_summary(out_path)
    if reused is not None:
        return reused
    maybe_fail_once("grasp", part_idx, fail_once)

    with ExecutionTimer(layout, "grasp", part_idx) as timer:
        # 2. Load the part's frames; per-frame failures come back as Skips.
        parts, _ = read_index(Path(index_path))
        refs = parts[part_idx]
        source = open_source(cfg.source, cfg.hand)  # reads only (index_source prepared a synthetic source)
        loaded = source.load(refs)
        records = [item for item in loaded if isinstance(item, FrameRecord)]
        skips = [item for item in loaded if isinstance(item, Skip)]

        # 3. Label grasps and store the part.
        grasps = label_grasps(records, cfg.grasp)
        summary = StageSummary(stage="grasp", output_path=out_path, num_in=len(refs), num_out=len(records),
                               skips_by_reason=count_by_reason(skips))
        write_summary(summary)
        save_grasp_part(Path(out_path), GraspPartOutput(tuple(records), tuple(grasps), tuple(skips)))
        timer.num_frames = len(refs)
    return summary


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
    from unihope.storage.batches import save_batch
    from unihope.render.annotate import annotate_frames

    # 1. Reuse a complete output.
    reused = reuse_summary(out_path)
    if reused is not None:
        return reused
    maybe_fail_once("annotate", batch.batch_idx, fail_once)
    on_render_thread(set_torch_threads, torch_threads)  # the hand layer runs there (OpenMP settings are per thread)

    with ExecutionTimer(layout, "annotate", batch.batch_idx) as timer:
        # 2. Select this batch's frames and labels from its grasp part.
        parts, _ = read_index(Path(index_path))
        keys = {ref.sample_key for ref in parts[batch.part_idx][batch.start : batch.stop]}
        part = load_grasp_part(Path(part_path))
        grasp_by_key = {label.sample_key: label for label in part.grasps}
        records = [record for record in part.records if record.sample_key in keys]
        grasps = [grasp_by_key[record.sample_key] for record in records]

        # 3. Annotate; skips first, then the batch file (its existence marks the batch complete).
        timeout_s = cfg.flow.annotate_timeout_s
        outputs = on_render_thread_within(
            timeout_s, f"annotate batch {batch.batch_idx}", annotate_frames, records, grasps, cfg.crop, cfg.render,
            cfg.hand, cfg.source.resolved_tip_convention(), hang_s=injected_hang_s("annotate", batch.batch_idx, fail_once, timeout_s),
        )
        annotated = [item for item in outputs if isinstance(item, AnnotatedFrame)]
        skips = [item for item in outputs if isinstance(item, Skip)]
        write_skips(Path(skips_path), skips)
        summary = StageSummary(stage="annotate", output_path=out_path, num_in=len(records), num_out=len(annotated),
                               skips_by_reason=count_by_reason(skips))
        write_summary(summary)
        save_batch(out_path, annotated)
        timer.num_frames = len(records)
    return summary
