"""Training and evaluation of the UniHOPE model from the Zarr shards: loop, checkpoints, metrics, plots.

Left hands are mirrored to right hands at load time (image flipped, joints x -> -x, MANO axis-angle
components 1 and 2 negated), so one right-hand MANO layer serves every sample; predictions are
evaluated in that mirrored frame (root-relative hand errors are mirror-invariant), and predicted
object keypoints are flipped back before PnP against the sample's own intrinsics and pose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unihope.storage.io import write_file_atomic
from unihope.storage.reader import make_loader
from unihope import metrics as M
from unihope.config import HandModelConfig
from unihope.run_keys import RunIdentity
from unihope.train_config import TrainConfig
from unihope.model import (
    LossTargets,
    LossWeights,
    ModelSpec,
    UniHOPEModel,
    enhancement_losses,
    scaled_patch_layout,
    supervised_losses,
    target_focused_mask,
    teacher_pass,
    total_loss,
)
from unihope.model.roi_align import HAND_ROI_BOX_SCALE, OBJECT_ROI_BOX_SCALE, points_box_xyxy

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST_POINTER = "latest.txt"
NUM_CHECKPOINTS_KEPT = 2
LOSS_HISTORY_FILE = "loss_history.jsonl"
EPOCH_LOG_FILE = "metrics.jsonl"
MIRROR_POSE_SIGNS = (1.0, -1.0, -1.0)  # per axis-angle triple: reflection x -> -x (REFERENCE.md)
GRASP_THRESHOLD = 0.5
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"


# ---------------------------------------------------------------- configuration -> model


def model_spec(cfg: TrainConfig) -> ModelSpec:
    """The pure-torch ModelSpec for a TrainConfig (ablation switches included)."""
    m, a = cfg.model, cfg.ablation
    return ModelSpec(
        depth=m.depth, width_multiplier=m.width_multiplier, norm=m.norm, fpn_channels=m.fpn_channels,
        roi_size=m.roi_size, roi_sampling_ratio=m.roi_sampling_ratio, num_heads=m.num_heads,
        transformer_depth=m.transformer_depth, mano_hidden=tuple(m.mano_hidden),
        num_hand_res_blocks=m.num_hand_res_blocks, switcher_channels=m.switcher_channels,
        switcher_hidden=m.switcher_hidden, use_switcher=a.use_switcher,
        fusion=a.fusion_mode if a.use_fusion else "ungated",
    )  # fmt: skip


def loss_weights(cfg: TrainConfig) -> LossWeights:
    """Loss weights; the enhancement weights are zero when the ablation switches enhancement off."""
    w, e = cfg.loss, cfg.enhancement
    on = 1.0 if cfg.ablation.use_enhancement else 0.0
    return LossWeights(
        verts3d=w.verts3d, joints3d=w.joints3d, mano_pose=w.mano_pose, mano_shape=w.mano_shape,
        mano_variance=w.mano_variance, joints2d=w.joints2d, object_keypoints=w.object_keypoints,
        object_confidence=w.object_confidence, grasp=w.grasp, enhance_image=on * e.image_weight,
        enhance_token=on * e.token_weight, enhance_output=on * e.output_weight, output_level_mode=e.output_mode,
    )  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device: cpu or auto")
    return torch.device(name)


def build_model(cfg: TrainConfig, hand_layer: nn.Module) -> UniHOPEModel:
    """Build the model with weights initialised from `cfg.seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = UniHOPEModel(model_spec(cfg), hand_layer)
    if cfg.model.backbone_weights_path is not None:
        model.backbone.load_resnet_weights(cfg.model.backbone_weights_path)
    return model


def build_hand_layer(hand_cfg: HandModelConfig | None = None, tip_convention: str = "manopth") -> nn.Module:
    """The right-hand MANO layer of `hand_cfg` (left samples are mirrored to it; None -> the procedural hand),
    with the fingertips of the dataset's convention (`unihope.tip_convention.tip_convention_of_dataset`)."""
    from unihope.hand import HandLayer, resolve_mano_path

    hand_cfg = hand_cfg or HandModelConfig()
    return HandLayer(
        side="right",
        model_path=resolve_mano_path("right", hand_cfg.mano_dir, hand_cfg.cache_dir),
        tip_convention=tip_convention,
    )


# ---------------------------------------------------------------- batches


@dataclass(frozen=True)
class PreparedBatch:
    """One batch mirrored to right hands and resized to the model input (S_in px)."""

    images: torch.Tensor  # (B, 3, S_in, S_in), masked when masking is on
    images_deoccluded: torch.Tensor  # (B, 3, S_in, S_in)
    has_pair: torch.Tensor  # (B,) bool
    mask_hand: torch.Tensor  # (B, S_in, S_in) float
    mask_object: torch.Tensor  # (B, S_in, S_in) float
    targets: LossTargets  # verts_rel_m filled by `with_gt_vertices`
    is_mirrored: torch.Tensor  # (B,) bool
    crop_size_px: int  # S of the stored crops
    K_crop: np.ndarray  # (B, 3, 3) float64 intrinsics of the stored (unmirrored) crop
    object_pose: np.ndarray  # (B, 3, 4) float64
    object_id: np.ndarray  # (B,) int
    visibility: np.ndarray  # (B,) float64
    sample_keys: list[str]


def sample_generator(seed: int, epoch: int, sample_key: str) -> torch.Generator:
    """A torch generator seeded from (config seed, epoch, sample key): per-sample, order-independent randomness."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{sample_key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _mirror_u(uv: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    mirrored = uv.clone()
    mirrored[..., 0] = size - 1 - uv[..., 0]
    return torch.where(flip.reshape(-1, *([1] * (uv.dim() - 1))), mirrored, uv)


def _resize_uv(uv: torch.Tensor, ratio: float) -> torch.Tensor:
    return (uv + 0.5) * ratio - 0.5  # pixel centres at integer coordinates


def prepare_batch(
    batch: dict, cfg: TrainConfig, device: torch.device, epoch: int = 0, is_train: bool = False
) -> PreparedBatch:
    """Mirror left hands, resize to the model input, make the RoI boxes and (training only) apply masking.

    Args:
        batch: a collated batch of `unihope.storage.reader.PairedDataset` samples.
        cfg: training config.
        device: where the tensors go.
        epoch: seeds the masking together with each sample key.
        is_train: masking applies only to training batches.

    Returns:
        PreparedBatch.
    """
    # 1. Check inputs
    images = batch["image"].float()
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"batch['image'] must be (B, 3, S, S), got {tuple(images.shape)}")
    crop = images.shape[-1]
    size = cfg.model.input_size_px
    ratio = size / crop
    flip = torch.as_tensor(batch["hand_side"]).reshape(-1).bool()
    if flip.shape[0] != images.shape[0]:
        raise ValueError(f"hand_side has {flip.shape[0]} entries for {images.shape[0]} images")

    # 2. Mirror left hands to right hands
    def flip_maps(maps: torch.Tensor) -> torch.Tensor:
        return torch.where(flip.reshape(-1, *([1] * (maps.dim() - 1))), maps.flip(-1), maps)

    images = flip_maps(images)
    deoccluded = flip_maps(batch["image_deoccluded"].float())
    mask_hand = flip_maps(batch["mask_hand"].float())
    mask_object = flip_maps(batch["mask_object"].float())
    joints_2d = _mirror_u(batch["joints_2d"].float(), crop, flip)
    object_kp = _mirror_u(batch["object_keypoints_2d"].float(), crop, flip)

    joints_3d = batch["joints_3d"].float().clone()
    joints_3d[..., 0] = torch.where(flip[:, None], -joints_3d[..., 0], joints_3d[..., 0])
    signs = torch.tensor(MIRROR_POSE_SIGNS).repeat(16)
    pose = batch["mano_pose"].float()
    pose = torch.where(flip[:, None], pose * signs, pose)

    # 3. Resize to the model input
    if crop != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        deoccluded = F.interpolate(deoccluded, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mask_hand = F.interpolate(mask_hand[:, None], size=(size, size), mode="area")[:, 0]
        mask_object = F.interpolate(mask_object[:, None], size=(size, size), mode="area")[:, 0]
        joints_2d, object_kp = _resize_uv(joints_2d, ratio), _resize_uv(object_kp, ratio)
    # UniHOPE's RoI boxes, made as upstream makes them: in model-input px after augmentation and mirroring
    hand_boxes = points_box_xyxy(joints_2d, HAND_ROI_BOX_SCALE)
    object_boxes = points_box_xyxy(object_kp, OBJECT_ROI_BOX_SCALE)

    # 4. Target-focused masking (HOMAE) on the occluded image only; the de-occluded target stays clean
    keys = [str(k) for k in batch["sample_key"]]
    if is_train and cfg.masking.enabled:
        patch_px, num_patches = scaled_patch_layout(size, cfg.masking.patch_px, cfg.masking.num_patches)
        masked = [
            target_focused_mask(images[i], object_boxes[i], sample_generator(cfg.seed, epoch, keys[i]),
                                patch_px, num_patches, cfg.masking.prob_in_object)[0]
            for i in range(len(keys))
        ]  # fmt: skip
        images = torch.stack(masked)

    # 5. Targets on the device
    joints_rel = joints_3d - joints_3d[:, :1]
    targets = LossTargets(
        joints_rel_m=joints_rel.to(device),
        verts_rel_m=torch.empty(0, device=device),
        mano_pose=pose.to(device),
        mano_betas=batch["mano_betas"].float().to(device),
        joints_2d_px=joints_2d.to(device),
        hand_boxes_xyxy_px=hand_boxes.to(device),
        object_keypoints_2d_px=object_kp.to(device),
        object_boxes_xyxy_px=object_boxes.to(device),
        grasp=torch.as_tensor(batch["grasp"]).reshape(-1).long().to(device),
    )
    return PreparedBatch(
        images=images.to(device),
        images_deoccluded=deoccluded.to(device),
        has_pair=torch.as_tensor(batch["has_pair"]).reshape(-1).bool().to(device),
        mask_hand=mask_hand.to(device),
        mask_object=mask_object.to(device),
        targets=targets,
        is_mirrored=flip,
        crop_size_px=crop,
        K_crop=np.asarray(batch["K"], dtype=np.float64),
        object_pose=np.asarray(batch["object_pose"], dtype=np.float64),
        object_id=np.asarray(batch["object_id"]).reshape(-1).astype(np.int64),
        visibility=np.asarray(batch["visibility"], dtype=np.float64).reshape(-1),
        sample_keys=keys,
    )


def with_gt_vertices(model: UniHOPEModel, prepared: PreparedBatch) -> PreparedBatch:
    """Fill the wrist-relative ground-truth vertices from the GT MANO parameters (right-hand layer)."""
    with torch.no_grad():
        verts, _ = model.mano_forward(prepared.targets.mano_pose, prepared.targets.mano_betas)
    return dataclasses.replace(prepared, targets=dataclasses.replace(prepared.targets, verts_rel_m=verts))


def batch_loss(model: UniHOPEModel, prepared: PreparedBatch, cfg: TrainConfig,
               forward: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one prepared batch (supervised + enhancement on the pairs) and its terms.

    `forward` runs the student pass (the DDP wrapper of `model` in a data-parallel run; None = model).
    """
    weights = loss_weights(cfg)
    t = prepared.targets
    out = (forward or model)(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px)
    terms = supervised_losses(out, t, weights)
    pair_index = torch.nonzero(prepared.has_pair).flatten()
    if cfg.ablation.use_enhancement and len(pair_index) > 0:
        teacher = teacher_pass(
            model, prepared.images_deoccluded[pair_index], t.hand_boxes_xyxy_px[pair_index],
            t.object_boxes_xyxy_px[pair_index],
        )  # fmt: skip
        terms.update(enhancement_losses(
            out, teacher, pair_index, prepared.mask_hand[pair_index], prepared.mask_object[pair_index], weights
        ))  # fmt: skip
    total = total_loss(terms)
    return total, {name: float(value.detach()) for name, value in terms.items()}
# ---------------------------------------------------------------- training-set statistics


@dataclass(frozen=True)
class TrainStatistics:
    """What evaluation needs from the training split: baselines and the object keypoint models."""

    mean_joints_rel_m: np.ndarray  # (21, 3) mean wrist-relative joints (mirrored to right hands)
    majority_grasp: int  # most frequent grasp label
    num_samples: int
    object_keypoints_obj_m: dict[int, np.ndarray] = field(default_factory=dict)  # YCB id -> (21, 3)
    object_reprojection_px: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "mean_joints_rel_m": self.mean_joints_rel_m.tolist(),
            "majority_grasp": self.majority_grasp,
            "num_samples": self.num_samples,
            "object_keypoints_obj_m": {str(k): v.tolist() for k, v in self.object_keypoints_obj_m.items()},
            "object_reprojection_px": {str(k): v for k, v in self.object_reprojection_px.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> "TrainStatistics":
        return cls(
            mean_joints_rel_m=np.asarray(data["mean_joints_rel_m"], dtype=np.float64),
            majority_grasp=int(data["majority_grasp"]),
            num_samples=int(data["num_samples"]),
            object_keypoints_obj_m={int(k): np.asarray(v) for k, v in data["object_keypoints_obj_m"].items()},
            object_reprojection_px={int(k): float(v) for k, v in data["object_reprojection_px"].items()},
        )


def collect_train_statistics(dataset: torch.utils.data.Dataset, cfg: TrainConfig) -> TrainStatistics:
    """One pass over the training split: mean pose, majority grasp class, triangulated object keypoints.

    Object keypoints (the 21 box keypoints in the object frame) are triangulated per object id from
    the labelled 2D keypoints under the known object poses of every training sample; PnP at
    evaluation time needs them, and the shards carry no object meshes.
    """
    # 1. Gather labels (unmirrored for the object geometry, mirrored for the hand baseline)
    loader = make_loader(dataset, cfg.eval_batch_size, cfg.data.num_workers, shuffle=False)
    joints, grasps, kps, poses, Ks, ids = [], [], [], [], [], []
    for batch in loader:
        j = batch["joints_3d"].double().clone()
        flip = torch.as_tensor(batch["hand_side"]).reshape(-1).bool()
        j[..., 0] = torch.where(flip[:, None], -j[..., 0], j[..., 0])
        joints.append((j - j[:, :1]).numpy())
        grasps.append(np.asarray(batch["grasp"]).reshape(-1))
        kps.append(np.asarray(batch["object_keypoints_2d"], dtype=np.float64))
        poses.append(np.asarray(batch["object_pose"], dtype=np.float64))
        Ks.append(np.asarray(batch["K"], dtype=np.float64))
        ids.append(np.asarray(batch["object_id"]).reshape(-1))
    if not joints:
        raise ValueError("the training split is empty: nothing to train on (check --data and data.train_split)")
    joints_all, grasp_all, ids_all = np.concatenate(joints), np.concatenate(grasps), np.concatenate(ids)
    kps_all, poses_all, Ks_all = np.concatenate(kps), np.concatenate(poses), np.concatenate(Ks)

    # 2. Triangulate each object's keypoints
    keypoints, reprojection = {}, {}
    for object_id in np.unique(ids_all):
        chosen = ids_all == object_id
        tri = M.triangulate_object_keypoints(kps_all[chosen], poses_all[chosen], Ks_all[chosen])
        if tri is not None:
            keypoints[int(object_id)] = tri.points_obj_m
            reprojection[int(object_id)] = tri.reprojection_error_px
    counts = np.bincount(grasp_all.astype(np.int64), minlength=2)
    return TrainStatistics(
        mean_joints_rel_m=joints_all.mean(axis=0),
        majority_grasp=int(np.argmax(counts)),
        num_samples=len(joints_all),
        object_keypoints_obj_m=keypoints,
        object_reprojection_px=reprojection,
    )


# ---------------------------------------------------------------- checkpoints


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
    from safetensors.torch import load_file

    path, metadata = read_checkpoint_metadata(path)
    if metadata.get("format_version") != str(CHECKPOINT_FORMAT_VERSION):
        raise ValueError(f"{path}: not a UniHOPE training checkpoint (format {metadata.get('format_version')})")
    tensors = load_file(str(path))
    model.load_trainable_state_dict({k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)})
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


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST_POINTER
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_file() else None


def _write_checkpoint(out_dir: Path, model, optimizer, state: TrainState, stats, cfg) -> Path:
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


def _train_state(step: int, epoch: int, cfg: TrainConfig, identity: RunIdentity | None) -> TrainState:
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


# ---------------------------------------------------------------- schedule


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step decay: lr * gamma ** (epoch // decay_every_epochs)."""
    return cfg.optim.learning_rate * cfg.optim.lr_decay_gamma ** (epoch // cfg.optim.lr_decay_every_epochs)


def epoch_order(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: a permutation seeded by (seed, epoch), cut into batch_size chunks.

    Depending only on (seed, epoch) makes the order reproducible after a resume mid-epoch; it is the
    order `unihope.storage.reader.make_loader` (EpochSampler) yields, which training reads through.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    return [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]


class FirstSamples(torch.utils.data.Dataset):
    """The first `num_samples` of a dataset, forwarding (index, epoch) items and the `augment` attribute."""

    def __init__(self, dataset, num_samples: int) -> None:
        self.dataset, self.num_samples = dataset, min(num_samples, len(dataset))
        self.augment = getattr(dataset, "augment", None)
        self.reads_batches = getattr(dataset, "reads_batches", False)  # unihope.storage.reader.make_loader's batched path
        self.version_id = getattr(dataset, "version_id", "")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, item):
        for one in item if isinstance(item, list) else [item]:  # a list is a whole batch (make_loader)
            index = one[0] if isinstance(one, tuple) else one
            if not 0 <= index < self.num_samples:
                raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return self.dataset[item]


# ---------------------------------------------------------------- training loop


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    out_dir: Path
    steps: int
    checkpoint_path: Path
    step_losses: list[float]
    metrics: dict  # contents of metrics.json (training figures only when there was no evaluation)


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= up_to_step]


def train(
    cfg: TrainConfig,
    train_dataset: torch.utils.data.Dataset,
    eval_dataset: torch.utils.data.Dataset | None,
    out_dir: Path,
    hand_layer: nn.Module,
    resume: bool = True,
    log=print,
    identity: RunIdentity | None = None,
) -> TrainResult:
    """Train (resuming from the run folder's latest checkpoint), then evaluate on `eval_dataset`.

    Args:
        cfg: training config.
        train_dataset: samples with the `unihope.storage.reader.PairedDataset` keys.
        eval_dataset: held-out samples, or None to skip evaluation.
        out_dir: run folder (checkpoints/, loss_history.jsonl, metrics.jsonl, metrics.json, plots/).
        hand_layer: right-hand MANO layer.
        resume: continue from `out_dir`'s latest checkpoint when there is one.
        log: where progress lines go.
        identity: dataset version and hand model of a run on a stored dataset; recorded in checkpoints
            and metrics.json, and a checkpoint of another dataset version is not resumed.

    Returns:
        TrainResult.
    """
    # 1. Check inputs and set up
    if len(train_dataset) == 0:
        raise ValueError("the training dataset is empty")
    from unihope.distributed import data_parallel

    out_dir = Path(out_dir)
    # data parallel (unihope/distributed.py): every process builds the same seeded model; only the main
    # process writes files; optim.batch_size is the global batch, each process reads its slice
    dp = data_parallel(resolve_device(cfg.device), cfg.mixed_precision)
    device = dp.device
    if dp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.yaml").write_text(cfg.to_yaml())
    model = build_model(cfg, hand_layer).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(len(train_dataset) / cfg.optim.batch_size)
    total_steps = cfg.optim.epochs * steps_per_epoch
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)

    # 2. Resume or start (statistics are gathered once and travel inside checkpoints)
    step, stats = 0, None
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        state, stats = load_checkpoint(checkpoint, model, optimizer)
        if state.config_hash != resume_hash(cfg):
            raise ValueError(
                f"{checkpoint} was written with another config (hash {state.config_hash} != {resume_hash(cfg)}); "
                "use a new --out folder or the same config"
            )
        check_resume_identity(checkpoint, state, identity)
        step = state.step
        log(f"resumed from {checkpoint.name} at step {step}")
    if stats is None:
        stats = collect_train_statistics(train_dataset, cfg)
    history_path = out_dir / LOSS_HISTORY_FILE
    history = _read_history(history_path, step)
    epoch_log = out_dir / EPOCH_LOG_FILE
    if dp.is_main:
        history_path.write_text("".join(json.dumps(row) + "\n" for row in history))
        if step == 0 and epoch_log.exists():
            epoch_log.unlink()
    forward, stepper = dp.wrap(model, optimizer)  # DDP + autocast; (model, optimizer) for one plain process

    # 3. Optimise
    model.train()
    started = time.perf_counter()
    while step < total_steps:
        epoch, first_batch = divmod(step, steps_per_epoch)
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # unihope.storage.reader.make_loader: the epoch's order is epoch_order(...) (seeded by (seed, epoch)), resumable mid-epoch
        loader = make_loader(train_dataset, cfg.optim.batch_size, cfg.data.num_workers, shuffle=True, seed=cfg.seed,
                             epoch=epoch, skip_batches=first_batch, num_shards=dp.num_processes,
                             shard_index=dp.process_index)
        for batch in itertools.islice(loader, min(steps_per_epoch - first_batch, total_steps - step)):
            prepared = with_gt_vertices(model, prepare_batch(batch, cfg, device, epoch=epoch, is_train=True))
            loss, terms = batch_loss(model, prepared, cfg, forward=forward)
            # data parallel: this rank's share of the global batch weights its loss (1 for one process)
            n_global = min(cfg.optim.batch_size, len(train_dataset) - (step % steps_per_epoch) * cfg.optim.batch_size)
            n_local, scale = dp.local_share(n_global)
            loss_value, terms = dp.global_terms(float(loss.detach()), terms, n_local, n_global)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}: lower optim.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            dp.backward(loss if dp.num_processes == 1 else loss * scale)
            if cfg.optim.grad_clip_norm is not None:
                dp.clip_grad_norm(model.parameters(), cfg.optim.grad_clip_norm)
            stepper.step()
            step += 1
            row = {"step": step, "epoch": epoch, "loss": loss_value, **terms}
            history.append(row)
            if dp.is_main:
                with history_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            if step % cfg.checkpoint_every_steps == 0 and dp.is_main:
                _write_checkpoint(out_dir, model, optimizer, _train_state(step, epoch, cfg, identity), stats, cfg)
        epoch_done = step % steps_per_epoch == 0 or step == total_steps
        if epoch_done and dp.is_main:
            _log_epoch(cfg, model, eval_dataset, stats, device, history, epoch, step, lr, epoch_log, log)
    final_state = _train_state(step, step // steps_per_epoch, cfg, identity)
    checkpoint_path = out_dir / CHECKPOINT_DIR / f"step_{step:08d}.safetensors"
    if dp.is_main:
        checkpoint_path = _write_checkpoint(out_dir, model, optimizer, final_state, stats, cfg)
    train_seconds = time.perf_counter() - started
    if not dp.is_main:  # the main process evaluates and writes metrics.json
        dp.wait_for_everyone()
        return TrainResult(out_dir=out_dir, steps=step, checkpoint_path=checkpoint_path,
                           step_losses=[row["loss"] for row in history], metrics={})

    # 4. Evaluate on the held-out split (metrics.json is written either way)
    losses = [row["loss"] for row in history]
    window = cfg.loss_window_steps
    metrics: dict = {
        "train_loss_first": float(np.mean(losses[:window])) if losses else float("nan"),
        "train_loss_last": float(np.mean(losses[-window:])) if losses else float("nan"),
        "train_steps": step,
        "train_seconds_this_session": train_seconds,
        "device": str(device),
        "config_hash": cfg.config_hash(),
        "data_version": getattr(train_dataset, "version_id", ""),  # unihope.storage.versions id the run read ("" in tests)
        "evaluated": False,
        **(identity.to_json() if identity is not None else {}),
    }
    if eval_dataset is not None and len(eval_dataset) == 0:
        log("evaluation skipped: the held-out split is empty (raise data.val_fraction or build more sequences)")
    elif eval_dataset is not None:
        report = evaluate(model, eval_dataset, cfg, stats, device)
        metrics = {**report.summary(stats), **metrics, "evaluated": True}
        write_plots(out_dir / "plots", report, stats, history)
        log(f"eval: MPJPE {metrics['mpjpe_mm']:.2f} mm (mean-pose baseline {metrics['mean_pose_mpjpe_mm']:.2f}), "
            f"switcher acc {metrics['switcher_accuracy']:.3f} (majority {metrics['majority_switcher_accuracy']:.3f})")
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2))
    dp.wait_for_everyone()
    return TrainResult(out_dir=out_dir, steps=step, checkpoint_path=checkpoint_path, step_losses=losses, metrics=metrics)


def _log_epoch(cfg, model, eval_dataset, stats, device, history, epoch, step, lr, epoch_log: Path, log) -> None:
    rows = [row for row in history if row["epoch"] == epoch]
    entry = {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(np.mean([r["loss"] for r in rows]))}
    for name in rows[0] if rows else []:
        if name not in ("step", "epoch", "loss"):
            entry[f"train_{name}"] = float(np.mean([r.get(name, 0.0) for r in rows]))
    if eval_dataset is not None and len(eval_dataset) and cfg.eval_every_epochs and (epoch + 1) % cfg.eval_every_epochs == 0:
        summary = evaluate(model, eval_dataset, cfg, stats, device).summary(stats)
        entry.update({f"val_{k}": summary[k] for k in ("mpjpe_mm", "pa_mpjpe_mm", "switcher_accuracy")})
        model.train()
    with epoch_log.open("a") as handle:
        handle.write(json.dumps(_json_safe(entry)) + "\n")
    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalReport:
    """Per-sample evaluation results (N samples)."""

    mpjpe_mm: np.ndarray  # (N,)
    pa_mpjpe_mm: np.ndarray  # (N,)
    mpvpe_mm: np.ndarray  # (N,)
    mean_pose_mpjpe_mm: np.ndarray  # (N,) the training mean pose as prediction
    joints_2d_error_px: np.ndarray  # (N,) mean 2D joint error in crop px (heatmap soft-argmax)
    per_joint_error_mm: np.ndarray  # (N, 21)
    grasp_label: np.ndarray  # (N,) int
    grasp_prob: np.ndarray  # (N,)
    visibility: np.ndarray  # (N,)
    add_s_mm: np.ndarray  # (N,) nan where not evaluated (not grasping, unknown object, PnP failure)
    object_keypoints_error_px: np.ndarray  # (N,) nan where not grasping
    sample_keys: list[str]
    # UniHOPE's eval.py: vertex F-scores (wrist-aligned and Procrustes-aligned) and PA per-joint errors
    f_score: dict[str, np.ndarray] = field(default_factory=dict)  # "f_score_5mm", "pa_f_score_15mm", ... -> (N,)
    pa_per_joint_error_mm: np.ndarray | None = None  # (N, 21)

    def summary(self, stats: TrainStatistics) -> dict:
        """Aggregate numbers: overall, hand-only / hand-object split, occlusion-interval table."""
        pred_grasp = (self.grasp_prob > GRASP_THRESHOLD).astype(np.int64)
        majority = np.full_like(self.grasp_label, stats.majority_grasp)

        def mean(values: np.ndarray) -> float:
            values = values[np.isfinite(values)]
            return float(values.mean()) if len(values) else float("nan")

        split = {}
        for name, label in (("hand_only", 0), ("hand_object", 1)):
            chosen = self.grasp_label == label
            split[name] = {
                "count": int(chosen.sum()),
                "mpjpe_mm": mean(self.mpjpe_mm[chosen]),
                "pa_mpjpe_mm": mean(self.pa_mpjpe_mm[chosen]),
                "mpvpe_mm": mean(self.mpvpe_mm[chosen]),
                "mean_pose_mpjpe_mm": mean(self.mean_pose_mpjpe_mm[chosen]),
            }
        return {
            "num_samples": int(len(self.mpjpe_mm)),
            "mpjpe_mm": mean(self.mpjpe_mm),
            "pa_mpjpe_mm": mean(self.pa_mpjpe_mm),
            "mpvpe_mm": mean(self.mpvpe_mm),
            "joints_2d_error_px": mean(self.joints_2d_error_px),
            "mean_pose_mpjpe_mm": mean(self.mean_pose_mpjpe_mm),
            "switcher_accuracy": M.switcher_accuracy(pred_grasp, self.grasp_label),
            "majority_switcher_accuracy": M.switcher_accuracy(majority, self.grasp_label),
            "add_s_mm": mean(self.add_s_mm),
            "add_s_num_evaluated": int(np.isfinite(self.add_s_mm).sum()),
            "object_keypoints_error_px": mean(self.object_keypoints_error_px),
            **{name: mean(values) for name, values in self.f_score.items()},
            "auc_joints_0_50mm": M.pck_auc(self.per_joint_error_mm) if len(self.per_joint_error_mm) else float("nan"),
            "pa_auc_joints_0_50mm": (M.pck_auc(self.pa_per_joint_error_mm)
                                     if self.pa_per_joint_error_mm is not None and len(self.pa_per_joint_error_mm)
                                     else float("nan")),
            "split_by_grasp": split,
            "occlusion_intervals": {
                "mpjpe_mm": M.occlusion_interval_table(self.mpjpe_mm, self.visibility),
                "pa_mpjpe_mm": M.occlusion_interval_table(self.pa_mpjpe_mm, self.visibility),
                "mean_pose_mpjpe_mm": M.occlusion_interval_table(self.mean_pose_mpjpe_mm, self.visibility),
            },
        }


def evaluate(
    model: UniHOPEModel, dataset: torch.utils.data.Dataset, cfg: TrainConfig, stats: TrainStatistics,
    device: torch.device | None = None,
) -> EvalReport:
    """Run the model over `dataset` (no masking, no mirroring of the evaluation itself) and score every sample.

    Raises:
        ValueError: on an empty dataset.
    """
    # 1. Check inputs
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty (check data.eval_split)")
    device = device or next(model.parameters()).device
    model.eval()
    rows: dict[str, list] = {k: [] for k in (
        "mpjpe", "pa", "mpvpe", "mean", "j2d", "per_joint", "pa_per_joint", "label", "prob", "vis", "adds", "kp",
        "keys")}  # fmt: skip
    f_rows: dict[str, list[np.ndarray]] = {}

    # 2. Predict and score batch by batch
    with torch.no_grad():
        for batch in make_loader(dataset, cfg.eval_batch_size, cfg.data.num_workers, shuffle=False):
            prepared = with_gt_vertices(model, prepare_batch(batch, cfg, device, is_train=False))
            t = prepared.targets
            out = model(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px)
            pred_j, gt_j = out.joints_rel_m.double().cpu().numpy(), t.joints_rel_m.double().cpu().numpy()
            rows["mpjpe"].append(M.mpjpe_mm(pred_j, gt_j))
            rows["pa"].append(M.pa_mpjpe_mm(pred_j, gt_j))
            rows["mpvpe"].append(M.mpvpe_mm(out.verts_rel_m.double().cpu().numpy(), t.verts_rel_m.double().cpu().numpy()))
            rows["mean"].append(M.mpjpe_mm(np.broadcast_to(stats.mean_joints_rel_m, gt_j.shape), gt_j))
            rows["per_joint"].append(np.linalg.norm(pred_j - gt_j, axis=-1) * M.M_TO_MM)
            rows["pa_per_joint"].append(np.linalg.norm(M.procrustes_align(pred_j, gt_j) - gt_j, axis=-1) * M.M_TO_MM)
            for name, values in _vertex_f_scores(out.verts_rel_m, t.verts_rel_m).items():
                f_rows.setdefault(name, []).append(values)
            ratio = prepared.crop_size_px / cfg.model.input_size_px
            j2d = (out.joints_2d_px - t.joints_2d_px).norm(dim=-1).mean(-1) * ratio
            rows["j2d"].append(j2d.double().cpu().numpy())
            rows["label"].append(t.grasp.cpu().numpy())
            rows["prob"].append(out.grasp_prob.double().cpu().numpy())
            rows["vis"].append(prepared.visibility)
            rows["keys"].extend(prepared.sample_keys)
            adds, kp_err = _score_objects(out.object_keypoints_2d_px.double().cpu().numpy(), prepared, batch, stats, cfg)
            rows["adds"].append(adds)
            rows["kp"].append(kp_err)
    cat = {k: (np.concatenate(v) if k != "keys" else v) for k, v in rows.items()}
    return EvalReport(
        mpjpe_mm=cat["mpjpe"], pa_mpjpe_mm=cat["pa"], mpvpe_mm=cat["mpvpe"], mean_pose_mpjpe_mm=cat["mean"],
        joints_2d_error_px=cat["j2d"], per_joint_error_mm=cat["per_joint"], grasp_label=cat["label"],
        grasp_prob=cat["prob"], visibility=cat["vis"], add_s_mm=cat["adds"], object_keypoints_error_px=cat["kp"],
        sample_keys=cat["keys"], f_score={name: np.concatenate(v) for name, v in f_rows.items()},
        pa_per_joint_error_mm=cat["pa_per_joint"],
    )  # fmt: skip


def _vertex_f_scores(pred_verts_rel_m: torch.Tensor, gt_verts_rel_m: torch.Tensor) -> dict[str, np.ndarray]:
    """UniHOPE's eval.py F-scores of the mesh vertices at 5 and 15 mm: wrist-aligned (both meshes are
    wrist-relative) and after a Procrustes fit of the vertices with scale ("pa_")."""
    pred, gt = pred_verts_rel_m.double().cpu().numpy(), gt_verts_rel_m.double().cpu().numpy()
    aligned = M.procrustes_align(pred, gt)
    scores = {}
    for threshold_mm in M.F_SCORE_THRESHOLDS_MM:
        scores[f"f_score_{threshold_mm:g}mm"] = M.f_score(pred, gt, threshold_mm)
        scores[f"pa_f_score_{threshold_mm:g}mm"] = M.f_score(aligned, gt, threshold_mm)
    return scores


def _score_objects(pred_kp_input_px: np.ndarray, prepared: PreparedBatch, batch: dict, stats: TrainStatistics,
                   cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """ADD-S (mm) over the triangulated box keypoints and 2D keypoint error (crop px), grasping samples only."""
    ratio = cfg.model.input_size_px / prepared.crop_size_px
    crop = prepared.crop_size_px
    pred = (pred_kp_input_px + 0.5) / ratio - 0.5  # back to crop px
    mirrored = prepared.is_mirrored.numpy()
    pred[mirrored, :, 0] = crop - 1 - pred[mirrored, :, 0]  # back to the sample's own (unmirrored) crop
    gt = np.asarray(batch["object_keypoints_2d"], dtype=np.float64)
    labels = np.asarray(batch["grasp"]).reshape(-1)
    adds = np.full(len(pred), np.nan)
    kp_err = np.full(len(pred), np.nan)
    for i in range(len(pred)):
        if labels[i] != 1:
            continue
        kp_err[i] = float(np.linalg.norm(pred[i] - gt[i], axis=-1).mean())
        points = stats.object_keypoints_obj_m.get(int(prepared.object_id[i]))
        if points is None:
            continue
        pose = M.solve_object_pose_pnp(pred[i], points, prepared.K_crop[i])
        if pose is not None:
            adds[i] = M.add_s_mm(points, pose, prepared.object_pose[i])
    return adds, kp_err


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


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------- entry points


def open_paired_dataset(data_url: str, split: str, cfg: TrainConfig, max_samples: int | None, augment_on: bool = False,
                        version: str | None = None):
    """The shards' split through `unihope.storage.reader.PairedDataset` (capped to `max_samples`; augmented when asked).

    `version` is a dataset version id (unihope.storage.versions); None = the newest.
    """
    from unihope.storage.augment import AugmentConfig
    from unihope.storage.reader import PairedDataset

    augment = AugmentConfig() if (augment_on and cfg.data.augment) else None
    dataset = PairedDataset(data_url, split=split, augment=augment, seed=cfg.seed, val_fraction=cfg.data.val_fraction,
                            version=version)
    if max_samples is not None and len(dataset) > max_samples:
        dataset = FirstSamples(dataset, max_samples)
    return dataset


# A run's pin on its dataset version: released at the end; a killed run's pin is stale at once on
# its host (its pid is gone) and after this long elsewhere.
TRAIN_PIN_TTL_S = 24 * 3600.0


def _apply_cpu_threads(cfg: TrainConfig) -> None:
    # Entry points only: on a shared 2-core machine one thread per process is ~10-30x faster than two
    # threads competing with other processes (docs/performance/training.md).
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)


def with_mano_dir(cfg: TrainConfig, mano_dir: Path | None) -> TrainConfig:
    """`cfg` with `hand.mano_dir` replaced by the command line's `--mano-dir` (None: the config's own)."""
    if mano_dir is None:
        return cfg
    data = cfg.model_dump(mode="json")
    data["hand"]["mano_dir"] = str(mano_dir)
    return TrainConfig.model_validate(data)


def resolve_hand_model(cfg: TrainConfig, data_url: str, log=print):
    """The hand config training loads, and its identity, checked against the one the dataset at `data_url` records.

    The files come from `cfg.hand.mano_dir` (`--mano-dir` or the train config); when neither names
    any and the dataset was built with MANO files, from the build's own `hand.mano_dir` if that
    folder exists here: the user points at the files once, in the build config. Either way the
    digests must match the dataset's.

    Returns:
        (cfg with the hand config in use, HandModelIdentity of its files).

    Raises:
        ValueError: one line, when the dataset was built with another hand model (or is not finalized).
    """
    from unihope.storage.reader import open_dataset
    from unihope.hand_identity import HAND_KIND_MANO, check_same_hand_model, dataset_hand_identity, hand_model_identity

    view = open_dataset(data_url)
    try:
        if view.manifest is None:
            raise ValueError(f"{data_url} is not finalized (no manifest): finish its build first")
        attrs = view.manifest.attrs
    finally:
        view.close()
    recorded = dataset_hand_identity(attrs.hand_model, attrs.config, data_url)
    build_mano_dir = (attrs.config.get("hand") or {}).get("mano_dir")
    if (cfg.hand.mano_dir is None and recorded is not None and recorded.kind == HAND_KIND_MANO
            and build_mano_dir and Path(build_mano_dir).is_dir()):
        cfg = with_mano_dir(cfg, Path(build_mano_dir))
        log(f"hand model: the build's hand.mano_dir {build_mano_dir}")
    from unihope.tip_convention import recorded_tip_convention

    loaded = hand_model_identity(cfg.hand, recorded_tip_convention(attrs.config))
    check_same_hand_model(recorded, loaded, data_url)
    return cfg, loaded


def run_training_from_cli(
    config_path: Path, data_url: str, out_dir: Path, mano_dir: Path | None = None, version: str | None = None,
    overrides: tuple[str, ...] = (), log=print,
) -> TrainResult:
    """`unihope train --out`: load the config, check the hand model, open the shards, train, evaluate.

    Args:
        config_path: training config (YAML).
        data_url: dataset path or URL.
        out_dir: the run folder.
        mano_dir: `--mano-dir`, overriding the config's `hand.mano_dir` (neither: the build's, see
            `resolve_hand_model`).
        version: the dataset version already read by the caller (`run_training_in_runs_dir`); None -> read now.
        overrides: `--set key=value` overrides (`unihope.overrides`).
        log: receives progress lines (the train flow passes its run logger).

    Raises:
        ValueError: on a hand model mismatch, or a run folder holding a run on other data.
    """
    from unihope.storage.versions import current_version, pin

    cfg = with_mano_dir(load_train_config(config_path, overrides), mano_dir)
    _apply_cpu_threads(cfg)
    cfg, hand_model = resolve_hand_model(cfg, data_url, log=log)
    # the run reads one dataset version, pinned so that `unihope gc` keeps it while the run lives
    version = version or current_version(data_url)
    identity = RunIdentity(dataset_version=version, hand_model=hand_model)
    with pin(data_url, version, owner=f"train:{out_dir}", ttl_s=TRAIN_PIN_TTL_S):
        train_set = open_paired_dataset(data_url, cfg.data.train_split, cfg, cfg.data.max_train_samples,
                                        augment_on=True, version=version)
        eval_set = open_paired_dataset(data_url, cfg.data.eval_split, cfg, cfg.data.max_eval_samples, version=version)
        log(f"training {cfg.name} on {len(train_set)} samples, evaluating on {len(eval_set)} ({data_url}, "
              f"version {identity.dataset_version}, hand {identity.hand_model.describe()})")
        from unihope.tip_convention import tip_convention_of_dataset

        hand_layer = build_hand_layer(cfg.hand, tip_convention_of_dataset(train_set))
        result = train(cfg, train_set, eval_set, Path(out_dir), hand_layer, identity=identity, log=log)
    log(f"checkpoint: {result.checkpoint_path}")
    log(f"metrics:    {Path(out_dir) / 'metrics.json'}")
    return result


def load_train_config(config_path: Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """The training config at `config_path` with `--set` overrides applied (ConfigError names a bad one)."""
    from unihope.overrides import apply_overrides

    return apply_overrides(TrainConfig.from_yaml(Path(config_path)), overrides)


def run_training_in_runs_dir(
    config_path: Path, data_url: str, runs_dir: Path, mano_dir: Path | None = None,
    overrides: tuple[str, ...] = (), log=print,
) -> TrainResult:
    """Train in `<runs_dir>/<dataset version>-<config digest>/` (`unihope build --train`, the train deployment).

    Each build of a dataset location gets a run of its own, trained from scratch with its full
    budget; rerunning on the same version and config resumes that version's run.

    Args:
        config_path: training config (YAML).
        data_url: dataset path or URL.
        runs_dir: root of the run folders.
        mano_dir: `--mano-dir`, overriding the config's `hand.mano_dir`.
        overrides: `--set key=value` overrides (part of the config digest, like any config change).
        log: receives progress lines.
    """
    from unihope.run_keys import dataset_version, run_dir_for

    cfg = with_mano_dir(load_train_config(config_path, overrides), mano_dir)
    version = dataset_version(data_url)
    run_dir = run_dir_for(Path(runs_dir), version, resume_hash(cfg))
    return run_training_from_cli(config_path, data_url, run_dir, mano_dir=mano_dir, version=version,
                                 overrides=overrides, log=log)


def run_evaluation_from_cli(
    config_path: Path | None, checkpoint_path: Path, data_url: str, out_dir: Path, mano_dir: Path | None = None,
) -> dict:
    """`unihope eval`: score a checkpoint on the config's evaluation split; writes eval_metrics.json and plots.

    The hand model (`--mano-dir` or the config's `hand`) must be the dataset's, and the checkpoint's
    when it records one. With `config_path` None the config is the one the checkpoint records.

    Raises:
        ValueError: on a hand model mismatch, or a checkpoint without training statistics.
    """
    from unihope.hand_identity import HandModelIdentity

    from unihope.checkpoint_config import train_config_of_checkpoint

    recorded = TrainConfig.from_yaml(Path(config_path)) if config_path is not None else train_config_of_checkpoint(
        Path(checkpoint_path))
    cfg = with_mano_dir(recorded, mano_dir)
    _apply_cpu_threads(cfg)
    cfg, loaded = resolve_hand_model(cfg, data_url)
    device = resolve_device(cfg.device)
    from unihope.tip_convention import tip_convention_of_dataset

    eval_set = open_paired_dataset(data_url, cfg.data.eval_split, cfg, cfg.data.max_eval_samples)
    model = build_model(cfg, build_hand_layer(cfg.hand, tip_convention_of_dataset(eval_set))).to(device)
    state, stats = load_checkpoint(Path(checkpoint_path), model)
    if stats is None:
        raise ValueError(f"{checkpoint_path} carries no training statistics; evaluate a checkpoint from `unihope train`")
    trained = HandModelIdentity.from_json(json.loads(state.hand_model)) if state.hand_model else None
    if trained is not None and not trained.matches(loaded):
        raise ValueError(f"hand model mismatch: {checkpoint_path} was trained with {trained.describe()}, "
                         f"evaluation loads {loaded.describe()}")
    report = evaluate(model, eval_set, cfg, stats, device)
    summary = report.summary(stats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_metrics.json").write_text(json.dumps(_json_safe(summary), indent=2))
    write_plots(out_dir / "plots", report, stats, [])
    print(f"MPJPE {summary['mpjpe_mm']:.2f} mm, PA-MPJPE {summary['pa_mpjpe_mm']:.2f} mm, "
          f"switcher accuracy {summary['switcher_accuracy']:.3f} -> {out_dir / 'eval_metrics.json'}")
    print(f"F@5mm {summary['f_score_5mm']:.3f}, F@15mm {summary['f_score_15mm']:.3f} "
          f"(Procrustes-aligned {summary['pa_f_score_5mm']:.3f}, {summary['pa_f_score_15mm']:.3f}), "
          f"3D PCK AUC 0-50 mm {summary['auc_joints_0_50mm']:.3f} (aligned {summary['pa_auc_joints_0_50mm']:.3f})")
    return summary
