"""UniHOPE's square crop: hand box x1.5 united with the object box x1.5 when grasping, resized to a fixed size.

Two rules make the boxes (`CropConfig.rule`):

- ``unihope`` (default): UniHOPE's loader (`data_loader/DEX_YCB_HOPE.py`, `common/utils/dataset_hor_util.py`).
  The hand box is the min/max box of the 21 2D joints, its centre cast to int (truncated toward 0) and
  its half-size (max - min) * 1.5 / 2 per axis; the object box is made the same way from the 21 projected
  box keypoints. Grasping: the union of both boxes, clipped to [0, W] x [0, H], centred at
  int((min + max) / 2), with side = the larger extent. Not grasping: the hand box alone, clipped the same
  way. The crop is therefore the box the released DexYCB / HO3D models were trained on.
- ``mesh``: the projected hand mesh vertices' box x1.5 (and the object mesh's when grasping), centred
  on the union without integer rounding or clipping. Tighter on the fingertips' skin but ~1.15x larger than
  upstream's box (its joints sit inside the skin); kept for crops that must contain the whole mesh.
"""

from __future__ import annotations

import math

import numpy as np

from unihope.storage.schema import Crop, FrameRecord, GraspLabel, Skip, SkipReason
from unihope.config import CropConfig
from unihope.render.camera import project_points

STAGE = "annotate"
MIN_DEPTH_M = 1e-3  # vertices closer to (or behind) the camera plane make a projected box meaningless
UNIHOPE_CROP_OFFSET_PX = 0.5  # UniHOPE crop px - our crop px (its box edge is 0, ours -0.5)


def projected_box_xyxy(points_cam_m: np.ndarray, K: np.ndarray) -> np.ndarray | None:
    """Tight (4,) box [x1, y1, x2, y2] in px of points projected with K; None if any point is unusable.

    Args:
        points_cam_m: (V, 3) OpenCV camera-frame points, metres.
        K: (3, 3) intrinsics, px.

    Returns:
        (4,) float64 box, or None when a point is non-finite or not in front of the camera.
    """
    uv_px = projected_points(points_cam_m, K)
    return None if uv_px is None else tight_box_xyxy(uv_px)


def projected_points(points_cam_m: np.ndarray, K: np.ndarray) -> np.ndarray | None:
    """(V, 2) px of points projected with K; None if any point is non-finite or not in front of the camera."""
    points = np.asarray(points_cam_m, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] != 3:
        return None
    if not np.isfinite(points).all() or (points[:, 2] < MIN_DEPTH_M).any():
        return None
    return project_points(points, K)


def tight_box_xyxy(points_px: np.ndarray) -> np.ndarray:
    """(4,) float64 min/max box [x1, y1, x2, y2] of (N, 2) points."""
    points = np.asarray(points_px, dtype=np.float64)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def scale_box(box_xyxy: np.ndarray, scale: float) -> np.ndarray:
    """Scale a box's width and height about its centre."""
    centre = (box_xyxy[:2] + box_xyxy[2:]) / 2.0
    half = (box_xyxy[2:] - box_xyxy[:2]) / 2.0 * scale
    return np.concatenate([centre - half, centre + half])


def unihope_box_xyxy(points_px: np.ndarray, scale: float) -> np.ndarray:
    """UniHOPE's box of 2D points: min/max box, centre truncated to int, half-size (max - min) * scale / 2.

    The centre is truncated toward zero as Python's int() does (upstream casts with int()), so a box
    shifts by up to 1 px toward the image origin against the exact centre; the edges are rounded to
    float32 as upstream stores them.

    Args:
        points_px: (N, 2) points, px.
        scale: box factor (1.5 for the crop, 1.1 / 1.0 for the model's hand / object RoI).

    Returns:
        (4,) float64 [x1, y1, x2, y2] px.
    """
    tight = tight_box_xyxy(points_px)
    centre = np.trunc((tight[:2] + tight[2:]) / 2.0)
    half = (tight[2:] - tight[:2]) * scale / 2.0
    # Upstream returns this box as float32; the square's int() centre is taken from those rounded edges,
    # and a centre at an exact integer (x1 + x2 = 2c) lands 1 px lower about half the time after the rounding.
    return np.concatenate([centre - half, centre + half]).astype(np.float32).astype(np.float64)


def square_around_clipped(box_xyxy: np.ndarray, image_size_wh: tuple[int, int]) -> np.ndarray:
    """UniHOPE's square: clip to [0, W] x [0, H], centre int((min + max) / 2), side = the larger extent."""
    width_px, height_px = image_size_wh
    lower = np.maximum(box_xyxy[:2], 0.0)
    upper = np.minimum(box_xyxy[2:], [float(width_px), float(height_px)])
    centre = np.trunc((lower + upper) / 2.0)
    side_px = float((upper - lower).max())
    return np.concatenate([centre - side_px / 2.0, centre + side_px / 2.0])


def crop_affine(box_xyxy: np.ndarray, size_px: int) -> np.ndarray:
    """(2, 3) affine mapping full-image px to crop px for a square box resized to `size_px`.

    With pixel centres at integer coordinates, the box edge x1 is the left edge of crop pixel 0,
    i.e. crop coordinate -0.5: u_crop = s * (u - x1) - 0.5 with s = size_px / side.
    """
    side_px = float(box_xyxy[2] - box_xyxy[0])
    scale = size_px / side_px
    return np.array(
        [[scale, 0.0, -scale * box_xyxy[0] - 0.5], [0.0, scale, -scale * box_xyxy[1] - 0.5]], dtype=np.float64
    )


def unihope_affine(affine: np.ndarray) -> np.ndarray:
    """The crop affine in UniHOPE's convention: (2, 3) float32, the box edge x1 at crop coordinate 0.

    Our affine (`crop_affine`, what cv2.warpAffine takes) puts pixel centres at integer coordinates,
    so the box edge is crop coordinate -0.5. UniHOPE's loader (`get_affine_trans_no_rot` in
    `common/utils/dataset_hor_util.py`) maps u to s * (u - x1) with no half-pixel term and hands the
    matrix on as float32 (it warps with PIL, whose pixel centres sit at +0.5). Labels and images
    cropped with this matrix line up with the ones the released models were trained on.

    Args:
        affine: (2, 3) full px -> crop px in our convention (as `crop_affine` returns it).

    Returns:
        (2, 3) float32, full px -> crop px in UniHOPE's convention.
    """
    converted = np.asarray(affine, dtype=np.float64).copy()
    converted[:, 2] += UNIHOPE_CROP_OFFSET_PX
    return converted.astype(np.float32)


def compute_crop(
    frame: FrameRecord,
    grasp: GraspLabel,
    cfg: CropConfig,
    hand_vertices_cam_m: np.ndarray | None,
    object_vertices_cam_m: np.ndarray | None,
    object_keypoints_cam_m: np.ndarray | None = None,
) -> Crop | Skip:
    """Square crop around the hand box (x hand_box_scale) and, when grasping, the object box (x object_box_scale).

    Args:
        frame: the frame (its K, image size and, for the `unihope` rule, its 21 2D joints are used).
        grasp: its grasp label; the object box joins the crop only when `grasp.is_grasping`.
        cfg: crop rule, size and box scales.
        hand_vertices_cam_m: (778, 3) hand mesh vertices, OpenCV camera frame, metres (`mesh` rule only;
            may be None under the `unihope` rule).
        object_vertices_cam_m: (V, 3) object mesh vertices in the camera frame, metres (`mesh` rule,
            grasping frames only; may be None otherwise).
        object_keypoints_cam_m: (21, 3) object box keypoints in the camera frame, metres (`unihope` rule,
            grasping frames only; may be None otherwise).

    Returns:
        The `Crop` (affine full px -> crop px, crop intrinsics, square box in full px), or a `Skip`:
        DEGENERATE_POSE when a needed box is non-finite, behind the camera or smaller than the configured
        minimum; HAND_OUTSIDE_IMAGE when less than `cfg.min_hand_box_inside_fraction` of the (tight) hand
        box lies inside the image.

    Raises:
        ValueError: when the grasp label belongs to another frame.
    """
    # 1. Check inputs.
    if grasp.sample_key != frame.sample_key:
        raise ValueError(f"grasp label {grasp.sample_key!r} does not belong to frame {frame.sample_key!r}")
    key = frame.sample_key
    is_unihope = cfg.rule == "unihope"

    # 2. Hand points (2D joints or projected vertices), with their sanity checks.
    if is_unihope:
        # The 2D joints make the box; the 3D joints only say whether they are in front of the camera
        # (a projection of points behind it is finite but meaningless).
        joints_px = np.asarray(frame.joints_2d, dtype=np.float64)
        joints_z_m = np.asarray(frame.joints_3d, dtype=np.float64)[:, 2]
        is_usable = np.isfinite(joints_px).all() and np.isfinite(joints_z_m).all() and (joints_z_m >= MIN_DEPTH_M).all()
        hand_points_px = joints_px if is_usable else None
        what = "2D joints non-finite or the 3D joints behind the camera"
    else:
        hand_points_px = None if hand_vertices_cam_m is None else projected_points(hand_vertices_cam_m, frame.K)
        what = "hand vertices missing, non-finite or behind the camera"
    if hand_points_px is None:
        return Skip(key, STAGE, SkipReason.DEGENERATE_POSE, what)
    skip = _check_hand_box(key, tight_box_xyxy(hand_points_px), frame.image_size_wh, cfg)
    if skip is not None:
        return skip

    # 3. Object points when grasping.
    object_points_px = None
    if grasp.is_grasping:
        points_cam_m = object_keypoints_cam_m if is_unihope else object_vertices_cam_m
        object_points_px = None if points_cam_m is None else projected_points(points_cam_m, frame.K)
        if object_points_px is None:
            name = "keypoints" if is_unihope else "vertices"
            return Skip(key, STAGE, SkipReason.DEGENERATE_POSE, f"object {name} missing, non-finite or behind camera")
        object_wh_px = np.ptp(object_points_px, axis=0)
        if object_wh_px.max() < cfg.min_object_box_px:
            return Skip(
                key, STAGE, SkipReason.DEGENERATE_POSE,
                f"projected object box {object_wh_px.max():.1f} px < min_object_box_px={cfg.min_object_box_px}",
            )

    # 4. The square box by the configured rule, its affine and the crop intrinsics.
    if is_unihope:
        union_box = unihope_box_xyxy(hand_points_px, cfg.hand_box_scale)
        if object_points_px is not None:
            object_box = unihope_box_xyxy(object_points_px, cfg.object_box_scale)
            union_box = _union(union_box, object_box)
        box_xyxy = square_around_clipped(union_box, frame.image_size_wh)
    else:
        union_box = scale_box(tight_box_xyxy(hand_points_px), cfg.hand_box_scale)
        if object_points_px is not None:
            union_box = _union(union_box, scale_box(tight_box_xyxy(object_points_px), cfg.object_box_scale))
        centre_px = (union_box[:2] + union_box[2:]) / 2.0
        side_px = float((union_box[2:] - union_box[:2]).max())
        box_xyxy = np.concatenate([centre_px - side_px / 2.0, centre_px + side_px / 2.0])
    if not math.isfinite(float(box_xyxy[2] - box_xyxy[0])) or box_xyxy[2] - box_xyxy[0] <= 0:
        return Skip(key, STAGE, SkipReason.DEGENERATE_POSE, f"crop box {box_xyxy.round(2).tolist()} is empty")
    affine = crop_affine(box_xyxy, cfg.size_px)
    K_crop = np.vstack([affine, [0.0, 0.0, 1.0]]) @ np.asarray(frame.K, dtype=np.float64)
    return Crop(size_px=cfg.size_px, affine=affine, K=K_crop, box_xyxy=box_xyxy)


def _check_hand_box(
    key: str, hand_box: np.ndarray, image_size_wh: tuple[int, int], cfg: CropConfig
) -> Skip | None:
    """A Skip when the tight hand box is too small or too little of it lies inside the image."""
    hand_wh_px = hand_box[2:] - hand_box[:2]
    if hand_wh_px.max() < cfg.min_hand_box_px:
        return Skip(
            key, STAGE, SkipReason.DEGENERATE_POSE,
            f"projected hand box {hand_wh_px[0]:.1f}x{hand_wh_px[1]:.1f} px < min_hand_box_px={cfg.min_hand_box_px}",
        )
    width_px, height_px = image_size_wh
    inside_wh_px = np.clip(
        np.minimum(hand_box[2:], [width_px - 0.5, height_px - 0.5]) - np.maximum(hand_box[:2], -0.5), 0.0, None
    )
    inside_fraction = float(inside_wh_px.prod() / max(hand_wh_px.prod(), 1e-9))
    if inside_fraction < cfg.min_hand_box_inside_fraction:
        return Skip(
            key, STAGE, SkipReason.HAND_OUTSIDE_IMAGE,
            f"{inside_fraction:.0%} of the hand box lies inside the image (< {cfg.min_hand_box_inside_fraction:.0%})",
        )
    return None


def _union(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.minimum(box_a[:2], box_b[:2]), np.maximum(box_a[2:], box_b[2:])])


def apply_affine(points_px: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (..., 2) pixel coordinates with a (2, 3) affine."""
    points = np.asarray(points_px, dtype=np.float64)
    return points @ affine[:, :2].T + affine[:, 2]
