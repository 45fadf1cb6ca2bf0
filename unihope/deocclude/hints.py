"""Masks and control hints the de-occluders share: the inpaint region, the depth hint, the segmentation hint."""

from __future__ import annotations

import cv2
import numpy as np

from unihope.storage.schema import AnnotatedFrame

# HandRefiner's depth hint: nearest hand pixel -> 255, farthest -> 255 * (1 - 0.8) = 51, background 0.
DEPTH_HINT_MAX = 255.0
DEPTH_HINT_FAR_FRACTION = 0.8

# Segmentation hint colours (RGB). The hand is drawn in ADE20K's "person" colour so a public segmentation
# ControlNet reads it as a body part; the region the object covers is drawn black, like background, because the
# image we want has no object there.
SEG_HINT_HAND_RGB = (150, 5, 61)
SEG_HINT_BACKGROUND_RGB = (0, 0, 0)

MASK_REGIONS = ("hand_and_object", "occluded_hand")


def occluded_hand_mask(frame: AnnotatedFrame) -> np.ndarray:
    """Hand pixels hidden by the object: the full silhouette minus the visible hand.

    Args:
        frame: an annotated crop.

    Returns:
        (S, S) bool.
    """
    return np.asarray(frame.mask_hand, dtype=bool) & ~np.asarray(frame.mask_hand_visible, dtype=bool)


def inpaint_mask(frame: AnnotatedFrame, dilation_px: int, region: str = "hand_and_object") -> np.ndarray:
    """The region a de-occluder regenerates (and the only region it may change).

    `hand_and_object` (default): the occluded hand pixels plus every visible object pixel of the crop, so the
    de-occluded crop shows the whole hand and no object (the object pixels away from the hand become
    background). `occluded_hand`: only the occluded hand pixels, for a tighter edit that leaves the rest of the
    object in place. Either set is dilated by `dilation_px` (a square-ish ellipse kernel) so the object's
    anti-aliased rim, which the rendered masks miss by a pixel or two, is regenerated too.

    Args:
        frame: an annotated crop.
        dilation_px: dilation radius in pixels (0 = none).
        region: "hand_and_object" or "occluded_hand".

    Returns:
        (S, S) bool.

    Raises:
        ValueError: on an unknown region or a negative dilation.
    """
    if region not in MASK_REGIONS:
        raise ValueError(f"inpaint mask region must be one of {MASK_REGIONS}, got {region!r}")
    if dilation_px < 0:
        raise ValueError(f"mask dilation must be >= 0 px, got {dilation_px}")
    mask = occluded_hand_mask(frame)
    if region == "hand_and_object":
        mask = mask | np.asarray(frame.mask_object, dtype=bool)
    if dilation_px > 0 and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation_px + 1, 2 * dilation_px + 1))
        mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    return mask


def depth_hint(depth_hand_m: np.ndarray) -> np.ndarray:
    """HandRefiner's depth hint from the hand rendered alone.

    255 * (1 - 0.8 * (d - dmin) / (dmax - dmin)) on hand pixels (near = bright), 0 on background, 3 channels.

    Args:
        depth_hand_m: (H, W) float metres, 0 = background.

    Returns:
        (H, W, 3) uint8.
    """
    depth = np.asarray(depth_hand_m, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth_hand_m must be (H, W), got shape {depth.shape}")
    is_hand = depth > 0
    hint = np.zeros(depth.shape, dtype=np.float64)
    if is_hand.any():
        d_min, d_max = depth[is_hand].min(), depth[is_hand].max()
        span = d_max - d_min
        rel = (depth - d_min) / span if span > 0 else np.zeros_like(depth)
        hint = np.where(is_hand, DEPTH_HINT_MAX * (1.0 - DEPTH_HINT_FAR_FRACTION * rel), 0.0)
    hint_u8 = np.clip(np.rint(hint), 0, 255).astype(np.uint8)
    return np.repeat(hint_u8[:, :, None], 3, axis=2)


def segmentation_hint(frame: AnnotatedFrame) -> np.ndarray:
    """The hand-object segmentation hint for the optional second ControlNet.

    The full hand silhouette (the hand we want to see) in the hand colour; object and background black.

    Args:
        frame: an annotated crop.

    Returns:
        (S, S, 3) uint8 RGB.
    """
    mask_hand = np.asarray(frame.mask_hand, dtype=bool)
    hint = np.empty(mask_hand.shape + (3,), dtype=np.uint8)
    hint[:] = SEG_HINT_BACKGROUND_RGB
    hint[mask_hand] = SEG_HINT_HAND_RGB
    return hint


def composite(original_rgb: np.ndarray, generated_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Generated pixels inside `mask`, the original's (bit-identical) outside.

    Args:
        original_rgb: (S, S, 3) uint8.
        generated_rgb: (S, S, 3) uint8.
        mask: (S, S) bool.

    Returns:
        (S, S, 3) uint8.
    """
    if original_rgb.shape != generated_rgb.shape or original_rgb.shape[:2] != mask.shape:
        raise ValueError(
            f"composite needs matching shapes, got original {original_rgb.shape}, generated {generated_rgb.shape}, "
            f"mask {mask.shape}"
        )
    out = original_rgb.copy()
    out[mask] = generated_rgb[mask]
    return out
