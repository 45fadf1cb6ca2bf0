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

SCHEMA_VERSION = 3  # 3: num_unet_evals, original_pose_error, deoccluded_pose_error; 2: strings as uint8 UTF-8, dimension_names, versions/
READABLE_SCHEMA_VERSIONS = (2, 3)  # a schema-2 shard reads with the fill value of every array added since (ArraySpec.since)

CHUNKING_SAMPLE = "sample"  # sharding codec, inner chunk = 1 sample, blosc/zstd
CHUNKING_COLUMN = "column"  # one chunk per shard group, zstd
MAX_BETA_CANDIDATES = 16  # candidate_betas / candidate_scores are padded with NaN to this length
HAND_SIDE_CODES = {"right": 0, "left": 1}
SAMPLE_DIM = "sample"
PATH_WIDTH_BYTES = 1024

# How a record value becomes a stored value and back (unihope.storage.records does both).
CODEC_PLAIN = "plain"  # stored as is (cast to the array's dtype); read back cast to the record field's type
CODEC_HAND_SIDE = "hand_side"  # "right" / "left" <-> HAND_SIDE_CODES
CODEC_PADDED = "padded"  # a vector of up to MAX_BETA_CANDIDATES values, NaN-padded; read back cut to its `count` array
CODEC_LENGTH = "length"  # the length of a vector field (what a CODEC_PADDED array's `count` names)
CODEC_PRESENT = "present"  # True when the optional record (`result`) exists; read back: None when False
CODECS = (CODEC_PLAIN, CODEC_HAND_SIDE, CODEC_PADDED, CODEC_LENGTH, CODEC_PRESENT)


@dataclass(frozen=True, slots=True)
class SameAs:
    """Fill value of an array that repeats another array of the same sample (e.g. image_deoccluded = image)."""

    array: str


@dataclass(frozen=True, slots=True)
class TrainField:
    """How a stored array enters a training batch (unihope.storage.paired.PairedDataset).

    `key` is the batch key ("" = the array's name), `dtype` the batch dtype ("str": a python str,
    collated to a list), `shape` the documented per-sample batch shape ("" = the stored one).
    """

    dtype: str
    meaning: str
    key: str = ""
    shape: str = ""


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One Zarr array of a shard group, and the record field it stores.

    `shape` entries are ints or the symbols "S" (crop size, px) and "F" (feature-map size,
    S // render.feature_downsample, px); `dims` names those axes (Zarr `dimension_names` after
    "sample"). `dtype` is a numpy dtype name, or "str" for UTF-8 strings (stored as `width_bytes`
    uint8 code units). `field` is the record field, a dotted path from AnnotatedFrame
    (`image`, `grasp.rre_deg`, `frame.K`, `crop.K`) or `result.<name>` for the DeocclusionResult
    (`result` alone: whether there is one); `codec` says how its value is stored (CODECS). `fill`
    is stored for a `result.*` field when the sample has no result (a scalar broadcast to the
    sample shape, or SameAs), and read for a shard older than `since` (schema version that added it).
    `train` puts the array into training batches.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    chunking: str  # CHUNKING_SAMPLE | CHUNKING_COLUMN
    units: str
    description: str
    field: str
    dims: tuple[str, ...] = ()
    codec: str = CODEC_PLAIN
    fill: object = None
    width_bytes: int = 0  # "str" arrays only
    count: str = ""  # CODEC_PADDED arrays only: the CODEC_LENGTH array that holds the vector's length
    since: int = 2
    train: TrainField | None = None

    def sample_shape(self, crop_size_px: int, feature_size_px: int) -> tuple[int, ...]:
        """Concrete per-sample shape for a crop of `crop_size_px` and maps of `feature_size_px`."""
        sizes = {"S": crop_size_px, "F": feature_size_px}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """Zarr `dimension_names`: "sample", then the per-sample axes (`<name>_utf8` for strings)."""
        return (SAMPLE_DIM, f"{self.name}_utf8") if self.dtype == "str" else (SAMPLE_DIM, *self.dims)


_S, _F = "S", "F"
_NAN = float("nan")
_CROP = ("y", "x")
_FEAT = ("feature_y", "feature_x")
_A = ArraySpec
_T = TrainField
ARRAYS: tuple[ArraySpec, ...] = (
    # -- images and per-pixel maps (sharded, one inner chunk per sample) --------------------------
    _A("image", "uint8", (_S, _S, 3), CHUNKING_SAMPLE, "RGB 0-255", "occluded crop (the input image)",
       "image", (*_CROP, "rgb"), train=_T("float32", "occluded crop, RGB in [0, 1], augmented", shape="(3, S, S)")),
    _A("image_deoccluded", "uint8", (_S, _S, 3), CHUNKING_SAMPLE, "RGB 0-255",
       "de-occluded crop; equals `image` when there is no de-occlusion result", "result.image_deoccluded",
       (*_CROP, "rgb"), fill=SameAs("image"),
       train=_T("float32", "de-occluded crop (= image when has_pair is False), same augmentation", shape="(3, S, S)")),
    _A("inpaint_mask", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "region the de-occluder regenerated",
       "result.inpaint_mask", _CROP, fill=False),
    _A("mask_hand", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "full hand silhouette (hand rendered alone)",
       "mask_hand", _CROP, train=_T("float32", "full hand silhouette, 0/1")),
    _A("mask_hand_visible", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "hand pixels not hidden by the object",
       "mask_hand_visible", _CROP),
    _A("mask_object", "bool", (_S, _S), CHUNKING_SAMPLE, "-", "visible object pixels", "mask_object", _CROP,
       train=_T("float32", "visible object pixels, 0/1")),
    _A("depth_hand", "float32", (_S, _S), CHUNKING_SAMPLE, "m", "hand-alone depth, 0 = background", "depth_hand", _CROP),
    _A("depth_scene", "float32", (_S, _S), CHUNKING_SAMPLE, "m", "hand + object depth, 0 = background",
       "depth_scene", _CROP),
    _A("hand_parts", "uint8", (_S, _S), CHUNKING_SAMPLE, "label", "0 none, 1 palm, 2..6 thumb..little (full silhouette)",
       "hand_parts", _CROP),
    _A("seg_map", "uint8", (_F, _F), CHUNKING_SAMPLE, "label", "Song et al.: 0 background, 1 hand, 2 object",
       "seg_map", _FEAT),
    _A("dense_map", "float32", (_F, _F, 3), CHUNKING_SAMPLE, "[0, 1]", "Song et al.: object NOC / hand vertex embedding",
       "dense_map", (*_FEAT, "dense_channel")),
    _A("relative_depth_map", "float32", (_F, _F), CHUNKING_SAMPLE, "[-1, 1]",
       "Song et al.: depth minus object-centre depth, scaled; 0 = background", "relative_depth_map", _FEAT),
    # -- occlusion ------------------------------------------------------------------------------
    _A("visibility", "float64", (), CHUNKING_COLUMN, "fraction", "visible / full hand pixels, 1 = unoccluded",
       "visibility", train=_T("float32", "visible / full hand pixels")),
    _A("occlusion_ratio", "float64", (), CHUNKING_COLUMN, "fraction", "1 - visibility", "occlusion_ratio"),
    _A("occlusion_bin", "uint8", (), CHUNKING_COLUMN, "bin", "0..3 on visibility: [0,.25], (.25,.5], (.5,.75], (.75,1]",
       "occlusion_bin"),
    _A("finger_visibility", "float32", (5,), CHUNKING_COLUMN, "fraction", "thumb..little", "finger_visibility",
       ("finger",)),
    # -- grasp ----------------------------------------------------------------------------------
    _A("grasp", "bool", (), CHUNKING_COLUMN, "-", "is_grasping (RRE/RTE rule or override)", "grasp.is_grasping",
       train=_T("int64", "1 grasping, 0 not")),
    _A("rre_deg", "float64", (), CHUNKING_COLUMN, "deg", "relative rotation error vs the reference frame",
       "grasp.rre_deg"),
    _A("rte_m", "float64", (), CHUNKING_COLUMN, "m", "relative translation error vs the reference frame", "grasp.rte_m"),
    _A("grasp_reference_key", "str", (), CHUNKING_COLUMN, "-", "sample key of the grasp reference frame",
       "grasp.reference_key", width_bytes=128),
    _A("grasp_source", "str", (), CHUNKING_COLUMN, "-", "'rule' | 'override'", "grasp.source", width_bytes=16),
    # -- de-occlusion ---------------------------------------------------------------------------
    _A("has_deocclusion", "bool", (), CHUNKING_COLUMN, "-", "a DeocclusionResult existed for this sample", "result",
       codec=CODEC_PRESENT),
    _A("keep", "bool", (), CHUNKING_COLUMN, "-", "the pair passed UniHOPE's filter (False without a result)",
       "result.keep", fill=False,
       train=_T("bool", "the stored `keep`: image_deoccluded is a usable de-occluded pair", key="has_pair")),
    _A("beta", "float64", (), CHUNKING_COLUMN, "-", "control strength used (NaN when none)", "result.beta", fill=_NAN),
    _A("deocclusion_score", "float64", (), CHUNKING_COLUMN, "score", "score of the kept candidate (NaN when none)",
       "result.deocclusion_score", fill=_NAN),
    _A("original_score", "float64", (), CHUNKING_COLUMN, "score", "score of the occluded input (NaN when none)",
       "result.original_score", fill=_NAN),
    _A("num_beta_candidates", "uint8", (), CHUNKING_COLUMN, "count", "valid entries of candidate_*",
       "result.candidate_betas", codec=CODEC_LENGTH, fill=0),
    _A("candidate_betas", "float32", (MAX_BETA_CANDIDATES,), CHUNKING_COLUMN, "-", "betas tried, NaN-padded",
       "result.candidate_betas", ("beta_candidate",), codec=CODEC_PADDED, fill=_NAN, count="num_beta_candidates"),
    _A("candidate_scores", "float32", (MAX_BETA_CANDIDATES,), CHUNKING_COLUMN, "score", "their scores, NaN-padded",
       "result.candidate_scores", ("beta_candidate",), codec=CODEC_PADDED, fill=_NAN, count="num_beta_candidates"),
    _A("deocclusion_reason", "str", (), CHUNKING_COLUMN, "-", "why kept / dropped ('no_result' without one)",
       "result.reason", fill="no_result", width_bytes=64),
    _A("deocclusion_backend", "str", (), CHUNKING_COLUMN, "-", "backend name ('' without a result)", "result.backend",
       fill="", width_bytes=64),
    _A("num_unet_evals", "int32", (), CHUNKING_COLUMN, "count",
       "UNet evaluations spent on the frame (0 without a result, for weight-free backends and in schema-2 stores)",
       "result.num_unet_evals", fill=0, since=3),
    _A("original_pose_error", "float64", (), CHUNKING_COLUMN, "error",
       "pose-model scorer: pose error of the occluded input (NaN for other scorers, without a result, in schema-2 stores)",
       "result.original_pose_error", fill=_NAN, since=3),
    _A("deoccluded_pose_error", "float64", (), CHUNKING_COLUMN, "error",
       "pose-model scorer: pose error of the kept candidate (NaN for other scorers, without a result, in schema-2 stores)",
       "result.deoccluded_pose_error", fill=_NAN, since=3),
    # -- hand -----------------------------------------------------------------------------------
    _A("mano_pose", "float32", (NUM_MANO_POSE,), CHUNKING_COLUMN, "rad",
       "axis-angle, 3 global + 45 joints, absolute, flat_hand_mean=True", "frame.mano_pose", ("mano_pose_param",),
       train=_T("float32", "axis-angle; global orientation rotated with the augmentation")),
    _A("mano_betas", "float32", (NUM_MANO_BETAS,), CHUNKING_COLUMN, "-", "MANO shape", "frame.mano_betas",
       ("mano_shape_param",), train=_T("float32", "MANO shape")),
    _A("mano_trans", "float32", (3,), CHUNKING_COLUMN, "m", "MANO transl, camera frame", "frame.mano_trans", ("xyz",),
       train=_T("float32", "m; adjusted so the hand layer reproduces joints_3d")),
    _A("hand_side", "uint8", (), CHUNKING_COLUMN, "code", "0 right, 1 left", "frame.hand_side", codec=CODEC_HAND_SIDE,
       train=_T("int64", "0 right, 1 left")),
    _A("joints_3d", "float32", (NUM_JOINTS, 3), CHUNKING_COLUMN, "m", "camera frame (OpenCV), DexYCB order",
       "frame.joints_3d", ("joint", "xyz"), train=_T("float32", "m, camera frame, rotated with the in-plane augmentation")),
    _A("joints_2d", "float32", (NUM_JOINTS, 2), CHUNKING_COLUMN, "crop px", "projected joints in the crop",
       "joints_2d", ("joint", "uv"), train=_T("float32", "crop px after augmentation")),
    _A("joints_2d_full", "float32", (NUM_JOINTS, 2), CHUNKING_COLUMN, "full px", "joints in the full image",
       "frame.joints_2d", ("joint", "uv")),
    # -- object ---------------------------------------------------------------------------------
    _A("object_id", "int32", (), CHUNKING_COLUMN, "YCB id", "1-21", "frame.object_id",
       train=_T("int64", "YCB id 1-21")),
    _A("object_name", "str", (), CHUNKING_COLUMN, "-", "e.g. 006_mustard_bottle", "frame.object_name", width_bytes=64),
    _A("object_pose", "float32", (3, 4), CHUNKING_COLUMN, "m", "[R|t] camera-from-object", "frame.object_pose",
       ("pose_row", "pose_col"), train=_T("float32", "[R|t] camera-from-object, rotated with the augmentation")),
    _A("object_keypoints_2d", "float32", (NUM_OBJECT_KEYPOINTS, 2), CHUNKING_COLUMN, "crop px",
       "centre, 8 box corners, 12 edge midpoints", "object_keypoints_2d", ("object_keypoint", "uv"),
       train=_T("float32", "crop px after augmentation")),
    # -- camera and crop ------------------------------------------------------------------------
    _A("K", "float64", (3, 3), CHUNKING_COLUMN, "px", "crop intrinsics", "crop.K", ("K_row", "K_col"),
       train=_T("float32", "crop intrinsics after augmentation (rotation leaves it unchanged)")),
    _A("K_full", "float64", (3, 3), CHUNKING_COLUMN, "px", "full-image intrinsics", "frame.K", ("K_row", "K_col")),
    _A("crop_affine", "float64", (2, 3), CHUNKING_COLUMN, "px",
       "full-image px -> crop px (the matrix cv2.warpAffine takes to cut the crop)", "crop.affine",
       ("affine_row", "affine_col")),
    _A("crop_box_xyxy", "float64", (4,), CHUNKING_COLUMN, "full px", "square crop box before resize", "crop.box_xyxy",
       ("box_xyxy",)),
    _A("image_size_wh", "int32", (2,), CHUNKING_COLUMN, "px", "full image (width, height)", "frame.image_size_wh",
       ("wh",)),
    # -- provenance -----------------------------------------------------------------------------
    _A("sample_key", "str", (), CHUNKING_COLUMN, "-", "the source's frame key (unique in a dataset)",
       "frame.sample_key", width_bytes=128,
       train=_T("str", "the source's frame key (a python str; collated to a list)", shape="-")),
    _A("sequence_key", "str", (), CHUNKING_COLUMN, "-", "sequence part of the key (train/val split unit)",
       "frame.sequence_key", width_bytes=128),
    _A("dataset", "str", (), CHUNKING_COLUMN, "-", "'dexycb' | 'ho3d'", "frame.dataset", width_bytes=16),
    _A("serial", "str", (), CHUNKING_COLUMN, "-", "camera serial ('0' for HO3D)", "frame.serial", width_bytes=32),
    _A("frame_idx", "int32", (), CHUNKING_COLUMN, "-", "frame number in its sequence", "frame.frame_idx"),
    _A("image_path", "str", (), CHUNKING_COLUMN, "-", "source image file (provenance only)", "frame.image_path",
       width_bytes=PATH_WIDTH_BYTES),
    _A("depth_path", "str", (), CHUNKING_COLUMN, "-", "source depth file (provenance only)", "frame.depth_path",
       width_bytes=PATH_WIDTH_BYTES),
    _A("object_mesh_path", "str", (), CHUNKING_COLUMN, "-", "object mesh file (provenance only)",
       "frame.object_mesh_path", width_bytes=PATH_WIDTH_BYTES),
)
ARRAYS_BY_NAME: dict[str, ArraySpec] = {spec.name: spec for spec in ARRAYS}
ARRAY_NAMES: tuple[str, ...] = tuple(ARRAYS_BY_NAME)
# Standard Zarr v3 readers (tensorstore, xarray) need core data types and named dimensions.
# A "str" field is stored as fixed-width UTF-8 code units: uint8 (N, width), NUL-padded (a Zarr v3
# core type every reader supports; zarr-python's string types are extensions tensorstore refuses).
# Widths are bytes per value; a longer value is refused at write time, naming the field.
STRING_WIDTH_BYTES: dict[str, int] = {spec.name: spec.width_bytes for spec in ARRAYS if spec.dtype == "str"}
# Zarr `dimension_names` of every array (first = "sample"); one name means one size across a shard group,
# so xarray can open a group (and concatenate a version's groups along "sample").
ARRAY_DIMS: dict[str, tuple[str, ...]] = {spec.name: spec.dimension_names for spec in ARRAYS}


@dataclass(frozen=True, slots=True)
class Unstored:
    """A record field that has no array: why, and how a reader rebuilds it.

    `copy_of` names the field path whose value it repeats, `size_of` the field path whose first
    axis length it is; neither = the record's default value.
    """

    reason: str
    copy_of: str = ""
    size_of: str = ""


UNSTORED: dict[str, Unstored] = {
    "frame.grasp_reference_pose": Unstored("input of the grasp stage; its outcome is stored as grasp.*"),
    "frame.grasp_reference_key": Unstored("input of the grasp stage; the key it used is grasp.reference_key"),
    "grasp.sample_key": Unstored("always the frame's key", copy_of="frame.sample_key"),
    "result.sample_key": Unstored("always the frame's key", copy_of="frame.sample_key"),
    "crop.size_px": Unstored("the stored crop's side", size_of="image"),
}

# Keys of a training batch computed by unihope.storage.paired.PairedDataset, not read from an array:
# name -> (dtype, shape, meaning).
COMPUTED_SAMPLE_FIELDS: dict[str, tuple[str, str, str]] = {
    "hand_box_xyxy": ("float32", "(4,)", "crop px, from joints_2d after augmentation"),
    "object_box_xyxy": ("float32", "(4,)", "crop px, from object_keypoints_2d after augmentation"),
    "index": ("int64", "()", "index into the PairedDataset"),
}


def _shape_text(shape: tuple[int | str, ...]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(str(d) for d in shape)})"


def sample_fields(arrays: tuple[ArraySpec, ...]) -> dict[str, tuple[str, str, str]]:
    """Keys of one training sample, key -> (dtype, shape, meaning): every array with `train`, then the computed ones."""
    fields = {(spec.train.key or spec.name): (spec.train.dtype, spec.train.shape or _shape_text(spec.shape),
                                              spec.train.meaning)
              for spec in arrays if spec.train is not None}
    return {**fields, **COMPUTED_SAMPLE_FIELDS}


# Keys of one training sample as unihope.storage.paired.PairedDataset returns it (torch tensors unless noted),
# derived from ARRAYS: (dtype, shape, meaning); S = crop size. The model's training loop is built against these names.
SAMPLE_FIELDS: dict[str, tuple[str, str, str]] = sample_fields(ARRAYS)
SAMPLE_KEYS: tuple[str, ...] = tuple(SAMPLE_FIELDS)


@dataclass(frozen=True)
class RecordSchema:
    """The records and the arrays that store them: what the writer, the view and the paired reader are built from.

    `record_types` maps a field-path prefix to its record class ("" = the annotated frame,
    "result" = the de-occlusion result). A copy with one more array (and a record type with one
    more field) stores, reads back and trains on a new label without a change to writer or reader.
    """

    version: int
    arrays: tuple[ArraySpec, ...]
    unstored: dict[str, Unstored]
    record_types: dict[str, type]

    @property
    def by_name(self) -> dict[str, ArraySpec]:
        return {spec.name: spec for spec in self.arrays}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.arrays)

    @property
    def sample_fields(self) -> dict[str, tuple[str, str, str]]:
        return sample_fields(self.arrays)


SCHEMA = RecordSchema(
    version=SCHEMA_VERSION, arrays=ARRAYS, unstored=UNSTORED,
    record_types={"": AnnotatedFrame, "frame": FrameRecord, "grasp": GraspLabel, "crop": Crop,
                  "result": DeocclusionResult},
)


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
