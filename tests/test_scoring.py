"""Scorer tests on constructed crops whose right answer is known (the object-free rendering)."""

from __future__ import annotations

import numpy as np
import pytest

from unihope.storage.schema import HAND_PART_FINGER_FIRST
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
        # The colour-coverage term alone already orders them (the visible rim is the same in all three).
        coverage = scorer.colour_coverage(frame, mask, candidates)
        assert coverage[0] > 0.7 and coverage[0] > coverage[1] + 0.3 and coverage[0] > coverage[2]


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


# ---------------------------------------------------------------- pose-model scorer (UniHOPE's choice)

TINY_TRAIN_YAML = """
device: cpu
model: {depth: 18, width_multiplier: 0.25, norm: group, input_size_px: 64, fpn_channels: 32, roi_size: 8,
        num_heads: 4, mano_hidden: [64, 32], num_hand_res_blocks: 2, switcher_channels: 8, switcher_hidden: 16}
"""


class _PoseOracle:
    """Stands in for a well-trained model: the true pose on the object-free truth, a wrong finger otherwise."""

    def __init__(self, scene, wrong_finger: int) -> None:
        from unihope.deocclude.pose_scorer import PosePrediction

        frame = scene.frame
        self.truth_rgb = scene.truth_rgb
        joints = frame.frame.joints_3d.astype(np.float64)
        self.truth = PosePrediction(joints_rel_m=joints - joints[:1], joints_2d_px=frame.joints_2d.astype(np.float64))
        chain = slice(2 + 4 * wrong_finger, 5 + 4 * wrong_finger)
        bent_3d, bent_2d = joints.copy(), frame.joints_2d.astype(np.float64).copy()
        bent_3d[chain] = joints[1 + 4 * wrong_finger]  # distal joints collapsed onto the knuckle (erased finger)
        bent_2d[chain] = bent_2d[1 + 4 * wrong_finger]
        self.wrong = PosePrediction(joints_rel_m=bent_3d - bent_3d[:1], joints_2d_px=bent_2d)

    def predict(self, frame, images_rgb):
        from unihope.deocclude.pose_scorer import PosePrediction

        picks = [self.truth if np.array_equal(image, self.truth_rgb) else self.wrong for image in images_rgb]
        return PosePrediction(joints_rel_m=np.stack([p.joints_rel_m for p in picks]),
                              joints_2d_px=np.stack([p.joints_2d_px for p in picks]))


@pytest.mark.parametrize("flexion_space", ["3d", "2d"])
def test_pose_scorer_prefers_true_hidden_fingers_and_records_errors(scenes, flexion_space):
    from unihope.deocclude.pose_scorer import PoseModelScorer

    scene = scenes[0]
    frame = scene.frame
    finger = int(np.argmin(frame.finger_visibility))  # the most hidden finger
    scorer = PoseModelScorer(_PoseOracle(scene, finger), visible_weight=0.5, flexion_space=flexion_space)
    mask = inpaint_mask(frame, dilation_px=3)
    candidates = np.stack([scene.truth_rgb, _erase_most_hidden_finger(scene), frame.image])
    errors = scorer.pose_errors(frame, mask, candidates)
    assert errors.occluded_flexion_deg[0] == pytest.approx(0.0, abs=1e-6)  # the true pose: no flexion error
    assert errors.occluded_flexion_deg[1] > 5.0 and errors.total[0] < errors.total[1]
    np.testing.assert_allclose(scorer.score(frame, mask, candidates), -errors.total, rtol=1e-6)
    # The score keep rule on this scorer is upstream's gen_error + margin < ori_error, both recorded.
    from unihope.config import DeocclusionConfig
    from unihope.deocclude import RenderDeoccluder

    result = RenderDeoccluder(DeocclusionConfig(backend="render", keep_rule="score"), scorer=scorer).run([frame])[0]
    assert np.isfinite(result.original_pose_error) and np.isfinite(result.deoccluded_pose_error)
    assert result.keep == (result.deoccluded_pose_error + 0.0 < result.original_pose_error)
    assert result.deocclusion_score == pytest.approx(-result.deoccluded_pose_error, rel=1e-6)


def test_pose_scorer_loads_a_training_checkpoint(scenes, tmp_path):
    # A checkpoint written by the training code (a tiny model trained two steps) is named in the config and
    # loaded with its own config from the metadata; its predictions equal the in-memory model's.
    import torch

    from unihope.config import DeocclusionConfig
    from unihope.deocclude.base import default_scorer
    from unihope.train_config import TrainConfig
    from unihope.train.checkpoints import TrainState, resume_hash, save_checkpoint
    from unihope.train.spec import build_hand_layer, build_model

    train_cfg = TrainConfig.from_yaml(TINY_TRAIN_YAML)
    model = build_model(train_cfg, build_hand_layer())
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.from_numpy(np.stack([s.truth_rgb for s in scenes[:2]])).permute(0, 3, 1, 2).float() / 255.0
    images = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
    boxes = torch.tensor([[8.0, 8.0, 56.0, 56.0]] * 2)
    for _ in range(2):
        loss = model(images, boxes, boxes).joints_2d_px.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.safetensors", model, optimizer,
                           TrainState(step=2, epoch=0, config_hash=resume_hash(train_cfg)), None, train_cfg)
    cfg = DeocclusionConfig(scorer="pose_model", pose_model_checkpoint=path)
    scorer = default_scorer(cfg)
    frame = scenes[0].frame
    loaded = scorer.model.predict(frame, frame.image[None])
    from unihope.deocclude.pose_scorer import CheckpointPoseModel

    in_memory = CheckpointPoseModel(model, 64, torch.device("cpu")).predict(frame, frame.image[None])
    np.testing.assert_allclose(loaded.joints_2d_px, in_memory.joints_2d_px, atol=1e-4)
    np.testing.assert_allclose(loaded.joints_rel_m, in_memory.joints_rel_m, atol=1e-6)
    errors = scorer.pose_errors(frame, inpaint_mask(frame, dilation_px=3), frame.image[None])
    assert errors.total.shape == (1,) and np.isfinite(errors.total).all()
    with pytest.raises(ValueError, match="pose_model_checkpoint"):
        default_scorer(DeocclusionConfig(scorer="pose_model", pose_model_checkpoint=tmp_path / "missing.safetensors"))
