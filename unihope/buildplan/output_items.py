"""The output side of a build: claiming the output for a pack hash, one shard per item, finalize, dataset attrs.

As in `unihope.buildplan.batch_items`: reuse checks, load and save helpers that a task body calls in
order (reuse check -> load -> stage -> save); nothing here calls back into a task.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from unihope.buildplan.plan import ShardSpec
from unihope.buildplan.workdir import WorkLayout
from unihope.storage.io import write_file_atomic
from unihope.buildplan.workfiles import atomic_write_json, load_grasp_part, load_results, read_skips
from unihope.config import FlowConfig, PipelineConfig, StorageConfig
from unihope.storage.schema import AnnotatedFrame, DatasetAttrs, DeocclusionResult, ShardCommit, Skip, StageSummary

FINALIZED_MARKER = "finalized.json"
FINALIZED_VERSION = "finalized_version.txt"  # the dataset version the marker's summary and report describe


# ----------------------------------------------------------------------------------------------
# Claim and pack
# ----------------------------------------------------------------------------------------------


def _remove_pack_markers(layout: WorkLayout) -> list[str]:
    removed = []
    for path in sorted(layout.root.glob("pack-*")):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


def claim_output(layout: WorkLayout, url: str) -> list[str]:
    """Record that the output now receives shards of this pack hash; forget markers of any other.

    The shard markers say "shard k of pack hash h is committed at the output". When the output
    last received another hash (another config was built into it since), those markers no longer
    describe what the output holds, so all markers go and every shard is packed again.

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


def reuse_shard(shard: ShardSpec, out_path: str) -> StageSummary | None:
    """The summary of a shard committed earlier for this pack hash (its marker exists), else None."""
    if not Path(out_path).is_file():
        return None
    return StageSummary(stage="pack", output_path=out_path, num_in=shard.num_samples, num_out=shard.num_samples)


def load_shard_samples(shard: ShardSpec, batch_paths: dict[int, tuple[str, str]]
                       ) -> tuple[list[AnnotatedFrame], list[DeocclusionResult]]:
    """The shard's samples and their de-occlusion results, in order, from the batches it spans.

    Raises:
        ValueError: when a results file does not match its annotate batch.
    """
    from unihope.storage.batches import load_batch

    annotated, results = [], []
    for piece in shard.slices:
        annotated_path, results_path = batch_paths[piece.batch_idx]
        batch_annotated, _ = load_batch(annotated_path)
        batch_results = load_results(Path(results_path))
        if [r.sample_key for r in batch_results] != [a.frame.sample_key for a in batch_annotated]:
            raise ValueError(f"{results_path} does not match {annotated_path}; delete both and rebuild")
        annotated.extend(batch_annotated[piece.start : piece.stop])
        results.extend(batch_results[piece.start : piece.stop])
    return annotated, results


def save_shard_marker(layout: WorkLayout, out_path: str, shard: ShardSpec, commit: ShardCommit,
                      num_packed: int) -> StageSummary:
    """Mark the committed shard in the work folder (the marker is the item's output) and return its summary."""
    atomic_write_json(Path(out_path), {"pack_hash": layout.hashes.pack, "commit": commit.to_json()})
    return StageSummary(stage="pack", output_path=out_path, num_in=shard.num_samples, num_out=num_packed)


# ----------------------------------------------------------------------------------------------
# Finalize
# ----------------------------------------------------------------------------------------------


def load_build_skips(layout: WorkLayout, num_parts: int, num_batches: int) -> list[Skip]:
    """Every Skip of the build: source skips (grasp parts) then annotate skips (batch sidecars), in order."""
    skips: list[Skip] = []
    for part_idx in range(num_parts):
        skips.extend(load_grasp_part(layout.grasp_part_path(part_idx)).skips)
    for batch_idx in range(num_batches):
        skips.extend(read_skips(layout.annotate_skips_path(batch_idx)))
    return skips


def drop_stale_commits(url: str, num_shards: int) -> list[int]:
    """Remove commit records of shard indices >= `num_shards` (left by an earlier, larger build).

    Returns:
        The shard indices whose commits were removed (their data folders then become orphans that
        `unihope.storage.writer.finalize` deletes).
    """
    from unihope.storage.io import locate
    from unihope.storage.manifest import commit_path, list_commits

    loc = locate(url)
    stale = [commit.shard_idx for commit in list_commits(loc) if commit.shard_idx >= num_shards]
    for shard_idx in stale:
        loc.fs.rm(loc.path(commit_path(shard_idx)))
    return stale


def finalized_marker_path(layout: WorkLayout) -> Path:
    """Marker: this pack hash was finalized (`claim_output` removes it when the output changes hands)."""
    return layout.stage_dir("pack") / FINALIZED_MARKER


def reuse_finalized(layout: WorkLayout, url: str, report_dir: str | None):
    """The `DatasetSummary` of an earlier finalize of this pack hash, or None (no marker, report or manifest)."""
    from unihope.report import DatasetSummary
    from unihope.storage.io import locate, read_bytes
    from unihope.storage.manifest import MANIFEST_NAME

    from unihope.storage.versions import newest_version_id

    marker = finalized_marker_path(layout)
    version_path = marker.with_name(FINALIZED_VERSION)
    is_report_present = report_dir is None or (Path(report_dir) / "index.html").is_file()
    if not (marker.is_file() and version_path.is_file() and is_report_present):
        return None
    loc = locate(url)
    # keyed by version: a summary and report of another version than the output's newest are stale
    if read_bytes(loc, MANIFEST_NAME) is None or newest_version_id(loc) != version_path.read_text().strip():
        return None
    return DatasetSummary.from_json(json.loads(marker.read_text()))


def finalize_and_report(url: str, attrs: DatasetAttrs, skips: list[Skip], num_shards: int, report_dir: str | None):
    """Drop shards an earlier, larger build left, commit the version (manifest, skips.jsonl, root attrs),
    summarize it and (optionally) write the HTML report.

    Returns:
        The `unihope.report.DatasetSummary` of the finished dataset (with the report's path).
    """
    from unihope.report import summarize_dataset, write_report
    from unihope.storage.writer import finalize

    drop_stale_commits(url, num_shards)
    finalize(url, attrs, skips)
    summary = summarize_dataset(url)
    if report_dir is not None:
        index_path = write_report(data_url=url, out_dir=Path(report_dir))
        summary = dataclasses.replace(summary, report_path=str(index_path))
    return summary


def save_finalized_marker(layout: WorkLayout, summary) -> None:
    """Mark this pack hash finalized with its summary (what `reuse_finalized` returns later), beside the
    version it describes (a newer version of the output makes both stale)."""
    marker = finalized_marker_path(layout)
    write_file_atomic(marker.with_name(FINALIZED_VERSION), summary.version_id.encode())
    atomic_write_json(marker, summary.to_json())


# ----------------------------------------------------------------------------------------------
# Dataset attributes
# ----------------------------------------------------------------------------------------------


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
    from unihope.hand_identity import hand_model_identity
    from unihope.storage.writer import code_version

    # The fingertip convention is recorded resolved ("auto" -> the layout's own): training builds its
    # hand layer with it (unihope.tip_convention.dataset_tip_convention).
    source = cfg.source.model_copy(update={"tip_convention": cfg.source.resolved_tip_convention()})
    data_cfg = cfg.model_copy(update={"flow": FlowConfig(), "source": source})
    config = data_cfg.model_dump(mode="json")
    config.pop("flow")
    return DatasetAttrs(name=cfg.name, source=source_description(cfg), config=config,
                        config_hash=data_cfg.config_hash(), code_version=code_version(),
                        hand_model=hand_model_identity(cfg.hand, source.tip_convention).to_json())
