"""Load and save helpers of the per-batch stage items: the source index, grasp parts, annotate and de-occlusion batches.

A task body reads straight through: reuse check -> `load_*` (the item's inputs from the work folder)
-> the stage function -> `save_*` (the summary sidecar, then the output file, written last: its
existence marks the item complete). Nothing here calls back into a task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from unihope.buildplan.plan import BatchSpec, SourcePlan, plan_batches, plan_parts, read_index, write_index
from unihope.buildplan.workfiles import (
    GraspPartOutput, count_by_reason, load_grasp_part, save_grasp_part, save_results, write_skips, write_summary,
)
from unihope.storage.schema import AnnotatedFrame, DeocclusionResult, FrameRecord, FrameRef, GraspLabel, Skip, StageSummary


def _plan(index_path: Path, parts: list[list[FrameRef]], batches: Sequence[BatchSpec]) -> SourcePlan:
    return SourcePlan(index_path=str(index_path), num_frames=sum(len(p) for p in parts),
                      part_sizes=tuple(len(p) for p in parts), batches=tuple(batches))


# ---- index ---------------------------------------------------------------------------------------


def reuse_index(out_path: str | Path) -> SourcePlan | None:
    """The plan of a complete earlier index, or None when the source must be listed again."""
    if not Path(out_path).is_file():
        return None
    parts, batches = read_index(Path(out_path))
    return _plan(Path(out_path), parts, batches)


def plan_index(refs: list[FrameRef], max_frames: int | None, frames_per_task: int
               ) -> tuple[list[list[FrameRef]], list[BatchSpec]]:
    """Cap the refs at `max_frames` (first by sequence, camera, frame) and split them into grasp parts and batches."""
    if max_frames is not None and len(refs) > max_frames:
        refs = sorted(refs, key=lambda r: (r.sequence_key, r.serial, r.frame_idx))[:max_frames]
    parts = plan_parts(refs, frames_per_task)
    return parts, plan_batches([len(p) for p in parts], frames_per_task)


def save_index(out_path: str | Path, parts: list[list[FrameRef]], batches: list[BatchSpec]) -> SourcePlan:
    """Write the index (its existence marks the item complete) and return the plan."""
    write_index(Path(out_path), parts, batches)
    return _plan(Path(out_path), parts, batches)


# ---- grasp parts ---------------------------------------------------------------------------------


def load_part_frames(source, index_path: str | Path, part_idx: int
                     ) -> tuple[list[FrameRef], list[FrameRecord], list[Skip]]:
    """One part's refs and what `source` (a `FrameSource`) loads of them: records, and Skips for bad frames."""
    parts, _ = read_index(Path(index_path))
    refs = parts[part_idx]
    loaded = source.load(refs)
    return refs, [item for item in loaded if isinstance(item, FrameRecord)], [item for item in loaded if isinstance(item, Skip)]


def save_grasp_part_output(out_path: str, num_in: int, records: list[FrameRecord], grasps: list[GraspLabel],
                           skips: list[Skip]) -> StageSummary:
    """Write the part's summary sidecar, then the part file; return the summary (frames in, labelled out, skips)."""
    summary = StageSummary(stage="grasp", output_path=out_path, num_in=num_in, num_out=len(records),
                           skips_by_reason=count_by_reason(skips))
    write_summary(summary)
    save_grasp_part(Path(out_path), GraspPartOutput(tuple(records), tuple(grasps), tuple(skips)))
    return summary


# ---- annotate batches ----------------------------------------------------------------------------


def load_annotate_inputs(batch: BatchSpec, index_path: str | Path, part_path: str | Path
                         ) -> tuple[list[FrameRecord], list[GraspLabel]]:
    """This batch's frames and grasp labels, selected from its grasp part."""
    parts, _ = read_index(Path(index_path))
    keys = {ref.sample_key for ref in parts[batch.part_idx][batch.start : batch.stop]}
    part = load_grasp_part(Path(part_path))
    grasp_by_key = {label.sample_key: label for label in part.grasps}
    records = [record for record in part.records if record.sample_key in keys]
    return records, [grasp_by_key[record.sample_key] for record in records]


def save_annotate_output(out_path: str, skips_path: str | Path, num_in: int,
                         outputs: list[AnnotatedFrame | Skip]) -> StageSummary:
    """Write the skips, the summary sidecar, then the batch file (last: it marks the batch complete)."""
    from unihope.storage.batches import save_batch

    annotated = [item for item in outputs if isinstance(item, AnnotatedFrame)]
    skips = [item for item in outputs if isinstance(item, Skip)]
    summary = StageSummary(stage="annotate", output_path=out_path, num_in=num_in, num_out=len(annotated),
                           skips_by_reason=count_by_reason(skips))
    write_skips(Path(skips_path), skips)
    write_summary(summary)
    save_batch(out_path, annotated)
    return summary


# ---- de-occlusion batches ------------------------------------------------------------------------


def load_annotated(in_path: str) -> list[AnnotatedFrame]:
    """The frames of one annotate batch file."""
    from unihope.storage.batches import load_batch

    annotated, _ = load_batch(in_path)
    return annotated


def save_deocclude_output(out_path: str, num_in: int, results: list[DeocclusionResult]) -> StageSummary:
    """Write the summary sidecar, then the results file; num_out = kept pairs (UniHOPE's filter passed)."""
    summary = StageSummary(stage="deocclude", output_path=out_path, num_in=num_in,
                           num_out=sum(1 for r in results if r.keep), skips_by_reason={})
    write_summary(summary)
    save_results(Path(out_path), results)
    return summary
