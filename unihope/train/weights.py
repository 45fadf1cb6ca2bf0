"""A checkpoint's weights into a model: find the file, read its metadata, load the model tensors.

The part of checkpoint reading that needs only the network (no optimizer, no training statistics), so a
stage (the de-occluder's pose scorer) can load a trained model without the training layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unihope.model import UniHOPEModel

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST_POINTER = "latest.txt"
MODEL_PREFIX = "model/"


def read_checkpoint_metadata(path: Path) -> tuple[Path, dict[str, str]]:
    """The checkpoint file `path` names (a file, a run folder or its pointer) and its safetensors metadata.

    Raises:
        ValueError: when no checkpoint is found or the file is not safetensors.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir() or path.name == LATEST_POINTER:
        run_dir = path if path.is_dir() else path.parent.parent
        resolved = latest_checkpoint(run_dir)
        if resolved is None:
            raise ValueError(f"no checkpoint found under {run_dir / CHECKPOINT_DIR}")
        path = resolved
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path}: not a safetensors checkpoint ({err})") from err
    return path, metadata


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST_POINTER
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_file() else None


def load_model_weights(path: Path, model: UniHOPEModel) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    """Load the model tensors of the checkpoint `path` names into `model`.

    Returns:
        The checkpoint file, its metadata and all its tensors (the optimizer's too, for the caller to restore).

    Raises:
        ValueError: when no checkpoint is found, or the file is not a UniHOPE training checkpoint.
    """
    from safetensors.torch import load_file

    path, metadata = read_checkpoint_metadata(path)
    if metadata.get("format_version") != str(CHECKPOINT_FORMAT_VERSION):
        raise ValueError(f"{path}: not a UniHOPE training checkpoint (format {metadata.get('format_version')})")
    tensors = load_file(str(path))
    model.load_trainable_state_dict({k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)})
    return path, metadata, tensors
