"""Dataset summary and HTML report: contact sheets, histograms and the skip table of a built dataset."""

from __future__ import annotations

import html
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from unihope.config import DeocclusionConfig
from unihope.deocclude.keep import pairs_by_rule

LOGGER = logging.getLogger(__name__)
VISIBILITY_BIN_EDGES = tuple(round(0.1 * i, 1) for i in range(11))  # [0, 0.1, ..., 1.0]
BETA_BIN_EDGES = tuple(round(0.1 * i, 1) for i in range(21))  # [0, 0.1, ..., 2.0]: the config's beta range
MAX_CONTACT_ROWS = 12  # samples shown in the contact sheet
MAX_SKIP_EXAMPLES = 3  # sample keys listed per skip reason
HIST_BAR_WIDTH = 40  # characters of the longest text histogram bar
DEPTH_CMAP = "viridis"
NUM_OCCLUSION_BINS = 4
OCCLUSION_BIN_LABELS = ("[0, .25]", "(.25, .5]", "(.5, .75]", "(.75, 1]")  # visibility ranges (schema)
# What each keep rule keeps, in words (unihope.deocclude.keep: two drop tests and how they combine)
KEEP_RULE_TEXT = {
    "score": "keeps a pair whose generated image scores above the original by the margin",
    "occ": "keeps a pair whose hand is occluded enough (visibility <= max_visibility)",
    "and": "keeps a pair that passes either test (score or occlusion)",
    "or": "keeps a pair that passes both tests (score and occlusion)",
    "all": "keeps every generated pair",
    "none": "keeps no pair (a baseline without pairs)",
}
# Skeleton of the 21 joints (DexYCB order: wrist, then 4 per finger from the base) drawn over the crops
HAND_BONES = tuple((0 if j % 4 == 1 else j - 1, j) for j in range(1, 21))


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """What a finished build holds: counts, skips by reason, visibility and beta histograms."""

    url: str
    num_frames_seen: int  # samples stored + frames skipped at any stage
    num_samples: int
    num_pairs_kept: int  # samples whose de-occluded pair passed UniHOPE's filter
    skips_by_reason: dict[str, int]
    skips_by_stage: dict[str, int]
    deocclusion_reasons: dict[str, int]  # kept / not_occluded / no_gain / ...
    visibility_counts: tuple[int, ...]  # per VISIBILITY_BIN_EDGES bin
    occlusion_bin_counts: tuple[int, ...]  # per UniHOPE occlusion bin 0..3 (OCCLUSION_BIN_LABELS)
    beta_counts: tuple[int, ...]  # kept pairs with a finite beta, per BETA_BIN_EDGES bin
    visibility_bin_edges: tuple[float, ...] = VISIBILITY_BIN_EDGES
    beta_bin_edges: tuple[float, ...] = BETA_BIN_EDGES
    num_shards: int = 0
    skip_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few "key (detail)"
    report_path: str | None = None  # index.html of the HTML report, when one was written
    keep_rule: str = ""  # the build's deocclusion.keep_rule
    pairs_by_rule: dict[str, int] = field(default_factory=dict)  # keep rule -> pairs it would keep
    num_generated: int = 0  # samples with a generated candidate (the only ones any rule can keep)
    version_id: str = ""  # the dataset version summarized ("" for a build in progress)
    grasp_counts_by_bin: tuple[tuple[int, int], ...] = ()  # per occlusion bin 0..3: (not grasping, grasping)
    deocclusion_backend: str = ""  # the build's deocclusion.backend

    def describe(self) -> list[str]:
        """Human-readable lines (the end-of-build summary)."""
        version = f" version {self.version_id}" if self.version_id else ""
        lines = [
            f"dataset {self.url}{version}: {self.num_samples} samples in {self.num_shards} shards",
            f"frames seen {self.num_frames_seen}, skipped {sum(self.skips_by_reason.values())}, "
            f"kept pairs {self.num_pairs_kept}",
        ]
        if self.skips_by_reason:
            lines.append("skipped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skips_by_reason.items())))
        if self.deocclusion_reasons:
            lines.append("de-occlusion: " + ", ".join(f"{k} {v}" for k, v in sorted(self.deocclusion_reasons.items())))
        if self.pairs_by_rule:
            lines.append(f"keep rules (pairs each would keep of {self.num_generated} generated; in use: "
                         f"{self.keep_rule}): " + ", ".join(f"{k} {v}" for k, v in self.pairs_by_rule.items()))
        lines.append("visibility histogram:")
        lines.extend(_text_histogram(self.visibility_bin_edges, self.visibility_counts))
        lines.append("beta histogram (kept pairs):")
        lines.extend(_text_histogram(self.beta_bin_edges, self.beta_counts) or ["  (no kept pair with a beta)"])
        if self.report_path:
            lines.append(f"report: {self.report_path}")
        return lines

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, data: dict) -> "DatasetSummary":
        """Inverse of `to_json` (JSON turns tuples into lists; they are restored)."""
        values = {name: data[name] for name in cls.__slots__ if name in data}
        for name in ("visibility_counts", "occlusion_bin_counts", "beta_counts", "visibility_bin_edges",
                     "beta_bin_edges"):
            if name in values:
                values[name] = tuple(values[name])
        if "pairs_by_rule" in values:  # JSON written with sorted keys: back to the rules' own order
            order = {rule: i for i, rule in enumerate(KEEP_RULE_TEXT)}
            values["pairs_by_rule"] = dict(sorted(values["pairs_by_rule"].items(), key=lambda kv: order.get(kv[0], 99)))
        if "grasp_counts_by_bin" in values:
            values["grasp_counts_by_bin"] = tuple(tuple(pair) for pair in values["grasp_counts_by_bin"])
        return cls(**values)


def _text_histogram(edges: tuple[float, ...], counts: tuple[int, ...]) -> list[str]:
    """One line per bin between the first and the last non-empty bin, with a bar."""
    nonzero = [i for i, count in enumerate(counts) if count]
    if not nonzero:
        return []
    peak = max(counts)
    lines = []
    for i in range(nonzero[0], nonzero[-1] + 1):
        bar = "#" * max(1 if counts[i] else 0, round(HIST_BAR_WIDTH * counts[i] / peak))
        lines.append(f"  [{edges[i]:.1f}, {edges[i + 1]:.1f}) {counts[i]:>6} {bar}")
    return lines


def _histogram(values: np.ndarray, edges: tuple[float, ...]) -> tuple[int, ...]:
    """Counts per bin; the last bin is closed, values outside the range are clipped into the end bins."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    clipped = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(edges))
    return tuple(int(c) for c in counts)


def read_skips(url: str) -> list[dict]:
    """The dataset's skips.jsonl entries (empty when the file is absent)."""
    from unihope.storage.io import locate, read_bytes
    from unihope.storage.manifest import SKIPS_NAME

    payload = read_bytes(locate(url), SKIPS_NAME)
    if payload is None:
        return []
    return [json.loads(line) for line in payload.decode().splitlines() if line.strip()]


def summarize_dataset(url: str) -> DatasetSummary:
    """Count what a dataset holds from its columns and skips.jsonl (no image is read).

    Args:
        url: dataset path or URL (finalized or in progress).

    Returns:
        The summary.
    """
    from unihope.storage.view import open_dataset

    # 1. Columns of every committed shard (each chunk checked against its commit record's sha256).
    view = open_dataset(url)
    try:
        visibility = view.column("visibility") if len(view) else np.zeros(0)
        occlusion_bin = view.column("occlusion_bin") if len(view) else np.zeros(0, np.uint8)
        keep = view.column("keep").astype(bool) if len(view) else np.zeros(0, bool)
        beta = view.column("beta") if len(view) else np.zeros(0)
        reasons = view.column("deocclusion_reason") if len(view) else np.zeros(0, object)
        original_score = view.column("original_score") if len(view) else np.zeros(0)
        deocclusion_score = view.column("deocclusion_score") if len(view) else np.zeros(0)
        grasp = view.column("grasp").astype(bool) if len(view) else np.zeros(0, bool)
        deocclusion_cfg = _deocclusion_config(view)
        num_shards = len(view.shards)
        version_id = view.version_id
    finally:
        view.close()

    # 2. Skips by reason and stage, with a few examples each.
    skips = read_skips(url)
    examples: dict[str, list[str]] = {}
    for skip in skips:
        bucket = examples.setdefault(skip["reason"], [])
        if len(bucket) < MAX_SKIP_EXAMPLES:
            bucket.append(f"{skip['sample_key']} ({skip['stage']}: {skip.get('detail', '')})")

    return DatasetSummary(
        url=str(url),
        num_frames_seen=len(visibility) + len(skips),
        num_samples=len(visibility),
        num_pairs_kept=int(keep.sum()),
        skips_by_reason=dict(sorted(Counter(s["reason"] for s in skips).items())),
        skips_by_stage=dict(sorted(Counter(s["stage"] for s in skips).items())),
        deocclusion_reasons=dict(sorted(Counter(str(r) for r in reasons).items())),
        visibility_counts=_histogram(visibility, VISIBILITY_BIN_EDGES),
        occlusion_bin_counts=tuple(int((np.asarray(occlusion_bin) == b).sum()) for b in range(NUM_OCCLUSION_BINS)),
        beta_counts=_histogram(np.asarray(beta)[keep], BETA_BIN_EDGES),
        num_shards=num_shards,
        skip_examples=examples,
        keep_rule=deocclusion_cfg.keep_rule,
        pairs_by_rule=pairs_by_rule(visibility, original_score, deocclusion_score, deocclusion_cfg),
        num_generated=int((np.isfinite(original_score) & np.isfinite(deocclusion_score)).sum()),
        version_id=version_id,
        grasp_counts_by_bin=tuple((int(((occlusion_bin == b) & ~grasp).sum()), int(((occlusion_bin == b) & grasp).sum()))
                                  for b in range(NUM_OCCLUSION_BINS)),
        deocclusion_backend=deocclusion_cfg.backend,
    )


def _deocclusion_config(view) -> DeocclusionConfig:
    """The build's de-occlusion config from its manifest (defaults while unfinished or when unreadable)."""
    manifest = getattr(view, "manifest", None)
    stored = manifest.attrs.config.get("deocclusion", {}) if manifest is not None else {}
    try:
        return DeocclusionConfig.model_validate(stored)
    except ValidationError as err:  # a dataset written by another version: compare the rules at defaults
        LOGGER.warning("report: the dataset's deocclusion config does not load (%s); keep rules at defaults",
                       err.error_count())
        return DeocclusionConfig()


# ----------------------------------------------------------------------------------------------
# The HTML report
# ----------------------------------------------------------------------------------------------


def pick_contact_indices(keep: np.ndarray, visibility: np.ndarray, max_rows: int = MAX_CONTACT_ROWS) -> list[int]:
    """Deterministic selection: kept pairs first (most occluded first), then the rest, evenly spaced.

    Args:
        keep: (N,) bool, the pair filter.
        visibility: (N,) float, visible hand fraction.
        max_rows: samples to show.

    Returns:
        Up to `max_rows` global sample indices.
    """
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(visibility[kept], kind="stable")]
    rest = np.flatnonzero(~keep)
    take_kept = list(kept[: max(max_rows // 2, max_rows - len(rest))])
    room = max_rows - len(take_kept)
    if room > 0 and len(rest):
        positions = np.unique(np.linspace(0, len(rest) - 1, num=min(room, len(rest))).round().astype(int))
        take_rest = list(rest[positions])
    else:
        take_rest = []
    return [int(i) for i in take_kept + take_rest]


def _mask_overlay(sample: dict[str, np.ndarray]) -> np.ndarray:
    """RGB: red = hidden hand, green = visible hand, blue = visible object."""
    hand = sample["mask_hand"].astype(bool)
    visible = sample["mask_hand_visible"].astype(bool)
    obj = sample["mask_object"].astype(bool)
    rgb = np.zeros((*hand.shape, 3), np.uint8)
    rgb[obj] = (40, 90, 255)
    rgb[hand & ~visible] = (230, 40, 40)
    rgb[visible] = (40, 200, 60)
    return rgb


def _save_contact_sheet(view, indices: list[int], path: Path) -> None:
    """Rows of occluded | de-occluded | masks | depth, titled with key, visibility and beta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("image", "image_deoccluded", "mask_hand", "mask_hand_visible", "mask_object", "depth_scene",
             "visibility", "beta", "keep", "sample_key", "deocclusion_reason", "joints_2d")
    fig, axes = plt.subplots(len(indices), 4, figsize=(8, 2.1 * len(indices)), squeeze=False)
    for row, index in enumerate(indices):
        sample = view.sample(index, names=names)
        depth = np.where(sample["depth_scene"] > 0, sample["depth_scene"], np.nan)
        panels = (sample["image"], sample["image_deoccluded"], _mask_overlay(sample), depth)
        titles = ("occluded + joints", "de-occluded + joints", "masks (hidden/visible/object)", "depth (m)")
        for col, (panel, title) in enumerate(zip(panels, titles)):
            ax = axes[row, col]
            shown = ax.imshow(panel, cmap=DEPTH_CMAP if col == 3 else None, interpolation="nearest")
            if col < 2:  # the 2-D labels over both images: a label off the hand shows at a glance
                _draw_joints(ax, sample["joints_2d"], size_px=panel.shape[0])
            if col == 3 and np.isfinite(depth).any():
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        beta = float(sample["beta"])
        beta_text = "n/a" if math.isnan(beta) else f"{beta:.2f}"
        axes[row, 0].set_ylabel(
            f"{sample['sample_key']}\nvis {float(sample['visibility']):.2f}  beta {beta_text}\n"
            f"{'kept' if bool(sample['keep']) else sample['deocclusion_reason']}",
            fontsize=6, rotation=0, ha="right", va="center",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _draw_joints(ax, joints_2d_px: np.ndarray, size_px: int) -> None:
    """The hand skeleton (joints in crop px) over an image panel, clipped to the panel."""
    for parent, child in HAND_BONES:
        ax.plot(joints_2d_px[[parent, child], 0], joints_2d_px[[parent, child], 1], color="yellow", linewidth=0.6)
    ax.scatter(joints_2d_px[:, 0], joints_2d_px[:, 1], s=2, c="red", linewidths=0)
    ax.set_xlim(-0.5, size_px - 0.5)
    ax.set_ylim(size_px - 0.5, -0.5)


def has_beta(summary: DatasetSummary) -> bool:
    """Whether any kept pair carries a beta (backends without a control strength store none)."""
    return sum(summary.beta_counts) > 0


def _save_histograms(summary: DatasetSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(summary.visibility_bin_edges, summary.visibility_counts, "visibility (all samples)", None)]
    if has_beta(summary):  # else the page says why there is no beta plot
        panels.append((summary.beta_bin_edges, summary.beta_counts, "beta (kept pairs)", None))
    panels.append((tuple(range(NUM_OCCLUSION_BINS + 1)), summary.occlusion_bin_counts,
                   "occlusion bin (visibility range)", OCCLUSION_BIN_LABELS))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (edges, counts, title, labels) in zip(axes[0], panels):
        widths = np.diff(edges)
        ax.bar(np.asarray(edges[:-1]), counts, width=widths, align="edge", edgecolor="black")
        if labels is not None:  # categorical bins: the range under each bar
            ax.set_xticks(np.asarray(edges[:-1]) + widths / 2, labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(header: tuple[str, ...], rows: list[tuple], row_headers: bool = False) -> str:
    """An HTML table; with `row_headers`, each row's first cell is its name (<th>) and the column header
    row is left out (a two-column name / value table needs none)."""
    cells = [[f"<td>{html.escape(str(c))}</td>" for c in row] for row in rows]
    if row_headers:
        body = "".join(f"<tr><th>{html.escape(str(row[0]))}</th>{''.join(row_cells[1:])}</tr>"
                       for row, row_cells in zip(rows, cells))
        return f"<table>{body}</table>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row_cells)}</tr>" for row_cells in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(data_url: str, out_dir: Path) -> Path:
    """Write `index.html` with contact sheets, histograms and the skip table of a dataset.

    Args:
        data_url: dataset path or URL.
        out_dir: folder for index.html, contact_sheet.png, histograms.png and summary.json.

    Returns:
        Path of index.html.
    """
    from unihope.storage.view import open_dataset

    # 1. Summary and sample selection.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_dataset(data_url)
    (out_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=1, sort_keys=True))

    # 2. Figures.
    _save_histograms(summary, out_dir / "histograms.png")
    view = open_dataset(data_url, verify="eager")  # a report vouches for the store: every checksum, once
    try:
        config_yaml = yaml.safe_dump(view.manifest.attrs.config, sort_keys=False) if view.manifest else "(unfinished)"
        indices = []
        if len(view):
            indices = pick_contact_indices(view.column("keep").astype(bool), view.column("visibility"))
            _save_contact_sheet(view, indices, out_dir / "contact_sheet.png")
    finally:
        view.close()

    # 3. The page.
    skip_rows = [(reason, count, "; ".join(summary.skip_examples.get(reason, [])))
                 for reason, count in sorted(summary.skips_by_reason.items())]
    overview = [
        ("dataset", summary.url), ("version", summary.version_id or "(build in progress)"),
        ("samples", summary.num_samples), ("shards", summary.num_shards),
        ("frames seen", summary.num_frames_seen), ("frames skipped", sum(summary.skips_by_reason.values())),
        ("kept pairs", summary.num_pairs_kept), ("de-occlusion backend", summary.deocclusion_backend),
    ] + [(f"de-occlusion: {k}", v) for k, v in summary.deocclusion_reasons.items()] \
      + [(f"skipped at {k}", v) for k, v in summary.skips_by_stage.items()]
    rule_rows = [(f"{rule}{' (in use)' if rule == summary.keep_rule else ''}", KEEP_RULE_TEXT.get(rule, ""), count)
                 for rule, count in summary.pairs_by_rule.items()]
    grasp_rows = [(label, not_grasping, grasping, f"{grasping / max(1, grasping + not_grasping):.0%}")
                  for label, (not_grasping, grasping) in zip(OCCLUSION_BIN_LABELS, summary.grasp_counts_by_bin)]
    if grasp_rows:
        total_grasping = sum(g for _, g in summary.grasp_counts_by_bin)
        grasp_rows.append(("all", summary.num_samples - total_grasping, total_grasping,
                           f"{total_grasping / max(1, summary.num_samples):.0%}"))
    beta_note = "" if has_beta(summary) else (
        f"<p>No beta plot: no kept pair carries a beta (the {html.escape(summary.deocclusion_backend or 'build')}"
        " backend sets no adaptive control strength, or no pair was kept).</p>")
    sheet = ('<h2>Contact sheet</h2><p>occluded | de-occluded, both with the 2-D joints | masks (red hidden hand, '
             'green visible hand, blue object) | scene depth (m, colour bar)</p><img src="contact_sheet.png">'
             ) if indices else "<p>No samples.</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>UniHOPE dataset report {html.escape(summary.version_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #999;padding:2px 8px;text-align:left}} th{{background:#eee}} img{{max-width:100%}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>UniHOPE dataset report</h1>
<h2>Overview</h2>
{_table(("", "value"), overview, row_headers=True)}
<h2>Keep rules</h2><p>Pairs each rule would keep of the {summary.num_generated} generated ones, at this build's
thresholds; the build uses <b>{html.escape(summary.keep_rule)}</b>.</p>
{_table(("rule", "what it keeps", "pairs"), rule_rows)}
<h2>Grasps</h2>
{_table(("occlusion bin (visibility)", "not grasping", "grasping", "grasping share"), grasp_rows)}
<h2>Histograms</h2><img src="histograms.png">
{beta_note}
{sheet}
<h2>Skipped frames</h2>
{_table(("reason", "frames", "examples"), skip_rows) if skip_rows else "<p>No frame was skipped.</p>"}
<h2>Config</h2><details><summary>the build's resolved config (as stored with the dataset)</summary>
<pre>{html.escape(config_yaml)}</pre></details>
</body></html>
"""
    index_path = out_dir / "index.html"
    index_path.write_text(page)
    return index_path
