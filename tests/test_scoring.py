"""Scorer tests on constructed crops whose right answer is known (the object-free rendering)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.schema import HAND_PART_FINGER_FIRST
from unihope.deocclude.hints import inpaint_mask, occluded_hand_mask
from unihope.deocclude.quality import psnr_in_mask, ssim_in_mask
from unihope.deocclude.scoring import (
    ColourFlexionScorer,
    KeypointFlexionScorer,
    fit_hand_colour,
    flexion_angles_deg,
    visible_consistency,
)

SIZE_PX = 96
SEEDS = (0, 1, 2, 3, 4, 5)



@pytest.fixture(scope="module")
def scenes(capsule_scene_builder):
    return [
        capsule_scene_builder.build(f"20200101-subject-01/20200101_000000/000000/{seed:06d}", seed=seed)
        for seed in SEEDS
    ]


def _erase_most_hidden_finger(scene) -> np.ndarray:
    """The truth with the most-occluded finger's hidden pixels replaced by the background behind it."""
    frame = scene.frame
    occluded = occluded_hand_mask(frame)
    counts = [np.count_nonzero(occluded & (frame.hand_parts == HAND_PART_FINGER_FIRST + f)) for f in range(5)]
    finger = int(np.argmax(counts))
    erase = occluded & (frame.hand_parts == HAND_PART_FINGER_FIRST + finger)
    assert erase.sum() >= 10, "constructed scene must hide part of a finger"
    # The background the scene was composited on: where neither hand nor box covers it, the input shows it.
    background_rgb = np.median(frame.image[~frame.mask_hand & ~frame.mask_object], axis=0).astype(np.uint8)
    erased = scene.truth_rgb.copy()
    erased[erase] = background_rgb
    return erased


def test_constructed_scenes_are_occluded(scenes):
    for scene in scenes:
        assert 0.3 < scene.frame.visibility < 0.95
        assert occluded_hand_mask(scene.frame).sum() > 50


def test_colour_model_separates_hand_from_object(scenes):
    for scene in scenes:
        frame = scene.frame
        mask = inpaint_mask(frame, dilation_px=3)
        classifier = fit_hand_colour(frame, mask)
        assert classifier is not None and classifier.hand.num_pixels >= 20 and classifier.background is not None
        occluded = occluded_hand_mask(frame)
        # The hidden hand in the truth is hand-coloured; the box covering it in the input is not, nor is the
        # background the truth shows where the box hid no hand.
        assert classifier.hand_probability(scene.truth_rgb)[occluded].mean() > 0.8
        assert classifier.hand_probability(frame.image)[occluded].mean() < 0.2
        background = mask & ~frame.mask_hand
        assert classifier.hand_probability(scene.truth_rgb)[background].mean() < 0.2


def test_truth_outscores_object_and_erased_finger(scenes):
    scorer = ColourFlexionScorer(visible_weight=0.5, edge_weight=0.3)
    for scene in scenes:
        frame = scene.frame
        mask = inpaint_mask(frame, dilation_px=3)
        candidates = np.stack([scene.truth_rgb, frame.image, _erase_most_hidden_finger(scene)])
        truth_score, with_object, erased_finger = scorer.score(frame, mask, candidates)
        assert truth_score > with_object + 0.1, (frame.frame.sample_key, truth_score, with_object)
        assert truth_score > erased_finger + 0.02, (frame.frame.sample_key, truth_score, erased_finger)
        # The flexion term alone already orders them (the visible rim is the same in all three).
        flexion = scorer.flexion_agreement(frame, mask, candidates)
        assert flexion[0] > 0.7 and flexion[0] > flexion[1] + 0.3 and flexion[0] > flexion[2]


def test_edge_term_alone_prefers_truth(scenes):
    scorer = ColourFlexionScorer(visible_weight=0.0, edge_weight=1.0)
    for scene in scenes:
        frame = scene.frame
        mask = inpaint_mask(frame, dilation_px=3)
        truth_score, with_object = scorer.score(frame, mask, np.stack([scene.truth_rgb, frame.image]))
        assert truth_score > with_object


def test_visible_consistency_values():
    original = np.full((8, 8, 3), 100, np.uint8)
    region = np.zeros((8, 8), bool)
    region[2:4, 2:4] = True
    shifted = original.copy()
    shifted[region] = 132  # mean abs difference 32 inside the region
    scores = visible_consistency(original, np.stack([original, shifted]), region)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(np.exp(-1.0), rel=1e-5)
    assert visible_consistency(original, shifted[None], np.zeros((8, 8), bool))[0] == 1.0


def test_flexion_angles_of_known_chain():
    joints = np.zeros((21, 3))
    for finger in range(5):
        base = 1 + 4 * finger
        joints[base] = [finger, 1.0, 0.0]
        joints[base + 1] = [finger, 2.0, 0.0]
        joints[base + 2] = [finger, 2.0, 1.0]  # 90 degree bend at PIP
        joints[base + 3] = [finger, 2.0, 2.0]  # straight at DIP
    angles = flexion_angles_deg(joints)
    assert angles.shape == (5, 3)
    np.testing.assert_allclose(angles[:, 1], 90.0, atol=1e-6)
    np.testing.assert_allclose(angles[:, 2], 0.0, atol=1e-6)
    # MCP angle of the middle finger (x = 2): wrist->MCP is (2, 1, 0), MCP->PIP is (0, 1, 0)
    assert angles[2, 0] == pytest.approx(np.degrees(np.arccos(1 / np.sqrt(5))))


def test_keypoint_scorer_prefers_image_whose_joints_match(scenes):
    scene = scenes[0]
    frame = scene.frame
    truth_joints = frame.frame.joints_3d.astype(np.float64)
    finger = int(np.argmin(frame.finger_visibility))  # the most hidden finger
    bent = truth_joints.copy()
    bent[2 + 4 * finger : 5 + 4 * finger] += [0.0, 0.0, -0.03]  # its distal joints pulled toward the camera

    def predict(images: np.ndarray) -> np.ndarray:
        # A stand-in 21-joint model: the true pose for the object-free crop, a wrong finger otherwise.
        return np.stack([truth_joints if np.array_equal(image, scene.truth_rgb) else bent for image in images])

    scorer = KeypointFlexionScorer(predict, visible_weight=0.5)
    mask = inpaint_mask(frame, dilation_px=3)
    scores = scorer.score(frame, mask, np.stack([scene.truth_rgb, frame.image]))
    assert scores[0] > scores[1]
    flexion = scorer.flexion_agreement(frame, np.stack([scene.truth_rgb]))
    assert flexion[0] == pytest.approx(1.0, abs=1e-6)  # identical joints: zero angle error
    with pytest.raises(ValueError, match="21"):
        KeypointFlexionScorer(lambda images: np.zeros((len(images), 20, 2))).score(frame, mask, frame.image[None])


def test_quality_metrics():
    truth = np.full((16, 16, 3), 100, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    noisy = truth.copy()
    noisy[mask] = 110  # MSE 100 inside the mask
    assert psnr_in_mask(noisy, truth, mask) == pytest.approx(10 * np.log10(255**2 / 100))
    assert psnr_in_mask(truth, truth, mask) == float("inf")
    assert ssim_in_mask(truth, truth, mask) == pytest.approx(1.0)
    assert ssim_in_mask(noisy, truth, mask) < 1.0
