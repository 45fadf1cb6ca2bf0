"""Real-size SD-1.5 inpainting UNet, depth ControlNet and VAE with random weights, built from published configs.

The cost of a denoising step does not depend on the weights, only on the architecture: these modules have the
exact layer shapes of the published models, so their timings are the real models' timings. Values copied from
the published `config.json` files (facts, not code):

- UNet: `runwayml/stable-diffusion-inpainting` unet/config.json (9 input channels: latents, mask, masked latents);
- ControlNet: `lllyasviel/control_v11f1p_sd15_depth` config.json (HandRefiner fine-tunes this architecture);
- VAE: the SD-1.5 `vae/config.json` (8x downsampling, 4 latent channels).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

SD15_BLOCKS = (320, 640, 1280, 1280)
SD15_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
CLIP_TOKENS = 77
CLIP_DIM = 768
VAE_SCALE_FACTOR = 8
LATENT_CHANNELS = 4

SD15_INPAINT_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=SD15_BLOCKS,
    center_input_sample=False,
    cross_attention_dim=CLIP_DIM,
    down_block_types=SD15_DOWN,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=9,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=SD15_UP,
)

SD15_DEPTH_CONTROLNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=SD15_BLOCKS,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
    controlnet_conditioning_channel_order="rgb",
    cross_attention_dim=CLIP_DIM,
    down_block_types=SD15_DOWN,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    only_cross_attention=False,
    use_linear_projection=False,
)

SD15_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    in_channels=3,
    latent_channels=LATENT_CHANNELS,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=512,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)


def build_models(dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """(unet, controlnet, vae) with random weights, eval mode, on `device` in `dtype`."""
    torch.manual_seed(seed)  # diffusers initialises from the global RNG; benchmark only
    unet = UNet2DConditionModel(**SD15_INPAINT_UNET)
    controlnet = ControlNetModel(**SD15_DEPTH_CONTROLNET)
    vae = AutoencoderKL(**SD15_VAE)
    return tuple(module.to(device=device, dtype=dtype).eval() for module in (unet, controlnet, vae))


def step_inputs(batch_rows: int, size_px: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Random inputs of one denoising step for `batch_rows` latents (2 per sample under guidance)."""
    latent = size_px // VAE_SCALE_FACTOR
    generator = torch.Generator(device="cpu").manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    return {
        "latents": randn(batch_rows, LATENT_CHANNELS, latent, latent),
        "mask": randn(batch_rows, 1, latent, latent),
        "masked_latents": randn(batch_rows, LATENT_CHANNELS, latent, latent),
        "hint": randn(batch_rows, 3, size_px, size_px),
        "embeds": randn(batch_rows, CLIP_TOKENS, CLIP_DIM),
        "scale": torch.full((batch_rows, 1, 1, 1), 0.6, device=device, dtype=dtype),
    }


def denoising_step(unet, controlnet, inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    """One ControlNet + UNet evaluation of every row, as the de-occluder runs it."""
    timestep = torch.tensor(500, device=inputs["latents"].device)
    down, mid = controlnet(
        inputs["latents"], timestep, encoder_hidden_states=inputs["embeds"], controlnet_cond=inputs["hint"],
        conditioning_scale=inputs["scale"], return_dict=False,
    )
    unet_input = torch.cat([inputs["latents"], inputs["mask"], inputs["masked_latents"]], dim=1)
    return unet(
        unet_input, timestep, encoder_hidden_states=inputs["embeds"], down_block_additional_residuals=down,
        mid_block_additional_residual=mid, return_dict=False,
    )[0]
