"""Unit tests of the pure-torch UniHOPE network (tiny sizes, a stand-in hand layer)."""

from __future__ import annotations

import pytest
import torch

from tests.model_fixtures import FakeHandLayer, tiny_spec

from unihope.model import (
    GraspAwareFusion,
    HFLBackbone,
    LossTargets,
    LossWeights,
    ModelSpec,
    UniHOPEModel,
    enhancement_losses,
    roi_align,
    scaled_patch_layout,
    supervised_losses,
    target_focused_mask,
    teacher_pass,
    total_loss,
)
from unihope.model.enhancement import output_level_loss
from unihope.model.losses import gaussian_heatmaps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_roi_align_single_sample_matches_hand_computed_bilinear():
    features = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) ** 2  # nonlinear: f[y, x] = (4y + x)^2
    # One bin, one sample at the box centre. Stride 4: image x = (x_feat + 0.5) * 4 - 0.5,
    # so feature point (x=1.25, y=2.5) is image point (6.5, 11.5).
    box = torch.tensor([[4.5, 9.5, 8.5, 13.5]])
    value = roi_align(features, box, output_size=1, stride_px=4, sampling_ratio=1)
    f = lambda y, x: float((4 * y + x) ** 2)  # noqa: E731
    top = 0.75 * f(2, 1) + 0.25 * f(2, 2)
    bottom = 0.75 * f(3, 1) + 0.25 * f(3, 2)
    expected = 0.5 * top + 0.5 * bottom
    assert value.shape == (1, 1, 1, 1)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_roi_align_bins_average_their_samples_on_a_linear_map():
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    features = (xs + 10 * ys)[None, None]  # linear: a bin's sample mean = the value at the bin centre
    box = torch.tensor([[2.0, 0.0, 14.0, 12.0]])
    out = roi_align(features, box, output_size=2, stride_px=2, sampling_ratio=2)
    # Stride 2: feature x = (x + .5) / 2 - .5, so the box spans x [0.75, 6.75], y [-0.25, 5.75];
    # bin centres at 1/4 and 3/4 of the span, and every sample lies inside the 8 x 8 map.
    x_c = [0.75 + 6 * 0.25, 0.75 + 6 * 0.75]
    y_c = [-0.25 + 6 * 0.25, -0.25 + 6 * 0.75]
    for i, y in enumerate(y_c):
        for j, x in enumerate(x_c):
            assert float(out[0, 0, i, j]) == pytest.approx(x + 10 * y, rel=1e-6)
    features.requires_grad_(True)
    roi_align(features, box, 2, 2).sum().backward()
    assert features.grad.abs().sum() > 0


def test_backbone_shares_stage4_and_splits_stages_2_3():
    torch.manual_seed(0)
    backbone = HFLBackbone(depth=18, width_multiplier=0.125, norm="group")
    images = torch.rand(2, 3, 64, 64)
    feats = backbone(images)
    assert feats.c1.shape == (2, 8, 16, 16)
    assert [f.shape[-1] for f in feats.hand] == [8, 4, 2] == [f.shape[-1] for f in feats.obj]
    assert not torch.allclose(feats.hand[0], feats.obj[0])  # unshared stage 2
    backbone.obj_layer2.load_state_dict(backbone.hand_layer2.state_dict())
    backbone.obj_layer3.load_state_dict(backbone.hand_layer3.state_dict())
    feats = backbone(images)
    assert torch.equal(feats.hand[2], feats.obj[2])  # same stage-3 input -> same shared stage 4


def test_backbone_loads_resnet_weights_into_both_streams(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = HFLBackbone(depth=18, width_multiplier=0.125, norm="batch")
    resnet_keys = {}
    for key, value in source.state_dict().items():
        if key.startswith("obj_"):
            continue
        resnet_keys[key.removeprefix("hand_")] = value.clone()
    resnet_keys["fc.weight"] = torch.zeros(10, 64)
    save_file(resnet_keys, str(tmp_path / "resnet.safetensors"))
    target = HFLBackbone(depth=18, width_multiplier=0.125, norm="batch")
    unused = target.load_resnet_weights(tmp_path / "resnet.safetensors")
    assert unused == ["fc.weight"]
    for key, value in target.state_dict().items():
        source_key = key.replace("obj_", "hand_")
        assert torch.equal(value, source.state_dict()[source_key]), key
    with pytest.raises(ValueError, match="width_multiplier=1"):
        HFLBackbone(depth=18, width_multiplier=0.25, norm="batch").load_resnet_weights(tmp_path / "resnet.safetensors")


def test_fusion_reduces_to_hand_only_path_when_s_is_zero():
    torch.manual_seed(0)
    fusion = GraspAwareFusion(channels=16, roi_size=4, num_heads=4, mode="soft")
    f_h, f_a, f_b = torch.randn(3, 2, 16, 4, 4).unbind(0)
    zero = torch.zeros(2)
    out_a, gate = fusion(f_h, f_a, zero)
    out_b, _ = fusion(f_h, f_b, zero)
    out_hand_only, _ = fusion(f_h, f_h, torch.ones(2))  # cat(F_h, F_h): the hand-only path
    assert torch.equal(gate, zero)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_a, out_hand_only, rtol=0, atol=1e-6)
    assert not torch.allclose(fusion(f_h, f_a, torch.ones(2))[0], out_a)  # s = 1 uses the object features
    half = fusion(f_h, f_a, torch.full((2,), 0.5))[0]
    assert not torch.allclose(half, out_a)
    fusion.mode = "hard"
    torch.testing.assert_close(fusion(f_h, f_a, torch.full((2,), 0.3))[0], out_a, rtol=0, atol=1e-6)
    fusion.mode = "ungated"
    assert torch.equal(fusion(f_h, f_a, None)[1], torch.ones(2))


def _batch(size=64, batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen)
    hand_boxes = torch.tensor([[8.0, 10.0, 40.0, 44.0]]).repeat(batch, 1)
    object_boxes = torch.tensor([[24.0, 20.0, 60.0, 56.0]]).repeat(batch, 1)
    targets = LossTargets(
        joints_rel_m=torch.randn(batch, 21, 3, generator=gen) * 0.03,
        verts_rel_m=torch.randn(batch, 778, 3, generator=gen) * 0.03,
        mano_pose=torch.randn(batch, 48, generator=gen) * 0.2,
        mano_betas=torch.randn(batch, 10, generator=gen) * 0.5,
        joints_2d_px=torch.rand(batch, 21, 2, generator=gen) * 30 + 10,
        hand_boxes_xyxy_px=hand_boxes,
        object_keypoints_2d_px=torch.rand(batch, 21, 2, generator=gen) * 30 + 25,
        object_boxes_xyxy_px=object_boxes,
        grasp=torch.tensor([1, 0, 1][:batch]),
    )
    return images, targets


def test_forward_shapes_and_gradients_reach_every_branch():
    torch.manual_seed(0)
    model = UniHOPEModel(tiny_spec(), FakeHandLayer())
    images, targets = _batch()
    out = model(images, targets.hand_boxes_xyxy_px, targets.object_boxes_xyxy_px)
    assert out.grasp_logits.shape == (3, 2)
    assert out.joints_rel_m.shape == (3, 21, 3) and out.verts_rel_m.shape == (3, 778, 3)
    assert torch.allclose(out.joints_rel_m[:, 0], torch.zeros(3, 3))  # wrist-relative
    assert out.heatmaps.shape == (3, 21, 8, 8)
    assert out.object_keypoints_2d_px.shape == (3, 21, 2) and out.object_votes_box.shape == (3, 21, 8, 8, 2)
    assert out.mano_mean.shape == out.mano_logvar.shape == (3, 58)
    assert out.layer2_hand.shape == (3, 16, 8, 8) and out.hand_tokens.shape == (3, 64, 16)
    torch.testing.assert_close(out.fusion_gate, out.grasp_prob)

    weights = LossWeights()
    terms = supervised_losses(out, targets, weights)
    pairs = torch.tensor([0, 2])
    teacher = teacher_pass(model, images[pairs] * 0.5, targets.hand_boxes_xyxy_px[pairs], targets.object_boxes_xyxy_px[pairs])
    assert not teacher.mano_mean.requires_grad
    masks = torch.zeros(2, 64, 64)
    masks[:, 10:40, 8:40] = 1
    terms.update(enhancement_losses(out, teacher, pairs, masks, masks * 0.5, weights, mapper=model.enhancement_mapper))
    assert set(terms) == {"joints3d", "verts3d", "mano_pose", "mano_shape", "mano_variance", "joints2d",
                          "object_keypoints", "object_confidence", "grasp", "enhance_image", "enhance_token",
                          "enhance_output"}  # fmt: skip
    for name, value in terms.items():
        assert torch.isfinite(value) and float(value.detach()) >= 0, name
    total_loss(terms).backward()
    for branch in ("backbone.layer1", "backbone.hand_layer2", "backbone.obj_layer2", "backbone.hand_layer3",
                   "backbone.obj_layer3", "backbone.layer4", "hand_fpn", "obj_fpn", "switcher", "fusion",
                   "hand_to_object", "hand_decoder", "object_decoder", "enhancement_mapper"):  # fmt: skip
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(branch + ".")]
        assert grads and all(g is not None for g in grads), branch
        assert sum(float(g.abs().sum()) for g in grads) > 0, branch


@pytest.mark.parametrize("form", ["upstream", "paper"])
def test_each_enhancement_level_sends_gradient_to_the_student_only(form):
    torch.manual_seed(0)
    model = UniHOPEModel(tiny_spec(), FakeHandLayer())
    images, targets = _batch(batch=2)
    out = model(images, targets.hand_boxes_xyxy_px, targets.object_boxes_xyxy_px)
    teacher = teacher_pass(model, images.flip(-1), targets.hand_boxes_xyxy_px, targets.object_boxes_xyxy_px)
    masks = torch.ones(2, 64, 64)
    for name in ("enhance_image", "enhance_token", "enhance_output"):
        model.zero_grad()
        weights = LossWeights(**{k: 0.0 for k in ("enhance_image", "enhance_token", "enhance_output")} | {name: 1.0},
                              enhance_form=form)
        terms = enhancement_losses(out, teacher, torch.arange(2), masks, masks, weights, mapper=model.enhancement_mapper)
        assert float(terms[name].detach()) > 0, name
        terms[name].backward(retain_graph=True)
        grad = sum(float(p.grad.abs().sum()) for p in model.backbone.hand_layer2.parameters() if p.grad is not None)
        assert grad > 0, name


def test_teacher_pass_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = UniHOPEModel(tiny_spec(norm="batch"), FakeHandLayer()).train()
    images, targets = _batch(batch=2)
    before = model.backbone.bn1.running_mean.clone()
    teacher_pass(model, images, targets.hand_boxes_xyxy_px, targets.object_boxes_xyxy_px)
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert model.backbone.bn1.momentum == pytest.approx(0.1)
    model(images, targets.hand_boxes_xyxy_px, targets.object_boxes_xyxy_px)
    assert not torch.equal(model.backbone.bn1.running_mean, before)


def test_output_level_kl_and_l1_on_known_gaussians():
    mean_s, mean_t = torch.zeros(1, 4), torch.ones(1, 4)
    zeros = torch.zeros(1, 4)
    assert float(output_level_loss(mean_s, zeros, mean_s, zeros)) == pytest.approx(0.0)
    assert float(output_level_loss(mean_s, zeros, mean_t, zeros)) == pytest.approx(0.5)  # KL(N(1,1)||N(0,1))
    # KL(N(0, 4) || N(0, 1)) = 0.5 (4 - 1 - ln 4)
    logvar_t = torch.full((1, 4), float(torch.log(torch.tensor(4.0))))
    expected = 0.5 * (4 - 1 - float(torch.log(torch.tensor(4.0))))
    assert float(output_level_loss(mean_s, zeros, mean_s, logvar_t)) == pytest.approx(expected, rel=1e-5)
    assert float(output_level_loss(mean_s, zeros, mean_t, zeros, mode="l1")) == pytest.approx(1.0)


def test_switcher_ablation_and_spec_validation():
    model = UniHOPEModel(tiny_spec(use_switcher=False, fusion="ungated"), FakeHandLayer())
    images, targets = _batch(batch=2)
    out = model(images, targets.hand_boxes_xyxy_px, targets.object_boxes_xyxy_px)
    assert out.grasp_logits is None and torch.equal(out.fusion_gate, torch.ones(2))
    assert "grasp" not in supervised_losses(out, targets, LossWeights())
    with pytest.raises(ValueError, match="needs the switcher"):
        ModelSpec(use_switcher=False, fusion="soft")
    with pytest.raises(ValueError, match="depth"):
        ModelSpec(depth=101)


def test_target_focused_masking_counts_placement_and_determinism():
    assert scaled_patch_layout(224) == (28, 12)
    assert scaled_patch_layout(64) == (8, 12)  # same 8 x 8 grid -> same 12 / 64 masked fraction
    assert scaled_patch_layout(128) == (16, 12)
    image = torch.full((3, 64, 64), 0.5)
    box = torch.tensor([40.0, 40.0, 63.0, 63.0])  # 3 x 3 cells overlap it
    masked, mask = target_focused_mask(image, box, torch.Generator().manual_seed(3), 8, 12, prob_in_object=1.0)
    assert int(mask.sum()) == 12 * 8 * 8
    assert bool(mask[40:, 40:].all())  # the 9 object cells are taken first
    again, mask_again = target_focused_mask(image, box, torch.Generator().manual_seed(3), 8, 12, prob_in_object=1.0)
    assert torch.equal(masked, again) and torch.equal(mask, mask_again)
    assert torch.equal(masked[:, ~mask], image[:, ~mask])
    _, outside = target_focused_mask(image, box, torch.Generator().manual_seed(3), 8, 12, prob_in_object=0.0)
    assert int(outside.sum()) == 12 * 64


def test_gaussian_heatmap_peaks_at_the_joint_bin():
    points = torch.tensor([[[2.5 / 8, 5.5 / 8]]])  # centre of bin (x=2, y=5) of an 8 x 8 grid
    heatmap = gaussian_heatmaps(points, 8)[0, 0]
    assert float(heatmap[5, 2]) == pytest.approx(1.0)
    assert int(heatmap.argmax()) == 5 * 8 + 2


# ---------------------------------------------------------------- one box convention for decoding and losses

EDGE_SHIFTS_PX = {  # where the 2D points sit in a 64 px crop: their x1.1 / x1.0 boxes cross these edges
    "left": (-20.0, 0.0), "top": (0.0, -20.0), "right": (30.0, 0.0), "bottom": (0.0, 30.0), "all": None,
}


def _points_crossing(edge: str, gen: torch.Generator) -> torch.Tensor:
    """(2, 21, 2) points in a 64 px crop whose box crosses `edge` ("all": a box larger than the crop)."""
    if EDGE_SHIFTS_PX[edge] is None:
        return torch.rand(2, 21, 2, generator=gen) * 80 - 8  # spans about [-8, 72] on both axes
    points = torch.rand(2, 21, 2, generator=gen) * 34 + 15  # about [15, 49]
    return points + torch.tensor(EDGE_SHIFTS_PX[edge])


@pytest.mark.parametrize("edge", sorted(EDGE_SHIFTS_PX))
def test_a_perfect_2d_target_decodes_back_when_boxes_cross_the_crop_edge(edge: str, monkeypatch):
    """The losses normalise 2D targets with the boxes the model decodes with, so a loss of 0 decodes exactly."""
    from unihope.model.heads import heatmap_argmax_box
    from unihope.model.roi_align import (
        HAND_ROI_BOX_SCALE, OBJECT_ROI_BOX_SCALE, box_to_roi_px, points_box_xyxy, roi_px_to_box,
    )  # fmt: skip

    # 1. Points and UniHOPE's RoI boxes, crossing the crop edge
    torch.manual_seed(0)
    model = UniHOPEModel(tiny_spec(), FakeHandLayer()).eval()
    gen = torch.Generator().manual_seed(1)
    joints, keypoints = _points_crossing(edge, gen), _points_crossing(edge, gen)
    hand_boxes, object_boxes = points_box_xyxy(joints, HAND_ROI_BOX_SCALE), points_box_xyxy(keypoints, OBJECT_ROI_BOX_SCALE)
    crossing = torch.cat([hand_boxes[:, :2] < -0.5, hand_boxes[:, 2:] > 63.5], dim=1)
    assert crossing[:, ["left", "top", "right", "bottom"].index(edge)].all() if edge != "all" else crossing.all()
    images = torch.rand(2, 3, 64, 64, generator=gen)
    _, base_targets = _batch(size=64, batch=2)
    targets = LossTargets(**{**base_targets.__dict__, "joints_2d_px": joints, "hand_boxes_xyxy_px": hand_boxes,
                             "object_keypoints_2d_px": keypoints, "object_boxes_xyxy_px": object_boxes,
                             "grasp": torch.tensor([1, 1])})  # fmt: skip
    with torch.no_grad():
        out = model(images, hand_boxes, object_boxes)

    # 2. Heads that output the perfect targets in the box units of the model's own boxes
    size = out.heatmaps.shape[-1]
    kp_box = roi_px_to_box(out.object_boxes_xyxy_px, keypoints)
    heatmaps = gaussian_heatmaps(roi_px_to_box(out.hand_boxes_xyxy_px, joints), size)
    mano_mean, mano_logvar, encoding = out.mano_mean, out.mano_logvar, out.hand_encoding
    monkeypatch.setattr(model.hand_decoder, "forward", lambda features: (heatmaps, mano_mean, mano_logvar, encoding))
    monkeypatch.setattr(model.object_decoder, "forward", lambda features: (
        kp_box, kp_box[:, :, None, None, :].expand(-1, -1, size, size, -1), torch.zeros(2, 21, size, size)))
    with torch.no_grad():
        perfect = model(images, hand_boxes, object_boxes)

    # 3. The losses call it perfect, and it decodes back to the targets
    terms = supervised_losses(perfect, targets, LossWeights())
    assert float(terms["joints2d"]) == 0.0
    assert float(terms["object_keypoints"]) == 0.0
    torch.testing.assert_close(perfect.object_keypoints_2d_px, keypoints, rtol=0, atol=1e-4)
    torch.testing.assert_close(perfect.joints_2d_px, box_to_roi_px(perfect.hand_boxes_xyxy_px, heatmap_argmax_box(heatmaps)))
    # the heatmap soft-argmax itself is biased toward bin centres, by under half a bin (8 bins per box here)
    bin_px = (perfect.hand_boxes_xyxy_px[:, 2:] - perfect.hand_boxes_xyxy_px[:, :2]) / size
    assert float(((perfect.joints_2d_px - joints).abs() / bin_px[:, None]).max()) < 0.5


def test_roi_boxes_follow_upstream():
    from unihope.model.roi_align import points_box_xyxy

    points = torch.tensor([[[10.0, 20.0], [31.0, 25.0], [15.0, 41.0]]])  # box x [10, 31], y [20, 41]
    # centre (20.5, 30.5) truncated to (20, 30); half-sizes 21 * 1.1 / 2 = 11.55
    torch.testing.assert_close(points_box_xyxy(points, 1.1), torch.tensor([[8.45, 18.45, 31.55, 41.55]]))
    negative = points - 40.0  # centre (-19.5, -9.5) truncates toward 0: (-19, -9)
    torch.testing.assert_close(points_box_xyxy(negative, 1.0), torch.tensor([[-29.5, -19.5, -8.5, 1.5]]))
