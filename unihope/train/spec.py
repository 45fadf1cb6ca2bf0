"""Training config -> model: the ModelSpec, loss weights, device, seeded model and hand layer."""

from __future__ import annotations

import torch
from torch import nn

from unihope.config import HandModelConfig
from unihope.model import LossWeights, ModelSpec, UniHOPEModel
from unihope.train_config import TrainConfig


def model_spec(cfg: TrainConfig) -> ModelSpec:
    """The pure-torch ModelSpec for a TrainConfig (ablation switches included)."""
    m, a = cfg.model, cfg.ablation
    return ModelSpec(
        depth=m.depth, width_multiplier=m.width_multiplier, norm=m.norm, fpn_channels=m.fpn_channels,
        roi_size=m.roi_size, roi_sampling_ratio=m.roi_sampling_ratio, num_heads=m.num_heads,
        transformer_depth=m.transformer_depth, mano_hidden=tuple(m.mano_hidden),
        num_hand_res_blocks=m.num_hand_res_blocks, switcher_channels=m.switcher_channels,
        switcher_hidden=m.switcher_hidden, use_switcher=a.use_switcher,
        fusion=a.fusion_mode if a.use_fusion else "ungated", detach_cross_stream=m.detach_cross_stream,
    )  # fmt: skip


def loss_weights(cfg: TrainConfig) -> LossWeights:
    """Loss weights: LossConfig's fields by name, plus the enhancement weights (zero with the pairs off)."""
    e = cfg.enhancement
    on = 1.0 if cfg.ablation.use_enhancement else 0.0
    return LossWeights(
        **cfg.loss.model_dump(), enhance_image=on * e.image_weight, enhance_token=on * e.token_weight,
        enhance_output=on * e.output_weight, enhance_form=e.form, output_level_mode=e.output_mode,
    )


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
