"""Task: load one part's frames (whole sequence x camera groups) from the source and label their grasps."""

from __future__ import annotations

from prefect import task

from unihope.buildplan.batch_items import load_part_frames, save_grasp_part_output
from unihope.buildplan.workdir import WorkLayout
from unihope.buildplan.workfiles import reuse_summary
from unihope.config import PipelineConfig
from unihope.grasp import label_grasps
from unihope.storage.schema import StageSummary
from unihope.tasks.common import StageItem, begin_item, finish_item


def _open_source(cfg: PipelineConfig):
    """The configured source (reads only: the index task prepared a synthetic one)."""
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
        index_path: the index the index task wrote.
        out_path: the part file (`layout.grasp_part_path(part_idx)`); reused when it exists.
        fail_once: fault injection list (`grasp` or `grasp:<part_idx>`).

    Returns:
        Summary: frames in, frames loaded and labelled out, source skips by reason.
    """
    item = StageItem(layout, "grasp", part_idx, out_path, fail_once)
    if (reused := reuse_summary(out_path)) is not None:
        return reused
    started_s = begin_item(item)
    refs, records, skips = load_part_frames(_open_source(cfg), index_path, part_idx)
    grasps = label_grasps(records, cfg.grasp)
    summary = save_grasp_part_output(out_path, len(refs), records, grasps, skips)
    return finish_item(item, started_s, len(refs), summary)
