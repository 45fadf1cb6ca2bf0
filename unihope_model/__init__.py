"""UniHOPE network in plain torch: tensors in, typed outputs out (no pipeline imports)."""

from unihope.model.backbone import HFLBackbone
from unihope.model.enhancement import teacher_pass
from unihope.model.fusion import GraspAwareFusion, HandToObjectAttention
from unihope.model.losses import (
    HAND_TERMS,
    LossTargets,
    LossWeights,
    enhancement_losses,
    hand_losses_per_sample,
    supervised_losses,
    target_rows,
    total_loss,
)
from unihope.model.masking import scaled_patch_layout, target_focused_mask
from unihope.model.model import ModelSpec, UniHOPEModel, UniHOPEOutput, select_rows
from unihope.model.roi_align import roi_align
from unihope.model.switcher import ObjectSwitcher

__all__ = [
    "HAND_TERMS",
    "GraspAwareFusion",
    "HFLBackbone",
    "HandToObjectAttention",
    "LossTargets",
    "LossWeights",
    "ModelSpec",
    "ObjectSwitcher",
    "UniHOPEModel",
    "UniHOPEOutput",
    "enhancement_losses",
    "hand_losses_per_sample",
    "roi_align",
    "scaled_patch_layout",
    "select_rows",
    "supervised_losses",
    "target_rows",
    "target_focused_mask",
    "teacher_pass",
    "total_loss",
]
