"""How the de-occluded pairs train the model: the wiring that bench/ablate_pairs.py measures at scale.

A tiny in-memory set whose grasping samples hide part of the hand under an object square, and whose
de-occluded twin shows it: the de-occluded image carries information the occluded one lacks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.model_fixtures import FakeHandLayer, InMemoryPairedDataset
from tests.test_training import tiny_config
from unihope.model import LossWeights, UniHOPEModel, enhancement_losses, select_rows, supervised_losses
from unihope.model.roi_align import roi_align
from unihope.storage.loader import pair_aware_order
from unihope.train.batch import loss_terms, prepare_batch, with_gt_vertices
from unihope.train.spec import build_model, model_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_SAMPLES = 8
SIZE_PX = 32


@pytest.fixture(scope="module")
def batch():
    """All grasping (so every sample has a pair that enhancement distils), right hands."""
    dataset = InMemoryPairedDataset(24, SIZE_PX, seed=5, left_fraction=0.0, hand_layer=FakeHandLayer())
    grasping = [dataset[i] for i in range(len(dataset)) if dataset[i]["has_pair"]][:NUM_SAMPLES]
    assert len(grasping) == NUM_SAMPLES and all(s["visibility"] <= 0.9 for s in grasping)
    return torch.utils.data.default_collate(grasping)


def _prepare(model, batch, cfg):
    return with_gt_vertices(model, prepare_batch(batch, cfg, torch.device("cpu")))


def _feature_gap(model, prepared) -> float:
    """Mean |layer-2 hand features of the occluded image - those of its de-occluded twin|."""
    t = prepared.targets
    with torch.no_grad():
        occluded = model(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px).layer2_hand
        clean = model(prepared.images_deoccluded, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px).layer2_hand
    return float((occluded - clean).abs().mean())


def _train_steps(cfg, batch, steps: int) -> tuple[float, float]:
    model = build_model(cfg, FakeHandLayer())
    prepared = _prepare(model, batch, cfg)
    before = _feature_gap(model, prepared)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate)
    model.train()
    for _ in range(steps):
        terms = loss_terms(model, prepared, cfg)
        optimizer.zero_grad()
        torch.stack(list(terms.values())).sum().backward()
        optimizer.step()
    return before, _feature_gap(model.eval(), prepared)


def test_pairs_pull_the_occluded_features_towards_the_deoccluded_ones_and_no_pairs_do_not(batch):
    # enhancement only (no pair supervision, upstream weights) so the runs differ in nothing but the
    # distillation; measured: the gap 0.873 -> 0.823 with pairs, -> 0.910 without (12 steps)
    steps = 12
    common = dict(model=dict(input_size_px=SIZE_PX), optim=dict(learning_rate=1e-3))
    on = tiny_config(**common, enhancement=dict(supervise_deoccluded=False))
    off = tiny_config(**common, ablation=dict(use_enhancement=False))
    before_on, after_on = _train_steps(on, batch, steps)
    before_off, after_off = _train_steps(off, batch, steps)
    assert before_on == pytest.approx(before_off)  # same seed, same model
    assert after_on < 0.97 * before_on  # the pairs close the gap ...
    assert after_off > 0.99 * before_off  # ... training without them does not ...
    assert after_on < 0.95 * after_off  # ... and the two end clearly apart


def test_hand_terms_average_the_two_images_of_a_pair(batch):
    """With the de-occluded twin equal to the occluded image, supervising both changes no hand term."""
    cfg = tiny_config(model=dict(input_size_px=SIZE_PX), enhancement=dict(pair_supervision="average"))
    model = build_model(cfg, FakeHandLayer()).eval()  # GroupNorm: no batch coupling between the two halves
    same = dict(batch, image_deoccluded=batch["image"].clone())
    prepared = _prepare(model, same, cfg)
    with_pairs = loss_terms(model, prepared, cfg)
    without = loss_terms(model, prepared, tiny_config(model=dict(input_size_px=SIZE_PX),
                                                      ablation=dict(use_enhancement=False)))
    for name in ("joints3d", "verts3d", "mano_pose", "mano_shape", "joints2d", "object_keypoints", "grasp"):
        torch.testing.assert_close(with_pairs[name], without[name], rtol=1e-5, atol=1e-6)
    # "add": the occluded image keeps its full weight and the twin adds half of it again
    added = loss_terms(model, prepared, tiny_config(model=dict(input_size_px=SIZE_PX),
                                                    enhancement=dict(pair_supervision="add")))
    torch.testing.assert_close(added["joints3d"], 1.5 * without["joints3d"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(added["grasp"], without["grasp"], rtol=1e-5, atol=1e-6)
    # and with a different twin the hand terms move, the object and grasp terms (occluded image only) do not
    moved = loss_terms(model, _prepare(model, batch, cfg), cfg)
    assert abs(float(moved["joints2d"].detach()) - float(without["joints2d"].detach())) > 1e-6
    base = loss_terms(model, _prepare(model, batch, cfg), tiny_config(model=dict(input_size_px=SIZE_PX),
                                                                      ablation=dict(use_enhancement=False)))
    torch.testing.assert_close(moved["object_keypoints"], base["object_keypoints"])


def test_enhancement_teacher_side_gets_no_gradient(batch):
    cfg = tiny_config(model=dict(input_size_px=SIZE_PX))
    model = build_model(cfg, FakeHandLayer()).train()
    prepared = _prepare(model, batch, cfg)
    t = prepared.targets
    occluded = prepared.images.clone().requires_grad_(True)
    clean = prepared.images_deoccluded.clone().requires_grad_(True)
    out_all = model(torch.cat([occluded, clean]), t.hand_boxes_xyxy_px.repeat(2, 1), t.object_boxes_xyxy_px.repeat(2, 1))
    index = torch.arange(NUM_SAMPLES)
    student, teacher = select_rows(out_all, index), select_rows(out_all, NUM_SAMPLES + index)
    for form in ("upstream", "paper"):
        terms = enhancement_losses(student, teacher, index, prepared.mask_hand, prepared.mask_object,
                                   LossWeights(enhance_form=form), mapper=model.enhancement_mapper)
        grad_occluded, grad_clean = torch.autograd.grad(sum(terms.values()), (occluded, clean), retain_graph=True)
        assert float(grad_occluded.abs().sum()) > 0, form
        assert float(grad_clean.abs().sum()) == 0.0, form


@pytest.mark.parametrize("detach", [True, False])
def test_cross_stream_detach_keeps_each_streams_loss_in_its_own_stages(batch, detach):
    cfg = tiny_config(model=dict(input_size_px=SIZE_PX, detach_cross_stream=detach))
    model = UniHOPEModel(model_spec(cfg), FakeHandLayer()).train()
    prepared = _prepare(model, batch, cfg)
    t = prepared.targets
    out = model(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px)
    terms = supervised_losses(out, t, LossWeights())
    hand = sum(terms[name] for name in ("joints3d", "verts3d", "mano_pose", "joints2d"))
    obj = terms["object_keypoints"] + terms["object_confidence"]

    def grad_norm(loss, module) -> float:
        grads = torch.autograd.grad(loss, list(module.parameters()), retain_graph=True, allow_unused=True)
        return sum(float(g.abs().sum()) for g in grads if g is not None)

    hand_into_object_stream = grad_norm(hand, model.backbone.obj_layer2)
    object_into_hand_stream = grad_norm(obj, model.backbone.hand_layer2)
    assert grad_norm(hand, model.backbone.hand_layer2) > 0 and grad_norm(obj, model.backbone.obj_layer2) > 0
    if detach:
        assert hand_into_object_stream == 0.0 and object_into_hand_stream == 0.0
    else:
        assert hand_into_object_stream > 0 and object_into_hand_stream > 0


def test_object_votes_are_scored_on_object_cells_only(batch):
    cfg = tiny_config(model=dict(input_size_px=SIZE_PX))
    model = build_model(cfg, FakeHandLayer()).eval()
    prepared = _prepare(model, batch, cfg)
    t = prepared.targets
    with torch.no_grad():
        out = model(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px)
    masked = supervised_losses(out, t, LossWeights())["object_keypoints"]
    # votes far off on every object-RoI cell that the visible object mask does not cover
    size = out.object_votes_box.shape[2]
    cells = roi_align(t.mask_object[:, None], out.object_boxes_xyxy_px, size, 1.0) > 0.5  # (B, 1, R, R)
    assert bool(cells.any()) and not bool(cells.all())
    wild = out.object_votes_box + 5.0 * (~cells)[..., None].float()
    wild_out = dataclasses.replace(out, object_votes_box=wild)
    torch.testing.assert_close(supervised_losses(wild_out, t, LossWeights())["object_keypoints"], masked)
    unmasked = supervised_losses(wild_out, t, LossWeights(object_vote_mask=False))["object_keypoints"]
    assert float(unmasked) > float(masked) + 1.0


def test_pair_aware_order_puts_the_asked_share_of_pairs_in_every_batch():
    flags = np.zeros(100, dtype=bool)
    flags[:10] = True  # 10 % of the data has a pair
    order = pair_aware_order(flags, 0.5, 16, np.random.default_rng(0))
    assert len(order) == 100
    batches = [order[i : i + 16] for i in range(0, 96, 16)]
    assert all(flags[b].sum() == 8 for b in batches)
    assert set(order[~flags[order]].tolist()) <= set(range(10, 100))
    # the unpaired pool is walked without repeats until used up (90 samples, 48 drawn)
    unpaired = order[~flags[order]]
    assert len(set(unpaired.tolist())) == len(unpaired)


def test_teacher_pass_form_without_pair_supervision_still_distils(batch):
    cfg = tiny_config(model=dict(input_size_px=SIZE_PX), enhancement=dict(supervise_deoccluded=False))
    model = build_model(cfg, FakeHandLayer()).train()
    terms = loss_terms(model, _prepare(model, batch, cfg), cfg)
    assert all(float(terms[name].detach()) > 0 for name in ("enhance_image", "enhance_token", "enhance_output"))


def test_ablation_statistics_pair_seeds_and_count_bins():
    """bench/ablate_pairs.py's table: paired differences per seed, a t interval over seeds, bin counts."""
    from bench.ablate_pairs import paired_interval, summarise

    mean, low, high = paired_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert mean == pytest.approx(3.0)
    assert (high - low) / 2 == pytest.approx(2.776 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5))
    visibility = np.array([0.1, 0.3, 0.6, 0.9, 0.95])
    grasp = np.array([1, 1, 0, 0, 1])
    keys = np.array([f"k{i}" for i in range(5)])

    def run(offset: float, seed: int) -> dict:
        errors = np.array([10.0, 20.0, 30.0, 40.0, 50.0]) + offset + seed  # every seed shifts both arms alike
        return {"mpjpe_mm": errors, "pa_mpjpe_mm": errors / 10, "visibility": visibility, "grasp": grasp,
                "sample_keys": keys}

    results = {"none": {s: run(0.0, s) for s in range(3)}, "oracle": {s: run(-2.0, s) for s in range(3)}}
    table = summarise(results, [0, 1, 2])
    assert table["counts"] == {"all": 5, "[0, 0.25]": 1, "(0.25, 0.5]": 1, "(0.5, 0.75]": 1, "(0.75, 1]": 2,
                               "hand-only": 2, "hand-object": 3}
    row = table["arms"]["oracle"]["mpjpe_mm|(0.75, 1]"]
    assert row["diff"] == pytest.approx(-2.0) and row["ci_low"] == pytest.approx(-2.0)  # paired: seed noise cancels
    assert table["arms"]["none"]["mpjpe_mm|all"]["mean"] == pytest.approx(31.0)
