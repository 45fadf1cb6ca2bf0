"""De-occlusion: masks and hints, beta policies, the render/inpaint backends, and a tiny ControlNet pipeline
saved to folders and loaded back through the config, as a user would."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unihope.storage.schema import DeocclusionResult
from tests.tiny_diffusion import save_tiny_models
from unihope.config import ControlNetConfig, DeocclusionConfig
from unihope.deocclude import DEOCCLUDERS, build_deoccluder
from unihope.seeding import seed_from
from unihope.deocclude.base import Deoccluder
from unihope.deocclude.beta import candidate_betas, occlusion_prior_beta
from unihope.deocclude.hints import depth_hint, inpaint_mask, occluded_hand_mask, segmentation_hint
from unihope.deocclude.quality import psnr_in_mask

SIZE_PX = 96
WORKING_SIZE_PX = 64
NUM_STEPS = 2



@pytest.fixture(scope="module")
def scenes(capsule_scene_builder):
    return [
        capsule_scene_builder.build(f"20200101-subject-01/20200101_000000/000000/{seed:06d}", seed=seed)
        for seed in range(4)
    ]


@pytest.fixture(scope="module")
def unoccluded(capsule_scene_builder):
    # The box well outside the crop: nothing hidden.
    return capsule_scene_builder.build(
        "20200101-subject-01/20200101_000000/000000/000099", seed=99, object_centre_xy_m=(0.5, 0.5)
    )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny_sd"), seed=0, with_segmentation=True)


def controlnet_cfg(
    tiny_models, segmentation: bool = False, guidance_scale: float = 1.0, **overrides
) -> DeocclusionConfig:
    """Tiny-model config; guidance 1.0 (no classifier-free guidance) halves the cost where it is not tested."""
    net = ControlNetConfig(
        base_model=str(tiny_models["base_model"]),
        controlnet_depth=str(tiny_models["controlnet_depth"]),
        controlnet_segmentation=str(tiny_models["controlnet_segmentation"]) if segmentation else None,
        num_inference_steps=NUM_STEPS,
        working_size_px=WORKING_SIZE_PX,
        guidance_scale=guidance_scale,
        device="cpu",
    )
    return DeocclusionConfig(backend="controlnet", controlnet=net, **overrides)


@pytest.fixture(scope="module")
def controlnet_search(tiny_models, one_torch_thread):
    cfg = controlnet_cfg(tiny_models, beta_policy="search", beta_candidates=(0.2, 0.6, 1.5))
    return build_deoccluder(cfg)


@pytest.fixture(scope="module")
def search_results(controlnet_search, scenes):
    return controlnet_search.run([scene.frame for scene in scenes[:2]])


# ---------------------------------------------------------------- masks, hints, beta


def test_depth_hint_follows_handrefiner_formula():
    depth = np.zeros((4, 4), np.float32)
    depth[1, 1], depth[1, 2], depth[2, 1] = 0.40, 0.45, 0.50
    hint = depth_hint(depth)
    assert hint.shape == (4, 4, 3) and hint.dtype == np.uint8
    assert np.array_equal(hint[..., 0], hint[..., 2])
    assert hint[1, 1, 0] == 255  # nearest
    assert hint[2, 1, 0] == round(255 * 0.2)  # farthest: 255 * (1 - 0.8)
    assert hint[1, 2, 0] == round(255 * (1 - 0.8 * 0.5))
    assert hint[0, 0, 0] == 0 and hint[3, 3, 0] == 0  # background


def test_inpaint_mask_regions(scenes):
    frame = scenes[0].frame
    occluded = occluded_hand_mask(frame)
    tight = inpaint_mask(frame, 0, "occluded_hand")
    assert np.array_equal(tight, occluded)
    whole = inpaint_mask(frame, 0)
    assert np.array_equal(whole, occluded | frame.mask_object)
    dilated = inpaint_mask(frame, 3)
    assert (dilated & whole).sum() == whole.sum() and dilated.sum() > whole.sum()
    with pytest.raises(ValueError, match="hand_and_object"):
        inpaint_mask(frame, 0, "everything")
    hint = segmentation_hint(frame)
    assert (hint[frame.mask_hand].astype(int).sum(axis=1) > 0).all() and (hint[~frame.mask_hand] == 0).all()


def test_beta_policies():
    assert occlusion_prior_beta(1.0, 0.4, 0.8) == pytest.approx(0.8)
    assert occlusion_prior_beta(0.0, 0.4, 0.8) == pytest.approx(0.4)
    assert occlusion_prior_beta(0.25, 0.4, 0.8) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="visibility"):
        occlusion_prior_beta(1.5, 0.4, 0.8)
    assert candidate_betas(0.3, DeocclusionConfig(beta_policy="fixed", beta_fixed=0.55)).tolist() == pytest.approx([0.55])
    assert candidate_betas(0.5, DeocclusionConfig(beta_policy="occlusion_prior")).tolist() == pytest.approx([0.6])
    grid = candidate_betas(0.5, DeocclusionConfig(beta_policy="search", beta_candidates=(0.4, 0.7)))
    assert grid.dtype == np.float32 and grid.tolist() == pytest.approx([0.4, 0.7])


def test_sample_seed_is_stable_and_key_dependent():
    assert seed_from(0, "a/b/c/000001") == seed_from(0, "a/b/c/000001")
    assert seed_from(0, "a/b/c/000001") != seed_from(0, "a/b/c/000002")
    assert seed_from(1, "a/b/c/000001") != seed_from(0, "a/b/c/000001")
    assert 0 <= seed_from(0, "x") < 2**63


def test_unknown_backend_lists_valid_ones():
    cfg = DeocclusionConfig.model_construct(**(DeocclusionConfig().model_dump() | {"backend": "nope"}))
    with pytest.raises(ValueError, match="controlnet, inpaint, render"):
        build_deoccluder(cfg)
    assert set(DEOCCLUDERS) == {"render", "inpaint", "controlnet"}


# ---------------------------------------------------------------- weight-free backends


def _occluded_psnr(results, scenes) -> np.ndarray:
    return np.array(
        [psnr_in_mask(r.image_deoccluded, s.truth_rgb, occluded_hand_mask(s.frame)) for r, s in zip(results, scenes)]
    )


def test_render_and_inpaint_backends(scenes, unoccluded):
    frames = [scene.frame for scene in scenes] + [unoccluded.frame]
    render = build_deoccluder(DeocclusionConfig(backend="render", batch_size=3)).run(frames)
    inpaint = build_deoccluder(DeocclusionConfig(backend="inpaint")).run(frames)
    for results in (render, inpaint):
        assert [r.sample_key for r in results] == [f.frame.sample_key for f in frames]
        for result, frame in zip(results, frames):
            assert isinstance(result, DeocclusionResult)
            assert result.image_deoccluded.shape == (SIZE_PX, SIZE_PX, 3) and result.image_deoccluded.dtype == np.uint8
            outside = ~result.inpaint_mask
            assert np.array_equal(result.image_deoccluded[outside], frame.image[outside])  # bit-identical
            assert np.isnan(result.beta) and result.candidate_betas.shape == (1,)
    # Occluded frames: the re-shaded hand is much closer to the truth than the occluded input and than inpainting.
    occluded_render, occluded_inpaint = _occluded_psnr(render[:-1], scenes), _occluded_psnr(inpaint[:-1], scenes)
    occluded_input = np.array(
        [psnr_in_mask(s.frame.image, s.truth_rgb, occluded_hand_mask(s.frame)) for s in scenes]
    )
    assert (occluded_render > occluded_input + 5.0).all(), (occluded_render, occluded_input)
    assert occluded_render.mean() > occluded_inpaint.mean() + 1.5, (occluded_render, occluded_inpaint)
    assert all(r.keep and r.reason == "kept" and r.deocclusion_score > r.original_score for r in render[:-1])
    # The unoccluded frame: nothing generated, dropped as not occluded, image untouched.
    last = render[-1]
    assert unoccluded.frame.visibility == pytest.approx(1.0)
    assert not last.keep and last.reason == "not_occluded"
    assert np.array_equal(last.image_deoccluded, unoccluded.frame.image)


def test_filter_drops_not_occluded_and_no_gain(scenes):
    frame = scenes[0].frame
    # Visibility above max_visibility: not occluded enough for a pair.
    strict = build_deoccluder(DeocclusionConfig(backend="render", max_visibility=frame.visibility - 0.01))
    result = strict.run([frame])[0]
    assert (result.keep, result.reason) == (False, "not_occluded")
    # A margin no candidate can clear: no gain.
    demanding = build_deoccluder(DeocclusionConfig(backend="render", keep_rule="or", keep_margin=1.0)).run([frame])[0]
    assert (demanding.keep, demanding.reason) == (False, "no_gain")
    assert demanding.deocclusion_score > demanding.original_score  # it did improve, just not by the margin

    class Identity(Deoccluder):
        name = "identity"

        def _generate(self, frames, masks, betas):
            return [f.image for f in frames]

    unchanged = Identity(DeocclusionConfig(keep_rule="or")).run([frame])[0]
    assert (unchanged.keep, unchanged.reason) == (False, "no_gain")
    assert unchanged.deocclusion_score == pytest.approx(unchanged.original_score)


def test_no_visible_hand_is_dropped(scenes):
    frame = scenes[0].frame
    hidden = dataclasses.replace(frame, mask_hand_visible=np.zeros_like(frame.mask_hand_visible), visibility=0.0)
    result = build_deoccluder(DeocclusionConfig(backend="render")).run([hidden])[0]
    assert (result.keep, result.reason) == (False, "no_visible_hand")
    assert np.array_equal(result.image_deoccluded, frame.image)


def test_run_rejects_bad_input(scenes):
    frame = scenes[0].frame
    deoccluder = build_deoccluder(DeocclusionConfig(backend="inpaint"))
    with pytest.raises(ValueError, match="appears twice"):
        deoccluder.run([frame, frame])
    with pytest.raises(ValueError, match="mask_hand must be"):
        deoccluder.run([dataclasses.replace(frame, mask_hand=frame.mask_hand[:10])])


# ---------------------------------------------------------------- ControlNet backend (tiny models)


def test_controlnet_shapes_search_and_composite(search_results, scenes):
    for result, scene in zip(search_results, scenes):
        frame = scene.frame
        assert result.backend == "controlnet"
        assert result.image_deoccluded.shape == (SIZE_PX, SIZE_PX, 3) and result.image_deoccluded.dtype == np.uint8
        assert np.array_equal(result.image_deoccluded[~result.inpaint_mask], frame.image[~result.inpaint_mask])
        assert not np.array_equal(result.image_deoccluded[result.inpaint_mask], frame.image[result.inpaint_mask])
        # search: every candidate scored, the argmax kept
        assert result.candidate_betas.tolist() == pytest.approx([0.2, 0.6, 1.5])
        assert result.candidate_scores.shape == (3,) and np.isfinite(result.candidate_scores).all()
        best = int(np.argmax(result.candidate_scores))
        assert result.beta == pytest.approx(result.candidate_betas[best])
        assert result.deocclusion_score == pytest.approx(result.candidate_scores[best])
        assert result.keep and result.reason == "kept"  # the default occ rule keeps every generated (occluded) frame


def test_controlnet_rerun_is_bit_identical(tiny_models, scenes, search_results, one_torch_thread):
    # A freshly loaded de-occluder, same config: the same bytes.
    cfg = controlnet_cfg(tiny_models, beta_policy="search", beta_candidates=(0.2, 0.6, 1.5))
    again = build_deoccluder(cfg).run([scene.frame for scene in scenes[:2]])
    for first, second in zip(search_results, again):
        assert np.array_equal(first.image_deoccluded, second.image_deoccluded)
        assert np.array_equal(first.candidate_scores, second.candidate_scores)


def test_controlnet_beta_changes_output(controlnet_search, scenes, one_torch_thread):
    frame = scenes[0].frame
    mask = inpaint_mask(frame, controlnet_search.cfg.mask_dilation_px)
    low = controlnet_search._generate([frame], [mask], np.array([0.2], np.float32))[0]
    high = controlnet_search._generate([frame], [mask], np.array([1.5], np.float32))[0]
    difference = np.abs(low.astype(int) - high.astype(int))[mask].mean()
    assert difference > 2.0, difference


def test_controlnet_per_sample_beta_matches_single_runs(tiny_models, scenes, one_torch_thread):
    # occlusion_prior gives each frame its own beta inside one batched call; each must match running that
    # frame alone at that beta (equal up to batched-vs-single float rounding). Guidance on: the ControlNet
    # then sees [uncond; cond], and the per-sample strengths must follow that layout.
    frames = [scene.frame for scene in scenes[:2]]
    batched = build_deoccluder(controlnet_cfg(tiny_models, guidance_scale=2.0, beta_policy="occlusion_prior")).run(frames)
    assert batched[0].beta != pytest.approx(batched[1].beta)
    for result, frame in zip(batched, frames):
        assert result.beta == pytest.approx(occlusion_prior_beta(frame.visibility, 0.4, 0.8))
        single_cfg = controlnet_cfg(tiny_models, guidance_scale=2.0, beta_policy="fixed", beta_fixed=result.beta)
        single = build_deoccluder(single_cfg).run([frame])[0]
        difference = np.abs(single.image_deoccluded.astype(int) - result.image_deoccluded.astype(int))
        assert difference.max() <= 2, difference.max()


def test_controlnet_with_segmentation_net(tiny_models, scenes, search_results, one_torch_thread):
    cfg = controlnet_cfg(tiny_models, segmentation=True, beta_policy="search", beta_candidates=(0.2, 0.6, 1.5))
    results = build_deoccluder(cfg).run([scenes[0].frame])
    result = results[0]
    assert result.image_deoccluded.shape == (SIZE_PX, SIZE_PX, 3)
    assert np.array_equal(result.image_deoccluded[~result.inpaint_mask], scenes[0].frame.image[~result.inpaint_mask])
    assert not np.array_equal(result.image_deoccluded, search_results[0].image_deoccluded)


def test_missing_weights_name_the_field(tiny_models, tmp_path):
    from unihope.deocclude.controlnet_backend import MissingWeightsError

    missing_dir = tmp_path / "no_such_model"
    cfg = controlnet_cfg(tiny_models).model_copy(
        update={"controlnet": controlnet_cfg(tiny_models).controlnet.model_copy(update={"base_model": str(missing_dir)})}
    )
    with pytest.raises(MissingWeightsError, match=r"deocclusion\.controlnet\.base_model.*no_such_model"):
        build_deoccluder(cfg)
    hub_cfg = controlnet_cfg(tiny_models).controlnet.model_copy(
        update={"controlnet_depth": "lllyasviel/control_v11f1p_sd15_depth", "local_files_only": True}
    )
    with pytest.raises(MissingWeightsError, match=r"deocclusion\.controlnet\.controlnet_depth.*control_v11f1p_sd15_depth"):
        build_deoccluder(controlnet_cfg(tiny_models).model_copy(update={"controlnet": hub_cfg}))
    with pytest.raises(ValueError, match="float16"):
        build_deoccluder(
            controlnet_cfg(tiny_models).model_copy(
                update={"controlnet": controlnet_cfg(tiny_models).controlnet.model_copy(update={"dtype": "float16"})}
            )
        )


def test_keep_rule_decides_through_run(scenes):
    frame = scenes[0].frame
    below = frame.visibility - 0.01  # the frame fails the occ test
    results = {
        rule: build_deoccluder(DeocclusionConfig(backend="render", keep_rule=rule, max_visibility=below,
                                                 **overrides)).run([frame])[0]
        for rule, overrides in (("occ", {}), ("score", {}), ("and", {"keep_margin": 1.0}),
                                ("all", {"keep_margin": 1.0}), ("none", {"generate_max_visibility": 1.0}))
    }  # fmt: skip
    assert (results["occ"].keep, results["occ"].reason) == (False, "not_occluded")
    assert np.isnan(results["occ"].deocclusion_score)  # occ cannot keep it: nothing was generated
    assert (results["score"].keep, results["score"].reason) == (True, "kept")  # generated and better
    assert (results["and"].keep, results["and"].reason) == (False, "no_gain")  # both tests drop it
    assert (results["all"].keep, results["all"].reason) == (True, "kept")
    assert (results["none"].keep, results["none"].reason) == (False, "rule_none")


def test_controlnet_concurrent_runs_equal_serial_runs(controlnet_search, scenes, one_torch_thread):
    # One de-occluder is shared by a worker's task threads. Two threads generate at the same time with
    # different betas and batch sizes; each must get exactly what it gets alone (per-call state: no shared
    # strengths that one call could overwrite, reset or tile into the other's batch).
    import threading

    deoccluder = controlnet_search
    dilation = deoccluder.cfg.mask_dilation_px
    jobs = [
        ([scenes[0].frame, scenes[1].frame], np.array([0.2, 1.5], np.float32)),
        ([scenes[2].frame], np.array([2.0], np.float32)),
    ]
    jobs = [(frames, [inpaint_mask(f, dilation) for f in frames], betas) for frames, betas in jobs]
    serial = [deoccluder._generate(frames, masks, betas) for frames, masks, betas in jobs]
    outputs: dict[tuple[int, int], list[np.ndarray]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs), timeout=120)

    def work(job_idx: int) -> None:
        frames, masks, betas = jobs[job_idx]
        try:
            for rep in range(3):
                barrier.wait()  # both calls start together, so they overlap
                outputs[job_idx, rep] = deoccluder._generate(frames, masks, betas)
        except BaseException as err:  # noqa: BLE001 (re-raised in the main thread below)
            errors.append(err)
            barrier.abort()  # release the other thread instead of leaving it waiting

    threads = [threading.Thread(target=work, args=(idx,)) for idx in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real_errors = [err for err in errors if not isinstance(err, threading.BrokenBarrierError)]
    assert not real_errors, real_errors
    for (job_idx, rep), images in outputs.items():
        for image, alone in zip(images, serial[job_idx]):
            # Same batch, same process: equal up to float rounding (<= 1 level).
            assert np.abs(image.astype(int) - alone.astype(int)).max() <= 1, (job_idx, rep)
    assert len(outputs) == 6
    # Negative control: the tolerance catches a wrong beta (the first frame at the other job's strength).
    frames, masks, _ = jobs[0]
    wrong = deoccluder._generate(frames[:1], masks[:1], np.array([2.0], np.float32))[0]
    assert np.abs(wrong.astype(int) - serial[0][0].astype(int))[masks[0]].mean() > 2.0


class _TargetScorer:
    """Scores candidates by closeness to one target image inside the mask (higher = closer): an oracle whose
    ranking of x0 previews agrees with its ranking of finished images (separable scores)."""

    def __init__(self, target: np.ndarray) -> None:
        self.target = target.astype(np.float32)

    def score(self, frame, mask_inpaint, images_rgb):
        diff = np.abs(images_rgb.astype(np.float32) - self.target)[:, mask_inpaint]
        return -diff.mean(axis=(1, 2)).astype(np.float32)


class _UNetRowCounter:
    """Counts latents through a UNet (batch rows of every forward), independently of the backend's counter."""

    def __init__(self, unet) -> None:
        self.rows = 0
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.rows += int(args[0].shape[0])

    def close(self) -> int:
        self.handle.remove()
        return self.rows


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++", "unipc"])
def test_early_exit_search_returns_full_search_choice(tiny_models, scenes, one_torch_thread, scheduler):
    # For each candidate in turn, a scorer that prefers it: the early-exit search (previews after 1 of 2 steps,
    # finish the best one) must choose it too, finish it to the full search's image, and leave the others nan.
    betas = (0.2, 0.6, 1.5)
    frame = scenes[0].frame
    full = build_deoccluder(
        controlnet_cfg(tiny_models, beta_policy="search", beta_candidates=betas).model_copy(
            update={"controlnet": controlnet_cfg(tiny_models).controlnet.model_copy(update={"scheduler": scheduler})}
        )
    )
    mask = inpaint_mask(frame, full.cfg.mask_dilation_px)
    finished = full._generate_candidates([frame], [mask], [np.asarray(betas, np.float32)])[0].images
    net = controlnet_cfg(tiny_models).controlnet.model_copy(
        update={"scheduler": scheduler, "preview_step": 1, "finish_top": 1}
    )
    cheap = build_deoccluder(controlnet_cfg(tiny_models, beta_policy="search", beta_candidates=betas).model_copy(
        update={"controlnet": net}
    ))
    for target_idx, target in enumerate(finished):
        full.scorer = cheap.scorer = _TargetScorer(target)
        full_result = full.run([frame])[0]
        cheap_result = cheap.run([frame])[0]
        assert full_result.beta == pytest.approx(betas[target_idx])
        assert cheap_result.beta == pytest.approx(betas[target_idx]), (scheduler, target_idx, cheap_result.candidate_scores)
        difference = np.abs(cheap_result.image_deoccluded.astype(int) - target.astype(int))
        assert difference.max() <= 2, difference.max()  # batched-vs-single rounding only
        assert np.isnan(cheap_result.candidate_scores).sum() == len(betas) - 1
        assert np.isfinite(full_result.candidate_scores).all()
        # 3 candidates x 1 step + 1 x 1 step (guidance off: one row per sample-step), vs 3 x 2
        assert (cheap_result.num_unet_evals, full_result.num_unet_evals) == (4, 6)


@pytest.mark.parametrize(
    ("policy", "guidance", "preview_step", "candidates_per_frame"),
    [("fixed", 1.0, 0, 1), ("occlusion_prior", 2.0, 0, 1), ("search", 1.0, 0, 3), ("search", 2.0, 1, 3)],
)
def test_unet_evaluations_counted_per_policy(tiny_models, scenes, one_torch_thread, policy, guidance, preview_step,
                                             candidates_per_frame):
    # The count each result records equals the schedule's (candidates x steps, x2 under guidance, early exit
    # C*k + m*(T-k)) and the latents the UNet really saw, counted by a hook.
    net = controlnet_cfg(tiny_models, guidance_scale=guidance).controlnet.model_copy(update={"preview_step": preview_step})
    cfg = controlnet_cfg(tiny_models, guidance_scale=guidance, beta_policy=policy, beta_candidates=(0.2, 0.6, 1.5)).model_copy(
        update={"controlnet": net}
    )
    deoccluder = build_deoccluder(cfg)
    rows_per_sample = 2 if guidance > 1.0 else 1
    if preview_step:
        expected = rows_per_sample * (candidates_per_frame * preview_step + 1 * (NUM_STEPS - preview_step))
    else:
        expected = rows_per_sample * candidates_per_frame * NUM_STEPS
    assert deoccluder.unet_evals_per_frame(candidates_per_frame) == expected
    counter = _UNetRowCounter(deoccluder.pipe.unet)
    results = deoccluder.run([scenes[0].frame, scenes[1].frame])
    assert counter.close() == 2 * expected
    assert [r.num_unet_evals for r in results] == [expected, expected]
    render = build_deoccluder(DeocclusionConfig(backend="render")).run([scenes[0].frame])[0]
    assert render.num_unet_evals == 0


def test_config_rejects_bad_preview_and_missing_checkpoint():
    with pytest.raises(ValueError, match="preview_step"):
        ControlNetConfig(num_inference_steps=10, preview_step=10)
    with pytest.raises(ValueError, match="pose_model_checkpoint"):
        DeocclusionConfig(scorer="pose_model")
    for scheduler in ("ddim", "dpmsolver++", "unipc", "saved"):
        assert ControlNetConfig(scheduler=scheduler).scheduler == scheduler
