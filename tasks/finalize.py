"""Task: finalize the dataset (manifest, skips, root attrs), summarize it and write the HTML report."""

from __future__ import annotations

from prefect import task

from unihope.buildplan.output_items import (
    finalize_and_report, finalized_marker_path, load_build_skips, reuse_finalized, save_finalized_marker,
)
from unihope.buildplan.workdir import WorkLayout
from unihope.storage.schema import DatasetAttrs
from unihope.tasks.common import StageItem, begin_item, finish_item


@task(name="finalize")
def finalize_dataset(
    layout: WorkLayout, url: str, attrs: DatasetAttrs, num_parts: int, num_batches: int, num_shards: int,
    report_dir: str | None, fail_once: tuple[str, ...] = (),
):
    """Write manifest.json, skips.jsonl and the root attrs; then summarize and (optionally) report.

    Reused when this pack hash was finalized, its report exists and the manifest is in place.

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
    item = StageItem(layout, "finalize", 0, str(finalized_marker_path(layout)), fail_once)
    if (reused := reuse_finalized(layout, url, report_dir)) is not None:
        return reused
    started_s = begin_item(item)
    skips = load_build_skips(layout, num_parts, num_batches)
    summary = finalize_and_report(url, attrs, skips, num_shards, report_dir)
    save_finalized_marker(layout, summary)
    return finish_item(item, started_s, summary.num_samples, summary)
