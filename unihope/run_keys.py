"""Keys of training runs: the dataset version a run trains on, and the run folder per (dataset version, config).

A nightly build rewrites one dataset location; each build's training must train from scratch on
that build's data instead of resuming the previous night's finished run. Runs therefore live in
`<runs_dir>/<dataset version>-<config digest>/`, and a run resumes only within the same data and config.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from unihope.hand_identity import HandModelIdentity

MANIFEST_NAME = "manifest.json"
VERSION_CHARS = 16  # hex digits of the manifest digest
RUN_DIR_SEPARATOR = "-"


def dataset_version(url: str) -> str:
    """The version of the finished dataset at `url`: the one function every run key reads it from.

    Today a digest of the dataset's manifest.json (it names every committed shard, its digest and the
    build's time, so every finished build gets a new version); the storage layer's versions replace it.

    Args:
        url: dataset path or fsspec URL.

    Returns:
        `VERSION_CHARS` hex digits.

    Raises:
        ValueError: when the dataset has no manifest (not finalized).
    """
    from storage.io import locate, read_bytes

    payload = read_bytes(locate(url), MANIFEST_NAME)
    if payload is None:
        raise ValueError(f"{url} has no {MANIFEST_NAME}: not a finished dataset (run `unihope build` to completion)")
    return hashlib.sha256(payload).hexdigest()[:VERSION_CHARS]


def run_dir_for(runs_dir: Path, version: str, config_digest: str) -> Path:
    """`<runs_dir>/<version>-<config_digest>`: the run folder of one dataset version and one training config."""
    if not version or not config_digest or RUN_DIR_SEPARATOR in version:
        raise ValueError(f"run keys must be non-empty and the version free of {RUN_DIR_SEPARATOR!r}, "
                         f"got version={version!r} config_digest={config_digest!r}")
    return Path(runs_dir) / f"{version}{RUN_DIR_SEPARATOR}{config_digest}"


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What a training run is about besides its config: the dataset version and the hand model it trains with."""

    dataset_version: str  # dataset_version(url) of the data the run reads
    hand_model: HandModelIdentity  # the model the training's layer loads (equal to the dataset's)

    def to_json(self) -> dict:
        return {"dataset_version": self.dataset_version, "hand_model": self.hand_model.to_json()}
