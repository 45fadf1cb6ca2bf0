"""The synthetic camera rig: eight cameras around the table, one per DexYCB serial, with jittered intrinsics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unihope.config import SyntheticConfig
from unihope.sources.splits import DEXYCB_SERIALS
from unihope.sources.synthetic.common import seed_from
from unihope.sources.synthetic_render import look_at_cv

BASE_IMAGE_WIDTH_PX = 640  # the intrinsics below are DexYCB's scale at 640 x 480
FOCAL_PX = 615.0
FOCAL_JITTER_PX = 4.0
PRINCIPAL_JITTER_PX = 3.0
# Camera rig: 8 positions around the table, one per DexYCB serial.
RIG_TARGET_M = np.array([0.0, 0.0, 0.15])
RIG_FIRST_AZIMUTH_DEG = 20.0
RIG_AZIMUTH_STEP_DEG = 45.0  # 360 / 8 cameras: evenly around the table
RIG_ELEVATIONS_DEG = (36.0, 44.0, 52.0)
# `occlusion: heavy` (the pair-ablation preset): cameras low over the table (and, scene.py, the hand
# straight behind the object as seen from the primary camera), so the object hides much more of the hand.
# Measured on 128 views of one camera: visibility bins [0,.25] / (.25,.5] / (.5,.75] / (.75,1] hold
# 1-5 / 41-62 / 24-38 / 9-17 % (natural: 0 / 37 / 29 / 34 %); fingers wrapped round the object stay
# visible, so visibility rarely drops below 0.25.
HEAVY_RIG_ELEVATIONS_DEG = (15.0, 20.0, 25.0)
RIG_DISTANCES_M = (0.56, 0.62)
# Per-camera jitter, so no two cameras share intrinsics or an exact symmetric pose (as on a real rig).
RIG_AZIMUTH_JITTER_DEG = 6.0
RIG_ELEVATION_JITTER_DEG = 3.0
RIG_DISTANCE_JITTER_M = 0.03
FOCAL_ASPECT_JITTER = 0.002  # fy = fx * (1 +- this): real sensors' pixels are not exactly square


@dataclass(frozen=True, slots=True)
class Camera:
    serial: str
    K: np.ndarray  # (3, 3)
    T_cam_from_world: np.ndarray  # (4, 4)


def camera_rig(cfg: SyntheticConfig) -> list[Camera]:
    """The 8-camera rig (one per DexYCB serial), deterministic in the dataset seed."""
    rng = np.random.default_rng(seed_from(cfg.seed, "rig"))
    elevations_deg = HEAVY_RIG_ELEVATIONS_DEG if cfg.occlusion == "heavy" else RIG_ELEVATIONS_DEG
    scale = cfg.image_width_px / BASE_IMAGE_WIDTH_PX
    cameras = []
    for idx, serial in enumerate(DEXYCB_SERIALS):
        azimuth = np.deg2rad(RIG_FIRST_AZIMUTH_DEG + RIG_AZIMUTH_STEP_DEG * idx
                             + rng.uniform(-RIG_AZIMUTH_JITTER_DEG, RIG_AZIMUTH_JITTER_DEG))
        elevation = np.deg2rad(elevations_deg[idx % 3] + rng.uniform(-RIG_ELEVATION_JITTER_DEG, RIG_ELEVATION_JITTER_DEG))
        distance = RIG_DISTANCES_M[idx % 2] + rng.uniform(-RIG_DISTANCE_JITTER_M, RIG_DISTANCE_JITTER_M)
        centre = RIG_TARGET_M + distance * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        )
        fx = (FOCAL_PX + rng.uniform(-FOCAL_JITTER_PX, FOCAL_JITTER_PX)) * scale
        K = np.array(
            [
                [fx, 0.0, (cfg.image_width_px - 1) / 2 + rng.uniform(-PRINCIPAL_JITTER_PX, PRINCIPAL_JITTER_PX) * scale],
                [0.0, fx * (1 + rng.uniform(-FOCAL_ASPECT_JITTER, FOCAL_ASPECT_JITTER)), (cfg.image_height_px - 1) / 2 + rng.uniform(-PRINCIPAL_JITTER_PX, PRINCIPAL_JITTER_PX) * scale],
                [0.0, 0.0, 1.0],
            ]
        )  # fmt: skip
        cameras.append(Camera(serial, np.round(K, 4), look_at_cv(centre, RIG_TARGET_M)))
    return cameras


def camera_subset(rig: list[Camera], num_cameras: int) -> list[Camera]:
    """`num_cameras` rig cameras spread around the table (2 cameras face each other)."""
    picks = np.linspace(0, len(rig), num_cameras, endpoint=False).astype(int)
    return [rig[i] for i in picks]
