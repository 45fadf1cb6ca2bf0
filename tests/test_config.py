"""Config models: upstream defaults, symmetric YAML round trip, errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from unihope.config import ConfigError, DeocclusionConfig, GraspConfig, PipelineConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_upstream_values():
    cfg = PipelineConfig()
    assert cfg.grasp.rre_threshold_deg == 5.0
    assert cfg.grasp.rte_threshold_m == 0.05
    assert cfg.crop.size_px == 128
    assert cfg.crop.hand_box_scale == 1.5 and cfg.crop.object_box_scale == 1.5
    assert cfg.deocclusion.max_visibility == 0.9
    assert cfg.deocclusion.controlnet.num_inference_steps == 50
    assert cfg.deocclusion.controlnet.guidance_scale == 9.0
    assert cfg.render.occlusion_bin_edges == (0.25, 0.5, 0.75)
    assert cfg.render.feature_downsample == 4


def test_yaml_round_trip_is_symmetric():
    cfg = PipelineConfig(grasp=GraspConfig(rre_threshold_deg=7.5), deocclusion=DeocclusionConfig(beta_policy="search"))
    assert PipelineConfig.from_yaml(cfg.to_yaml()) == cfg


def test_unknown_key_fails_naming_it():
    with pytest.raises(ConfigError, match=r"grasp\.rre_treshold_deg"):
        PipelineConfig.from_yaml("grasp:\n  rre_treshold_deg: 5\n")


def test_invalid_values_fail_before_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("deocclusion:\n  beta_min: 0.9\n  beta_max: 0.4\n")
    with pytest.raises(ConfigError, match="beta_min"):
        PipelineConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="source.root"):
        PipelineConfig.from_yaml("source:\n  kind: dexycb\n")
    with pytest.raises(ConfigError, match="not found"):
        PipelineConfig.from_yaml(tmp_path / "missing.yaml")


def test_stage_hash_changes_only_for_the_changed_stage():
    base = PipelineConfig()
    changed = PipelineConfig(deocclusion=DeocclusionConfig(beta_fixed=0.7))
    assert base.deocclusion.config_hash() != changed.deocclusion.config_hash()
    assert base.grasp.config_hash() == changed.grasp.config_hash()
    assert base.crop.config_hash() == changed.crop.config_hash()


def test_shipped_pipeline_configs_load():
    # train_*.yaml are TrainConfig (tests/test_training.py), deoccluder_*.yaml DeoccluderTrainConfig
    # (tests/test_deoccluder_training.py); every other shipped YAML is a pipeline config
    paths = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith(("train", "deoccluder")))
    assert paths, "configs/ must ship at least one pipeline config"
    for path in paths:
        cfg = PipelineConfig.from_yaml(path)
        assert PipelineConfig.from_yaml(cfg.to_yaml()) == cfg


def test_one_held_out_split_share_and_where_the_old_field_went(tmp_path):
    # storage.val_fraction (a build-time default the training then overrode) is gone: the training's
    # data.val_fraction is the one field, with the reader's default.
    from unihope.storage.splits import DEFAULT_VAL_FRACTION
    from unihope.train_config import DataConfig

    assert DataConfig().val_fraction == DEFAULT_VAL_FRACTION == 0.1
    old = tmp_path / "old.yaml"
    old.write_text("storage:\n  shard_size: 64\n  val_fraction: 0.2\n")
    with pytest.raises(ConfigError, match=r"storage.val_fraction was removed.*set data.val_fraction in the training config"):
        PipelineConfig.from_yaml(old)
