"""Frame sources: the registry (`SOURCES`, `open_source`), `prepare_source`, and a summary of loaded frames.

A source lists frames cheaply (`index() -> list[FrameRef]`) and parses them in batches
(`load(refs) -> list[FrameRecord | Skip]`, never raising on a bad frame). Opening a source only
reads; the one source the pipeline makes itself (synthetic) is written by an explicit
`prepare_source` step first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from unihope.storage.schema import FrameRecord, FrameRef, Skip
from unihope.config import HandModelConfig, SourceConfig


class FrameSource(Protocol):
    """What every reader offers."""

    dataset: str
    tip_convention: str  # whose fingertip vertices its joints_3d use ("manopth" | "ho3d" | "smplx")

    def index(self) -> list[FrameRef]: ...

    def load(self, refs: list[FrameRef]) -> list[FrameRecord | Skip]: ...


def _open_dexycb(cfg: SourceConfig, hand_cfg: HandModelConfig) -> FrameSource:
    from unihope.sources.dexycb import DexYCBSource

    return DexYCBSource(Path(cfg.root), split=cfg.split, hand_cfg=hand_cfg, max_frames=cfg.max_frames,
                        tip_convention=cfg.resolved_tip_convention())


def _open_ho3d(cfg: SourceConfig, hand_cfg: HandModelConfig) -> FrameSource:
    from unihope.sources.ho3d import HO3DSource

    return HO3DSource(Path(cfg.root), split=cfg.split, hand_cfg=hand_cfg, max_frames=cfg.max_frames,
                      tip_convention=cfg.resolved_tip_convention())


def _synthetic_root(cfg: SourceConfig) -> Path:
    if cfg.root is None:
        raise ValueError("source.kind='synthetic' needs source.root: the folder to generate into (e.g. <out>/_synthetic)")
    return Path(cfg.root)


def _open_synthetic(cfg: SourceConfig, hand_cfg: HandModelConfig) -> FrameSource:
    """Read the synthetic dataset `prepare_source` wrote into `cfg.root`; writes nothing."""
    # The synthetic dataset's own check of its folder (complete and of this config, or free).
    from unihope.sources.synthetic_marker import check_output_dir

    root = _synthetic_root(cfg)
    if check_output_dir(root, cfg.synthetic.config_hash()) is None:
        raise ValueError(
            f"source.root={root} holds no synthetic dataset yet, and opening a source only reads: write it first "
            "with unihope.sources.prepare_source(cfg.source, cfg.hand) (`unihope build --source synthetic` does)"
        )
    reader = _open_dexycb if cfg.synthetic.format == "dexycb" else _open_ho3d
    return reader(cfg, hand_cfg)


# name -> constructor(cfg, hand_cfg); one line per reader.
SOURCES: dict[str, Callable[[SourceConfig, HandModelConfig], FrameSource]] = {
    "dexycb": _open_dexycb,
    "ho3d": _open_ho3d,
    "synthetic": _open_synthetic,
}


def open_source(cfg: SourceConfig, hand_cfg: HandModelConfig) -> FrameSource:
    """The reader `cfg.kind` names, opened on `cfg.root` with `cfg.split`.

    Args:
        cfg: source config (kind, root, split, synthetic settings, max_frames).
        hand_cfg: the MANO files the readers convert poses with.

    Returns:
        A FrameSource.

    Raises:
        ValueError: for an unknown kind (listing the valid ones), a missing root or an unknown split,
            or a synthetic root that `prepare_source` has not written (opening never writes).
    """
    if cfg.kind not in SOURCES:
        raise ValueError(f"unknown source kind {cfg.kind!r}; valid kinds: {', '.join(SOURCES)}")
    return SOURCES[cfg.kind](cfg, hand_cfg)


def prepare_source(cfg: SourceConfig, hand_cfg: HandModelConfig, renderers=None, on_progress=None) -> Path | None:
    """Write the data a source reads when the pipeline makes it itself, before `open_source`.

    The synthetic source is generated into `cfg.root` (idempotent: a complete dataset of the same
    config returns at once; it renders, so callers run it on the render thread). The real datasets
    are read where they lie: nothing is written. `renderers` (a `synthetic_render.SceneRenderers`) are the
    caller's to reuse; None -> the generator makes its own. `on_progress(done, total)` follows the rendered
    images while the synthetic source is written (not called when it is already complete).

    Returns:
        The folder `open_source` reads (None for a real dataset without a root, which `open_source` refuses).

    Raises:
        ValueError: for a synthetic source without a root, or a root holding other files or a dataset
            of another configuration.
    """
    if cfg.kind != "synthetic":
        return None if cfg.root is None else Path(cfg.root)
    from unihope.sources.synthetic_marker import check_output_dir

    root = _synthetic_root(cfg)
    if check_output_dir(root, cfg.synthetic.config_hash()) is not None:
        return root  # complete: the generator (torch, trimesh, the renderer) is not even imported
    from unihope.sources.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root, cfg.synthetic, hand_cfg, renderers, on_progress)
    return root


@dataclass(frozen=True, slots=True)
class SourceSummary:
    """Counts over what a source's `load` returned (no ground truth involved)."""

    num_records: int
    num_skipped: int
    records_by_sequence: dict[str, int] = field(default_factory=dict)
    records_by_camera: dict[str, int] = field(default_factory=dict)
    records_by_side: dict[str, int] = field(default_factory=dict)
    skips_by_reason: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """Printable multi-line summary."""
        lines = [f"frames loaded: {self.num_records}, skipped: {self.num_skipped}"]
        lines.append("  by side: " + ", ".join(f"{k} {v}" for k, v in sorted(self.records_by_side.items())))
        lines.append("  by camera: " + ", ".join(f"{k} {v}" for k, v in sorted(self.records_by_camera.items())))
        lines.append(f"  sequences: {len(self.records_by_sequence)}")
        if self.skips_by_reason:
            lines.append("  skipped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skips_by_reason.items())))
        return "\n".join(lines)


def summarize_frames(records_and_skips: list[FrameRecord | Skip]) -> SourceSummary:
    """Count loaded frames by sequence, camera and hand side, and skipped frames by reason.

    Args:
        records_and_skips: what one or more `load` calls returned.

    Returns:
        The SourceSummary.
    """
    records = [r for r in records_and_skips if isinstance(r, FrameRecord)]
    skips = [s for s in records_and_skips if isinstance(s, Skip)]
    return SourceSummary(
        num_records=len(records),
        num_skipped=len(skips),
        records_by_sequence=dict(Counter(r.sequence_key for r in records)),
        records_by_camera=dict(Counter(r.serial for r in records)),
        records_by_side=dict(Counter(r.hand_side for r in records)),
        skips_by_reason=dict(Counter(s.reason.value for s in skips)),
    )


__all__ = ["SOURCES", "FrameSource", "SourceSummary", "open_source", "prepare_source", "summarize_frames"]
