"""Tasks: claim the output for this pack hash, then pack one shard per task from the de-occluded batches."""

from __future__ import annotations

from prefect import task

from unihope.buildplan import output_items
from unihope.buildplan.output_items import dataset_attrs, load_shard_samples, reuse_shard, save_shard_marker
from unihope.buildplan.plan import ShardSpec, plan_shards
from unihope.buildplan.workdir import WorkLayout
from unihope.config import StorageConfig
from unihope.storage.schema import DatasetAttrs, StageSummary
from unihope.storage.writer import write_shard
from unihope.tasks.common import StageItem, begin_item, finish_item

__all__ = ["claim_output", "dataset_attrs", "pack_shard", "plan_shards_task"]


@task(name="claim-output")
def claim_output(layout: WorkLayout, url: str) -> list[str]:
    """Record that the output now receives shards of this pack hash; forget markers of any other.

    See `unihope.buildplan.output_items.claim_output`.

    Returns:
        Names of the marker folders removed (empty when the output already holds this hash).
    """
    return output_items.claim_output(layout, url)


@task(name="pack", task_run_name="pack-shard-{shard.shard_idx}")
def pack_shard(
    cfg: StorageConfig, layout: WorkLayout, url: str, shard: ShardSpec, batch_paths: dict[int, tuple[str, str]],
    attrs: DatasetAttrs, out_path: str, fail_once: tuple[str, ...] = (),
) -> StageSummary:
    """Write one shard (Zarr v3) from slices of annotated batches and their results; mark it committed.

    Args:
        cfg: storage config (shard size, codecs).
        layout: work layout (execution log).
        url: dataset path or URL.
        shard: the shard's index and batch slices.
        batch_paths: (annotate batch file, de-occlusion results file) of every batch the shard reads.
        attrs: dataset attributes stored with the shard.
        out_path: the shard's marker (`layout.shard_marker_path`); the shard is skipped when it exists.
        fail_once: fault injection list (`pack` or `pack:<shard_idx>`).

    Returns:
        Summary: samples packed, with the marker as output path.
    """
    item = StageItem(layout, "pack", shard.shard_idx, out_path, fail_once)
    if (reused := reuse_shard(shard, out_path)) is not None:
        return reused
    started_s = begin_item(item)
    annotated, results = load_shard_samples(shard, batch_paths)
    commit = write_shard(url, shard.shard_idx, annotated, results, attrs, cfg)
    summary = save_shard_marker(layout, out_path, shard, commit, len(annotated))
    return finish_item(item, started_s, len(annotated), summary)


@task(name="plan-shards")
def plan_shards_task(batch_sample_counts: list[int], shard_size: int) -> list[ShardSpec]:
    """Cut the annotated batches into shards (see `unihope.buildplan.plan.plan_shards`)."""
    return plan_shards(batch_sample_counts, shard_size)
