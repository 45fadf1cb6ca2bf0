"""Hand poses built on the procedural hand's joint axes: the grasp curl the generator and the preview pose."""

from __future__ import annotations

import numpy as np

from unihope.hand.constants import MANO_FINGER_JOINTS, NUM_HAND_POSE_DIMS
from unihope.hand.procedural import digit_axes_world

POWER_GRASP_FINGER_DEG = (80.0, 95.0, 60.0)  # MCP, PIP, DIP at curl_amount = 1
POWER_GRASP_THUMB_DEG = (0.0, 30.0, 45.0)  # CMC, MCP, IP flexion at curl_amount = 1
THUMB_OPPOSITION_DEG = 50.0  # CMC rotation across the palm at thumb_opposition = 1


def curl_pose(curl_amount: float, thumb_opposition: float) -> np.ndarray:
    """(45,) axis-angle hand pose (world frame, right hand) that curls the procedural hand.

    Args:
        curl_amount: 0 = flat, 1 = a power grasp (about 80/95/60 deg at MCP/PIP/DIP).
        thumb_opposition: 0 = thumb at rest, 1 = thumb rotated across the palm (about 50 deg).

    Returns:
        (45,) float64 axis-angle in MANO's joint order, radians.
    """
    flex, opposition_axis = digit_axes_world()
    finger_angles_rad = np.deg2rad(POWER_GRASP_FINGER_DEG)
    thumb_angles_rad = np.deg2rad(POWER_GRASP_THUMB_DEG)
    pose = np.zeros(NUM_HAND_POSE_DIMS)
    for name, joint_ids in MANO_FINGER_JOINTS.items():
        angles_rad = thumb_angles_rad if name == "thumb" else finger_angles_rad
        for k, joint_idx in enumerate(joint_ids):
            pose[3 * (joint_idx - 1): 3 * joint_idx] = curl_amount * angles_rad[k] * flex[name][k]
    cmc = MANO_FINGER_JOINTS["thumb"][0]
    pose[3 * (cmc - 1): 3 * cmc] += thumb_opposition * np.deg2rad(THUMB_OPPOSITION_DEG) * opposition_axis
    return pose
