"""The synthetic source's true object-free image of a sample, cut like its stored crop (benchmarks only).

Truth layout (written by `unihope.sources.synthetic`, never read by a build stage):
`<synthetic root>/truth/<subject>/<sequence>/<serial>/color_%06d.jpg`, the same view rendered without
the grasped object. A sample's crop is cut with its `crop_affine` exactly as annotation cut the input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

TRUTH_DIR = "truth"


def truth_crop(synthetic_root: Path, sample_key: str, crop_affine: np.ndarray, size_px: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB: the object-free truth view of `sample_key` cut with its crop affine.

    Raises:
        FileNotFoundError: when the truth image is missing (not a synthetic dataset, or another one).
    """
    sequence_dir, frame_idx = sample_key.rsplit("/", 1)
    path = Path(synthetic_root) / TRUTH_DIR / sequence_dir / f"color_{int(frame_idx):06d}.jpg"
    image_bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image_bgr is None:
        raise FileNotFoundError(f"truth image missing for {sample_key}: {path}")
    crop_bgr = cv2.warpAffine(image_bgr, np.asarray(crop_affine, dtype=np.float64), (size_px, size_px),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
