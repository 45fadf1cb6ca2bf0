"""UniHOPE's keep filter: which generated (de-occluded) images become training pairs, by the loader's rules.

UniHOPE's DexYCB / HO3D loaders (`data_loader/DEX_YCB_HOPE.py`, `filter_rule`) decide per generated image
from two *drop* tests and a rule that combines them:

- score test: drop when the generated image does not beat the original by the margin. Upstream's scores
  are pose errors (lower = better): drop when gen_score + margin >= ori_score. Ours are quality scores
  (higher = better, `Scorer`): keep when gen_score > ori_score + margin, drop otherwise.
- occ test: drop when the hand is too visible to need de-occlusion: visibility > threshold
  (`DeocclusionConfig.max_visibility`; upstream's `occ_threshold`, 0.9 in the released DexYCB config,
  0.8 for HO3D).

Rules, named as upstream names them (a name says how the *drop* tests combine):

- ``score``: drop by the score test alone (upstream's loader default).
- ``occ``: drop by the occ test alone (UniHOPE's released DexYCB and HO3D configs; our default).
- ``and``: drop when both tests say drop, i.e. keep when either passes.
- ``or``: drop when either test says drop, i.e. keep only when both pass (our rule before keep rules
  were configurable: occluded enough and better than the original).
- ``all``: keep every generated image.
- ``none``: keep no generated image (upstream's fallback branch, `all-gen`, which filters every one:
  a baseline trained without pairs).

A frame with no generated image (not occluded enough to be generated, too little visible hand) is never
kept, whatever the rule.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from unihope.config import DeocclusionConfig, KeepRule

KEEP_RULES: tuple[str, ...] = get_args(KeepRule)
# Rules under which a frame above max_visibility can never be kept: generating for it is wasted work.
RULES_NEEDING_OCCLUSION = ("occ", "or", "none")

REASON_KEPT = "kept"
REASON_NOT_OCCLUDED = "not_occluded"  # the occ test dropped it (or it was not generated for being too visible)
REASON_NO_GAIN = "no_gain"  # the score test dropped it
REASON_RULE_NONE = "rule_none"  # the `none` rule keeps no generated image


def keep_mask(
    rule: str,
    visibility: np.ndarray,
    original_score: np.ndarray,
    deocclusion_score: np.ndarray,
    max_visibility: float,
    margin: float,
) -> np.ndarray:
    """Which samples a rule keeps, vectorised (the filter and the report's per-rule counts).

    Args:
        rule: one of KEEP_RULES.
        visibility: (N,) visible fraction of the hand.
        original_score: (N,) score of the occluded input (NaN when nothing was generated).
        deocclusion_score: (N,) score of the best generated candidate (NaN when nothing was generated).
        max_visibility: the occ test keeps visibility <= this.
        margin: the score test keeps deocclusion_score > original_score + margin.

    Returns:
        (N,) bool.

    Raises:
        ValueError: on an unknown rule or arrays of different shapes.
    """
    if rule not in KEEP_RULES:
        raise ValueError(f"keep rule must be one of {KEEP_RULES}, got {rule!r}")
    visibility = np.asarray(visibility, dtype=np.float64)
    original = np.asarray(original_score, dtype=np.float64)
    generated = np.asarray(deocclusion_score, dtype=np.float64)
    if not visibility.shape == original.shape == generated.shape:
        raise ValueError(f"visibility {visibility.shape}, original_score {original.shape} and deocclusion_score "
                         f"{generated.shape} must have one shape")
    has_candidate = np.isfinite(original) & np.isfinite(generated)
    with np.errstate(invalid="ignore"):
        score_ok = has_candidate & (generated > original + margin)
    occ_ok = visibility <= max_visibility
    passed = {
        "score": score_ok,
        "occ": occ_ok,
        "and": score_ok | occ_ok,
        "or": score_ok & occ_ok,
        "all": np.ones_like(occ_ok),
        "none": np.zeros_like(occ_ok),
    }[rule]
    return has_candidate & passed


def keep_decision(
    cfg: DeocclusionConfig, visibility: float, original_score: float, deocclusion_score: float
) -> tuple[bool, str]:
    """(keep, reason) of one generated image under `cfg.keep_rule`; the reason names the test that dropped it."""
    keep = bool(keep_mask(cfg.keep_rule, np.array([visibility]), np.array([original_score]),
                          np.array([deocclusion_score]), cfg.max_visibility, cfg.keep_margin)[0])  # fmt: skip
    if keep:
        return True, REASON_KEPT
    if cfg.keep_rule == "none":
        return False, REASON_RULE_NONE
    is_occluded = visibility <= cfg.max_visibility
    if cfg.keep_rule in ("occ", "or") and not is_occluded:
        return False, REASON_NOT_OCCLUDED
    return False, REASON_NO_GAIN


def generation_max_visibility(cfg: DeocclusionConfig) -> float:
    """Frames above this visibility get no generated candidate (`cfg.generate_max_visibility`, resolved).

    None resolves to `max_visibility` under rules that can never keep a frame above it (no GPU time on
    frames the occ test drops) and to 1.0 under the others (any frame may be kept).
    """
    if cfg.generate_max_visibility is not None:
        return cfg.generate_max_visibility
    return cfg.max_visibility if cfg.keep_rule in RULES_NEEDING_OCCLUSION else 1.0


def pairs_by_rule(
    visibility: np.ndarray, original_score: np.ndarray, deocclusion_score: np.ndarray, cfg: DeocclusionConfig
) -> dict[str, int]:
    """How many samples each rule would keep, with the thresholds of `cfg` (the report's comparison)."""
    return {
        rule: int(keep_mask(rule, visibility, original_score, deocclusion_score, cfg.max_visibility,
                            cfg.keep_margin).sum())
        for rule in KEEP_RULES
    }  # fmt: skip
