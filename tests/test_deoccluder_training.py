"""The learnt de-occluder (issue 24): training on synthetic pairs, the saved folder in a build, single-file ControlNets.

One tiny training run (32 px working size, a few dozen steps on the shared synthetic DexYCB fixture: sequence
0 trains, sequence 1 is held out) is shared by the tests of this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unihope.config import PipelineConfig
from unihope.deocclude import build_deoccluder
from unihope.deocclude.hints import occluded_hand_mask
from unihope.deocclude.quality import psnr_in_mask
from unihope.overrides import apply_overrides
from unihope.train.deoccluder import build_overrides, load_deoccluder_config, train_deoccluder
from unihope.train.deoccluder_data import is_trainable, split_heldout, synthetic_frames, truth_crop

from conftest import SYNTHETIC_DEXYCB_CONFIG

REPO = Path(__file__).resolve().parents[1]
TINY_SETS = (
    "data.heldout_sequences=1", "model.working_size_px=32", "train.vae_steps=60", "train.steps=60",
    "train.batch_size=8", "train.log_every=10", "train.checkpoint_every=0", "train.num_threads=1",
    "inference.num_inference_steps=4", "model.tiny.vae_block_out_channels=[32,64,64]", "model.tiny.norm_num_groups=16",
)  # fmt: skip  (the test pins its own model sizes: 60 VAE steps need the wider VAE to beat the floor)


@pytest.fixture(scope="module")
def trained(synthetic_dexycb, tmp_path_factory, one_torch_thread):
    """(result, config) of a tiny training run on the shared synthetic fixture."""
    overrides = TINY_SETS + (f"data.root={synthetic_dexycb}",) + tuple(
        f"data.synthetic.{key}={value}" for key, value in SYNTHETIC_DEXYCB_CONFIG.model_dump().items()
        if key in ("num_sequences", "frames_per_sequence", "num_cameras", "seed")
    )
    cfg = load_deoccluder_config(REPO / "configs" / "deoccluder_tiny.yaml", overrides)
    out = tmp_path_factory.mktemp("deocc") / "trained"
    return train_deoccluder(cfg, out, log=lambda line: None), cfg


@pytest.fixture(scope="module")
def heldout_frames(trained, synthetic_dexycb):
    """Held-out occluded crops (sequence 1) and their true object-free crops."""
    _, cfg = trained
    frames = synthetic_frames(synthetic_dexycb, cfg.data.synthetic, cfg.data.crop)
    _, heldout = split_heldout(frames, cfg.data.heldout_sequences)
    chosen = [f for f in heldout if is_trainable(f) and f.visibility <= 0.9][:6]
    assert len(chosen) >= 3
    return chosen, [truth_crop(synthetic_dexycb, f) for f in chosen]


def test_training_loss_falls_and_folder_records_its_data(trained):
    result, cfg = trained
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < 0.7 * first, result.losses  # the diffusion loss falls on the tiny set
    assert result.vae_losses[-1][1] < 0.8 * result.vae_losses[0][1], result.vae_losses
    record = json.loads((result.out_dir / "training.json").read_text())
    assert record["dataset_version"] == result.dataset_version and record["dataset_version"].startswith("synthetic-v")
    assert record["config"] == cfg.model_dump(mode="json")
    # held-out sequence never trained on
    assert record["heldout_sequences"] and not any(
        key.startswith(tuple(record["heldout_sequences"])) for key in record["train_sample_keys"])
    for folder in ("base/unet", "base/vae", "controlnet", "checkpoints/step-0/controlnet"):
        assert (result.out_dir / folder / "config.json").is_file(), folder
    readme = (result.out_dir / "README.md").read_text()
    assert all(f"--set {option}" in readme for option in result.build_overrides)


def test_cli_prints_the_build_options(trained, synthetic_dexycb, tmp_path):
    # The CLI verb runs the same function; a bad key fails in one line before any work.
    from typer.testing import CliRunner

    from unihope.cli import app

    bad = CliRunner().invoke(app, ["train-deoccluder", "--config", str(REPO / "configs" / "deoccluder_tiny.yaml"),
                                   "--out", str(tmp_path / "x"), "--set", "train.nope=1"])
    assert bad.exit_code == 2 and "train.nope" in bad.output and not (tmp_path / "x").exists()
    result, _ = trained
    options = build_overrides(result.out_dir)
    assert options == result.build_overrides
    assert f"deocclusion.controlnet.controlnet_depth={result.out_dir.resolve() / 'controlnet'}" in options


def test_trained_folder_loads_in_a_build_config_and_beats_the_untrained_floor(trained, heldout_frames):
    result, _ = trained
    frames, truths = heldout_frames
    demo = PipelineConfig.from_yaml(REPO / "configs" / "demo.yaml")

    def occluded_psnr(folder: Path) -> tuple[np.ndarray, list]:
        cfg = apply_overrides(demo, build_overrides(folder))
        assert cfg.deocclusion.backend == "controlnet"
        outputs = build_deoccluder(cfg.deocclusion).run(frames)
        return np.array([psnr_in_mask(r.image_deoccluded, t, occluded_hand_mask(f))
                         for r, t, f in zip(outputs, truths, frames)]), outputs

    trained_psnr, outputs = occluded_psnr(result.out_dir)
    floor_psnr, _ = occluded_psnr(result.out_dir / "checkpoints" / "step-0")
    for frame, out in zip(frames, outputs):  # it de-occludes: the mask changes, the rest is the input
        assert out.backend == "controlnet" and out.num_unet_evals == 4
        outside = ~out.inpaint_mask
        assert np.array_equal(out.image_deoccluded[outside], frame.image[outside])
        assert np.abs(out.image_deoccluded[out.inpaint_mask].astype(int) - frame.image[out.inpaint_mask]).mean() > 1
    # against the truth, the trained folder beats the untrained (step-0) one on every held-out frame
    assert np.all(trained_psnr > floor_psnr + 1.0), (trained_psnr, floor_psnr)


# -- single-file ControlNet checkpoints in the original (ControlNet-v1) layout ---------------------------------------

RESNET_TO_V1 = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _to_controlnet_v1(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet state dict in the original ControlNet-v1 layout (`control_model.` keys).

    Written from the original layout: input_blocks.0.0 = conv_in; input block i = 1 + block * (layers + 1) + layer
    holds resnet (.0) and attention (.1), the block's downsampler is its last index (.0.op); zero_convs.i.0;
    middle_block.0/1/2 = resnet, attention, resnet; middle_block_out.0; time_embed.0/2; input_hint_block
    0, 2, ..., 14 = the hint embedding's 8 convolutions.
    """
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] == "time_embedding":
            new = f"time_embed.{0 if p[1] == 'linear_1' else 2}.{p[2]}"
        elif p[0] == "conv_in":
            new = f"input_blocks.0.0.{p[1]}"
        elif p[0] == "controlnet_cond_embedding":
            index = {"conv_in": 0, "conv_out": 14}.get(p[1])
            new = f"input_hint_block.{index}.{p[2]}" if index is not None else f"input_hint_block.{2 * (int(p[2]) + 1)}.{p[3]}"
        elif p[0] == "controlnet_down_blocks":
            new = f"zero_convs.{p[1]}.0.{p[2]}"
        elif p[0] == "controlnet_mid_block":
            new = f"middle_block_out.0.{p[1]}"
        elif p[0] == "down_blocks":
            block = int(p[1])
            if p[2] == "downsamplers":
                new = f"input_blocks.{1 + block * (layers_per_block + 1) + layers_per_block}.0.op.{p[-1]}"
            else:
                index = 1 + block * (layers_per_block + 1) + int(p[3])
                rest = ".".join([RESNET_TO_V1.get(p[4], p[4])] + p[5:]) if p[2] == "resnets" else ".".join(p[4:])
                new = f"input_blocks.{index}.{0 if p[2] == 'resnets' else 1}.{rest}"
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                new = f"middle_block.{0 if p[2] == '0' else 2}.{'.'.join([RESNET_TO_V1.get(p[3], p[3])] + p[4:])}"
            else:
                new = f"middle_block.1.{'.'.join(p[3:])}"
        else:
            raise KeyError(key)
        out[f"control_model.{new}"] = value.clone()
    return out


def _sd_layout_models(root: Path) -> dict[str, Path]:
    """A tiny inpainting base whose VAE downsamples 8x, and a ControlNet with SD's 8-conv hint embedding."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionInpaintPipeline
    from diffusers import UNet2DConditionModel

    from tiny_diffusion import _randomise_zero_convs

    torch.manual_seed(0)
    blocks = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), norm_num_groups=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4,
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
    vae = AutoencoderKL(block_out_channels=[16, 16, 16, 16], norm_num_groups=8, latent_channels=4, layers_per_block=1,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionInpaintPipeline(vae=vae, unet=unet, scheduler=scheduler, text_encoder=None, tokenizer=None,
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False).save_pretrained(root / "base")
    controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 8, 16, 16), **blocks)
    _randomise_zero_convs(controlnet, torch.Generator().manual_seed(3))
    controlnet.save_pretrained(root / "controlnet")
    return {"base": root / "base", "controlnet": root / "controlnet"}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_controlnet_v1_checkpoint_loads_and_deoccludes_as_its_diffusers_folder(
    tmp_path, suffix, capsule_scene_builder, one_torch_thread
):
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from unihope.config import ControlNetConfig, DeocclusionConfig
    from unihope.deocclude.controlnet_backend import load_controlnet

    paths = _sd_layout_models(tmp_path)
    reference = ControlNetModel.from_pretrained(paths["controlnet"])
    v1 = _to_controlnet_v1(reference.state_dict(), layers_per_block=1)
    v1["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # a full ControlLDM file also holds the SD weights
    checkpoint = tmp_path / f"control_tiny_inpaint_depth_hand{suffix}"
    if suffix == ".safetensors":
        save_file(v1, str(checkpoint))
    else:
        torch.save({"state_dict": v1}, checkpoint)

    # 1. The file converts to exactly the diffusers weights (architecture from the config folder)
    loaded = load_controlnet(str(checkpoint), "controlnet_depth", torch.float32, True, str(paths["controlnet"]))
    assert set(loaded.state_dict()) == set(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    # 2. Beside the inpainting base, the file de-occludes exactly as the diffusers folder does
    frames = [capsule_scene_builder.build(f"20200101-subject-01/20200101_000000/000000/{seed:06d}", seed=seed).frame
              for seed in (1, 2)]

    def run(**net) -> list[np.ndarray]:
        net_cfg = ControlNetConfig(base_model=str(paths["base"]), num_inference_steps=2, guidance_scale=1.0,
                                   working_size_px=64, device="cpu", local_files_only=True, **net)
        cfg = DeocclusionConfig(backend="controlnet", beta_policy="fixed", controlnet=net_cfg)
        return [r.image_deoccluded for r in build_deoccluder(cfg).run(frames)]

    from_file = run(controlnet_depth=str(checkpoint), controlnet_depth_config=str(paths["controlnet"]))
    from_folder = run(controlnet_depth=str(paths["controlnet"]))
    for a, b in zip(from_file, from_folder):
        assert np.array_equal(a, b)


def test_single_file_without_a_matching_config_names_the_field(tmp_path):
    from unihope.config import ControlNetConfig, DeocclusionConfig
    from unihope.deocclude.controlnet_backend import MissingWeightsError

    checkpoint = tmp_path / "control.safetensors"
    checkpoint.write_bytes(b"")
    cfg = DeocclusionConfig(backend="controlnet", controlnet=ControlNetConfig(
        base_model=str(tmp_path), controlnet_depth=str(checkpoint), controlnet_depth_config=str(tmp_path),
        device="cpu"))
    with pytest.raises(MissingWeightsError, match="controlnet_depth_config"):
        build_deoccluder(cfg)


def test_pretrained_base_trains_only_the_controlnet(synthetic_dexycb, tmp_path, one_torch_thread):
    # The SD-1.5 path (configs/deoccluder_sd15.yaml) on a test-sized base folder: the UNet and VAE stay frozen,
    # only the ControlNet (started from the UNet's encoder) trains, and the build keeps the original base.
    from diffusers import ControlNetModel, UNet2DConditionModel

    from tiny_diffusion import save_tiny_models

    base = save_tiny_models(tmp_path / "models")["base_model"]
    overrides = TINY_SETS + (
        f"data.root={synthetic_dexycb}", f"model.base_model={base}", "train.train_unet=false", "train.vae_steps=0",
        "train.steps=4", "train.batch_size=4", "train.learning_rate=1e-3", "train.ema=true", "train.ema_decay=0.5",
    ) + tuple(f"data.synthetic.{key}={value}" for key, value in SYNTHETIC_DEXYCB_CONFIG.model_dump().items()
              if key in ("num_sequences", "frames_per_sequence", "num_cameras", "seed"))
    cfg = load_deoccluder_config(REPO / "configs" / "deoccluder_sd15.yaml", overrides + ("train.mixed_precision=no",))
    result = train_deoccluder(cfg, tmp_path / "out", log=lambda line: None)
    assert not (result.out_dir / "base").exists()
    assert f"deocclusion.controlnet.base_model={base}" in result.build_overrides
    before = UNet2DConditionModel.from_pretrained(base, subfolder="unet").state_dict()
    start = ControlNetModel.from_pretrained(result.out_dir / "checkpoints" / "step-0" / "controlnet")
    trained = ControlNetModel.from_pretrained(result.out_dir / "controlnet")
    assert trained.config.in_channels == 4 and not torch.any(start.controlnet_mid_block.weight)  # zero conv at start
    assert torch.any(trained.controlnet_mid_block.weight)  # ... and trained away from zero
    assert torch.equal(start.conv_in.weight, before["conv_in.weight"][:, :4])  # from the UNet's encoder
    cfg_build = apply_overrides(PipelineConfig(), result.build_overrides)
    assert cfg_build.deocclusion.controlnet.controlnet_depth == str(result.out_dir.resolve() / "controlnet")


def test_mixed_precision_on_the_cpu_fails_before_any_work(tmp_path, monkeypatch):
    cfg = load_deoccluder_config(REPO / "configs" / "deoccluder_sd15.yaml", (f"model.base_model={tmp_path}",))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also on a GPU worker
    with pytest.raises(ValueError, match="mixed_precision"):
        train_deoccluder(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_build_with_the_trained_folder_stores_pairs_nearer_the_truth_than_the_floor(trained, synthetic_dexycb,
                                                                                       prefect_api, tmp_path):
    """The whole flow (`run_build`, as `unihope build --set <printed options>` runs it): the stored de-occluded
    images of the held-out sequence, against the synthetic truth in the hidden hand, beat a build with the
    untrained (step-0) folder."""
    from unihope.buildplan.resolve import resolve_build_config
    from unihope.launch import run_build
    from unihope.storage.view import open_dataset
    from unihope.train.deoccluder_data import truth_crop_of_key

    result, cfg = trained
    heldout = tuple(json.loads((result.out_dir / "training.json").read_text())["heldout_sequences"])
    demo = PipelineConfig.from_yaml(REPO / "configs" / "demo.yaml")
    psnr: dict[str, dict[str, float]] = {}
    for name, folder in (("trained", result.out_dir), ("floor", result.out_dir / "checkpoints" / "step-0")):
        out = tmp_path / name
        build_cfg = resolve_build_config(
            apply_overrides(demo, build_overrides(folder) + (f"crop.size_px={cfg.data.crop.size_px}",)), str(out),
            f"dexycb:{synthetic_dexycb}")
        summary = run_build(build_cfg, str(out), write_report=False)
        assert summary.num_samples > 0
        view = open_dataset(str(out))
        try:
            keys = [str(k) for k in view.column("sample_key")]
            keep, affines = view.column("keep").astype(bool), view.column("crop_affine")
            scores = {}
            for i in np.flatnonzero(keep):
                if not keys[i].startswith(heldout):
                    continue
                sample = view.sample(int(i), ("image_deoccluded", "mask_hand", "mask_hand_visible"))
                hidden = sample["mask_hand"] & ~sample["mask_hand_visible"]
                if hidden.sum() < 20:
                    continue
                truth = truth_crop_of_key(synthetic_dexycb, keys[i], affines[i], cfg.data.crop.size_px)
                scores[keys[i]] = psnr_in_mask(sample["image_deoccluded"], truth, hidden)
        finally:
            view.close()
        psnr[name] = scores
    common = sorted(set(psnr["trained"]) & set(psnr["floor"]))
    assert len(common) >= 3, psnr
    gain = np.array([psnr["trained"][k] - psnr["floor"][k] for k in common])
    assert gain.mean() > 1.0 and (gain > 0).mean() >= 0.75, gain
