"""Baseline de-occlusion: OpenCV inpainting of the inpaint mask, nothing else (for comparison)."""

from __future__ import annotations

import cv2
import numpy as np

from unihope.storage.schema import AnnotatedFrame

from .base import Deoccluder

INPAINT_RADIUS_PX = 5  # Copied from unihope.deocclude.render_backend.INPAINT_RADIUS_PX (same fill, fair comparison)


class InpaintDeoccluder(Deoccluder):
    """cv2.inpaint (Telea) of the whole inpaint mask from every pixel around it, hand and background alike.

    It knows nothing of the hand's shape, so hidden fingers come back as a smear of their surroundings:
    the floor every learned or rendered de-occluder must beat. No control strength: beta is nan.
    """

    name = "inpaint"
    uses_beta = False

    def _generate(
        self, frames: list[AnnotatedFrame], masks: list[np.ndarray], betas: np.ndarray
    ) -> list[np.ndarray]:
        return [
            cv2.inpaint(frame.image, mask.astype(np.uint8), INPAINT_RADIUS_PX, cv2.INPAINT_TELEA)
            for frame, mask in zip(frames, masks)
        ]
