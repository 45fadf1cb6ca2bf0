"""Training losses: supervised hand/object/grasp terms and the three enhancement terms, weighted.

Units (why the upstream weights carry over): 3D joints and vertices are wrist-relative metres with
a mean squared error, so weight 1e4 turns a 1 cm error into 1; MANO pose in radians (MSE), betas
unitless (MSE); heatmaps are Gaussians with peak 1 (MSE); object keypoints in box-normalised units
(L1, the object box's side = 1, as upstream normalises its 2D control points).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torch import nn

from unihope.model.enhancement import (
    ENHANCEMENT_FORMS,
    image_level_loss,
    l1_distillation,
    occlusion_attention,
    output_level_loss,
    token_level_loss,
)
from unihope.model.model import UniHOPEOutput
from unihope.model.roi_align import roi_align, roi_px_to_box

HEATMAP_SIGMA_FRACTION = 1.0 / 16  # Gaussian sigma as a fraction of the hand box (2 bins at R = 32)
MIN_HEATMAP_SIGMA_BINS = 0.75
CONFIDENCE_SHARPNESS = 10.0  # target confidence = exp(-k * vote error in box units)
OBJECT_MASK_CELL_THRESHOLD = 0.5  # an object RoI cell counts as object when half its area is visible object
HAND_TERMS = ("joints3d", "verts3d", "mano_pose", "mano_shape", "mano_variance", "joints2d")


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
    enhance_form: str = "upstream"  # "upstream" (UniHOPE's code: L1 on raw tensors) | "paper" (its text)
    output_level_mode: str = "kl"  # the paper form's output level: "kl" (paper) | "l1"
    object_vote_mask: bool = True  # upstream: object votes are scored only on object cells

    def __post_init__(self) -> None:
        if self.enhance_form not in ENHANCEMENT_FORMS:
            raise ValueError(f"enhance_form must be one of {ENHANCEMENT_FORMS}, got {self.enhance_form!r}")


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
    mask_object: torch.Tensor | None = None  # (B, S_in, S_in) float visible object pixels (gates the votes)


def target_rows(targets: LossTargets, index: torch.Tensor) -> LossTargets:
    """The targets of batch rows `index` (the de-occluded half of a pair has its occluded image's labels)."""
    return LossTargets(**{
        f.name: (None if getattr(targets, f.name) is None else getattr(targets, f.name)[index])
        for f in dataclasses.fields(LossTargets)
    })


def gaussian_heatmaps(points_box: torch.Tensor, size: int) -> torch.Tensor:
    """(B, J, 2) box-normalised points -> (B, J, R, R) Gaussians with peak 1 at each point."""
    sigma = max(MIN_HEATMAP_SIGMA_BINS, HEATMAP_SIGMA_FRACTION * size)
    centres = torch.arange(size, dtype=points_box.dtype, device=points_box.device)
    pts = points_box * size - 0.5  # bin coordinates
    dx = (centres[None, None, None, :] - pts[..., 0, None, None]) ** 2
    dy = (centres[None, None, :, None] - pts[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2 * sigma * sigma))


def hand_losses_per_sample(out: UniHOPEOutput, targets: LossTargets, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Weighted hand terms per sample (each (B,)): the batch mean of one equals its F.mse_loss over the batch."""
    def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).pow(2).flatten(1).mean(dim=1)

    gt_params = torch.cat([targets.mano_pose, targets.mano_betas], dim=1)
    sq_err = (out.mano_mean.detach() - gt_params).pow(2)
    # Targets in box units of the boxes the model pooled and decodes with (out.*_boxes_xyxy_px), never the
    # raw input boxes: then a perfectly learned target decodes back to itself whatever the box.
    joints_box = roi_px_to_box(out.hand_boxes_xyxy_px, targets.joints_2d_px)
    return {
        "joints3d": weights.joints3d * mse(out.joints_rel_m, targets.joints_rel_m),
        "verts3d": weights.verts3d * mse(out.verts_rel_m, targets.verts_rel_m),
        "mano_pose": weights.mano_pose * mse(out.mano_pose, targets.mano_pose),
        "mano_shape": weights.mano_shape * mse(out.mano_betas, targets.mano_betas),
        "mano_variance": weights.mano_variance * 0.5
        * (out.mano_logvar + sq_err * torch.exp(-out.mano_logvar)).flatten(1).mean(dim=1),
        "joints2d": weights.joints2d * mse(out.heatmaps, gaussian_heatmaps(joints_box, out.heatmaps.shape[-1])),
    }


def _object_cell_weights(out: UniHOPEOutput, mask_object: torch.Tensor, grasping: torch.Tensor) -> torch.Tensor:
    """(G, 1, R, R) 1 on object RoI cells (visible object mask pooled on the object box), 0 elsewhere;
    all ones for a sample whose box holds no object cell (its votes would otherwise go unsupervised)."""
    size = out.object_votes_box.shape[2]
    pooled = roi_align(mask_object[grasping][:, None].float(), out.object_boxes_xyxy_px[grasping], size, 1.0)
    cells = (pooled > OBJECT_MASK_CELL_THRESHOLD).float()
    empty = cells.flatten(1).sum(dim=1) == 0
    return torch.where(empty[:, None, None, None], torch.ones_like(cells), cells)


def supervised_losses(
    out: UniHOPEOutput, targets: LossTargets, weights: LossWeights, hand_sample_weights: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Weighted supervised terms. Object terms use grasping samples only (the object branch is off otherwise).

    Args:
        out: the model's outputs on the batch.
        targets: its targets.
        weights: loss weights.
        hand_sample_weights: (B,) per-sample weights of the hand terms (sum / B); None = all 1 (the mean).
            A paired sample's occluded image gets 0.5 when its de-occluded image carries the other half.

    Returns:
        {term name: weighted scalar}.
    """
    per_sample = hand_losses_per_sample(out, targets, weights)
    if hand_sample_weights is None:
        terms = {name: values.mean() for name, values in per_sample.items()}
    else:
        terms = {name: (values * hand_sample_weights).sum() / len(values) for name, values in per_sample.items()}

    grasping = targets.grasp == 1
    if bool(grasping.any()):
        kp_box = roi_px_to_box(out.object_boxes_xyxy_px, targets.object_keypoints_2d_px)[grasping]  # (G, 21, 2)
        votes = out.object_votes_box[grasping]  # (G, 21, R, R, 2)
        vote_err = (votes - kp_box[:, :, None, None, :]).abs()
        if weights.object_vote_mask and targets.mask_object is not None:
            cells = _object_cell_weights(out, targets.mask_object, grasping)[..., None]  # (G, 1, R, R, 1)
            vote_term = (vote_err * cells).sum(dim=(1, 2, 3, 4)) / (cells.sum(dim=(1, 2, 3, 4)) * vote_err.shape[1] * 2)
            vote_term = vote_term.mean()
        else:
            vote_term = vote_err.mean()
        terms["object_keypoints"] = weights.object_keypoints * (
            vote_term + (out.object_keypoints_box[grasping] - kp_box).abs().mean()
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
    mapper: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Image-, token- and output-level self-distillation on the samples that have a de-occluded pair.

    Args:
        student: outputs on the occluded images of the whole batch.
        teacher: outputs on the de-occluded images of the paired samples (detached here).
        pair_index: (P,) long, which batch entries the teacher rows belong to (P may be 0).
        mask_hand, mask_object: (P, S, S) float masks of the paired samples (the paper form's attention).
        weights: loss weights; `enhance_form` picks the form.
        mapper: the student-side mapper of the upstream output level (`UniHOPEModel.enhancement_mapper`).

    Returns:
        {"enhance_image", "enhance_token", "enhance_output": weighted scalars}; with no pair, zeros that
        keep the graph (mapper included) connected.
    """
    # 1. Check inputs
    if weights.enhance_form == "upstream" and mapper is None:
        raise ValueError("the upstream enhancement form needs the model's enhancement_mapper")
    if len(pair_index) == 0:
        zero = student.hand_encoding.sum() * 0.0
        if mapper is not None:
            zero = zero + mapper(student.hand_encoding[:1]).sum() * 0.0
        return {"enhance_image": zero, "enhance_token": zero, "enhance_output": zero}

    # 2. Upstream code: L1 on raw tensors (stage-2 map, RoI features before fusion, mapped encoding)
    if weights.enhance_form == "upstream":
        return {
            "enhance_image": weights.enhance_image * l1_distillation(student.layer2_hand[pair_index], teacher.layer2_hand),
            "enhance_token": weights.enhance_token
            * l1_distillation(student.hand_roi_features[pair_index], teacher.hand_roi_features),
            "enhance_output": weights.enhance_output
            * l1_distillation(mapper(student.hand_encoding[pair_index]), teacher.hand_encoding),
        }

    # 3. Paper text: attention-weighted MSE, token cosine, KL on the MANO distributions
    layer2 = student.layer2_hand[pair_index]
    attention = occlusion_attention(mask_hand, mask_object, layer2.shape[-2:])
    terms = {
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
    if mapper is not None:  # unused by this form; a zero keeps every parameter in the graph
        terms["enhance_output"] = terms["enhance_output"] + mapper(student.hand_encoding[:1]).sum() * 0.0
    return terms


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the weighted terms."""
    if not terms:
        raise ValueError("no loss terms to sum")
    return torch.stack(list(terms.values())).sum()


__all__ = [
    "HAND_TERMS",
    "LossTargets",
    "LossWeights",
    "enhancement_losses",
    "gaussian_heatmaps",
    "hand_losses_per_sample",
    "supervised_losses",
    "target_rows",
    "total_loss",
]
