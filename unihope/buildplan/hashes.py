"""Stage hashes: each stage's folder name chains its own config with every upstream stage's hash.

Changing only the de-occlusion config changes the `deocclude` and `pack` hashes and nothing else,
so only those stages recompute (`unihope.buildplan.workdir` names the folders by these hashes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from unihope.config import PipelineConfig

STAGES = ("index", "grasp", "annotate", "deocclude", "pack")
# Bump when the meaning of a stage's output files changes: old folders are then not reused.
# grasp 2 / deocclude 3: parts and results became unihope.storage.batches work files (were pickles, never read now).
STAGE_CODE_VERSIONS = {"index": 1, "grasp": 2, "annotate": 1, "deocclude": 3, "pack": 1}


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def _file_digest(path: Path | None) -> str:
    """Digest of a file the config points at (e.g. grasp label overrides): edits then invalidate."""
    if path is None:
        return "-"
    path = Path(path)
    if not path.is_file():
        return f"missing:{path}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class StageHashes:
    """One short hash per stage, each covering its own config and every upstream stage's hash."""

    index: str
    grasp: str
    annotate: str
    deocclude: str
    pack: str

    def as_dict(self) -> dict[str, str]:
        return {stage: getattr(self, stage) for stage in STAGES}


def stage_hashes(cfg: PipelineConfig, out_url: str) -> StageHashes:
    """Chain the stage configs into per-stage hashes.

    `flow.frames_per_task` is part of the index hash because it decides which frames each batch
    file holds; the orchestration-only flow settings (retries, runner, fault injection) are not,
    so changing them never recomputes anything.

    Args:
        cfg: the resolved pipeline config (source root already set).
        out_url: the dataset path or URL, part of the pack hash (shards are written there).

    Returns:
        The stage hashes.
    """
    index = _short_hash(
        f"v{STAGE_CODE_VERSIONS['index']}", cfg.source.config_hash(), cfg.hand.config_hash(),
        str(cfg.flow.frames_per_task),
    )
    grasp = _short_hash(
        f"v{STAGE_CODE_VERSIONS['grasp']}", index, cfg.grasp.config_hash(), _file_digest(cfg.grasp.label_override_path)
    )
    annotate = _short_hash(
        f"v{STAGE_CODE_VERSIONS['annotate']}", grasp, cfg.crop.config_hash(), cfg.render.config_hash(),
        cfg.hand.config_hash(),
    )
    deocclude = _short_hash(f"v{STAGE_CODE_VERSIONS['deocclude']}", annotate, cfg.deocclusion.config_hash())
    pack = _short_hash(f"v{STAGE_CODE_VERSIONS['pack']}", deocclude, cfg.storage.config_hash(), out_url)
    return StageHashes(index=index, grasp=grasp, annotate=annotate, deocclude=deocclude, pack=pack)
