"""Grasp planning: the palm placed against the grasped object's grip proxy, each finger curled until it touches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unihope.hand import HandLayer, curl_pose
from unihope.hand.constants import MANO_FINGER_JOINTS
from unihope.rotations import axis_angle_from_matrix
from unihope.sources.synthetic.common import mirror_pose_for_side, rot_about, unit
from unihope.sources.ycb_meshes import YCBObject

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


@dataclass(frozen=True, slots=True)
class GraspPlan:
    global_orient_world: np.ndarray  # (3,) axis-angle at the grasp
    transl_world_m: np.ndarray  # (3,) MANO transl at the grasp
    hand_pose_grasp: np.ndarray  # (45,) absolute
    hand_pose_open: np.ndarray  # (45,)
    palm_normal_world: np.ndarray  # (3,) from the palm towards the object
    pivot_world_m: np.ndarray  # (3,) grip proxy centre at rest
    min_hand_object_sdf_m: float  # penetration check of the final grasp (negative = inside)


def _rest_axes(joints_rest: np.ndarray, side: str) -> np.ndarray:
    """(3, 3) columns (a, f, n) of the rest hand: thumb side, finger direction, palm normal (towards the palm side)."""
    across = unit(joints_rest[5] - joints_rest[17])  # index MCP - little MCP
    fingers = joints_rest[9] - joints_rest[0]
    fingers = unit(fingers - across * (fingers @ across))
    normal = np.cross(across, fingers) if side == "right" else np.cross(fingers, across)
    return np.stack([across, fingers, normal], axis=1)


def _curl_basis(side: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-finger unit-curl poses and the thumb-opposition pose (45,), for this side."""
    full_curl = curl_pose(1.0, 0.0)
    opposition = mirror_pose_for_side(curl_pose(0.0, 1.0), side)
    basis = {}
    for name, joint_ids in MANO_FINGER_JOINTS.items():
        pose = np.zeros_like(full_curl)
        for joint_idx in joint_ids:
            pose[3 * (joint_idx - 1) : 3 * joint_idx] = full_curl[3 * (joint_idx - 1) : 3 * joint_idx]
        basis[name] = mirror_pose_for_side(pose, side)
    return basis, opposition


def plan_grasp(
    layer: HandLayer,
    finger_labels: np.ndarray,
    betas: np.ndarray,
    obj: YCBObject,
    T_world_from_obj: np.ndarray,
    approach_obj: np.ndarray,
    rng: np.random.Generator,
) -> GraspPlan:
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
    tilt = rot_about(normal, np.deg2rad(rng.uniform(-GRASP_TILT_DEG, GRASP_TILT_DEG)))
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
    return GraspPlan(
        global_orient_world=global_orient,
        transl_world_m=transl,
        hand_pose_grasp=hand_pose_grasp,
        hand_pose_open=hand_pose_open,
        palm_normal_world=normal,
        pivot_world_m=centre_world,
        min_hand_object_sdf_m=float(sdf_world(grasp_verts[0].astype(np.float64)).min()),
    )
