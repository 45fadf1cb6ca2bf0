"""Task: list the source's frames and plan the batches (one coarse task per build)."""

from __future__ import annotations

from prefect import task

from unihope.buildplan.batch_items import index_item, reuse_index
from unihope.buildplan.plan import SourcePlan
from unihope.buildplan.workdir import WorkLayout
from unihope.config import PipelineConfig
from unihope.tasks.common import StageItem, on_render_thread, run_stage_item


def _prepare_source(cfg: PipelineConfig) -> None:
    """Write what the source reads when the pipeline makes it (synthetic; it renders: on the render thread)."""
    from unihope.sources import prepare_source

    on_render_thread(prepare_source, cfg.source, cfg.hand)


def _list_refs(cfg: PipelineConfig) -> list:
    """The source's frame refs (opening a source only reads)."""
    from unihope.sources import open_source

    return open_source(cfg.source, cfg.hand).index()


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
    _prepare_source(cfg)  # before the index reuse, so a deleted synthetic folder is written again
    item = StageItem(layout, "source", 0, out_path, fail_once, fault_name="index")
    return run_stage_item(
        item, lambda: index_item(lambda: _list_refs(cfg), cfg.source.max_frames, cfg.flow.frames_per_task, out_path),
        reuse=lambda: reuse_index(out_path))
