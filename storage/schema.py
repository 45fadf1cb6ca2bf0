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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True, slots=True)
class StageSummary:
    """Small result a task returns: counts, where its output went, skips by reason."""

    stage: str
    output_path: str
    num_in: int
    num_out: int
    skips_by_reason: dict[str, int] = field(default_factory=dict)
