"""De-occluder training: fine-tune a depth ControlNet (and, for tiny models, the inpainting UNet) on synthetic pairs.

    result = train_deoccluder(load_deoccluder_config("configs/deoccluder_tiny.yaml"), Path("runs/deocc"))
    print(" ".join(f"--set {o}" for o in result.build_overrides))

Follows the conventions of diffusers' ControlNet training example: a DDPM noise scheduler adds noise to the
latents of the target (here the true object-free crop), the ControlNet reads the noisy latents and the hint,
its residuals go into the UNet, and the loss is the MSE to the noise; `accelerate` runs it (mixed precision,
gradient accumulation), an optional EMA of the trained weights is what gets saved, and every checkpoint is a
set of `save_pretrained` folders. Conditioning is the build's own (`deoccluder_data`): the inpainting UNet
sees the masked occluded crop and the inpaint mask, the ControlNet the HandRefiner depth hint.

The output folder loads with `deocclusion.backend: controlnet` (`--set` options in `DIR/README.md`):

    DIR/base/          the inpainting pipeline (tiny models: trained VAE + UNet; SD-1.5: only when the UNet trained)
    DIR/controlnet/    the trained ControlNet (the EMA weights when train.ema)
    DIR/checkpoints/step-N/   the same folders at step N (step-0: before training, the untrained floor)
    DIR/training.json  dataset version, config, loss curve, wall time, the build options
    DIR/README.md      the `--set` options for `unihope build`
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unihope.config import PipelineConfig, load_yaml_model
from unihope.overrides import apply_overrides

from .deoccluder_config import DeoccluderTrainConfig
from .deoccluder_data import PairArrays, dataset_version, is_trainable, make_pairs, split_heldout, synthetic_frames

TEXT_SEQUENCE_LENGTH = 77  # CLIP's token count (zero embeddings for the tiny, text-encoder-free models)
BETA_START, BETA_END = 0.00085, 0.012  # SD-1.5's scaled_linear noise schedule
TRAINING_RECORD = "training.json"
BASE_DIR, CONTROLNET_DIR, CHECKPOINTS_DIR = "base", "controlnet", "checkpoints"
SD15_HINT_CHANNELS = (16, 32, 96, 256)  # the ControlNet hint embedding of SD-1.5 (and HandRefiner)
KL_WEIGHT = 1e-6  # tiny VAE pre-training: reconstruction first, a whisper of KL keeps the latents bounded


@dataclass(frozen=True)
class DeoccluderTrainResult:
    """What a training run wrote and measured."""

    out_dir: Path
    dataset_version: str
    num_train_pairs: int
    num_heldout_frames: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean diffusion loss since the last log)
    vae_losses: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    build_overrides: tuple[str, ...] = ()


def load_deoccluder_config(path: Path | str, overrides: tuple[str, ...] = ()) -> DeoccluderTrainConfig:
    """The training config from YAML with `--set key=value` overrides (ConfigError: one line a user can act on)."""
    return apply_overrides(load_yaml_model(DeoccluderTrainConfig, Path(path)), overrides)


def check_runtime(cfg: DeoccluderTrainConfig) -> None:
    """Fail before any work on settings this machine cannot run.

    Raises:
        ValueError: mixed precision without a GPU, or a base model folder that does not exist.
    """
    if cfg.train.mixed_precision != "no" and not torch.cuda.is_available():
        raise ValueError(f"train.mixed_precision={cfg.train.mixed_precision!r} needs a GPU; set it to 'no' on the CPU")
    for name, value in (("model.base_model", cfg.model.base_model), ("model.controlnet", cfg.model.controlnet)):
        if value is not None and value.startswith((".", "/", "~")) and not Path(value).expanduser().exists():
            raise ValueError(f"{name}: no such folder {value!r}; point it at a diffusers model folder or hub id")


# -- models ------------------------------------------------------------------------------------------------------


@dataclass
class _Models:
    vae: object  # AutoencoderKL
    unet: object  # UNet2DConditionModel (9 input channels)
    controlnet: object  # ControlNetModel
    noise_scheduler: object  # DDPMScheduler
    prompt_embeds: torch.Tensor  # (1, L, D)
    text_parts: dict  # text_encoder / tokenizer to save with a trained base (None for tiny models)
    is_tiny: bool


def controlnet_from_inpaint_unet(unet, conditioning_embedding_out_channels: tuple[int, ...]):  # noqa: ANN001, ANN201
    """A ControlNet initialised from an inpainting UNet's encoder (diffusers' `from_unet`), reading 4-channel latents.

    The ControlNet sees the noisy latents only (as HandRefiner's: `in_channels: 4`); the UNet's 9-channel input
    convolution is cut to its first 4 input channels (the latents' own). Zero convolutions start at zero.
    """
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_embedding_out_channels)
    old = controlnet.conv_in
    new = torch.nn.Conv2d(4, old.out_channels, kernel_size=old.kernel_size, padding=old.padding)
    with torch.no_grad():
        new.weight.copy_(old.weight[:, :4])
        new.bias.copy_(old.bias)
    controlnet.conv_in = new
    controlnet.register_to_config(in_channels=4)
    return controlnet


def _tiny_models(cfg: DeoccluderTrainConfig) -> _Models:
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel

    tiny, size = cfg.model.tiny, cfg.model.working_size_px
    torch.manual_seed(cfg.train.seed)  # diffusers initialises module weights from the global RNG
    vae_factor = 2 ** (len(tiny.vae_block_out_channels) - 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=list(tiny.vae_block_out_channels), layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * len(tiny.vae_block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(tiny.vae_block_out_channels),
        norm_num_groups=tiny.norm_num_groups, sample_size=size,
    )  # fmt: skip
    num_blocks = len(tiny.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=size // vae_factor, in_channels=9, out_channels=4,
        block_out_channels=tuple(tiny.block_out_channels), layers_per_block=tiny.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (num_blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (num_blocks - 1) + ("UpBlock2D",),
        cross_attention_dim=tiny.cross_attention_dim, attention_head_dim=tiny.attention_head_dim,
        norm_num_groups=tiny.norm_num_groups,
    )  # fmt: skip
    controlnet = controlnet_from_inpaint_unet(unet, tuple(tiny.conditioning_embedding_out_channels))
    scheduler = DDPMScheduler(num_train_timesteps=cfg.train.num_train_timesteps, beta_start=BETA_START,
                              beta_end=BETA_END, beta_schedule="scaled_linear", clip_sample=False)
    prompt = torch.zeros(1, TEXT_SEQUENCE_LENGTH, tiny.cross_attention_dim)
    return _Models(vae=vae, unet=unet, controlnet=controlnet, noise_scheduler=scheduler, prompt_embeds=prompt,
                   text_parts={}, is_tiny=True)


def _pretrained_models(cfg: DeoccluderTrainConfig) -> _Models:
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base, local = cfg.model.base_model, cfg.model.local_files_only
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", local_files_only=local)
    if unet.config.in_channels != 9:
        raise ValueError(f"model.base_model={base!r} has a {unet.config.in_channels}-channel UNet; the de-occluder "
                         f"needs an inpainting UNet (9 channels), e.g. runwayml/stable-diffusion-inpainting")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", local_files_only=local)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", local_files_only=local)
    index = Path(base) / "model_index.json"
    has_text = not index.is_file() or json.loads(index.read_text()).get("text_encoder", [None])[0] is not None
    if has_text:
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=local)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", local_files_only=local)
        with torch.no_grad():  # the build's prompt, encoded once (the text encoder is never trained)
            tokens = tokenizer(cfg.deocclusion.controlnet.prompt, padding="max_length",
                               max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
            prompt = text_encoder(tokens.input_ids)[0]
        text_parts = {"text_encoder": text_encoder, "tokenizer": tokenizer}
    else:  # a folder without a text encoder (test-sized models): zero embeddings, as the de-occluder uses
        prompt, text_parts = torch.zeros(1, TEXT_SEQUENCE_LENGTH, unet.config.cross_attention_dim), {}
    if cfg.model.controlnet is not None:
        controlnet = ControlNetModel.from_pretrained(cfg.model.controlnet, local_files_only=local)
    else:
        # SD-1.5's hint embedding (16, 32, 96, 256) downsamples 8x, as its VAE; a smaller VAE gets its first entries
        controlnet = controlnet_from_inpaint_unet(unet, SD15_HINT_CHANNELS[: len(vae.config.block_out_channels)])
    if controlnet.config.in_channels != 4:
        raise ValueError("model.controlnet: the ControlNet must read the 4-channel latents (as HandRefiner's does)")
    return _Models(vae=vae, unet=unet, controlnet=controlnet, noise_scheduler=scheduler, prompt_embeds=prompt,
                   text_parts=text_parts, is_tiny=False)


def _inference_scheduler(noise_scheduler):  # noqa: ANN001, ANN202 (diffusers schedulers)
    """The DDIM scheduler saved with a trained base (the build's default `ddim` reads its betas from it)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# -- tensors -----------------------------------------------------------------------------------------------------


def _nchw(array: np.ndarray, flip: bool, device: torch.device) -> torch.Tensor:
    """(N, H, W[, C]) array -> float (N, C, H, W) tensor, mirrored left-right when `flip`."""
    array = array.astype(np.float32)
    if flip:
        array = array[:, :, ::-1]
    if array.ndim == 3:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).to(device)


@dataclass(frozen=True)
class _LatentPairs:
    """The frozen VAE's view of every pair, computed once (rows: the pairs, then the same pairs mirrored).

    Mirroring left-right is the only augmentation; it is applied to every array of a pair alike.
    """

    target_mean: torch.Tensor  # (2N, 4, h, w) posterior mean of the object-free crop (scaled)
    target_std: torch.Tensor  # (2N, 4, h, w) posterior std (scaled): training draws a sample as diffusers does
    masked_latents: torch.Tensor  # (2N, 4, h, w) posterior mean of the masked occluded crop, as inference makes it
    latent_masks: torch.Tensor  # (2N, 1, h, w)
    hints: torch.Tensor  # (2N, 3, W, W) in [0, 1]


def _encode_pairs(vae, pairs: PairArrays, device: torch.device, dtype: torch.dtype,  # noqa: ANN001
                  chunk: int = 32) -> _LatentPairs:
    scale = float(vae.config.scaling_factor)
    parts: dict[str, list[torch.Tensor]] = {"mean": [], "std": [], "masked": [], "mask": [], "hint": []}
    with torch.no_grad():
        for flip in (False, True):
            for lo in range(0, len(pairs), chunk):
                sl = slice(lo, lo + chunk)
                image = _nchw(pairs.images[sl], flip, device) / 127.5 - 1.0
                target = _nchw(pairs.targets[sl], flip, device) / 127.5 - 1.0
                mask = _nchw(pairs.masks[sl], flip, device)
                posterior = vae.encode(target.to(dtype)).latent_dist
                parts["mean"].append(posterior.mean.float() * scale)
                parts["std"].append(posterior.std.float() * scale)
                masked = vae.encode((image * (mask < 0.5)).to(dtype)).latent_dist.mode().float() * scale
                parts["masked"].append(masked)
                parts["mask"].append(torch.nn.functional.interpolate(mask, size=masked.shape[-2:]))
                parts["hint"].append(_nchw(pairs.depth_hints[sl], flip, device) / 255.0)
    cat = {name: torch.cat(tensors) for name, tensors in parts.items()}
    return _LatentPairs(target_mean=cat["mean"], target_std=cat["std"], masked_latents=cat["masked"],
                        latent_masks=cat["mask"], hints=cat["hint"])


def _train_vae(models: _Models, pairs: PairArrays, cfg: DeoccluderTrainConfig, rng: np.random.Generator,
               device: torch.device, log: Callable[[str], None]) -> list[tuple[int, float]]:
    """Tiny models only: teach the random VAE to reconstruct crops, then set its latent scaling to 1 / std."""
    vae, opt = cfg.model, cfg.train
    del vae
    models.vae.to(device).train()
    optimiser = torch.optim.AdamW(models.vae.parameters(), lr=opt.vae_learning_rate, weight_decay=0.0)
    losses, running = [], []
    both = np.concatenate([pairs.images, pairs.targets])
    for step in range(1, opt.vae_steps + 1):
        index = rng.integers(0, len(both), opt.batch_size)
        images = torch.from_numpy(both[index].astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).to(device)
        posterior = models.vae.encode(images).latent_dist
        recon = models.vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.l1_loss(recon, images) + KL_WEIGHT * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running.append(float(loss.detach()))
        if step % opt.log_every == 0 or step == opt.vae_steps:
            losses.append((step, float(np.mean(running))))
            log(f"vae step {step}/{opt.vae_steps}: reconstruction loss {losses[-1][1]:.4f}")
            running = []
    models.vae.eval()
    with torch.no_grad():  # latents of unit variance for the diffusion model, as SD's 0.18215 gives SD's VAE
        sample = torch.from_numpy(pairs.targets[: min(64, len(pairs))].astype(np.float32) / 127.5 - 1.0)
        latents = models.vae.encode(sample.permute(0, 3, 1, 2).to(device)).latent_dist.mode()
        models.vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-3)))
    return losses


def _diffusion_loss(models: _Models, data: _LatentPairs, rows: torch.Tensor, generator: torch.Generator,
                    mask_loss_weight: float, weight_dtype: torch.dtype) -> torch.Tensor:
    """diffusers' ControlNet objective on the pairs `rows`, with the inpainting UNet's 9-channel input."""
    mean, std = data.target_mean[rows], data.target_std[rows]
    target_latents = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
    latent_mask, masked_latents = data.latent_masks[rows], data.masked_latents[rows]
    noise = torch.randn(target_latents.shape, generator=generator, device=target_latents.device)
    timesteps = torch.randint(0, models.noise_scheduler.config.num_train_timesteps, (noise.shape[0],),
                              generator=generator, device=noise.device).long()
    noisy = models.noise_scheduler.add_noise(target_latents, noise, timesteps)
    embeds = models.prompt_embeds.to(noisy.device, weight_dtype).expand(noise.shape[0], -1, -1)
    down, mid = models.controlnet(noisy.to(weight_dtype), timesteps, encoder_hidden_states=embeds,
                                  controlnet_cond=data.hints[rows].to(weight_dtype), return_dict=False)
    unet_input = torch.cat([noisy, latent_mask, masked_latents], dim=1).to(weight_dtype)
    prediction = models.unet(unet_input, timesteps, encoder_hidden_states=embeds,
                             down_block_additional_residuals=[d.to(weight_dtype) for d in down],
                             mid_block_additional_residual=mid.to(weight_dtype), return_dict=False)[0]
    if models.noise_scheduler.config.prediction_type == "v_prediction":
        target = models.noise_scheduler.get_velocity(target_latents, noise, timesteps)
    else:
        target = noise
    weight = 1.0 + mask_loss_weight * latent_mask
    return (weight * (prediction.float() - target) ** 2).mean() / weight.mean()


# -- saving ------------------------------------------------------------------------------------------------------


def _save_folders(models: _Models, folder: Path, save_base: bool) -> None:
    """`controlnet/` (and `base/`) as save_pretrained folders under `folder`."""
    from diffusers import StableDiffusionInpaintPipeline

    folder.mkdir(parents=True, exist_ok=True)
    models.controlnet.save_pretrained(folder / CONTROLNET_DIR)
    if save_base:
        pipe = StableDiffusionInpaintPipeline(
            vae=models.vae, unet=models.unet, scheduler=_inference_scheduler(models.noise_scheduler),
            text_encoder=models.text_parts.get("text_encoder"), tokenizer=models.text_parts.get("tokenizer"),
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(folder / BASE_DIR)


def build_overrides(trained_dir: Path, cfg: DeoccluderTrainConfig | None = None) -> tuple[str, ...]:
    """The `--set key=value` options that make `unihope build` de-occlude with a trained folder.

    Args:
        trained_dir: the output folder of `train_deoccluder` (or one of its `checkpoints/step-N`).
        cfg: the training config; None -> read from the folder's training.json (a checkpoint's parent's).

    Returns:
        key=value strings for `--set` (without the `--set`).
    """
    trained_dir = Path(trained_dir).resolve()
    if cfg is None:
        record = trained_dir / TRAINING_RECORD
        if not record.is_file():
            record = trained_dir.parent.parent / TRAINING_RECORD  # a checkpoints/step-N folder
        if not record.is_file():
            raise FileNotFoundError(f"{trained_dir}: no {TRAINING_RECORD}; is this a `unihope train-deoccluder` folder?")
        cfg = DeoccluderTrainConfig.model_validate(json.loads(record.read_text())["config"])
    base = trained_dir / BASE_DIR if (trained_dir / BASE_DIR).is_dir() else cfg.model.base_model
    inference, deocc = cfg.inference, cfg.deocclusion
    options = [
        "deocclusion.backend=controlnet",
        f"deocclusion.controlnet.base_model={base}",
        f"deocclusion.controlnet.controlnet_depth={trained_dir / CONTROLNET_DIR}",
        f"deocclusion.controlnet.working_size_px={cfg.model.working_size_px}",
        f"deocclusion.controlnet.num_inference_steps={inference.num_inference_steps}",
        f"deocclusion.controlnet.guidance_scale={inference.guidance_scale}",
        f"deocclusion.controlnet.scheduler={inference.scheduler}",
        f"deocclusion.controlnet.device={inference.device}",
        "deocclusion.controlnet.local_files_only=true",
        f"deocclusion.beta_policy={inference.beta_policy}",
        *([f"deocclusion.beta_fixed={inference.beta_fixed}"] if inference.beta_policy == "fixed" else []),
        f"deocclusion.mask_region={deocc.mask_region}",
        f"deocclusion.mask_dilation_px={deocc.mask_dilation_px}",
    ]
    return tuple(options)


def build_config_with(build_cfg: PipelineConfig, trained_dir: Path) -> PipelineConfig:
    """`build_cfg` set up to de-occlude with the trained folder (the pair ablation's ControlNet arm)."""
    return apply_overrides(build_cfg, build_overrides(trained_dir))


def _readme(result_dir: Path, options: tuple[str, ...], version: str, cfg: DeoccluderTrainConfig) -> str:
    sets = " \\\n  ".join(f"--set {option}" for option in options)
    return (
        f"# De-occluder `{cfg.name}`\n\n"
        f"Trained by `unihope train-deoccluder` on `{version}` (config and loss curve: `{TRAINING_RECORD}`).\n\n"
        f"Build with it:\n\n```\nunihope build --config CONFIG --out OUT \\\n  {sets}\n```\n"
    )


# -- the run -----------------------------------------------------------------------------------------------------


def train_deoccluder(cfg: DeoccluderTrainConfig, out_dir: Path,
                     log: Callable[[str], None] = print) -> DeoccluderTrainResult:
    """Train the de-occluder of `cfg` and write its folder (module docstring) to `out_dir`.

    Args:
        cfg: the training config.
        out_dir: output folder (created; an existing one is overwritten folder by folder).
        log: progress lines.

    Returns:
        The result (losses, pairs, wall time, the build's `--set` options).

    Raises:
        ValueError: settings this machine cannot run, or no trainable pair (before any training).
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    # 1. Check inputs, threads, seeds
    start_s = time.perf_counter()
    check_runtime(cfg)
    opt = cfg.train
    if opt.num_threads is not None:
        torch.set_num_threads(opt.num_threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(opt.seed)

    # 2. Pairs through the build's own stages; the last sequences held out
    root = cfg.data.root or out_dir / "_synthetic"
    frames = synthetic_frames(Path(root), cfg.data.synthetic, cfg.data.crop)
    train_frames, heldout = split_heldout(frames, cfg.data.heldout_sequences)
    pairs = make_pairs(Path(root), train_frames, cfg.deocclusion, cfg.model.working_size_px)
    version = dataset_version(cfg.data.synthetic, cfg.data.crop)
    log(f"data {version}: {len(frames)} crops, {len(pairs)} training pairs, "
        f"{sum(is_trainable(f) for f in heldout)} held-out trainable crops ({cfg.data.heldout_sequences} sequences)")

    # 3. Models and accelerate
    accelerator = Accelerator(mixed_precision=opt.mixed_precision,
                              gradient_accumulation_steps=opt.gradient_accumulation_steps)
    device = accelerator.device
    models = _tiny_models(cfg) if cfg.model.base_model is None else _pretrained_models(cfg)
    save_base = models.is_tiny or opt.train_unet
    _save_folders(models, out_dir / CHECKPOINTS_DIR / "step-0", save_base)  # the untrained floor
    vae_losses = _train_vae(models, pairs, cfg, rng, device, log) if models.is_tiny and opt.vae_steps else []
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    models.vae.requires_grad_(False)
    models.vae.to(device, weight_dtype)
    latent_pairs = _encode_pairs(models.vae, pairs, device, weight_dtype)
    models.unet.requires_grad_(opt.train_unet)
    if not opt.train_unet:
        models.unet.to(device, weight_dtype)
    trained = [models.controlnet] + ([models.unet] if opt.train_unet else [])
    params = [p for module in trained for p in module.parameters()]
    optimiser = torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.adam_weight_decay)
    prepared = accelerator.prepare(*trained, optimiser)
    models.controlnet = prepared[0]
    if opt.train_unet:
        models.unet = prepared[1]
    optimiser = prepared[-1]
    for module in trained:
        module.train()
    ema = EMAModel(params, decay=opt.ema_decay) if opt.ema else None
    generator = torch.Generator(device=device).manual_seed(opt.seed)

    def save(folder: Path) -> None:
        unwrapped = _Models(**{**models.__dict__, "controlnet": accelerator.unwrap_model(models.controlnet),
                               "unet": accelerator.unwrap_model(models.unet)})
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        _save_folders(unwrapped, folder, save_base)
        if ema is not None:
            ema.restore(params)

    # 4. The diffusion steps
    losses, running = [], []
    for step in range(1, opt.steps + 1):
        with accelerator.accumulate(*trained):
            rows = torch.from_numpy(rng.integers(0, 2 * len(pairs), opt.batch_size)).to(device)
            loss = _diffusion_loss(models, latent_pairs, rows, generator, opt.mask_loss_weight, weight_dtype)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, opt.max_grad_norm)
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        if ema is not None and accelerator.sync_gradients:
            ema.step(params)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"de-occluder loss is {float(loss)} at step {step}; lower train.learning_rate")
        running.append(float(loss.detach()))
        if step % opt.log_every == 0 or step == opt.steps:
            losses.append((step, float(np.mean(running))))
            log(f"step {step}/{opt.steps}: diffusion loss {losses[-1][1]:.4f} ({time.perf_counter() - start_s:.0f} s)")
            running = []
        if opt.checkpoint_every and step % opt.checkpoint_every == 0 and step != opt.steps:
            save(out_dir / CHECKPOINTS_DIR / f"step-{step}")

    # 5. The trained folder, its record and the build options
    save(out_dir)
    options = build_overrides(out_dir, cfg)
    wall_s = time.perf_counter() - start_s
    record = {
        "dataset_version": version, "config": cfg.model_dump(mode="json"), "config_hash": cfg.config_hash(),
        "num_train_pairs": len(pairs), "train_sample_keys": list(pairs.sample_keys),
        "heldout_sequences": sorted({"/".join(f.frame.sample_key.split("/")[:2]) for f in heldout}),
        "losses": losses, "vae_losses": vae_losses, "wall_s": round(wall_s, 1), "build_overrides": list(options),
        "device": str(device), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    (out_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=1))
    (out_dir / "README.md").write_text(_readme(out_dir, options, version, cfg))
    return DeoccluderTrainResult(out_dir=out_dir, dataset_version=version, num_train_pairs=len(pairs),
                                 num_heldout_frames=len(heldout), losses=losses, vae_losses=vae_losses,
                                 wall_s=wall_s, build_overrides=options)
