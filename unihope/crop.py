"""UniHOPE's square crop: hand box x1.5 united with the object box x1.5 when grasping, resized to a fixed size."""

from __future__ import annotations

import numpy as np

from storage.schema import Crop, FrameRecord, GraspLabel, Skip, SkipReason
from unihope.config import CropConfig
from unihope.render.camera import project_points

STAGE = "annotate"
MIN_DEPTH_M = 1e-3  # vertices closer to (or behind) the camera plane make a projected box meaningless


def projected_box_xyxy(points_cam_m: np.ndarray, K: np.ndarray) -> np.ndarray | None:
    """Tight (4,) box [x1, y1, x2, y2] in px of points projected with K; None if any point is unusable.

    Args:
        points_cam_m: (V, 3) OpenCV camera-frame points, metres.
        K: (3, 3) intrinsics, px.

    Returns:
        (4,) float64 box, or None when a point is non-finite or not in front of the camera.
    """
    points = np.asarray(points_cam_m, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] != 3:
        return None
    if not np.isfinite(points).all() or (points[:, 2] < MIN_DEPTH_M).any():
        return None
    uv_px = project_points(points, K)
    return np.concatenate([uv_px.min(axis=0), uv_px.max(axis=0)])


def scale_box(box_xyxy: np.ndarray, scale: float) -> np.ndarray:
    """Scale a box's width and height about its centre."""
    centre = (box_xyxy[:2] + box_xyxy[2:]) / 2.0
    half = (box_xyxy[2:] - box_xyxy[:2]) / 2.0 * scale
    return np.concatenate([centre - half, centre + half])


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


def compute_crop(
    frame: FrameRecord,
    grasp: GraspLabel,
    cfg: CropConfig,
    hand_vertices_cam_m: np.ndarray,
    object_vertices_cam_m: np.ndarray | None,
) -> Crop | Skip:
    """Square crop around the hand box (x hand_box_scale) and, when grasping, the object box (x object_box_scale).

    Args:
        frame: the frame (its K and image size are used).
        grasp: its grasp label; the object box joins the crop only when `grasp.is_grasping`.
        cfg: crop size and box scales.
        hand_vertices_cam_m: (778, 3) hand mesh vertices, OpenCV camera frame, metres.
        object_vertices_cam_m: (V, 3) object mesh vertices in the camera frame, metres; may be None
            for a frame that is not grasping.

    Returns:
        The `Crop` (affine full px -> crop px, crop intrinsics, square box in full px), or a `Skip`:
        DEGENERATE_POSE when a needed projected box is non-finite, behind the camera or smaller than the
        configured minimum; HAND_OUTSIDE_IMAGE when less than `cfg.min_hand_box_inside_fraction` of the
        hand box lies inside the image.

    Raises:
        ValueError: when the grasp label belongs to another frame.
    """
    # 1. Check inputs.
    if grasp.sample_key != frame.sample_key:
        raise ValueError(f"grasp label {grasp.sample_key!r} does not belong to frame {frame.sample_key!r}")
    key = frame.sample_key

    # 2. Hand box, with its sanity checks.
    hand_box = projected_box_xyxy(hand_vertices_cam_m, frame.K)
    if hand_box is None:
        return Skip(key, STAGE, SkipReason.DEGENERATE_POSE, "hand vertices non-finite or behind the camera")
    hand_wh_px = hand_box[2:] - hand_box[:2]
    if hand_wh_px.max() < cfg.min_hand_box_px:
        return Skip(
            key, STAGE, SkipReason.DEGENERATE_POSE,
            f"projected hand box {hand_wh_px[0]:.1f}x{hand_wh_px[1]:.1f} px < min_hand_box_px={cfg.min_hand_box_px}",
        )
    width_px, height_px = frame.image_size_wh
    inside_wh_px = np.clip(
        np.minimum(hand_box[2:], [width_px - 0.5, height_px - 0.5]) - np.maximum(hand_box[:2], -0.5), 0.0, None
    )
    inside_fraction = float(inside_wh_px.prod() / max(hand_wh_px.prod(), 1e-9))
    if inside_fraction < cfg.min_hand_box_inside_fraction:
        return Skip(
            key, STAGE, SkipReason.HAND_OUTSIDE_IMAGE,
            f"{inside_fraction:.0%} of the hand box lies inside the image (< {cfg.min_hand_box_inside_fraction:.0%})",
        )
    union_box = scale_box(hand_box, cfg.hand_box_scale)

    # 3. Object box when grasping.
    if grasp.is_grasping:
        object_box = None if object_vertices_cam_m is None else projected_box_xyxy(object_vertices_cam_m, frame.K)
        if object_box is None:
            return Skip(key, STAGE, SkipReason.DEGENERATE_POSE, "object vertices missing, non-finite or behind camera")
        object_wh_px = object_box[2:] - object_box[:2]
        if object_wh_px.max() < cfg.min_object_box_px:
            return Skip(
                key, STAGE, SkipReason.DEGENERATE_POSE,
                f"projected object box {object_wh_px.max():.1f} px < min_object_box_px={cfg.min_object_box_px}",
            )
        object_box = scale_box(object_box, cfg.object_box_scale)
        union_box = np.concatenate([np.minimum(union_box[:2], object_box[:2]), np.maximum(union_box[2:], object_box[2:])])

    # 4. Square box around the union's centre, affine and crop intrinsics.
    centre_px = (union_box[:2] + union_box[2:]) / 2.0
    side_px = float((union_box[2:] - union_box[:2]).max())
    box_xyxy = np.concatenate([centre_px - side_px / 2.0, centre_px + side_px / 2.0])
    affine = crop_affine(box_xyxy, cfg.size_px)
    K_crop = np.vstack([affine, [0.0, 0.0, 1.0]]) @ np.asarray(frame.K, dtype=np.float64)
    return Crop(size_px=cfg.size_px, affine=affine, K=K_crop, box_xyxy=box_xyxy)


def apply_affine(points_px: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (..., 2) pixel coordinates with a (2, 3) affine."""
    points = np.asarray(points_px, dtype=np.float64)
    return points @ affine[:, :2].T + affine[:, 2]
