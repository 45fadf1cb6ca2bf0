"""Reader: paired augmentation keeps 2D/3D labels on both images, filters, splits, spawn-safe loader."""

from __future__ import annotations

import dataclasses
import pickle

import cv2
import numpy as np
import pytest
import torch

from unihope.storage.augment import AugmentConfig, rotate_hand
from unihope.storage.loader import make_loader
from unihope.storage.paired import PairedDataset
from unihope.storage.splits import split_of_sequence
from unihope.storage.schema import SAMPLE_FIELDS, SAMPLE_KEYS
from unihope.storage.writer import finalize, write_shard
from storage_fixtures import (
    STORAGE_ATTRS,
    box_keypoints,
    make_annotated,
    make_batch,
    make_keys,
    make_result,
    project,
)
from unihope.config import StorageConfig

GEOMETRY_ONLY = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, max_blur_sigma_px=0)
MARKER_JOINT = 8  # index finger tip
CFG = StorageConfig(shard_size=8)


def _write(url, annotated, results, shard_size=8):
    for shard_idx, start in enumerate(range(0, len(annotated), shard_size)):
        write_shard(url, shard_idx, annotated[start:start + shard_size], results[start:start + shard_size],
                    STORAGE_ATTRS, CFG)
    finalize(url, STORAGE_ATTRS, [])


def _with_marker(frame, crop_size_px=64):
    """Gray images with a red (occluded) / green (de-occluded) 3x3 marker on the marker joint."""
    u, v = np.round(frame.joints_2d[MARKER_JOINT]).astype(int)
    image = np.full((crop_size_px, crop_size_px, 3), 90, np.uint8)
    image[v - 1:v + 2, u - 1:u + 2] = (255, 0, 0)
    deocc = np.full((crop_size_px, crop_size_px, 3), 60, np.uint8)
    deocc[v - 1:v + 2, u - 1:u + 2] = (0, 255, 0)
    annotated = dataclasses.replace(frame, image=image,
                                    joints_2d=frame.joints_2d.copy())
    annotated.joints_2d[MARKER_JOINT] = (u, v)  # the marker's centre is the label
    result = dataclasses.replace(make_result(annotated), image_deoccluded=deocc)
    return annotated, result


def _marker_centre(image_chw: torch.Tensor, channel: int) -> np.ndarray | None:
    img = image_chw.numpy()
    others = [c for c in range(3) if c != channel]
    weight = np.clip(img[channel] - img[others].max(axis=0), 0, None)
    weight[weight < 0.3] = 0
    if weight.sum() < 1e-6:
        return None
    vs, us = np.mgrid[0:img.shape[1], 0:img.shape[2]]
    return np.array([(us * weight).sum(), (vs * weight).sum()]) / weight.sum()


def test_marker_follows_joint_in_both_images(tmp_path):
    keys = make_keys(2, 2)
    pairs = [_with_marker(make_annotated(key, 64)) for key in keys]
    _write(tmp_path, [a for a, _ in pairs], [r for _, r in pairs])
    dataset = PairedDataset(tmp_path, augment=GEOMETRY_ONLY, seed=3)
    num_checked, max_moved_px = 0, 0.0
    for index in range(len(dataset)):
        original = pairs[[a.frame.sample_key for a, _ in pairs].index(dataset[index]["sample_key"])][0]
        for epoch in range(6):
            sample = dataset[(index, epoch)]
            joint = sample["joints_2d"][MARKER_JOINT].numpy()
            if not (3 <= joint.min() and joint.max() <= 60):
                continue  # marker pushed out of the crop by this draw
            red = _marker_centre(sample["image"], 0)
            green = _marker_centre(sample["image_deoccluded"], 1)
            assert red is not None and green is not None
            assert np.linalg.norm(red - joint) < 0.5, (red, joint)
            assert np.linalg.norm(green - joint) < 0.5, (green, joint)
            max_moved_px = max(max_moved_px, float(np.linalg.norm(joint - original.joints_2d[MARKER_JOINT])))
            num_checked += 1
    assert num_checked >= 15
    assert max_moved_px > 10  # the augmentation really moved things


def test_2d_3d_labels_masks_stay_consistent(tmp_path):
    annotated, results = make_batch(make_keys(2, 4), crop_size_px=64)
    _write(tmp_path, annotated, results)
    dataset = PairedDataset(tmp_path, augment=GEOMETRY_ONLY, seed=1)
    plain = PairedDataset(tmp_path)
    by_key = {a.frame.sample_key: a for a in annotated}
    for index in range(len(dataset)):
        for epoch in range(3):
            sample = dataset[(index, epoch)]
            frame = by_key[sample["sample_key"]]
            K = sample["K"].numpy().astype(np.float64)
            # joints: 3D projected with the new K lands on the 2D labels
            np.testing.assert_allclose(project(sample["joints_3d"].numpy().astype(np.float64), K),
                                       sample["joints_2d"].numpy(), atol=2e-3)
            # object: posed box keypoints project onto the 2D keypoints
            pose = sample["object_pose"].numpy().astype(np.float64)
            keypoints_cam = box_keypoints(np.array([0.03, 0.02, 0.05])) @ pose[:, :3].T + pose[:, 3]
            np.testing.assert_allclose(project(keypoints_cam, K), sample["object_keypoints_2d"].numpy(), atol=2e-3)
            # the rotation is about the camera z axis
            R = pose[:, :3] @ frame.frame.object_pose[:, :3].astype(np.float64).T
            assert R[2, 2] == pytest.approx(1.0, abs=1e-5)
            # masks and images moved with the same pixel map M = K_aug R K^-1
            M = K @ R @ np.linalg.inv(frame.crop.K)
            warped_mask = cv2.warpAffine(frame.mask_object.astype(np.uint8), M[:2], (64, 64),
                                         flags=cv2.INTER_NEAREST) > 0
            mask = sample["mask_object"].numpy() > 0.5
            iou = (mask & warped_mask).sum() / max(1, (mask | warped_mask).sum())
            assert iou > 0.9
            warped_image = cv2.warpAffine(frame.image, M[:2], (64, 64), flags=cv2.INTER_LINEAR) / 255.0
            assert np.median(np.abs(sample["image"].numpy().transpose(1, 2, 0) - warped_image)) < 0.02
            # boxes from the augmented labels
            j2d = sample["joints_2d"].numpy()
            np.testing.assert_allclose(sample["hand_box_xyxy"].numpy(), [*j2d.min(0), *j2d.max(0)])
    # without augmentation the stored labels come back untouched
    sample = plain[0]
    frame = by_key[sample["sample_key"]]
    np.testing.assert_array_equal(sample["joints_2d"].numpy(), frame.joints_2d)
    np.testing.assert_array_equal(sample["K"].numpy(), frame.crop.K.astype(np.float32))
    np.testing.assert_array_equal(sample["image"].numpy(), frame.image.transpose(2, 0, 1) / np.float32(255))


def test_identical_colour_augmentation_on_both_images(tmp_path):
    annotated, _ = make_batch(make_keys(1, 4), crop_size_px=64)
    results = [dataclasses.replace(make_result(a), image_deoccluded=a.image.copy()) for a in annotated]
    _write(tmp_path, annotated, results)
    dataset = PairedDataset(tmp_path, augment=AugmentConfig(), seed=0)
    for index in range(len(dataset)):
        sample = dataset[(index, 1)]
        assert torch.equal(sample["image"], sample["image_deoccluded"])
        assert not torch.equal(sample["image"], dataset[(index, 2)]["image"])  # epochs draw anew
        assert torch.equal(sample["image"], dataset[(index, 1)]["image"])  # deterministic


@pytest.mark.parametrize("side", ["right", "left"])
def test_rotated_mano_parameters_reproduce_rotated_joints(side):
    from unihope.hand import HandLayer

    layer = HandLayer(side=side)
    rng = np.random.default_rng(7)
    pose = rng.normal(0, 0.4, (1, 48)).astype(np.float32)
    betas = rng.normal(0, 1, (1, 10)).astype(np.float32)
    trans = np.array([[0.05, -0.02, 0.55]], np.float32)
    _, joints = layer.forward_numpy(pose, betas, trans)
    angle = 1.1
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    new_pose, new_trans, new_joints = rotate_hand(pose[0], trans[0], joints[0], R)
    _, joints_from_params = layer.forward_numpy(new_pose[None], betas, new_trans[None])
    np.testing.assert_allclose(new_joints, joints[0] @ R.T, atol=1e-6)
    np.testing.assert_allclose(joints_from_params[0], new_joints, atol=2e-5)  # metres


def test_filters_and_sequence_split(tmp_path):
    keys = make_keys(20, 2)
    annotated, results = make_batch(keys, every_nth_without_result=4)
    annotated = [dataclasses.replace(a, visibility=0.1 * (i % 10)) for i, a in enumerate(annotated)]
    _write(tmp_path, annotated, results)
    everything = PairedDataset(tmp_path)
    assert len(everything) == 40
    kept = PairedDataset(tmp_path, keep_only=True)
    assert len(kept) == sum(r is not None and r.keep for r in results)
    assert all(bool(kept[i]["has_pair"]) for i in range(len(kept)))
    occluded = PairedDataset(tmp_path, max_visibility=0.45)
    assert len(occluded) == sum(a.visibility <= 0.45 for a in annotated) == 20
    assert PairedDataset(tmp_path, split="val").val_fraction == 0.1  # data.val_fraction's default
    train, val = PairedDataset(tmp_path, split="train", val_fraction=0.3), PairedDataset(tmp_path, split="val", val_fraction=0.3)
    train_keys = {train[i]["sample_key"] for i in range(len(train))}
    val_keys = {val[i]["sample_key"] for i in range(len(val))}
    assert train_keys.isdisjoint(val_keys) and train_keys | val_keys == set(keys)
    sequences = lambda ks: {"/".join(k.split("/")[:2]) for k in ks}  # noqa: E731
    assert sequences(train_keys).isdisjoint(sequences(val_keys))
    assert 2 <= len(sequences(val_keys)) <= 12
    assert all(split_of_sequence(seq, 0.3) == "val" for seq in sequences(val_keys))
    assert len(PairedDataset(tmp_path, split="val", val_fraction=0.0)) == 0
    with pytest.raises(ValueError, match="split must be one of"):
        PairedDataset(tmp_path, split="test")


def test_loader_with_spawned_workers(tmp_path):
    annotated, results = make_batch(make_keys(3, 4))
    _write(tmp_path, annotated, results, shard_size=5)
    dataset = PairedDataset(tmp_path, augment=AugmentConfig(), seed=5)
    assert dataset._view is None and len(pickle.dumps(dataset)) < 20_000  # pickles small, opens lazily
    loader = make_loader(dataset, batch_size=5, num_workers=2, shuffle=True, seed=0)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        epochs.append(batches)
        indices = torch.cat([b["index"] for b in batches]).tolist()
        assert sorted(indices) == list(range(12))
    first = epochs[0][0]
    assert set(first) == set(SAMPLE_KEYS)
    for key, (dtype, _, _) in SAMPLE_FIELDS.items():
        if dtype == "str":
            assert isinstance(first[key], list) and isinstance(first[key][0], str)
        else:
            assert first[key].dtype == getattr(torch, dtype), key
    assert first["image"].shape == (5, 3, 32, 32) and first["joints_3d"].shape == (5, 21, 3)
    # workers compute exactly what the main process computes for (index, epoch)
    for row, index in enumerate(first["index"].tolist()):
        expected = dataset[(index, 0)]
        assert torch.equal(first["image"][row], expected["image"])
        assert first["sample_key"][row] == expected["sample_key"]
    # the second epoch reshuffles and redraws the augmentation
    order = [torch.cat([b["index"] for b in batches]).tolist() for batches in epochs]
    assert order[0] != order[1]


def test_small_datasets_always_get_a_held_out_sequence():
    from unihope.storage.splits import SplitWarning, assign_splits

    keys = ["20200709-subject-01/20200709_141754", "20200709-subject-01/20200709_141841"]
    for fraction in (0.01, 0.1):
        with pytest.warns(SplitWarning, match="fell in 'val'"):
            splits = assign_splits(keys, fraction)
        assert sorted(splits.values()) == ["train", "val"]
    assert set(assign_splits(keys, 0.0).values()) == {"train"}
    assert assign_splits(keys[:1], 0.1) == {keys[0]: split_of_sequence(keys[0], 0.1)}


def test_batch_equals_single_samples_and_pickles_as_one_buffer(tmp_path):
    from multiprocessing.reduction import ForkingPickler

    annotated, results = make_batch(make_keys(2, 5), every_nth_without_result=3)
    _write(tmp_path, annotated, results, shard_size=4)  # a batch spanning three shards
    dataset = PairedDataset(tmp_path, augment=AugmentConfig(), seed=2)
    items = [(9, 1), (0, 1), (4, 0), (9, 2), (5, 3)]
    batch = dataset[items]
    assert list(batch) == list(SAMPLE_KEYS)
    assert batch["index"].tolist() == [9, 0, 4, 9, 5]
    for row, item in enumerate(items):
        single = dataset[item]
        for key in SAMPLE_KEYS:
            if key == "sample_key":
                assert batch[key][row] == single[key]
            else:
                assert torch.equal(batch[key][row], single[key]), key
    assert not torch.equal(batch["image"][0], batch["image"][3])  # same sample, other epoch: other draw
    # pickles as one buffer and comes back as a plain dict of equal tensors
    rebuilt = pickle.loads(ForkingPickler.dumps(batch))
    assert type(rebuilt) is dict and list(rebuilt) == list(SAMPLE_KEYS)
    for key in SAMPLE_KEYS:
        if key == "sample_key":
            assert rebuilt[key] == batch[key]
        else:
            assert rebuilt[key].dtype == batch[key].dtype and torch.equal(rebuilt[key], batch[key]), key
    # a value replaced after collation is pickled as itself
    batch["image"] = batch["image"] * 0
    assert float(pickle.loads(pickle.dumps(batch))["image"].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="at least one item"):
        dataset[[]]


def test_pair_colour_keeps_the_occluded_image_as_alone_and_no_blur_crosses_the_seam():
    from unihope.storage.augment import AugmentParams, _colour_pair

    rng = np.random.default_rng(0)
    pair = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    pair[1, :16] = 255  # a bright half next to the seam: a blur of the stack would bleed into image 0
    params = AugmentParams(0.0, 1.0, (0.0, 0.0), brightness=1.3, contrast=0.7, saturation=1.4, hue_turns=0.1,
                           blur_sigma_px=1.5)
    coloured = _colour_pair(pair.copy(), params)
    # the occluded image (the model's input) is coloured exactly as on its own
    np.testing.assert_array_equal(coloured[0], _colour_pair(pair[:1].copy(), params)[0])
    # the de-occluded image: turned upside down, its bright half leaves the seam; a blur across the
    # seam would change the result, a per-image blur (symmetric kernel and border) does not
    flipped = _colour_pair(np.stack([pair[0], pair[1, ::-1]]), params)
    np.testing.assert_array_equal(coloured[1], flipped[1, ::-1])
    assert not np.array_equal(coloured, pair)


@pytest.mark.parametrize("with_geometry", [False, True])
def test_pair_differing_in_a_patch_stays_identical_outside_it(with_geometry: bool):
    """Every colour parameter is drawn and applied once per pair: pixels equal in the pair stay equal."""
    import cv2

    from unihope.storage.augment import AugmentConfig, augment_pair_u8, geometry, sample_params

    S = 64
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    deoccluded = image.copy()
    patch = np.zeros((S, S), bool)
    patch[20:36, 24:44] = True
    deoccluded[patch] = (230, 40, 200)  # a bright patch: it moves the de-occluded image's mean a lot
    K = np.array([[120.0, 0.0, 31.5], [0.0, 120.0, 31.5], [0.0, 0.0, 1.0]])
    sample = {"image": image, "image_deoccluded": deoccluded, "mask_hand": patch, "mask_object": patch,
              "joints_2d": np.full((21, 2), 30.0), "object_keypoints_2d": np.full((21, 2), 30.0),
              "joints_3d": np.full((21, 3), 0.5), "mano_pose": np.zeros(48, np.float32),
              "mano_trans": np.zeros(3, np.float32), "object_pose": np.hstack([np.eye(3), [[0.0], [0.0], [0.5]]]),
              "K": K}  # fmt: skip
    cfg = AugmentConfig() if with_geometry else AugmentConfig(scale_jitter=0, center_jitter=0, max_rotation_deg=0)
    for seed in range(6):
        params = sample_params(cfg, np.random.default_rng(seed), S)
        out = augment_pair_u8(sample, params)
        # where the patch went, widened by what the bilinear warp and the blur spread (<= 3 px)
        moved = patch.astype(np.uint8)
        if with_geometry:
            M, _, _ = geometry(params, K, S)
            moved = cv2.warpAffine(moved, M[:2], (S, S), flags=cv2.INTER_LINEAR)
            moved = np.maximum(moved, cv2.warpAffine(patch.astype(np.uint8), M[:2], (S, S), flags=cv2.INTER_NEAREST))
        reach = cv2.dilate((moved > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert (~reach).sum() > S * S / 4
        np.testing.assert_array_equal(out["image"][~reach], out["image_deoccluded"][~reach])
        assert not np.array_equal(out["image"], image)  # the draw did change the colours


def test_loader_reads_its_version_across_a_rebuild_mid_epoch(tmp_path):
    """A training run's loader keeps reading its version when the next build commits mid-epoch:
    workers started after the commit (a new loader) read identical bytes; gc keeps the pinned version."""
    from unihope.storage.versions import current_version, gc, pin

    annotated, results = make_batch(make_keys(3, 4))
    _write(tmp_path, annotated, results, shard_size=4)
    version = current_version(tmp_path)
    dataset = PairedDataset(tmp_path, augment=AugmentConfig(), seed=3)
    assert dataset.version_id == version
    reference = list(make_loader(dataset, batch_size=3, num_workers=0, shuffle=True, seed=1))
    with pin(tmp_path, version, owner="test-train", ttl_s=600):
        loader = make_loader(dataset, batch_size=3, num_workers=1, shuffle=True, seed=1)
        got = []
        for batch in loader:
            got.append(batch)
            if len(got) == 2:
                break
        del loader  # the workers go away with the loader
        # the next build: every image changes, every shard gets a new folder, a new version is committed
        changed = [dataclasses.replace(a, image=255 - a.image) for a in annotated]
        _write(tmp_path, changed, results, shard_size=4)
        assert current_version(tmp_path) != version
        assert gc(tmp_path, keep=1).removed_versions == ()  # pinned: kept
        loader = make_loader(dataset, batch_size=3, num_workers=1, shuffle=True, seed=1)  # fresh workers, epoch 0
        got.extend(list(loader)[2:])
    assert len(got) == len(reference)
    for expected, actual in zip(reference, got):
        assert actual["sample_key"] == expected["sample_key"]
        for key in SAMPLE_KEYS:
            if key != "sample_key":
                assert torch.equal(actual[key], expected[key]), key
    newest = PairedDataset(tmp_path, augment=AugmentConfig(), seed=3)[(0, 0)]
    assert not torch.equal(newest["image"], dataset[(0, 0)]["image"])
    assert gc(tmp_path, keep=1).removed_versions == (version,)  # released: removed
