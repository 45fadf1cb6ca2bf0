"""Training, checkpoints, evaluation and metrics (tiny model, the real right-hand MANO layer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.model_fixtures import InMemoryPairedDataset
import unihope.train.run as train_run
from unihope import metrics as M
from unihope.config import ConfigError, HandModelConfig
from unihope.hand_identity import hand_model_identity
from unihope.train.batch import prepare_batch
from unihope.train.checkpoints import load_checkpoint
from unihope.train.data import open_paired_dataset
from unihope.train.evaluate import evaluate
from unihope.train.loop import train
from unihope.train.run import (
    resolve_hand_model,
    run_evaluation_from_cli,
    run_training_from_cli,
    run_training_in_runs_dir,
    with_mano_dir,
)
from unihope.train.spec import build_hand_layer, build_model, loss_weights, model_spec
from unihope.train.stats import collect_train_statistics
from unihope.train_config import TrainConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(
    model=dict(depth=18, width_multiplier=0.125, norm="group", input_size_px=32, fpn_channels=16, roi_size=8,
               num_heads=4, mano_hidden=[64, 32], num_hand_res_blocks=2, switcher_channels=8, switcher_hidden=32),
    optim=dict(batch_size=4, learning_rate=1e-3, epochs=3),
    eval_batch_size=8,
    loss_window_steps=2,
)  # fmt: skip


def tiny_config(**overrides) -> TrainConfig:
    data = json.loads(json.dumps(TINY))
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return TrainConfig.model_validate(data)


@pytest.fixture(scope="module")
def hand_layer():
    from unihope.hand import HandLayer

    return HandLayer(side="right")


@pytest.fixture(scope="module")
def datasets(hand_layer):
    return InMemoryPairedDataset(12, 32, seed=0, hand_layer=hand_layer), InMemoryPairedDataset(6, 32, seed=1, hand_layer=hand_layer)


# ---------------------------------------------------------------- metrics on known inputs


def test_pa_mpjpe_of_a_scaled_rotated_translated_copy_is_zero():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(4, 21, 3)) * 0.05
    rot = Rotation.random(4, random_state=1).as_matrix()
    pred = 1.7 * np.einsum("nij,npj->npi", rot, gt) + np.array([0.1, -0.2, 0.5])
    np.testing.assert_allclose(M.pa_mpjpe_mm(pred, gt), 0.0, atol=1e-9)
    assert M.mpjpe_mm(pred, gt).min() > 10  # the unaligned error is large


def test_mpjpe_of_a_one_centimetre_shift_of_non_root_joints():
    gt = np.random.default_rng(0).normal(size=(3, 21, 3)) * 0.05
    pred = gt.copy()
    pred[:, 1:] += np.array([0.0, 0.01, 0.0])
    np.testing.assert_allclose(M.mpjpe_mm(pred, gt), 20 / 21 * 10.0)  # 20 of 21 joints off by 10 mm
    np.testing.assert_allclose(M.mpjpe_mm(gt + 0.3, gt), 0.0, atol=1e-9)  # a global shift vanishes after wrist alignment
    np.testing.assert_allclose(M.mpvpe_mm(pred, gt), 20 / 21 * 10.0)


def test_occlusion_table_switcher_accuracy_and_add_s():
    table = M.occlusion_interval_table(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), np.array([0.0, 0.25, 0.3, 0.5, 0.75, 0.9]))
    assert [row["interval"] for row in table] == ["[0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1]"]
    assert [row["count"] for row in table] == [2, 2, 1, 1]
    assert [row["mean"] for row in table] == [1.5, 3.5, 5.0, 6.0]
    assert M.switcher_accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])) == 0.75
    # A box's corners are symmetric under a 180 degree turn about z: ADD-S is 0 where ADD would not be.
    corners = np.array([[x, y, z] for x in (-0.05, 0.05) for y in (-0.03, 0.03) for z in (-0.02, 0.02)])
    pose_gt = np.concatenate([np.eye(3), [[0.0], [0.0], [0.5]]], axis=1)
    pose_turned = pose_gt.copy()
    pose_turned[:3, :3] = Rotation.from_euler("z", 180, degrees=True).as_matrix()
    assert M.add_s_mm(corners, pose_turned, pose_gt) == pytest.approx(0.0, abs=1e-9)
    shifted = pose_gt.copy()
    shifted[0, 3] += 0.002
    assert M.add_s_mm(corners, shifted, pose_gt) == pytest.approx(2.0)


def test_triangulated_keypoints_and_pnp_recover_the_object_pose():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(21, 3)) * 0.05
    K = np.array([[300.0, 0, 64], [0, 300.0, 64], [0, 0, 1]])
    poses, uvs = [], []
    for i in range(5):
        pose = np.concatenate([Rotation.random(random_state=i).as_matrix(), [[0.01 * i], [0.0], [0.6]]], axis=1)
        cam = points @ pose[:, :3].T + pose[:, 3]
        uv = cam @ K.T
        poses.append(pose)
        uvs.append(uv[:, :2] / uv[:, 2:])
    tri = M.triangulate_object_keypoints(np.array(uvs), np.array(poses), np.repeat(K[None], 5, 0))
    np.testing.assert_allclose(tri.points_obj_m, points, atol=1e-9)
    assert M.triangulate_object_keypoints(np.array(uvs[:1] * 3), np.array(poses[:1] * 3), np.repeat(K[None], 3, 0)) is None
    pose = M.solve_object_pose_pnp(uvs[2], tri.points_obj_m, K)
    np.testing.assert_allclose(pose, poses[2], atol=1e-6)


# ---------------------------------------------------------------- batches


def test_left_hands_are_mirrored_to_right_hands(hand_layer):
    from unihope.hand import HandLayer

    left = HandLayer(side="left")
    rng = np.random.default_rng(0)
    pose_left = torch.from_numpy(rng.normal(0, 0.3, (1, 48)).astype(np.float32))
    betas = torch.from_numpy(rng.normal(0, 0.5, (1, 10)).astype(np.float32))
    out_left = left(global_orient=pose_left[:, :3], hand_pose=pose_left[:, 3:], betas=betas, transl=torch.zeros(1, 3))
    ds = InMemoryPairedDataset(2, 32, seed=0, left_fraction=0.0, hand_layer=hand_layer)
    sample = dict(ds[0])
    sample.update(hand_side=torch.tensor(1), mano_pose=pose_left[0], mano_betas=betas[0], joints_3d=out_left.joints[0])
    batch = torch.utils.data.default_collate([sample])
    prepared = prepare_batch(batch, tiny_config(), torch.device("cpu"))
    assert torch.equal(prepared.images[0], sample["image"].flip(-1))
    assert float(prepared.targets.joints_2d_px[0, 3, 0]) == pytest.approx(31 - float(sample["joints_2d"][3, 0]))
    # The right layer on the mirrored pose gives the mirrored left hand (REFERENCE.md's rule).
    _, joints_right = build_model(tiny_config(), hand_layer).mano_forward(prepared.targets.mano_pose, prepared.targets.mano_betas)
    torch.testing.assert_close(joints_right, prepared.targets.joints_rel_m, atol=1e-5, rtol=0)


def test_prepare_batch_resizes_coordinates_with_pixel_centres(datasets):
    batch = torch.utils.data.default_collate([datasets[0][i] for i in range(2)])
    batch["hand_side"] = torch.zeros(2, dtype=torch.long)
    prepared = prepare_batch(batch, tiny_config(model=dict(input_size_px=64)), torch.device("cpu"))
    assert prepared.images.shape == (2, 3, 64, 64)
    torch.testing.assert_close(prepared.targets.joints_2d_px, (batch["joints_2d"] + 0.5) * 2 - 0.5)


# ---------------------------------------------------------------- checkpoints, resume, training, evaluation


def test_checkpoint_reloads_to_identical_outputs(tmp_path, datasets, hand_layer):
    cfg = tiny_config(optim=dict(max_steps=3))
    result = train(cfg, datasets[0], None, tmp_path / "run", hand_layer, log=lambda *_: None)
    model = build_model(cfg, hand_layer)
    trained_state, stats = load_checkpoint(result.checkpoint_path, model)
    assert trained_state.step == 3 and stats.num_samples == 12
    fresh = build_model(cfg.model_copy(update={"seed": 7}), hand_layer)
    load_checkpoint(result.checkpoint_path, fresh)
    batch = torch.utils.data.default_collate([datasets[1][i] for i in range(4)])
    prepared = prepare_batch(batch, cfg, torch.device("cpu"))
    model.eval(), fresh.eval()
    with torch.no_grad():
        a = model(prepared.images, prepared.targets.hand_boxes_xyxy_px, prepared.targets.object_boxes_xyxy_px)
        b = fresh(prepared.images, prepared.targets.hand_boxes_xyxy_px, prepared.targets.object_boxes_xyxy_px)
    assert torch.equal(a.joints_rel_m, b.joints_rel_m) and torch.equal(a.grasp_logits, b.grasp_logits)
    assert torch.equal(a.object_keypoints_2d_px, b.object_keypoints_2d_px)
    assert not any(k.startswith("hand_layer.") for k in model.trainable_state_dict())  # no MANO data in checkpoints


def test_resume_continues_exactly_where_training_stopped(tmp_path, datasets, hand_layer):
    quiet = lambda *_: None  # noqa: E731
    # 3 samples/epoch boundary is mid-way: 12 samples / batch 4 = 3 steps per epoch; stop at 4 (mid-epoch 1).
    straight = train(tiny_config(optim=dict(max_steps=8), masking=dict(enabled=True)), datasets[0], None,
                       tmp_path / "straight", hand_layer, log=quiet)  # fmt: skip
    first = train(tiny_config(optim=dict(max_steps=4), masking=dict(enabled=True)), datasets[0], None,
                    tmp_path / "resumed", hand_layer, log=quiet)  # fmt: skip
    assert first.steps == 4
    resumed = train(tiny_config(optim=dict(max_steps=8), masking=dict(enabled=True)), datasets[0], None,
                      tmp_path / "resumed", hand_layer, log=quiet)  # fmt: skip
    assert resumed.steps == 8
    assert resumed.step_losses == straight.step_losses  # the same loss curve, bit for bit
    model_a, model_b = build_model(tiny_config(), hand_layer), build_model(tiny_config(), hand_layer)
    load_checkpoint(straight.checkpoint_path, model_a)
    load_checkpoint(resumed.checkpoint_path, model_b)
    for (name, a), b in zip(model_a.trainable_state_dict().items(), model_b.trainable_state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="another config"):
        train(tiny_config(optim=dict(max_steps=9, learning_rate=5e-4)), datasets[0], None, tmp_path / "resumed",
                hand_layer, log=quiet)  # fmt: skip


def test_training_run_writes_metrics_plots_and_loss_falls(tmp_path, datasets, hand_layer):
    cfg = tiny_config(optim=dict(epochs=6), eval_every_epochs=3)
    result = train(cfg, datasets[0], datasets[1], tmp_path / "run", hand_layer, log=lambda *_: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "mpvpe_mm", "switcher_accuracy", "train_loss_first", "train_loss_last",
                "mean_pose_mpjpe_mm", "majority_switcher_accuracy", "add_s_mm", "split_by_grasp", "occlusion_intervals",
                "dataset_version"):
        assert key in metrics, key
    assert "data_version" not in metrics  # the version is named once (issue 25.8)
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert len(result.step_losses) == 18 and metrics["num_samples"] == 6
    assert [row["interval"] for row in metrics["occlusion_intervals"]["mpjpe_mm"]] == [
        "[0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1]"]  # fmt: skip
    assert sum(row["count"] for row in metrics["occlusion_intervals"]["mpjpe_mm"]) == 6
    split = metrics["split_by_grasp"]
    assert split["hand_only"]["count"] + split["hand_object"]["count"] == 6
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(6)) and "val_mpjpe_mm" in epochs[2]
    for name in ("loss_curve.png", "occlusion_intervals.png", "per_joint_error.png"):
        assert (tmp_path / "run" / "plots" / name).stat().st_size > 1000


def test_mean_pose_baseline_equals_mpjpe_of_the_training_mean(datasets, hand_layer):
    cfg = tiny_config()
    stats = collect_train_statistics(datasets[0], cfg)
    report = evaluate(build_model(cfg, hand_layer), datasets[1], cfg, stats)
    gt = []
    for i in range(len(datasets[1])):
        joints = datasets[1][i]["joints_3d"].double().numpy()
        if int(datasets[1][i]["hand_side"]) == 1:
            joints = joints * np.array([-1.0, 1.0, 1.0])
        gt.append(joints)
    expected = M.mpjpe_mm(np.broadcast_to(stats.mean_joints_rel_m, (len(gt), 21, 3)), np.array(gt))
    np.testing.assert_allclose(report.mean_pose_mpjpe_mm, expected, rtol=1e-6)
    # F-scores and AUC come from the same per-sample errors the MPJPE does
    summary = report.summary(stats)
    assert summary["auc_joints_0_50mm"] == pytest.approx(M.pck_auc(report.per_joint_error_mm))
    np.testing.assert_allclose(report.per_joint_error_mm.mean(axis=1), report.mpjpe_mm, rtol=1e-9)
    np.testing.assert_allclose(report.pa_per_joint_error_mm.mean(axis=1), report.pa_mpjpe_mm, rtol=1e-9)
    assert sorted(report.f_score) == ["f_score_15mm", "f_score_5mm", "pa_f_score_15mm", "pa_f_score_5mm"]
    assert all(v.shape == (len(gt),) for v in report.f_score.values())
    labels = np.array([int(datasets[0][i]["grasp"]) for i in range(len(datasets[0]))])
    assert stats.majority_grasp == int(np.bincount(labels, minlength=2).argmax())


def test_evaluation_cli_scores_a_checkpoint(tmp_path, datasets, hand_layer, monkeypatch, capsys):
    cfg = tiny_config(optim=dict(max_steps=2))
    config_path = tmp_path / "train.yaml"
    config_path.write_text(cfg.to_yaml())
    result = train(cfg, datasets[0], None, tmp_path / "run", hand_layer, log=lambda *_: None)
    monkeypatch.setattr(train_run, "open_paired_dataset", lambda *args, **kwargs: datasets[1])
    monkeypatch.setattr(train_run, "resolve_hand_model", lambda cfg, *args, **kwargs: (cfg, hand_model_identity(HandModelConfig())))
    summary = run_evaluation_from_cli(config_path, result.checkpoint_path, "unused", tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert written["num_samples"] == 6 and written["mpjpe_mm"] == pytest.approx(summary["mpjpe_mm"])
    # UniHOPE's eval.py metrics beyond MPJPE
    for name in ("f_score_5mm", "f_score_15mm", "pa_f_score_5mm", "pa_f_score_15mm", "auc_joints_0_50mm",
                 "pa_auc_joints_0_50mm"):
        assert 0.0 <= written[name] <= 1.0, name
    assert written["f_score_5mm"] <= written["f_score_15mm"] and written["pa_f_score_5mm"] <= written["pa_f_score_15mm"]
    assert "F@5mm" in capsys.readouterr().out


# ---------------------------------------------------------------- configuration


def test_train_configs_load_and_round_trip():
    for name in ("train_demo.yaml", "train_dexycb_gpu.yaml", "train_ablation.yaml", "train_ablation_gpu.yaml"):
        cfg = TrainConfig.from_yaml(CONFIGS / name)
        assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    gpu = TrainConfig.from_yaml(CONFIGS / "train_dexycb_gpu.yaml")
    assert (gpu.model.depth, gpu.model.input_size_px, gpu.optim.batch_size) == (50, 128, 40)
    assert (gpu.enhancement.image_weight, gpu.enhancement.token_weight, gpu.enhancement.output_weight) == (0.1, 0.1, 0.5)
    with pytest.raises(ConfigError, match="use_switcher"):
        TrainConfig.from_yaml("ablation:\n  use_switcher: false\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.from_yaml("optim:\n  learning_rat: 0.1\n")
    ablated = model_spec(TrainConfig.from_yaml("ablation:\n  use_switcher: false\n  use_fusion: false\n"))
    assert ablated.fusion == "ungated" and not ablated.use_switcher
    assert loss_weights(TrainConfig.from_yaml("ablation:\n  use_enhancement: false\n")).enhance_token == 0.0


# ---------------------------------------------------------------- the dataset's own hand model, one run per data version


def small_train_config(tmp_path: Path, hand: dict | None = None, max_steps: int = 2) -> Path:
    """A tiny config trained on every sample (no held-out split), evaluated on the training split."""
    cfg = tiny_config(optim=dict(max_steps=max_steps), data=dict(val_fraction=0.0, eval_split="train"),
                      hand=hand or {})
    path = tmp_path / f"train-{cfg.config_hash()}.yaml"
    path.write_text(cfg.to_yaml())
    return path


@pytest.fixture(scope="module")
def stand_in_dataset(tmp_path_factory):
    """A 2-sequence dataset built with a MANO-format stand-in for the official files (another skeleton).

    Built on "another machine": the files the build read are moved away afterwards, so training must be
    pointed at the copy in `hand_cfg.mano_dir`.
    """
    from tests.training_fixtures import build_small_dataset, write_stand_in_mano

    work = tmp_path_factory.mktemp("stand-in")
    build_dir = write_stand_in_mano(work / "build-machine" / "mano")
    url = str(work / "data")
    build_small_dataset(work, url, HandModelConfig(mano_dir=build_dir, cache_dir=work / "cache"), num_sequences=2)
    build_dir.rename(work / "mano")
    return {"url": url, "hand_cfg": HandModelConfig(mano_dir=work / "mano", cache_dir=work / "cache"),
            "build_dir": build_dir}


def _gt_pose_mpjpe_mm(cfg_path: Path, url: str, mano_dir: Path | None) -> float:
    """Worst MPJPE of the dataset's own GT pose through the layer training builds (wrist-relative targets)."""
    cfg = with_mano_dir(TrainConfig.from_yaml(cfg_path), mano_dir)
    dataset = open_paired_dataset(url, "train", cfg, None)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    prepared = prepare_batch(batch, cfg, torch.device("cpu"))
    _, joints = build_model(cfg, build_hand_layer(cfg.hand)).mano_forward(prepared.targets.mano_pose,
                                                                               prepared.targets.mano_betas)
    return float(M.mpjpe_mm(joints.double().numpy(), prepared.targets.joints_rel_m.double().numpy()).max())


def test_training_loads_the_datasets_hand_model_and_refuses_another(tmp_path, stand_in_dataset):
    from unihope.storage.view import open_dataset
    from unihope.hand.convert import file_sha256

    url, hand_cfg = stand_in_dataset["url"], stand_in_dataset["hand_cfg"]
    # 1. The build recorded the stand-in's identity: kind, digests of the user's files, tip convention.
    recorded = open_dataset(url).manifest.attrs.hand_model
    assert recorded["kind"] == "mano" and recorded["tip_convention"] == "manopth"  # the DexYCB layout's
    assert recorded["right_sha256"] == file_sha256(hand_cfg.mano_dir / "MANO_RIGHT.pkl")
    assert recorded["left_sha256"] == file_sha256(hand_cfg.mano_dir / "MANO_LEFT.pkl")

    # 2. Pointed at the same files (--mano-dir), the training's layer reproduces the targets exactly;
    #    the default hand is another skeleton (the bug: non-zero MPJPE for a perfect pose).
    config = small_train_config(tmp_path, hand={"cache_dir": str(hand_cfg.cache_dir)})
    assert _gt_pose_mpjpe_mm(config, url, hand_cfg.mano_dir) < 0.01
    assert _gt_pose_mpjpe_mm(config, url, None) > 5.0

    # 3. Training with the dataset's model works and records it; the default model is refused in one line.
    result = run_training_in_runs_dir(config, url, tmp_path / "runs", mano_dir=hand_cfg.mano_dir)
    assert result.steps == 2 and result.metrics["hand_model"] == recorded
    state, _ = load_checkpoint(result.checkpoint_path, build_model(TrainConfig.from_yaml(config),
                                                                       build_hand_layer(hand_cfg)))
    assert json.loads(state.hand_model) == recorded
    with pytest.raises(ValueError, match="hand model mismatch") as refused:
        run_training_in_runs_dir(config, url, tmp_path / "runs-default")
    assert "\n" not in str(refused.value) and "--mano-dir" in str(refused.value)
    assert not (tmp_path / "runs-default").exists()  # refused before anything was written

    # 4. Where the build's own folder exists, it is the default (the user points at the files once);
    #    the digests are checked all the same.
    shutil.copytree(hand_cfg.mano_dir, stand_in_dataset["build_dir"])
    try:
        resolved, identity = resolve_hand_model(TrainConfig.from_yaml(config), url, log=lambda *_: None)
        assert resolved.hand.mano_dir == stand_in_dataset["build_dir"] and identity.to_json() == recorded
    finally:
        shutil.rmtree(stand_in_dataset["build_dir"])

    # 5. Evaluation loads the same model; the default one is refused.
    summary = run_evaluation_from_cli(config, result.checkpoint_path, url, tmp_path / "eval",
                                        mano_dir=hand_cfg.mano_dir)
    assert summary["num_samples"] == 8
    with pytest.raises(ValueError, match="hand model mismatch"):
        run_evaluation_from_cli(config, result.checkpoint_path, url, tmp_path / "eval-default")


def test_each_dataset_version_trains_its_own_full_run(tmp_path):
    """Two builds into one location: the second trains its full budget on the new data, in a run of its own."""
    from tests.training_fixtures import build_small_dataset
    from unihope.run_keys import dataset_version

    url, runs = str(tmp_path / "data"), tmp_path / "runs"
    config = small_train_config(tmp_path, max_steps=3)
    build_small_dataset(tmp_path, url, HandModelConfig(), num_sequences=1)
    first_version = dataset_version(url)
    first = run_training_in_runs_dir(config, url, runs)
    assert first.steps == 3 and first.out_dir.name.startswith(first_version)
    assert run_training_in_runs_dir(config, url, runs).metrics["train_steps"] == 3  # same data: resumed, done

    build_small_dataset(tmp_path, url, HandModelConfig(), num_sequences=2)  # the next night: one more sequence
    second_version = dataset_version(url)
    second = run_training_in_runs_dir(config, url, runs)
    assert second_version != first_version and second.out_dir != first.out_dir
    metrics = json.loads((second.out_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["dataset_version"] == second_version  # full budget, new data
    assert metrics["train_loss_first"] != json.loads((first.out_dir / "metrics.json").read_text())["train_loss_first"]
    assert json.loads((first.out_dir / "metrics.json").read_text())["dataset_version"] == first_version  # kept
    model = build_model(TrainConfig.from_yaml(config), build_hand_layer())
    assert load_checkpoint(first.checkpoint_path, model)[1].num_samples == 4
    state, stats = load_checkpoint(second.checkpoint_path, model)
    assert stats.num_samples == 8 and state.dataset_version == second_version  # the new split's statistics
    # A run folder named by hand refuses to resume on other data instead of training 0 steps.
    with pytest.raises(ValueError, match="dataset version"):
        run_training_from_cli(config, url, first.out_dir)


def test_train_cli_refuses_another_hand_model_in_one_line(tmp_path, stand_in_dataset):
    from typer.testing import CliRunner

    from unihope.cli import app

    config = small_train_config(tmp_path)
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--config", str(config), "--data", stand_in_dataset["url"],
                                  "--runs-dir", str(tmp_path / "runs")])
    assert refused.exit_code == 2
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hand model mismatch") and "--mano-dir" in lines[0]
    both = runner.invoke(app, ["train", "--config", str(config), "--data", stand_in_dataset["url"],
                               "--out", str(tmp_path / "a"), "--runs-dir", str(tmp_path / "b")])
    assert both.exit_code == 2 and "exactly one of --out" in both.output
