"""The work-folder items of the per-batch stages: the source index, grasp parts, annotate and de-occlusion batches.

Each function reads the item's inputs from the work folder, calls the stage, and returns a
`StageResult` (value, frames, how to save); reuse, fault injection, timing and the execution log
are the task skeleton's (`unihope.tasks.common.run_stage_item`). Callables passed in decide where
the work runs (the render thread, a watchdog, a GPU slot): that is the task's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from unihope.buildplan.plan import BatchSpec, SourcePlan, plan_batches, plan_parts, read_index, write_index
from unihope.buildplan.workfiles import (
    GraspPartOutput, StageResult, count_by_reason, load_grasp_part, save_grasp_part, save_results, write_skips,
)
from unihope.config import GraspConfig
from unihope.storage.schema import AnnotatedFrame, DeocclusionResult, FrameRecord, FrameRef, GraspLabel, Skip, StageSummary


def _plan(index_path: Path, parts: list[list[FrameRef]], batches: Sequence[BatchSpec]) -> SourcePlan:
    return SourcePlan(index_path=str(index_path), num_frames=sum(len(p) for p in parts),
                      part_sizes=tuple(len(p) for p in parts), batches=tuple(batches))


def reuse_index(out_path: str | Path) -> SourcePlan | None:
    """The plan of a complete earlier index, or None when the source must be listed again."""
    if not Path(out_path).is_file():
        return None
    parts, batches = read_index(Path(out_path))
    return _plan(Path(out_path), parts, batches)


def index_item(list_refs: Callable[[], list[FrameRef]], max_frames: int | None, frames_per_task: int,
               out_path: str | Path) -> StageResult[SourcePlan]:
    """List the source's frames (capped at `max_frames`) and split them into grasp parts and batches."""
    refs = list_refs()
    if max_frames is not None and len(refs) > max_frames:
        refs = sorted(refs, key=lambda r: (r.sequence_key, r.serial, r.frame_idx))[:max_frames]
    parts = plan_parts(refs, frames_per_task)
    batches = plan_batches([len(p) for p in parts], frames_per_task)
    return StageResult(_plan(Path(out_path), parts, batches), len(refs),
                       save=lambda: write_index(Path(out_path), parts, batches))


def grasp_part_item(source, grasp_cfg: GraspConfig, index_path: str | Path, part_idx: int,
                    out_path: str) -> StageResult[StageSummary]:
    """Load one part's frames from `source` (a `FrameSource`) and label their grasps.

    Returns:
        Summary: frames in, frames loaded and labelled out, source skips by reason.
    """
    from unihope.grasp import label_grasps

    # 1. Load the part's frames; per-frame failures come back as Skips.
    parts, _ = read_index(Path(index_path))
    refs = parts[part_idx]
    loaded = source.load(refs)
    records = [item for item in loaded if isinstance(item, FrameRecord)]
    skips = [item for item in loaded if isinstance(item, Skip)]

    # 2. Label grasps (RRE/RTE against each group's first frame).
    grasps = label_grasps(records, grasp_cfg)
    summary = StageSummary(stage="grasp", output_path=out_path, num_in=len(refs), num_out=len(records),
                           skips_by_reason=count_by_reason(skips))
    output = GraspPartOutput(tuple(records), tuple(grasps), tuple(skips))
    return StageResult(summary, len(refs), save=lambda: save_grasp_part(Path(out_path), output))


def annotate_batch_item(
    batch: BatchSpec, index_path: str | Path, part_path: str | Path, out_path: str, skips_path: str | Path,
    annotate: Callable[[list[FrameRecord], list[GraspLabel]], list[AnnotatedFrame | Skip]],
) -> StageResult[StageSummary]:
    """Crop and render the annotation of one batch (`annotate`: `unihope.render.annotate.annotate_frames` bound to its configs).

    Returns:
        Summary: frames of the batch the source loaded, frames annotated, annotate skips by reason.
    """
    from unihope.storage.batches import save_batch

    # 1. Select this batch's frames and labels from its grasp part.
    parts, _ = read_index(Path(index_path))
    keys = {ref.sample_key for ref in parts[batch.part_idx][batch.start : batch.stop]}
    part = load_grasp_part(Path(part_path))
    grasp_by_key = {label.sample_key: label for label in part.grasps}
    records = [record for record in part.records if record.sample_key in keys]
    grasps = [grasp_by_key[record.sample_key] for record in records]

    # 2. Annotate; saving writes the skips first, then the batch file (its existence marks the batch complete).
    outputs = annotate(records, grasps)
    annotated = [item for item in outputs if isinstance(item, AnnotatedFrame)]
    skips = [item for item in outputs if isinstance(item, Skip)]
    summary = StageSummary(stage="annotate", output_path=out_path, num_in=len(records), num_out=len(annotated),
                           skips_by_reason=count_by_reason(skips))

    def save() -> None:
        write_skips(Path(skips_path), skips)
        save_batch(out_path, annotated)

    return StageResult(summary, len(records), save=save)


def deocclude_batch_item(
    in_path: str, out_path: str, deocclude: Callable[[list[AnnotatedFrame]], list[DeocclusionResult]],
) -> StageResult[StageSummary]:
    """De-occlude the hands of one annotated batch (`deocclude`: the worker's de-occluder, under its options).

    Returns:
        Summary: num_in = annotated frames, num_out = kept pairs (UniHOPE's filter passed).
    """
    from unihope.storage.batches import load_batch

    annotated, _ = load_batch(in_path)
    results = deocclude(annotated)
    summary = StageSummary(stage="deocclude", output_path=out_path, num_in=len(annotated),
                           num_out=sum(1 for r in results if r.keep), skips_by_reason={})
    return StageResult(summary, len(annotated), save=lambda: save_results(Path(out_path), results))
