"""Synthetic hand-object sequences written in DexYCB's (or HO3D_v2's) exact on-disk layout, plus truth.

Each sequence: a table with two or three YCB stand-ins; a MANO hand (right or left) approaches the
grasped object with open fingers (approach), closes its fingers around it (close), then lifts and
turns it; the object moves rigidly with the hand (lift). The grasp is planned on the object's grip
proxy: the palm is placed against the object and every finger curls until it touches the surface,
so the fingers wrap around the object and the object hides parts of the hand in many views.

Beside the dataset, `truth/` holds what only the generator knows (never read by a stage):
`grasp.json` (sample key -> grasping, from the motion phases), `phases.json`, `visibility.json`
(visible / full hand pixels per view) and an object-free rendering of every view (the true
de-occluded image: same camera, lights and background, the grasped object removed).

With `SyntheticConfig.quirks` (DexYCB layout) the dataset also has what real DexYCB has beyond the
files the pipeline reads: frames whose hand is not annotated (`pose_m` all 0, `joint_3d` / `joint_2d`
all -1, no hand in `seg`; at the start of every sequence and scattered, the same frames in every
camera as the annotation is per sequence), `models/<name>/points.xyz`, an `apriltag` entry in
`extrinsics.yml`, and a per-sequence `pose.npz` (world frame, as dex-ycb-toolkit's SequenceLoader
reads it). `truth/unannotated.json` lists the unannotated sample keys.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import trimesh
import yaml

from unihope.config import TIP_CONVENTION_OF_LAYOUT, DeocclusionConfig, GraspConfig, HandModelConfig, SyntheticConfig
from unihope.hand import HandLayer, axis_angle_to_pca, curl_pose, load_mano_arrays, vertex_finger_labels
from unihope.hand.constants import MANO_FINGER_JOINTS, MANO_TO_DEXYCB_JOINTS, NUM_BETAS
from unihope.hand.mirror import mirror_axis_angle
from unihope.sources.synthetic_marker import COMPLETE_MARKER, GENERATOR_VERSION, check_output_dir
from unihope.render.camera import project_points
from unihope.rotations import axis_angle_from_matrix, matrix_from_axis_angle
from unihope.sources.common import hand_model_path, transform_mano_global
from unihope.sources.dexycb import COLOR_FORMAT, DEPTH_FORMAT, IMAGE_SIZE_TAG, LABEL_FORMAT, META_FILE
from unihope.sources.ho3d import GL_FROM_CV, encode_ho3d_depth
from unihope.sources.splits import DEXYCB_SERIALS, DEXYCB_SUBJECTS
from unihope.sources.synthetic_render import get_scene_renderer, look_at_cv, table_texture, table_trimesh
from unihope.sources.ycb_meshes import (
    MESH_FILE_NAME,
    YCB_NAMES,
    YCBObject,
    build_ycb_object,
    write_ycb_object,
    write_ycb_points,
)

TRUTH_DIR = "truth"
JPEG_QUALITY = 92
BASE_IMAGE_WIDTH_PX = 640  # the intrinsics below are DexYCB's scale at 640 x 480
FOCAL_PX = 615.0
FOCAL_JITTER_PX = 4.0
PRINCIPAL_JITTER_PX = 3.0
M_TO_MM = 1000.0

# Camera rig: 8 positions around the table, one per DexYCB serial.
RIG_TARGET_M = np.array([0.0, 0.0, 0.15])
RIG_FIRST_AZIMUTH_DEG = 20.0
RIG_AZIMUTH_STEP_DEG = 45.0  # 360 / 8 cameras: evenly around the table
RIG_ELEVATIONS_DEG = (36.0, 44.0, 52.0)
# `occlusion: heavy` (the pair-ablation preset): cameras low over the table and the hand straight behind
# the object as seen from the primary camera, so the object hides much more of the hand. Measured on
# 128 views of one camera: visibility bins [0,.25] / (.25,.5] / (.5,.75] / (.75,1] hold 1-5 / 41-62 /
# 24-38 / 9-17 % (natural: 0 / 37 / 29 / 34 %); fingers wrapped round the object stay visible, so
# visibility rarely drops below 0.25.
HEAVY_RIG_ELEVATIONS_DEG = (15.0, 20.0, 25.0)
HEAVY_APPROACH_SPREAD_DEG = 15.0
RIG_DISTANCES_M = (0.56, 0.62)
# Per-camera jitter, so no two cameras share intrinsics or an exact symmetric pose (as on a real rig).
RIG_AZIMUTH_JITTER_DEG = 6.0
RIG_ELEVATION_JITTER_DEG = 3.0
RIG_DISTANCE_JITTER_M = 0.03
FOCAL_ASPECT_JITTER = 0.002  # fy = fx * (1 +- this): real sensors' pixels are not exactly square

# Motion (fractions of the sequence, metres, degrees).
APPROACH_FRACTION = 0.4
CLOSE_FRACTION = 0.16
APPROACH_START_BACK_M = 0.13  # hand starts this far behind the palm's grasp position ...
APPROACH_START_UP_M = 0.06  # ... and this far above it
APPROACH_END_BACK_M = 0.035  # end of approach: near the object, not touching
LIFT_HEIGHT_RANGE_M = (0.12, 0.17)
LIFT_ANGLE_RANGE_DEG = (15.0, 30.0)
LIFT_DRIFT_M = 0.03
LIFT_FIRST_FRACTION = 0.5  # the first lift frame is this far along the lift (past the 5 cm / 5 deg rule)
MIN_FIRST_LIFT_MARGIN = 1.2  # internal check: first lift frame >= 1.2 x one of the grasp thresholds
# The truth labels follow the default grasp rule (GraspConfig's thresholds): a build with other
# thresholds measures against the same truth, so the generator reads the defaults, never a user's.
DEFAULT_GRASP = GraspConfig()
LIFT_TURN_AXIS_JITTER = 0.3  # std of the horizontal jitter added to the lift's turn axis (unit vector)

# Grasp planning.
CURL_CANDIDATES = np.linspace(0.0, 1.3, 27)
THUMB_OPPOSITION = 0.8
OPEN_CURL_FRACTION = 0.2
OPEN_THUMB_OPPOSITION = 0.3  # the open (approaching) hand keeps the thumb a little opposed, as real hands do
PALM_JOINT_IDX = (0, 5, 9, 13, 17)  # wrist and the four finger MCPs (DexYCB order): the palm's centre
# The palm sits at a random height along the grip axis, as a fraction of the proxy's half height
# (more room upwards: a low grip would put the little finger on the table).
GRIP_HEIGHT_RANGE_FRACTION = (-0.15, 0.25)
PALM_START_DEPTH_M = 0.012  # first guess of the palm's extra depth beyond the proxy surface
NUM_PALM_DEPTH_ITERATIONS = 6  # the signed distance moves ~1:1 with the depth: a few steps converge
FREE_FINGER_CURL = 0.75  # a finger that never touches the object rests at this curl
CONTACT_GAP_M = 0.0015
PALM_GAP_M = 0.003
TABLE_CLEARANCE_M = 0.006
GRASP_TILT_DEG = 18.0
# The hand approaches from the far side of the object as seen from the sequence's primary camera,
# within this angle: that camera sees the object in front of the palm, the opposite one the back of the hand.
APPROACH_SPREAD_DEG = 45.0
MAX_WRAPPABLE_WIDTH_M = 0.10  # boxes up to this wide are held with the palm on their wide face
BETAS_STD = 0.8
BETAS_ABS_MAX = 2.0  # shapes beyond +-2 std look implausible
NUM_DISTRACTORS_RANGE = (1, 2)
DISTRACTOR_DISTANCE_RANGE_M = (0.21, 0.28)
DISTRACTOR_SPACING_DEG = 70.0  # between distractors, so they do not overlap on the table
DISTRACTOR_ANGLE_JITTER_RAD = 0.3
OBJECT_XY_JITTER_M = 0.03  # the grasped object rests within this of the table centre (per axis)

SKIN_TONES_RGB = ((0.87, 0.68, 0.56), (0.78, 0.58, 0.46), (0.58, 0.40, 0.30), (0.93, 0.77, 0.66), (0.70, 0.50, 0.38))
# Low-frequency skin variation (knuckles, palm creases): two sines of a projection of the rest vertices.
SKIN_VARIATION_FREQ_PER_M = np.array([91.0, 57.0, 73.0])
SKIN_VARIATION_AMPLITUDES = (0.06, 0.03)  # relative brightness of the two sines
SKIN_VARIATION_SECOND_FREQ_RATIO, SKIN_VARIATION_SECOND_PHASE_RAD = 2.3, 1.0
PALM_TINT_RGB = np.array([1.02, 0.97, 0.96])  # palms are a little redder
LIGHT_DIRECTIONS_WORLD = (np.array([0.3, 0.45, -1.0]), np.array([-0.6, -0.2, -0.5]))

HO3D_SEQUENCE_NAMES = ("ABF10", "BB10", "GPMF10", "GSF10", "MC1", "MDF10", "ND2", "SB10", "ShSu10", "SiBF10",
                       "SiS1", "SM2", "SMu1", "SS1")  # fmt: skip
HO3D_SPLIT = "train"

# DexYCB quirks (SyntheticConfig.quirks).
QUIRK_START_UNANNOTATED_RANGE = (1, 3)  # unannotated frames at a sequence's start (inclusive range)
QUIRK_SCATTERED_UNANNOTATED_FRACTION = 0.1  # share of the later frames without a hand annotation
INVALID_JOINT_VALUE = -1.0  # DexYCB fills joint_3d / joint_2d of unannotated frames with -1
SEG_HAND_LABEL = 255
POSE_FILE = "pose.npz"  # per sequence: pose_y (T, n_obj, 7) quaternion xyzw + t, pose_m (T, hands, 51); world frame
APRILTAG_WORLD_M = (-0.4, -0.3, 0.0)  # the tag lies flat on the table, its x/y along the world's
EXTRINSICS_NAME = "20200702_151821"  # a DexYCB calibration folder name (extrinsics_<name>)
# Sequence folders are named YYYYMMDD_HHMMSS like DexYCB's: the first at 14:17:54, the next ones later.
FIRST_SEQUENCE_TIME_S = 14 * 3600 + 17 * 60 + 54
SEQUENCE_INTERVAL_S = 97
OCCLUDED_MAX_VISIBILITY = DeocclusionConfig().max_visibility  # the summary's "occluded": de-occlusion's own test


@dataclass(frozen=True, slots=True)
class SynthSummary:
    """What `write_synthetic_dataset` wrote."""

    out_dir: str
    format: str
    num_sequences: int
    num_frames: int  # frames over all sequences (per camera)
    num_images: int  # frames x cameras
    num_left_sequences: int
    num_grasping_images: int
    num_occluded_images: int  # visibility <= OCCLUDED_MAX_VISIBILITY
    visibility_min: float
    visibility_median: float
    visibility_max: float
    seconds: float
    sequence_keys: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """Printable multi-line summary."""
        return "\n".join(
            [
                f"synthetic {self.format} dataset at {self.out_dir}",
                f"  sequences: {self.num_sequences} ({self.num_left_sequences} left-handed), frames: {self.num_frames}, "
                f"images: {self.num_images}",
                f"  grasping images (truth): {self.num_grasping_images}",
                f"  hand visibility: min {self.visibility_min:.2f}, median {self.visibility_median:.2f}, "
                f"max {self.visibility_max:.2f}; occluded (<= {OCCLUDED_MAX_VISIBILITY:g}): {self.num_occluded_images}",
                f"  written in {self.seconds:.1f} s",
            ]
        )


@dataclass(frozen=True, slots=True)
class _Camera:
    serial: str
    K: np.ndarray  # (3, 3)
    T_cam_from_world: np.ndarray  # (4, 4)


@dataclass(frozen=True, slots=True)
class _GraspPlan:
    global_orient_world: np.ndarray  # (3,) axis-angle at the grasp
    transl_world_m: np.ndarray  # (3,) MANO transl at the grasp
    hand_pose_grasp: np.ndarray  # (45,) absolute
    hand_pose_open: np.ndarray  # (45,)
    palm_normal_world: np.ndarray  # (3,) from the palm towards the object
    pivot_world_m: np.ndarray  # (3,) grip proxy centre at rest
    min_hand_object_sdf_m: float  # penetration check of the final grasp (negative = inside)


@dataclass(frozen=True, slots=True)
class _Trajectory:
    phases: tuple[str, ...]  # per frame: "approach" | "close" | "lift"
    global_orient_world: np.ndarray  # (T, 3)
    transl_world_m: np.ndarray  # (T, 3)
    hand_pose: np.ndarray  # (T, 45)
    T_world_from_grasped: np.ndarray  # (T, 4, 4)


@dataclass(frozen=True, slots=True)
class _SequencePlan:
    """Everything one sequence's rendering and label writing need, drawn from the sequence's generator."""

    side: str  # "right" | "left"
    betas: np.ndarray  # (10,) float32
    grasped: str  # YCB name of the grasped object
    ycb_names: list[str]  # the sequence's objects in their (shuffled) ycb_ids order, grasped included
    static_poses: dict[str, np.ndarray]  # distractor name -> (4, 4) T_world_from_obj at rest
    grasp: _GraspPlan
    trajectory: _Trajectory
    table_seed: int  # seeds the table texture
    skin_rgb: np.ndarray  # (3,) float, in [0, 1]
    root_joint_rest_m: np.ndarray  # (3,) float64 wrist of the posed-at-zero hand (MANO's rotation centre)


@dataclass(frozen=True, slots=True)
class _ViewLabels:
    """The labels of one view (camera x frame), in that camera's OpenCV frame."""

    orient_cam: np.ndarray  # (3,) MANO global orient, axis-angle radians
    transl_cam: np.ndarray  # (3,) MANO transl, metres
    hand_pose: np.ndarray  # (45,) absolute hand pose, axis-angle radians
    joints_cam_m: np.ndarray  # (21, 3) float64, DexYCB order
    T_cam_from_objs: list[np.ndarray]  # per object of the plan's ycb_names: (4, 4)


# --- small helpers ------------------------------------------------------------------------------


def _seed_from(*parts: object) -> int:
    """A generator seed from a key (e.g. dataset seed + sequence key), stable across runs and machines."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _unit(vec: np.ndarray) -> np.ndarray:
    return vec / np.linalg.norm(vec)


def _rot_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    return matrix_from_axis_angle(_unit(np.asarray(axis, dtype=np.float64)) * angle_rad)


def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _mirror_pose_for_side(pose45: np.ndarray, side: str) -> np.ndarray:
    """The procedural curl poses are right-hand poses; the left hand mirrors them (a0, -a1, -a2)."""
    return pose45 if side == "right" else mirror_axis_angle(pose45)


# --- scene setup --------------------------------------------------------------------------------


def _rig(cfg: SyntheticConfig) -> list[_Camera]:
    """The 8-camera rig (one per DexYCB serial), deterministic in the dataset seed."""
    rng = np.random.default_rng(_seed_from(cfg.seed, "rig"))
    elevations_deg = HEAVY_RIG_ELEVATIONS_DEG if cfg.occlusion == "heavy" else RIG_ELEVATIONS_DEG
    scale = cfg.image_width_px / BASE_IMAGE_WIDTH_PX
    cameras = []
    for idx, serial in enumerate(DEXYCB_SERIALS):
        azimuth = np.deg2rad(RIG_FIRST_AZIMUTH_DEG + RIG_AZIMUTH_STEP_DEG * idx
                             + rng.uniform(-RIG_AZIMUTH_JITTER_DEG, RIG_AZIMUTH_JITTER_DEG))
        elevation = np.deg2rad(elevations_deg[idx % 3] + rng.uniform(-RIG_ELEVATION_JITTER_DEG, RIG_ELEVATION_JITTER_DEG))
        distance = RIG_DISTANCES_M[idx % 2] + rng.uniform(-RIG_DISTANCE_JITTER_M, RIG_DISTANCE_JITTER_M)
        centre = RIG_TARGET_M + distance * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        )
        fx = (FOCAL_PX + rng.uniform(-FOCAL_JITTER_PX, FOCAL_JITTER_PX)) * scale
        K = np.array(
            [
                [fx, 0.0, (cfg.image_width_px - 1) / 2 + rng.uniform(-PRINCIPAL_JITTER_PX, PRINCIPAL_JITTER_PX) * scale],
                [0.0, fx * (1 + rng.uniform(-FOCAL_ASPECT_JITTER, FOCAL_ASPECT_JITTER)), (cfg.image_height_px - 1) / 2 + rng.uniform(-PRINCIPAL_JITTER_PX, PRINCIPAL_JITTER_PX) * scale],
                [0.0, 0.0, 1.0],
            ]
        )  # fmt: skip
        cameras.append(_Camera(serial, np.round(K, 4), look_at_cv(centre, RIG_TARGET_M)))
    return cameras


def _camera_subset(rig: list[_Camera], num_cameras: int) -> list[_Camera]:
    """`num_cameras` rig cameras spread around the table (2 cameras face each other)."""
    picks = np.linspace(0, len(rig), num_cameras, endpoint=False).astype(int)
    return [rig[i] for i in picks]


def _resting_pose(obj: YCBObject, xy_m: np.ndarray, yaw_rad: float) -> np.ndarray:
    return _rigid(_rot_about([0, 0, 1], yaw_rad), np.array([xy_m[0], xy_m[1], obj.resting_height_m]))


# --- grasp planning -----------------------------------------------------------------------------


def _rest_axes(joints_rest: np.ndarray, side: str) -> np.ndarray:
    """(3, 3) columns (a, f, n) of the rest hand: thumb side, finger direction, palm normal (towards the palm side)."""
    across = _unit(joints_rest[5] - joints_rest[17])  # index MCP - little MCP
    fingers = joints_rest[9] - joints_rest[0]
    fingers = _unit(fingers - across * (fingers @ across))
    normal = np.cross(across, fingers) if side == "right" else np.cross(fingers, across)
    return np.stack([across, fingers, normal], axis=1)


def _curl_basis(side: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-finger unit-curl poses and the thumb-opposition pose (45,), for this side."""
    full_curl = curl_pose(1.0, 0.0)
    opposition = _mirror_pose_for_side(curl_pose(0.0, 1.0), side)
    basis = {}
    for name, joint_ids in MANO_FINGER_JOINTS.items():
        pose = np.zeros_like(full_curl)
        for joint_idx in joint_ids:
            pose[3 * (joint_idx - 1) : 3 * joint_idx] = full_curl[3 * (joint_idx - 1) : 3 * joint_idx]
        basis[name] = _mirror_pose_for_side(pose, side)
    return basis, opposition


def _plan_grasp(
    layer: HandLayer,
    finger_labels: np.ndarray,
    betas: np.ndarray,
    obj: YCBObject,
    T_world_from_obj: np.ndarray,
    approach_obj: np.ndarray,
    rng: np.random.Generator,
) -> _GraspPlan:
    """Place the palm against the grip proxy and curl each finger until it touches the surface.

    Args:
        layer: hand layer of the sequence's side.
        finger_labels: (778,) 0 palm, 1 thumb .. 5 little.
        betas: (10,) hand shape.
        obj: the grasped object (its grip proxy axis is the object's z axis).
        T_world_from_obj: (4, 4) resting pose of the object.
        approach_obj: (3,) unit direction from the object towards the hand, object frame (horizontal).
        rng: the sequence's generator.

    Returns:
        The grasp plan (world frame).
    """
    # 1. Check inputs and get the rest hand's axes
    if not obj.is_graspable_side:
        raise ValueError(f"{obj.name} cannot be grasped from the side; pick one with a grip proxy")
    side = layer.side
    zeros = np.zeros((1, 48))
    _, joints_rest = layer.forward_numpy(zeros, betas[None], np.zeros((1, 3)))
    axes_rest = _rest_axes(joints_rest[0].astype(np.float64), side)

    # 2. Target axes: thumb side along the object's axis (tilted), palm facing the object
    R_wo, t_wo = T_world_from_obj[:3, :3], T_world_from_obj[:3, 3]
    half = np.asarray(obj.grip.half_extents_m)
    toward_hand = R_wo @ approach_obj
    across = R_wo @ np.array([0.0, 0.0, 1.0])
    normal = -toward_hand
    fingers = np.cross(normal, across) if side == "right" else np.cross(across, normal)
    tilt = _rot_about(normal, np.deg2rad(rng.uniform(-GRASP_TILT_DEG, GRASP_TILT_DEG)))
    axes_target = tilt @ np.stack([across, fingers, normal], axis=1)
    R_global = axes_target @ axes_rest.T
    global_orient = axis_angle_from_matrix(R_global)

    # 3. All curl candidates at once (fingers and thumb curl together; each digit is judged on its own)
    basis, opposition = _curl_basis(side)
    num = len(CURL_CANDIDATES)
    poses = np.zeros((num, 48))
    poses[:, :3] = global_orient
    for name in basis:
        poses[:, 3:] += CURL_CANDIDATES[:, None] * basis[name][None]
    poses[:, 3:] += THUMB_OPPOSITION * opposition[None]
    verts, joints = layer.forward_numpy(poses, np.repeat(betas[None], num, 0), np.zeros((num, 3)))
    verts, joints = verts.astype(np.float64), joints.astype(np.float64)
    palm_centre = joints[0][list(PALM_JOINT_IDX)].mean(axis=0)

    # 4. Palm placement: the proxy centre sits in front of the palm, at a random height along the axis
    centre_world = T_world_from_obj[:3, :3] @ np.asarray(obj.grip.centre_m) + t_wo
    height_offset = rng.uniform(*GRIP_HEIGHT_RANGE_FRACTION) * half[2]
    depth = float(np.abs(approach_obj[:2] * half[:2]).sum()) + PALM_START_DEPTH_M
    palm_verts = verts[0][finger_labels == 0]

    def sdf_world(points_world: np.ndarray) -> np.ndarray:
        return obj.grip.signed_distance_m((points_world - t_wo) @ R_wo)

    def shift_for(depth_m: float, height_m: float) -> np.ndarray:
        return centre_world - normal * depth_m + across * height_m - palm_centre

    for _ in range(NUM_PALM_DEPTH_ITERATIONS):  # palm just touching
        gap = float(sdf_world(palm_verts + shift_for(depth, height_offset)).min())
        depth += PALM_GAP_M - gap
    shift = shift_for(depth, height_offset)
    lowest = float((verts[-1] + shift)[:, 2].min())
    if lowest < TABLE_CLEARANCE_M:  # the little-finger side would touch the table: grip higher
        height_offset += TABLE_CLEARANCE_M - lowest
        shift = shift_for(depth, height_offset)

    # 5. Curl each digit until it touches the proxy
    curls = {}
    for label, name in enumerate(("thumb", "index", "middle", "ring", "little"), start=1):
        digit = verts[:, finger_labels == label] + shift
        gaps = np.array([sdf_world(v).min() for v in digit])
        touching = np.nonzero(gaps < CONTACT_GAP_M)[0]
        if len(touching) == 0:
            curls[name] = FREE_FINGER_CURL
        elif touching[0] == 0:
            curls[name] = 0.0
        else:
            k = touching[0]
            frac = (gaps[k - 1] - CONTACT_GAP_M) / max(gaps[k - 1] - gaps[k], 1e-9)
            curls[name] = float(CURL_CANDIDATES[k - 1] + frac * (CURL_CANDIDATES[k] - CURL_CANDIDATES[k - 1]))
    hand_pose_grasp = THUMB_OPPOSITION * opposition + sum(curls[n] * basis[n] for n in basis)
    hand_pose_open = OPEN_CURL_FRACTION * (hand_pose_grasp - THUMB_OPPOSITION * opposition) + OPEN_THUMB_OPPOSITION * opposition

    # 6. The MANO translation that puts the hand there, and a penetration check
    transl = shift  # vertices above were posed with transl = 0, so the shift is the translation
    grasp_verts, _ = layer.forward_numpy(np.concatenate([global_orient, hand_pose_grasp])[None], betas[None], transl[None])
    return _GraspPlan(
        global_orient_world=global_orient,
        transl_world_m=transl,
        hand_pose_grasp=hand_pose_grasp,
        hand_pose_open=hand_pose_open,
        palm_normal_world=normal,
        pivot_world_m=centre_world,
        min_hand_object_sdf_m=float(sdf_world(grasp_verts[0].astype(np.float64)).min()),
    )


def _trajectory(
    plan: _GraspPlan, num_frames: int, T_world_from_obj0: np.ndarray, root_joint_rest_m: np.ndarray, rng: np.random.Generator
) -> _Trajectory:
    """Approach (open hand moving in), close (fingers closing, object still), lift (object moves with the hand)."""
    # 1. Phase lengths
    num_approach = max(1, int(round(APPROACH_FRACTION * num_frames)))
    num_close = max(1, int(round(CLOSE_FRACTION * num_frames)))
    num_lift = num_frames - num_approach - num_close
    if num_lift < 1:
        raise ValueError(f"frames_per_sequence={num_frames} is too short for approach, close and lift phases")
    up = np.array([0.0, 0.0, 1.0])
    normal = plan.palm_normal_world

    # 2. Approach and close: the object rests; the hand moves in and closes its fingers
    phases, orients, transls, poses, T_objs = [], [], [], [], []
    for i in range(num_approach):
        u = i / max(num_approach - 1, 1)
        u = u * u * (3 - 2 * u)
        offset = (-normal * APPROACH_START_BACK_M + up * APPROACH_START_UP_M) * (1 - u) - normal * APPROACH_END_BACK_M * u
        phases.append("approach")
        orients.append(plan.global_orient_world)
        transls.append(plan.transl_world_m + offset)
        poses.append(plan.hand_pose_open)
        T_objs.append(T_world_from_obj0)
    for i in range(num_close):
        u = (i + 1) / num_close
        phases.append("close")
        orients.append(plan.global_orient_world)
        transls.append(plan.transl_world_m - normal * APPROACH_END_BACK_M * (1 - u))
        poses.append(plan.hand_pose_open + (plan.hand_pose_grasp - plan.hand_pose_open) * u)
        T_objs.append(T_world_from_obj0)

    # 3. Lift: one rigid motion about the grip centre moves hand and object together
    lift_m = rng.uniform(*LIFT_HEIGHT_RANGE_M)
    angle_rad = np.deg2rad(rng.uniform(*LIFT_ANGLE_RANGE_DEG))
    turn_axis = _unit(np.cross(up, normal) + rng.normal(0, LIFT_TURN_AXIS_JITTER, 3) * np.array([1, 1, 0]))
    drift = rng.normal(0, 1, 3) * np.array([1, 1, 0])
    drift = LIFT_DRIFT_M * drift / max(np.linalg.norm(drift), 1e-9)
    for i in range(num_lift):
        s = 1.0 if num_lift == 1 else LIFT_FIRST_FRACTION + (1 - LIFT_FIRST_FRACTION) * i / (num_lift - 1)
        R_lift = _rot_about(turn_axis, angle_rad * s)
        t_lift = plan.pivot_world_m + up * lift_m * s + drift * s - R_lift @ plan.pivot_world_m
        orient, transl = transform_mano_global(plan.global_orient_world, plan.transl_world_m, R_lift, t_lift, root_joint_rest_m)
        phases.append("lift")
        orients.append(orient)
        transls.append(transl)
        poses.append(plan.hand_pose_grasp)
        T_objs.append(_rigid(R_lift, t_lift) @ T_world_from_obj0)

    # 4. Internal check: the first lifted frame already passes the grasp rule with a margin
    T_first = T_objs[num_approach + num_close]
    rte_m = float(np.linalg.norm(T_first[:3, 3] - T_world_from_obj0[:3, 3]))
    rre_deg = float(np.degrees(np.arccos(np.clip((np.trace(T_first[:3, :3].T @ T_world_from_obj0[:3, :3]) - 1) / 2, -1, 1))))
    if (rte_m < MIN_FIRST_LIFT_MARGIN * DEFAULT_GRASP.rte_threshold_m
            and rre_deg < MIN_FIRST_LIFT_MARGIN * DEFAULT_GRASP.rre_threshold_deg):
        raise AssertionError(f"first lift frame moved only {rte_m:.3f} m / {rre_deg:.1f} deg")
    return _Trajectory(tuple(phases), np.array(orients), np.array(transls), np.array(poses), np.array(T_objs))


# --- the writer ---------------------------------------------------------------------------------


class _SequenceWriter:
    """Holds the per-dataset state (renderer, hand layers, objects) and writes one sequence at a time."""

    def __init__(self, root: Path, cfg: SyntheticConfig, hand_cfg: HandModelConfig):
        self.root = root
        self.cfg = cfg
        # Labels use the layout's own fingertips (DexYCB manopth, HO3D ho3d), as the real dataset's do.
        self.tip_convention = TIP_CONVENTION_OF_LAYOUT[cfg.format]
        self.layers = {
            side: HandLayer(side=side, model_path=hand_model_path(hand_cfg, side), tip_convention=self.tip_convention)
            for side in ("right", "left")
        }
        self.finger_labels = {
            side: vertex_finger_labels(load_mano_arrays(layer.model_path)["weights"]) for side, layer in self.layers.items()
        }
        self.pca = {side: load_mano_arrays(layer.model_path) for side, layer in self.layers.items()}
        self.renderer = get_scene_renderer(cfg.image_width_px, cfg.image_height_px)
        self.objects = {name: build_ycb_object(name) for name in YCB_NAMES}
        self.graspable = [name for name, obj in self.objects.items() if obj.is_graspable_side]
        self.rig = _rig(cfg)
        self.truth_grasp: dict[str, bool] = {}
        self.truth_phase: dict[str, str] = {}
        self.truth_visibility: dict[str, float] = {}

    def write_models(self) -> None:
        models_dir = self.root / "models"
        for obj in self.objects.values():
            write_ycb_object(obj, models_dir)
            if self.cfg.quirks:
                write_ycb_points(obj, models_dir)

    def render_mesh(self, name: str):
        """pyrender mesh of an object as the readers will load it: from the written OBJ, not the in-memory mesh."""
        return self.renderer.object_mesh(self.root / "models" / name / MESH_FILE_NAME)

    # -- one sequence ----------------------------------------------------------------------------

    def plan_sequence(self, sequence_key: str, side: str, betas: np.ndarray, primary: _Camera) -> _SequencePlan:
        """Objects on the table, grasp plan and trajectory of one sequence (its own generator)."""
        rng = np.random.default_rng(_seed_from(self.cfg.seed, sequence_key))
        layer = self.layers[side]
        grasped = self.graspable[int(rng.integers(len(self.graspable)))]
        others = [n for n in YCB_NAMES if n != grasped]
        num_distractors = int(rng.integers(NUM_DISTRACTORS_RANGE[0], NUM_DISTRACTORS_RANGE[1] + 1))
        distractors = list(rng.choice(others, size=num_distractors, replace=False))
        obj = self.objects[grasped]
        # approach direction: away from the primary camera (so it looks at the object in front of the palm)
        camera_xy = np.linalg.inv(primary.T_cam_from_world)[:2, 3]
        spread_deg = HEAVY_APPROACH_SPREAD_DEG if self.cfg.occlusion == "heavy" else APPROACH_SPREAD_DEG
        toward_hand_rad = np.arctan2(-camera_xy[1], -camera_xy[0]) + np.deg2rad(rng.uniform(-spread_deg, spread_deg))
        half = np.asarray(obj.grip.half_extents_m)
        if obj.grip.kind == "cylinder":
            approach_obj = np.array([1.0, 0.0, 0.0])
        else:  # palm against the wide face when the fingers can reach around it, else against the narrow one
            wide_axis, narrow_axis = (0, 1) if half[0] >= half[1] else (1, 0)
            palm_on_wide = 2 * half[wide_axis] <= MAX_WRAPPABLE_WIDTH_M
            approach_obj = np.eye(3)[narrow_axis if palm_on_wide else wide_axis] * rng.choice([-1.0, 1.0])
        yaw = toward_hand_rad - np.arctan2(approach_obj[1], approach_obj[0])
        T_obj0 = _resting_pose(obj, rng.uniform(-OBJECT_XY_JITTER_M, OBJECT_XY_JITTER_M, 2), yaw)
        plan = _plan_grasp(layer, self.finger_labels[side], betas, obj, T_obj0, approach_obj, rng)
        _, joints_rest = layer.forward_numpy(np.zeros((1, 48)), betas[None], np.zeros((1, 3)))
        trajectory = _trajectory(plan, self.cfg.frames_per_sequence, T_obj0, joints_rest[0, 0].astype(np.float64), rng)
        # distractors rest on the far side of the grasped object, away from the approaching hand
        placed = []
        hand_dir = np.arctan2(-plan.palm_normal_world[1], -plan.palm_normal_world[0])
        for k, name in enumerate(distractors):
            angle = (hand_dir + np.pi + (k - (num_distractors - 1) / 2) * np.deg2rad(DISTRACTOR_SPACING_DEG)
                     + rng.uniform(-DISTRACTOR_ANGLE_JITTER_RAD, DISTRACTOR_ANGLE_JITTER_RAD))
            radius = rng.uniform(*DISTRACTOR_DISTANCE_RANGE_M)
            xy = T_obj0[:2, 3] + radius * np.array([np.cos(angle), np.sin(angle)])
            placed.append((name, _resting_pose(self.objects[name], xy, rng.uniform(0, 2 * np.pi))))
        ycb_names = [grasped] + [name for name, _ in placed]
        order = rng.permutation(len(ycb_names))
        ycb_names = [ycb_names[i] for i in order]
        static_poses = {name: T for name, T in placed}
        skin = np.asarray(SKIN_TONES_RGB[_seed_from(sequence_key.split("/")[0]) % len(SKIN_TONES_RGB)])
        return _SequencePlan(
            side=side, betas=betas, grasped=grasped, ycb_names=ycb_names, static_poses=static_poses, grasp=plan,
            trajectory=trajectory, table_seed=_seed_from(self.cfg.seed, sequence_key, "table"), skin_rgb=skin,
            root_joint_rest_m=joints_rest[0, 0].astype(np.float64),
        )  # fmt: skip

    def hand_colours(self, side: str, skin_rgb: np.ndarray, vertices_rest: np.ndarray) -> np.ndarray:
        """Per-vertex skin colour with a little low-frequency variation (knuckles, palm creases)."""
        phase_rad = vertices_rest @ SKIN_VARIATION_FREQ_PER_M
        first, second = SKIN_VARIATION_AMPLITUDES
        variation = first * np.sin(phase_rad) + second * np.sin(
            SKIN_VARIATION_SECOND_FREQ_RATIO * phase_rad + SKIN_VARIATION_SECOND_PHASE_RAD)
        colours = skin_rgb[None, :] * (1.0 + variation[:, None])
        palm = self.finger_labels[side] == 0
        colours[palm] *= PALM_TINT_RGB
        return np.clip(colours, 0, 1)

    def render_sequence(self, seq: _SequencePlan, cameras: list[_Camera]):
        """Yield (camera, frame_idx, RenderedView, _ViewLabels) for every view of the sequence."""
        # 1. Hand vertices in the world frame (for rendering) and per-vertex skin colours
        trajectory = seq.trajectory
        side, betas, layer = seq.side, seq.betas, self.layers[seq.side]
        num = len(trajectory.phases)
        world_pose = np.concatenate([trajectory.global_orient_world, trajectory.hand_pose], axis=1)
        verts_world, _ = layer.forward_numpy(world_pose, np.repeat(betas[None], num, 0), trajectory.transl_world_m)
        verts_rest, _ = layer.forward_numpy(np.zeros((1, 48)), betas[None], np.zeros((1, 3)))
        colours = self.hand_colours(side, seq.skin_rgb, verts_rest[0].astype(np.float64))
        table_mesh = self.renderer.pyrender.Mesh.from_trimesh(table_trimesh(table_texture(seq.table_seed)))
        # 2. One scene per sequence
        faces = layer.faces
        grasped_label = YCB_NAMES.index(seq.grasped) + 1
        objects = [
            (YCB_NAMES.index(name) + 1, self.render_mesh(name),
             trajectory.T_world_from_grasped[0] if name == seq.grasped else seq.static_poses[name])
            for name in seq.ycb_names
        ]  # fmt: skip
        self.renderer.begin_sequence(table_mesh, objects, grasped_label, list(LIGHT_DIRECTIONS_WORLD))
        # 3. Per camera: MANO parameters and joints in its frame (the labels), background, then every frame
        for camera in cameras:
            R_cw, t_cw = camera.T_cam_from_world[:3, :3], camera.T_cam_from_world[:3, 3]
            cam_params = [
                transform_mano_global(trajectory.global_orient_world[i], trajectory.transl_world_m[i], R_cw, t_cw, seq.root_joint_rest_m)
                for i in range(num)
            ]
            orient_cam = np.array([p[0] for p in cam_params])
            transl_cam = np.array([p[1] for p in cam_params])
            _, joints_cam = layer.forward_numpy(
                np.concatenate([orient_cam, trajectory.hand_pose], axis=1), np.repeat(betas[None], num, 0), transl_cam
            )
            background = self.renderer.render_background(camera.K, camera.T_cam_from_world)
            for frame_idx in range(num):
                T_grasped = trajectory.T_world_from_grasped[frame_idx]
                view = self.renderer.render_view(
                    background=background,
                    K=camera.K,
                    T_cam_from_world=camera.T_cam_from_world,
                    T_world_from_grasped=T_grasped,
                    hand_vertices_world_m=verts_world[frame_idx].astype(np.float64),
                    hand_faces=faces,
                    hand_vertex_rgb=colours,
                )
                labels = _ViewLabels(
                    orient_cam=orient_cam[frame_idx],
                    transl_cam=transl_cam[frame_idx],
                    hand_pose=trajectory.hand_pose[frame_idx],
                    joints_cam_m=joints_cam[frame_idx].astype(np.float64),
                    T_cam_from_objs=[camera.T_cam_from_world @ (T_grasped if label == grasped_label else T)
                                     for label, _, T in objects],
                )  # fmt: skip
                yield camera, frame_idx, view, labels

    def record_truth(self, key: str, phase: str, view) -> None:
        self.truth_grasp[key] = phase == "lift"
        self.truth_phase[key] = phase
        self.truth_visibility[key] = round(float(view.visibility), 5)


def _write_jpeg(path: Path, image_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def _write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def _sequence_name(subject: str, seq_idx: int) -> str:
    """`YYYYMMDD_HHMMSS` on the subject's date; later sequences get later times (sorted = generated order)."""
    seconds = FIRST_SEQUENCE_TIME_S + SEQUENCE_INTERVAL_S * seq_idx
    return f"{subject[:8]}_{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _subject_betas(cfg: SyntheticConfig, subject: str) -> np.ndarray:
    rng = np.random.default_rng(_seed_from(cfg.seed, subject, "betas"))
    return np.clip(rng.normal(0.0, BETAS_STD, NUM_BETAS), -BETAS_ABS_MAX, BETAS_ABS_MAX).astype(np.float32)


def _unannotated_frames(cfg: SyntheticConfig, sequence_key: str) -> frozenset[int]:
    """Frames of a sequence whose hand is not annotated (quirks only): a few at the start, some scattered."""
    if not cfg.quirks:
        return frozenset()
    rng = np.random.default_rng(_seed_from(cfg.seed, sequence_key, "unannotated"))
    num_frames = cfg.frames_per_sequence
    num_start = min(int(rng.integers(QUIRK_START_UNANNOTATED_RANGE[0], QUIRK_START_UNANNOTATED_RANGE[1] + 1)),
                    max(1, num_frames // 4))  # fmt: skip
    scattered = {i for i in range(num_start, num_frames) if rng.random() < QUIRK_SCATTERED_UNANNOTATED_FRACTION}
    return frozenset(range(num_start)) | frozenset(scattered)


def _pose_y_row(T_world_from_obj: np.ndarray) -> np.ndarray:
    """(7,) pose.npz row: quaternion (x, y, z, w, scipy's order as the toolkit reads it) + translation."""
    from scipy.spatial.transform import Rotation

    return np.concatenate([Rotation.from_matrix(T_world_from_obj[:3, :3]).as_quat(), T_world_from_obj[:3, 3]])


def _write_sequence_pose_npz(path: Path, seq: _SequencePlan, pca: dict, unannotated: frozenset[int]) -> None:
    """DexYCB's per-sequence pose.npz, world frame: pose_y (T, n_obj, 7), pose_m (T, 1, 51) (0 = not annotated)."""
    trajectory = seq.trajectory
    num = len(trajectory.phases)
    pose_y = np.zeros((num, len(seq.ycb_names), 7))
    for obj_idx, name in enumerate(seq.ycb_names):
        for frame_idx in range(num):
            T = trajectory.T_world_from_grasped[frame_idx] if name == seq.grasped else seq.static_poses[name]
            pose_y[frame_idx, obj_idx] = _pose_y_row(T)
    coeffs = axis_angle_to_pca(trajectory.hand_pose, pca["hands_components"], pca["hands_mean"])
    pose_m = np.concatenate([trajectory.global_orient_world, coeffs, trajectory.transl_world_m], axis=1)[:, None]
    pose_m[sorted(unannotated)] = 0.0
    np.savez_compressed(path, pose_y=pose_y.astype(np.float32), pose_m=pose_m.astype(np.float32))


def _write_dexycb(writer: _SequenceWriter, cfg: SyntheticConfig) -> list[str]:
    root = writer.root
    cameras = _camera_subset(writer.rig, cfg.num_cameras)
    # 1. Calibration: intrinsics per serial, extrinsics of the rig
    for camera in cameras:
        K = camera.K
        _write_yaml(
            root / "calibration" / "intrinsics" / f"{camera.serial}_{IMAGE_SIZE_TAG}.yml",
            {"color": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])},
             "depth": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])}},
        )  # fmt: skip
    extrinsics_name = EXTRINSICS_NAME
    # world-from-camera, row-major 3x4 (the toolkit maps camera points to the world with it)
    extrinsics = {c.serial: np.linalg.inv(c.T_cam_from_world)[:3].reshape(-1).round(6).tolist() for c in cameras}
    if cfg.quirks:  # DexYCB's file: the tag's world-from-tag pose beside the cameras, nothing else
        extrinsics["apriltag"] = np.hstack([np.eye(3), np.array(APRILTAG_WORLD_M)[:, None]]).reshape(-1).tolist()
        extrinsics_file = {"extrinsics": extrinsics, "master": cameras[0].serial}
    else:
        extrinsics_file = {"extrinsics": extrinsics, "master": cameras[0].serial,
                           "frame": "world (table plane z = 0) from camera, row-major 3x4"}  # fmt: skip
    _write_yaml(root / "calibration" / f"extrinsics_{extrinsics_name}" / "extrinsics.yml", extrinsics_file)
    unannotated_keys: list[str] = []

    # 2. Sequences
    sequence_keys = []
    for seq_idx in range(cfg.num_sequences):
        subject = DEXYCB_SUBJECTS[seq_idx % len(DEXYCB_SUBJECTS)]
        sequence_key = f"{subject}/{_sequence_name(subject, seq_idx)}"
        side = "left" if seq_idx % 2 == 1 else "right"
        betas = _subject_betas(cfg, subject)
        _write_yaml(root / "calibration" / f"mano_{subject}" / "mano.yml", {"betas": betas.astype(float).round(6).tolist()})
        seq = writer.plan_sequence(sequence_key, side, betas, primary=cameras[seq_idx % len(cameras)])
        ycb_ids = [YCB_NAMES.index(n) + 1 for n in seq.ycb_names]
        _write_yaml(
            root / sequence_key / META_FILE,
            {"serials": [c.serial for c in cameras], "num_frames": cfg.frames_per_sequence, "ycb_ids": ycb_ids,
             "ycb_grasp_ind": seq.ycb_names.index(seq.grasped), "mano_sides": [side], "mano_calib": [subject],
             "extrinsics": extrinsics_name},
        )  # fmt: skip
        pca = writer.pca[side]
        unannotated = _unannotated_frames(cfg, sequence_key)
        if cfg.quirks:
            _write_sequence_pose_npz(root / sequence_key / POSE_FILE, seq, pca, unannotated)
        for camera, frame_idx, view, labels in writer.render_sequence(seq, cameras):
            frame_dir = root / sequence_key / camera.serial
            coeffs = axis_angle_to_pca(labels.hand_pose[None], pca["hands_components"], pca["hands_mean"])[0]
            pose_m = np.concatenate([labels.orient_cam, coeffs, labels.transl_cam])[None].astype(np.float32)
            joints_3d = labels.joints_cam_m[None].astype(np.float32)
            joints_2d = project_points(labels.joints_cam_m, camera.K)[None].astype(np.float32)
            seg = view.seg
            key = f"{sequence_key}/{camera.serial}/{frame_idx:06d}"
            if frame_idx in unannotated:  # as DexYCB: no hand annotation, so none in the rendered seg either
                pose_m = np.zeros_like(pose_m)
                joints_3d = np.full_like(joints_3d, INVALID_JOINT_VALUE)
                joints_2d = np.full_like(joints_2d, INVALID_JOINT_VALUE)
                seg = np.where(seg == SEG_HAND_LABEL, 0, seg).astype(seg.dtype)
                unannotated_keys.append(key)
            _write_jpeg(frame_dir / COLOR_FORMAT.format(frame_idx), view.color_rgb)
            _write_png(frame_dir / DEPTH_FORMAT.format(frame_idx), np.round(view.depth_m * M_TO_MM).astype(np.uint16))
            np.savez_compressed(
                frame_dir / LABEL_FORMAT.format(frame_idx),
                seg=seg,
                pose_y=np.stack([T[:3] for T in labels.T_cam_from_objs]).astype(np.float32),
                pose_m=pose_m,
                joint_3d=joints_3d,
                joint_2d=joints_2d,
            )
            _write_jpeg(root / TRUTH_DIR / sequence_key / camera.serial / COLOR_FORMAT.format(frame_idx), view.color_no_object_rgb)
            writer.record_truth(key, seq.trajectory.phases[frame_idx], view)
        sequence_keys.append(sequence_key)
    if cfg.quirks:
        (root / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
        (root / TRUTH_DIR / "unannotated.json").write_text(json.dumps(sorted(unannotated_keys), indent=0))
    return sequence_keys


def _write_ho3d(writer: _SequenceWriter, cfg: SyntheticConfig) -> list[str]:
    # 1. Check inputs: HO3D_v2 has one camera per sequence and right hands only
    root = writer.root
    ho3d_from_dexycb = np.argsort(MANO_TO_DEXYCB_JOINTS)  # DexYCB order -> MANO 16 + tips (HO3D's order)
    sequence_keys, list_lines = [], []
    # 2. Sequences: plan, render, convert the labels to OpenGL coordinates and write
    for seq_idx in range(cfg.num_sequences):
        base = HO3D_SEQUENCE_NAMES[seq_idx % len(HO3D_SEQUENCE_NAMES)]
        name = base if seq_idx < len(HO3D_SEQUENCE_NAMES) else f"{base}{seq_idx // len(HO3D_SEQUENCE_NAMES)}"
        sequence_key = f"{HO3D_SPLIT}/{name}"
        betas = _subject_betas(cfg, name)
        camera = writer.rig[_seed_from(cfg.seed, sequence_key, "camera") % len(writer.rig)]
        seq = writer.plan_sequence(sequence_key, "right", betas, primary=camera)  # HO3D_v2 has right hands only
        obj_name = seq.grasped
        corners_rest = trimesh.bounds.corners(writer.objects[obj_name].mesh.bounds)
        grasp_idx = seq.ycb_names.index(obj_name)
        for _, frame_idx, view, labels in writer.render_sequence(seq, [camera]):
            seq_dir = root / sequence_key
            frame_name = f"{frame_idx:04d}"
            # OpenCV labels -> HO3D's OpenGL coordinates
            orient_gl, transl_gl = transform_mano_global(labels.orient_cam, labels.transl_cam, GL_FROM_CV, np.zeros(3),
                                                         seq.root_joint_rest_m)
            T_obj = labels.T_cam_from_objs[grasp_idx]
            R_gl, t_gl = GL_FROM_CV @ T_obj[:3, :3], GL_FROM_CV @ T_obj[:3, 3]
            meta = {
                "handPose": np.concatenate([orient_gl, labels.hand_pose]).astype(np.float64),
                "handBeta": betas.astype(np.float64),
                "handTrans": transl_gl.astype(np.float64),
                "handJoints3D": (labels.joints_cam_m @ GL_FROM_CV.T)[ho3d_from_dexycb].astype(np.float64),
                "objRot": axis_angle_from_matrix(R_gl)[:, None],  # (3, 1) as HO3D stores it
                "objTrans": t_gl.astype(np.float64),
                "objName": obj_name,
                "objLabel": YCB_NAMES.index(obj_name) + 1,
                "objCorners3DRest": corners_rest.astype(np.float64),
                "objCorners3D": (corners_rest @ R_gl.T + t_gl).astype(np.float64),
                "camMat": camera.K.astype(np.float64),
            }
            _write_png(seq_dir / "rgb" / f"{frame_name}.png", cv2.cvtColor(view.color_rgb, cv2.COLOR_RGB2BGR))
            _write_png(seq_dir / "depth" / f"{frame_name}.png", encode_ho3d_depth(view.depth_m))
            (seq_dir / "meta").mkdir(parents=True, exist_ok=True)
            with (seq_dir / "meta" / f"{frame_name}.pkl").open("wb") as handle:
                pickle.dump(meta, handle, protocol=2)
            _write_png(root / TRUTH_DIR / sequence_key / "rgb" / f"{frame_name}.png", cv2.cvtColor(view.color_no_object_rgb, cv2.COLOR_RGB2BGR))
            writer.record_truth(f"{sequence_key}/{frame_name}", seq.trajectory.phases[frame_idx], view)
            list_lines.append(f"{name}/{frame_name}")
        sequence_keys.append(sequence_key)
    # 3. The split list files
    (root / f"{HO3D_SPLIT}.txt").write_text("\n".join(list_lines) + "\n")
    (root / "evaluation.txt").write_text("")
    return sequence_keys


def write_synthetic_dataset(out_dir: Path, cfg: SyntheticConfig, hand_cfg: HandModelConfig) -> SynthSummary:
    """Write a synthetic dataset in DexYCB's (or HO3D_v2's) layout plus `truth/`; idempotent.

    The data is written into `<out_dir>.incomplete` and renamed into place when complete; a marker
    file holding the config hash is written last. Calling again with the same config returns the
    stored summary without rendering anything.

    Args:
        out_dir: destination folder (absent or empty, or a complete dataset of the same config).
        cfg: what to generate (format, sequences, frames, cameras, seed, image size).
        hand_cfg: which MANO files to use (None fields -> the procedural hand).

    Returns:
        A SynthSummary (printable with `.describe()`).

    Raises:
        ValueError: when `out_dir` holds other files or a dataset of another configuration.
    """
    # 1. Check inputs: already complete? free folder?
    start_s = time.perf_counter()
    out_dir = Path(out_dir)
    cfg_hash = cfg.config_hash()
    stored = check_output_dir(out_dir, cfg_hash)
    if stored is not None:
        return SynthSummary(**{**stored, "sequence_keys": tuple(stored["sequence_keys"])})
    work_dir = out_dir.with_name(out_dir.name + ".incomplete")
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a previous run died half-way: our own scratch folder
    work_dir.mkdir(parents=True)

    # 2. Models, renderer, hand layers
    writer = _SequenceWriter(work_dir, cfg, hand_cfg)
    writer.write_models()

    # 3. Sequences
    sequence_keys = _write_dexycb(writer, cfg) if cfg.format == "dexycb" else _write_ho3d(writer, cfg)

    # 4. Truth files
    truth_dir = work_dir / TRUTH_DIR
    truth_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / "grasp.json").write_text(json.dumps(writer.truth_grasp, indent=0, sort_keys=True))
    (truth_dir / "phases.json").write_text(json.dumps(writer.truth_phase, indent=0, sort_keys=True))
    (truth_dir / "visibility.json").write_text(json.dumps(writer.truth_visibility, indent=0, sort_keys=True))

    # 5. Summary, marker (last), rename into place
    visibility = np.array([v for v in writer.truth_visibility.values() if np.isfinite(v)] or [np.nan])
    num_cams = cfg.num_cameras if cfg.format == "dexycb" else 1
    summary = SynthSummary(
        out_dir=str(out_dir),
        format=cfg.format,
        num_sequences=cfg.num_sequences,
        num_frames=cfg.num_sequences * cfg.frames_per_sequence,
        num_images=cfg.num_sequences * cfg.frames_per_sequence * num_cams,
        num_left_sequences=sum(1 for i in range(cfg.num_sequences) if cfg.format == "dexycb" and i % 2 == 1),
        num_grasping_images=int(sum(writer.truth_grasp.values())),
        num_occluded_images=int((visibility <= OCCLUDED_MAX_VISIBILITY).sum()),
        visibility_min=float(np.nanmin(visibility)),
        visibility_median=float(np.nanmedian(visibility)),
        visibility_max=float(np.nanmax(visibility)),
        seconds=time.perf_counter() - start_s,
        sequence_keys=tuple(sequence_keys),
    )
    marker = {"config_hash": cfg_hash, "generator_version": GENERATOR_VERSION, "config": cfg.model_dump(mode="json"),
              "summary": {**asdict(summary), "sequence_keys": list(summary.sequence_keys)}}  # fmt: skip
    (work_dir / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1))
    if out_dir.exists():
        out_dir.rmdir()  # checked empty above
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir.rename(out_dir)
    return summary
