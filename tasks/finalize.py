"""Task: finalize the dataset (manifest, skips, root attrs), summarize it and write the HTML report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prefect import task

from unihope.storage.schema import DatasetAttrs, Skip
from unihope.tasks.common import ExecutionTimer
from unihope.tasks.options import maybe_fail_once
from unihope.tasks.work import WorkLayout, atomic_write_json, load_grasp_part, read_skips

FINALIZED_MARKER = "finalized.json"


def collect_skips(layout: WorkLayout, num_parts: int, num_batches: int) -> list[Skip]:
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


@task(name="finalize")
def finalize_dataset(
    layout: WorkLayout, url: str, attrs: DatasetAttrs, num_parts: int, num_batches: int, num_shards: int,
    report_dir: str | None, fail_once: tuple[str, ...] = (),
):
    """Write manifest.json, skips.jsonl and the root attrs; then summarize and (optionally) report.

    Args:
        layout: work layout (where the skips are).
        url: dataset path or URL.
        attrs: dataset attributes.
        num_parts: grasp parts of the plan.
        num_batches: annotate batches of the plan.
        num_shards: shards this build packed (commits beyond are stale and removed).
        report_dir: where the HTML report goes; None -> no report.
        fail_once: fault injection list (`finalize`).

    Returns:
        `unihope.report.DatasetSummary` of the finished dataset.
    """
    from unihope.storage.io import locate, read_bytes
    from unihope.storage.manifest import MANIFEST_NAME
    from unihope.storage.writer import finalize
    from unihope.report import DatasetSummary, summarize_dataset, write_report

    # 1. Reuse: this pack hash was finalized (claim_output removes the marker when the output changes hands).
    marker = layout.stage_dir("pack") / FINALIZED_MARKER
    is_report_present = report_dir is None or (Path(report_dir) / "index.html").is_file()
    if marker.is_file() and is_report_present and read_bytes(locate(url), MANIFEST_NAME) is not None:
        return DatasetSummary.from_json(json.loads(marker.read_text()))
    maybe_fail_once("finalize", 0, fail_once)

    with ExecutionTimer(layout, "finalize", 0) as timer:
        # 2. Gather the build's skips and drop shards an earlier, larger build left behind.
        skips = collect_skips(layout, num_parts, num_batches)
        drop_stale_commits(url, num_shards)

        # 3. Finalize, summarize, report; the marker last.
        finalize(url, attrs, skips)
        summary = summarize_dataset(url)
        if report_dir is not None:
            index_path = write_report(data_url=url, out_dir=Path(report_dir))
            summary = dataclasses.replace(summary, report_path=str(index_path))
        atomic_write_json(marker, summary.to_json())
        timer.num_frames = summary.num_samples
    return summary
