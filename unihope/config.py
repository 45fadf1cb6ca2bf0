"""Pipeline configuration: one frozen pydantic model per stage, composed by `PipelineConfig`.

YAML files in `configs/` only set values; every default lives here and equals the upstream
value from shared/REFERENCE.md. Unknown keys fail at load time (`extra="forbid"`).
Each stage's config hashes on its own, so a cache keyed by a stage hash is invalidated
only when that stage (or one it depends on) changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_SCHEMA_VERSION = 1
M = TypeVar("M", bound=BaseModel)
# Whose fingertip vertices each on-disk layout's 21-joint labels use (see unihope.hand.TIP_CONVENTIONS):
# DexYCB's joint_3d comes from manopth's MANO layer, HO3D's handJoints3D from the HO3D toolkit's.
TIP_CONVENTION_OF_LAYOUT: dict[str, str] = {"dexycb": "manopth", "ho3d": "ho3d"}
# The names source.split accepts per layout; unihope.sources.splits holds each one's rule (one per name,
# tests/test_sources.py checks). The names live here so the config layer checks them without importing a source.
DEXYCB_SPLIT_NAMES: tuple[str, ...] = ("all", *(f"s{k}_{part}" for k in range(4) for part in ("train", "val", "test")))
HO3D_SPLIT_NAMES: tuple[str, ...] = ("all", "train", "evaluation")


class StageConfig(BaseModel):
    """Base for stage configs: frozen, strict keys, stable hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        """Short, stable hash of the resolved values (sorted JSON)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> Self:
        """Load from a YAML file path or YAML text; errors name the bad key and the file."""
        return load_yaml_model(cls, path_or_text)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class HandModelConfig(StageConfig):
    """Which MANO files to use. None -> the procedural hand shipped with the project."""

    mano_dir: Path | None = None  # folder holding the official MANO_RIGHT.pkl / MANO_LEFT.pkl
    cache_dir: Path | None = None  # default ~/.cache/unihope/mano


class SyntheticConfig(StageConfig):
    """The embedded synthetic source (DexYCB or HO3D_v2 layout)."""

    format: Literal["dexycb", "ho3d"] = "dexycb"
    num_sequences: int = Field(4, ge=1, le=1000)
    frames_per_sequence: int = Field(24, ge=4, le=10000)
    num_cameras: int = Field(2, ge=1, le=8)  # DexYCB format only; HO3D has one camera
    seed: int = 0
    image_width_px: int = 640
    image_height_px: int = 480
    # DexYCB's quirks (dexycb format): frames whose hand is not annotated (at a camera's start and
    # scattered), models/<name>/points.xyz, an `apriltag` extrinsics entry, per-sequence pose.npz
    quirks: bool = False
    # "heavy": low cameras and the hand straight behind the grasped object (the pair-ablation preset,
    # configs/ablation.yaml); "natural": the rig and approach that mimic DexYCB's spread of views.
    occlusion: Literal["natural", "heavy"] = "natural"

    @model_validator(mode="after")
    def _check_quirks(self) -> "SyntheticConfig":
        if self.quirks and self.format != "dexycb":
            raise ValueError(f"synthetic.quirks are DexYCB's; format={self.format!r} has none (set quirks: false)")
        return self


class SourceConfig(StageConfig):
    """Where frames come from."""

    kind: Literal["synthetic", "dexycb", "ho3d"] = "synthetic"
    root: Path | None = None  # dataset root; for `synthetic`, where it is generated (default: <out>/_synthetic)
    split: str = "all"  # dexycb: all | s{0..3}_{train,val,test}; ho3d: all | train | evaluation
    synthetic: SyntheticConfig = SyntheticConfig()
    max_frames: int | None = Field(None, ge=1)  # cap for quick runs; None = all
    # Fingertip vertices of the 21 joints: "auto" = the layout's own (DexYCB manopth, HO3D ho3d). Name
    # another only for a dataset in that layout whose labels were made with other tip ids.
    tip_convention: Literal["auto", "manopth", "ho3d", "smplx"] = "auto"

    def layout(self) -> str:
        """The on-disk layout read: "dexycb" or "ho3d" (a synthetic source's format)."""
        return self.synthetic.format if self.kind == "synthetic" else self.kind

    def resolved_tip_convention(self) -> str:
        """The tip convention in force: `tip_convention`, or the layout's own for "auto"."""
        return TIP_CONVENTION_OF_LAYOUT[self.layout()] if self.tip_convention == "auto" else self.tip_convention

    @model_validator(mode="after")
    def _check_tip_convention(self) -> "SourceConfig":
        native = TIP_CONVENTION_OF_LAYOUT[self.layout()]
        if self.kind == "synthetic" and self.tip_convention not in ("auto", native):
            raise ValueError(
                f"source.tip_convention={self.tip_convention!r}: the synthetic {self.synthetic.format} source "
                f"writes its labels with {native!r} tips, as the real dataset; use 'auto' or {native!r}"
            )
        return self

    @model_validator(mode="after")
    def _check_root(self) -> "SourceConfig":
        if self.kind in ("dexycb", "ho3d") and self.root is None:
            raise ValueError(
                f"source.kind={self.kind!r} needs source.root: the dataset folder on disk "
                f"(or pass --source {self.kind}:PATH on the command line)"
            )
        return self

    @model_validator(mode="after")
    def _check_split(self) -> "SourceConfig":
        layout = self.synthetic.format if self.kind == "synthetic" else self.kind
        valid = DEXYCB_SPLIT_NAMES if layout == "dexycb" else HO3D_SPLIT_NAMES
        if self.split not in valid:
            raise ValueError(f"source.split={self.split!r} is not a {layout} split; valid splits: {', '.join(valid)}")
        return self


class GraspConfig(StageConfig):
    """Grasp labels from the object's motion against the sequence's first frame (UniHOPE)."""

    rre_threshold_deg: float = Field(5.0, gt=0)
    rte_threshold_m: float = Field(0.05, gt=0)
    label_override_path: Path | None = None  # JSON {sample_key: bool}, e.g. HO3D's manual labels


class CropConfig(StageConfig):
    """UniHOPE's square crop around the hand box (x1.5) united with the object box (x1.5) when grasping."""

    # unihope: boxes of the 21 2D joints and the 21 projected object box keypoints, integer centres,
    # clipped to the image (UniHOPE's loader); mesh: boxes of the projected hand / object mesh vertices
    # (whole mesh inside, ~1.15x larger). See unihope/crop.py and docs/DATASETS.md.
    rule: Literal["unihope", "mesh"] = "unihope"
    size_px: int = Field(128, ge=32, le=1024)  # 128 DexYCB, 256 HO3D upstream
    hand_box_scale: float = Field(1.5, gt=0)
    object_box_scale: float = Field(1.5, gt=0)
    min_hand_box_px: float = Field(8.0, gt=0)  # smaller projected hand boxes are skipped
    min_object_box_px: float = Field(2.0, gt=0)  # grasped objects with smaller projected boxes are skipped
    # hand boxes with less of their area inside the image are skipped (HAND_OUTSIDE_IMAGE)
    min_hand_box_inside_fraction: float = Field(0.5, ge=0, le=1)


class RenderConfig(StageConfig):
    """Offscreen rendering of hand/object masks, depth and Song et al.'s 2D feature maps."""

    platform: Literal["egl", "osmesa"] = "egl"
    feature_downsample: int = Field(4, ge=1, le=8)  # Song et al. maps at 1/4 resolution
    relative_depth_range_m: float = Field(0.15, gt=0)  # depth - object centre depth, scaled to [-1, 1]
    # UniHOPE's occlusion-interval bins on visibility: [0, .25], (.25, .5], (.5, .75], (.75, 1]
    occlusion_bin_edges: tuple[float, ...] = (0.25, 0.5, 0.75)

    @model_validator(mode="after")
    def _check_bin_edges(self) -> "RenderConfig":
        edges = self.occlusion_bin_edges
        if not edges or any(not 0 < edge < 1 for edge in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
            raise ValueError(
                f"render.occlusion_bin_edges={list(edges)} must be strictly increasing visibilities inside (0, 1), "
                "e.g. [0.25, 0.5, 0.75]"
            )
        return self


class ControlNetConfig(StageConfig):
    """Diffusion models (local folders or hub ids), as HandRefiner uses them."""

    base_model: str = "runwayml/stable-diffusion-inpainting"  # SD-1.5 inpainting UNet (9 channels)
    controlnet_depth: str = "lllyasviel/control_v11f1p_sd15_depth"  # v1.1 depth ControlNet (HandRefiner's base); a .ckpt file = HandRefiner's fine-tuned one
    # A single-file ControlNet (.ckpt / .safetensors, original ControlNet-v1 keys, e.g. HandRefiner's) takes its
    # architecture from this diffusers config folder; None: SD-1.5's ControlNet (shipped, unihope/deocclude/sd15_controlnet)
    controlnet_depth_config: str | None = None
    controlnet_segmentation: str | None = None  # optional second ControlNet on the hand-object segmentation
    num_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(9.0, ge=0)
    prompt: str = "a realistic human hand"
    negative_prompt: str = "fewer digits, extra digit, deformed hand, blurry"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float16", "float32"] = "auto"  # auto: fp16 on GPU, fp32 on CPU
    working_size_px: int = Field(512, ge=32)  # crops are resized to this for the diffusion model
    # ddim: HandRefiner's DDIM (50 steps); dpmsolver++ / unipc: multistep solvers meant for fewer steps (e.g. 20);
    # saved: the base model's own scheduler
    scheduler: Literal["ddim", "dpmsolver++", "unipc", "saved"] = "ddim"
    local_files_only: bool = False  # True: never reach for the hub (hub ids must already be in the local cache)
    # Early-exit beta search: after this many denoising steps every candidate's x0 prediction is decoded and
    # scored, and only the best `finish_top` of a frame are denoised to the end (0 = off: finish every candidate)
    preview_step: int = Field(0, ge=0)
    finish_top: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_preview(self) -> "ControlNetConfig":
        if self.preview_step >= self.num_inference_steps:
            raise ValueError(
                f"deocclusion.controlnet.preview_step ({self.preview_step}) must be < num_inference_steps "
                f"({self.num_inference_steps}); 0 turns the early-exit search off"
            )
        return self


# UniHOPE's loader filter rules for generated images (unihope/deocclude/keep.py explains each).
KeepRule = Literal["score", "occ", "and", "or", "all", "none"]


class DeocclusionConfig(StageConfig):
    """De-occlusion of the hand: backend, adaptive control strength beta, and UniHOPE's keep filter."""

    backend: Literal["render", "inpaint", "controlnet"] = "render"
    beta_policy: Literal["fixed", "occlusion_prior", "search"] = "occlusion_prior"
    beta_fixed: float = Field(0.55, ge=0, le=2)  # HandRefiner's phase transition sits near 0.55
    beta_min: float = Field(0.4, ge=0, le=2)  # severe occlusion -> lower beta
    beta_max: float = Field(0.8, ge=0, le=2)  # slight occlusion -> higher beta
    beta_candidates: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    # Which generated images become pairs. `occ` (visibility <= max_visibility) is what UniHOPE's released
    # DexYCB and HO3D configs use; our weight-free score is a proxy of upstream's pose-error score, so the
    # default does not rest on it. score / and / or / all / none: see unihope/deocclude/keep.py.
    keep_rule: KeepRule = "occ"
    keep_margin: float = Field(0.0, ge=0)  # score test: keep when gen_score > ori_score + margin
    max_visibility: float = Field(0.9, gt=0, le=1)  # occ test (upstream occ_threshold): 0.9 DexYCB, 0.8 HO3D
    # frames above this visibility get no candidate; None: max_visibility under occ / or / none, else 1.0
    generate_max_visibility: float | None = Field(None, gt=0, le=1)
    mask_dilation_px: int = Field(3, ge=0)
    visible_weight: float = Field(0.5, ge=0, le=1)  # score = visible consistency * w + flexion * (1 - w)
    edge_weight: float = Field(0.3, ge=0, le=1)  # colour scorer: coverage term = colour * (1 - e) + depth-edge agreement * e
    # inpaint region: occluded hand + all visible object pixels (object removed), or the occluded hand only
    mask_region: Literal["hand_and_object", "occluded_hand"] = "hand_and_object"
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    controlnet: ControlNetConfig = ControlNetConfig()
    # Candidate scorer. colour: weight-free colour coverage + depth edges (scores in [0, 1]); pose_model:
    # UniHOPE's choice with a trained checkpoint of this project's model (an earlier build's `unihope train`
    # run folder or .safetensors file); its score is -pose error, so keep_margin is then in pose-error units.
    scorer: Literal["colour", "pose_model"] = "colour"
    pose_model_checkpoint: Path | None = None
    pose_flexion_space: Literal["3d", "2d"] = "3d"  # 3d: MANO joints vs the known 3-D pose (upstream); 2d: heatmap joints

    @model_validator(mode="after")
    def _check_betas(self) -> "DeocclusionConfig":
        if self.beta_min > self.beta_max:
            raise ValueError(f"deocclusion.beta_min ({self.beta_min}) must be <= beta_max ({self.beta_max})")
        if self.beta_policy == "search" and not self.beta_candidates:
            raise ValueError("deocclusion.beta_policy='search' needs a non-empty beta_candidates list")
        if self.scorer == "pose_model" and self.pose_model_checkpoint is None:
            raise ValueError("deocclusion.scorer='pose_model' needs deocclusion.pose_model_checkpoint (a training run "
                             "folder or checkpoint file)")
        return self


class StorageConfig(StageConfig):
    """Sharded Zarr v3 output."""

    shard_size: int = Field(256, ge=1, le=4096)  # samples per shard (one writer per shard)
    image_codec: Literal["zstd", "lz4"] = "zstd"
    compression_level: int = Field(3, ge=1, le=19)

    @model_validator(mode="before")
    @classmethod
    def _held_out_share_moved(cls, data):  # noqa: ANN001, ANN206 (raw YAML mapping)
        # One held-out split, chosen when a training reads the dataset (it is a hash of sequence keys
        # at read time, so the build never fixed it); a build config that still sets it says where it went.
        if isinstance(data, dict) and "val_fraction" in data:
            raise ValueError("storage.val_fraction was removed: the held-out share of sequences is chosen by "
                             "the training that reads the dataset; set data.val_fraction in the training config "
                             "(default 0.1) and delete it here")
        return data


class FlowConfig(StageConfig):
    """Orchestration: batching, retries, scale-out engine, fault injection."""

    frames_per_task: int = Field(256, ge=1)  # coarse tasks: orchestration stays a small share
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    max_workers: int = Field(2, ge=1)
    dask_address: str | None = None  # an existing Dask scheduler; None -> a LocalCluster
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)
    gpu_tag: str = "gpu"
    # Server-side limit of the gpu tag: the number of GPUs in the worker pool (one worker per GPU, pinned
    # with CUDA_VISIBLE_DEVICES; inside a process each batch holds one device, tasks/device_pool.py).
    gpu_concurrency: int = Field(1, ge=1)
    # "pack" or "pack:3" (one item): fails its first attempt; "annotate@hang" / "annotate:3@hang": hangs it
    # until its timeout (fault injection)
    fail_once: tuple[str, ...] = ()
    # Tasks that call EGL or CUDA give up after this long and are retried (a stuck driver call never
    # hangs a build). The defaults leave a wide margin over a 256-frame batch of each stage
    # (measured durations: docs/OPERATIONS.md, Timeouts).
    annotate_timeout_s: float = Field(1800.0, gt=0)
    deocclude_timeout_s: float = Field(7200.0, gt=0)
    work_dir: Path | None = None  # intermediate batches + result cache; None -> <out>/_work (needed for URL outputs)
    # torch intra-op CPU threads per worker, equal under every runner: the hand layer's float32 results
    # change in the last bit with the thread count, and a dataset must not depend on the runner
    torch_threads: int = Field(1, ge=1)


class PipelineConfig(StageConfig):
    """The whole build: YAML in configs/ sets these, the CLI may override the source and output."""

    schema_version: int = CONFIG_SCHEMA_VERSION
    name: str = "demo"
    source: SourceConfig = SourceConfig()
    hand: HandModelConfig = HandModelConfig()
    grasp: GraspConfig = GraspConfig()
    crop: CropConfig = CropConfig()
    render: RenderConfig = RenderConfig()
    deocclusion: DeocclusionConfig = DeocclusionConfig()
    storage: StorageConfig = StorageConfig()
    flow: FlowConfig = FlowConfig()

    @model_validator(mode="after")
    def _check_crop_feature_size(self) -> "PipelineConfig":
        if self.crop.size_px % self.render.feature_downsample:
            raise ValueError(
                f"crop.size_px={self.crop.size_px} must be a multiple of render.feature_downsample="
                f"{self.render.feature_downsample} (the feature maps are size_px / feature_downsample pixels)"
            )
        return self


def load_yaml_model(model_cls: type[M], path_or_text: str | Path) -> M:
    """Parse YAML (a path or the text itself) into `model_cls`, with an error a user can act on.

    Raises:
        ConfigError: when the file is missing, not YAML, or fails validation.
    """
    origin = "<text>"
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or (len(text) < 4096 and "\n" not in text and text.endswith((".yaml", ".yml"))):
        path = Path(path_or_text)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        origin, text = str(path), path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(origin, err)) from err


def describe_validation_error(origin: str, err: ValidationError) -> str:
    """A pydantic error as a user reads it: one line for one problem, one line per problem otherwise."""
    problems = [f"{'.'.join(str(p) for p in item['loc']) or '(top level)'}: {item['msg']}" for item in err.errors()]
    if len(problems) == 1:
        return f"{origin}: invalid configuration: {problems[0]}"
    return "\n".join([f"{origin}: invalid configuration ({len(problems)} problems):"] + [f"  - {p}" for p in problems])


class ConfigError(ValueError):
    """A configuration a user must fix before any work starts."""
