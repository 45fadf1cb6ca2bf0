"""Grasp labels: the grasped object's motion against frame 0 of its sequence and camera (UniHOPE's RRE/RTE rule)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from unihope.storage.schema import FrameRecord, GraspLabel
from unihope.config import GraspConfig

RAD_TO_DEG = 180.0 / np.pi


def relative_pose_errors(T_ref: np.ndarray, T_cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative rotation / translation error of N object poses against one reference pose.

    Follows UniHOPE: T = inv(T_cur) @ T_ref (4x4), RRE = arccos(clip((trace(R_T) - 1) / 2, -1, 1)) in
    degrees, RTE = norm of T's translation column. Since inv(T_cur) = [R_cur^T | -R_cur^T t_cur],
    R_T = R_cur^T R_ref and t_T = R_cur^T (t_ref - t_cur), so RTE = |t_ref - t_cur| for a rotation R_cur.

    Args:
        T_ref: (3, 4) or (4, 4) [R|t] camera-from-object pose of the reference frame, metres.
        T_cur: (N, 3, 4) or (N, 4, 4) poses of the frames to compare, metres.

    Returns:
        rre_deg: (N,) float64 relative rotation error, degrees in [0, 180].
        rte_m: (N,) float64 relative translation error, metres.

    Raises:
        ValueError: on wrong shapes or non-finite poses.
    """
    T_ref = np.asarray(T_ref, dtype=np.float64)
    T_cur = np.asarray(T_cur, dtype=np.float64)
    if T_ref.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"T_ref must have shape (3, 4) or (4, 4), got {T_ref.shape}")
    if T_cur.ndim != 3 or T_cur.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"T_cur must have shape (N, 3, 4) or (N, 4, 4), got {T_cur.shape}")
    if not (np.isfinite(T_ref[:3]).all() and np.isfinite(T_cur[:, :3]).all()):
        raise ValueError("object poses must be finite; the source should have skipped frames with NaN poses")
    R_ref, t_ref = T_ref[:3, :3], T_ref[:3, 3]
    R_cur, t_cur = T_cur[:, :3, :3], T_cur[:, :3, 3]
    # trace(R_cur^T R_ref) = sum_ij R_cur[i, j] * R_ref[i, j]: no (N, 3, 3) product needed.
    trace = np.einsum("nij,ij->n", R_cur, R_ref)
    rre_deg = np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)) * RAD_TO_DEG
    t_rel_m = np.einsum("nji,nj->ni", R_cur, t_ref[None, :] - t_cur)  # R_cur^T (t_ref - t_cur)
    rte_m = np.linalg.norm(t_rel_m, axis=1)
    return rre_deg, rte_m


def load_grasp_overrides(path: str | Path) -> dict[str, bool]:
    """Read a manual grasp label file: JSON {sample_key: bool} (as HO3D's upstream hand labels).

    Raises:
        ValueError: when the file is missing, not JSON, or holds anything but string keys and booleans.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grasp label override file not found: {path} (grasp.label_override_path)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{sample_key: true|false}}, got {type(data).__name__}")
    bad = [key for key, value in data.items() if not isinstance(value, bool)]
    if bad:
        raise ValueError(f"{path}: values must be true or false; {len(bad)} are not, e.g. {bad[0]!r}")
    return dict(data)


def label_grasps(
    frames: Sequence[FrameRecord],
    cfg: GraspConfig,
    overrides: Mapping[str, bool] | None = None,
) -> list[GraspLabel]:
    """Label every frame as grasping or not from the object's motion since its sequence's first frame.

    Frames are grouped by (sequence_key, serial). As upstream, a group's reference is frame 0 of that
    sequence and camera, which the source read from frame 0's own label file into each record
    (`grasp_reference_pose`), so it holds even when frame 0 itself was skipped (no annotated hand,
    unreadable image) or left out (split, max_frames). Records without a reference (a source that
    gives none) fall back to the group's earliest loaded `frame_idx`. Within a group the errors are
    computed in one vectorised call.

    Args:
        frames: records of any number of sequences and cameras, in any order.
        cfg: thresholds (`grasp = rre_deg > rre_threshold_deg or rte_m > rte_threshold_m`) and an optional
            override file, read when `overrides` is None.
        overrides: {sample_key: is_grasping} replacing the rule for the frames it names (label source
            "override"); RRE/RTE are still reported. Keys of frames not in `frames` are ignored.

    Returns:
        One `GraspLabel` per input frame, in input order.

    Raises:
        ValueError: on duplicate sample keys, non-finite object poses, or a group whose records
            disagree on their reference (some with one and some without, or different frames).
    """
    # 1. Check inputs.
    keys = [frame.sample_key for frame in frames]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicate = next(key for key in keys if key in seen or seen.add(key))
        raise ValueError(f"label_grasps got the frame {duplicate!r} more than once; pass each frame once")
    if overrides is None and cfg.label_override_path is not None:
        overrides = load_grasp_overrides(cfg.label_override_path)
    overrides = overrides or {}

    # 2. Group frame indices by (sequence, camera).
    groups: dict[tuple[str, str], list[int]] = {}
    for pos, frame in enumerate(frames):
        groups.setdefault((frame.sequence_key, frame.serial), []).append(pos)

    # 3. Vectorised RRE / RTE per group against its reference.
    labels: list[GraspLabel | None] = [None] * len(frames)
    for (sequence_key, serial), positions in groups.items():
        reference_key, reference_pose = _group_reference([frames[pos] for pos in positions], sequence_key, serial)
        poses = np.stack([frames[pos].object_pose for pos in positions])
        try:
            rre_deg, rte_m = relative_pose_errors(reference_pose, poses)
        except ValueError as err:
            raise ValueError(f"sequence {sequence_key!r}, camera {serial!r}: {err}") from err
        is_grasping_rule = (rre_deg > cfg.rre_threshold_deg) | (rte_m > cfg.rte_threshold_m)

        # 4. Build labels, applying manual overrides.
        for row, pos in enumerate(positions):
            key = frames[pos].sample_key
            is_override = key in overrides
            labels[pos] = GraspLabel(
                sample_key=key,
                rre_deg=float(rre_deg[row]),
                rte_m=float(rte_m[row]),
                is_grasping=bool(overrides[key]) if is_override else bool(is_grasping_rule[row]),
                reference_key=reference_key,
                source="override" if is_override else "rule",
            )
    return labels  # type: ignore[return-value]  # every position was filled in step 4


def _group_reference(group: Sequence[FrameRecord], sequence_key: str, serial: str) -> tuple[str, np.ndarray]:
    """(reference sample key, (3, 4) reference object pose) of one (sequence, camera) group.

    Raises:
        ValueError: when the group's records disagree on their reference.
    """
    with_reference = [frame for frame in group if frame.grasp_reference_pose is not None]
    if not with_reference:
        earliest = min(group, key=lambda frame: frame.frame_idx)
        return earliest.sample_key, earliest.object_pose
    if len(with_reference) != len(group) or len({frame.grasp_reference_key for frame in group}) != 1:
        raise ValueError(
            f"sequence {sequence_key!r}, camera {serial!r}: records disagree on the grasp reference "
            f"({sorted({frame.grasp_reference_key or '<none>' for frame in group})}); load them with one source"
        )
    return with_reference[0].grasp_reference_key, with_reference[0].grasp_reference_pose
