"""Weight-free de-occlusion: re-shade the rendered hand with its own visible colours, inpaint the object away."""

from __future__ import annotations

import cv2
import numpy as np

from unihope.storage.schema import AnnotatedFrame

from .base import Deoccluder
from .scoring import visible_region

INPAINT_RADIUS_PX = 5  # cv2.inpaint neighbourhood for the background behind the object
RIDGE_PER_PIXEL = 1e-3  # ridge strength of the lighting fit, per fitted pixel (the constant term is not shrunk)
MIN_PIXELS_PER_COEFFICIENT = 8  # fewer visible pixels per lighting coefficient: drop to a lower SH order
NORMAL_CELLS = 8  # (nx, ny) grid for balancing normal directions in the lighting fit
HUBER_DELTA_GREY = 20.0  # residual (RGB distance) beyond which a pixel's weight falls off
HUBER_ITERATIONS = 3
CONTOUR_DEPTH_STEP_M = 0.008  # a neighbour this much farther marks an occluding contour (as in scoring)
CONTOUR_TILT = 0.15  # z component (toward the camera) of a contour normal before normalising
FACING_NORMAL = np.array([0.0, 0.0, -1.0])  # OpenCV camera looks down +z: a surface facing it has n_z = -1


def normals_from_depth(depth_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit surface normals (OpenCV camera frame, facing the camera) from a rendered depth map.

    Each pixel is back-projected with K; tangents come from the neighbour (left/right, up/down) with the smaller
    depth step, so normals stay on their own finger at an occlusion edge between two fingers.

    Args:
        depth_m: (S, S) float metres, 0 = background.
        K: (3, 3) crop intrinsics, px.

    Returns:
        (S, S, 3) float64; background and isolated pixels get FACING_NORMAL.
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    height, width = depth.shape
    v_px, u_px = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack(
        [(u_px - K[0, 2]) / K[0, 0] * depth, (v_px - K[1, 2]) / K[1, 1] * depth, depth], axis=-1
    )  # (S, S, 3) metres
    valid = depth > 0

    def tangent(axis: int) -> tuple[np.ndarray, np.ndarray]:
        p_next, ok_next = _neighbour(points, valid, +1, axis)
        p_prev, ok_prev = _neighbour(points, valid, -1, axis)
        forward, backward = p_next - points, points - p_prev
        ok_fwd, ok_bwd = ok_next & valid, ok_prev & valid
        use_fwd = ok_fwd & (~ok_bwd | (np.abs(forward[..., 2]) <= np.abs(backward[..., 2])))
        return np.where(use_fwd[..., None], forward, backward), ok_fwd | ok_bwd

    tangent_u, ok_u = tangent(1)
    tangent_v, ok_v = tangent(0)
    normals = np.cross(tangent_u, tangent_v)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    ok = ok_u & ok_v & (length[..., 0] > 0)
    normals = np.where(ok[..., None], normals / np.maximum(length, 1e-12), FACING_NORMAL)
    facing_away = np.sum(normals * points, axis=-1) > 0
    normals[facing_away] *= -1.0

    # Occluding contours: finite differences cannot see a smooth surface turning away from the camera there,
    # so set the normal the contour implies (in the image plane, pointing out of the surface, tilted slightly
    # toward the camera because the pixel centre lies just inside the contour).
    outward = np.zeros((height, width, 2))
    for (dv, du) in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        neighbour_depth, inside = _neighbour(depth[..., None], np.ones_like(valid), 1 if (dv + du) > 0 else -1, 0 if dv else 1)
        beyond = valid & inside & ((neighbour_depth[..., 0] <= 0) | (neighbour_depth[..., 0] - depth > CONTOUR_DEPTH_STEP_M))
        outward[beyond] += (du, dv)
    is_contour = np.any(outward != 0, axis=-1)
    contour = np.concatenate([outward, np.full((height, width, 1), -CONTOUR_TILT)], axis=-1)
    contour /= np.maximum(np.linalg.norm(contour, axis=-1, keepdims=True), 1e-12)
    normals[is_contour] = contour[is_contour]
    return normals


def _neighbour(points: np.ndarray, valid: np.ndarray, step: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour `step` pixels along `axis` of every pixel (invalid past the border)."""
    shifted = np.roll(points, -step, axis=axis)
    ok = np.roll(valid, -step, axis=axis)
    border = [slice(None), slice(None)]
    border[axis] = slice(-1, None) if step > 0 else slice(0, 1)
    ok[tuple(border)] = False
    return shifted, ok


def sh_basis(normals: np.ndarray, order: int) -> np.ndarray:
    """Real spherical-harmonic lighting basis (unnormalised) of order 0, 1 or 2.

    Args:
        normals: (N, 3) unit normals.
        order: 0 (1 term), 1 (4 terms) or 2 (9 terms).

    Returns:
        (N, 1|4|9) float64.
    """
    nx, ny, nz = normals[:, 0], normals[:, 1], normals[:, 2]
    columns = [np.ones_like(nx)]
    if order >= 1:
        columns += [nx, ny, nz]
    if order >= 2:
        columns += [nx * ny, nx * nz, ny * nz, nx**2 - ny**2, 3.0 * nz**2 - 1.0]
    return np.stack(columns, axis=1)


def fit_shading(image_rgb: np.ndarray, normals: np.ndarray, fit_mask: np.ndarray) -> np.ndarray:
    """Fit per-channel SH lighting x albedo on the visible hand: colour = basis(normal) @ coefficients.

    Pixels are weighted so that every normal direction counts about equally (a flat palm would otherwise
    outvote the curved fingers, whose normals are the ones that constrain the lighting), and the fit is
    re-weighted (Huber) so that pixels the rendered mask places on the hand but that show something else
    (misaligned rims, shadows) do not pull the fit.

    Args:
        image_rgb: (S, S, 3) uint8.
        normals: (S, S, 3) unit normals.
        fit_mask: (S, S) bool pixels to fit on (non-empty).

    Returns:
        (T, 3) float64 coefficients, T = 1, 4 or 9 (the largest order the pixel count supports).
    """
    # 1. Check inputs, choose the SH order the pixel count supports
    num_pixels = int(np.count_nonzero(fit_mask))
    if num_pixels == 0:
        raise ValueError("fit_shading needs at least one pixel in fit_mask")
    order = 2 if num_pixels >= 9 * MIN_PIXELS_PER_COEFFICIENT else 1 if num_pixels >= 4 * MIN_PIXELS_PER_COEFFICIENT else 0
    basis = sh_basis(normals[fit_mask], order)
    target = image_rgb[fit_mask].astype(np.float64)

    # 2. Balance normal directions: weight = 1 / pixels sharing the pixel's (nx, ny) cell
    cells = np.clip(((normals[fit_mask][:, :2] + 1.0) / 2.0 * NORMAL_CELLS).astype(int), 0, NORMAL_CELLS - 1)
    cell_idx = cells[:, 0] * NORMAL_CELLS + cells[:, 1]
    weights = 1.0 / np.bincount(cell_idx, minlength=NORMAL_CELLS**2)[cell_idx]
    weights *= num_pixels / weights.sum()

    # 3. Robust weighted ridge least squares (Huber re-weighting)
    ridge = np.eye(basis.shape[1]) * RIDGE_PER_PIXEL * num_pixels
    ridge[0, 0] = 0.0
    robust = np.ones(num_pixels)
    coefficients = np.zeros((basis.shape[1], 3))
    for _ in range(HUBER_ITERATIONS + 1):
        w = (weights * robust)[:, None]
        coefficients = np.linalg.solve(basis.T @ (basis * w) + ridge, basis.T @ (target * w))
        residual = np.linalg.norm(basis @ coefficients - target, axis=1)
        robust = np.minimum(1.0, HUBER_DELTA_GREY / np.maximum(residual, 1e-9))
    return coefficients


def shade_hand(frame: AnnotatedFrame, region: np.ndarray) -> np.ndarray:
    """The rendered hand shaded with the lighting fitted on its visible pixels, (S, S, 3) uint8 (0 outside region).

    Args:
        frame: an annotated crop with at least one visible hand pixel.
        region: (S, S) bool where to shade (hand pixels).

    Returns:
        (S, S, 3) uint8.
    """
    normals = normals_from_depth(frame.depth_hand, frame.crop.K)
    coefficients = fit_shading(frame.image, normals, np.asarray(frame.mask_hand_visible, dtype=bool))
    order = {1: 0, 4: 1, 9: 2}[coefficients.shape[0]]
    shaded = np.zeros(frame.image.shape, dtype=np.uint8)
    if region.any():
        values = sh_basis(normals[region], order) @ coefficients
        shaded[region] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return shaded


def fill_background(image_rgb: np.ndarray, fill_mask: np.ndarray) -> np.ndarray:
    """Fill `fill_mask` from the pixels around it with OpenCV's Telea inpainting, (S, S, 3) uint8.

    Only the mask's bounding box plus the inpainting radius is handed to OpenCV (Telea reads nothing farther
    out), which gives the same pixels for less work.
    """
    out = image_rgb.copy()
    if not fill_mask.any():
        return out
    rows, cols = np.nonzero(fill_mask)
    margin = INPAINT_RADIUS_PX + 2
    top, bottom = max(rows.min() - margin, 0), min(rows.max() + margin + 1, fill_mask.shape[0])
    left, right = max(cols.min() - margin, 0), min(cols.max() + margin + 1, fill_mask.shape[1])
    roi = np.ascontiguousarray(image_rgb[top:bottom, left:right])
    roi_mask = fill_mask[top:bottom, left:right].astype(np.uint8)
    out[top:bottom, left:right] = cv2.inpaint(roi, roi_mask, INPAINT_RADIUS_PX, cv2.INPAINT_TELEA)
    return out


class RenderDeoccluder(Deoccluder):
    """Shade the rendered hand where the object hid it; inpaint the rest of the object from the background.

    The hand's colour and lighting come from its own visible pixels (an order-2 spherical-harmonic fit per
    channel on normals from the rendered hand depth), so the hidden fingers take the visible hand's tone and
    shading. The background behind the object is filled by cv2.inpaint with the whole hand masked out too, so
    it borrows from background only. No control strength: beta is nan.
    """

    name = "render"
    uses_beta = False

    def _generate(
        self, frames: list[AnnotatedFrame], masks: list[np.ndarray], betas: np.ndarray
    ) -> list[np.ndarray]:
        outputs = []
        for frame, mask in zip(frames, masks):
            mask_hand = np.asarray(frame.mask_hand, dtype=bool)
            background = fill_background(frame.image, mask | mask_hand)
            # Visible hand pixels that the dilation put in the mask but that the object does not touch keep
            # their own colours; the rest of the hand inside the mask is shaded.
            keep_visible = visible_region(frame, mask)
            shade_region = mask & mask_hand & ~keep_visible
            shaded = shade_hand(frame, shade_region)
            output = np.where(shade_region[..., None], shaded, background)
            output[keep_visible] = frame.image[keep_visible]
            outputs.append(output)
        return outputs
