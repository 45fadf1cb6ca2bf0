"""Helpers shared by the source readers: cheap image-file checks, MANO frame changes, skips."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from unihope.rotations import axis_angle_from_matrix, matrix_from_axis_angle
from unihope.storage.schema import FrameRef, Skip, SkipReason

T = TypeVar("T")

STAGE = "source"
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND_TAIL = b"IEND\xaeB`\x82"
# SOF markers that carry the frame size (baseline, extended, progressive, lossless; not DHT/JPG/DAC).
JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
FILE_TAIL_BYTES = 64


class FrameFileError(Exception):
    """A frame's file is missing or unreadable; carries the SkipReason it turns into."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def skip(sample_key: str, reason: SkipReason, detail: str) -> Skip:
    """A source-stage Skip."""
    return Skip(sample_key=sample_key, stage=STAGE, reason=reason, detail=detail)


def load_each(refs: Sequence[FrameRef], load_one: Callable[[FrameRef], T | Skip]) -> list[T | Skip]:
    """`load_one` over refs in order; a FrameFileError becomes that frame's Skip, never the batch's failure."""
    out: list[T | Skip] = []
    for ref in refs:
        try:
            out.append(load_one(ref))
        except FrameFileError as err:
            out.append(skip(ref.sample_key, err.reason, err.detail))
    return out


def _read_head_tail(path: Path, head_bytes: int) -> tuple[bytes, bytes, int]:
    if not path.is_file():
        raise FrameFileError(SkipReason.MISSING_FILE, f"missing file {path}")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(head_bytes)
        handle.seek(max(0, size - FILE_TAIL_BYTES))
        tail = handle.read()
    return head, tail, size


def jpeg_size_wh(path: Path) -> tuple[int, int]:
    """(width, height) of a complete JPEG file, from its SOF header, without decoding the pixels.

    A file without the start marker, without a frame header, or whose end-of-image marker is
    missing (a truncated download) raises FrameFileError(CORRUPT_FILE).
    """
    path = Path(path)
    data_head, tail, size = _read_head_tail(path, head_bytes=0)
    with path.open("rb") as handle:
        data = handle.read(min(size, 1 << 16))
    if not data.startswith(JPEG_SOI):
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: not a JPEG file (no start-of-image marker)")
    if JPEG_EOI not in tail.rstrip(b"\x00"):
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: truncated JPEG (no end-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in JPEG_SOF_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: JPEG frame header not found")


def png_size_wh(path: Path) -> tuple[int, int]:
    """(width, height) of a complete PNG file from its IHDR chunk; truncated files raise CORRUPT_FILE."""
    path = Path(path)
    head, tail, _ = _read_head_tail(path, head_bytes=24)
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: not a PNG file")
    if PNG_IEND_TAIL not in tail:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: truncated PNG (no IEND chunk)")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def image_size_wh(path: Path) -> tuple[int, int]:
    """(width, height) of a JPEG or PNG image file, checking that the file is complete."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return jpeg_size_wh(path)
    if suffix == ".png":
        return png_size_wh(path)
    raise ValueError(f"unsupported image type {suffix!r} for {path}; expected .jpg or .png")


def check_color_matches_depth(image_path: Path, color_wh: tuple[int, int], depth_wh: tuple[int, int]) -> None:
    """A colour image must have its camera's resolution, which the registered depth image carries.

    A resized colour image (1280x960 or 320x240 for a 640x480 camera) would be cropped with the
    intrinsics of another resolution: a misaligned crop, or a hand "outside" the image.

    Raises:
        FrameFileError(WRONG_RESOLUTION): when the sizes differ.
    """
    if tuple(color_wh) != tuple(depth_wh):
        raise FrameFileError(
            SkipReason.WRONG_RESOLUTION,
            f"{image_path}: colour image is {color_wh[0]}x{color_wh[1]} px, the camera's (depth) is "
            f"{depth_wh[0]}x{depth_wh[1]} px",
        )


def transform_mano_global(
    global_orient_rad: np.ndarray,
    transl_m: np.ndarray,
    R_new_from_old: np.ndarray,
    t_new_from_old_m: np.ndarray,
    root_joint_rest_m: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """MANO global orientation and translation after a rigid change of frame.

    MANO (smplx) rotates the hand about its rest-pose root joint j0 and then adds `transl`:
    x = R_g (v - j0) + j0 + t. Mapping every point by x' = R x + c gives
    x' = (R R_g)(v - j0) + j0 + [R (j0 + t) + c - j0], so the new translation is not simply R t + c.

    Args:
        global_orient_rad: (3,) axis-angle of the hand in the old frame.
        transl_m: (3,) MANO `transl` in the old frame, metres.
        R_new_from_old: (3, 3) rotation of the frame change (det +1).
        t_new_from_old_m: (3,) translation of the frame change, metres.
        root_joint_rest_m: (3,) root joint of the rest pose for this hand's betas (zero pose, zero transl).

    Returns:
        (global_orient_rad (3,), transl_m (3,)) in the new frame, float64.
    """
    R = np.asarray(R_new_from_old, dtype=np.float64)
    j0 = np.asarray(root_joint_rest_m, dtype=np.float64).reshape(3)
    R_global = R @ matrix_from_axis_angle(global_orient_rad)
    transl_new = R @ (j0 + np.asarray(transl_m, dtype=np.float64).reshape(3)) + np.asarray(t_new_from_old_m) - j0
    return axis_angle_from_matrix(R_global), transl_new


def hand_model_path(hand_cfg, side: str) -> Path:
    """The MANO pickle a HandModelConfig selects for `side` (official, converted once, or procedural)."""
    from unihope.hand import resolve_mano_path

    return resolve_mano_path(side, mano_dir=hand_cfg.mano_dir, cache_dir=hand_cfg.cache_dir)
