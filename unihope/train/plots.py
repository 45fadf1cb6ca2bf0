"""Plots of a run: loss curve, occlusion-interval bars and per-joint errors (PNG, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unihope import metrics as M
from unihope.train.evaluate import EvalReport
from unihope.train.stats import TrainStatistics


def write_plots(plot_dir: Path, report: EvalReport, stats: TrainStatistics, history: list[dict]) -> list[Path]:
    """Loss curve, occlusion-interval bars (hand-only vs hand-object vs mean pose), per-joint errors (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        paths.append(_save_figure(fig, plot_dir / "loss_curve.png"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.27
    for offset, (name, chosen) in enumerate((("hand-only", report.grasp_label == 0), ("hand-object", report.grasp_label == 1))):
        table = M.occlusion_interval_table(report.mpjpe_mm[chosen], report.visibility[chosen])
        ax.bar(np.arange(4) + (offset - 1) * width, [r["mean"] for r in table], width, label=name)
    table = M.occlusion_interval_table(report.mean_pose_mpjpe_mm, report.visibility)
    ax.bar(np.arange(4) + width, [r["mean"] for r in table], width, label="mean pose (baseline)")
    ax.set_xticks(np.arange(4), [r["interval"] for r in table])
    ax.set_xlabel("hand visibility")
    ax.set_ylabel("MPJPE (mm)")
    ax.legend()
    paths.append(_save_figure(fig, plot_dir / "occlusion_intervals.png"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(np.arange(21), report.per_joint_error_mm.mean(axis=0))
    ax.set_xlabel("joint (DexYCB order)")
    ax.set_ylabel("mean error (mm)")
    paths.append(_save_figure(fig, plot_dir / "per_joint_error.png"))
    return paths


def _save_figure(fig, path: Path) -> Path:
    """Lay out, save at 100 dpi and close a matplotlib figure; returns `path`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
