"""The one schema: record types exchanged between stages and (below) the Zarr arrays of a dataset.

Conventions used by every record:
- camera frame = OpenCV (x right, y down, z forward), metres;
- pixel coordinates (u, v) with (0, 0) at the centre of the top-left pixel;
- `sample_key` is the source's frame path without suffix:
  DexYCB `<subject>/<sequence>/<serial>/<frame:06d>`, HO3D `<split>/<seq>/<frame:04d>`;
- `mano_pose` is 48 axis-angle values (3 global orientation + 45 finger joints), absolute
  (the PCA mean already added), for the hand layer with flat_hand_mean=True.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

NUM_JOINTS = 21
NUM_MANO_POSE = 48
NUM_MANO_BETAS = 10
NUM_OBJECT_KEYPOINTS = 21  # centre, 8 box corners, 12 edge midpoints
FINGER_NAMES = ("thumb", "index", "middle", "ring", "little")

# Hand-part labels of the rendered `hand_parts` map (0 = not hand).
HAND_PART_PALM = 1  # wrist and palm
HAND_PART_FINGER_FIRST = 2  # thumb = 2, index = 3, middle = 4, ring = 5, little = 6

# Song et al. segmentation labels
SEG_BACKGROUND, SEG_HAND, SEG_OBJECT = 0, 1, 2


class SkipReason(str, enum.Enum):
    """Why a frame left the pipeline. Counted per stage and written to skips.jsonl."""

    MISSING_FILE = "missing_file"
    CORRUPT_FILE = "corrupt_file"
    NAN_VALUE = "nan_value"
    NO_VALID_HAND = "no_valid_hand"
    MESH_MISSING = "mesh_missing"
    DEGENERATE_POSE = "degenerate_pose"
    HAND_OUTSIDE_IMAGE = "hand_outside_image"
    HAND_NOT_VISIBLE = "hand_not_visible"
    NO_REFERENCE_FRAME = "no_reference_frame"
    WRONG_RESOLUTION = "wrong_resolution"  # colour image size differs from the camera's (its depth image's)
    OUTSIDE_ROOT = "outside_root"  # a (symlinked) annotation file whose real path leaves the dataset root


@dataclass(frozen=True, slots=True)
class Skip:
    """A frame that a stage could not process, with the reason."""

    sample_key: str
    stage: str  # "source" | "grasp" | "annotate" | "deocclude" | "pack"
    reason: SkipReason
    detail: str = ""

    def to_json(self) -> dict:
        return {"sample_key": self.sample_key, "stage": self.stage, "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class FrameRef:
    """A cheap pointer to one frame, listed before any file is parsed."""

    sample_key: str
    sequence_key: str  # DexYCB `<subject>/<sequence>`, HO3D `<split>/<seq>`
    serial: str  # camera serial; HO3D: "0"
    frame_idx: int


@dataclass(frozen=True, slots=True, eq=False)
class FrameRecord:
    """One frame as a source reader yields it (all labels in the camera frame)."""

    sample_key: str
    dataset: str  # "dexycb" | "ho3d"
    sequence_key: str
    serial: str
    frame_idx: int
    image_path: str
    depth_path: str
    image_size_wh: tuple[int, int]  # (width, height) px of the full image
    K: np.ndarray  # (3, 3) float64 intrinsics, px
    hand_side: str  # "right" | "left"
    mano_pose: np.ndarray  # (48,) float32 axis-angle, absolute
    mano_betas: np.ndarray  # (10,) float32
    mano_trans: np.ndarray  # (3,) float32, metres (smplx `transl`)
    joints_3d: np.ndarray  # (21, 3) float32, camera frame, metres, DexYCB joint order
    joints_2d: np.ndarray  # (21, 2) float32, full-image px
    object_id: int  # YCB id 1-21 (HO3D: the same YCB id from objName)
    object_name: str  # e.g. "006_mustard_bottle"
    object_mesh_path: str
    object_pose: np.ndarray  # (3, 4) float32 [R|t] camera-from-object, metres
    # Grasp reference (UniHOPE): the grasped object's pose at frame 0 of the same sequence and camera,
    # read from that frame's label file whatever its hand status or whether it is loaded itself.
    # Consumed by the grasp stage (its result is GraspLabel); not stored in shards. None: the source
    # gives none, and the grasp stage falls back to the group's earliest loaded frame.
    grasp_reference_pose: np.ndarray | None = None  # (3, 4) float32 [R|t] camera-from-object, metres
    grasp_reference_key: str = ""  # sample key of that frame 0

    def __post_init__(self) -> None:
        if self.grasp_reference_pose is not None and np.shape(self.grasp_reference_pose) != (3, 4):
            raise ValueError(
                f"{self.sample_key}: grasp_reference_pose must have shape (3, 4), got {np.shape(self.grasp_reference_pose)}"
            )
        if self.hand_side not in ("right", "left"):
            raise ValueError(f"{self.sample_key}: hand_side must be 'right' or 'left', got {self.hand_side!r}")
        for name, shape in (
            ("K", (3, 3)),
            ("mano_pose", (NUM_MANO_POSE,)),
            ("mano_betas", (NUM_MANO_BETAS,)),
            ("mano_trans", (3,)),
            ("joints_3d", (NUM_JOINTS, 3)),
            ("joints_2d", (NUM_JOINTS, 2)),
            ("object_pose", (3, 4)),
        ):
            value = getattr(self, name)
            if np.shape(value) != shape:
                raise ValueError(f"{self.sample_key}: {name} must have shape {shape}, got {np.shape(value)}")


@dataclass(frozen=True, slots=True)
class GraspLabel:
    """Grasp state of one frame from the object's motion against its sequence's first frame."""

    sample_key: str
    rre_deg: float  # relative rotation error vs the reference frame, degrees
    rte_m: float  # relative translation error vs the reference frame, metres
    is_grasping: bool
    reference_key: str  # sample key of the frame the motion is measured against
    source: str = "rule"  # "rule" | "override"


@dataclass(frozen=True, slots=True, eq=False)
class Crop:
    """A square crop cut from the full image; `affine` maps full-image px to crop px."""

    size_px: int
    affine: np.ndarray  # (2, 3) float64, the matrix cv2.warpAffine takes to cut the crop
    K: np.ndarray  # (3, 3) float64 intrinsics of the crop
    box_xyxy: np.ndarray  # (4,) float64 square box in full-image px (before resize)


@dataclass(frozen=True, slots=True, eq=False)
class AnnotatedFrame:
    """A frame after grasp labelling, cropping and rendered annotation (all maps at crop size S)."""

    frame: FrameRecord
    grasp: GraspLabel
    crop: Crop
    image: np.ndarray  # (S, S, 3) uint8 RGB, the occluded crop
    mask_hand: np.ndarray  # (S, S) bool, full hand silhouette (hand rendered alone)
    mask_hand_visible: np.ndarray  # (S, S) bool, hand pixels not hidden by the object
    mask_object: np.ndarray  # (S, S) bool, visible object pixels (scene render)
    depth_hand: np.ndarray  # (S, S) float32 metres, hand alone, 0 = background
    depth_scene: np.ndarray  # (S, S) float32 metres, hand + object, 0 = background
    hand_parts: np.ndarray  # (S, S) uint8: 0 none, 1 palm, 2..6 thumb..little (full silhouette)
    visibility: float  # visible / full hand pixels, 1.0 = unoccluded
    occlusion_ratio: float  # 1 - visibility
    occlusion_bin: int  # 0..3: [0,.25], (.25,.5], (.5,.75], (.75,1] on visibility
    finger_visibility: np.ndarray  # (5,) float32, thumb..little
    joints_2d: np.ndarray  # (21, 2) float32, crop px
    object_keypoints_2d: np.ndarray  # (21, 2) float32, crop px
    seg_map: np.ndarray  # (S/f, S/f) uint8, SEG_BACKGROUND / SEG_HAND / SEG_OBJECT
    dense_map: np.ndarray  # (S/f, S/f, 3) float32 in [0, 1]: object NOC / hand vertex embedding
    relative_depth_map: np.ndarray  # (S/f, S/f) float32 in [-1, 1], 0 = background


@dataclass(frozen=True, slots=True, eq=False)
class DeocclusionResult:
    """What the de-occluder made of one annotated crop."""

    sample_key: str
    image_deoccluded: np.ndarray  # (S, S, 3) uint8 RGB; equals the input outside the inpaint mask
    inpaint_mask: np.ndarray  # (S, S) bool, the region that was regenerated
    beta: float  # control strength used (nan for backends without one)
    candidate_betas: np.ndarray  # (C,) float32, betas tried (C = 1 unless policy = search)
    candidate_scores: np.ndarray  # (C,) float32, score of each candidate (higher = better)
    original_score: float  # score of the occluded input crop
    deocclusion_score: float  # score of the kept candidate
    keep: bool  # UniHOPE's filter: occluded enough and better than the original by the margin
    reason: str  # why kept / dropped, e.g. "kept", "not_occluded", "no_gain"
    backend: str = ""
    num_unet_evals: int = 0  # UNet evaluations spent on this frame (each runs every ControlNet once; CFG counts 2)
    original_pose_error: float = float("nan")  # pose-model scorer: pose error on the input (nan for other scorers)
    deoccluded_pose_error: float = float("nan")  # pose-model scorer: pose error on the kept candidate


@dataclass(frozen=True, slots=True)
class StageSummary:
    """Small result a task returns: counts, where its output went, skips by reason."""

    stage: str
    output_path: str
    num_in: int
    num_out: int
    skips_by_reason: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Zarr arrays of a packed dataset (owned by storage/; documented in docs/DATASET.md).
#
# Layout of one dataset (a local folder or an fsspec URL):
#   zarr.json                          root group; dataset-level attrs (written by `finalize`)
#   manifest.json                      newest-version pointer (written last; unihope.storage.versions)
#   versions/<version_id>.json         one immutable manifest per version: shards, counts, key ranges, checksums
#   skips.jsonl                        one Skip per line, every stage
#   shards/shard-00000.commit.json     per-shard commit record; its presence IS the commit
#   shards/shard-00000.<attempt>/      one Zarr v3 group per shard, one array per field below,
#                                      first axis = sample (0..num_samples-1 within the shard)
# Chunking: "sample" arrays use Zarr's sharding codec with the whole shard group's array as one
# shard object and one inner chunk per sample (a reader fetches one sample with one byte-range
# read); "column" arrays (scalars and small vectors) are one plain chunk per shard, read whole and
# kept in memory by readers.
# ---------------------------------------------------------------------------------------------------

SCHEMA_VERSION = 2  # 2: strings as uint8 UTF-8 code units, dimension_names, versions/

CHUNKING_SAMPLE = "sample"  # sharding codec, inner chunk = 1 sample, blosc/zstd
CHUNKING_COLUMN = "column"  # one chunk per shard group, zstd
MAX_BETA_CANDIDATES = 16  # candidate_betas / candidate_scores are padded with NaN to this length
HAND_SIDE_CODES = {"right": 0, "left": 1}


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One Zarr array of a shard group: per-sample shape, dtype, chunking and units.

    `shape` entries are ints or the symbols "S" (crop size, px) and "F" (feature-map size,
    S // render.feature_downsample, px). `dtype` is a numpy dtype name, or "str" for UTF-8
    strings (stored as fixed-width uint8 code units, STRING_WIDTH_BYTES).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    chunking: str  # CHUNKING_SAMPLE | CHUNKING_COLUMN
    units: str
    description: str

    def sample_shape(self, crop_size_px: int, feature_size_px: int) -> tuple[int, ...]:
        """Concrete per-sample shape for a crop of `crop_size_px` and maps of `feature_size_px`."""
        sizes = {"S": crop_size_px, "F": feature_size_px}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


_S, _F = "S", "F"
ARRAYS: tuple[ArraySpec, ...] = (
    # -- images and per-pixel maps (sharded, one inner chunk per sample) --------------------------
    ArraySpec("image", "uint8", (_S, _S, 3), CHUNKING_SAMPLE, "RGB 0-255", "occluded crop (the input image)"),
    ArraySpec("image_deoccluded", "uint8", (_S, _S, 3), CHUNKING_SAMPLE, "RGB 0-255",
              "de-occluded crop; equals `image` when there is no de-occlusion result"),
    ArraySpec("inpaint_mask", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "region the de-occluder regenerated"),
    ArraySpec("mask_hand", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "full hand silhouette (hand rendered alone)"),
    ArraySpec("mask_hand_visible", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "hand pixels not hidden by the object"),
    ArraySpec("mask_object", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "visible object pixels"),
    ArraySpec("depth_hand", "float32", (_S, _S), CHUNKING_SAMPLE, "m", "hand-alone depth, 0 = background"),
    ArraySpec("depth_scene", "float32", (_S, _S), CHUNKING_SAMPLE, "m", "hand + object depth, 0 = background"),
    ArraySpec("hand_parts", "uint8", (_S, _S), CHUNKING_SAMPLE, "label",
              "0 none, 1 palm, 2..6 thumb..little (full silhouette)"),
    ArraySpec("seg_map", "uint8", (_F, _F), CHUNKING_SAMPLE, "label", "Song et al.: 0 background, 1 hand, 2 object"),
    ArraySpec("dense_map", "float32", (_F, _F, 3), CHUNKING_SAMPLE, "[0, 1]",
              "Song et al.: object NOC / hand vertex embedding"),
    ArraySpec("relative_depth_map", "float32", (_F, _F), CHUNKING_SAMPLE, "[-1, 1]",
              "Song et al.: depth minus object-centre depth, scaled; 0 = background"),
    # -- occlusion ------------------------------------------------------------------------------
    ArraySpec("visibility", "float64", (), CHUNKING_COLUMN, "fraction", "visible / full hand pixels, 1 = unoccluded"),
    ArraySpec("occlusion_ratio", "float64", (), CHUNKING_COLUMN, "fraction", "1 - visibility"),
    ArraySpec("occlusion_bin", "uint8", (), CHUNKING_COLUMN, "bin", "0..3 on visibility: [0,.25], (.25,.5], (.5,.75], (.75,1]"),
    ArraySpec("finger_visibility", "float32", (5,), CHUNKING_COLUMN, "fraction", "thumb..little"),
    # -- grasp ----------------------------------------------------------------------------------
    ArraySpec("grasp", "bool", (), CHUNKING_COLUMN, "-", "is_grasping (RRE/RTE rule or override)"),
    ArraySpec("rre_deg", "float64", (), CHUNKING_COLUMN, "deg", "relative rotation error vs the reference frame"),
    ArraySpec("rte_m", "float64", (), CHUNKING_COLUMN, "m", "relative translation error vs the reference frame"),
    ArraySpec("grasp_reference_key", "str", (), CHUNKING_COLUMN, "-", "sample key of the grasp reference frame"),
    ArraySpec("grasp_source", "str", (), CHUNKING_COLUMN, "-", "'rule' | 'override'"),
    # -- de-occlusion ---------------------------------------------------------------------------
    ArraySpec("has_deocclusion", "bool", (), CHUNKING_COLUMN, "-", "a DeocclusionResult existed for this sample"),
    ArraySpec("keep", "bool", (), CHUNKING_COLUMN, "-", "the pair passed UniHOPE's filter (False without a result)"),
    ArraySpec("beta", "float64", (), CHUNKING_COLUMN, "-", "control strength used (NaN when none)"),
    ArraySpec("deocclusion_score", "float64", (), CHUNKING_COLUMN, "score", "score of the kept candidate (NaN when none)"),
    ArraySpec("original_score", "float64", (), CHUNKING_COLUMN, "score", "score of the occluded input (NaN when none)"),
    ArraySpec("num_beta_candidates", "uint8", (), CHUNKING_COLUMN, "count", "valid entries of candidate_*"),
    ArraySpec("candidate_betas", "float32", (MAX_BETA_CANDIDATES,), CHUNKING_COLUMN, "-", "betas tried, NaN-padded"),
    ArraySpec("candidate_scores", "float32", (MAX_BETA_CANDIDATES,), CHUNKING_COLUMN, "score", "their scores, NaN-padded"),
    ArraySpec("deocclusion_reason", "str", (), CHUNKING_COLUMN, "-", "why kept / dropped ('no_result' without one)"),
    ArraySpec("deocclusion_backend", "str", (), CHUNKING_COLUMN, "-", "backend name ('' without a result)"),
    # -- hand -----------------------------------------------------------------------------------
    ArraySpec("mano_pose", "float32", (NUM_MANO_POSE,), CHUNKING_COLUMN, "rad",
              "axis-angle, 3 global + 45 joints, absolute, flat_hand_mean=True"),
    ArraySpec("mano_betas", "float32", (NUM_MANO_BETAS,), CHUNKING_COLUMN, "-", "MANO shape"),
    ArraySpec("mano_trans", "float32", (3,), CHUNKING_COLUMN, "m", "MANO transl, camera frame"),
    ArraySpec("hand_side", "uint8", (), CHUNKING_COLUMN, "code", "0 right, 1 left"),
    ArraySpec("joints_3d", "float32", (NUM_JOINTS, 3), CHUNKING_COLUMN, "m", "camera frame (OpenCV), DexYCB order"),
    ArraySpec("joints_2d", "float32", (NUM_JOINTS, 2), CHUNKING_COLUMN, "crop px", "projected joints in the crop"),
    ArraySpec("joints_2d_full", "float32", (NUM_JOINTS, 2), CHUNKING_COLUMN, "full px", "joints in the full image"),
    # -- object ---------------------------------------------------------------------------------
    ArraySpec("object_id", "int32", (), CHUNKING_COLUMN, "YCB id", "1-21"),
    ArraySpec("object_name", "str", (), CHUNKING_COLUMN, "-", "e.g. 006_mustard_bottle"),
    ArraySpec("object_pose", "float32", (3, 4), CHUNKING_COLUMN, "m", "[R|t] camera-from-object"),
    ArraySpec("object_keypoints_2d", "float32", (NUM_OBJECT_KEYPOINTS, 2), CHUNKING_COLUMN, "crop px",
              "centre, 8 box corners, 12 edge midpoints"),
    # -- camera and crop ------------------------------------------------------------------------
    ArraySpec("K", "float64", (3, 3), CHUNKING_COLUMN, "px", "crop intrinsics"),
    ArraySpec("K_full", "float64", (3, 3), CHUNKING_COLUMN, "px", "full-image intrinsics"),
    ArraySpec("crop_affine", "float64", (2, 3), CHUNKING_COLUMN, "px",
              "full-image px -> crop px (the matrix cv2.warpAffine takes to cut the crop)"),
    ArraySpec("crop_box_xyxy", "float64", (4,), CHUNKING_COLUMN, "full px", "square crop box before resize"),
    ArraySpec("image_size_wh", "int32", (2,), CHUNKING_COLUMN, "px", "full image (width, height)"),
    # -- provenance -----------------------------------------------------------------------------
    ArraySpec("sample_key", "str", (), CHUNKING_COLUMN, "-", "the source's frame key (unique in a dataset)"),
    ArraySpec("sequence_key", "str", (), CHUNKING_COLUMN, "-", "sequence part of the key (train/val split unit)"),
    ArraySpec("dataset", "str", (), CHUNKING_COLUMN, "-", "'dexycb' | 'ho3d'"),
    ArraySpec("serial", "str", (), CHUNKING_COLUMN, "-", "camera serial ('0' for HO3D)"),
    ArraySpec("frame_idx", "int32", (), CHUNKING_COLUMN, "-", "frame number in its sequence"),
    ArraySpec("image_path", "str", (), CHUNKING_COLUMN, "-", "source image file (provenance only)"),
    ArraySpec("depth_path", "str", (), CHUNKING_COLUMN, "-", "source depth file (provenance only)"),
    ArraySpec("object_mesh_path", "str", (), CHUNKING_COLUMN, "-", "object mesh file (provenance only)"),
)
ARRAYS_BY_NAME: dict[str, ArraySpec] = {spec.name: spec for spec in ARRAYS}
ARRAY_NAMES: tuple[str, ...] = tuple(ARRAYS_BY_NAME)

# Standard Zarr v3 readers (tensorstore, xarray) need core data types and named dimensions.
# A "str" field is stored as fixed-width UTF-8 code units: uint8 (N, width), NUL-padded (a Zarr v3
# core type every reader supports; zarr-python's string types are extensions tensorstore refuses).
# Widths are bytes per value; a longer value is refused at write time, naming the field.
PATH_WIDTH_BYTES = 1024
STRING_WIDTH_BYTES: dict[str, int] = {
    "grasp_reference_key": 128, "grasp_source": 16, "deocclusion_reason": 64, "deocclusion_backend": 64,
    "object_name": 64, "sample_key": 128, "sequence_key": 128, "dataset": 16, "serial": 32,
    "image_path": PATH_WIDTH_BYTES, "depth_path": PATH_WIDTH_BYTES, "object_mesh_path": PATH_WIDTH_BYTES,
}
SAMPLE_DIM = "sample"
_CROP_DIMS = ("y", "x")
_FEATURE_DIMS = ("feature_y", "feature_x")
# Zarr `dimension_names` of every array (first = "sample"); one name means one size across a shard group,
# so xarray can open a group (and concatenate a version's groups along "sample").
ARRAY_DIMS: dict[str, tuple[str, ...]] = {
    "image": (SAMPLE_DIM, *_CROP_DIMS, "rgb"), "image_deoccluded": (SAMPLE_DIM, *_CROP_DIMS, "rgb"),
    **{name: (SAMPLE_DIM, *_CROP_DIMS) for name in ("inpaint_mask", "mask_hand", "mask_hand_visible", "mask_object",
                                                     "depth_hand", "depth_scene", "hand_parts")},
    "seg_map": (SAMPLE_DIM, *_FEATURE_DIMS), "relative_depth_map": (SAMPLE_DIM, *_FEATURE_DIMS),
    "dense_map": (SAMPLE_DIM, *_FEATURE_DIMS, "dense_channel"),
    "finger_visibility": (SAMPLE_DIM, "finger"),
    "candidate_betas": (SAMPLE_DIM, "beta_candidate"), "candidate_scores": (SAMPLE_DIM, "beta_candidate"),
    "mano_pose": (SAMPLE_DIM, "mano_pose_param"), "mano_betas": (SAMPLE_DIM, "mano_shape_param"),
    "mano_trans": (SAMPLE_DIM, "xyz"), "joints_3d": (SAMPLE_DIM, "joint", "xyz"),
    "joints_2d": (SAMPLE_DIM, "joint", "uv"), "joints_2d_full": (SAMPLE_DIM, "joint", "uv"),
    "object_pose": (SAMPLE_DIM, "pose_row", "pose_col"),
    "object_keypoints_2d": (SAMPLE_DIM, "object_keypoint", "uv"),
    "K": (SAMPLE_DIM, "K_row", "K_col"), "K_full": (SAMPLE_DIM, "K_row", "K_col"),
    "crop_affine": (SAMPLE_DIM, "affine_row", "affine_col"), "crop_box_xyxy": (SAMPLE_DIM, "box_xyxy"),
    "image_size_wh": (SAMPLE_DIM, "wh"),
    **{name: (SAMPLE_DIM, f"{name}_utf8") for name in STRING_WIDTH_BYTES},
    **{spec.name: (SAMPLE_DIM,) for spec in ARRAYS if spec.shape == () and spec.dtype != "str"},
}

# Keys of one training sample as unihope.storage.paired.PairedDataset returns it (torch tensors unless noted).
# (dtype, shape, meaning); S = crop size. The model's training loop is built against these names.
SAMPLE_FIELDS: dict[str, tuple[str, str, str]] = {
    "image": ("float32", "(3, S, S)", "occluded crop, RGB in [0, 1], augmented"),
    "image_deoccluded": ("float32", "(3, S, S)", "de-occluded crop (= image when has_pair is False), same augmentation"),
    "has_pair": ("bool", "()", "the stored `keep`: image_deoccluded is a usable de-occluded pair"),
    "mask_hand": ("float32", "(S, S)", "full hand silhouette, 0/1"),
    "mask_object": ("float32", "(S, S)", "visible object pixels, 0/1"),
    "joints_2d": ("float32", "(21, 2)", "crop px after augmentation"),
    "joints_3d": ("float32", "(21, 3)", "m, camera frame, rotated with the in-plane augmentation"),
    "mano_pose": ("float32", "(48,)", "axis-angle; global orientation rotated with the augmentation"),
    "mano_betas": ("float32", "(10,)", "MANO shape"),
    "mano_trans": ("float32", "(3,)", "m; adjusted so the hand layer reproduces joints_3d"),
    "hand_side": ("int64", "()", "0 right, 1 left"),
    "grasp": ("int64", "()", "1 grasping, 0 not"),
    "object_keypoints_2d": ("float32", "(21, 2)", "crop px after augmentation"),
    "object_pose": ("float32", "(3, 4)", "[R|t] camera-from-object, rotated with the augmentation"),
    "object_id": ("int64", "()", "YCB id 1-21"),
    "K": ("float32", "(3, 3)", "crop intrinsics after augmentation (rotation leaves it unchanged)"),
    "visibility": ("float32", "()", "visible / full hand pixels"),
    "hand_box_xyxy": ("float32", "(4,)", "crop px, from joints_2d after augmentation"),
    "object_box_xyxy": ("float32", "(4,)", "crop px, from object_keypoints_2d after augmentation"),
    "sample_key": ("str", "-", "the source's frame key (a python str; collated to a list)"),
    "index": ("int64", "()", "index into the PairedDataset"),
}
SAMPLE_KEYS: tuple[str, ...] = tuple(SAMPLE_FIELDS)


@dataclass(frozen=True, slots=True)
class DatasetAttrs:
    """Dataset-level attributes stored in every shard group and the root group."""

    name: str  # dataset (build) name, e.g. "demo"
    source: str  # where frames came from, e.g. "synthetic:dexycb" or "dexycb:/data/dex-ycb"
    config: dict = field(default_factory=dict)  # resolved PipelineConfig as JSON-able dict
    config_hash: str = ""  # PipelineConfig.config_hash()
    code_version: str = ""  # package version (+ git revision when known)
    hand_model: dict = field(default_factory=dict)  # unihope.hand_identity.HandModelIdentity.to_json(); {} = older build

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "config": self.config,
                "config_hash": self.config_hash, "code_version": self.code_version, "hand_model": self.hand_model}


@dataclass(frozen=True, slots=True)
class ShardCommit:
    """The commit record of one shard (`shards/shard-XXXXX.commit.json`): written last, it IS the commit."""

    shard_idx: int
    data_path: str  # shard group, relative to the dataset root
    num_samples: int
    first_key: str
    last_key: str
    keys_sha256: str  # sha256 of the shard's sample keys joined by "\n"
    input_fingerprint: str  # sha256 of every array written; an equal rerun is a no-op
    files_sha256: dict[str, str]  # stored object (relative to data_path) -> sha256 of its bytes
    digest_sha256: str  # sha256 over the sorted "<file> <sha256>" lines
    num_bytes: int  # bytes stored for this shard
    crop_size_px: int
    schema_version: int = SCHEMA_VERSION
    created_utc: str = ""

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, data: dict) -> "ShardCommit":
        return cls(**{name: data[name] for name in cls.__slots__ if name in data})


@dataclass(frozen=True, slots=True)
class Manifest:
    """A dataset version (`versions/<version_id>.json`): the committed shards it references, immutable."""

    schema_version: int
    attrs: DatasetAttrs
    shards: tuple[ShardCommit, ...]
    num_samples: int
    missing_shard_indices: tuple[int, ...]  # gaps in 0..max shard_idx (a writer never committed)
    skips_by_reason: dict[str, int]
    created_utc: str = ""
    version_id: str = ""  # digest of the referenced shards (unihope.storage.versions.version_digest); "" = not a version
    version_seq: int = 0  # 1 for a store's first version, +1 per committed version
    parent_version_id: str = ""  # the newest version when this one was committed ("" for the first)
