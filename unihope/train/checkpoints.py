"""Checkpoints of a run: safetensors files, the latest pointer, the resume hash and identity checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from unihope.model import UniHOPEModel
from unihope.run_keys import RunIdentity
from unihope.storage.io import write_file_atomic
from unihope.train.stats import TrainStatistics
from unihope.train_config import TrainConfig

from unihope.train.weights import (  # noqa: F401 (latest_checkpoint, read_checkpoint_metadata: this module's API too)
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT_VERSION,
    LATEST_POINTER,
    MODEL_PREFIX,
    latest_checkpoint,
    load_model_weights,
    read_checkpoint_metadata,
)

NUM_CHECKPOINTS_KEPT = 2
OPTIMIZER_PREFIX = "optimizer/"


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: steps done, the config and (for runs on a stored dataset) the data it belongs to."""

    step: int
    epoch: int
    config_hash: str
    dataset_version: str = ""  # run_keys.dataset_version of the data; "" = datasets passed in memory
    hand_model: str = ""  # JSON of the HandModelIdentity the run trained with; "" = not recorded


def save_checkpoint(
    path: Path, model: UniHOPEModel, optimizer: torch.optim.Optimizer | None, state: TrainState,
    stats: TrainStatistics | None, cfg: TrainConfig,
) -> Path:
    """Write model + optimizer tensors to one safetensors file; step, config and statistics go in its metadata.

    The write is atomic (temporary file, then rename).
    """
    from safetensors.torch import save_file

    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    param_groups = []
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        for param_idx, values in opt_state["state"].items():
            for name, value in values.items():
                if not torch.is_tensor(value):
                    value = torch.tensor(value)
                tensors[f"{OPTIMIZER_PREFIX}{param_idx}/{name}"] = value.detach().cpu().contiguous()
        param_groups = opt_state["param_groups"]
    metadata = {
        "format_version": str(CHECKPOINT_FORMAT_VERSION),
        "step": str(state.step),
        "epoch": str(state.epoch),
        "config_hash": state.config_hash,
        "dataset_version": state.dataset_version,
        "hand_model": state.hand_model,
        "train_config": cfg.to_yaml(),
        "param_groups": json.dumps(param_groups),
        "train_statistics": json.dumps(stats.to_json() if stats is not None else None),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".incomplete")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path



def load_checkpoint(
    path: Path, model: UniHOPEModel, optimizer: torch.optim.Optimizer | None = None
) -> tuple[TrainState, TrainStatistics | None]:
    """Restore model (and optimizer) tensors from `save_checkpoint`'s file.

    Args:
        path: a checkpoint file, a run folder, or its `checkpoints/latest.txt` (-> the newest checkpoint).
        model: receives the weights.
        optimizer: receives the optimizer state when given.

    Raises:
        ValueError: when the file is missing, malformed or belongs to another architecture.
    """
    path, metadata, tensors = load_model_weights(path, model)
    if optimizer is not None:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIMIZER_PREFIX):
                param_idx, name = key[len(OPTIMIZER_PREFIX):].split("/", 1)
                per_param.setdefault(int(param_idx), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": json.loads(metadata["param_groups"])})
    stats_json = json.loads(metadata.get("train_statistics", "null"))
    state = TrainState(step=int(metadata["step"]), epoch=int(metadata["epoch"]), config_hash=metadata["config_hash"],
                       dataset_version=metadata.get("dataset_version", ""), hand_model=metadata.get("hand_model", ""))
    return state, (TrainStatistics.from_json(stats_json) if stats_json else None)



def write_checkpoint(out_dir: Path, model, optimizer, state: TrainState, stats, cfg) -> Path:
    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    path = save_checkpoint(ckpt_dir / f"step_{state.step:08d}.safetensors", model, optimizer, state, stats, cfg)
    write_file_atomic(ckpt_dir / LATEST_POINTER, path.name.encode())
    for old in sorted(ckpt_dir.glob("step_*.safetensors"))[:-NUM_CHECKPOINTS_KEPT]:
        old.unlink()
    return path


def resume_hash(cfg: TrainConfig) -> str:
    """Hash of the settings that shape the training trajectory.

    Stopping point, evaluation cadence, checkpoint cadence and worker count are left out, so a run
    stopped by `optim.max_steps` can be resumed with a larger budget.
    """
    data = cfg.model_dump(mode="json")
    data["optim"].pop("max_steps")
    data["data"].pop("num_workers")
    data["data"].pop("max_eval_samples")
    data["data"].pop("eval_split")
    data.pop("hand")  # where the MANO files lie; which model they are is checked by digest (RunIdentity)
    for key in ("checkpoint_every_steps", "eval_every_epochs", "eval_batch_size", "loss_window_steps", "device", "name",
                "cpu_threads", "mixed_precision"):  # like the device, the precision is how, not what, is trained
        data.pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def train_state(step: int, epoch: int, cfg: TrainConfig, identity: RunIdentity | None) -> TrainState:
    if identity is None:
        return TrainState(step, epoch, resume_hash(cfg))
    return TrainState(step, epoch, resume_hash(cfg), identity.dataset_version,
                      json.dumps(identity.hand_model.to_json(), sort_keys=True))


def check_resume_identity(checkpoint: Path, state: TrainState, identity: RunIdentity | None) -> None:
    """Resume only on the data a checkpoint was trained on (its step count and statistics belong to it).

    Raises:
        ValueError: when the checkpoint records another dataset version or hand model than `identity`.
    """
    if identity is None:
        return
    if state.dataset_version != identity.dataset_version:
        raise ValueError(
            f"{checkpoint} was trained on dataset version {state.dataset_version or '(unrecorded)'}, the data is "
            f"version {identity.dataset_version}; train into a new run folder (`unihope train --runs-dir` keys one "
            "per version)")
    from unihope.hand_identity import HandModelIdentity

    recorded = HandModelIdentity.from_json(json.loads(state.hand_model)) if state.hand_model else None
    if recorded is None or not recorded.matches(identity.hand_model):
        raise ValueError(f"{checkpoint} was trained with hand model "
                         f"{recorded.describe() if recorded else '(unrecorded)'}, this run loads "
                         f"{identity.hand_model.describe()}; use a new run folder")
