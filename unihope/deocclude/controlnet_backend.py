"""Diffusion de-occlusion: SD-1.5 inpainting UNet + depth ControlNet (+ optional segmentation ControlNet).

HandRefiner-style conditioning (depth hint from the hand rendered alone) with UniHOPE's adaptive control
strength. The denoising loop is ours (diffusers' models, not its pipeline call): the control strength is
a per-row tensor passed as ControlNet's `conditioning_scale`, so every candidate beta of every frame shares
one batched call; each call keeps its own schedulers and inputs (no state on the shared object, safe in
threads); UNet evaluations are counted per frame; and the early-exit search scores x0 previews after
`preview_step` steps and finishes only the best candidates.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    UniPCMultistepScheduler,
)

from unihope.storage.schema import AnnotatedFrame
from unihope.config import ControlNetConfig, DeocclusionConfig

from unihope.seeding import seed_from

from .base import Candidates, Deoccluder
from .hints import composite, depth_hint, segmentation_hint
from .scoring import Scorer

LOGGER = logging.getLogger(__name__)

TEXT_SEQUENCE_LENGTH = 77  # CLIP's token count; used for the zero embeddings of text-encoder-free test models
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pth")  # e.g. HandRefiner's control_sd15_inpaint_depth_hand
PREDICTION_TYPES = ("epsilon", "v_prediction")
# SD-1.5's ControlNet architecture (diffusers ControlNetModel config), for single-file checkpoints
SD15_CONTROLNET_CONFIG = Path(__file__).with_name("sd15_controlnet")  # what the UNet predicts; x0 previews need to know which


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


def load_controlnet(
    value: str, field: str, dtype: torch.dtype, local_files_only: bool, single_file_config: str | None = None
) -> ControlNetModel:
    """One ControlNet from a diffusers folder, a single checkpoint file, or a hub id.

    A single file (original ControlNet-v1 keys `control_model.input_blocks...`, `zero_convs`, `input_hint_block`,
    with or without the `control_model.` prefix; HandRefiner's `control_sd15_inpaint_depth_hand_fp16`) is
    converted by diffusers' `from_single_file` with the architecture of `single_file_config` (a diffusers
    ControlNet folder holding config.json; None: SD-1.5's, shipped with this package), so no hub is needed.

    Raises:
        MissingWeightsError: naming the config field and the path/id tried.
    """
    location, local_only = _location(value, f"controlnet.{field}", local_files_only)
    try:
        if Path(location).is_file():
            config = single_file_config or str(SD15_CONTROLNET_CONFIG)
            if not (Path(config) / "config.json").is_file():
                raise MissingWeightsError(
                    f"deocclusion.controlnet.controlnet_depth_config: no config.json in {config!r}; point it at a "
                    f"diffusers ControlNet folder whose architecture matches {value!r}"
                )
            return ControlNetModel.from_single_file(location, config=config, torch_dtype=dtype, local_files_only=True)
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
    nets = [load_controlnet(cfg.controlnet_depth, "controlnet_depth", dtype, cfg.local_files_only,
                            cfg.controlnet_depth_config)]
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


@dataclass(frozen=True, slots=True)
class WorkingInputs:
    """One frame's diffusion conditioning at the working size, as arrays (shared with the de-occluder training)."""

    image: np.ndarray  # (W, W, 3) uint8 occluded crop (bicubic)
    mask: np.ndarray  # (W, W) bool inpaint mask (nearest)
    depth_hint: np.ndarray  # (W, W, 3) uint8 HandRefiner depth hint (bilinear)


def working_image(image_rgb: np.ndarray, size_px: int) -> np.ndarray:
    """An (S, S, 3) uint8 crop resized to the working size as the models see it (bicubic)."""
    return _resize(image_rgb, size_px, cv2.INTER_CUBIC)


def working_inputs(frame: AnnotatedFrame, mask: np.ndarray, size_px: int) -> WorkingInputs:
    """The crop, inpaint mask and depth hint resized to `size_px`: exactly what the diffusion models see.

    Training (`unihope.train.deoccluder_data`) builds its pairs with this function, so a trained model is
    conditioned at inference as it was in training.
    """
    return WorkingInputs(
        image=working_image(frame.image, size_px),
        mask=_resize(mask.astype(np.uint8) * 255, size_px, cv2.INTER_NEAREST) >= 128,
        depth_hint=_resize(depth_hint(frame.depth_hand), size_px, cv2.INTER_LINEAR),
    )


@dataclass(frozen=True, slots=True)
class _CallInputs:
    """Per-frame diffusion inputs of one call, built fresh in every call and never stored on the de-occluder.

    Every tensor's first axis is the frame; rows (frame, candidate beta) index into them.
    """

    masked_latents: torch.Tensor  # (F, 4, h, w) scaled VAE latents of the crop with the mask blanked
    latent_masks: torch.Tensor  # (F, 1, h, w) inpaint mask at latent size
    hints: tuple[torch.Tensor, ...]  # per ControlNet (F, 3, H, W) in [0, 1]
    noise: torch.Tensor  # (F, 4, h, w) initial noise: one draw per frame, shared by all its candidates


class ControlNetDeoccluder(Deoccluder):
    """ControlNet inpainting of the inpaint mask, conditioned on the rendered hand (see the module docstring).

    Thread safety: the models are only read (eval mode, no hooks); every call builds its own schedulers,
    inputs, strengths and counters, so one de-occluder shared by a worker's task threads gives each call
    what it would get alone.
    """

    name = "controlnet"
    uses_beta = True

    def __init__(self, cfg: DeocclusionConfig, scorer: Scorer | None = None) -> None:
        """Loads the models named in cfg.controlnet (see `load_pipeline` for the errors)."""
        super().__init__(cfg, scorer)
        self.net_cfg = cfg.controlnet
        self.pipe = load_pipeline(cfg.controlnet)
        self.device, self.dtype = resolve_device_dtype(cfg.controlnet)
        self._nets = (
            list(self.pipe.controlnet.nets)
            if isinstance(self.pipe.controlnet, MultiControlNetModel)
            else [self.pipe.controlnet]
        )
        self._num_nets = len(self._nets)
        self._scheduler_config = self.pipe.scheduler.config
        prediction_type = self._scheduler_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"deocclusion.controlnet.base_model: scheduler prediction_type {prediction_type!r} is not supported; "
                f"expected one of {PREDICTION_TYPES}"
            )
        self._prediction_type = prediction_type
        self._vae_scale_factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self._latent_scaling = float(self.pipe.vae.config.scaling_factor)
        self._prompt_embeds, self._negative_embeds = self._encode_prompts()

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance on (as in diffusers: guidance_scale > 1): two UNet rows per sample and step."""
        return self.net_cfg.guidance_scale > 1.0

    def unet_evals_per_frame(self, num_candidates: int) -> int:
        """UNet evaluations (one latent through the UNet once) one generated frame costs with this config.

        Each also runs every ControlNet once. Early exit (`preview_step` k > 0 and more candidates than
        `finish_top` m): C * k + m * (T - k) sample-steps; otherwise C * T; doubled under guidance.
        """
        steps = self.net_cfg.num_inference_steps
        rows_per_sample = 2 if self.uses_guidance else 1
        preview, top = self.net_cfg.preview_step, self.net_cfg.finish_top
        if preview > 0 and num_candidates > top:
            return rows_per_sample * (num_candidates * preview + top * (steps - preview))
        return rows_per_sample * num_candidates * steps

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
        generated = self._diffuse(frames, masks, [np.asarray([beta], np.float32) for beta in betas], preview=False)
        return [images[0] for images, _ in generated]

    def _generate_candidates(
        self, frames: list[AnnotatedFrame], masks: list[np.ndarray], betas: list[np.ndarray]
    ) -> list[Candidates]:
        """Every candidate of every frame in one batched diffusion (with the early-exit search when configured)."""
        generated = self._diffuse(frames, masks, betas, preview=True)
        candidates = []
        for frame, mask, (images, num_evals) in zip(frames, masks, generated):
            composited = [None if image is None else composite(frame.image, image, mask) for image in images]
            candidates.append(Candidates(images=composited, num_unet_evals=num_evals))
        return candidates

    def _prepare(self, frames: list[AnnotatedFrame], masks: list[np.ndarray]) -> _CallInputs:
        """Encode the masked crops, the latent masks, the hints and the per-frame noise of one call."""
        size = self.net_cfg.working_size_px
        latent_size = size // self._vae_scale_factor

        def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
            stacked = np.stack(arrays).astype(np.float32) / 255.0
            if stacked.ndim == 3:
                stacked = stacked[..., None]
            return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(self.device, self.dtype)

        working = [working_inputs(f, m, size) for f, m in zip(frames, masks)]
        images = to_tensor([w.image for w in working]) * 2.0 - 1.0
        mask_images = (to_tensor([w.mask.astype(np.uint8) * 255 for w in working]) >= 0.5).to(self.dtype)
        hints = [to_tensor([w.depth_hint for w in working])]
        if self._num_nets == 2:
            hints.append(to_tensor([_resize(segmentation_hint(f), size, cv2.INTER_NEAREST) for f in frames]))
        # The masked image's latents use the posterior mean (no random draw): the only randomness of a frame
        # is its initial noise, seeded from its sample key.
        masked = images * (mask_images < 0.5)
        masked_latents = self.pipe.vae.encode(masked).latent_dist.mode() * self._latent_scaling
        latent_masks = torch.nn.functional.interpolate(mask_images, size=(latent_size, latent_size))
        noise = torch.cat(
            [
                torch.randn(
                    (1, 4, latent_size, latent_size),
                    generator=torch.Generator(device="cpu").manual_seed(seed_from(self.cfg.seed, f.frame.sample_key)),
                    dtype=torch.float32,
                )
                for f in frames
            ]
        ).to(self.device, self.dtype)
        return _CallInputs(masked_latents=masked_latents, latent_masks=latent_masks, hints=tuple(hints), noise=noise)

    def _new_scheduler(self):  # noqa: ANN202 (a diffusers scheduler)
        """A fresh scheduler for one row: multistep solvers keep per-sample history, so rows never share one."""
        name = self.net_cfg.scheduler
        if name == "ddim" or name == "saved":
            cls = DDIMScheduler if name == "ddim" else type(self.pipe.scheduler)
            scheduler = cls.from_config(self._scheduler_config)
        elif name == "dpmsolver++":
            scheduler = DPMSolverMultistepScheduler.from_config(self._scheduler_config, algorithm_type="dpmsolver++")
        else:
            scheduler = UniPCMultistepScheduler.from_config(self._scheduler_config)
        scheduler.set_timesteps(self.net_cfg.num_inference_steps, device=self.device)
        return scheduler

    def _denoise_step(
        self,
        inputs: _CallInputs,
        rows_frame: torch.Tensor,
        rows_beta: torch.Tensor,
        latents: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """One UNet + ControlNet(s) evaluation of every row; returns the (guided) noise prediction, (R, 4, h, w)."""
        num_rows = latents.shape[0]
        copies = 2 if self.uses_guidance else 1
        model_input = torch.cat([latents] * copies)
        frame_idx = rows_frame.repeat(copies)
        embeds = (
            torch.cat([self._negative_embeds.expand(num_rows, -1, -1), self._prompt_embeds.expand(num_rows, -1, -1)])
            if self.uses_guidance
            else self._prompt_embeds.expand(num_rows, -1, -1)
        )
        # Per-row strength as ControlNetModel's own conditioning_scale: it multiplies the residuals with it.
        scale = rows_beta.repeat(copies).to(self.device, self.dtype).view(-1, 1, 1, 1)
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for net, hint in zip(self._nets, inputs.hints):
            down, mid = net(
                model_input,
                timestep,
                encoder_hidden_states=embeds,
                controlnet_cond=hint[frame_idx],
                conditioning_scale=scale,
                return_dict=False,
            )
            if down_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [total + extra for total, extra in zip(down_total, down)]
                mid_total = mid_total + mid
        unet_input = torch.cat(
            [model_input, inputs.latent_masks[frame_idx], inputs.masked_latents[frame_idx]], dim=1
        )
        prediction = self.pipe.unet(
            unet_input,
            timestep,
            encoder_hidden_states=embeds,
            down_block_additional_residuals=down_total,
            mid_block_additional_residual=mid_total,
            return_dict=False,
        )[0]
        if self.uses_guidance:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + self.net_cfg.guidance_scale * (cond - uncond)
        return prediction

    def _x0(self, scheduler, latents: torch.Tensor, prediction: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """The denoised-latent estimate x0 at `timestep` from the model's prediction (epsilon or v)."""
        alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(latents.device, torch.float32)
        sample, pred = latents.float(), prediction.float()
        if self._prediction_type == "epsilon":
            x0 = (sample - (1 - alpha_bar).sqrt() * pred) / alpha_bar.sqrt()
        else:  # v_prediction
            x0 = alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * pred
        return x0.to(latents.dtype)

    def _decode(self, latents: torch.Tensor, frames: list[AnnotatedFrame]) -> list[np.ndarray]:
        """Latents -> uint8 images at each frame's crop size."""
        decoded = self.pipe.vae.decode(latents / self._latent_scaling, return_dict=False)[0]
        images = ((decoded.float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy()
        generated = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
        return [_resize(image, frame.image.shape[0], cv2.INTER_AREA) for image, frame in zip(generated, frames)]

    def _diffuse(
        self,
        frames: list[AnnotatedFrame],
        masks: list[np.ndarray],
        betas: list[np.ndarray],
        preview: bool,
    ) -> list[tuple[list[np.ndarray | None], int]]:
        """Denoise every (frame, candidate beta) row in one batch; optionally prune rows at `preview_step`.

        Args:
            frames: the frames of the call.
            masks: per frame the (S, S) bool inpaint mask.
            betas: per frame its (C_f,) float32 candidate strengths.
            preview: apply the early-exit search (cfg.controlnet.preview_step > 0).

        Returns:
            per frame (one image or None per candidate, UNet evaluations spent on the frame). None = pruned
            by the early-exit search. Images are (S, S, 3) uint8 at crop size, not yet composited.
        """
        # 1. Check inputs
        flat = np.concatenate([np.asarray(b, np.float32) for b in betas]) if betas else np.zeros(0, np.float32)
        if not np.all(np.isfinite(flat)):
            raise ValueError(f"controlnet backend needs finite betas, got {flat}")
        if not frames:
            return []

        # 2. Rows: every candidate of every frame, one per-row scheduler, the shared inputs
        rows = [(f_idx, c_idx) for f_idx, frame_betas in enumerate(betas) for c_idx in range(len(frame_betas))]
        rows_frame = torch.tensor([f_idx for f_idx, _ in rows], dtype=torch.long, device=self.device)
        rows_beta = torch.tensor([betas[f][c] for f, c in rows], dtype=torch.float32)
        evals = [0] * len(frames)
        rows_per_sample = 2 if self.uses_guidance else 1
        with torch.no_grad():
            inputs = self._prepare(frames, masks)
            schedulers = [self._new_scheduler() for _ in rows]
            latents = inputs.noise[rows_frame] * schedulers[0].init_noise_sigma
            preview_step = self.net_cfg.preview_step if preview else 0

            # 3. Denoise step by step (early exit: score x0 previews at preview_step, keep the best rows)
            for step_idx, timestep in enumerate(schedulers[0].timesteps):
                model_latents = torch.cat(
                    [sched.scale_model_input(latents[r : r + 1], timestep) for r, sched in enumerate(schedulers)]
                )
                prediction = self._denoise_step(inputs, rows_frame, rows_beta, model_latents, timestep)
                for f_idx, _ in rows:
                    evals[f_idx] += rows_per_sample
                if step_idx + 1 == preview_step:
                    keep_rows = self._early_exit(
                        frames, masks, rows, self._x0(schedulers[0], latents, prediction, timestep)
                    )
                    if len(keep_rows) < len(rows):
                        index = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
                        rows = [rows[r] for r in keep_rows]
                        schedulers = [schedulers[r] for r in keep_rows]
                        rows_frame, rows_beta = rows_frame[index], rows_beta[index.cpu()]
                        latents, prediction = latents[index], prediction[index]
                latents = torch.cat(
                    [
                        sched.step(prediction[r : r + 1], timestep, latents[r : r + 1], return_dict=False)[0]
                        for r, sched in enumerate(schedulers)
                    ]
                )

            # 4. Decode the finished rows
            decoded = self._decode(latents, [frames[f_idx] for f_idx, _ in rows])
        out: list[list[np.ndarray | None]] = [[None] * len(frame_betas) for frame_betas in betas]
        for (f_idx, c_idx), image in zip(rows, decoded):
            out[f_idx][c_idx] = image
        return [(images, num) for images, num in zip(out, evals)]

    def _early_exit(
        self,
        frames: list[AnnotatedFrame],
        masks: list[np.ndarray],
        rows: list[tuple[int, int]],
        x0_latents: torch.Tensor,
    ) -> list[int]:
        """Rows to finish: per frame the `finish_top` best candidates by the scorer on their x0 previews."""
        previews = self._decode(x0_latents, [frames[f_idx] for f_idx, _ in rows])
        keep: list[int] = []
        for f_idx, frame in enumerate(frames):
            frame_rows = [r for r, (row_frame, _) in enumerate(rows) if row_frame == f_idx]
            if len(frame_rows) <= self.net_cfg.finish_top:
                keep.extend(frame_rows)
                continue
            images = np.stack([composite(frame.image, previews[r], masks[f_idx]) for r in frame_rows])
            scores = np.asarray(self.scorer.score(frame, masks[f_idx], images), dtype=np.float64)
            order = np.argsort(-scores, kind="stable")[: self.net_cfg.finish_top]  # first of equal scores
            keep.extend(sorted(frame_rows[i] for i in order))
        return sorted(keep)


def _resize(image: np.ndarray, size_px: int, interpolation: int) -> np.ndarray:
    if image.shape[0] == size_px and image.shape[1] == size_px:
        return image
    if interpolation == cv2.INTER_AREA and image.shape[0] < size_px:
        interpolation = cv2.INTER_CUBIC
    return cv2.resize(image, (size_px, size_px), interpolation=interpolation)
