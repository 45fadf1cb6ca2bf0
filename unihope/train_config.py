"""Training configuration: one frozen pydantic model (with sections) for `unihope train` / `unihope eval`.

Defaults equal the upstream UniHOPE / HFL-Net values from shared/REFERENCE.md (DexYCB); YAML files
in `configs/train_*.yaml` only override them. Unknown keys fail at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from unihope.config import HandModelConfig, StageConfig

TRAIN_CONFIG_SCHEMA_VERSION = 1


class ModelConfig(StageConfig):
    """Network size. Upstream: ResNet-50, FPN 256 ch, RoI 32, one transformer layer with 8 heads, MANO MLP [1024, 512]."""

    depth: Literal[18, 34, 50] = 50
    width_multiplier: float = Field(1.0, gt=0, le=4)  # < 1 gives a tiny CPU model
    norm: Literal["batch", "group"] = "batch"  # ImageNet weights need "batch"
    input_size_px: int = Field(128, ge=32, le=1024)  # crops are resized to this (128 DexYCB, 256 HO3D)
    fpn_channels: int = Field(256, ge=8)
    roi_size: int = Field(32, ge=4)
    roi_sampling_ratio: int = Field(2, ge=1, le=8)
    num_heads: int = Field(8, ge=1)
    transformer_depth: int = Field(1, ge=1, le=12)
    mano_hidden: tuple[int, ...] = (1024, 512)
    num_hand_res_blocks: int = Field(4, ge=2, le=8)
    switcher_channels: int = Field(64, ge=1)  # UniHOPE switcher: conv1x1 256 -> 64
    switcher_hidden: int = Field(1024, ge=1)  # linear -> 1024 -> 2
    backbone_weights_path: Path | None = None  # local ImageNet ResNet weights; None = random init
    # UniHOPE / HFL-Net code: the object features entering the hand path and the hand features entering
    # the object path are detached (docs/MODEL.md, "Training against upstream")
    detach_cross_stream: bool = True

    @model_validator(mode="after")
    def _check_sizes(self) -> "ModelConfig":
        if self.roi_size % 4:
            raise ValueError(f"model.roi_size must be a multiple of 4, got {self.roi_size}")
        if self.fpn_channels % self.num_heads:
            raise ValueError(f"model.num_heads ({self.num_heads}) must divide model.fpn_channels ({self.fpn_channels})")
        if self.input_size_px % 32:
            raise ValueError(f"model.input_size_px must be a multiple of 32 (ResNet stride), got {self.input_size_px}")
        return self


class AblationConfig(StageConfig):
    """Switches for UniHOPE's ablations: HFL-Net baseline = no switcher, no fusion, no enhancement."""

    use_switcher: bool = True
    use_fusion: bool = True  # False: object features always fused (HFL-Net's ungated form)
    fusion_mode: Literal["soft", "hard"] = "soft"  # soft = paper, hard = upstream code's argmax
    # the pairs: False = no second image at all (neither its supervision nor the enhancement terms)
    use_enhancement: bool = True

    @model_validator(mode="after")
    def _check(self) -> "AblationConfig":
        if self.use_fusion and not self.use_switcher:
            raise ValueError("ablation.use_fusion needs ablation.use_switcher (the fusion is gated by the switcher)")
        return self


class LossConfig(StageConfig):
    """Loss weights (REFERENCE.md). Units are chosen so the upstream weights keep their balance (docs/MODEL.md)."""

    verts3d: float = Field(1e4, ge=0)  # wrist-relative metres, MSE
    joints3d: float = Field(1e4, ge=0)  # wrist-relative metres, MSE
    mano_pose: float = Field(10.0, ge=0)  # radians, MSE
    mano_shape: float = Field(0.1, ge=0)
    mano_variance: float = Field(1.0, ge=0)  # Gaussian NLL calibrating the predicted log-variances
    joints2d: float = Field(1e2, ge=0)  # heatmap MSE
    object_keypoints: float = Field(5e2, ge=0)  # box-normalised L1
    object_confidence: float = Field(1e2, ge=0)
    grasp: float = Field(10.0, ge=0)  # switcher cross-entropy
    object_vote_mask: bool = True  # upstream: object votes scored only on object cells (visible object mask)


class EnhancementConfig(StageConfig):
    """How the de-occluded pairs train the model (UniHOPE's released code by default; docs/MODEL.md).

    Weights 0.1 / 0.1 / 0.5 DexYCB, 1 / 1 / 1 HO3D; max_visibility 0.9 DexYCB, 0.8 HO3D.
    """

    # upstream: the hand losses are applied to both images of a pair and averaged (the de-occluded image
    # is a second supervised view); False = the de-occluded pass is a no-grad teacher only
    supervise_deoccluded: bool = True
    # how a pair's two images share the hand losses: "add" (the occluded image keeps weight 1, the
    # de-occluded one adds 0.5) or "average" (upstream: 0.5 each, so a paired sample's occluded image counts
    # half). "add" is the default because the pair ablation measured it: with oracle pairs, "average" cost
    # +0.65 mm MPJPE [+0.09, +1.21] against no pairs, "add" -0.01 [-0.95, +0.93] (docs/performance/pairs.md)
    pair_supervision: Literal["average", "add"] = "add"
    form: Literal["upstream", "paper"] = "upstream"  # upstream: L1 on raw tensors; paper: MSE / cosine / KL
    image_weight: float = Field(0.1, ge=0)
    token_weight: float = Field(0.1, ge=0)
    output_weight: float = Field(0.5, ge=0)
    output_mode: Literal["kl", "l1"] = "kl"  # the paper form's output level
    # upstream distils only grasping samples at visibility <= this (DexYCB 0.9, HO3D 0.8)
    grasping_only: bool = True
    max_visibility: float = Field(0.9, ge=0, le=1)


class MaskingConfig(StageConfig):
    """HOMAE target-focused masking (off by default). None = scaled from 224 px / 28 px / 12 patches."""

    enabled: bool = False
    patch_px: int | None = Field(None, ge=1)
    num_patches: int | None = Field(None, ge=1)
    prob_in_object: float = Field(0.5, ge=0, le=1)


class OptimConfig(StageConfig):
    """Adam with step decay (UniHOPE: batch 40, lr ~1.2e-5, 50-60 epochs, decay 0.7)."""

    batch_size: int = Field(40, ge=1)
    learning_rate: float = Field(1.2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop early (quick runs, tests)
    lr_decay_gamma: float = Field(0.7, gt=0, le=1)
    lr_decay_every_epochs: int = Field(10, ge=1)
    grad_clip_norm: float | None = Field(None, gt=0)


class DataConfig(StageConfig):
    """Which samples the run reads through `unihope.storage.paired.PairedDataset`."""

    train_split: Literal["train", "val"] = "train"
    eval_split: Literal["train", "val"] = "val"
    num_workers: int = Field(0, ge=0)  # batches load in a fixed order either way (reproducible)
    augment: bool = False  # unihope.storage.augment.AugmentConfig defaults on the training split (same for both images of a pair)
    # The one held-out split: this share of the dataset's sequences (by a hash of the sequence key, so all
    # frames and cameras of a sequence stay together) is "val"; the rest is "train".
    val_fraction: float = Field(0.1, ge=0, lt=1)
    max_train_samples: int | None = Field(None, ge=1)
    # share of de-occluded pairs in every training batch (a pair-aware sampler draws them); None = the
    # dataset's own share (plain shuffle)
    pair_share: float | None = Field(None, gt=0, le=1)
    max_eval_samples: int | None = Field(None, ge=1)


class TrainConfig(StageConfig):
    """Everything a training or evaluation run needs besides the data location and the output folder."""

    schema_version: int = TRAIN_CONFIG_SCHEMA_VERSION
    name: str = "unihope"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate's autocast, CUDA only (unihope/distributed.py)
    cpu_threads: int | None = Field(None, ge=1)  # torch intra-op threads for CLI runs; None = torch's default
    model: ModelConfig = ModelConfig()
    ablation: AblationConfig = AblationConfig()
    loss: LossConfig = LossConfig()
    enhancement: EnhancementConfig = EnhancementConfig()
    masking: MaskingConfig = MaskingConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    # The MANO files the dataset was built with (hand.mano_dir of the build); training and evaluation
    # refuse a dataset built with another model. `--mano-dir` overrides mano_dir.
    hand: HandModelConfig = HandModelConfig()
    checkpoint_every_steps: int = Field(500, ge=1)
    eval_every_epochs: int | None = Field(None, ge=1)  # None: evaluate only at the end
    eval_batch_size: int = Field(32, ge=1)
    loss_window_steps: int = Field(10, ge=1)  # train_loss_first/last average this many steps
    # every this many steps, the gradient norm of each loss term on the shared layers (stem, stage 1,
    # stage 4) goes into loss_history.jsonl as gradnorm_<term> (one extra backward per term); None = never
    grad_norm_every_steps: int | None = Field(50, ge=1)
