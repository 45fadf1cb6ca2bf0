"""Prefect artifacts of a build and a training run: what the UI shows next to the run's logs.

Keys (lowercase, dashes; Prefect keeps every version of a key across runs):

| key | type | content |
|---|---|---|
| `build-summary` | markdown | the end-of-build summary (`DatasetSummary.describe`) |
| `build-skips` | table | skipped frames per (stage, reason) with an example |
| `build-deocclusion` | table | de-occlusion outcomes (kept / not_occluded / ...) and keep rules |
| `build-report` | link | the HTML report's `index.html` (only when one was written) |
| `build-progress-<stage>` | progress | percent of frames done per stage while the build runs |
| `train-metrics` | table | the run's scalar metrics (`metrics.json`) |
| `train-run` | markdown | run folder, checkpoint, steps |

Called from flows (so each artifact belongs to the flow run); outside a run Prefect still records them.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact, create_markdown_artifact, create_progress_artifact, create_table_artifact,
    update_progress_artifact,
)

BUILD_SUMMARY_KEY = "build-summary"
BUILD_SKIPS_KEY = "build-skips"
BUILD_DEOCCLUSION_KEY = "build-deocclusion"
BUILD_REPORT_KEY = "build-report"
BUILD_PROGRESS_KEY_PREFIX = "build-progress-"
TRAIN_METRICS_KEY = "train-metrics"
TRAIN_RUN_KEY = "train-run"
PROGRESS_STEP_PERCENT = 5.0  # a progress artifact is updated when its stage advanced this much (API calls are not free)


def skip_rows(summary) -> list[dict]:
    """Rows of the skip table: one per (stage, reason) of the dataset's skips.jsonl, with one example."""
    from unihope.report import read_skips

    counts: dict[tuple[str, str], int] = {}
    for skip in read_skips(summary.url):
        key = (str(skip.get("stage", "")), str(skip.get("reason", "")))
        counts[key] = counts.get(key, 0) + 1
    rows = []
    for (stage, reason), count in sorted(counts.items()):
        examples = summary.skip_examples.get(reason) or [""]
        rows.append({"stage": stage, "reason": reason, "frames": count, "example": examples[0]})
    return rows


def deocclusion_rows(summary) -> list[dict]:
    """Rows of the de-occlusion table: outcome counts, then the pairs each keep rule would keep."""
    rows = [{"kind": "outcome", "name": name, "samples": count}
            for name, count in sorted(summary.deocclusion_reasons.items())]
    rows += [{"kind": "keep rule" + (" (in use)" if rule == summary.keep_rule else ""), "name": rule, "samples": count}
             for rule, count in summary.pairs_by_rule.items()]
    return rows


def publish_build_artifacts(summary) -> dict[str, UUID]:
    """Publish a finished build's summary, skip table, de-occlusion table and report link.

    Args:
        summary: `unihope.report.DatasetSummary` returned by the finalize task.

    Returns:
        Artifact key -> artifact id.
    """
    name = summary.url
    ids = {
        BUILD_SUMMARY_KEY: create_markdown_artifact(
            "\n".join(["# Build summary", "", "```", *summary.describe(), "```"]), key=BUILD_SUMMARY_KEY,
            description=f"{name}: {summary.num_samples} samples, {summary.num_pairs_kept} kept pairs"),
        BUILD_SKIPS_KEY: create_table_artifact(
            skip_rows(summary) or [{"stage": "", "reason": "(none)", "frames": 0, "example": ""}], key=BUILD_SKIPS_KEY,
            description=f"{name}: {sum(summary.skips_by_reason.values())} skipped frames"),
        BUILD_DEOCCLUSION_KEY: create_table_artifact(
            deocclusion_rows(summary) or [{"kind": "outcome", "name": "(none)", "samples": 0}],
            key=BUILD_DEOCCLUSION_KEY, description=f"{name}: de-occlusion outcomes and keep rules"),
    }
    if summary.report_path:
        ids[BUILD_REPORT_KEY] = create_link_artifact(
            Path(summary.report_path).resolve().as_uri(), link_text="HTML report", key=BUILD_REPORT_KEY,
            description=f"{name}: contact sheets, histograms, skip table")
    return ids


class ProgressArtifacts:
    """A `unihope.progress` observer: one Prefect progress artifact per stage, updated every few percent."""

    def __init__(self, step_percent: float = PROGRESS_STEP_PERCENT) -> None:
        self._step_percent = step_percent
        self._ids: dict[str, UUID] = {}
        self._last_percent: dict[str, float] = {}

    def __call__(self, stage: str, done_frames: int, total_frames: int) -> None:
        percent = 100.0 * min(done_frames, total_frames) / total_frames if total_frames else 100.0
        if stage not in self._ids:
            self._ids[stage] = create_progress_artifact(
                percent, key=BUILD_PROGRESS_KEY_PREFIX + stage, description=f"{stage}: frames done")
        elif percent >= 100.0 or percent - self._last_percent[stage] >= self._step_percent:
            update_progress_artifact(self._ids[stage], percent)
        else:
            return
        self._last_percent[stage] = percent


def scalar_metric_rows(metrics: dict) -> list[dict]:
    """Rows `{metric, value}` of every number or string in a metrics dict (lists and nested dicts left out)."""
    return [{"metric": name, "value": value} for name, value in metrics.items()
            if isinstance(value, (int, float, str)) and not isinstance(value, bool)]


def publish_train_artifacts(result) -> dict[str, UUID]:
    """Publish a training run's scalar metrics (table) and where it wrote (markdown).

    Args:
        result: `unihope.train.loop.TrainResult`.
    """
    rows = scalar_metric_rows(result.metrics)
    return {
        TRAIN_METRICS_KEY: create_table_artifact(
            rows or [{"metric": "(none)", "value": ""}], key=TRAIN_METRICS_KEY,
            description=f"{result.out_dir}: metrics.json after {result.steps} steps"),
        TRAIN_RUN_KEY: create_markdown_artifact(
            f"# Training run\n\n- run folder: `{result.out_dir}`\n- checkpoint: `{result.checkpoint_path}`\n"
            f"- steps: {result.steps}\n", key=TRAIN_RUN_KEY, description=str(result.out_dir)),
    }
