"""The de-occluder interface: batches of annotated crops in, scored and filtered `DeocclusionResult`s out.

A backend only says how to generate one candidate per frame for given control strengths (`_generate`);
this base class owns everything around it: the inpaint masks, the beta candidates, the composite that keeps
pixels outside the mask bit-identical, scoring, choosing the best candidate, and UniHOPE's keep filter
(`keep.py`: the rule in `DeocclusionConfig.keep_rule`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass

import numpy as np

from unihope.storage.schema import AnnotatedFrame, DeocclusionResult
from unihope.config import DeocclusionConfig

from .beta import candidate_betas
from .hints import composite, inpaint_mask
from .keep import (
    REASON_KEPT, REASON_NO_GAIN, REASON_NOT_OCCLUDED, REASON_RULE_NONE, generation_max_visibility, keep_decision,
)
from .scoring import MIN_COLOUR_PIXELS, ColourFlexionScorer, Scorer

LOGGER = logging.getLogger(__name__)

# Why a result was kept or dropped (DeocclusionResult.reason). Not generated: not_occluded (visibility above
# the generation limit, or no hidden hand pixel) or no_visible_hand (too few visible hand pixels to model
# the hand's colour). Generated: kept, or dropped by the keep rule's test (`keep.keep_decision`):
# not_occluded (occ test), no_gain (score test), rule_none.
REASON_NO_VISIBLE_HAND = "no_visible_hand"
REASONS = (REASON_KEPT, REASON_NOT_OCCLUDED, REASON_NO_VISIBLE_HAND, REASON_NO_GAIN, REASON_RULE_NONE)

@dataclass(frozen=True, slots=True)
class Candidates:
    """What a backend generated for one frame: one composited image per candidate beta, and its cost."""

    images: list[np.ndarray | None]  # per candidate (S, S, 3) uint8, composited; None = not finished (early exit)
    num_unet_evals: int = 0  # UNet evaluations spent on the frame (0 for the weight-free backends)


def default_scorer(cfg: DeocclusionConfig) -> Scorer:
    """The scorer `cfg.scorer` names: the weight-free colour scorer, or the pose model of a trained checkpoint."""
    if cfg.scorer == "pose_model":
        from .pose_scorer import build_pose_scorer  # torch and the model package only when asked for

        return build_pose_scorer(cfg)
    return ColourFlexionScorer(visible_weight=cfg.visible_weight, edge_weight=cfg.edge_weight)


class Deoccluder(ABC):
    """Base of every backend: `run(frames) -> results`; subclasses implement `_generate`."""

    name: str = ""
    uses_beta: bool = False  # False: beta is recorded as nan and the beta policy is not used

    def __init__(self, cfg: DeocclusionConfig, scorer: Scorer | None = None) -> None:
        """Args: cfg: the stage config; scorer: candidate scorer (default: `ColourFlexionScorer` from cfg)."""
        self.cfg = cfg
        self.scorer = scorer if scorer is not None else default_scorer(cfg)

    @abstractmethod
    def _generate(
        self, frames: list[AnnotatedFrame], masks: list[np.ndarray], betas: np.ndarray
    ) -> list[np.ndarray]:
        """Generate one candidate per frame.

        Args:
            frames: the frames of one batch (all occluded enough to be worth generating).
            masks: per frame the (S, S) bool inpaint mask.
            betas: (B,) float32 control strength per frame (nan for backends without one).

        Returns:
            per frame an (S, S, 3) uint8 image; only its pixels inside the mask are used.
        """

    def frame_betas(self, frame: AnnotatedFrame) -> np.ndarray:
        """(C,) float32 strengths this backend tries for `frame` (nan when it has no control strength)."""
        if not self.uses_beta:
            return np.array([np.nan], dtype=np.float32)
        return candidate_betas(frame.visibility, self.cfg)

    def run(self, frames: list[AnnotatedFrame]) -> list[DeocclusionResult]:
        """De-occlude a list of annotated crops, in batches of cfg.batch_size.

        Args:
            frames: annotated crops (any crop size; each result has its frame's size).

        Returns:
            one result per frame, in order. Frames that are not occluded enough or show too little of the hand
            are not generated: their image is the input and `keep` is False with the reason.

        Raises:
            ValueError: on a frame whose arrays disagree in shape or a repeated sample key.
        """
        # 1. Check inputs
        _check_frames(frames)
        results: list[DeocclusionResult] = []

        # 2. De-occlude batch by batch
        for start in range(0, len(frames), self.cfg.batch_size):
            results.extend(self._run_batch(frames[start : start + self.cfg.batch_size]))

        # 3. Log a summary by reason
        counts = Counter(result.reason for result in results)
        LOGGER.info("deocclude[%s]: %d frames, %s", self.name, len(results), dict(sorted(counts.items())))
        return results

    def _run_batch(self, frames: list[AnnotatedFrame]) -> list[DeocclusionResult]:
        # 1. Masks, candidate strengths and which frames get generated at all
        masks = [inpaint_mask(frame, self.cfg.mask_dilation_px, self.cfg.mask_region) for frame in frames]
        betas = [self.frame_betas(frame) for frame in frames]
        reasons: list[str | None] = []
        max_visibility = generation_max_visibility(self.cfg)
        for frame in frames:
            if frame.visibility > max_visibility or not occluded_pixels(frame):
                reasons.append(REASON_NOT_OCCLUDED)
            elif np.count_nonzero(frame.mask_hand_visible) < MIN_COLOUR_PIXELS:
                reasons.append(REASON_NO_VISIBLE_HAND)
            else:
                reasons.append(None)
        active = [idx for idx, reason in enumerate(reasons) if reason is None]

        # 2. Generate every candidate of the active frames, composited into the input
        generated = self._generate_candidates(
            [frames[idx] for idx in active], [masks[idx] for idx in active], [betas[idx] for idx in active]
        )
        if len(generated) != len(active):
            raise RuntimeError(f"backend {self.name!r} returned candidates for {len(generated)} of {len(active)} frames")
        candidates: dict[int, Candidates] = dict(zip(active, generated))

        # 3. Score, choose, filter
        results = []
        for idx, frame in enumerate(frames):
            results.append(self._decide(frame, masks[idx], betas[idx], candidates.get(idx), reasons[idx]))
        return results

    def _generate_candidates(
        self, frames: list[AnnotatedFrame], masks: list[np.ndarray], betas: list[np.ndarray]
    ) -> list[Candidates]:
        """Every candidate of every frame; by default one `_generate` call per candidate column.

        Args:
            frames: the active frames of one batch.
            masks: per frame the (S, S) bool inpaint mask.
            betas: per frame its (C,) float32 candidate strengths (the same C for every frame).

        Returns:
            one `Candidates` per frame, images composited into the input.
        """
        images: list[list[np.ndarray | None]] = [[] for _ in frames]
        for column in range(len(betas[0]) if frames else 0):
            column_betas = np.array([frame_betas[column] for frame_betas in betas], dtype=np.float32)
            generated = self._generate(frames, masks, column_betas)
            if len(generated) != len(frames):
                raise RuntimeError(f"backend {self.name!r} returned {len(generated)} images for {len(frames)} frames")
            for frame_images, frame, mask, image in zip(images, frames, masks, generated):
                frame_images.append(composite(frame.image, image, mask))
        return [Candidates(images=frame_images) for frame_images in images]

    def _decide(
        self,
        frame: AnnotatedFrame,
        mask: np.ndarray,
        betas: np.ndarray,
        generated: Candidates | None,
        reason: str | None,
    ) -> DeocclusionResult:
        if generated is None:  # not generated: the input is the output, nothing is kept
            return DeocclusionResult(
                sample_key=frame.frame.sample_key,
                image_deoccluded=frame.image.copy(),
                inpaint_mask=mask,
                beta=float("nan"),
                candidate_betas=betas.astype(np.float32),
                candidate_scores=np.full(len(betas), np.nan, dtype=np.float32),
                original_score=float("nan"),
                deocclusion_score=float("nan"),
                keep=False,
                reason=reason or REASON_NOT_OCCLUDED,
                backend=self.name,
            )
        # Candidates the early-exit search did not finish keep a nan score and cannot be chosen.
        finished = [idx for idx, image in enumerate(generated.images) if image is not None]
        candidates = generated.images
        images = np.stack([frame.image, *(candidates[idx] for idx in finished)])
        pose_errors = getattr(self.scorer, "pose_errors", None)  # a pose-model scorer: score = -error, recorded
        errors = pose_errors(frame, mask, images).total if pose_errors is not None else None
        scores = -errors if errors is not None else self.scorer.score(frame, mask, images)
        original_score = float(np.float32(scores[0]))  # float32 like the candidates', so equal scores compare equal
        candidate_scores = np.full(len(candidates), np.nan, dtype=np.float32)
        candidate_scores[finished] = scores[1:]
        best = finished[int(np.argmax(scores[1:]))]  # first of equal scores
        best_score = float(candidate_scores[best])
        keep, why = keep_decision(self.cfg, frame.visibility, original_score, best_score)
        return DeocclusionResult(
            sample_key=frame.frame.sample_key,
            image_deoccluded=candidates[best],
            inpaint_mask=mask,
            beta=float(betas[best]),
            candidate_betas=betas.astype(np.float32),
            candidate_scores=candidate_scores,
            original_score=original_score,
            deocclusion_score=best_score,
            keep=bool(keep),
            reason=why,
            backend=self.name,
            num_unet_evals=generated.num_unet_evals,
            original_pose_error=float("nan") if errors is None else float(errors[0]),
            deoccluded_pose_error=float("nan") if errors is None else float(errors[1 + finished.index(best)]),
        )


def occluded_pixels(frame: AnnotatedFrame) -> int:
    """Number of hand pixels the object hides."""
    return int(np.count_nonzero(np.asarray(frame.mask_hand, bool) & ~np.asarray(frame.mask_hand_visible, bool)))


def _check_frames(frames: list[AnnotatedFrame]) -> None:
    seen: set[str] = set()
    for frame in frames:
        if not isinstance(frame, AnnotatedFrame):
            raise ValueError(f"Deoccluder.run takes AnnotatedFrame records, got {type(frame).__name__}")
        key = frame.frame.sample_key
        if key in seen:
            raise ValueError(f"sample key {key!r} appears twice in one de-occlusion call")
        seen.add(key)
        image = np.asarray(frame.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] != image.shape[1]:
            raise ValueError(f"{key}: image must be (S, S, 3) uint8, got {image.shape} {image.dtype}")
        for name in ("mask_hand", "mask_hand_visible", "mask_object", "depth_hand", "hand_parts"):
            if np.shape(getattr(frame, name)) != image.shape[:2]:
                raise ValueError(f"{key}: {name} must be {image.shape[:2]}, got {np.shape(getattr(frame, name))}")
