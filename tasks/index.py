"""Task: the index step: prepare the source, list its frames and plan the batches (one coarse task per build)."""

from __future__ import annotations

from prefect import get_run_logger, task

from unihope.buildplan.batch_items import plan_index, reuse_index, save_index
from unihope.buildplan.plan import SourcePlan
from unihope.buildplan.workdir import WorkLayout
from unihope.config import PipelineConfig
from unihope.progress import BuildProgress
from unihope.tasks.common import StageItem, begin_item, finish_item, on_render_thread
from unihope.tasks.resources import worker_resources


def _prepare_source(cfg: PipelineConfig) -> None:
    """Write what the source reads when the pipeline makes it (synthetic; it renders: on the render thread).

    Its progress is a `synthesize` stage (images): log lines, and a bar where the CLI shows bars.
    """
    from unihope.sources import prepare_source

    progress = BuildProgress(emit=get_run_logger().info)

    def on_progress(done_images: int, total_images: int) -> None:  # on the render thread, in this task's context
        if done_images == 1:
            progress.add_stage("synthesize", total_images)
        progress.advance("synthesize", 1)

    on_render_thread(prepare_source, cfg.source, cfg.hand, worker_resources().scene_renderers, on_progress)


def load_refs(cfg: PipelineConfig) -> list:
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
    item = StageItem(layout, "index", 0, out_path, fail_once)
    if (reused := reuse_index(out_path)) is not None:
        return reused
    started_s = begin_item(item)
    refs = load_refs(cfg)
    parts, batches = plan_index(refs, cfg.source.max_frames, cfg.flow.frames_per_task)
    plan = save_index(out_path, parts, batches)
    return finish_item(item, started_s, len(refs), plan)
