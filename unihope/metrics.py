"""Evaluation metrics: MPJPE / PA-MPJPE / MPVPE (mm), F-score, PCK AUC, object ADD-S, switcher accuracy, occlusion table.

All functions take numpy arrays in metres and return millimetres where the name says `_mm`.
Object-pose helpers (keypoint triangulation in the object frame, PnP) live here too because
ADD-S needs them and nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unihope.rotations import matrix_from_axis_angle

M_TO_MM = 1000.0
ROOT_JOINT_IDX = 0  # wrist in DexYCB order
VISIBILITY_BIN_EDGES = (0.25, 0.5, 0.75)  # UniHOPE: [0, .25], (.25, .5], (.5, .75], (.75, 1]
MIN_TRIANGULATION_CONDITION = 1e-3  # smallest / largest singular value below this: keypoint not determined
# UniHOPE's eval.py (the FreiHAND / HO3D protocol): F-score of the mesh vertices at 5 and 15 mm, and the
# area under the 3D PCK curve of the joints over 100 thresholds from 0 to 50 mm.
F_SCORE_THRESHOLDS_MM = (5.0, 15.0)
PCK_AUC_MIN_MM = 0.0
PCK_AUC_MAX_MM = 50.0
PCK_AUC_NUM_THRESHOLDS = 100


def root_relative(joints_m: np.ndarray, root_idx: int = ROOT_JOINT_IDX) -> np.ndarray:
    """(N, J, 3) -> the same with joint `root_idx` moved to the origin."""
    joints_m = np.asarray(joints_m, dtype=np.float64)
    return joints_m - joints_m[:, root_idx : root_idx + 1]


def mpjpe_mm(pred_m: np.ndarray, gt_m: np.ndarray, root_idx: int | None = ROOT_JOINT_IDX) -> np.ndarray:
    """Mean per-joint position error per sample, after wrist alignment (None: no alignment).

    Args:
        pred_m, gt_m: (N, J, 3) metres.
        root_idx: joint aligned before measuring (the papers' root-relative J-PE).

    Returns:
        (N,) float64 millimetres.
    """
    pred, gt = _check_pair(pred_m, gt_m)
    if root_idx is not None:
        pred, gt = root_relative(pred, root_idx), root_relative(gt, root_idx)
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) * M_TO_MM


def procrustes_align(pred_m: np.ndarray, gt_m: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """Similarity transform (rotation, translation, optional scale) of each pred that best fits its gt.

    Args:
        pred_m, gt_m: (N, P, 3).
        with_scale: also fit a scale (PA-MPJPE's usual definition).

    Returns:
        (N, P, 3) aligned predictions.
    """
    pred, gt = _check_pair(pred_m, gt_m)
    mu_p, mu_g = pred.mean(axis=1, keepdims=True), gt.mean(axis=1, keepdims=True)
    p0, g0 = pred - mu_p, gt - mu_g
    cov = np.einsum("npi,npj->nij", g0, p0)  # (N, 3, 3)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))  # no reflections
    fix = np.ones_like(sigma)
    fix[:, -1] = d
    rot = u @ (fix[:, :, None] * vt)  # gt ~ s R p
    if with_scale:
        var_p = (p0**2).sum(axis=(1, 2))
        scale = (sigma * fix).sum(axis=1) / np.maximum(var_p, 1e-12)
    else:
        scale = np.ones(len(pred))
    return scale[:, None, None] * np.einsum("nij,npj->npi", rot, p0) + mu_g


def pa_mpjpe_mm(pred_m: np.ndarray, gt_m: np.ndarray) -> np.ndarray:
    """Per-sample joint error (mm) after Procrustes alignment with scale."""
    pred, gt = _check_pair(pred_m, gt_m)
    return np.linalg.norm(procrustes_align(pred, gt) - gt, axis=-1).mean(axis=-1) * M_TO_MM


def mpvpe_mm(pred_verts_rel_m: np.ndarray, gt_verts_rel_m: np.ndarray) -> np.ndarray:
    """Per-sample mean vertex error (mm) of wrist-relative meshes (N, 778, 3)."""
    pred, gt = _check_pair(pred_verts_rel_m, gt_verts_rel_m)
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) * M_TO_MM


def f_score(pred_points_m: np.ndarray, gt_points_m: np.ndarray, threshold_mm: float) -> np.ndarray:
    """Per-sample F-score of two point sets at a distance threshold (FreiHAND / HO3D, UniHOPE's eval.py).

    Precision = the fraction of predicted points whose closest ground-truth point is nearer than the
    threshold; recall = the fraction of ground-truth points whose closest prediction is; F = 2PR / (P + R)
    (0 when both are 0). Closest points, not index correspondence: a mesh may be compared with another
    topology. Strictly nearer (`<`), as upstream counts.

    Args:
        pred_points_m, gt_points_m: (N, P, 3) metres, aligned as the caller chose (root or Procrustes).
        threshold_mm: distance threshold, millimetres.

    Returns:
        (N,) float64 in [0, 1].
    """
    from scipy.spatial import cKDTree

    pred, gt = _check_pair(pred_points_m, gt_points_m)
    threshold_m = threshold_mm / M_TO_MM
    scores = np.zeros(len(pred))
    for idx in range(len(pred)):
        pred_to_gt_m, _ = cKDTree(gt[idx]).query(pred[idx])
        gt_to_pred_m, _ = cKDTree(pred[idx]).query(gt[idx])
        precision = float((pred_to_gt_m < threshold_m).mean())
        recall = float((gt_to_pred_m < threshold_m).mean())
        scores[idx] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return scores


def pck_curve(
    per_point_error_mm: np.ndarray,
    min_mm: float = PCK_AUC_MIN_MM,
    max_mm: float = PCK_AUC_MAX_MM,
    num_thresholds: int = PCK_AUC_NUM_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:
    """3D PCK curve: per threshold, the fraction of errors at or below it, averaged over the points.

    Args:
        per_point_error_mm: (N, J) per-sample, per-joint (or per-vertex) errors, millimetres.
        min_mm, max_mm, num_thresholds: the thresholds, np.linspace(min_mm, max_mm, num_thresholds).

    Returns:
        (thresholds_mm (T,), pck (T,) in [0, 1]).
    """
    errors = np.asarray(per_point_error_mm, dtype=np.float64)
    if errors.ndim != 2 or not len(errors):
        raise ValueError(f"per_point_error_mm must be a non-empty (N, J) array, got shape {errors.shape}")
    if num_thresholds < 2 or not max_mm > min_mm:
        raise ValueError(f"need num_thresholds >= 2 and max_mm > min_mm, got {num_thresholds}, {min_mm}, {max_mm}")
    thresholds = np.linspace(min_mm, max_mm, num_thresholds)
    # per point first, then the mean over points, as upstream's EvalUtil averages its per-keypoint curves
    pck = (errors[None, :, :] <= thresholds[:, None, None]).mean(axis=1).mean(axis=1)
    return thresholds, pck


def pck_auc(
    per_point_error_mm: np.ndarray,
    min_mm: float = PCK_AUC_MIN_MM,
    max_mm: float = PCK_AUC_MAX_MM,
    num_thresholds: int = PCK_AUC_NUM_THRESHOLDS,
) -> float:
    """Area under the 3D PCK curve (trapezoidal rule), normalised by the threshold range: in [0, 1]."""
    thresholds, pck = pck_curve(per_point_error_mm, min_mm, max_mm, num_thresholds)
    return float(np.trapezoid(pck, thresholds) / (max_mm - min_mm))


def switcher_accuracy(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Fraction of samples whose predicted grasp state equals the label (nan when empty)."""
    pred, gt = np.asarray(pred_labels).ravel(), np.asarray(gt_labels).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt labels differ in length: {pred.shape} vs {gt.shape}")
    return float((pred == gt).mean()) if len(gt) else float("nan")


def visibility_bin(visibility: np.ndarray, edges: tuple[float, ...] = VISIBILITY_BIN_EDGES) -> np.ndarray:
    """Bin index 0..len(edges) with right-closed bins: [0, e0], (e0, e1], ..., (e_last, 1]."""
    return np.searchsorted(np.asarray(edges), np.asarray(visibility, dtype=np.float64), side="left")


def occlusion_interval_table(
    values: np.ndarray, visibility: np.ndarray, edges: tuple[float, ...] = VISIBILITY_BIN_EDGES
) -> list[dict]:
    """Mean of `values` per visibility interval (UniHOPE's occlusion-interval table).

    Args:
        values: (N,) per-sample metric (e.g. MPJPE mm).
        visibility: (N,) visible fraction of the hand, 1 = unoccluded.
        edges: inner bin edges.

    Returns:
        One row per interval: {"interval", "count", "mean"} (mean = nan for an empty interval).
    """
    values, visibility = np.asarray(values, dtype=np.float64), np.asarray(visibility, dtype=np.float64)
    if values.shape != visibility.shape:
        raise ValueError(f"values {values.shape} and visibility {visibility.shape} must have the same shape")
    bins = visibility_bin(visibility, edges)
    bounds = (0.0,) + tuple(edges) + (1.0,)
    rows = []
    for idx in range(len(bounds) - 1):
        chosen = values[bins == idx]
        left = "[" if idx == 0 else "("
        rows.append({
            "interval": f"{left}{bounds[idx]:g}, {bounds[idx + 1]:g}]",
            "count": int(len(chosen)),
            "mean": float(chosen.mean()) if len(chosen) else float("nan"),
        })
    return rows


# ---------------------------------------------------------------- object pose


def add_s_mm(points_obj_m: np.ndarray, T_pred: np.ndarray, T_gt: np.ndarray) -> float:
    """ADD-S: mean distance from each ground-truth-posed point to the closest prediction-posed point (mm).

    Args:
        points_obj_m: (P, 3) model points in the object frame.
        T_pred, T_gt: (3, 4) [R|t] camera-from-object.
    """
    pts = np.asarray(points_obj_m, dtype=np.float64)
    pred = pts @ np.asarray(T_pred)[:3, :3].T + np.asarray(T_pred)[:3, 3]
    gt = pts @ np.asarray(T_gt)[:3, :3].T + np.asarray(T_gt)[:3, 3]
    dist = np.linalg.norm(gt[:, None] - pred[None], axis=-1)
    return float(dist.min(axis=1).mean() * M_TO_MM)


@dataclass(frozen=True)
class TriangulatedKeypoints:
    """Object keypoints in the object frame, recovered from many posed 2D observations."""

    points_obj_m: np.ndarray  # (21, 3) float64
    reprojection_error_px: float  # RMS over the observations used
    num_observations: int


def triangulate_object_keypoints(
    keypoints_2d_px: np.ndarray, T_cam_from_obj: np.ndarray, K: np.ndarray
) -> TriangulatedKeypoints | None:
    """Solve each keypoint's object-frame position from its 2D projections under known object poses.

    Each observation gives two linear equations (r1 - u r3) X = u t3 - t1 and (r2 - v r3) X = v t3 - t2
    in normalised image coordinates (u, v); a least-squares solve over all observations of one
    object recovers the keypoint. This is how the evaluation learns the 3D box keypoints PnP needs
    without object meshes in the shards.

    Args:
        keypoints_2d_px: (N, P, 2) crop px.
        T_cam_from_obj: (N, 3, 4) object poses.
        K: (N, 3, 3) crop intrinsics.

    Returns:
        The keypoints, or None when the poses do not determine them (e.g. one pose only).
    """
    uv = np.asarray(keypoints_2d_px, dtype=np.float64)
    poses = np.asarray(T_cam_from_obj, dtype=np.float64)
    Ks = np.asarray(K, dtype=np.float64)
    num, num_points = uv.shape[:2]
    if num < 2:
        return None
    homog = np.concatenate([uv, np.ones((num, num_points, 1))], axis=-1)
    norm = np.einsum("nij,npj->npi", np.linalg.inv(Ks), homog)[..., :2]  # (N, P, 2)
    R, t = poses[:, :, :3], poses[:, :, 3]
    points = np.zeros((num_points, 3))
    for p_idx in range(num_points):
        a = np.concatenate([R[:, 0] - norm[:, p_idx, :1] * R[:, 2], R[:, 1] - norm[:, p_idx, 1:] * R[:, 2]])
        b = np.concatenate([norm[:, p_idx, 0] * t[:, 2] - t[:, 0], norm[:, p_idx, 1] * t[:, 2] - t[:, 1]])
        sol, _, _, sv = np.linalg.lstsq(a, b, rcond=None)
        if len(sv) < 3 or sv[-1] / sv[0] < MIN_TRIANGULATION_CONDITION:
            return None
        points[p_idx] = sol
    cam = np.einsum("nij,pj->npi", R, points) + t[:, None]
    proj = np.einsum("nij,npj->npi", Ks, cam)
    proj = proj[..., :2] / proj[..., 2:3]
    rms = float(np.sqrt(((proj - uv) ** 2).sum(-1).mean()))
    return TriangulatedKeypoints(points_obj_m=points, reprojection_error_px=rms, num_observations=num)


def solve_object_pose_pnp(keypoints_2d_px: np.ndarray, points_obj_m: np.ndarray, K: np.ndarray) -> np.ndarray | None:
    """Object pose from predicted 2D keypoints by cv2.solvePnP (EPnP, then iterative refinement).

    Returns:
        (3, 4) [R|t] camera-from-object, or None when PnP fails.
    """
    obj = np.ascontiguousarray(points_obj_m, dtype=np.float64)
    img = np.ascontiguousarray(keypoints_2d_px, dtype=np.float64)
    cam = np.asarray(K, dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return None
    ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or not np.all(np.isfinite(tvec)):
        return None
    rot = matrix_from_axis_angle(rvec)
    return np.concatenate([rot, tvec.reshape(3, 1)], axis=1)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be (N, P, 3); got {pred.shape} and {gt.shape}")
    return pred, gt
