"""Keys of training runs: the dataset version a run trains on, and the run folder per (dataset version, config).

A nightly build rewrites one dataset location; each build's training must train from scratch on
that build's data instead of resuming the previous night's finished run. Runs therefore live in
`<runs_dir>/<dataset version>-<config digest>/`, and a run resumes only within the same data and config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unihope.hand_identity import HandModelIdentity

RUN_DIR_SEPARATOR = "-"


def dataset_version(url: str) -> str:
    """The version of the finished dataset at `url`: the one function every run key reads it from.

    The storage layer's newest committed version id (`unihope.storage.versions.current_version`): a digest
    of the shards it references, so an unchanged rebuild keeps its version and any change makes a new one.

    Raises:
        ValueError: (a StoreError) when the dataset has no committed version (not finalized).
    """
    from unihope.storage.versions import current_version

    return current_version(url)


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
