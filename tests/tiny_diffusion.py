"""A tiny SD-1.5-style inpainting model + depth ControlNet built from configs, saved as a user's folders would be.

Shapes follow diffusers' own ControlNet-inpaint tests (32/64 channels, cross-attention 32, latent 32 for a
64 px image). A fresh ControlNet's output convolutions are zero (they ignore the control image), so they are
randomised here; otherwise beta could not change anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)

CROSS_ATTENTION_DIM = 32
CONTROL_INIT_STD = 0.5  # std of the randomised zero convolutions: large enough that beta visibly matters


def _randomise_zero_convs(controlnet: ControlNetModel, generator: torch.Generator) -> None:
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * CONTROL_INIT_STD)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * CONTROL_INIT_STD)


def tiny_controlnet(seed: int) -> ControlNetModel:
    """A ControlNet matching the tiny UNet, its zero convolutions randomised."""
    torch.manual_seed(seed)  # diffusers initialises module weights from the global RNG; tests only
    controlnet = ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        conditioning_embedding_out_channels=(16, 32),
    )
    _randomise_zero_convs(controlnet, torch.Generator().manual_seed(seed + 1))
    return controlnet.eval()


def tiny_inpaint_pipeline(seed: int) -> StableDiffusionInpaintPipeline:
    """UNet (9 input channels) + tiny VAE + DDIM, no text encoder, no safety checker."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
    ).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def save_tiny_models(root: Path, seed: int = 0, with_segmentation: bool = False) -> dict[str, Path]:
    """Write `base/`, `controlnet_depth/` (and `controlnet_seg/`) under root, as from_pretrained folders.

    Returns:
        {"base_model": ..., "controlnet_depth": ..., ["controlnet_segmentation": ...]} folder paths.
    """
    paths = {"base_model": root / "base", "controlnet_depth": root / "controlnet_depth"}
    tiny_inpaint_pipeline(seed).save_pretrained(paths["base_model"])
    tiny_controlnet(seed + 10).save_pretrained(paths["controlnet_depth"])
    if with_segmentation:
        paths["controlnet_segmentation"] = root / "controlnet_seg"
        tiny_controlnet(seed + 20).save_pretrained(paths["controlnet_segmentation"])
    return paths
