"""Adaptive control strength beta: which strengths a de-occluder tries for each frame."""

from __future__ import annotations

import numpy as np

from unihope.config import DeocclusionConfig

BETA_POLICIES = ("fixed", "occlusion_prior", "search")


def occlusion_prior_beta(visibility: float, beta_min: float, beta_max: float) -> float:
    """UniHOPE's prior: severe occlusion -> lower beta (more freedom), slight occlusion -> higher beta.

    Linear from `beta_max` at visibility 1 (nothing hidden) to `beta_min` at visibility 0.

    Args:
        visibility: visible / full hand pixels, in [0, 1].
        beta_min: strength at visibility 0.
        beta_max: strength at visibility 1.

    Returns:
        The control strength.

    Raises:
        ValueError: when visibility is outside [0, 1] or not finite.
    """
    if not np.isfinite(visibility) or not 0.0 <= visibility <= 1.0:
        raise ValueError(f"visibility must be a fraction in [0, 1], got {visibility}")
    return float(beta_min + (beta_max - beta_min) * visibility)


def candidate_betas(visibility: float, cfg: DeocclusionConfig) -> np.ndarray:
    """The strengths to try for one frame under `cfg.beta_policy`.

    Args:
        visibility: visible / full hand pixels of the frame, in [0, 1].
        cfg: de-occlusion config (policy, fixed value, range, search grid).

    Returns:
        (C,) float32; C = 1 for `fixed` and `occlusion_prior`, len(cfg.beta_candidates) for `search`.

    Raises:
        ValueError: on an unknown policy.
    """
    if cfg.beta_policy == "fixed":
        return np.array([cfg.beta_fixed], dtype=np.float32)
    if cfg.beta_policy == "occlusion_prior":
        return np.array([occlusion_prior_beta(visibility, cfg.beta_min, cfg.beta_max)], dtype=np.float32)
    if cfg.beta_policy == "search":
        return np.asarray(cfg.beta_candidates, dtype=np.float32)
    raise ValueError(f"deocclusion.beta_policy must be one of {BETA_POLICIES}, got {cfg.beta_policy!r}")


def num_candidates(cfg: DeocclusionConfig) -> int:
    """How many candidates each frame gets under `cfg` (the same for every frame)."""
    return len(cfg.beta_candidates) if cfg.beta_policy == "search" else 1
