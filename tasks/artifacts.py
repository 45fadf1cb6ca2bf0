"""Prefect artifacts of a build and a training run: what the UI shows next to the run's logs.

Keys (lowercase, dashes; Prefect keeps every version of a key across runs) are per dataset: the
prefix below, then `-<dataset folder name>-<8 hex of the dataset URL>` (`artifact_key`), so two
datasets built on one server keep apart histories (`build-summary-demo-data-1a2b3c4d`):

| key prefix | type | content |
|---|---|---|
| `build-summary` | markdown | the end-of-build summary (`DatasetSummary.describe`) |
| `build-skips` | table | skipped frames per (stage, reason) with an example |
| `build-deocclusion` | table | de-occlusion outcomes (kept / not_occluded / ...) and keep rules |
| `build-report` | table | where the HTML report and its figures are (only when one was written) |
| `build-progress-<stage>` | progress | percent of frames done per stage while the build runs |
| `train-metrics` | table | the run's scalar metrics (`metrics.json`) |
| `train-run` | markdown | run folder, checkpoint, steps |

The report is a table of local paths, not a link: a `file://` link in the UI opens nothing (the
browser refuses file links from an http page), a path can be copied. Called from flows (so each
artifact belongs to the flow run); outside a run Prefect still records them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact,
)

BUILD_SUMMARY_KEY = "build-summary"
BUILD_SKIPS_KEY = "build-skips"
BUILD_DEOCCLUSION_KEY = "build-deocclusion"
BUILD_REPORT_KEY = "build-report"
BUILD_PROGRESS_KEY_PREFIX = "build-progress-"
TRAIN_METRICS_KEY = "train-metrics"
TRAIN_RUN_KEY = "train-run"
KEY_NAME_MAX_CHARS = 24  # of the dataset folder's name inside a key
REPORT_FILES = ("index.html", "contact_sheet.png", "histograms.png", "summary.json")  # unihope.report.write_report
PROGRESS_STEP_PERCENT = 5.0  # a progress artifact is updated when its stage advanced this much (API calls are not free)


def artifact_key(prefix: str, dataset_url: str) -> str:
    """`<prefix>-<folder name>-<8 hex>`: the artifact key of `prefix` for one dataset (Prefect's key rule:
    lowercase letters, digits and dashes). The hash tells apart datasets whose folders share a name."""
    text = str(dataset_url).rstrip("/")
    name = re.sub(r"[^a-z0-9]+", "-", text.rsplit("/", 1)[-1].lower()).strip("-")[:KEY_NAME_MAX_CHARS].strip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{prefix}-{name}-{digest}" if name else f"{prefix}-{digest}"


def report_rows(report_path: str) -> list[dict]:
    """Rows `{file, path}` of the HTML report and its figures (those present)."""
    folder = Path(report_path).resolve().parent
    return [{"file": name, "path": str(folder / name)} for name in REPORT_FILES if (folder / name).exists()]


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
    """Publish a finished build's summary, skip table, de-occlusion table and report table.

    Args:
        summary: `unihope.report.DatasetSummary` returned by the finalize task.

    Returns:
        Artifact key -> artifact id (keys per dataset: `artifact_key`).
    """
    name = summary.url
    version = f" version {summary.version_id}" if summary.version_id else ""
    keys = {prefix: artifact_key(prefix, name) for prefix in (BUILD_SUMMARY_KEY, BUILD_SKIPS_KEY,
                                                              BUILD_DEOCCLUSION_KEY, BUILD_REPORT_KEY)}
    ids = {
        keys[BUILD_SUMMARY_KEY]: create_markdown_artifact(
            "\n".join(["# Build summary", "", "```", *summary.describe(), "```"]), key=keys[BUILD_SUMMARY_KEY],
            description=f"{name}{version}: {summary.num_samples} samples, {summary.num_pairs_kept} kept pairs"),
        keys[BUILD_SKIPS_KEY]: create_table_artifact(
            skip_rows(summary) or [{"stage": "", "reason": "(none)", "frames": 0, "example": ""}],
            key=keys[BUILD_SKIPS_KEY], description=f"{name}: {sum(summary.skips_by_reason.values())} skipped frames"),
        keys[BUILD_DEOCCLUSION_KEY]: create_table_artifact(
            deocclusion_rows(summary) or [{"kind": "outcome", "name": "(none)", "samples": 0}],
            key=keys[BUILD_DEOCCLUSION_KEY], description=f"{name}: de-occlusion outcomes and keep rules"),
    }
    if summary.report_path:
        ids[keys[BUILD_REPORT_KEY]] = create_table_artifact(
            report_rows(summary.report_path), key=keys[BUILD_REPORT_KEY],
            description=f"{name}{version}: the HTML report (open index.html in a browser)")
    return ids


class ProgressArtifacts:
    """A `unihope.progress` observer: one Prefect progress artifact per stage, updated every few percent."""

    def __init__(self, dataset_url: str | None = None, step_percent: float = PROGRESS_STEP_PERCENT) -> None:
        """Args: dataset_url: the build's output (keys per dataset, `artifact_key`); None -> keys without it."""
        self._dataset_url = dataset_url
        self._step_percent = step_percent
        self._ids: dict[str, UUID] = {}
        self._last_percent: dict[str, float] = {}

    def __call__(self, stage: str, done_frames: int, total_frames: int) -> None:
        percent = 100.0 * min(done_frames, total_frames) / total_frames if total_frames else 0.0  # 0: not sized yet
        if stage not in self._ids:
            key = BUILD_PROGRESS_KEY_PREFIX + stage
            self._ids[stage] = create_progress_artifact(
                percent, key=artifact_key(key, self._dataset_url) if self._dataset_url else key,
                description=f"{stage}: frames done")
        elif percent >= 100.0 or percent - self._last_percent[stage] >= self._step_percent:
            update_progress_artifact(self._ids[stage], percent)
        else:
            return
        self._last_percent[stage] = percent


def scalar_metric_rows(metrics: dict) -> list[dict]:
    """Rows `{metric, value}` of every number or string in a metrics dict (lists and nested dicts left out)."""
    return [{"metric": name, "value": value} for name, value in metrics.items()
            if isinstance(value, (int, float, str)) and not isinstance(value, bool)]


def publish_train_artifacts(result, data_url: str) -> dict[str, UUID]:
    """Publish a training run's scalar metrics (table) and where it wrote (markdown).

    Args:
        result: `unihope.train.loop.TrainResult`.
        data_url: the dataset trained on (keys per dataset, `artifact_key`).

    Returns:
        Artifact key -> artifact id.
    """
    rows = scalar_metric_rows(result.metrics)
    metrics_key, run_key = artifact_key(TRAIN_METRICS_KEY, data_url), artifact_key(TRAIN_RUN_KEY, data_url)
    return {
        metrics_key: create_table_artifact(
            rows or [{"metric": "(none)", "value": ""}], key=metrics_key,
            description=f"{result.out_dir}: metrics.json after {result.steps} steps"),
        run_key: create_markdown_artifact(
            f"# Training run\n\n- dataset: `{data_url}`\n- run folder: `{result.out_dir}`\n"
            f"- checkpoint: `{result.checkpoint_path}`\n- steps: {result.steps}\n", key=run_key,
            description=str(result.out_dir)),
    }
