"""Decode colour images strictly: a JPEG whose entropy-coded data is damaged is an error, not pixels.

libjpeg (inside OpenCV and Pillow alike) decodes a JPEG with damaged entropy data (markers intact)
to a garbage image and only prints a warning ("Corrupt JPEG data: 36 extraneous bytes before
marker 0xd9") on stderr; neither library reports it to the caller (measured: cv2 5.0 and Pillow 13
return the image, Pillow's `load()` does not raise). So the decode runs with the process's stderr
file descriptor pointed at a temp file, under one lock, and any libjpeg warning makes the image
corrupt. Text other threads wrote to stderr meanwhile is passed on to the real stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

# libjpeg's warning texts (jerror.h: JWRN_*) that mean the pixels are not what was encoded.
LIBJPEG_WARNING_PREFIXES = (b"Corrupt JPEG data", b"Premature end of JPEG file", b"Invalid JPEG file structure",
                            b"Warning: unknown JFIF revision", b"Invalid SOS parameters")
JPEG_SUFFIXES = (".jpg", ".jpeg")
_STDERR_LOCK = threading.Lock()  # fd 2 is process-wide: one captured decode at a time


class ImageDecodeError(ValueError):
    """The image file cannot be decoded, or decodes only with libjpeg's corruption warnings."""


def read_color_image_bgr(path: str | os.PathLike) -> np.ndarray:
    """Read a colour image as (H, W, 3) uint8 BGR, refusing damaged JPEG data.

    Raises:
        ImageDecodeError: when OpenCV cannot decode the file, or libjpeg warned while decoding it.
    """
    path = os.fspath(path)
    if Path(path).suffix.lower() not in JPEG_SUFFIXES:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ImageDecodeError(f"image cannot be decoded: {path}")
        return image
    image, warnings = _imread_capturing_stderr(path)
    if image is None:
        raise ImageDecodeError(f"image cannot be decoded: {path}")
    if warnings:
        raise ImageDecodeError(f"damaged JPEG data in {path}: {warnings[0]}")
    return image


def _imread_capturing_stderr(path: str) -> tuple[np.ndarray | None, list[str]]:
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            image = cv2.imread(path, cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        capture.seek(0)
        lines = capture.read().splitlines(keepends=True)
    warnings = [line.decode(errors="replace").strip() for line in lines if line.startswith(LIBJPEG_WARNING_PREFIXES)]
    others = b"".join(line for line in lines if not line.startswith(LIBJPEG_WARNING_PREFIXES))
    if others:  # another thread's output, written while fd 2 pointed at the capture
        os.write(2, others)
    return image, warnings
