"""One loaded batch -> the model's inputs and targets (left hands mirrored, resized, masked) and its loss.

Left hands are mirrored to right hands at load time (image flipped, joints x -> -x, MANO axis-angle
components 1 and 2 negated), so one right-hand MANO layer serves every sample; predictions are
evaluated in that mirrored frame (root-relative hand errors are mirror-invariant), and predicted
object keypoints are flipped back before PnP against the sample's own intrinsics and pose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unihope.hand.mirror import mirror_axis_angle, mirror_points_x
from unihope.model import (
    HAND_TERMS,
    LossTargets,
    UniHOPEModel,
    enhancement_losses,
    hand_losses_per_sample,
    scaled_patch_layout,
    select_rows,
    supervised_losses,
    target_focused_mask,
    target_rows,
    teacher_pass,
    total_loss,
)
from unihope.model.roi_align import HAND_ROI_BOX_SCALE, OBJECT_ROI_BOX_SCALE, points_box_xyxy
from unihope.seeding import torch_generator
from unihope.train.spec import loss_weights
from unihope.train_config import TrainConfig

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
        batch: a collated batch of `unihope.storage.paired.PairedDataset` samples.
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

    joints_3d = batch["joints_3d"].float()
    joints_3d = torch.where(flip[:, None, None], mirror_points_x(joints_3d), joints_3d)
    pose = batch["mano_pose"].float()
    pose = torch.where(flip[:, None], mirror_axis_angle(pose), pose)

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
            target_focused_mask(images[i], object_boxes[i], torch_generator(cfg.seed, epoch, keys[i]),
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
        mask_object=mask_object.to(device),
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


def enhancement_rows(prepared: PreparedBatch, pair_index: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Which of the pairs (positions into `pair_index`) the enhancement terms distil: upstream takes the
    grasping samples at visibility <= enhancement.max_visibility only."""
    e = cfg.enhancement
    if not e.grasping_only:
        return torch.arange(len(pair_index), device=pair_index.device)
    visibility = torch.as_tensor(prepared.visibility, device=pair_index.device)[pair_index]
    grasping = prepared.targets.grasp[pair_index] == 1
    return torch.nonzero(grasping & (visibility <= e.max_visibility)).flatten()


def batch_loss(model: UniHOPEModel, prepared: PreparedBatch, cfg: TrainConfig,
               forward: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one prepared batch (supervised + the pairs' terms) and its terms.

    With the pairs on (`ablation.use_enhancement`) and `enhancement.supervise_deoccluded` (upstream), the
    occluded and the de-occluded images of the paired samples run through one forward: the hand terms
    average a pair's two images (each weighted 0.5, an unpaired sample's image 1), the object and grasp
    terms read the occluded images, and the enhancement terms distil the de-occluded half (detached) into
    the occluded one. Without `supervise_deoccluded` the de-occluded images run as a no-grad teacher.
    `forward` runs the student pass (the DDP wrapper of `model` in a data-parallel run; None = model).
    """
    terms = loss_terms(model, prepared, cfg, forward)
    total = total_loss(terms)
    return total, {name: float(value.detach()) for name, value in terms.items()}


def loss_terms(model: UniHOPEModel, prepared: PreparedBatch, cfg: TrainConfig,
               forward: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The weighted loss terms of `batch_loss`, as tensors (for per-term gradient norms)."""
    weights = loss_weights(cfg)
    t = prepared.targets
    run = forward or model
    num_samples = prepared.images.shape[0]
    use_pairs = cfg.ablation.use_enhancement
    pair_index = torch.nonzero(prepared.has_pair).flatten() if use_pairs else prepared.has_pair.new_zeros(0).long()
    num_pairs = len(pair_index)

    # 1. Forward: occluded images, plus the de-occluded images of the pairs (supervised, or a no-grad teacher)
    teacher = None
    if use_pairs and cfg.enhancement.supervise_deoccluded and num_pairs:
        rows = torch.cat([torch.arange(num_samples, device=pair_index.device), pair_index])
        images = torch.cat([prepared.images, prepared.images_deoccluded[pair_index]])
        out_all = run(images, t.hand_boxes_xyxy_px[rows], t.object_boxes_xyxy_px[rows])
        out = select_rows(out_all, torch.arange(num_samples, device=pair_index.device))
        teacher = select_rows(out_all, num_samples + torch.arange(num_pairs, device=pair_index.device))
        hand_weights = torch.ones(num_samples, device=pair_index.device)
        if cfg.enhancement.pair_supervision == "average":
            hand_weights[pair_index] = 0.5
        terms = supervised_losses(out, t, weights, hand_sample_weights=hand_weights)
        pair_terms = hand_losses_per_sample(teacher, target_rows(t, pair_index), weights)
        for name in HAND_TERMS:
            terms[name] = terms[name] + 0.5 * pair_terms[name].sum() / num_samples
    else:
        out = run(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px)
        terms = supervised_losses(out, t, weights)
        if use_pairs and num_pairs:
            teacher = teacher_pass(model, prepared.images_deoccluded[pair_index], t.hand_boxes_xyxy_px[pair_index],
                                   t.object_boxes_xyxy_px[pair_index])  # fmt: skip

    # 2. Enhancement: distil the de-occluded half into the occluded one on the selected pairs
    if use_pairs:
        chosen = enhancement_rows(prepared, pair_index, cfg) if num_pairs else pair_index
        terms.update(enhancement_losses(
            out, select_rows(teacher, chosen) if teacher is not None else out, pair_index[chosen],
            prepared.mask_hand[pair_index[chosen]], prepared.mask_object[pair_index[chosen]], weights,
            mapper=model.enhancement_mapper,
        ))  # fmt: skip
    return terms


SHARED_LAYER_PREFIXES = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer4.")


def term_gradient_norms(model: UniHOPEModel, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 norm of each term's gradient on the layers both streams share (stem, stage 1, stage 4).

    Shows which loss actually drives the shared features (one extra backward per term; the graph is kept).
    """
    shared = [p for name, p in model.named_parameters() if name.startswith(SHARED_LAYER_PREFIXES) and p.requires_grad]
    norms = {}
    for name, value in terms.items():
        if not value.requires_grad:
            norms[f"gradnorm_{name}"] = 0.0
            continue
        grads = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
        norms[f"gradnorm_{name}"] = float(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None),
                                                         torch.zeros(()))))  # fmt: skip
    return norms
