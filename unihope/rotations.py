"""Axis-angle <-> rotation matrix, the one conversion (scipy's Rotation: robust near 0 and pi)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def matrix_from_axis_angle(axis_angle_rad: np.ndarray) -> np.ndarray:
    """(3, 3) float64 rotation matrix of one axis-angle vector (any shape holding 3 values, radians)."""
    return Rotation.from_rotvec(np.asarray(axis_angle_rad, dtype=np.float64).reshape(3)).as_matrix()


def axis_angle_from_matrix(R: np.ndarray) -> np.ndarray:
    """(3,) float64 axis-angle (radians) of a (3, 3) rotation matrix."""
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64).reshape(3, 3)).as_rotvec()
