"""Multi-level feature enhancement (UniHOPE): self-distillation from the de-occluded image of a pair.

Two forms. `upstream` (UniHOPE's released loss code, the default): L1 on raw tensors between the
occluded (student) and de-occluded (teacher) passes at three levels (hand stage-2 output map, RoI hand
features before fusion, the hand encoding through a learnable student-side mapper). `paper` (the
paper's text): an attention-weighted MSE on stage 2, 1 - cosine on the fused tokens, KL between the
MANO parameter distributions. In both the teacher side is detached: gradients reach the student alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

OCCLUDED_REGION_BOOST = 1.0  # extra attention weight of occluded hand pixels over visible ones
OUTPUT_LEVEL_MODES = ("kl", "l1")
ENHANCEMENT_FORMS = ("upstream", "paper")


def l1_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """UniHOPE's code: |student - teacher| averaged over the non-batch dims, then over the samples; teacher detached.

    Args:
        student: (N, ...) with gradient.
        teacher: (N, ...) the same shape (detached here).

    Returns:
        Scalar (0 with no graph when N = 0 is the caller's to avoid).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must match")
    return (student - teacher.detach()).abs().flatten(1).mean(dim=1).mean()


@contextlib.contextmanager
def frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Run BatchNorm layers on batch statistics without updating their running averages.

    The teacher pass sees de-occluded images only; letting it move the running statistics would
    make evaluation depend on how many pairs a batch happened to hold.
    """
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved.append((module, module.momentum))
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum


def occlusion_attention(mask_hand: torch.Tensor, mask_object: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Spatial attention over the hand region at feature resolution, boosted where the object hides the hand.

    Args:
        mask_hand: (B, S, S) float full hand silhouette (hand rendered alone).
        mask_object: (B, S, S) float visible object pixels.
        size_hw: (h, w) of the feature map.

    Returns:
        (B, 1, h, w) non-negative weights (area-averaged masks; 0 outside the hand).
    """
    hand = F.adaptive_avg_pool2d(mask_hand[:, None].float(), size_hw)
    occluded = F.adaptive_avg_pool2d((mask_hand * mask_object)[:, None].float(), size_hw)
    return hand + OCCLUDED_REGION_BOOST * occluded


def image_level_loss(
    features_occluded: torch.Tensor, features_deoccluded: torch.Tensor, attention: torch.Tensor
) -> torch.Tensor:
    """Pull the occluded image's layer-2 hand features toward the de-occluded ones inside the hand region.

    Equivalent to regressing the occluded features onto an attention blend that replaces the
    hand region with the de-occluded image's features and keeps the rest.

    Args:
        features_occluded: (B, C, h, w) student features (with gradient).
        features_deoccluded: (B, C, h, w) teacher features (detached here).
        attention: (B, 1, h, w) weights from `occlusion_attention`.

    Returns:
        Scalar: attention-weighted mean squared difference (0 when no weight).
    """
    sq = (features_occluded - features_deoccluded.detach()).pow(2).mean(dim=1, keepdim=True)
    return (attention * sq).sum() / attention.sum().clamp_min(1e-6)


def token_level_loss(tokens_occluded: torch.Tensor, tokens_deoccluded: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between matching RoI hand tokens (B, N, C), averaged; teacher detached."""
    cos = F.cosine_similarity(tokens_occluded, tokens_deoccluded.detach(), dim=-1)
    return (1.0 - cos).mean()


def output_level_loss(
    mean_occluded: torch.Tensor,
    logvar_occluded: torch.Tensor,
    mean_deoccluded: torch.Tensor,
    logvar_deoccluded: torch.Tensor,
    mode: str = "kl",
) -> torch.Tensor:
    """KL(teacher || student) between diagonal Gaussians over MANO parameters, or L1 between means.

    Args:
        mean_occluded, logvar_occluded: (B, P) student distribution.
        mean_deoccluded, logvar_deoccluded: (B, P) teacher distribution (detached here).
        mode: "kl" (UniHOPE paper) or "l1" (UniHOPE code).

    Returns:
        Scalar, averaged over the batch and the P parameters.
    """
    if mode not in OUTPUT_LEVEL_MODES:
        raise ValueError(f"output-level mode must be one of {OUTPUT_LEVEL_MODES}, got {mode!r}")
    mean_t, logvar_t = mean_deoccluded.detach(), logvar_deoccluded.detach()
    if mode == "l1":
        return (mean_occluded - mean_t).abs().mean()
    var_ratio = torch.exp(logvar_t - logvar_occluded)
    kl = 0.5 * (logvar_occluded - logvar_t + var_ratio + (mean_t - mean_occluded).pow(2) / logvar_occluded.exp() - 1.0)
    return kl.mean()


def teacher_pass(model: nn.Module, *args, **kwargs):
    """Run `model` on the de-occluded inputs without gradients and without touching BN running statistics."""
    with torch.no_grad(), frozen_norm_statistics(model):
        return model(*args, **kwargs)
