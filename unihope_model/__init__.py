"""UniHOPE network in plain torch: tensors in, typed outputs out (no pipeline imports)."""

from unihope_model.backbone import HFLBackbone
from unihope_model.enhancement import teacher_pass
from unihope_model.fusion import GraspAwareFusion, HandToObjectAttention
from unihope_model.losses import LossTargets, LossWeights, enhancement_losses, supervised_losses, total_loss
from unihope_model.masking import scaled_patch_layout, target_focused_mask
from unihope_model.model import ModelSpec, UniHOPEModel, UniHOPEOutput
from unihope_model.roi_align import roi_align
from unihope_model.switcher import ObjectSwitcher

__all__ = [
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
    "roi_align",
    "scaled_patch_layout",
    "supervised_losses",
    "target_focused_mask",
    "teacher_pass",
    "total_loss",
]
