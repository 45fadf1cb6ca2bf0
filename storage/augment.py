"""Paired training augmentation: one random draw applied identically to the occluded and de-occluded crop.

Geometry (HFL-Net style: scale, centre jitter, in-plane rotation) is built so that 2D and 3D labels
stay consistent: the in-plane rotation is a rotation R about the camera z axis, whose image is the
affine map K R K^-1; joints_3d, the MANO global orientation (and transl) and object_pose are rotated
by R, and the remaining 2D similarity (re-centring, scale, shift) is folded into the returned K. So
`project(joints_3d_aug, K_aug) == joints_2d_aug` holds exactly. With the principal point at the crop
centre and no scale or shift, K is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from unihope.rotations import axis_angle_from_matrix, matrix_from_axis_angle

MASK_ON_U8 = 255
MASK_THRESHOLD_U8 = 127  # masks are warped bilinearly with the image, then thresholded
MIN_BLUR_SIGMA_PX = 0.05  # below this a Gaussian blur is a no-op
HUE_LEVELS = 180  # OpenCV's uint8 hue range


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Random augmentation ranges (defaults follow HFL-Net's training augmentation style).

    Attributes:
        scale_jitter: scale factor drawn from 1 + clip(N(0, scale_jitter), -scale_jitter, scale_jitter).
        center_jitter: shift of the crop centre, uniform in +-center_jitter * S px per axis.
        max_rotation_deg: in-plane rotation uniform in +-max_rotation_deg.
        brightness, contrast, saturation: factors uniform in [1 - x, 1 + x].
        hue: hue shift uniform in +-hue of the full hue circle.
        max_blur_sigma_px: Gaussian blur sigma uniform in [0, max_blur_sigma_px].
    """

    scale_jitter: float = 0.2
    center_jitter: float = 0.1
    max_rotation_deg: float = 180.0
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.15
    max_blur_sigma_px: float = 0.5

    def __post_init__(self) -> None:
        for name in ("scale_jitter", "center_jitter", "max_rotation_deg", "brightness", "contrast", "saturation",
                     "hue", "max_blur_sigma_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale_jitter >= 1 or self.brightness > 1 or self.contrast > 1 or self.saturation > 1 or self.hue > 0.5:
            raise ValueError("AugmentConfig: scale_jitter must be < 1, brightness/contrast/saturation <= 1, hue <= 0.5; "
                             f"got {self}")


@dataclass(frozen=True, slots=True)
class AugmentParams:
    """One random draw, shared by both images of a pair."""

    rotation_rad: float
    scale: float
    shift_px: tuple[float, float]
    brightness: float
    contrast: float
    saturation: float
    hue_turns: float  # fraction of the hue circle
    blur_sigma_px: float


IDENTITY = AugmentParams(0.0, 1.0, (0.0, 0.0), 1.0, 1.0, 1.0, 0.0, 0.0)


def sample_params(cfg: AugmentConfig, rng: np.random.Generator, crop_size_px: int) -> AugmentParams:
    """Draw augmentation parameters from `rng` (seeded per sample by the caller)."""
    scale = 1.0 + float(np.clip(rng.normal(0.0, cfg.scale_jitter), -cfg.scale_jitter, cfg.scale_jitter)) \
        if cfg.scale_jitter > 0 else 1.0
    shift = rng.uniform(-cfg.center_jitter, cfg.center_jitter, 2) * crop_size_px
    return AugmentParams(
        rotation_rad=math.radians(float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))),
        scale=scale,
        shift_px=(float(shift[0]), float(shift[1])),
        brightness=float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
        contrast=float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)),
        saturation=float(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)),
        hue_turns=float(rng.uniform(-cfg.hue, cfg.hue)),
        blur_sigma_px=float(rng.uniform(0.0, cfg.max_blur_sigma_px)),
    )


def rotation_z(angle_rad: float) -> np.ndarray:
    """(3, 3) rotation about the camera z axis (OpenCV frame: x right, y down)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def geometry(params: AugmentParams, K: np.ndarray, crop_size_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel map, 3D rotation and new intrinsics of one draw.

    Args:
        params: the draw.
        K: (3, 3) crop intrinsics, px.
        crop_size_px: S.

    Returns:
        (M (3, 3) crop px -> augmented crop px, R (3, 3) camera-frame rotation, K_aug (3, 3)),
        with M @ K == K_aug @ R.
    """
    K = np.asarray(K, dtype=np.float64)
    R = rotation_z(params.rotation_rad)
    H_rot = K @ R @ np.linalg.inv(K)  # image of a rotation about the camera z axis (an affine map)
    centre = np.array([(crop_size_px - 1) / 2.0, (crop_size_px - 1) / 2.0, 1.0])
    moved = H_rot @ centre
    s = params.scale
    # re-centre (rotation turns about the crop centre, as HFL-Net does), then scale about it and shift
    T = np.array([
        [s, 0.0, centre[0] - s * moved[0] + params.shift_px[0]],
        [0.0, s, centre[1] - s * moved[1] + params.shift_px[1]],
        [0.0, 0.0, 1.0],
    ])
    return T @ H_rot, R, T @ K


def transform_points_2d(points_px: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) affine pixel map to (N, 2) points."""
    return points_px @ M[:2, :2].T + M[:2, 2]


def rotate_hand(
    mano_pose: np.ndarray, mano_trans: np.ndarray, joints_3d: np.ndarray, R: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate a MANO hand about the camera origin by R.

    MANO applies the global orientation about the root joint j0 (which depends on betas) and then
    adds transl, so the wrist is at j0 + transl. Rotating the posed hand by R needs
    global_orient' = R @ global_orient and transl' = R @ wrist - (wrist - transl); the wrist
    (joints_3d[0]) gives j0 without running the hand model.

    Returns:
        (mano_pose (48,), mano_trans (3,), joints_3d (21, 3)), float32.
    """
    global_orient = axis_angle_from_matrix(R @ matrix_from_axis_angle(mano_pose[:3]))
    pose = np.array(mano_pose, dtype=np.float32, copy=True)
    pose[:3] = global_orient
    wrist = joints_3d[0].astype(np.float64)
    trans = R @ wrist - (wrist - mano_trans.astype(np.float64))
    return pose, trans.astype(np.float32), (joints_3d.astype(np.float64) @ R.T).astype(np.float32)


def _colour_pair(pair: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness, contrast, saturation, hue (fixed order), then blur, on both uint8 RGB images of a pair.

    uint8 lookup tables keep this ~20x cheaper than float math (it runs for every training sample).
    Brightness and contrast share one table for the whole pair; saturation scales HSV's S channel and
    hue rotates its H channel. Every step is then one pixel-wise function applied to both images, so
    pixels equal in the stored pair stay equal (the pair differs only where it was de-occluded).
    The contrast pivot is the first (occluded) image's brightened mean gray, used for both: the
    occluded image, the model's input, is coloured exactly as it would be on its own (torchvision's
    adjust_contrast pivots on the image's own mean, as upstream's loader does), and the de-occluded
    target follows it. Pivoting each image on its own mean (upstream applies its transforms to each
    image separately) put equal pixels up to 9 grey levels apart. The two images are stacked as one
    (2S, S, 3) array so every pixel-wise op is one OpenCV call for the pair; the blur runs per image.

    Args:
        pair: (2, S, S, 3) uint8, C-contiguous; overwritten.
        params: the draw.

    Returns:
        (2, S, S, 3) uint8, the coloured pair (`pair` itself or a new array).
    """
    levels = np.arange(256, dtype=np.float32)
    num_images, S = pair.shape[0], pair.shape[1]
    stacked = pair.reshape(num_images * S, S, 3)  # a view: pixel-wise ops see both images at once
    if params.brightness != 1.0 or params.contrast != 1.0:
        gray_mean = float(cv2.cvtColor(pair[0], cv2.COLOR_RGB2GRAY).mean()) * params.brightness
        table = np.clip(levels * params.brightness, 0, 255)
        table = np.clip((table - gray_mean) * params.contrast + gray_mean, 0, 255)
        cv2.LUT(stacked, np.round(table).astype(np.uint8), dst=stacked)
    if params.saturation != 1.0 or params.hue_turns != 0.0:
        hsv = cv2.cvtColor(stacked, cv2.COLOR_RGB2HSV)  # uint8: H in [0, 180)
        hue_table = np.round(np.mod(levels + params.hue_turns * HUE_LEVELS, HUE_LEVELS)).astype(np.uint8) % HUE_LEVELS
        sat_table = np.round(np.clip(levels * params.saturation, 0, 255)).astype(np.uint8)
        hsv = cv2.LUT(hsv, np.stack([hue_table, sat_table, np.arange(256, dtype=np.uint8)], axis=1)[:, None, :])
        cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=stacked)
    if params.blur_sigma_px > MIN_BLUR_SIGMA_PX:
        for k in range(num_images):  # per image: a blur of the stack would bleed across the seam
            cv2.GaussianBlur(pair[k], (0, 0), params.blur_sigma_px, dst=pair[k])
    return pair


def augment_pair_u8(sample: dict[str, np.ndarray], params: AugmentParams) -> dict[str, np.ndarray]:
    """Apply one draw to a stored sample (numpy, as the reader loads it) and both of its images, in uint8.

    Args:
        sample: needs image, image_deoccluded (S, S, 3) uint8, mask_hand, mask_object (S, S) bool,
            joints_2d, object_keypoints_2d (21, 2) px, joints_3d (21, 3) m, mano_pose (48,),
            mano_trans (3,), object_pose (3, 4), K (3, 3).
        params: the draw (IDENTITY for none).

    Returns:
        A new dict with the same keys plus "pair": "pair" is (2, S, S, 3) uint8 (occluded, de-occluded),
        image / image_deoccluded are its two views, masks are bool (S, S), labels transformed; other
        keys are passed through. Images stay uint8 so the caller converts to float once (per batch).

    Raises:
        ValueError: when the images are not two (S, S, 3) uint8 arrays.
    """
    # 1. Check inputs
    S = sample["image"].shape[0]
    if sample["image"].shape != (S, S, 3) or sample["image_deoccluded"].shape != (S, S, 3):
        raise ValueError(f"augment_pair needs two (S, S, 3) images, got {sample['image'].shape} and "
                         f"{sample['image_deoccluded'].shape}")
    if sample["image"].dtype != np.uint8 or sample["image_deoccluded"].dtype != np.uint8:
        raise ValueError(f"augment_pair needs uint8 images, got {sample['image'].dtype} and "
                         f"{sample['image_deoccluded'].dtype}")
    out = dict(sample)
    is_identity_geometry = params.rotation_rad == 0.0 and params.scale == 1.0 and params.shift_px == (0.0, 0.0)

    # 2. Geometry: one warp per image, each carrying one mask in its 4th channel (4-channel warps are
    #    fast; one 8-channel warp of both takes OpenCV's generic path, slower and not bit-identical:
    #    docs/performance/storage.md)
    pair = np.empty((2, S, S, 3), np.uint8)
    if is_identity_geometry:
        pair[0], pair[1] = sample["image"], sample["image_deoccluded"]
        mask_hand, mask_object = sample["mask_hand"].astype(bool), sample["mask_object"].astype(bool)
    else:
        M, R, K_aug = geometry(params, sample["K"], S)
        warped = np.empty((2, S, S, 4), np.uint8)
        for k, (img, mask) in enumerate(((sample["image"], sample["mask_hand"]),
                                         (sample["image_deoccluded"], sample["mask_object"]))):
            rgba = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2RGBA)
            rgba[..., 3] = mask.view(np.uint8) * MASK_ON_U8 if mask.dtype == bool else (mask > 0) * MASK_ON_U8
            cv2.warpAffine(rgba, M[:2], (S, S), dst=warped[k], flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        cv2.cvtColor(warped.reshape(2 * S, S, 4), cv2.COLOR_RGBA2RGB, dst=pair.reshape(2 * S, S, 3))
        masks = warped[..., 3] > MASK_THRESHOLD_U8
        mask_hand, mask_object = masks[0], masks[1]
        out["joints_2d"] = transform_points_2d(sample["joints_2d"], M).astype(np.float32)
        out["object_keypoints_2d"] = transform_points_2d(sample["object_keypoints_2d"], M).astype(np.float32)
        out["mano_pose"], out["mano_trans"], out["joints_3d"] = rotate_hand(
            sample["mano_pose"], sample["mano_trans"], sample["joints_3d"], R)
        pose = np.asarray(sample["object_pose"], dtype=np.float64)
        out["object_pose"] = (R @ pose).astype(np.float32)  # [R R_o | R t_o]
        out["K"] = K_aug

    # 3. Colour, identical parameters for both images
    pair = _colour_pair(pair, params)
    out["pair"] = pair
    out["image"], out["image_deoccluded"] = pair[0], pair[1]
    out["mask_hand"], out["mask_object"] = mask_hand, mask_object
    return out


def augment_pair(sample: dict[str, np.ndarray], params: AugmentParams) -> dict[str, np.ndarray]:
    """`augment_pair_u8`, then images as float32 (S, S, 3) in [0, 1] and masks as float32 0/1 (per sample).

    Args:
        sample: as for `augment_pair_u8`.
        params: the draw (IDENTITY for none).

    Returns:
        A new dict with the same keys: images float32 (S, S, 3) in [0, 1], masks float32 0/1, labels
        transformed; other keys are passed through.
    """
    out = augment_pair_u8(sample, params)
    pair = out.pop("pair")
    out["image"] = pair[0].astype(np.float32) / np.float32(255.0)
    out["image_deoccluded"] = pair[1].astype(np.float32) / np.float32(255.0)
    out["mask_hand"] = out["mask_hand"].astype(np.float32)
    out["mask_object"] = out["mask_object"].astype(np.float32)
    return out
