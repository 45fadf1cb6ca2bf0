"""Scores of a (de-)occluded crop: visible-region consistency plus how well the occluded region shows the hand.

score = visible_weight * visible_consistency + (1 - visible_weight) * hidden-hand term, each in [0, 1],
higher = better. Scorers:

- `ColourFlexionScorer` (default, no weights): its hidden-hand term is `colour_coverage`, which measures
  colour coverage and edge placement, not finger flexion: a Gaussian colour model of the hand in YCrCb chroma is fitted on
  the hand's own visible pixels of the *original* crop; per hand part (palm, thumb..little) it measures how much
  of the part's rendered silhouette inside the occluded region the candidate paints in hand colour, penalised by
  hand colour painted where the rendering says "not hand"; and how well the candidate's image edges follow the
  rendered hand's depth edges there.
- `KeypointFlexionScorer`: any model that predicts 21 joints (images -> (N, 21, 2|3)); the flexion angles of its
  prediction on the candidate are compared with the ground truth's (`flexion_agreement`).
- `pose_scorer.PoseModelScorer`: UniHOPE's choice with a trained checkpoint of this project's model (pose errors,
  lower = better; its score is -error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from unihope.storage.schema import FINGER_NAMES, HAND_PART_FINGER_FIRST, HAND_PART_PALM, NUM_JOINTS, AnnotatedFrame

from .hints import occluded_hand_mask

# Colour model
MIN_COLOUR_PIXELS = 20  # fewer pixels than this: no colour model for that class
COLOUR_MIN_STD = 2.5  # chroma std floor (YCrCb levels): keeps a flat synthetic hand from a singular covariance
LUMA_MIN_STD = 8.0  # luminance std floor (levels)
LUMA_STD_INFLATION = 1.5  # hidden parts may be lit differently from the visible ones
LOG_OTHER_DENSITY = -3 * np.log(256.0)  # 'anything else' class: uniform over the 8-bit colour cube
BACKGROUND_BAND_PX = 6  # width of the band around the inpaint mask the background model is fitted on

# Colour-coverage scorer
MIN_PART_PIXELS = 3  # occluded pixels a hand part needs to count in the coverage mean
DEPTH_EDGE_STEP_M = 0.008  # a depth jump larger than this between neighbours is a rendered edge
EDGE_STEP_GREY = 16.0  # an image step of this many grey levels counts as a full edge
VISIBLE_MAD_SCALE_GREY = 32.0  # consistency = exp(-mean abs difference / scale)
CLEAN_DISTANCE_PX = 2  # visible hand pixels this close to the object mix with it in the input: not compared

# Keypoint scorer
FLEXION_ANGLE_SCALE_DEG = 20.0  # agreement = exp(-weighted mean angle error / scale)
FINGER_WEIGHT_FLOOR = 0.1  # fully visible fingers still count a little
FINGER_CHAINS = tuple((0, 1 + 4 * f, 2 + 4 * f, 3 + 4 * f, 4 + 4 * f) for f in range(len(FINGER_NAMES)))


class Scorer(Protocol):
    """Scores candidate crops of one frame; higher = better."""

    def score(self, frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> np.ndarray:
        """Args: frame; mask_inpaint (S, S) bool; images_rgb (N, S, S, 3) uint8. Returns (N,) float32."""
        ...


@dataclass(frozen=True, slots=True)
class ColourModel:
    """A Gaussian over YCrCb pixel values (luminance std inflated: shading varies more than chroma)."""

    mean_ycrcb: np.ndarray  # (3,) float64
    inv_cov_ycrcb: np.ndarray  # (3, 3) float64
    log_norm: float  # log of the Gaussian's normalising constant
    num_pixels: int


def _to_ycrcb(images_rgb: np.ndarray) -> np.ndarray:
    images = np.asarray(images_rgb)
    flat = images.reshape(-1, images.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2YCrCb).astype(np.float64).reshape(images.shape)


def fit_colour(image_rgb: np.ndarray, mask: np.ndarray, erode_rim: bool = True) -> ColourModel | None:
    """Fit a colour model on the pixels of `mask` (their one-pixel rim left out when enough remain).

    Args:
        image_rgb: (S, S, 3) uint8 crop.
        mask: (S, S) bool pixels of the class.
        erode_rim: leave out the mask's rim (it mixes with neighbours in real images).

    Returns:
        The model, or None with fewer than MIN_COLOUR_PIXELS pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    if erode_rim:
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if np.count_nonzero(inner) >= MIN_COLOUR_PIXELS:
            mask = inner
    if np.count_nonzero(mask) < MIN_COLOUR_PIXELS:
        return None
    values = _to_ycrcb(image_rgb)[mask]
    cov = np.cov(values, rowvar=False) + np.diag([LUMA_MIN_STD**2, COLOUR_MIN_STD**2, COLOUR_MIN_STD**2])
    cov[0, 0] *= LUMA_STD_INFLATION**2
    _, log_det = np.linalg.slogdet(cov)
    return ColourModel(
        mean_ycrcb=values.mean(axis=0),
        inv_cov_ycrcb=np.linalg.inv(cov),
        log_norm=float(-0.5 * (3 * np.log(2 * np.pi) + log_det)),
        num_pixels=int(values.shape[0]),
    )


def log_density(images_ycrcb: np.ndarray, model: ColourModel) -> np.ndarray:
    """Log Gaussian density of every pixel, (..., S, S) float64."""
    diff = images_ycrcb - model.mean_ycrcb
    return model.log_norm - 0.5 * np.sum((diff @ model.inv_cov_ycrcb) * diff, axis=-1)


@dataclass(frozen=True, slots=True)
class HandColourClassifier:
    """p(hand | colour) against the local background and an 'anything else' class (uniform over colours)."""

    hand: ColourModel
    background: ColourModel | None  # None when no background is visible around the inpaint mask

    def hand_probability(self, images_rgb: np.ndarray) -> np.ndarray:
        """(..., S, S) float32 in [0, 1]."""
        ycrcb = _to_ycrcb(images_rgb)
        log_hand = log_density(ycrcb, self.hand)
        log_terms = [log_hand, np.full_like(log_hand, LOG_OTHER_DENSITY)]
        if self.background is not None:
            log_terms.append(log_density(ycrcb, self.background))
        return np.exp(log_hand - np.logaddexp.reduce(np.stack(log_terms), axis=0)).astype(np.float32)


def fit_hand_colour(frame: AnnotatedFrame, mask_inpaint: np.ndarray) -> HandColourClassifier | None:
    """The hand-vs-background colour classifier of a frame, fitted on its original crop.

    Hand: the visible hand pixels. Background: a band of BACKGROUND_BAND_PX around the inpaint mask that is
    neither hand nor object (what the hidden background most likely looks like). A skin-coloured table then
    lowers the hand probability of hand and table alike instead of reading the table as hand.

    Returns:
        None when fewer than MIN_COLOUR_PIXELS hand pixels are visible.
    """
    hand = fit_colour(frame.image, frame.mask_hand_visible)
    if hand is None:
        return None
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * BACKGROUND_BAND_PX + 1,) * 2)
    band = cv2.dilate(mask_inpaint.astype(np.uint8), kernel) > 0
    band &= ~mask_inpaint & ~np.asarray(frame.mask_hand, bool) & ~np.asarray(frame.mask_object, bool)
    return HandColourClassifier(hand=hand, background=fit_colour(frame.image, band, erode_rim=False))


def rendered_hand_edges(depth_hand_m: np.ndarray) -> np.ndarray:
    """Edges of the rendered hand: its silhouette boundary and depth steps between overlapping parts.

    Args:
        depth_hand_m: (S, S) float metres, 0 = background.

    Returns:
        (S, S) bool, marking the pixels on both sides of every edge.
    """
    depth = np.asarray(depth_hand_m, dtype=np.float64)
    is_hand = depth > 0
    edges = cv2.morphologyEx(is_hand.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    for axis in (0, 1):
        step = np.abs(np.diff(depth, axis=axis))
        both = np.logical_and(np.take(is_hand, range(1, depth.shape[axis]), axis=axis),
                              np.take(is_hand, range(0, depth.shape[axis] - 1), axis=axis))
        jump = (step > DEPTH_EDGE_STEP_M) & both
        if axis == 0:
            edges[1:] |= jump
            edges[:-1] |= jump
        else:
            edges[:, 1:] |= jump
            edges[:, :-1] |= jump
    return edges


def edge_strength(images_rgb: np.ndarray) -> np.ndarray:
    """Image edge strength in [0, 1] with one pixel of position tolerance.

    Args:
        images_rgb: (N, S, S, 3) uint8.

    Returns:
        (N, S, S) float32; 1 where a grey step of at least EDGE_STEP_GREY levels lies within one pixel.
    """
    out = np.empty(images_rgb.shape[:3], dtype=np.float32)
    for idx, image in enumerate(images_rgb):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        # A 3x3 Sobel answers 4 * h to a step of h levels: divide by 4 to read the step in grey levels.
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 4.0
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 4.0
        magnitude = cv2.dilate(np.hypot(gx, gy), np.ones((3, 3), np.uint8))
        out[idx] = np.minimum(magnitude / EDGE_STEP_GREY, 1.0)
    return out


def visible_consistency(original_rgb: np.ndarray, images_rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """How much candidates keep the original in a region: exp(-mean |difference| / VISIBLE_MAD_SCALE_GREY).

    Args:
        original_rgb: (S, S, 3) uint8.
        images_rgb: (N, S, S, 3) uint8.
        region: (S, S) bool; empty -> every candidate scores 1.

    Returns:
        (N,) float32 in (0, 1].
    """
    if not region.any():
        return np.ones(len(images_rgb), dtype=np.float32)
    diff = np.abs(images_rgb[:, region].astype(np.float32) - original_rgb[region].astype(np.float32))
    return np.exp(-diff.mean(axis=(1, 2)) / VISIBLE_MAD_SCALE_GREY).astype(np.float32)


def visible_region(frame: AnnotatedFrame, mask_inpaint: np.ndarray) -> np.ndarray:
    """Clean visible hand pixels a de-occluder was allowed to change (the dilated rim of the inpaint mask).

    Outside the inpaint mask every candidate equals the input (the composite guarantees it), so only the rim
    tells candidates apart on consistency; its pixels within CLEAN_DISTANCE_PX of the object are left out,
    since in the input they mix hand with the object's edge (anti-aliasing, blur, JPEG ringing).
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * CLEAN_DISTANCE_PX + 1,) * 2)
    near_object = cv2.dilate(np.asarray(frame.mask_object, np.uint8), kernel) > 0
    return np.asarray(frame.mask_hand_visible, dtype=bool) & mask_inpaint & ~near_object


class ColourFlexionScorer:
    """The weight-free default scorer (see the module docstring)."""

    def __init__(self, visible_weight: float = 0.5, edge_weight: float = 0.3) -> None:
        """Args: visible_weight in [0, 1] (share of visible consistency); edge_weight in [0, 1] (share of edge
        agreement inside the colour-coverage term)."""
        for name, value in (("visible_weight", visible_weight), ("edge_weight", edge_weight)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"deocclusion.{name} must be in [0, 1], got {value}")
        self.visible_weight = visible_weight
        self.edge_weight = edge_weight

    def colour_coverage(self, frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> np.ndarray:
        """Hand-colour coverage of the occluded silhouette (and depth-edge agreement), (N,) float32 in [0, 1].

        It says whether hand-coloured pixels with the rendered hand's edges fill the hidden silhouette, not how
        the fingers are bent (a trained pose model does that: `pose_scorer.PoseModelScorer`).

        Args:
            frame: the annotated crop (its original image gives the colour model).
            mask_inpaint: (S, S) bool region the candidates regenerated.
            images_rgb: (N, S, S, 3) uint8 candidates.

        Returns:
            (N,) float32; 1 for every candidate when nothing is occluded or no colour model can be fitted.
        """
        # 1. Check inputs and regions
        num_images = len(images_rgb)
        occluded = occluded_hand_mask(frame)
        if not occluded.any():
            return np.ones(num_images, dtype=np.float32)
        classifier = fit_hand_colour(frame, mask_inpaint)
        if classifier is None:
            return np.ones(num_images, dtype=np.float32)

        # 2. Colour coverage per hand part (recall), penalised by hand colour outside the silhouette
        likeness = classifier.hand_probability(images_rgb)  # (N, S, S)
        parts = np.asarray(frame.hand_parts)
        recalls = []
        for part in range(HAND_PART_PALM, HAND_PART_FINGER_FIRST + len(FINGER_NAMES)):
            region = occluded & (parts == part)
            if np.count_nonzero(region) >= MIN_PART_PIXELS:
                recalls.append(likeness[:, region].mean(axis=1))
        recall = np.mean(recalls, axis=0) if recalls else likeness[:, occluded].mean(axis=1)
        not_hand = mask_inpaint & ~np.asarray(frame.mask_hand, dtype=bool)
        false_hand = likeness[:, not_hand].mean(axis=1) if not_hand.any() else np.zeros(num_images)
        colour_score = recall * (1.0 - false_hand)

        # 3. Edge agreement with the rendered hand's depth edges inside the occluded region
        near_occluded = cv2.dilate(occluded.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        edges = rendered_hand_edges(frame.depth_hand) & near_occluded & mask_inpaint
        if self.edge_weight == 0.0 or not edges.any():
            return colour_score.astype(np.float32)
        edge_score = edge_strength(images_rgb)[:, edges].mean(axis=1)
        return ((1.0 - self.edge_weight) * colour_score + self.edge_weight * edge_score).astype(np.float32)

    def score(self, frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> np.ndarray:
        """Total score of each candidate, (N,) float32 in [0, 1] (see the module docstring)."""
        images = _check_images(frame, mask_inpaint, images_rgb)
        consistency = visible_consistency(frame.image, images, visible_region(frame, mask_inpaint))
        coverage = self.colour_coverage(frame, mask_inpaint, images)
        return (self.visible_weight * consistency + (1.0 - self.visible_weight) * coverage).astype(np.float32)


def flexion_angles_deg(joints: np.ndarray) -> np.ndarray:
    """Bend angles of each finger's three joints (MCP, PIP, DIP) from 21 joints in DexYCB order.

    The angle at a joint is the angle between the bone entering it and the bone leaving it (0 = straight);
    it is invariant to translation, rotation and scale, so 2-D pixel joints and 3-D joints in any frame work.

    Args:
        joints: (..., 21, D) with D = 2 or 3.

    Returns:
        (..., 5, 3) float64 degrees, thumb..little x MCP, PIP, DIP.
    """
    joints = np.asarray(joints, dtype=np.float64)
    if joints.shape[-2] != NUM_JOINTS or joints.shape[-1] not in (2, 3):
        raise ValueError(f"joints must be (..., {NUM_JOINTS}, 2|3), got shape {joints.shape}")
    if joints.shape[-1] == 2:
        joints = np.concatenate([joints, np.zeros(joints.shape[:-1] + (1,))], axis=-1)
    chains = joints[..., np.array(FINGER_CHAINS), :]  # (..., 5, 5, 3)
    bones = np.diff(chains, axis=-2)  # (..., 5, 4, 3)
    inbound, outbound = bones[..., :-1, :], bones[..., 1:, :]
    # atan2(|a x b|, a . b) stays accurate near 0 and 180 degrees, where arccos of the cosine does not.
    sin_part = np.linalg.norm(np.cross(inbound, outbound), axis=-1)
    return np.degrees(np.arctan2(sin_part, np.sum(inbound * outbound, axis=-1)))


class KeypointFlexionScorer:
    """Flexion agreement from a 21-joint predictor (e.g. a trained UniHOPE checkpoint wrapped as a callable)."""

    def __init__(
        self, predict_joints: Callable[[np.ndarray], np.ndarray], visible_weight: float = 0.5
    ) -> None:
        """Args:
        predict_joints: images (N, S, S, 3) uint8 RGB -> joints (N, 21, 2) crop px or (N, 21, 3) in any metric
            frame, DexYCB order. 2-D predictions are compared with the frame's crop joints, 3-D with its 3-D joints.
        visible_weight: share of visible consistency in the score, in [0, 1].
        """
        if not 0.0 <= visible_weight <= 1.0:
            raise ValueError(f"deocclusion.visible_weight must be in [0, 1], got {visible_weight}")
        self.predict_joints = predict_joints
        self.visible_weight = visible_weight

    def flexion_agreement(self, frame: AnnotatedFrame, images_rgb: np.ndarray) -> np.ndarray:
        """exp(-mean angle error / FLEXION_ANGLE_SCALE_DEG), fingers weighted by how hidden they are; (N,)."""
        predicted = np.asarray(self.predict_joints(images_rgb), dtype=np.float64)
        if predicted.shape[0] != len(images_rgb) or predicted.shape[1:2] != (NUM_JOINTS,):
            raise ValueError(
                f"the keypoint model must return (N, {NUM_JOINTS}, 2|3) joints for N={len(images_rgb)} images, "
                f"got shape {predicted.shape}"
            )
        truth = frame.joints_2d if predicted.shape[-1] == 2 else frame.frame.joints_3d
        error_deg = np.abs(flexion_angles_deg(predicted) - flexion_angles_deg(truth)[None])  # (N, 5, 3)
        weights = (1.0 - np.asarray(frame.finger_visibility, dtype=np.float64)) + FINGER_WEIGHT_FLOOR
        per_finger = error_deg.mean(axis=-1)  # (N, 5)
        mean_error_deg = (per_finger * weights).sum(axis=-1) / weights.sum()
        return np.exp(-mean_error_deg / FLEXION_ANGLE_SCALE_DEG).astype(np.float32)

    def score(self, frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> np.ndarray:
        """Total score of each candidate, (N,) float32 in [0, 1]."""
        images = _check_images(frame, mask_inpaint, images_rgb)
        consistency = visible_consistency(frame.image, images, visible_region(frame, mask_inpaint))
        flexion = self.flexion_agreement(frame, images)
        return (self.visible_weight * consistency + (1.0 - self.visible_weight) * flexion).astype(np.float32)


def _check_images(frame: AnnotatedFrame, mask_inpaint: np.ndarray, images_rgb: np.ndarray) -> np.ndarray:
    images = np.asarray(images_rgb)
    size = frame.image.shape
    if images.ndim != 4 or images.shape[1:] != size or images.dtype != np.uint8:
        raise ValueError(
            f"{frame.frame.sample_key}: candidates must be (N, {size[0]}, {size[1]}, 3) uint8, "
            f"got {images.shape} {images.dtype}"
        )
    if mask_inpaint.shape != size[:2]:
        raise ValueError(f"{frame.frame.sample_key}: inpaint mask must be {size[:2]}, got {mask_inpaint.shape}")
    return images
