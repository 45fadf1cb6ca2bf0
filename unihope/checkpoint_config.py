"""The training config a checkpoint was written with (its safetensors metadata), for `unihope eval`."""

from __future__ import annotations

from pathlib import Path

from unihope.config import ConfigError
from unihope.train_config import TrainConfig

TRAIN_CONFIG_METADATA_KEY = "train_config"  # written by unihope.train.checkpoints.save_checkpoint (YAML text)


def train_config_of_checkpoint(path: Path) -> TrainConfig:
    """Read and validate the `TrainConfig` stored in a checkpoint's metadata.

    Args:
        path: a checkpoint file, a run folder or its `checkpoints/latest.txt` (resolved as
            `unihope.train.checkpoints.load_checkpoint` does).

    Raises:
        ValueError: when the file is missing, not a safetensors file, or carries no (valid) config.
    """
    from unihope.train.weights import read_checkpoint_metadata

    path, metadata = read_checkpoint_metadata(Path(path))
    text = metadata.get(TRAIN_CONFIG_METADATA_KEY)
    if not text:
        raise ValueError(f"{path} records no training config; pass --config")
    try:
        return TrainConfig.from_yaml(text)
    except ConfigError as err:
        raise ValueError(f"{path}: its recorded training config is not valid here ({err}); pass --config") from err
