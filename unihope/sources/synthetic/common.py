"""Shared helpers of the synthetic generator: the per-key seed, rotations and rigid transforms, left-hand mirroring."""

from __future__ import annotations

import zlib

import numpy as np

from unihope.hand.mirror import mirror_axis_angle
from unihope.rotations import matrix_from_axis_angle

TRUTH_DIR = "truth"


def seed_from(*parts: object) -> int:
    """A generator seed from a key (e.g. dataset seed + sequence key), stable across runs and machines."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def unit(vec: np.ndarray) -> np.ndarray:
    return vec / np.linalg.norm(vec)


def rot_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    return matrix_from_axis_angle(unit(np.asarray(axis, dtype=np.float64)) * angle_rad)


def rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def mirror_pose_for_side(pose45: np.ndarray, side: str) -> np.ndarray:
    """The procedural curl poses are right-hand poses; the left hand mirrors them (a0, -a1, -a2)."""
    return pose45 if side == "right" else mirror_axis_angle(pose45)
