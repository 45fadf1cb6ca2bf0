"""Diffusion de-occlusion: SD-1.5 inpainting UNet + depth ControlNet (+ optional segmentation ControlNet).

HandRefiner-style conditioning (depth hint from the hand rendered alone) with UniHOPE's adaptive control
strength. The control strength is applied per sample (a forward hook scales each ControlNet's residuals by
that sample's beta), so frames with different betas share one pipeline call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
)

from storage.schema import AnnotatedFrame
from unihope.config import ControlNetConfig, DeocclusionConfig

from .base import Deoccluder, sample_seed
from .hints import depth_hint, segmentation_hint
from .scoring import Scorer

LOGGER = logging.getLogger(__name__)

TEXT_SEQUENCE_LENGTH = 77  # CLIP's token count; used for the zero embeddings of text-encoder-free test models
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pth")  # e.g. HandRefiner's control_sd15_inpaint_depth_hand


class MissingWeightsError(FileNotFoundError):
    """Diffusion weights named in the config could not be found or loaded."""


def resolve_device_dtype(cfg: ControlNetConfig) -> tuple[torch.device, torch.dtype]:
    """`auto` -> cuda if available else cpu; dtype `auto` -> fp16 on GPU, fp32 on CPU.

    Raises:
        ValueError: on fp16 on the CPU (slow and numerically poor there) or a cuda device without CUDA.
    """
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"deocclusion.controlnet.device={cfg.device!r} but this machine has no CUDA device")
    if cfg.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = torch.float16 if cfg.dtype == "float16" else torch.float32
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("deocclusion.controlnet.dtype='float16' needs a GPU; use 'float32' or 'auto' on the CPU")
    return device, dtype


def _location(value: str, field: str, local_files_only: bool) -> tuple[str, bool]:
    """Validate a local path early; return (path or hub id, local_files_only to use)."""
    path = Path(value).expanduser()
    if path.exists():
        return str(path), True
    looks_local = value.startswith((".", "/", "~")) or path.suffix in SINGLE_FILE_SUFFIXES or value.count("/") > 1
    if looks_local:
        raise MissingWeightsError(
            f"deocclusion.{field}: no such file or folder {str(path)!r}; point it at a diffusers model folder "
            f"(or a hub id such as 'lllyasviel/control_v11f1p_sd15_depth' already in the local Hugging Face cache)"
        )
    return value, local_files_only


def _missing(field: str, value: str, err: Exception) -> MissingWeightsError:
    return MissingWeightsError(
        f"deocclusion.{field}: could not load {value!r} ({type(err).__name__}: {err}). This machine may have no "
        f"network: download the model on a machine that has one (e.g. `huggingface-cli download {value} "
        f"--local-dir DIR`), copy it here and set deocclusion.{field}=DIR, or set "
        f"deocclusion.backend=render for the weight-free de-occluder."
    )


def _absent_text_components(location: str) -> dict[str, None]:
    """`text_encoder` / `tokenizer` = None for a local folder saved without them (diffusers would refuse it).

    Such folders are the tiny test models; a real SD-1.5 folder has both and gets an empty dict.
    """
    index_path = Path(location) / "model_index.json"
    if not index_path.is_file():
        return {}
    index = json.loads(index_path.read_text())
    return {
        name: None
        for name in ("text_encoder", "tokenizer")
        if name not in index or index[name] is None or index[name] == [None, None]
    }


def load_controlnet(value: str, field: str, dtype: torch.dtype, local_files_only: bool) -> ControlNetModel:
    """One ControlNet from a diffusers folder, a single checkpoint file, or a hub id.

    Raises:
        MissingWeightsError: naming the config field and the path/id tried.
    """
    location, local_only = _location(value, f"controlnet.{field}", local_files_only)
    try:
        if Path(location).is_file():
            return ControlNetModel.from_single_file(location, torch_dtype=dtype, local_files_only=True)
        return ControlNetModel.from_pretrained(location, torch_dtype=dtype, local_files_only=local_only)
    except OSError as err:  # diffusers turns a missing file, folder or hub entry into an OSError
        raise _missing(f"controlnet.{field}", value, err) from err


def load_pipeline(cfg: ControlNetConfig) -> StableDiffusionControlNetInpaintPipeline:
    """The inpainting pipeline with its ControlNet(s), on the configured device and dtype, in eval mode.

    Args:
        cfg: model locations and inference settings.

    Returns:
        The pipeline (progress bar off).

    Raises:
        MissingWeightsError: when a model cannot be found (the message names the config field and value).
        ValueError: when the base UNet is not a 9-channel inpainting UNet.
    """
    # 1. Check inputs
    device, dtype = resolve_device_dtype(cfg)

    # 2. Load the ControlNet(s)
    nets = [load_controlnet(cfg.controlnet_depth, "controlnet_depth", dtype, cfg.local_files_only)]
    if cfg.controlnet_segmentation is not None:
        nets.append(load_controlnet(cfg.controlnet_segmentation, "controlnet_segmentation", dtype, cfg.local_files_only))
    controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)

    # 3. Load the base inpainting model around them
    location, local_only = _location(cfg.base_model, "controlnet.base_model", cfg.local_files_only)
    try:
        pipe = StableDiffusionControlNetInpaintPipeline.from_pretrained(
            location,
            controlnet=controlnet,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
            torch_dtype=dtype,
            local_files_only=local_only,
            **_absent_text_components(location),
        )
    except OSError as err:
        raise _missing("controlnet.base_model", cfg.base_model, err) from err
    if pipe.unet.config.in_channels != 9:
        raise ValueError(
            f"deocclusion.controlnet.base_model={cfg.base_model!r} has a {pipe.unet.config.in_channels}-channel "
            f"UNet; de-occlusion needs an inpainting UNet (9 channels), e.g. runwayml/stable-diffusion-inpainting"
        )

    # 4. Scheduler, device, eval mode
    if cfg.scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.controlnet, pipe.text_encoder):
        if module is not None:
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _PerSampleScale:
    """Forward hook scaling a ControlNet's residuals by one strength per sample (beta of that frame).

    The pipeline runs the ControlNet on [uncond; cond] (2B) under classifier-free guidance, or on B samples;
    the per-sample scales are tiled to the batch the ControlNet actually sees.
    """

    def __init__(self) -> None:
        self.scales: torch.Tensor | None = None  # (B,)

    def __call__(self, module, args, kwargs, output):  # noqa: ANN001 (torch hook signature)
        if self.scales is None:
            return output
        down, mid = (output.down_block_res_samples, output.mid_block_res_sample) if hasattr(output, "mid_block_res_sample") else output
        repeats = mid.shape[0] // self.scales.shape[0]
        scale = self.scales.to(device=mid.device, dtype=mid.dtype).repeat(repeats).view(-1, 1, 1, 1)
        down = [sample * scale for sample in down]
        mid = mid * scale
        if hasattr(output, "mid_block_res_sample"):
            return type(output)(down_block_res_samples=down, mid_block_res_sample=mid)
        return down, mid


class ControlNetDeoccluder(Deoccluder):
    """ControlNet inpainting of the inpaint mask, conditioned on the rendered hand (see the module docstring)."""

    name = "controlnet"
    uses_beta = True

    def __init__(self, cfg: DeocclusionConfig, scorer: Scorer | None = None) -> None:
        """Loads the models named in cfg.controlnet (see `load_pipeline` for the errors)."""
        super().__init__(cfg, scorer)
        self.net_cfg = cfg.controlnet
        self.pipe = load_pipeline(cfg.controlnet)
        self.device, self.dtype = resolve_device_dtype(cfg.controlnet)
        self._scale_hook = _PerSampleScale()
        nets = self.pipe.controlnet.nets if isinstance(self.pipe.controlnet, MultiControlNetModel) else [self.pipe.controlnet]
        self._num_nets = len(nets)
        for net in nets:
            net.register_forward_hook(self._scale_hook, with_kwargs=True)
        self._prompt_embeds, self._negative_embeds = self._encode_prompts()

    def _encode_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, D) prompt and negative embeddings, computed once.

        Models without a text encoder (the tiny test models) get zero embeddings: the prompt has no effect there.
        """
        pipe = self.pipe
        if pipe.text_encoder is None or pipe.tokenizer is None:
            LOGGER.warning("deocclusion: base model has no text encoder; prompts are replaced by zero embeddings")
            shape = (1, TEXT_SEQUENCE_LENGTH, pipe.unet.config.cross_attention_dim)
            zeros = torch.zeros(shape, device=self.device, dtype=self.dtype)
            return zeros, zeros.clone()
        with torch.no_grad():
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                self.net_cfg.prompt,
                self.device,
                1,
                True,
                negative_prompt=self.net_cfg.negative_prompt,
            )
        return prompt_embeds, negative_embeds

    def _generate(
        self, frames: list[AnnotatedFrame], masks: list[np.ndarray], betas: np.ndarray
    ) -> list[np.ndarray]:
        # 1. Check inputs
        if not np.all(np.isfinite(betas)):
            raise ValueError(f"controlnet backend needs finite betas, got {betas}")
        size = self.net_cfg.working_size_px
        num = len(frames)

        # 2. Image, mask and control hints at the working size, as (B, C, H, W) tensors in [0, 1]
        def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
            stacked = np.stack(arrays).astype(np.float32) / 255.0
            if stacked.ndim == 3:
                stacked = stacked[..., None]
            return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()

        images = to_tensor([_resize(f.image, size, cv2.INTER_CUBIC) for f in frames])
        mask_images = to_tensor([_resize(m.astype(np.uint8) * 255, size, cv2.INTER_NEAREST) for m in masks])
        depth_hints = to_tensor([_resize(depth_hint(f.depth_hand), size, cv2.INTER_LINEAR) for f in frames])
        control: torch.Tensor | list[torch.Tensor] = depth_hints
        if self._num_nets == 2:
            seg_hints = to_tensor([_resize(segmentation_hint(f), size, cv2.INTER_NEAREST) for f in frames])
            control = [depth_hints, seg_hints]

        # 3. Per-frame generators (seeded from the sample key) and per-frame strengths
        generators = [
            torch.Generator(device="cpu").manual_seed(sample_seed(f.frame.sample_key, self.cfg.seed)) for f in frames
        ]
        self._scale_hook.scales = torch.as_tensor(betas, dtype=torch.float32)

        # 4. Run the pipeline
        try:
            with torch.no_grad():
                output = self.pipe(
                    image=images,
                    mask_image=mask_images,
                    control_image=control,
                    height=size,
                    width=size,
                    num_inference_steps=self.net_cfg.num_inference_steps,
                    guidance_scale=self.net_cfg.guidance_scale,
                    prompt_embeds=self._prompt_embeds.repeat(num, 1, 1),
                    negative_prompt_embeds=self._negative_embeds.repeat(num, 1, 1),
                    generator=generators,
                    controlnet_conditioning_scale=1.0 if self._num_nets == 1 else [1.0] * self._num_nets,
                    output_type="np",
                )
        finally:
            self._scale_hook.scales = None

        # 5. Back to crop size, uint8
        generated = np.clip(np.rint(output.images * 255.0), 0, 255).astype(np.uint8)
        return [_resize(image, frame.image.shape[0], cv2.INTER_AREA) for image, frame in zip(generated, frames)]


def _resize(image: np.ndarray, size_px: int, interpolation: int) -> np.ndarray:
    if image.shape[0] == size_px and image.shape[1] == size_px:
        return image
    if interpolation == cv2.INTER_AREA and image.shape[0] < size_px:
        interpolation = cv2.INTER_CUBIC
    return cv2.resize(image, (size_px, size_px), interpolation=interpolation)
