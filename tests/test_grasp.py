"""Grasp labels (RRE/RTE rule, grouping, overrides) and the crop's mesh rule (boxes, affine, intrinsics, skips).

UniHOPE's (default) crop rule is tested against an independent implementation in tests/test_crop.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from unihope.storage.schema import Crop, FrameRecord, GraspLabel, Skip, SkipReason
from unihope.config import CropConfig, GraspConfig
from unihope.crop import apply_affine, compute_crop
from unihope.grasp import label_grasps, load_grasp_overrides, relative_pose_errors
from unihope.render.camera import project_points

K_FULL = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])


def pose(rotvec=(0.0, 0.0, 0.0), t_m=(0.0, 0.0, 0.5)) -> np.ndarray:
    T = np.zeros((3, 4))
    T[:, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:, 3] = t_m
    return T


def make_frame(
    key: str = "s/seq/cam/000000",
    sequence_key: str = "s/seq",
    serial: str = "cam",
    frame_idx: int = 0,
    object_pose: np.ndarray | None = None,
    joints_3d: np.ndarray | None = None,
    K: np.ndarray = K_FULL,
) -> FrameRecord:
    joints_3d = np.zeros((21, 3)) + [0.0, 0.0, 0.5] if joints_3d is None else joints_3d
    return FrameRecord(
        sample_key=key,
        dataset="dexycb",
        sequence_key=sequence_key,
        serial=serial,
        frame_idx=frame_idx,
        image_path="",
        depth_path="",
        image_size_wh=(640, 480),
        K=K,
        hand_side="right",
        mano_pose=np.zeros(48, np.float32),
        mano_betas=np.zeros(10, np.float32),
        mano_trans=np.zeros(3, np.float32),
        joints_3d=joints_3d.astype(np.float32),
        joints_2d=project_points(joints_3d, K).astype(np.float32),
        object_id=1,
        object_name="002_master_chef_can",
        object_mesh_path="",
        object_pose=(pose() if object_pose is None else object_pose).astype(np.float32),
    )


# --- RRE / RTE -------------------------------------------------------------------------------------------


def test_relative_pose_errors_of_known_motions():
    T_ref = pose(rotvec=(0.3, -0.2, 0.1), t_m=(0.1, -0.05, 0.6))
    R_ref = T_ref[:, :3]
    R_z90 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    R_x30 = Rotation.from_euler("x", 30, degrees=True).as_matrix()
    cur = np.stack(
        [
            T_ref,  # no motion
            np.hstack([R_z90 @ R_ref, T_ref[:, 3:]]),  # 90 deg about z (camera frame)
            np.hstack([R_ref, T_ref[:, 3:] + [[0.0], [0.03], [0.0]]]),  # 3 cm shift
            np.hstack([R_ref @ R_x30, T_ref[:, 3:] + [[0.02], [0.0], [-0.01]]]),  # 30 deg about object x + shift
        ]
    )
    rre_deg, rte_m = relative_pose_errors(T_ref, cur)
    assert rre_deg.shape == (4,) and rte_m.shape == (4,)
    np.testing.assert_allclose(rre_deg, [0.0, 90.0, 0.0, 30.0], atol=1e-5)
    np.testing.assert_allclose(rte_m, [0.0, 0.0, 0.03, np.hypot(0.02, 0.01)], atol=1e-9)


def test_relative_pose_errors_match_the_4x4_definition():
    rng = np.random.default_rng(0)
    T_ref = pose(rotvec=rng.normal(size=3), t_m=rng.normal(size=3))
    cur = np.stack([pose(rotvec=rng.normal(size=3), t_m=rng.normal(size=3)) for _ in range(50)])
    rre_deg, rte_m = relative_pose_errors(T_ref, cur)
    to4 = lambda T: np.vstack([T, [0, 0, 0, 1]])  # noqa: E731
    for row, T_cur in enumerate(cur):
        T = np.linalg.inv(to4(T_cur)) @ to4(T_ref)  # REFERENCE.md: inv(T_cur) @ T_init
        expected_deg = np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1)))
        assert rre_deg[row] == pytest.approx(expected_deg, abs=1e-6)
        assert rte_m[row] == pytest.approx(np.linalg.norm(T[:3, 3]), abs=1e-9)
        assert rte_m[row] == pytest.approx(np.linalg.norm(T_ref[:, 3] - T_cur[:, 3]), abs=1e-9)
    # 180 degrees is the top of the range (arccos clip)
    flipped = np.hstack([Rotation.from_euler("y", 180, degrees=True).as_matrix() @ T_ref[:, :3], T_ref[:, 3:]])
    assert relative_pose_errors(T_ref, flipped[None])[0][0] == pytest.approx(180.0, abs=1e-4)


def test_relative_pose_errors_rejects_bad_input():
    with pytest.raises(ValueError, match="T_cur"):
        relative_pose_errors(pose(), pose())
    with pytest.raises(ValueError, match="finite"):
        relative_pose_errors(pose(), np.full((1, 3, 4), np.nan))


# --- label_grasps ----------------------------------------------------------------------------------------


def sequence_frames(serial: str, start_idx: int, motions: list[tuple[float, float]]) -> list[FrameRecord]:
    """Frames whose object turns by motions[i][0] deg about z and moves by motions[i][1] m along x."""
    T0 = pose(rotvec=(0.1, 0.2, 0.3), t_m=(0.0, 0.0, 0.7))
    frames = []
    for offset, (angle_deg, shift_m) in enumerate(motions):
        R = Rotation.from_euler("z", angle_deg, degrees=True).as_matrix() @ T0[:, :3]
        T = np.hstack([R, T0[:, 3:] + [[shift_m], [0.0], [0.0]]])
        idx = start_idx + offset
        frames.append(make_frame(f"s/seq/{serial}/{idx:06d}", serial=serial, frame_idx=idx, object_pose=T))
    return frames


def test_label_grasps_rule_groups_and_order():
    cam_a = sequence_frames("a", 3, [(0, 0), (4.9, 0.0), (5.2, 0.0), (0, 0.049), (0, 0.051), (20, 0.2)])
    cam_b = sequence_frames("b", 0, [(90, 0.0), (90, 0.0), (0, 0.0)])  # reference already rotated
    frames = [cam_a[4], cam_b[2], cam_a[0], cam_a[2], cam_b[0], cam_a[5], cam_a[1], cam_b[1], cam_a[3]]
    labels = label_grasps(frames, GraspConfig())
    assert [label.sample_key for label in labels] == [frame.sample_key for frame in frames]
    by_key = {label.sample_key: label for label in labels}
    expect_a = [False, False, True, False, True, True]
    for frame, expected in zip(cam_a, expect_a, strict=True):
        label = by_key[frame.sample_key]
        assert label.is_grasping is expected, frame.sample_key
        assert label.reference_key == "s/seq/a/000003"
        assert label.source == "rule"
    assert by_key["s/seq/a/000005"].rre_deg == pytest.approx(5.2, abs=1e-4)
    assert by_key["s/seq/a/000007"].rte_m == pytest.approx(0.051, abs=1e-6)
    assert [by_key[f.sample_key].is_grasping for f in cam_b] == [False, False, True]
    assert by_key["s/seq/b/000002"].rre_deg == pytest.approx(90.0, abs=1e-4)
    assert all(label.reference_key == "s/seq/b/000000" for label in labels if "/b/" in label.sample_key)


def test_label_grasps_thresholds_come_from_config():
    frames = sequence_frames("a", 0, [(0, 0), (7, 0.0), (0, 0.08)])
    labels = label_grasps(frames, GraspConfig(rre_threshold_deg=10.0, rte_threshold_m=0.1))
    assert [label.is_grasping for label in labels] == [False, False, False]
    labels = label_grasps(frames, GraspConfig(rre_threshold_deg=6.0, rte_threshold_m=0.07))
    assert [label.is_grasping for label in labels] == [False, True, True]


def test_label_grasps_overrides_from_mapping_and_file(tmp_path: Path):
    frames = sequence_frames("a", 0, [(0, 0), (30, 0.0), (0, 0.0)])
    overrides = {frames[1].sample_key: False, frames[2].sample_key: True, "not/in/batch": True}
    labels = label_grasps(frames, GraspConfig(), overrides=overrides)
    assert [label.is_grasping for label in labels] == [False, False, True]
    assert [label.source for label in labels] == ["rule", "override", "override"]
    assert labels[1].rre_deg == pytest.approx(30.0, abs=1e-4)  # errors still reported

    path = tmp_path / "labels.json"
    path.write_text(json.dumps(overrides))
    from_file = label_grasps(frames, GraspConfig(label_override_path=path))
    assert [(x.is_grasping, x.source) for x in from_file] == [(x.is_grasping, x.source) for x in labels]
    assert load_grasp_overrides(path) == overrides

    path.write_text(json.dumps({frames[0].sample_key: "yes"}))
    with pytest.raises(ValueError, match="true or false"):
        load_grasp_overrides(path)
    with pytest.raises(ValueError, match="not found"):
        load_grasp_overrides(tmp_path / "missing.json")


def test_label_grasps_rejects_duplicate_frames():
    frames = sequence_frames("a", 0, [(0, 0), (1, 0)])
    with pytest.raises(ValueError, match="more than once"):
        label_grasps([frames[0], frames[1], frames[0]], GraspConfig())


# --- crop ------------------------------------------------------------------------------------------------


def cloud(centre_m, half_m, n=200, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, size=(n, 3)) * half_m + centre_m
    points[:8] = np.array(centre_m) + np.array(half_m) * np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, 8).T
    return points


def grasp_for(frame: FrameRecord, is_grasping: bool) -> GraspLabel:
    return GraspLabel(frame.sample_key, 0.0, 0.0, is_grasping, frame.sample_key)


@pytest.mark.parametrize("size_px", [128, 256])
def test_crop_affine_agrees_with_crop_intrinsics(size_px: int):
    rng = np.random.default_rng(1)
    joints_3d = rng.normal(size=(21, 3)) * 0.03 + [0.05, -0.02, 0.55]
    frame = make_frame(joints_3d=joints_3d)
    hand = cloud((0.05, -0.02, 0.55), (0.06, 0.05, 0.03))
    crop = compute_crop(frame, grasp_for(frame, False), CropConfig(rule="mesh", size_px=size_px), hand, None)
    assert isinstance(crop, Crop)
    via_K = project_points(frame.joints_3d, crop.K)
    via_affine = apply_affine(frame.joints_2d, crop.affine)
    np.testing.assert_allclose(via_K, via_affine, atol=1e-3)
    # the square box is the hand box x1.5 (its larger side), centred on it
    hand_uv = project_points(hand, K_FULL)
    lo, hi = hand_uv.min(0), hand_uv.max(0)
    side = 1.5 * (hi - lo).max()
    np.testing.assert_allclose(crop.box_xyxy, np.r_[(lo + hi) / 2 - side / 2, (lo + hi) / 2 + side / 2], atol=1e-9)
    # box edges map to the outer edges of the crop's first / last pixels
    np.testing.assert_allclose(apply_affine(crop.box_xyxy.reshape(2, 2), crop.affine), [[-0.5, -0.5], [size_px - 0.5] * 2])


def test_crop_affine_is_what_warpaffine_applies():
    frame = make_frame()
    hand = cloud((0.0, 0.0, 0.5), (0.05, 0.05, 0.02))
    crop = compute_crop(frame, grasp_for(frame, False), CropConfig(rule="mesh", size_px=128), hand, None)
    u, v = 331.3, 246.6
    ys, xs = np.mgrid[:480, :640]
    image = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * 6.0**2)).astype(np.float32)  # smooth blob at (u, v)
    warped = cv2.warpAffine(image, crop.affine, (128, 128), flags=cv2.INTER_LINEAR)
    ys, xs = np.mgrid[:128, :128]
    centroid = np.array([(warped * xs).sum(), (warped * ys).sum()]) / warped.sum()
    np.testing.assert_allclose(centroid, apply_affine(np.array([u, v]), crop.affine), atol=0.05)


def test_crop_includes_object_only_when_grasping():
    frame = make_frame()
    hand = cloud((0.0, 0.0, 0.5), (0.04, 0.04, 0.02))
    obj = cloud((0.12, 0.05, 0.5), (0.03, 0.03, 0.03), seed=3)
    free = compute_crop(frame, grasp_for(frame, False), CropConfig(rule="mesh"), hand, obj)
    held = compute_crop(frame, grasp_for(frame, True), CropConfig(rule="mesh"), hand, obj)
    assert isinstance(free, Crop) and isinstance(held, Crop)
    obj_uv = project_points(obj, K_FULL)
    obj_lo, obj_hi = obj_uv.min(0), obj_uv.max(0)
    obj_box = np.r_[(obj_lo + obj_hi) / 2 - 0.75 * (obj_hi - obj_lo), (obj_lo + obj_hi) / 2 + 0.75 * (obj_hi - obj_lo)]
    held_box = held.box_xyxy
    assert (held_box[:2] <= obj_box[:2] + 1e-9).all() and (held_box[2:] >= obj_box[2:] - 1e-9).all()
    assert free.box_xyxy[2] < obj_box[2]  # the free-hand crop does not stretch to the object
    assert held.box_xyxy[2] - held.box_xyxy[0] > free.box_xyxy[2] - free.box_xyxy[0]


def test_crop_skips_with_reasons():
    frame = make_frame()
    cfg = CropConfig(rule="mesh")
    grasp = grasp_for(frame, True)
    hand = cloud((0.0, 0.0, 0.5), (0.04, 0.04, 0.02))
    obj = cloud((0.05, 0.0, 0.5), (0.03, 0.03, 0.03))

    outside = compute_crop(frame, grasp, cfg, hand + [1.0, 0.0, 0.0], obj)  # 1 m to the right at 0.5 m depth
    assert isinstance(outside, Skip) and outside.reason is SkipReason.HAND_OUTSIDE_IMAGE
    half_out = hand + [0.26, 0.0, 0.0]  # box centre at u = 632: 58% of the box inside the image
    assert isinstance(compute_crop(frame, grasp, cfg, half_out, obj), Crop)
    mostly_out = hand + [0.30, 0.0, 0.0]
    assert compute_crop(frame, grasp, cfg, mostly_out, obj).reason is SkipReason.HAND_OUTSIDE_IMAGE

    tiny = cloud((0.0, 0.0, 5.0), (0.002, 0.002, 0.002))  # ~0.5 px at 5 m
    assert compute_crop(frame, grasp, cfg, tiny, obj).reason is SkipReason.DEGENERATE_POSE
    nan_hand = hand.copy()
    nan_hand[5, 1] = np.nan
    assert compute_crop(frame, grasp, cfg, nan_hand, obj).reason is SkipReason.DEGENERATE_POSE
    behind = hand.copy()
    behind[0, 2] = -0.1
    assert compute_crop(frame, grasp, cfg, behind, obj).reason is SkipReason.DEGENERATE_POSE
    nan_obj = obj.copy()
    nan_obj[0] = np.inf
    assert compute_crop(frame, grasp, cfg, hand, nan_obj).reason is SkipReason.DEGENERATE_POSE
    assert isinstance(compute_crop(frame, grasp_for(frame, False), cfg, hand, nan_obj), Crop)  # object unused
    with pytest.raises(ValueError, match="does not belong"):
        compute_crop(frame, grasp_for(make_frame(key="other"), True), cfg, hand, obj)


# --- against the synthetic source's truth ------------------------------------------------------------------


def load_synthetic_frames(root: Path) -> list[FrameRecord]:
    from unihope.config import HandModelConfig, SourceConfig
    from unihope.sources import open_source

    source = open_source(SourceConfig(kind="dexycb", root=root), HandModelConfig())
    records = source.load(source.index())
    frames = [record for record in records if isinstance(record, FrameRecord)]
    assert len(frames) == len(records) > 0
    return frames


def test_grasp_labels_equal_the_synthetic_truth(synthetic_dexycb: Path):
    frames = load_synthetic_frames(synthetic_dexycb)
    truth = json.loads((synthetic_dexycb / "truth" / "grasp.json").read_text())
    rng = np.random.default_rng(0)
    shuffled = [frames[i] for i in rng.permutation(len(frames))]  # order must not matter
    labels = label_grasps(shuffled, GraspConfig())
    assert len(labels) == len(truth)
    mismatches = [(x.sample_key, x.rre_deg, x.rte_m) for x in labels if x.is_grasping != truth[x.sample_key]]
    assert mismatches == []
    assert 0 < sum(truth.values()) < len(truth)  # both classes present
    # each label's reference is frame 0 of its own sequence and camera
    for frame, x in zip(shuffled, labels, strict=True):
        assert x.reference_key == f"{frame.sequence_key}/{frame.serial}/000000"


# --- grasp reference = frame 0 of the same sequence and camera (upstream's rule) --------------------------


def upstream_grasp_label(root: Path, sequence_key: str, serial: str, frame_idx: int, grasp_ind: int) -> tuple[float, float, bool]:
    """UniHOPE's prepare_grasp_dexycb rule, written out: labels_000000.npz of the camera is the reference."""

    def T(idx: int) -> np.ndarray:
        pose_y = np.load(root / sequence_key / serial / f"labels_{idx:06d}.npz")["pose_y"][grasp_ind].astype(np.float64)
        return np.vstack([pose_y, [0.0, 0.0, 0.0, 1.0]])

    rel = np.linalg.inv(T(frame_idx)) @ T(0)
    rre_deg = float(np.degrees(np.arccos(np.clip((np.trace(rel[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))
    rte_m = float(np.linalg.norm(rel[:3, 3]))
    return rre_deg, rte_m, rre_deg > 5.0 or rte_m > 0.05


def test_grasp_reference_is_frame_0_even_when_it_cannot_be_loaded(synthetic_dexycb: Path, tmp_path: Path):
    import yaml

    from unihope.sources.dexycb import DexYCBSource

    # 1. A copy whose first camera has no annotated hand up to and past the start of the lift, and one
    #    truncated JPEG after it.
    root = tmp_path / "dexycb"
    shutil.copytree(synthetic_dexycb, root, ignore=shutil.ignore_patterns("truth"))
    phases = json.loads((synthetic_dexycb / "truth" / "phases.json").read_text())
    source = DexYCBSource(root)
    sequence_key = source.sequence_keys()[0]
    refs = [ref for ref in source.index() if ref.sequence_key == sequence_key]
    serial = refs[0].serial
    first_lift = min(r.frame_idx for r in refs if r.serial == serial and phases[r.sample_key] == "lift")
    for frame_idx in range(first_lift + 1):
        path = root / sequence_key / serial / f"labels_{frame_idx:06d}.npz"
        labels = dict(np.load(path))
        labels.update(pose_m=np.zeros_like(labels["pose_m"]), joint_3d=np.full_like(labels["joint_3d"], -1.0),
                      joint_2d=np.full_like(labels["joint_2d"], -1.0))  # fmt: skip
        np.savez_compressed(path, **labels)
    truncated_idx = first_lift + 2
    jpeg = root / sequence_key / serial / f"color_{truncated_idx:06d}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])

    # 2. Load: those frames are skipped with their reasons, the others loaded.
    loaded = source.load(refs)
    skips = {item.sample_key: item.reason for item in loaded if isinstance(item, Skip)}
    expected_skips = {f"{sequence_key}/{serial}/{i:06d}": SkipReason.NO_VALID_HAND for i in range(first_lift + 1)}
    expected_skips[f"{sequence_key}/{serial}/{truncated_idx:06d}"] = SkipReason.CORRUPT_FILE
    assert skips == expected_skips
    records = [item for item in loaded if isinstance(item, FrameRecord)]

    # 3. Every other frame is labelled as upstream labels it, against frame 0 of its camera.
    grasp_ind = yaml.safe_load((root / sequence_key / "meta.yml").read_text())["ycb_grasp_ind"]
    labels = label_grasps(records, GraspConfig())
    for record, label in zip(records, labels, strict=True):
        rre_deg, rte_m, is_grasping = upstream_grasp_label(root, sequence_key, record.serial, record.frame_idx, grasp_ind)
        assert label.is_grasping == is_grasping, record.sample_key
        assert label.rre_deg == pytest.approx(rre_deg, abs=0.02) and label.rte_m == pytest.approx(rte_m, abs=1e-6)
        assert label.reference_key == f"{sequence_key}/{record.serial}/000000"
    by_key = {label.sample_key: label for label in labels}
    first_loaded = by_key[f"{sequence_key}/{serial}/{first_lift + 1:06d}"]
    assert first_loaded.is_grasping and first_loaded.rte_m > 0.05  # mid-lift: grasping against frame 0
    assert sum(label.is_grasping for label in labels) == sum(phases[r.sample_key] == "lift" for r in records)

    # 4. The same labels when frame 0 is not even listed (a split or max_frames cut it off).
    later = [ref for ref in refs if ref.frame_idx > first_lift]
    later_records = [item for item in DexYCBSource(root).load(later) if isinstance(item, FrameRecord)]
    later_labels = {x.sample_key: x for x in label_grasps(later_records, GraspConfig())}
    for key, label in later_labels.items():
        assert (label.is_grasping, label.rre_deg, label.rte_m, label.reference_key) == (
            by_key[key].is_grasping, by_key[key].rre_deg, by_key[key].rte_m, by_key[key].reference_key)

    # 5. An unreadable frame-0 label file: the camera's frames are skipped, never labelled against another frame.
    (root / sequence_key / serial / "labels_000000.npz").write_bytes(b"not a zip")
    reloaded = DexYCBSource(root).load([ref for ref in refs if ref.serial == serial])
    assert {item.reason for item in reloaded if isinstance(item, Skip) and item.reason != SkipReason.NO_VALID_HAND} == {
        SkipReason.NO_REFERENCE_FRAME, SkipReason.CORRUPT_FILE}
    assert not any(isinstance(item, FrameRecord) for item in reloaded)


def test_ho3d_grasp_reference_is_frame_0_meta(synthetic_ho3d: Path, tmp_path: Path):
    import pickle

    from unihope.sources.ho3d import HO3DSource, load_ho3d_meta

    root = tmp_path / "ho3d"
    shutil.copytree(synthetic_ho3d, root, ignore=shutil.ignore_patterns("truth"))
    meta_path = root / "train" / "ABF10" / "meta" / "0000.pkl"
    meta = load_ho3d_meta(meta_path, root)
    meta["handPose"] = None  # frame 0 without a hand annotation
    meta_path.write_bytes(pickle.dumps(meta, protocol=2))
    source = HO3DSource(root, "train")
    loaded = source.load([ref for ref in source.index() if ref.sequence_key == "train/ABF10"])
    assert isinstance(loaded[0], Skip) and loaded[0].reason == SkipReason.NO_VALID_HAND
    records = [item for item in loaded if isinstance(item, FrameRecord)]
    assert len(records) == len(loaded) - 1 > 2
    R_ref = cv2.Rodrigues(np.asarray(meta["objRot"], np.float64).reshape(3, 1))[0]
    for record, label in zip(records, label_grasps(records, GraspConfig()), strict=True):
        cur = load_ho3d_meta(root / "train" / "ABF10" / "meta" / f"{record.frame_idx:04d}.pkl", root)
        R_cur = cv2.Rodrigues(np.asarray(cur["objRot"], np.float64).reshape(3, 1))[0]
        rre_deg = np.degrees(np.arccos(np.clip((np.trace(R_cur.T @ R_ref) - 1) / 2, -1, 1)))  # the GL flip cancels
        rte_m = np.linalg.norm(np.ravel(cur["objTrans"]) - np.ravel(meta["objTrans"]))
        assert label.reference_key == "train/ABF10/0000"
        assert label.rre_deg == pytest.approx(rre_deg, abs=0.02) and label.rte_m == pytest.approx(rte_m, abs=1e-5)


def test_grasp_labels_equal_truth_on_quirky_data_whose_frame_0_has_no_hand(synthetic_dexycb_quirks: Path):
    from unihope.config import HandModelConfig, SourceConfig
    from unihope.sources import open_source

    source = open_source(SourceConfig(kind="dexycb", root=synthetic_dexycb_quirks), HandModelConfig())
    frames = [item for item in source.load(source.index()) if isinstance(item, FrameRecord)]
    assert not any(frame.frame_idx == 0 for frame in frames)  # every camera starts unannotated
    truth = json.loads((synthetic_dexycb_quirks / "truth" / "grasp.json").read_text())
    labels = label_grasps(frames, GraspConfig())
    assert [(x.sample_key, x.is_grasping) for x in labels] == [(f.sample_key, truth[f.sample_key]) for f in frames]
    assert all(x.reference_key.endswith("/000000") for x in labels) and 0 < sum(x.is_grasping for x in labels) < len(labels)


def test_label_grasps_rejects_records_disagreeing_on_the_reference():
    frames = sequence_frames("a", 0, [(0, 0), (30, 0.0)])
    with_reference = dataclasses.replace(frames[1], grasp_reference_pose=frames[0].object_pose,
                                         grasp_reference_key="s/seq/a/000000")  # fmt: skip
    with pytest.raises(ValueError, match="disagree on the grasp reference"):
        label_grasps([frames[0], with_reference], GraspConfig())
    (label,) = label_grasps([with_reference], GraspConfig())  # frame 0 itself not loaded
    assert label.reference_key == "s/seq/a/000000" and label.rre_deg == pytest.approx(30.0, abs=1e-4)
