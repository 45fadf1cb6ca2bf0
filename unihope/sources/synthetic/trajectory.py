"""The motion of one sequence: approach with open fingers, close around the object, lift and turn it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unihope.config import GraspConfig
from unihope.sources.common import transform_mano_global
from unihope.sources.synthetic.common import rigid, rot_about, unit
from unihope.sources.synthetic.grasp_plan import GraspPlan

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


@dataclass(frozen=True, slots=True)
class Trajectory:
    phases: tuple[str, ...]  # per frame: "approach" | "close" | "lift"
    global_orient_world: np.ndarray  # (T, 3)
    transl_world_m: np.ndarray  # (T, 3)
    hand_pose: np.ndarray  # (T, 45)
    T_world_from_grasped: np.ndarray  # (T, 4, 4)


def plan_trajectory(
    plan: GraspPlan, num_frames: int, T_world_from_obj0: np.ndarray, root_joint_rest_m: np.ndarray, rng: np.random.Generator
) -> Trajectory:
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
    turn_axis = unit(np.cross(up, normal) + rng.normal(0, LIFT_TURN_AXIS_JITTER, 3) * np.array([1, 1, 0]))
    drift = rng.normal(0, 1, 3) * np.array([1, 1, 0])
    drift = LIFT_DRIFT_M * drift / max(np.linalg.norm(drift), 1e-9)
    for i in range(num_lift):
        s = 1.0 if num_lift == 1 else LIFT_FIRST_FRACTION + (1 - LIFT_FIRST_FRACTION) * i / (num_lift - 1)
        R_lift = rot_about(turn_axis, angle_rad * s)
        t_lift = plan.pivot_world_m + up * lift_m * s + drift * s - R_lift @ plan.pivot_world_m
        orient, transl = transform_mano_global(plan.global_orient_world, plan.transl_world_m, R_lift, t_lift, root_joint_rest_m)
        phases.append("lift")
        orients.append(orient)
        transls.append(transl)
        poses.append(plan.hand_pose_grasp)
        T_objs.append(rigid(R_lift, t_lift) @ T_world_from_obj0)

    # 4. Internal check: the first lifted frame already passes the grasp rule with a margin
    T_first = T_objs[num_approach + num_close]
    rte_m = float(np.linalg.norm(T_first[:3, 3] - T_world_from_obj0[:3, 3]))
    rre_deg = float(np.degrees(np.arccos(np.clip((np.trace(T_first[:3, :3].T @ T_world_from_obj0[:3, :3]) - 1) / 2, -1, 1))))
    if (rte_m < MIN_FIRST_LIFT_MARGIN * DEFAULT_GRASP.rte_threshold_m
            and rre_deg < MIN_FIRST_LIFT_MARGIN * DEFAULT_GRASP.rre_threshold_deg):
        raise AssertionError(f"first lift frame moved only {rte_m:.3f} m / {rre_deg:.1f} deg")
    return Trajectory(tuple(phases), np.array(orients), np.array(transls), np.array(poses), np.array(T_objs))
