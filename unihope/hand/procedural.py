"""Deterministic procedural right/left hand written in MANO's own pickle format.

The real MANO model is licensed; this module builds a stand-in with exactly MANO's sizes and
conventions (778 vertices, 1538 faces, 16 joints in MANO's tree) so that `smplx.MANO` loads it
unchanged and every downstream stage can run without the licensed file. Every fingertip vertex id
the field uses (manopth's, HO3D's and smplx's, `TIP_CONVENTIONS`) lies on its fingertip: the apex
takes manopth's id, the others sit on the ring just behind the apex (about 2 mm away, as on MANO).

Geometry is built in a palm frame (a: wrist -> fingers, w: towards the thumb, h: towards the back
of the hand) and mapped to MANO's world frame at the end (fingers along -x, thumb towards +z,
palm facing -y, wrist joint near (0.096, 0.006, 0.006) m as in the real template).
No randomness is used anywhere: the same code always writes the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from unihope.hand.constants import (
    FINGER_NAMES,
    MANO_FINGER_JOINTS,
    MANO_PARENTS,
    NUM_BETAS,
    NUM_HAND_POSE_DIMS,
    NUM_MANO_FACES,
    NUM_MANO_JOINTS,
    NUM_MANO_VERTICES,
    NUM_WRIST_BOUNDARY_VERTICES,
    SIDES,
    TIP_CONVENTIONS,
)
from unihope.hand.convert import write_mano_pickle
from unihope.hand.mirror import mirror_mano

# Bump whenever the generated arrays change: it names the cache folder (procedural-v<N>).
PROCEDURAL_MODEL_VERSION = 3  # v3: every tip convention on the fingertips; left 444 <-> 445

# Palm frame -> MANO world frame: a -> -x, w -> +z, h -> +y (a proper rotation, det +1).
PALM_TO_WORLD = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
WRIST_WORLD_M = np.array([0.0957, 0.0064, 0.0062])

# Palm cross-sections (a_m, half_width_m, half_thickness_m, centre_w_m); superellipse exponent.
PALM_SECTIONS_M = np.array(
    [
        [-0.016, 0.0270, 0.0165, 0.000],
        [0.000, 0.0300, 0.0165, 0.000],
        [0.012, 0.0345, 0.0160, 0.000],
        [0.025, 0.0390, 0.0155, 0.000],
        [0.040, 0.0415, 0.0150, 0.000],
        [0.055, 0.0425, 0.0142, 0.001],
        [0.070, 0.0425, 0.0135, 0.001],
        [0.090, 0.0425, 0.0130, 0.001],
    ]
)
PALM_SUPERELLIPSE_EXPONENT = 2.6
WRIST_RING_A_M = -0.016  # open wrist boundary, a little beyond the wrist joint
MID_RING_A_M = 0.0  # the ring that regresses the wrist joint
PALM_RING_A_M = (0.011, 0.024, 0.037, 0.049, 0.059, 0.068, 0.076)  # 28-vertex rings
PALM_RING_SIZE = 28
MID_RING_SIZE = 22
# Blend of the last palm rings towards the knuckle line (0 = plain palm section, 1 = knuckle ring).
PALM_TO_KNUCKLE_BLEND = (0.0, 0.0, 0.0, 0.05, 0.2, 0.45, 0.7)
# Thumb opening in the palm: 28-ring rows 0..3, columns 26, 27, 0 (radial-palmar edge). A 3x2-quad
# patch leaves a 10-vertex loop (the thumb ring size) and removes 2 interior vertices.
THUMB_HOLE_ROWS = (0, 1, 2, 3)
THUMB_HOLE_COLUMNS = (26, 27, 0)

FINGER_RING_SIZE = 10
FINGER_HEIGHT_RATIO = 0.86  # finger cross-section: thickness / width
KNUCKLE_RING_SCALE = 1.08
# Where the base-loop vertices sit along the finger relative to the MCP joint (metres):
# knuckles (dorsal) slightly proximal, palmar skin and webs distal as on a real hand.
BASE_LOOP_DORSAL_OFFSET_M = -0.003
BASE_LOOP_PALMAR_OFFSET_M = 0.006
BASE_LOOP_WEB_OFFSET_M = 0.011

SKIN_BLEND_HALF_WIDTH_MCP_M = 0.008
SKIN_BLEND_HALF_WIDTH_CMC_M = 0.013
SKIN_BLEND_HALF_WIDTH_M = 0.0045  # PIP/DIP (and thumb MCP/IP)
# Thenar mound: palmar palm skin near the thumb base pushed out (peak metres, centre and widths in a, w).
THENAR_BULGE_M = 0.004
THENAR_CENTRE_AW_M = (0.030, 0.022)
THENAR_WIDTH_AW_M = (0.022, 0.014)
THUMB_SMOOTHED_ARC_M = 0.03  # thumb rings closer than this to the CMC are smoothed with the palm
THENAR_WEIGHT = 0.55  # peak share of the thumb CMC in the thenar palm skin
THENAR_RADIUS_M = 0.032  # compact support: no thumb influence beyond this
JOINT_REGRESSOR_NEIGHBOURS = 24

POSE_CORRECTIVE_DORSAL_M = 0.0015  # knuckle pushes out at 90 deg flexion
POSE_CORRECTIVE_PALMAR_M = 0.0010  # palmar skin bulge at 90 deg flexion
POSE_CORRECTIVE_ROUND_M = 0.0005  # any rotation: (1 - cos) * this, rounds the joint
POSE_CORRECTIVE_SIGMA_SCALE = 0.7  # Gaussian width along the digit, in finger radii


@dataclass(frozen=True, slots=True)
class DigitSpec:
    """One digit's rest skeleton in the palm frame (metres, radians)."""

    name: str
    base_joint_m: tuple[float, float, float]  # MCP (CMC for the thumb), palm frame (a, w, h)
    bone_dirs: tuple[tuple[float, float, float], ...]  # 3 bone directions (need not be unit)
    bone_lengths_m: tuple[float, float, float]  # base->j2, j2->j3, j3->tip
    radii_m: tuple[float, float, float, float]  # half-width at base, j2, j3, tip
    dorsal_ref: tuple[float, float, float]  # nail side, palm frame


def _finger_dir(splay_deg: float) -> tuple[float, float, float]:
    splay_rad = np.deg2rad(splay_deg)
    return (float(np.cos(splay_rad)), float(np.sin(splay_rad)), 0.0)


DIGITS: dict[str, DigitSpec] = {
    "thumb": DigitSpec(
        "thumb",
        (0.019, 0.026, -0.007),
        ((0.70, 0.64, -0.32), (0.84, 0.48, -0.30), (0.90, 0.36, -0.28)),
        (0.043, 0.032, 0.028),
        (0.0150, 0.0112, 0.0099, 0.0088),
        (0.0, 0.55, 0.84),
    ),
    "index": DigitSpec(
        "index", (0.086, 0.0315, 0.001), (_finger_dir(6.0),) * 3, (0.040, 0.023, 0.021),
        (0.0100, 0.0089, 0.0079, 0.0070), (0.0, 0.0, 1.0),
    ),
    "middle": DigitSpec(
        "middle", (0.090, 0.0110, 0.0015), (_finger_dir(0.5),) * 3, (0.043, 0.025, 0.021),
        (0.0102, 0.0091, 0.0081, 0.0072), (0.0, 0.0, 1.0),
    ),
    "ring": DigitSpec(
        "ring", (0.0855, -0.0095, 0.001), (_finger_dir(-5.0),) * 3, (0.041, 0.025, 0.021),
        (0.0096, 0.0086, 0.0077, 0.0069), (0.0, 0.0, 1.0),
    ),
    "little": DigitSpec(
        "little", (0.077, -0.0290, -0.001), (_finger_dir(-11.0),) * 3, (0.033, 0.019, 0.019),
        (0.0088, 0.0078, 0.0070, 0.0063), (0.0, 0.0, 1.0),
    ),
}  # fmt: skip

# Rings along each digit: (bone index, fraction of that bone) then hemisphere rings at the tip
# given as polar angles (deg); the tip vertex closes the digit. Counts are fixed by MANO's sizes.
FINGER_RINGS = ((0, 0.25), (0, 0.5), (0, 0.75), (1, 0.0), (1, 0.5), (2, 0.0), (2, 0.33))
THUMB_RINGS = ((0, 0.42), (0, 0.62), (0, 0.82), (1, 0.0), (1, 0.35), (1, 0.7), (2, 0.0), (2, 0.33))
TIP_HEMISPHERE_DEG = (0.0, 45.0, 72.0)
# The fingertip apex takes this convention's id (right hand; DexYCB's); the other conventions' ids go to
# the last hemisphere ring's most palmar vertices (the pad), nearest first.
TIP_APEX_CONVENTION = "manopth"


# ---------------------------------------------------------------------------------------------
# Small geometry helpers
# ---------------------------------------------------------------------------------------------


def _unit(vec: np.ndarray) -> np.ndarray:
    return vec / np.linalg.norm(vec, axis=-1, keepdims=True)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _palm_section(a_m: float) -> tuple[float, float, float]:
    """Half-width, half-thickness and centre-w (metres) of the palm at a_m."""
    sections = PALM_SECTIONS_M
    half_width_m = float(np.interp(a_m, sections[:, 0], sections[:, 1]))
    half_thickness_m = float(np.interp(a_m, sections[:, 0], sections[:, 2]))
    centre_w_m = float(np.interp(a_m, sections[:, 0], sections[:, 3]))
    return half_width_m, half_thickness_m, centre_w_m


def _superellipse(angles_rad: np.ndarray, half_width_m: float, half_thickness_m: float) -> np.ndarray:
    """(n, 2) points (w, h) of a rounded-rectangle section at the given parameter angles."""
    power = 2.0 / PALM_SUPERELLIPSE_EXPONENT
    cos_t, sin_t = np.cos(angles_rad), np.sin(angles_rad)
    w = half_width_m * np.sign(cos_t) * np.abs(cos_t) ** power
    h = half_thickness_m * np.sign(sin_t) * np.abs(sin_t) ** power
    return np.stack([w, h], axis=1)


def _palm_centre(a_m: float) -> np.ndarray:
    """Centre (palm frame, metres) of the palm cross-section at a_m."""
    return np.array([a_m, _palm_section(a_m)[2], 0.0])


def _palm_ring_angles(num_vertices: int) -> np.ndarray:
    """Parameter angles of a palm ring: column 0 on the radial (thumb) edge, then dorsal first."""
    return 2.0 * np.pi * np.arange(num_vertices) / num_vertices


def _palm_ring(a_m: float, num_vertices: int) -> np.ndarray:
    half_width_m, half_thickness_m, centre_w_m = _palm_section(a_m)
    wh = _superellipse(_palm_ring_angles(num_vertices), half_width_m, half_thickness_m)
    return np.column_stack([np.full(num_vertices, a_m), wh[:, 0] + centre_w_m, wh[:, 1]])


def _digit_frame(direction: np.ndarray, dorsal_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lateral (towards the thumb side for fingers) and dorsal unit vectors around a digit axis."""
    lateral = _unit(np.cross(dorsal_ref, direction))
    dorsal = np.cross(direction, lateral)
    return lateral, dorsal


def _stitch_equal(ring_a: list[int], ring_b: list[int]) -> list[tuple[int, int, int]]:
    """Triangles joining two closed rings of equal size, vertex k to vertex k."""
    num = len(ring_a)
    faces = []
    for k in range(num):
        k1 = (k + 1) % num
        faces.append((ring_a[k], ring_a[k1], ring_b[k1]))
        faces.append((ring_a[k], ring_b[k1], ring_b[k]))
    return faces


def _stitch_unequal(
    ring_a: list[int], params_a: np.ndarray, ring_b: list[int], params_b: np.ndarray
) -> list[tuple[int, int, int]]:
    """Triangles joining two closed rings of different sizes by their parameters in [0, 1)."""
    num_a, num_b = len(ring_a), len(ring_b)
    ext_a = np.append(params_a, 1.0)
    ext_b = np.append(params_b, 1.0)
    faces = []
    idx_a = idx_b = 0
    while idx_a < num_a or idx_b < num_b:
        advance_a = idx_b >= num_b or (idx_a < num_a and ext_a[idx_a + 1] <= ext_b[idx_b + 1])
        if advance_a:
            faces.append((ring_a[idx_a], ring_a[(idx_a + 1) % num_a], ring_b[idx_b % num_b]))
            idx_a += 1
        else:
            faces.append((ring_a[idx_a % num_a], ring_b[(idx_b + 1) % num_b], ring_b[idx_b]))
            idx_b += 1
    return faces


def _orient_faces(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Make the winding of a closed manifold mesh consistent and outward (positive volume)."""
    edge_to_faces: dict[tuple[int, int], list[int]] = {}
    for face_idx, face in enumerate(faces):
        for k in range(3):
            key = tuple(sorted((int(face[k]), int(face[(k + 1) % 3]))))
            edge_to_faces.setdefault(key, []).append(face_idx)
    bad_edges = [edge for edge, owners in edge_to_faces.items() if len(owners) != 2]
    assert not bad_edges, f"procedural hand is not a closed manifold: {bad_edges[:5]}"
    oriented = faces.copy()
    is_done = np.zeros(len(faces), dtype=bool)
    is_done[0] = True
    stack = [0]
    while stack:
        face_idx = stack.pop()
        face = oriented[face_idx]
        for k in range(3):
            v0, v1 = int(face[k]), int(face[(k + 1) % 3])
            for other_idx in edge_to_faces[tuple(sorted((v0, v1)))]:
                if is_done[other_idx]:
                    continue
                other = oriented[other_idx]
                # A consistent neighbour walks the shared edge the other way (v1 -> v0).
                for m in range(3):
                    if int(other[m]) == v0 and int(other[(m + 1) % 3]) == v1:
                        oriented[other_idx] = other[::-1]
                        break
                is_done[other_idx] = True
                stack.append(other_idx)
    tri = verts[oriented]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    return oriented if signed_volume > 0 else oriented[:, ::-1].copy()


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return _unit(normals + 1e-12)


def _neighbours(num_verts: int, faces: np.ndarray) -> scipy.sparse.csr_matrix:
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adjacency = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_verts, num_verts))
    adjacency.data[:] = 1.0
    return adjacency


def _taubin_smooth(
    verts: np.ndarray, faces: np.ndarray, is_movable: np.ndarray, num_iters: int
) -> np.ndarray:
    """Shrink-free Laplacian smoothing (Taubin lambda/mu) of the movable vertices only."""
    adjacency = _neighbours(len(verts), faces)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    smoothed = verts.copy()
    for _ in range(num_iters):
        for step in (0.5, -0.53):
            laplacian = adjacency @ smoothed / degree[:, None] - smoothed
            smoothed[is_movable] += step * laplacian[is_movable]
    return smoothed


def _rotation_feature_coeffs(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 coefficient matrices C with sum(C * (R - I)) = sin(angle about axis), resp. 1 - cos(angle).

    smplx feeds (R - I) of every joint to posedirs, so pose correctives must be linear in it.
    """
    a0, a1, a2 = axis
    coeff_sin = np.zeros((3, 3))
    coeff_sin[2, 1], coeff_sin[1, 2] = a0 / 2, -a0 / 2
    coeff_sin[0, 2], coeff_sin[2, 0] = a1 / 2, -a1 / 2
    coeff_sin[1, 0], coeff_sin[0, 1] = a2 / 2, -a2 / 2
    coeff_one_minus_cos = -0.5 * np.eye(3)
    return coeff_sin, coeff_one_minus_cos


# ---------------------------------------------------------------------------------------------
# Mesh construction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DigitSkeleton:
    """Rest skeleton of one digit in the palm frame."""

    joints_m: np.ndarray  # (4, 3) base joint, j2, j3, tip
    dirs: np.ndarray  # (3, 3) unit bone directions
    lengths_m: np.ndarray  # (3,)
    radii_m: np.ndarray  # (4,)
    dorsal_ref: np.ndarray  # (3,)

    def point(self, bone_idx: int, fraction: float) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Centre, direction, arc length (m) and half-width (m) at a fraction of a bone."""
        centre = self.joints_m[bone_idx] + fraction * self.lengths_m[bone_idx] * self.dirs[bone_idx]
        if fraction == 0.0 and bone_idx > 0:
            direction = _unit(self.dirs[bone_idx - 1] + self.dirs[bone_idx])
        else:
            direction = self.dirs[bone_idx]
        arc_m = float(self.lengths_m[:bone_idx].sum() + fraction * self.lengths_m[bone_idx])
        radius_m = float(np.interp(arc_m, np.concatenate([[0.0], np.cumsum(self.lengths_m)]), self.radii_m))
        return centre, direction, arc_m, radius_m


def _digit_skeleton(spec: DigitSpec) -> _DigitSkeleton:
    dirs = _unit(np.array(spec.bone_dirs, dtype=float))
    lengths_m = np.array(spec.bone_lengths_m, dtype=float)
    joints_m = [np.array(spec.base_joint_m, dtype=float)]
    for bone_idx in range(3):
        joints_m.append(joints_m[-1] + lengths_m[bone_idx] * dirs[bone_idx])
    return _DigitSkeleton(
        joints_m=np.array(joints_m),
        dirs=dirs,
        lengths_m=lengths_m,
        radii_m=np.array(spec.radii_m, dtype=float),
        dorsal_ref=_unit(np.array(spec.dorsal_ref, dtype=float)),
    )


@dataclass
class _MeshBuilder:
    """Accumulates vertices with per-vertex metadata used later for skinning and blend shapes."""

    positions: list[np.ndarray]
    digit_label: list[int]  # 0 palm, 1 thumb .. 5 little (FINGER_NAMES order + 1)
    arc_m: list[float]  # arc length from the digit's base joint (digit vertices), else 0
    centre: list[np.ndarray]  # centre of the ring the vertex was made on

    @classmethod
    def empty(cls) -> "_MeshBuilder":
        return cls([], [], [], [])

    def add(self, position: np.ndarray, digit_label: int, arc_m: float, centre: np.ndarray) -> int:
        self.positions.append(np.asarray(position, dtype=float))
        self.digit_label.append(digit_label)
        self.arc_m.append(arc_m)
        self.centre.append(np.asarray(centre, dtype=float))
        return len(self.positions) - 1


@dataclass(frozen=True, slots=True)
class _RawHand:
    """The procedural mesh in the palm frame plus the metadata needed for the model arrays."""

    verts_m: np.ndarray  # (778, 3) palm frame
    faces: np.ndarray  # (1538, 3) int
    digit_label: np.ndarray  # (778,) int 0 palm, 1 thumb .. 5 little
    arc_m: np.ndarray  # (778,) arc length from the digit base joint
    centre_m: np.ndarray  # (778, 3) ring centre
    base_loop_owners: dict[int, tuple[int, ...]]  # palm vertex -> digit labels sharing it
    tip_vertex_idx: dict[str, int]  # finger name -> apex vertex index (before the final permutation)
    tip_ring_idx: dict[str, tuple[int, ...]]  # finger name -> last ring's vertices, most palmar first
    skeletons: dict[str, _DigitSkeleton]


def _build_raw_hand() -> _RawHand:
    """Builds the closed-then-opened hand surface with exact MANO vertex and face counts."""
    # 1. Skeletons and the palm rings (wrist loop 16, mid ring 22, seven 28-rings).
    skeletons = {name: _digit_skeleton(spec) for name, spec in DIGITS.items()}
    mesh = _MeshBuilder.empty()
    faces: list[tuple[int, int, int]] = []
    wrist_ring = [
        mesh.add(p, 0, 0.0, _palm_centre(WRIST_RING_A_M))
        for p in _palm_ring(WRIST_RING_A_M, NUM_WRIST_BOUNDARY_VERTICES)
    ]
    mid_ring = [mesh.add(p, 0, 0.0, _palm_centre(MID_RING_A_M)) for p in _palm_ring(MID_RING_A_M, MID_RING_SIZE)]
    palm_rings = [
        [mesh.add(p, 0, 0.0, _palm_centre(a_m)) for p in _palm_ring(a_m, PALM_RING_SIZE)] for a_m in PALM_RING_A_M
    ]

    # 2. Knuckle line: the four finger base loops share dorsal (D), palmar (P) and web (W) vertices.
    num_row = 13
    knuckle_sum = {key: np.zeros(3) for key in [("D", j) for j in range(num_row)] + [("P", j) for j in range(num_row)]}
    knuckle_sum.update({("W", j): np.zeros(3) for j in (0, 3, 6, 9, 12)})
    knuckle_count = {key: 0 for key in knuckle_sum}
    finger_loop_keys: dict[str, list[tuple[str, int]]] = {}
    slot_angles_rad = 2.0 * np.pi * np.arange(FINGER_RING_SIZE) / FINGER_RING_SIZE
    for finger_idx, name in enumerate(FINGER_NAMES[1:]):
        skel = skeletons[name]
        col0 = 3 * finger_idx
        keys = [("W", col0)] + [("D", col0 + k) for k in range(4)] + [("W", col0 + 3)]
        keys += [("P", col0 + 3 - k) for k in range(4)]
        finger_loop_keys[name] = keys
        lateral, dorsal = _digit_frame(skel.dirs[0], skel.dorsal_ref)
        for slot, key in enumerate(keys):
            is_outer_web = key in (("W", 0), ("W", 12))
            offset_m = {"D": BASE_LOOP_DORSAL_OFFSET_M, "P": BASE_LOOP_PALMAR_OFFSET_M}.get(
                key[0], 0.0 if is_outer_web else BASE_LOOP_WEB_OFFSET_M
            )
            ring_offset = KNUCKLE_RING_SCALE * skel.radii_m[0] * (
                np.cos(slot_angles_rad[slot]) * lateral
                + FINGER_HEIGHT_RATIO * np.sin(slot_angles_rad[slot]) * dorsal
            )
            knuckle_sum[key] += skel.joints_m[0] + offset_m * skel.dirs[0] + ring_offset
            knuckle_count[key] += 1
    knuckle_idx = {
        key: mesh.add(knuckle_sum[key] / knuckle_count[key], 0, 0.0, knuckle_sum[key] / knuckle_count[key])
        for key in knuckle_sum
    }
    base_loop_owners: dict[int, tuple[int, ...]] = {}
    for name, keys in finger_loop_keys.items():
        for key in keys:
            vert_idx = knuckle_idx[key]
            base_loop_owners[vert_idx] = base_loop_owners.get(vert_idx, ()) + (FINGER_NAMES.index(name) + 1,)
    knuckle_ring = [knuckle_idx[("W", 0)]] + [knuckle_idx[("D", j)] for j in range(num_row)]
    knuckle_ring += [knuckle_idx[("W", 12)]] + [knuckle_idx[("P", j)] for j in reversed(range(num_row))]

    # 3. Pull the last palm rings towards the knuckle line so the palm narrows into the fingers;
    #    raise the thenar mound.
    knuckle_pos = np.array([mesh.positions[i] for i in knuckle_ring])
    knuckle_mean_a_m = knuckle_pos[:, 0].mean()
    for ring, a_m, blend in zip(palm_rings, PALM_RING_A_M, PALM_TO_KNUCKLE_BLEND):
        target = knuckle_pos - np.array([knuckle_mean_a_m - a_m, 0.0, 0.0])
        for col, vert_idx in enumerate(ring):
            mesh.positions[vert_idx] = (1.0 - blend) * mesh.positions[vert_idx] + blend * target[col]

    for ring in palm_rings:
        for vert_idx in ring:
            a_m, w_m, h_m = mesh.positions[vert_idx]
            half_thickness_m = _palm_section(a_m)[1]
            bump = np.exp(-(((a_m - THENAR_CENTRE_AW_M[0]) / THENAR_WIDTH_AW_M[0]) ** 2)
                          - (((w_m - THENAR_CENTRE_AW_M[1]) / THENAR_WIDTH_AW_M[1]) ** 2))
            mesh.positions[vert_idx] = mesh.positions[vert_idx] - np.array(
                [0.0, 0.0, THENAR_BULGE_M * bump * max(0.0, -h_m / half_thickness_m)]
            )

    # 4. Palm faces: wrist -> mid -> 28-rings (minus the thumb opening) -> knuckle line; wrist fan.
    wrist_centre_idx = mesh.add(_palm_centre(WRIST_RING_A_M), 0, 0.0, _palm_centre(WRIST_RING_A_M))
    num_wrist = NUM_WRIST_BOUNDARY_VERTICES
    faces += [(wrist_centre_idx, wrist_ring[(k + 1) % num_wrist], wrist_ring[k]) for k in range(num_wrist)]
    faces += _stitch_unequal(
        wrist_ring, np.arange(num_wrist) / num_wrist, mid_ring, np.arange(MID_RING_SIZE) / MID_RING_SIZE
    )
    faces += _stitch_unequal(
        mid_ring, np.arange(MID_RING_SIZE) / MID_RING_SIZE, palm_rings[0], np.arange(PALM_RING_SIZE) / PALM_RING_SIZE
    )
    hole_quads = {(row, col) for row in THUMB_HOLE_ROWS[:-1] for col in THUMB_HOLE_COLUMNS[:-1]}
    for row in range(len(palm_rings)):
        next_ring = palm_rings[row + 1] if row + 1 < len(palm_rings) else knuckle_ring
        for col, tri_pair in enumerate(np.array(_stitch_equal(palm_rings[row], next_ring)).reshape(-1, 2, 3)):
            if (row, col) not in hole_quads:
                faces += [tuple(tri) for tri in tri_pair]

    # 5. Fingers: 7 body rings + 3 tip-hemisphere rings + tip vertex on each base loop.
    tip_vertex_idx: dict[str, int] = {}
    tip_ring_idx: dict[str, tuple[int, ...]] = {}
    for name in FINGER_NAMES[1:]:
        base_loop = [knuckle_idx[key] for key in finger_loop_keys[name]]
        tip_vertex_idx[name], tip_ring_idx[name] = _add_digit_tube(
            mesh, faces, skeletons[name], name, base_loop, FINGER_RINGS, None
        )

    # 6. Thumb: its base loop is the opening left in the palm's radial-palmar edge.
    rows, cols = THUMB_HOLE_ROWS, THUMB_HOLE_COLUMNS
    hole_loop = [palm_rings[rows[0]][col] for col in cols]
    hole_loop += [palm_rings[row][cols[-1]] for row in rows[1:]]
    hole_loop += [palm_rings[rows[-1]][col] for col in reversed(cols[:-1])]
    hole_loop += [palm_rings[row][cols[0]] for row in reversed(rows[1:-1])]
    assert len(hole_loop) == FINGER_RING_SIZE
    for vert_idx in hole_loop:
        base_loop_owners[vert_idx] = (1,)
    thumb_skel = skeletons["thumb"]
    lateral, dorsal = _digit_frame(thumb_skel.dirs[0], thumb_skel.dorsal_ref)
    rel = np.array([mesh.positions[i] for i in hole_loop]) - thumb_skel.joints_m[0]
    hole_angles_rad = np.unwrap(np.arctan2(rel @ dorsal, rel @ lateral))
    if hole_angles_rad[-1] < hole_angles_rad[0]:
        hole_loop = hole_loop[::-1]
        hole_angles_rad = hole_angles_rad[::-1]
    tip_vertex_idx["thumb"], tip_ring_idx["thumb"] = _add_digit_tube(
        mesh, faces, thumb_skel, "thumb", hole_loop, THUMB_RINGS, float(hole_angles_rad[0])
    )

    # 7. Drop the vertices inside the thumb opening, orient, smooth the palm, open the wrist.
    verts = np.array(mesh.positions)
    face_arr = np.array(faces, dtype=np.int64)
    is_used = np.zeros(len(verts), dtype=bool)
    is_used[face_arr.ravel()] = True
    new_idx = np.cumsum(is_used) - 1
    verts, face_arr = verts[is_used], new_idx[face_arr]
    face_arr = _orient_faces(face_arr, verts)
    labels_used = np.array(mesh.digit_label)[is_used]
    arcs_used = np.array(mesh.arc_m)[is_used]
    is_movable = (labels_used == 0) | ((labels_used == 1) & (arcs_used < THUMB_SMOOTHED_ARC_M))
    is_movable[new_idx[wrist_ring]] = False
    is_movable[new_idx[wrist_centre_idx]] = False
    verts = _taubin_smooth(verts, face_arr, is_movable, num_iters=8)
    keep_faces = ~np.any(face_arr == new_idx[wrist_centre_idx], axis=1)
    face_arr = face_arr[keep_faces]
    is_kept = np.ones(len(verts), dtype=bool)
    is_kept[new_idx[wrist_centre_idx]] = False
    final_idx = np.cumsum(is_kept) - 1
    old_to_final = final_idx[new_idx]
    assert len(verts) - 1 == NUM_MANO_VERTICES and len(face_arr) == NUM_MANO_FACES, (len(verts), len(face_arr))

    keep = is_used.copy()
    keep[wrist_centre_idx] = False
    return _RawHand(
        verts_m=verts[is_kept],
        faces=final_idx[face_arr],
        digit_label=np.array(mesh.digit_label)[keep],
        arc_m=np.array(mesh.arc_m)[keep],
        centre_m=np.array(mesh.centre)[keep],
        base_loop_owners={int(old_to_final[k]): v for k, v in base_loop_owners.items()},
        tip_vertex_idx={k: int(old_to_final[v]) for k, v in tip_vertex_idx.items()},
        tip_ring_idx={k: tuple(int(old_to_final[i]) for i in v) for k, v in tip_ring_idx.items()},
        skeletons=skeletons,
    )


def _add_digit_tube(
    mesh: _MeshBuilder,
    faces: list[tuple[int, int, int]],
    skel: _DigitSkeleton,
    name: str,
    base_loop: list[int],
    ring_specs: tuple[tuple[int, float], ...],
    phase_rad: float | None,
) -> tuple[int, tuple[int, ...]]:
    """Adds the rings and tip of one digit on top of its base loop.

    Returns:
        The apex vertex index and the last ring's vertex indices, most palmar first.
    """
    label = FINGER_NAMES.index(name) + 1
    num = FINGER_RING_SIZE
    slot_angles_rad = 2.0 * np.pi * np.arange(num) / num + (phase_rad or 0.0)
    total_m = float(skel.lengths_m.sum())
    tip_radius_m = float(skel.radii_m[-1])
    # Body rings, then hemisphere rings centred tip_radius_m before the tip.
    ring_params: list[tuple[np.ndarray, np.ndarray, float, float, float]] = []
    for bone_idx, fraction in ring_specs:
        centre, direction, arc_m, radius_m = skel.point(bone_idx, fraction)
        ring_params.append((centre, direction, arc_m, radius_m, 1.0))
    for polar_deg in TIP_HEMISPHERE_DEG:
        arc_m = total_m - tip_radius_m + tip_radius_m * np.sin(np.deg2rad(polar_deg))
        fraction = (arc_m - skel.lengths_m[:2].sum()) / skel.lengths_m[2]
        centre, direction, _, _ = skel.point(2, float(fraction))
        ring_params.append((centre, direction, arc_m, tip_radius_m, float(np.cos(np.deg2rad(polar_deg)))))
    previous = base_loop
    for centre, direction, arc_m, radius_m, scale in ring_params:
        lateral, dorsal = _digit_frame(direction, skel.dorsal_ref)
        ring = []
        for angle_rad in slot_angles_rad:
            offset = radius_m * scale * (np.cos(angle_rad) * lateral + FINGER_HEIGHT_RATIO * np.sin(angle_rad) * dorsal)
            ring.append(mesh.add(centre + offset, label, arc_m, centre))
        faces += _stitch_equal(previous, ring)
        previous = ring
    tip = skel.joints_m[3]
    tip_idx = mesh.add(tip, label, total_m, tip)
    faces += [(previous[k], previous[(k + 1) % num], tip_idx) for k in range(num)]
    _, dorsal = _digit_frame(skel.dirs[2], skel.dorsal_ref)
    dorsal_height = [float((mesh.positions[i] - tip) @ dorsal) for i in previous]
    return tip_idx, tuple(previous[k] for k in np.argsort(dorsal_height, kind="stable"))


# ---------------------------------------------------------------------------------------------
# Model arrays
# ---------------------------------------------------------------------------------------------


def _rest_joints_palm(skeletons: dict[str, _DigitSkeleton]) -> np.ndarray:
    """(16, 3) designed rest joints in the palm frame, MANO joint order."""
    joints_m = np.zeros((NUM_MANO_JOINTS, 3))
    for name, joint_ids in MANO_FINGER_JOINTS.items():
        joints_m[list(joint_ids)] = skeletons[name].joints_m[:3]
    return joints_m


def _joint_regressor(verts_m: np.ndarray, joints_m: np.ndarray) -> scipy.sparse.csc_matrix:
    """Non-negative rows summing to 1 that reproduce each designed joint from nearby vertices.

    Each joint uses its JOINT_REGRESSOR_NEIGHBOURS nearest vertices; non-negative least squares keeps
    the weights close to uniform while matching the joint position (as MANO's own regressor, the
    joints then follow the surface under shape blend shapes).
    """
    from scipy.optimize import nnls  # 1 s to import; only building a procedural model needs it

    rows, cols, vals = [], [], []
    uniform_pull = 1e-3
    for joint_idx, joint in enumerate(joints_m):
        nearest = np.argsort(np.linalg.norm(verts_m - joint, axis=1))[:JOINT_REGRESSOR_NEIGHBOURS]
        num = len(nearest)
        system = np.vstack([verts_m[nearest].T, np.ones((1, num)), uniform_pull * np.eye(num)])
        target = np.concatenate([joint, [1.0], uniform_pull * np.full(num, 1.0 / num)])
        weights, _ = nnls(system, target)
        weights /= weights.sum()
        rows += [joint_idx] * num
        cols += list(nearest)
        vals += list(weights)
    regressor = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(NUM_MANO_JOINTS, len(verts_m)))
    regressor.eliminate_zeros()
    return regressor


def _digit_chain_weights(arc_m: np.ndarray, joint_ids: tuple[int, int, int], lengths_m: np.ndarray,
                         base_arc_m: float, base_half_width_m: float) -> np.ndarray:
    """(n, 16) skinning weights along one digit: wrist -> base joint -> j2 -> j3, smooth at joints."""
    follows_base = _smoothstep((arc_m - base_arc_m + base_half_width_m) / (2 * base_half_width_m))
    follows_j2 = _smoothstep((arc_m - lengths_m[0] + SKIN_BLEND_HALF_WIDTH_M) / (2 * SKIN_BLEND_HALF_WIDTH_M))
    follows_j3 = _smoothstep(
        (arc_m - lengths_m[:2].sum() + SKIN_BLEND_HALF_WIDTH_M) / (2 * SKIN_BLEND_HALF_WIDTH_M)
    )
    weights = np.zeros((len(arc_m), NUM_MANO_JOINTS))
    weights[:, 0] = 1.0 - follows_base
    weights[:, joint_ids[0]] = follows_base - follows_j2
    weights[:, joint_ids[1]] = follows_j2 - follows_j3
    weights[:, joint_ids[2]] = follows_j3
    return weights


def _skinning_weights(raw: _RawHand) -> np.ndarray:
    """(778, 16) LBS weights: palm on the wrist, digits on their bones, shared base loops averaged."""
    # 1. Digit vertices follow their own chain by arc length.
    weights = np.zeros((len(raw.verts_m), NUM_MANO_JOINTS))
    weights[:, 0] = 1.0
    thumb = raw.skeletons["thumb"]
    hole_idx = [vert_idx for vert_idx, owners in raw.base_loop_owners.items() if owners == (1,)]
    thumb_base_arc_m = float(np.mean((raw.verts_m[hole_idx] - thumb.joints_m[0]) @ thumb.dirs[0]))
    base_arc_m = {name: (thumb_base_arc_m if name == "thumb" else 0.0) for name in FINGER_NAMES}
    base_half_width_m = {name: SKIN_BLEND_HALF_WIDTH_MCP_M for name in FINGER_NAMES}
    base_half_width_m["thumb"] = SKIN_BLEND_HALF_WIDTH_CMC_M
    for label, name in enumerate(FINGER_NAMES, start=1):
        is_digit = raw.digit_label == label
        weights[is_digit] = _digit_chain_weights(
            raw.arc_m[is_digit], MANO_FINGER_JOINTS[name], raw.skeletons[name].lengths_m,
            base_arc_m[name], base_half_width_m[name],
        )
    # 2. Base-loop (knuckle line, thumb opening) vertices: average of the digits that share them.
    for vert_idx, owners in raw.base_loop_owners.items():
        rows = []
        for label in owners:
            name = FINGER_NAMES[label - 1]
            skel = raw.skeletons[name]
            arc_m = np.array([(raw.verts_m[vert_idx] - skel.joints_m[0]) @ skel.dirs[0]])
            rows.append(_digit_chain_weights(arc_m, MANO_FINGER_JOINTS[name], skel.lengths_m,
                                             base_arc_m[name], base_half_width_m[name])[0])
        weights[vert_idx] = np.mean(rows, axis=0)
        if len(owners) > 1:
            # Web skin between two fingers stays mostly with the palm (and is labelled palm).
            weights[vert_idx] = 0.5 * weights[vert_idx] + 0.5 * np.eye(NUM_MANO_JOINTS)[0]
    # 3. Thenar skin around the thumb opening partly follows the thumb CMC.
    hole_centre = raw.verts_m[hole_idx].mean(axis=0)
    is_plain_palm = (raw.digit_label == 0) & ~np.isin(np.arange(len(raw.verts_m)), list(raw.base_loop_owners))
    dist_m = np.linalg.norm(raw.verts_m - hole_centre, axis=1)
    thenar_share = THENAR_WEIGHT * _smoothstep(1.0 - dist_m / THENAR_RADIUS_M) * is_plain_palm
    cmc_idx = MANO_FINGER_JOINTS["thumb"][0]
    weights[is_plain_palm, cmc_idx] += thenar_share[is_plain_palm]
    weights[is_plain_palm, 0] -= thenar_share[is_plain_palm]
    return weights / weights.sum(axis=1, keepdims=True)


def _flexion_axes_palm(skeletons: dict[str, _DigitSkeleton]) -> dict[str, np.ndarray]:
    """(3, 3) unit flexion axis per digit joint, palm frame: positive angles curl towards the palm."""
    axes = {}
    for name, skel in skeletons.items():
        rows = []
        for bone_idx in range(3):
            _, dorsal = _digit_frame(skel.dirs[bone_idx], skel.dorsal_ref)
            rows.append(_unit(np.cross(skel.dirs[bone_idx], -dorsal)))
        axes[name] = np.array(rows)
    return axes


def _pose_correctives(raw: _RawHand, normals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(778, 3, 135) small pose-corrective offsets (palm frame) around each finger joint.

    Flexing a joint pushes the knuckle out dorsally and bulges the palmar skin (both proportional
    to sin(flexion)), and any rotation rounds the joint slightly (1 - cos); Gaussian falloff along
    the digit. Only vertices skinned to a joint of the same digit move, so a pose of one finger never
    changes another finger's vertices.
    """
    posedirs = np.zeros((len(raw.verts_m), 3, 9 * (NUM_MANO_JOINTS - 1)))
    flex_axes = _flexion_axes_palm(raw.skeletons)
    for name, joint_ids in MANO_FINGER_JOINTS.items():
        skel = raw.skeletons[name]
        joint_arcs_m = np.concatenate([[0.0], np.cumsum(skel.lengths_m)])[:3]
        for k, joint_idx in enumerate(joint_ids):
            is_affected = weights[:, list(joint_ids)].sum(axis=1) > 0
            axis = flex_axes[name][k]
            palmar_dir = np.cross(axis, skel.dirs[k])
            arc_m = (raw.verts_m - skel.joints_m[k]) @ skel.dirs[k] + joint_arcs_m[k]
            sigma_m = POSE_CORRECTIVE_SIGMA_SCALE * skel.radii_m[k]
            falloff = np.exp(-(((arc_m - joint_arcs_m[k]) / sigma_m) ** 2)) * is_affected
            side = normals @ palmar_dir  # > 0 palmar skin, < 0 dorsal skin
            sin_gain_m = (
                POSE_CORRECTIVE_PALMAR_M * np.maximum(side, 0) + POSE_CORRECTIVE_DORSAL_M * np.maximum(-side, 0)
            )
            coeff_sin, coeff_cos = _rotation_feature_coeffs(axis)
            per_vertex = (
                (falloff * sin_gain_m)[:, None, None] * coeff_sin[None]
                + (falloff * POSE_CORRECTIVE_ROUND_M)[:, None, None] * coeff_cos[None]
            )  # (n, 3, 3) scalar gain per (R - I) entry
            block = normals[:, :, None] * per_vertex.reshape(-1, 1, 9)
            posedirs[:, :, 9 * (joint_idx - 1): 9 * joint_idx] = block
    return posedirs


def _shape_blendshapes(raw: _RawHand) -> np.ndarray:
    """(778, 3, 10) displacement per unit beta (metres, palm frame).

    0 overall size, 1 finger length, 2 palm width, 3 palm length, 4 thickness, 5 finger girth,
    6 thumb size, 7 little-finger length, 8 index vs ring length, 9 palmar pads (fleshiness).
    """
    verts = raw.verts_m
    labels = raw.digit_label
    shapedirs = np.zeros((len(verts), 3, NUM_BETAS))
    is_palm = labels == 0
    is_finger = labels >= 2
    digit_dir = np.zeros_like(verts)
    digit_base = np.zeros_like(verts)
    for label, name in enumerate(FINGER_NAMES, start=1):
        skel = raw.skeletons[name]
        is_digit = labels == label
        bone_idx = np.clip(np.searchsorted(np.cumsum(skel.lengths_m), raw.arc_m[is_digit]), 0, 2)
        digit_dir[is_digit] = skel.dirs[bone_idx]
        digit_base[is_digit] = skel.joints_m[0]
    radial = np.where(is_palm[:, None], 0.0, verts - raw.centre_m)
    a_hat, w_hat, h_hat = np.eye(3)
    # 1. Size, finger length, palm width, palm length.
    shapedirs[:, :, 0] = 0.05 * verts
    shapedirs[:, :, 1] = np.where(is_finger[:, None], 0.07 * raw.arc_m[:, None] * digit_dir, 0.0)
    w_anchor = np.where(is_palm, verts[:, 1], digit_base[:, 1])
    shapedirs[:, :, 2] = 0.06 * w_anchor[:, None] * w_hat
    a_anchor = np.where(is_palm, np.clip(verts[:, 0], 0.0, None), np.clip(digit_base[:, 0], 0.0, None))
    shapedirs[:, :, 3] = 0.05 * a_anchor[:, None] * a_hat
    # 2. Thickness (back-to-palm) and girth.
    shapedirs[:, :, 4] = np.where(
        is_palm[:, None], 0.10 * verts[:, 2:3] * h_hat, 0.06 * (radial @ h_hat)[:, None] * h_hat
    )
    shapedirs[:, :, 5] = 0.08 * radial * (labels >= 1)[:, None]
    # 3. Thumb size, little-finger length, index vs ring (2D:4D).
    thumb = raw.skeletons["thumb"]
    shapedirs[:, :, 6] = np.where((labels == 1)[:, None], 0.08 * (verts - thumb.joints_m[0]), 0.0)
    shapedirs[:, :, 7] = np.where((labels == 5)[:, None], 0.08 * raw.arc_m[:, None] * digit_dir, 0.0)
    index_vs_ring = np.select([labels == 2, labels == 4], [0.05, -0.05], 0.0)
    shapedirs[:, :, 8] = (index_vs_ring * raw.arc_m)[:, None] * digit_dir
    # 4. Palmar pads: palm skin below the mid-plane thickens.
    half_thickness = np.array([_palm_section(a)[1] for a in verts[:, 0]])
    palmar_depth = np.clip(-verts[:, 2] / half_thickness, 0.0, 1.0) * is_palm
    shapedirs[:, :, 9] = -0.002 * palmar_depth[:, None] * h_hat
    return shapedirs


def _synergy_basis(skeletons: dict[str, _DigitSkeleton]) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal (45, 45) hand-pose basis (world frame axis-angle) and a relaxed mean pose (45,).

    The leading rows mimic what MANO's PCA finds first: coordinated curl, spread, thumb opposition,
    knuckle-vs-finger curl, index pointing, thumb flexion, ulnar curl; the rest completes the basis.
    """
    flex, opposition_axis = _digit_axes_world(skeletons)
    spread_axis = PALM_TO_WORLD @ np.array([0.0, 0.0, 1.0])  # about the back-of-hand normal, towards the thumb

    def pose(per_joint: dict[int, np.ndarray]) -> np.ndarray:
        vec = np.zeros(NUM_HAND_POSE_DIMS)
        for joint_idx, axis_angle in per_joint.items():
            vec[3 * (joint_idx - 1): 3 * joint_idx] += axis_angle
        return vec

    def curl(names: tuple[str, ...], gains: tuple[float, float, float]) -> dict[int, np.ndarray]:
        return {MANO_FINGER_JOINTS[n][k]: gains[k] * flex[n][k] for n in names for k in range(3)}

    fingers = FINGER_NAMES[1:]
    spread_gain = {"index": 1.0, "middle": 0.1, "ring": -0.6, "little": -1.0}
    thumb_ids = MANO_FINGER_JOINTS["thumb"]
    synergies = [
        pose(
            {**curl(fingers, (1.0, 1.1, 0.7)), **curl(("thumb",), (0.0, 0.5, 0.5)), thumb_ids[0]: 0.5 * opposition_axis}
        ),
        pose(
            {MANO_FINGER_JOINTS[n][0]: spread_gain[n] * spread_axis for n in fingers}
            | {thumb_ids[0]: -0.4 * opposition_axis}
        ),
        pose({thumb_ids[0]: 1.0 * opposition_axis, **curl(("thumb",), (0.0, 0.4, 0.3))}),
        pose(curl(fingers, (1.0, -0.7, -0.5))),
        pose({**curl(("middle", "ring", "little"), (0.8, 0.9, 0.6)), **curl(("index",), (-0.6, -0.6, -0.4))}),
        pose(curl(("thumb",), (0.2, 1.0, 1.0))),
        pose({**curl(("ring", "little"), (1.0, 1.0, 0.7)), **curl(("index", "middle"), (-0.7, -0.7, -0.5))}),
        pose(curl(fingers, (0.0, 0.6, -1.0))),
    ]
    basis = []
    for vec in list(synergies) + list(np.eye(NUM_HAND_POSE_DIMS)):
        for done in basis:
            vec = vec - (vec @ done) * done
        norm = np.linalg.norm(vec)
        if norm > 1e-6:
            basis.append(vec / norm)
        if len(basis) == NUM_HAND_POSE_DIMS:
            break
    # Relaxed hand: slight curl, growing towards the little finger (radians per joint).
    relaxed = pose({
        **curl(("index", "middle"), (0.15, 0.30, 0.15)),
        **curl(("ring", "little"), (0.20, 0.38, 0.20)),
        **curl(("thumb",), (0.0, 0.15, 0.20)),
        thumb_ids[0]: 0.2 * opposition_axis,
    })
    return np.array(basis), relaxed


def _digit_axes_world(skeletons: dict[str, _DigitSkeleton]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Flexion axes of every digit joint ((3, 3) per digit) and the thumb's opposition axis, in MANO's world frame."""
    flex = {name: axes @ PALM_TO_WORLD.T for name, axes in _flexion_axes_palm(skeletons).items()}
    thumb = skeletons["thumb"]
    palm_target = np.array([0.05, -0.01, -0.02])  # palm centre, palmar side (palm frame)
    opposition_axis = PALM_TO_WORLD @ _unit(np.cross(thumb.dirs[0], _unit(palm_target - thumb.joints_m[0])))
    return flex, opposition_axis


def digit_axes_world() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The procedural hand's joint axes (right hand, MANO's world frame): per digit its three flexion axes
    ((3, 3), MCP..DIP or CMC..IP), and the thumb's opposition axis (3,). Poses are built on them
    (`unihope.hand.poses`).
    """
    return _digit_axes_world({name: _digit_skeleton(spec) for name, spec in DIGITS.items()})


def _tip_targets() -> dict[str, list[int]]:
    """Per finger, the distinct fingertip ids of every convention and side: the apex's id first."""
    targets = {}
    for finger_idx, name in enumerate(FINGER_NAMES):
        apex_id = TIP_CONVENTIONS[TIP_APEX_CONVENTION]["right"][finger_idx]
        others = {ids[finger_idx] for sides in TIP_CONVENTIONS.values() for ids in sides.values()} - {apex_id}
        targets[name] = [apex_id, *sorted(others)]
    return targets


def _tip_permutation(raw: _RawHand, num_verts: int) -> np.ndarray:
    """new -> old vertex order that puts every convention's fingertip id on the fingertip.

    The apex takes the first id of `_tip_targets`, the last ring's most palmar vertices the others.
    """
    new_to_old = np.full(num_verts, -1)
    for name, target_ids in _tip_targets().items():
        sources = [raw.tip_vertex_idx[name], *raw.tip_ring_idx[name]]
        for target_idx, old_idx in zip(target_ids, sources):
            new_to_old[target_idx] = old_idx
    placed = set(new_to_old[new_to_old >= 0].tolist())
    remaining = iter(sorted(set(range(num_verts)) - placed))
    for new_idx in range(num_verts):
        if new_to_old[new_idx] < 0:
            new_to_old[new_idx] = next(remaining)
    return new_to_old


def build_procedural_mano(side: str = "right") -> dict[str, Any]:
    """Builds the procedural hand as the dict MANO's pickle holds.

    Args:
        side: "right" or "left" (the left hand is the exact mirror of the right, see
            unihope.hand.mirror.mirror_mano, with
            vertices 444 and 445 exchanged, see left_vertex_order).

    Returns:
        Keys v_template (778, 3) m, f (1538, 3) uint32, J_regressor (16, 778) csc, kintree_table
        (2, 16) int64, weights (778, 16), shapedirs (778, 3, 10) m, posedirs (778, 3, 135) m,
        hands_components (45, 45), hands_mean (45,) rad, hands_coeffs (1, 45), bs_style 'lbs',
        bs_type 'lrotmin'; all float64 in MANO's world frame.

    Raises:
        ValueError: if side is not "right" or "left".
    """
    # 1. Check inputs.
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")

    # 2. Surface, joints, regressor and weights in the palm frame.
    raw = _build_raw_hand()
    joints_palm_m = _rest_joints_palm(raw.skeletons)
    regressor = _joint_regressor(raw.verts_m, joints_palm_m)
    weights = _skinning_weights(raw)
    normals = _vertex_normals(raw.verts_m, raw.faces)

    # 3. Blend shapes in the palm frame, then everything to MANO's world frame.
    shapedirs_palm = _shape_blendshapes(raw)
    posedirs_palm = _pose_correctives(raw, normals, weights)
    v_template = raw.verts_m @ PALM_TO_WORLD.T + WRIST_WORLD_M
    shapedirs = np.einsum("ij,vjk->vik", PALM_TO_WORLD, shapedirs_palm)
    # posedirs multiply (R - I) entries given in world axes: rotate the offsets and the features.
    posedirs_blocks = posedirs_palm.reshape(len(v_template), 3, NUM_MANO_JOINTS - 1, 3, 3)
    posedirs = np.einsum(
        "ic,vcjrs,pr,qs->vijpq", PALM_TO_WORLD, posedirs_blocks, PALM_TO_WORLD, PALM_TO_WORLD
    ).reshape(len(v_template), 3, -1)
    hands_components, hands_mean = _synergy_basis(raw.skeletons)

    # 4. Put every convention's fingertip ids on the fingertips.
    new_to_old = _tip_permutation(raw, len(v_template))
    old_to_new = np.argsort(new_to_old)
    kintree_table = np.array([[2**32 - 1 if p < 0 else p for p in MANO_PARENTS], list(range(NUM_MANO_JOINTS))],
                             dtype=np.int64)
    arrays: dict[str, Any] = {
        "v_template": v_template[new_to_old],
        "f": old_to_new[raw.faces].astype(np.uint32),
        "J_regressor": scipy.sparse.csc_matrix(regressor[:, new_to_old]),
        "kintree_table": kintree_table,
        "weights": weights[new_to_old],
        "shapedirs": shapedirs[new_to_old],
        "posedirs": posedirs[new_to_old],
        "hands_components": hands_components,
        "hands_mean": hands_mean,
        "hands_coeffs": np.zeros((1, NUM_HAND_POSE_DIMS)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    return left_hand_from_right(arrays) if side == "left" else arrays


def left_vertex_order() -> np.ndarray:
    """(778,) left vertex -> the right vertex it mirrors: identity except where manopth's tip ids differ.

    manopth takes the left middle tip from vertex 445 and the right one from 444 (so that each is
    the other's mirror on MANO); the procedural left hand exchanges those two vertices of the exact
    mirror, so manopth's left joints are the mirror of its right joints, as on real MANO.
    """
    order = np.arange(NUM_MANO_VERTICES)
    for right_id, left_id in zip(TIP_CONVENTIONS["manopth"]["right"], TIP_CONVENTIONS["manopth"]["left"]):
        order[left_id], order[right_id] = right_id, left_id
    return order


def left_hand_from_right(arrays: dict[str, Any]) -> dict[str, Any]:
    """The left hand of a right-hand MANO array dict: its mirror, numbered like the procedural left hand."""
    return _swap_left_tip_vertices(mirror_mano(arrays))


def _swap_left_tip_vertices(arrays: dict[str, Any]) -> dict[str, Any]:
    """The mirrored arrays with their vertices renumbered by `left_vertex_order` (a relabelling only)."""
    new_to_old = left_vertex_order()
    old_to_new = np.argsort(new_to_old)
    swapped = dict(arrays)
    for name in ("v_template", "weights", "shapedirs", "posedirs"):
        swapped[name] = arrays[name][new_to_old]
    swapped["f"] = old_to_new[arrays["f"]].astype(arrays["f"].dtype)
    swapped["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"][:, new_to_old])
    return swapped


def write_procedural_mano(path: Path, side: str = "right") -> Path:
    """Writes the procedural hand as a MANO pickle, atomically (temp file + os.replace).

    Args:
        path: destination file; its name should start with MANO_ (smplx picks the model type and,
            for a file path, the side from the name: MANO_RIGHT.pkl / MANO_LEFT.pkl).
        side: "right" or "left".

    Returns:
        The path written.

    Raises:
        ValueError: if side is not "right" or "left".
    """
    return write_mano_pickle(build_procedural_mano(side), Path(path))
