"""What a user meets first: missing data is an error, splits never empty by surprise, the Python API, official splits, xarray."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unihope.cli import app
from unihope.config import StorageConfig
from unihope.storage.manifest import StoreError
from unihope.storage.writer import finalize, write_shard
from storage_fixtures import STORAGE_ATTRS, make_batch

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# DexYCB keys whose official splits are known by hand (sequence index i = position among a subject's
# sequences; s0 holds i % 5 == 4 out, val = subjects 01-02, test = subjects 03-10; s2 val = camera 7).
SUBJECT_01, SUBJECT_03 = "20200709-subject-01", "20200820-subject-03"
SERIAL_0, SERIAL_6 = "836212060125", "932122061900"


def _dexycb_keys() -> list[str]:
    keys = [f"{SUBJECT_01}/20200709_1{seq:05d}/{serial}/000000" for seq in range(5) for serial in (SERIAL_0, SERIAL_6)]
    return keys + [f"{SUBJECT_03}/20200820_1{seq:05d}/{SERIAL_0}/000000" for seq in range(5)]


def _write(url, keys: list[str], source: dict, shard_size: int = 6) -> None:
    annotated, results = make_batch(keys, every_nth_without_result=4)
    # visibility spread over the four occlusion bins, grasp alternating: filters have something to find
    annotated = [dataclasses.replace(a, visibility=0.1 + 0.2 * (i % 4), occlusion_bin=i % 4,
                                     grasp=dataclasses.replace(a.grasp, is_grasping=i % 2 == 0))
                 for i, a in enumerate(annotated)]
    attrs = {**STORAGE_ATTRS, "config": {**STORAGE_ATTRS["config"], "source": source}}
    for shard_idx, start in enumerate(range(0, len(keys), shard_size)):
        write_shard(url, shard_idx, annotated[start:start + shard_size], results[start:start + shard_size], attrs,
                    StorageConfig(shard_size=shard_size))
    finalize(url, attrs, [])


@pytest.fixture(scope="module")
def dexycb_store(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("api") / "demo_out" / "dataset")
    _write(url, _dexycb_keys(), {"kind": "dexycb", "root": "/nowhere/DexYCB", "split": "all"})
    return url


# ---- 2. opening data that is not there is an error --------------------------------------------

def test_opening_a_missing_path_or_a_foreign_folder_raises_naming_the_path(tmp_path):
    from unihope.api import load_dataset
    from unihope.storage.paired import PairedDataset
    from unihope.storage.view import open_dataset

    missing = tmp_path / "no-such-dataset"
    foreign = tmp_path / "DexYCB"
    (foreign / "20200709-subject-01").mkdir(parents=True)
    for opener in (open_dataset, PairedDataset, load_dataset):
        with pytest.raises(StoreError, match=f"no dataset at {re.escape(str(missing))}: the path does not exist"):
            opener(missing)
        with pytest.raises(StoreError, match=f"{re.escape(str(foreign))} is not a unihope dataset: expected "
                                             r"manifest.json, versions/, shards/"):
            opener(foreign)
    # a first build whose first shard has not committed yet is a dataset, empty for now
    (tmp_path / "in-progress" / "shards").mkdir(parents=True)
    assert len(open_dataset(tmp_path / "in-progress")) == 0


@pytest.mark.parametrize("verb", [["gc", "--keep", "1"], ["gc", "--keep", "1", "--dry-run"], ["ls-versions"]])
def test_data_verbs_on_a_missing_path_fail_in_one_line(tmp_path, verb):
    result = runner.invoke(app, [*verb, "--data", str(tmp_path / "typo")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"no dataset at {tmp_path / 'typo'}: the path does not exist" in lines[0], lines


# ---- 1. splits never come out empty by surprise ------------------------------------------------

def test_held_out_split_moves_a_sequence_rather_than_leave_a_side_empty():
    from unihope.storage.splits import SplitWarning, assign_splits, split_of_sequence

    keys = ["train/ABF10", "train/BB10"]  # the 2-sequence HO3D build: both hash below 0.25
    assert {split_of_sequence(key, 0.25) for key in keys} == {"val"}
    with pytest.warns(SplitWarning, match=r"no sequence of 2 fell in 'train' at val_fraction=0.25"):
        assert sorted(assign_splits(keys, 0.25).values()) == ["train", "val"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(assign_splits(keys, 0.0).values()) == {"train"}  # no held-out split asked: none made, no warning
        assert len(assign_splits(keys[:1], 0.25)) == 1  # one sequence cannot be split; training refuses it below


@pytest.fixture(scope="module")
def smallest_builds(tmp_path_factory) -> dict[str, str]:
    """The smallest build of each source: HO3D with 2 sequences, DexYCB with 1 (4 frames each, rendered)."""
    from tests.training_fixtures import build_small_dataset
    from unihope.config import HandModelConfig

    work = tmp_path_factory.mktemp("smallest")
    urls = {"ho3d": str(work / "ho3d"), "dexycb": str(work / "dexycb")}
    build_small_dataset(work, urls["ho3d"], HandModelConfig(), num_sequences=2, layout="ho3d")
    build_small_dataset(work, urls["dexycb"], HandModelConfig(), num_sequences=1)
    return urls


def test_smallest_builds_train_on_both_sides_or_stop_before_training(smallest_builds, tmp_path):
    from unihope.storage.splits import SplitWarning
    from unihope.train.data import open_paired_dataset
    from unihope.train_config import DataConfig, TrainConfig

    cfg = TrainConfig(data=DataConfig(val_fraction=0.25))
    with pytest.warns(SplitWarning):
        train = open_paired_dataset(smallest_builds["ho3d"], "train", cfg, None)
        val = open_paired_dataset(smallest_builds["ho3d"], "val", cfg, None)
    assert len(train) == len(val) == 4  # one whole sequence each side
    with pytest.raises(ValueError, match=r"holds no sample \(1 sequence\(s\): [01] train, [01] val at "
                                         r"data.val_fraction=0.25\); build more sequences"):
        for split in ("train", "val"):
            open_paired_dataset(smallest_builds["dexycb"], split, cfg, None)
    # the command stops in one line before a run folder holds anything
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", smallest_builds["dexycb"], "--out", str(out),
                                 "--set", "data.val_fraction=0.25"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "data.val_fraction=0.25" in lines[0], result.output
    assert not (out / "checkpoints").exists()


# ---- 3. the Python API -------------------------------------------------------------------------

def test_load_dataset_view_reads_like_the_training_reader(dexycb_store):
    import unihope
    from unihope.storage.paired import PairedDataset

    ds = unihope.load_dataset(dexycb_store, split="train", val_fraction=0.3)
    training = PairedDataset(dexycb_store, split="train", val_fraction=0.3)
    assert len(ds) == len(training) > 0 and ds.version_id == training.version_id != ""
    keys = [sample["sample_key"] for sample in ds]
    assert keys == [training[i]["sample_key"] for i in range(len(training))]  # the same samples, same order
    text = repr(ds)
    assert f"version={ds.version_id!r}" in text and "split='train'" in text and f"num_samples={len(ds)}" in text
    assert "s0_train" in text and "image: uint8[32, 32, 3]" in text and "joints_3d: float32[21, 3]" in text
    # integer indexing, negative too, and slices
    first, last = ds[0], ds[-1]
    assert first["sample_key"] == keys[0] and last["sample_key"] == keys[-1]
    assert first["image"].shape == (32, 32, 3) and first["image"].dtype == np.uint8
    assert [s["sample_key"] for s in ds[1:4]] == keys[1:4] and len(ds[::2]) == len(keys[::2])
    with pytest.raises(IndexError):
        ds[len(ds)]
    # filters on the stored labels
    occluded = ds.filter(occlusion_bin=[0, 1])
    assert len(occluded) > 0 and set(occluded.column("occlusion_bin").tolist()) <= {0, 1}
    grasping = ds.filter(grasp=True)
    assert 0 < len(grasping) < len(ds) and all(bool(s["grasp"]) for s in grasping)
    assert [s["sample_key"] for s in ds.select([2, 0])] == [keys[2], keys[0]]
    # a version by its id or a unique prefix of it
    assert unihope.load_dataset(dexycb_store, version=ds.version_id[:6]).version_id == ds.version_id
    # the torch form is the training reader over exactly the filtered samples
    as_torch = occluded.with_format("torch")
    assert isinstance(as_torch, torch.utils.data.Dataset) and len(as_torch) == len(occluded)
    item = as_torch[0]
    assert item["sample_key"] == occluded[0]["sample_key"]
    assert torch.equal(item["image"], torch.from_numpy(occluded[0]["image"].copy()).permute(2, 0, 1).float() / 255)


def test_readme_python_example_runs(dexycb_store, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Python API\n.*?```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no '## Python API' section with a python block"
    code = block.group(1)
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) <= 5
    monkeypatch.chdir(Path(dexycb_store).parent.parent)  # the example reads demo_out/dataset
    exec(compile(code, "README.md", "exec"), {})
    assert "unihope.Dataset(" in capsys.readouterr().out


# ---- 5. official splits by name ----------------------------------------------------------------

def test_official_dexycb_splits_by_name(dexycb_store):
    from unihope.api import load_dataset

    def keys(split):
        return set(load_dataset(dexycb_store, split=split).column("sample_key").tolist())

    everything = set(_dexycb_keys())
    held_out = {k for k in everything if "_100004/" in k}  # sequence index 4 of each subject
    assert keys("s0_val") == {k for k in held_out if k.startswith(SUBJECT_01)}
    assert keys("s0_test") == {k for k in held_out if k.startswith(SUBJECT_03)}
    assert keys("s0_train") == everything - held_out
    assert keys("s2_val") == {k for k in everything if SERIAL_6 in k} and keys("s2_test") == set()
    assert keys("s1_train") == everything
    assert keys("s3_train") == everything  # object index i // 5 == 0 for all
    with pytest.raises(ValueError, match="'ho3d_train' is a ho3d split, but this dataset was built from dexycb"):
        load_dataset(dexycb_store, split="ho3d_train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset(dexycb_store, split="s4_train")


def test_official_dexycb_split_indices_come_from_the_source_tree_when_present(tmp_path):
    """A build that kept two of a subject's five sequences: only the tree knows that the second is index 4."""
    from unihope.api import load_dataset

    tree = tmp_path / "DexYCB"
    for seq in range(5):
        (tree / SUBJECT_01 / f"20200709_1{seq:05d}").mkdir(parents=True)
    keys = [f"{SUBJECT_01}/20200709_1{seq:05d}/{SERIAL_0}/000000" for seq in (1, 4)]
    _write(tmp_path / "with-tree", keys, {"kind": "dexycb", "root": str(tree), "split": "all"})
    assert load_dataset(tmp_path / "with-tree", split="s0_val").column("sample_key").tolist() == keys[1:]
    # without the tree, a build of part of DexYCB cannot place its sequences: refused, not guessed
    _write(tmp_path / "part", keys, {"kind": "dexycb", "root": str(tmp_path / "gone"), "split": "s1_train"})
    with pytest.raises(ValueError, match="the build read split 's1_train' of .*gone, which is not on this machine"):
        load_dataset(tmp_path / "part", split="s0_val")


def test_official_ho3d_splits_by_name(tmp_path):
    from unihope.api import load_dataset

    keys = [f"{folder}/{seq}/{frame:04d}" for folder, seq in (("train", "ABF10"), ("train", "BB10"), ("evaluation", "SM1"))
            for frame in range(2)]
    _write(tmp_path, keys, {"kind": "ho3d", "root": "/nowhere/HO3D_v2", "split": "all"})
    assert set(load_dataset(tmp_path, split="ho3d_evaluation").column("sample_key")) == set(keys[4:])
    assert set(load_dataset(tmp_path, split="ho3d_train").column("sample_key")) == set(keys[:4])
    with pytest.raises(ValueError, match="'s0_train' is a dexycb split"):
        load_dataset(tmp_path, split="s0_train")


# ---- 4. standard readers: xarray ---------------------------------------------------------------

def test_open_xarray_is_one_table_with_sample_key_coordinate_and_text(dexycb_store):
    import xarray as xr

    import unihope
    from unihope.storage.view import open_dataset

    table = unihope.open_xarray(dexycb_store)
    view = open_dataset(dexycb_store)
    assert isinstance(table, xr.Dataset) and table.sizes["sample"] == len(view) == 15
    assert table["sample_key"].dims == ("sample",) and "sample_key" in table.coords
    assert table["sample_key"].values.tolist() == view.column("sample_key").tolist()
    one = table.sel(sample_key=view.column("sample_key")[7])
    np.testing.assert_array_equal(one["joints_3d"].values, view.sample(7)["joints_3d"])
    assert table["sequence_key"].dims == ("sample",)
    assert table["object_name"].values.tolist() == view.column("object_name").tolist()
    assert table["image"].dims == ("sample", "y", "x", "rgb")
