"""UniHOPE's beta choice: a trained checkpoint of this project's own model predicts the hand on every candidate.

The pose error of an image (lower = better, dimensionless) combines
- the flexion error of the occluded fingers: MCP/PIP/DIP bend angles of the prediction against the frame's
  known pose (3-D joints from the model's MANO output vs `frame.joints_3d`, or 2-D heatmap joints vs
  `joints_2d`), fingers weighted by how hidden they are (1 - finger_visibility + 0.1), in units of
  FLEXION_ANGLE_SCALE_DEG;
- the consistency of the visible part: the 2-D error of the joints that are visible in the input (their pixel
  lies on the visible hand), in units of JOINT_SCALE_FRACTION of the crop side, and the mean absolute pixel
  difference on the clean visible rim, in units of VISIBLE_MAD_SCALE_GREY.

error = (1 - visible_weight) * flexion + visible_weight * (joints + pixels) / 2. The score the de-occluder
maximises is -error, so its keep rule `best_score > original_score + keep_margin` is upstream's
`gen_error + margin < ori_error`, with the margin in these error units; both errors are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from unihope.storage.schema import AnnotatedFrame

from .scoring import (
    FINGER_WEIGHT_FLOOR,
    FLEXION_ANGLE_SCALE_DEG,
    VISIBLE_MAD_SCALE_GREY,
    _check_images,
    flexion_angles_deg,
    visible_region,
)

JOINT_SCALE_FRACTION = 0.03  # a visible-joint error of 3% of the crop side (~4 px at 128 px) counts 1
FLEXION_SPACES = ("3d", "2d")


@dataclass(frozen=True, slots=True)
class PoseErrors:
    """Per-candidate pose error and its parts, each (N,) float64 (lower = better)."""

    total: np.ndarray  # the combined dimensionless error
    occluded_flexion_deg: np.ndarray  # hidden-weighted mean bend-angle error
    visible_joints_px: np.ndarray  # mean 2-D error of the joints visible in the input, crop px (nan: none visible)
    visible_pixels_grey: np.ndarray  # mean |candidate - input| on the clean visible rim, grey levels


@dataclass(frozen=True, slots=True)
class PosePrediction:
    """The model's hand on N images of one frame, in that frame's own (unmirrored) crop and camera."""

    joints_rel_m: np.ndarray  # (N, 21, 3) float64, wrist-relative, camera axes of the crop
    joints_2d_px: np.ndarray  # (N, 21, 2) float64, crop px


class CheckpointPoseModel:
    """A trained UniHOPE checkpoint (`unihope train` output), wrapped to predict the hand on candidate crops."""

    def __init__(self, model: torch.nn.Module, input_size_px: int, device: torch.device) -> None:
        """Args: model: a UniHOPEModel in eval mode; input_size_px: its input size; device: where it runs."""
        self.model = model.eval()
        self.input_size_px = input_size_px
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "cpu") -> "CheckpointPoseModel":
        """Load a checkpoint file, a run folder, or its `checkpoints/latest.txt`; the model's config is read
        from the checkpoint's own metadata, so any run's checkpoint loads without its YAML.

        Raises:
            ValueError: when the path names no training checkpoint (`resolve_pose_checkpoint`) or its tensors do
                not fit the architecture it records (`load_model_weights`).
        """
        from unihope.train.weights import load_model_weights
        from unihope.train.spec import build_hand_layer, build_model

        file_path, train_cfg = resolve_pose_checkpoint(path)
        model = build_model(train_cfg, build_hand_layer())
        load_model_weights(file_path, model)
        torch_device = torch.device(device)
        return cls(model.to(torch_device), train_cfg.model.input_size_px, torch_device)

    def predict(self, frame: AnnotatedFrame, images_rgb: np.ndarray) -> PosePrediction:
        """The hand on each image; left hands are mirrored in and out as in training (one right-hand model)."""
        crop = images_rgb.shape[1]
        size = self.input_size_px
        ratio = size / crop
        is_left = frame.frame.hand_side == "left"
        images = torch.from_numpy(np.ascontiguousarray(images_rgb)).permute(0, 3, 1, 2).float() / 255.0
        joints_2d = np.asarray(frame.joints_2d, np.float64).copy()
        object_2d = np.asarray(frame.object_keypoints_2d, np.float64).copy()
        if is_left:
            images = images.flip(-1)
            joints_2d[:, 0] = crop - 1 - joints_2d[:, 0]
            object_2d[:, 0] = crop - 1 - object_2d[:, 0]
        # Boxes as the training reader makes them: min/max of the known 2-D keypoints, then resized.
        boxes = [np.concatenate([pts.min(axis=0), pts.max(axis=0)]) for pts in (joints_2d, object_2d)]
        hand_box, object_box = (torch.tensor((b + 0.5) * ratio - 0.5, dtype=torch.float32) for b in boxes)
        if crop != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        num = len(images_rgb)
        with torch.no_grad():
            out = self.model(
                images.to(self.device), hand_box.expand(num, 4).to(self.device), object_box.expand(num, 4).to(self.device)
            )
        joints_rel = out.joints_rel_m.double().cpu().numpy()
        pred_2d = (out.joints_2d_px.double().cpu().numpy() + 0.5) / ratio - 0.5
        if is_left:
            joints_rel[..., 0] *= -1
            pred_2d[..., 0] = crop - 1 - pred_2d[..., 0]
        return PosePrediction(joints_rel_m=joints_rel, joints_2d_px=pred_2d)


def resolve_pose_checkpoint(path: Path):  # noqa: ANN201 (-> tuple[Path, TrainConfig]; torch-free config import)
    """The checkpoint file `deocclusion.pose_model_checkpoint` names and the training config it records.

    Cheap (reads the safetensors header only): the build's preflight calls it, so a wrong path fails before any
    work starts rather than in the first de-occlusion batch.

    Args:
        path: a checkpoint file, a `unihope train` run folder, or its `checkpoints/latest.txt`.

    Raises:
        ValueError: naming the setting, the path and what to point it at.
    """
    from unihope.train_config import TrainConfig
    from unihope.train.weights import read_checkpoint_metadata

    hint = "point it at a `unihope train` run folder, its checkpoints/latest.txt or a .safetensors checkpoint"
    try:
        file_path, metadata = read_checkpoint_metadata(Path(path).expanduser())
    except ValueError as err:
        raise ValueError(f"deocclusion.pose_model_checkpoint: {err}; {hint}") from err
    train_yaml = metadata.get("train_config")
    if train_yaml is None:
        raise ValueError(f"deocclusion.pose_model_checkpoint: {file_path} has no train_config metadata (not written "
                         f"by `unihope train`); {hint}")
    try:
        return file_path, TrainConfig.from_yaml(train_yaml)
    except ValueError as err:
        raise ValueError(f"deocclusion.pose_model_checkpoint: {file_path} records a training config this version "
                         f"cannot read ({str(err).splitlines()[0]})") from err


def visible_joints(frame: AnnotatedFrame) -> np.ndarray:
    """(21,) bool: joints whose (rounded) crop pixel lies on the visible hand of the input."""
    size = frame.mask_hand_visible.shape[0]
    uv = np.clip(np.rint(np.asarray(frame.joints_2d, np.float64)).astype(int), 0, size - 1)
    return np.asarray(frame.mask_hand_visible, bool)[uv[:, 1], uv[:, 0]]


class PoseModelScorer:
    """Scores candidates by the pose error of a trained model's prediction on them (see the module docstring)."""

    def __init__(
        self,
        model: CheckpointPoseModel,
        visible_weight: float = 0.5,
        flexion_space: Literal["3d", "2d"] = "3d",
    ) -> None:
        """Args:
        model: the wrapped checkpoint.
        visible_weight: share of the visible-part terms in the error, in [0, 1].
        flexion_space: "3d" (MANO joints vs frame.joints_3d, upstream's) or "2d" (heatmap joints vs joints_2d).
        """
        if not 0.0 <= visible_weight <= 1.0:
            raise ValueError(f"deocclusion.visible_weight must be in [0, 1], got {visible_weight}")
        if flexion_space not in FLEXION_SPACES:
            raise ValueError(f"flexion_space must be one of {FLEXION_SPACES}, got {flexion_space!r}")
        self.model = model
        self.visible_weight = visible_weight
        self.flexion_space = flexion_space

    def pose_errors(self, frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> PoseErrors:
        """The pose error of every image (the input crop included when passed), lower = better."""
        # 1. Check inputs, predict
        images = _check_images(frame, mask_inpaint, images_rgb)
        predicted = self.model.predict(frame, images)

        # 2. Flexion of the occluded fingers against the known pose
        if self.flexion_space == "3d":
            angles, truth = flexion_angles_deg(predicted.joints_rel_m), flexion_angles_deg(frame.frame.joints_3d)
        else:
            angles, truth = flexion_angles_deg(predicted.joints_2d_px), flexion_angles_deg(frame.joints_2d)
        weights = (1.0 - np.asarray(frame.finger_visibility, np.float64)) + FINGER_WEIGHT_FLOOR
        per_finger_deg = np.abs(angles - truth[None]).mean(axis=-1)  # (N, 5)
        flexion_deg = (per_finger_deg * weights).sum(axis=-1) / weights.sum()

        # 3. Visible part: joints visible in the input, pixels on the clean visible rim
        seen = visible_joints(frame)
        joint_px = np.linalg.norm(predicted.joints_2d_px - np.asarray(frame.joints_2d, np.float64)[None], axis=-1)
        visible_px = joint_px[:, seen].mean(axis=1) if seen.any() else np.full(len(images), np.nan)
        region = visible_region(frame, mask_inpaint)
        if region.any():
            pixels_grey = np.abs(images[:, region].astype(np.float64) - frame.image[region].astype(np.float64))
            pixels_grey = pixels_grey.mean(axis=(1, 2))
        else:
            pixels_grey = np.zeros(len(images))

        # 4. Combine (a frame without visible joints counts pixels only)
        joint_term = np.nan_to_num(visible_px / (JOINT_SCALE_FRACTION * frame.image.shape[0]), nan=0.0)
        visible_term = (joint_term + pixels_grey / VISIBLE_MAD_SCALE_GREY) / (2.0 if seen.any() else 1.0)
        total = (1.0 - self.visible_weight) * flexion_deg / FLEXION_ANGLE_SCALE_DEG + self.visible_weight * visible_term
        return PoseErrors(
            total=total, occluded_flexion_deg=flexion_deg, visible_joints_px=visible_px, visible_pixels_grey=pixels_grey
        )

    def score(self, frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> np.ndarray:
        """-pose error, (N,) float32 (higher = better, as the Scorer protocol wants)."""
        return (-self.pose_errors(frame, mask_inpaint, images_rgb).total).astype(np.float32)


def build_pose_scorer(cfg) -> PoseModelScorer:  # noqa: ANN001 (DeocclusionConfig; avoids an import cycle)
    """The pose-model scorer of a de-occlusion config (checkpoint, weights, flexion space); on the GPU when the
    diffusion backend may use one, else on the CPU."""
    device = "cpu"
    if cfg.controlnet.device != "cpu" and torch.cuda.is_available():
        device = cfg.controlnet.device if cfg.controlnet.device.startswith("cuda") else "cuda"
    model = CheckpointPoseModel.from_checkpoint(cfg.pose_model_checkpoint, device=device)
    return PoseModelScorer(model, visible_weight=cfg.visible_weight, flexion_space=cfg.pose_flexion_space)


__all__ = [
    "JOINT_SCALE_FRACTION",
    "CheckpointPoseModel",
    "PoseErrors",
    "PoseModelScorer",
    "build_pose_scorer",
    "resolve_pose_checkpoint",
    "visible_joints",
]
