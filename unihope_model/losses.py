"""Training losses: supervised hand/object/grasp terms and the three enhancement terms, weighted.

Units (why the upstream weights carry over): 3D joints and vertices are wrist-relative metres with
a mean squared error, so weight 1e4 turns a 1 cm error into 1; MANO pose in radians (MSE), betas
unitless (MSE); heatmaps are Gaussians with peak 1 (MSE); object keypoints in box-normalised units
(L1, the object box's side = 1, as upstream normalises its 2D control points).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unihope.model.enhancement import image_level_loss, occlusion_attention, output_level_loss, token_level_loss
from unihope.model.model import UniHOPEOutput
from unihope.model.roi_align import roi_px_to_box

HEATMAP_SIGMA_FRACTION = 1.0 / 16  # Gaussian sigma as a fraction of the hand box (2 bins at R = 32)
MIN_HEATMAP_SIGMA_BINS = 0.75
CONFIDENCE_SHARPNESS = 10.0  # target confidence = exp(-k * vote error in box units)


@dataclass(frozen=True)
class LossWeights:
    """Weights of every loss term (defaults: REFERENCE.md, DexYCB enhancement weights)."""

    verts3d: float = 1e4
    joints3d: float = 1e4
    mano_pose: float = 10.0
    mano_shape: float = 0.1
    mano_variance: float = 1.0  # Gaussian NLL that calibrates the log-variances (mean detached)
    joints2d: float = 1e2
    object_keypoints: float = 5e2
    object_confidence: float = 1e2
    grasp: float = 10.0
    enhance_image: float = 0.1
    enhance_token: float = 0.1
    enhance_output: float = 0.5
    output_level_mode: str = "kl"  # "kl" (paper) | "l1" (code)


@dataclass(frozen=True)
class LossTargets:
    """Ground truth for one batch, already mirrored to right hands and resized to the model input."""

    joints_rel_m: torch.Tensor  # (B, 21, 3) wrist-relative metres
    verts_rel_m: torch.Tensor  # (B, 778, 3) wrist-relative metres (from the GT MANO parameters)
    mano_pose: torch.Tensor  # (B, 48)
    mano_betas: torch.Tensor  # (B, 10)
    joints_2d_px: torch.Tensor  # (B, 21, 2) input px
    hand_boxes_xyxy_px: torch.Tensor  # (B, 4) input px, the boxes given to the model (losses use the model's own)
    object_keypoints_2d_px: torch.Tensor  # (B, 21, 2) input px
    object_boxes_xyxy_px: torch.Tensor  # (B, 4) input px, likewise
    grasp: torch.Tensor  # (B,) long, 1 = grasping


def gaussian_heatmaps(points_box: torch.Tensor, size: int) -> torch.Tensor:
    """(B, J, 2) box-normalised points -> (B, J, R, R) Gaussians with peak 1 at each point."""
    sigma = max(MIN_HEATMAP_SIGMA_BINS, HEATMAP_SIGMA_FRACTION * size)
    centres = torch.arange(size, dtype=points_box.dtype, device=points_box.device)
    pts = points_box * size - 0.5  # bin coordinates
    dx = (centres[None, None, None, :] - pts[..., 0, None, None]) ** 2
    dy = (centres[None, None, :, None] - pts[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2 * sigma * sigma))


def supervised_losses(out: UniHOPEOutput, targets: LossTargets, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Weighted supervised terms. Object terms use grasping samples only (the object branch is off otherwise).

    Returns:
        {term name: weighted scalar}.
    """
    terms: dict[str, torch.Tensor] = {}
    terms["joints3d"] = weights.joints3d * F.mse_loss(out.joints_rel_m, targets.joints_rel_m)
    terms["verts3d"] = weights.verts3d * F.mse_loss(out.verts_rel_m, targets.verts_rel_m)
    terms["mano_pose"] = weights.mano_pose * F.mse_loss(out.mano_pose, targets.mano_pose)
    terms["mano_shape"] = weights.mano_shape * F.mse_loss(out.mano_betas, targets.mano_betas)
    gt_params = torch.cat([targets.mano_pose, targets.mano_betas], dim=1)
    sq_err = (out.mano_mean.detach() - gt_params).pow(2)
    terms["mano_variance"] = weights.mano_variance * 0.5 * (out.mano_logvar + sq_err * torch.exp(-out.mano_logvar)).mean()
    # Targets in box units of the boxes the model pooled and decodes with (out.*_boxes_xyxy_px), never the
    # raw input boxes: then a perfectly learned target decodes back to itself whatever the box.
    joints_box = roi_px_to_box(out.hand_boxes_xyxy_px, targets.joints_2d_px)
    terms["joints2d"] = weights.joints2d * F.mse_loss(out.heatmaps, gaussian_heatmaps(joints_box, out.heatmaps.shape[-1]))

    grasping = targets.grasp == 1
    if bool(grasping.any()):
        kp_box = roi_px_to_box(out.object_boxes_xyxy_px, targets.object_keypoints_2d_px)[grasping]  # (G, 21, 2)
        votes = out.object_votes_box[grasping]  # (G, 21, R, R, 2)
        vote_err = (votes - kp_box[:, :, None, None, :]).abs()
        terms["object_keypoints"] = weights.object_keypoints * (
            vote_err.mean() + (out.object_keypoints_box[grasping] - kp_box).abs().mean()
        )
        conf_target = torch.exp(-CONFIDENCE_SHARPNESS * vote_err.detach().sum(-1))
        conf = torch.sigmoid(out.object_conf_logits[grasping])
        terms["object_confidence"] = weights.object_confidence * (conf - conf_target).abs().mean()
    else:
        zero = out.object_votes_box.sum() * 0.0  # keeps the graph connected for DDP-style checks
        terms["object_keypoints"] = zero
        terms["object_confidence"] = zero

    if out.grasp_logits is not None:
        terms["grasp"] = weights.grasp * F.cross_entropy(out.grasp_logits, targets.grasp)
    return terms


def enhancement_losses(
    student: UniHOPEOutput,
    teacher: UniHOPEOutput,
    pair_index: torch.Tensor,
    mask_hand: torch.Tensor,
    mask_object: torch.Tensor,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """Image-, token- and output-level self-distillation on the samples that have a de-occluded pair.

    Args:
        student: outputs on the occluded images of the whole batch.
        teacher: outputs on the de-occluded images of the paired samples only (no grad).
        pair_index: (P,) long, which batch entries the teacher rows belong to.
        mask_hand, mask_object: (P, S, S) float masks of the paired samples.
        weights: loss weights.

    Returns:
        {"enhance_image", "enhance_token", "enhance_output": weighted scalars}.
    """
    layer2 = student.layer2_hand[pair_index]
    attention = occlusion_attention(mask_hand, mask_object, layer2.shape[-2:])
    return {
        "enhance_image": weights.enhance_image * image_level_loss(layer2, teacher.layer2_hand, attention),
        "enhance_token": weights.enhance_token * token_level_loss(student.hand_tokens[pair_index], teacher.hand_tokens),
        "enhance_output": weights.enhance_output
        * output_level_loss(
            student.mano_mean[pair_index],
            student.mano_logvar[pair_index],
            teacher.mano_mean,
            teacher.mano_logvar,
            weights.output_level_mode,
        ),
    }


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the weighted terms."""
    if not terms:
        raise ValueError("no loss terms to sum")
    return torch.stack(list(terms.values())).sum()


__all__ = [
    "LossTargets",
    "LossWeights",
    "enhancement_losses",
    "gaussian_heatmaps",
    "supervised_losses",
    "total_loss",
]
