"""Config of the de-occluder training (`unihope train-deoccluder`): data, models, optimisation, what a build uses."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from unihope.config import CropConfig, DeocclusionConfig, StageConfig, SyntheticConfig


class DeoccluderDataConfig(StageConfig):
    """The synthetic source the pairs come from, cut by the build's own crop stage."""

    synthetic: SyntheticConfig = SyntheticConfig(num_sequences=10, frames_per_sequence=16, num_cameras=2, seed=7)
    root: Path | None = None  # where the synthetic dataset is written (or reused); None: <out>/_synthetic
    # The last N sequences are held out (never trained on): the benchmark measures on them.
    heldout_sequences: int = Field(2, ge=0)
    crop: CropConfig = CropConfig()

    @model_validator(mode="after")
    def _check_split(self) -> "DeoccluderDataConfig":
        if self.heldout_sequences >= self.synthetic.num_sequences:
            raise ValueError(
                f"data.heldout_sequences ({self.heldout_sequences}) must be < data.synthetic.num_sequences "
                f"({self.synthetic.num_sequences}): nothing would be left to train on"
            )
        return self


class TinyModelConfig(StageConfig):
    """Small UNet / VAE / ControlNet shapes for CPU training (used when `model.base_model` is unset).

    The VAE downsamples by 2 ** (len(vae_block_out_channels) - 1); the ControlNet's hint embedding must
    downsample by the same factor, i.e. have len(vae_block_out_channels) entries.
    """

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = Field(1, ge=1)
    cross_attention_dim: int = Field(32, ge=8)
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    vae_block_out_channels: tuple[int, ...] = (32, 64, 64)
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 32)

    @model_validator(mode="after")
    def _check_factors(self) -> "TinyModelConfig":
        if len(self.conditioning_embedding_out_channels) != len(self.vae_block_out_channels):
            raise ValueError(
                "model.tiny.conditioning_embedding_out_channels must have as many entries as "
                "model.tiny.vae_block_out_channels (the hint must reach the latent size)"
            )
        return self


class DeoccluderModelConfig(StageConfig):
    """Which models are trained, and from what."""

    # A diffusers SD-1.5 inpainting pipeline folder or hub id (9-channel UNet). None: build a tiny UNet + VAE
    # from `tiny` and train them (no tiny pretrained inpainting model exists).
    base_model: str | None = None
    # Start the ControlNet from this folder / id; None: from the UNet's weights (diffusers' ControlNetModel.from_unet)
    controlnet: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    working_size_px: int = Field(64, ge=32)  # crops are resized to this, as the build's controlnet.working_size_px
    local_files_only: bool = True

    @model_validator(mode="after")
    def _check_size(self) -> "DeoccluderModelConfig":
        if self.base_model is None:
            factor = 2 ** (len(self.tiny.vae_block_out_channels) - 1)
            if self.working_size_px % (factor * 2 ** (len(self.tiny.block_out_channels) - 1)):
                raise ValueError(f"model.working_size_px ({self.working_size_px}) must divide by the VAE and UNet "
                                 f"downsampling ({factor} x {2 ** (len(self.tiny.block_out_channels) - 1)})")
        return self


class DeoccluderOptimConfig(StageConfig):
    """Optimisation, following diffusers' ControlNet training example (AdamW, constant LR, noise MSE)."""

    steps: int = Field(1500, ge=1)  # ControlNet (+ UNet) steps
    vae_steps: int = Field(400, ge=0)  # tiny models only: autoencoder pre-training steps before the diffusion steps
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-3, gt=0)  # ControlNet (and the tiny UNet)
    vae_learning_rate: float = Field(2e-3, gt=0)
    adam_weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    train_unet: bool = True  # tiny: the UNet is random and must learn to inpaint; SD-1.5: False (ControlNet only)
    # Extra weight of the noise error inside the inpaint mask (latent size): the only region the build uses
    mask_loss_weight: float = Field(4.0, ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # accelerate's mixed precision (GPU workers)
    ema: bool = False  # keep an exponential moving average of the trained weights; the saved model is the EMA
    ema_decay: float = Field(0.999, gt=0, lt=1)
    checkpoint_every: int = Field(500, ge=0)  # save_pretrained folders under checkpoints/step-N (0 = only the end)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    num_threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default)
    # Noise schedule of the diffusion training (as SD-1.5 and the tiny test models: scaled_linear 0.00085-0.012)
    num_train_timesteps: int = Field(1000, ge=10)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        return "no" if value is False else value  # YAML (and --set) read a bare `no` as false


class DeoccluderInferenceConfig(StageConfig):
    """What the printed `--set` options tell a build to use with the trained folder."""

    num_inference_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(1.0, ge=0)  # tiny models have no text encoder: guidance would only double the cost
    scheduler: Literal["ddim", "dpmsolver++", "unipc", "saved"] = "ddim"
    device: str = "auto"
    beta_policy: Literal["fixed", "occlusion_prior", "search"] = "occlusion_prior"
    beta_fixed: float = Field(0.55, ge=0, le=2)  # the build's beta under beta_policy=fixed


class DeoccluderTrainConfig(StageConfig):
    """`unihope train-deoccluder --config`: everything one de-occluder training run needs."""

    name: str = "deoccluder"
    data: DeoccluderDataConfig = DeoccluderDataConfig()
    model: DeoccluderModelConfig = DeoccluderModelConfig()
    train: DeoccluderOptimConfig = DeoccluderOptimConfig()
    # Masks as the build makes them: mask_region, mask_dilation_px and which frames get generated
    # (max_visibility / generate_max_visibility under keep_rule) are read from here and handed to the build.
    deocclusion: DeocclusionConfig = DeocclusionConfig()
    inference: DeoccluderInferenceConfig = DeoccluderInferenceConfig()

    @model_validator(mode="after")
    def _check_precision(self) -> "DeoccluderTrainConfig":
        if self.model.base_model is None and not self.train.train_unet:
            raise ValueError("train.train_unet must be true with tiny models (model.base_model unset): "
                             "a random UNet cannot inpaint")
        return self
