"""Task: list the source's frames and plan the batches (one coarse task per build)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from unihope.tasks.common import ExecutionTimer, on_render_thread
from unihope.tasks.options import maybe_fail_once
from unihope.tasks.work import SourcePlan, WorkLayout, plan_batches, plan_parts, read_index, write_index
from unihope.config import PipelineConfig


def _plan_from_index(index_path: Path) -> SourcePlan:
    parts, batches = read_index(index_path)
    return SourcePlan(index_path=str(index_path), num_frames=sum(len(p) for p in parts),
                      part_sizes=tuple(len(p) for p in parts), batches=tuple(batches))


@task(name="index")
def index_source(cfg: PipelineConfig, layout: WorkLayout, out_path: str, fail_once: tuple[str, ...] = ()) -> SourcePlan:
    """List the source's frames (capped by source.max_frames) and split them into grasp parts and batches.

    Args:
        cfg: the pipeline config (source, hand, flow.frames_per_task).
        layout: the build's work layout (for the execution log).
        out_path: where the index goes (`layout.index_path`); reused when it exists.
        fail_once: fault injection list (`index` fails its first attempt when listed).

    Returns:
        The plan: index path, frame count, grasp part sizes and annotate batches.
    """
    from unihope.sources import open_source, prepare_source

    # 0. Write what the source reads when the pipeline makes it (synthetic; it renders: on the render
    #    thread). Before the index reuse, so a deleted synthetic folder is written again.
    on_render_thread(prepare_source, cfg.source, cfg.hand)

    # 1. Reuse a complete index.
    if Path(out_path).is_file():
        return _plan_from_index(Path(out_path))
    maybe_fail_once("index", 0, fail_once)

    # 2. List, cap and plan.
    with ExecutionTimer(layout, "source", 0) as timer:
        refs = open_source(cfg.source, cfg.hand).index()
        if cfg.source.max_frames is not None and len(refs) > cfg.source.max_frames:
            refs = sorted(refs, key=lambda r: (r.sequence_key, r.serial, r.frame_idx))[: cfg.source.max_frames]
        parts = plan_parts(refs, cfg.flow.frames_per_task)
        batches = plan_batches([len(p) for p in parts], cfg.flow.frames_per_task)
        write_index(Path(out_path), parts, batches)
        timer.num_frames = len(refs)
    return _plan_from_index(Path(out_path))
