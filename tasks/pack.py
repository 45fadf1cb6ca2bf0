"""Tasks: claim the output for this pack hash, then pack one shard per task from the de-occluded batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import task

from unihope.storage.schema import DatasetAttrs, StageSummary
from unihope.tasks.common import ExecutionTimer
from unihope.tasks.options import maybe_fail_once
from unihope.tasks.work import ShardSpec, WorkLayout, atomic_write_json, load_results, plan_shards
from unihope.config import FlowConfig, PipelineConfig, StorageConfig


def _remove_pack_markers(layout: WorkLayout) -> list[str]:
    removed = []
    for path in sorted(layout.root.glob("pack-*")):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


@task(name="claim-output")
def claim_output(layout: WorkLayout, url: str) -> list[str]:
    """Record that the output now receives shards of this pack hash; forget markers of any other.

    The shard markers say "shard k of pack hash h is committed at the output". When the output
    last received another hash (another config was built into it since), those markers no longer
    describe what the output holds, so all markers go and every shard is packed again.

    Args:
        layout: work layout (its pack hash and marker folders).
        url: the dataset path or URL.

    Returns:
        Names of the marker folders removed (empty when the output already holds this hash).
    """
    state_path = layout.output_state_path
    current = {"url": url, "pack_hash": layout.hashes.pack}
    previous = json.loads(state_path.read_text()) if state_path.is_file() else None
    if previous == current:
        return []
    removed = _remove_pack_markers(layout)
    atomic_write_json(state_path, current)
    return removed


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
    from unihope.storage.batches import load_batch
    from unihope.storage.writer import write_shard

    # 1. Skip a shard committed earlier for this pack hash.
    if Path(out_path).is_file():
        return StageSummary(stage="pack", output_path=out_path, num_in=shard.num_samples, num_out=shard.num_samples)
    maybe_fail_once("pack", shard.shard_idx, fail_once)

    with ExecutionTimer(layout, "pack", shard.shard_idx) as timer:
        # 2. Gather the shard's samples, in order, from the batches it spans.
        annotated, results = [], []
        for piece in shard.slices:
            annotated_path, results_path = batch_paths[piece.batch_idx]
            batch_annotated, _ = load_batch(annotated_path)
            batch_results = load_results(Path(results_path))
            if [r.sample_key for r in batch_results] != [a.frame.sample_key for a in batch_annotated]:
                raise ValueError(f"{results_path} does not match {annotated_path}; delete both and rebuild")
            annotated.extend(batch_annotated[piece.start : piece.stop])
            results.extend(batch_results[piece.start : piece.stop])

        # 3. Write and commit the shard, then the marker.
        commit = write_shard(url, shard.shard_idx, annotated, results, attrs, cfg)
        atomic_write_json(Path(out_path), {"pack_hash": layout.hashes.pack, "commit": commit.to_json()})
        timer.num_frames = len(annotated)
    return StageSummary(stage="pack", output_path=out_path, num_in=shard.num_samples, num_out=len(annotated))



@task(name="plan-shards")
def plan_shards_task(batch_sample_counts: list[int], shard_size: int) -> list[ShardSpec]:
    """Cut the annotated batches into shards (see `unihope.tasks.work.plan_shards`)."""
    return plan_shards(batch_sample_counts, shard_size)


def source_description(cfg: PipelineConfig) -> str:
    """`synthetic:dexycb` or `dexycb:/data/dex-ycb`: where the dataset's frames came from."""
    if cfg.source.kind == "synthetic":
        return f"synthetic:{cfg.source.synthetic.format}"
    return f"{cfg.source.kind}:{cfg.source.root}"


def dataset_attrs(cfg: PipelineConfig) -> DatasetAttrs:
    """Attributes stored with every shard: the resolved config without its orchestration settings.

    `flow` (runner, retries, fault injection, work folder) changes how a build runs, never what it
    writes; leaving it out keeps shards of a threads build and a Dask build byte-identical. The hand
    model's identity (kind, file digests, tip convention) lets training load the same model.
    """
    from unihope.storage.writer import code_version
    from unihope.hand_identity import hand_model_identity

    # The fingertip convention is recorded resolved ("auto" -> the layout's own): training builds its
    # hand layer with it (unihope.tip_convention.dataset_tip_convention).
    source = cfg.source.model_copy(update={"tip_convention": cfg.source.resolved_tip_convention()})
    data_cfg = cfg.model_copy(update={"flow": FlowConfig(), "source": source})
    config = data_cfg.model_dump(mode="json")
    config.pop("flow")
    return DatasetAttrs(name=cfg.name, source=source_description(cfg), config=config,
                        config_hash=data_cfg.config_hash(), code_version=code_version(),
                        hand_model=hand_model_identity(cfg.hand, source.tip_convention).to_json())
