"""Sources: synthetic DexYCB / HO3D written and read back, split rules, skipped corrupt frames, registry."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from unihope.storage.schema import FrameRecord, Skip, SkipReason
from unihope.config import DEXYCB_SPLIT_NAMES, HO3D_SPLIT_NAMES, HandModelConfig, SourceConfig, SyntheticConfig
from unihope.hand import HandLayer, load_mano_arrays, resolve_mano_path
from unihope.render.camera import cv_pose_to_gl, intrinsics_camera, project_points
from unihope.sources import SOURCES, open_source, prepare_source, summarize_frames
from unihope.rotations import matrix_from_axis_angle
from unihope.sources.common import FrameFileError, transform_mano_global
from unihope.sources.dexycb import DexYCBSource
from unihope.sources.ho3d import HO3DSource, decode_ho3d_depth_m, encode_ho3d_depth, load_ho3d_meta
from unihope.sources.splits import DEXYCB_SERIALS, DEXYCB_SPLITS, DEXYCB_SUBJECTS, HO3D_SPLITS
from unihope.sources.synthetic import COMPLETE_MARKER, write_synthetic_dataset

from conftest import SYNTHETIC_DEXYCB_CONFIG, SYNTHETIC_HO3D_CONFIG

JOINT_TOL_M = 1e-4
PIXEL_TOL_PX = 0.5
MIN_MASK_IOU = 0.9


@pytest.fixture(scope="module")
def layers() -> dict[str, HandLayer]:
    """Hand layers with DexYCB's (manopth's) fingertips, the layer's default."""
    return {side: HandLayer(side=side) for side in ("right", "left")}


@pytest.fixture(scope="module")
def ho3d_layers() -> dict[str, HandLayer]:
    """Hand layers with HO3D's fingertips."""
    return {side: HandLayer(side=side, tip_convention="ho3d") for side in ("right", "left")}


@pytest.fixture(scope="module")
def dexycb_records(synthetic_dexycb: Path) -> list[FrameRecord]:
    out = DexYCBSource(synthetic_dexycb, "all").load(DexYCBSource(synthetic_dexycb, "all").index())
    assert all(isinstance(r, FrameRecord) for r in out), [r for r in out if isinstance(r, Skip)][:3]
    return out


@pytest.fixture(scope="module")
def ho3d_records(synthetic_ho3d: Path) -> list[FrameRecord]:
    source = HO3DSource(synthetic_ho3d, "train")
    out = source.load(source.index())
    assert all(isinstance(r, FrameRecord) for r in out), [r for r in out if isinstance(r, Skip)][:3]
    return out


def _layer_joints(layers: dict[str, HandLayer], records: list[FrameRecord]) -> np.ndarray:
    out = []
    for record in records:
        _, joints = layers[record.hand_side].forward_numpy(record.mano_pose[None], record.mano_betas[None], record.mano_trans[None])
        out.append(joints[0])
    return np.stack(out)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --- DexYCB layout, read back ---------------------------------------------------------------------


def test_dexycb_layout_and_listing(synthetic_dexycb: Path, dexycb_records: list[FrameRecord]):
    cfg = SYNTHETIC_DEXYCB_CONFIG
    assert len(dexycb_records) == cfg.num_sequences * cfg.frames_per_sequence * cfg.num_cameras == 48
    summary = summarize_frames(dexycb_records)
    assert summary.records_by_side == {"right": 24, "left": 24}
    assert len(summary.records_by_camera) == 2 and set(summary.records_by_camera) <= set(DEXYCB_SERIALS)
    first = dexycb_records[0]
    subject, sequence, serial, frame = first.sample_key.split("/")
    assert subject == DEXYCB_SUBJECTS[0] and len(sequence) == 15 and sequence[8] == "_" and frame == "000000"
    assert Path(first.image_path) == synthetic_dexycb / subject / sequence / serial / "color_000000.jpg"
    assert first.image_size_wh == (640, 480)
    assert 605 < first.K[0, 0] < 625 and abs(first.K[0, 2] - 319.5) < 5
    depth_mm = cv2.imread(first.depth_path, cv2.IMREAD_UNCHANGED)
    assert depth_mm.dtype == np.uint16 and 300 < np.median(depth_mm) < 1500  # a table seen from ~0.6 m
    assert (synthetic_dexycb / "calibration" / "intrinsics" / f"{serial}_640x480.yml").is_file()
    assert (synthetic_dexycb / "calibration" / f"mano_{subject}" / "mano.yml").is_file()
    assert Path(first.object_mesh_path).name == "textured_simple.obj"
    mesh = trimesh.load(first.object_mesh_path, force="mesh")
    assert 0.03 < mesh.extents.max() < 0.30  # metres, the size of a YCB object


def test_dexycb_hand_layer_reproduces_joints(dexycb_records, layers):
    joints = _layer_joints(layers, dexycb_records)
    labelled = np.stack([r.joints_3d for r in dexycb_records])
    assert np.abs(joints - labelled).max() < JOINT_TOL_M
    for record in dexycb_records:
        assert np.abs(project_points(record.joints_3d, record.K) - record.joints_2d).max() < PIXEL_TOL_PX
        assert record.joints_3d[:, 2].min() > 0.2  # in front of the camera, OpenCV frame


def test_dexycb_pca_conversion_matches_labels(synthetic_dexycb: Path, dexycb_records):
    # The reader turns pose_m's PCA coefficients into absolute axis-angle with that side's MANO arrays.
    for record in dexycb_records[::7]:
        label_path = Path(record.image_path).with_name(f"labels_{record.frame_idx:06d}.npz")
        labels = np.load(label_path)
        pose_m = labels["pose_m"][0].astype(np.float64)
        arrays = load_mano_arrays(resolve_mano_path(record.hand_side))
        expected = arrays["hands_mean"] + pose_m[3:48] @ arrays["hands_components"]
        np.testing.assert_allclose(record.mano_pose[3:], expected, atol=1e-5)
        np.testing.assert_allclose(record.mano_pose[:3], pose_m[:3], atol=1e-6)
        np.testing.assert_allclose(record.mano_trans, pose_m[48:], atol=1e-7)
        meta = __import__("yaml").safe_load((synthetic_dexycb / record.sequence_key / "meta.yml").read_text())
        np.testing.assert_array_equal(record.object_pose, labels["pose_y"][meta["ycb_grasp_ind"]])
        assert record.object_id == meta["ycb_ids"][meta["ycb_grasp_ind"]]
        assert record.hand_side == meta["mano_sides"][0]


def test_dexycb_seg_agrees_with_rendered_masks(dexycb_records, layers):
    from unihope.sources.synthetic_render import SceneRenderers

    shared = SceneRenderers().get(640, 480)
    pyrender, renderer = shared.pyrender, shared.renderer
    renderer.viewport_width, renderer.viewport_height = 640, 480
    checked = 0
    for record in dexycb_records:
        if record.frame_idx not in (3, 8, 11):
            continue
        verts, _ = layers[record.hand_side].forward_numpy(record.mano_pose[None], record.mano_betas[None], record.mano_trans[None])
        hand = pyrender.Mesh.from_trimesh(trimesh.Trimesh(verts[0], layers[record.hand_side].faces, process=False))
        obj = pyrender.Mesh.from_trimesh(trimesh.load(record.object_mesh_path, force="mesh"))
        depths = []
        for meshes in ((hand, np.eye(4)), (obj, record.object_pose)), ((hand, np.eye(4)),), ((obj, record.object_pose),):
            scene = pyrender.Scene()
            scene.add(intrinsics_camera(pyrender, record.K), pose=np.eye(4))
            for mesh, pose in meshes:
                scene.add(mesh, pose=cv_pose_to_gl(pose))
            depths.append(renderer.render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY))
        both, hand_only, obj_only = depths
        hand_visible = (hand_only > 0) & (np.abs(hand_only - both) < 1e-4)
        obj_visible = (obj_only > 0) & (np.abs(obj_only - both) < 1e-4)
        seg = np.load(Path(record.image_path).with_name(f"labels_{record.frame_idx:06d}.npz"))["seg"]
        assert _mask_iou(seg == 255, hand_visible) > MIN_MASK_IOU, record.sample_key
        assert _mask_iou(seg == record.object_id, obj_visible) > MIN_MASK_IOU, record.sample_key
        checked += 1
    assert checked == 12


def test_dexycb_truth_matches_motion_and_occlusion(synthetic_dexycb: Path, dexycb_records):
    grasp = json.loads((synthetic_dexycb / "truth" / "grasp.json").read_text())
    phases = json.loads((synthetic_dexycb / "truth" / "phases.json").read_text())
    visibility = json.loads((synthetic_dexycb / "truth" / "visibility.json").read_text())
    assert set(grasp) == {r.sample_key for r in dexycb_records} == set(phases) == set(visibility)
    first_pose = {}
    for record in dexycb_records:  # sorted by sequence, camera, frame: frame 0 comes first
        ref = first_pose.setdefault((record.sequence_key, record.serial), record.object_pose)
        moved_m = float(np.linalg.norm(record.object_pose[:, 3] - ref[:, 3]))
        turned_deg = float(np.degrees(np.arccos(np.clip((np.trace(record.object_pose[:, :3].T @ ref[:, :3]) - 1) / 2, -1, 1))))
        if grasp[record.sample_key]:
            assert phases[record.sample_key] == "lift" and (moved_m > 0.05 or turned_deg > 5.0)
        else:  # approach / close: the object rests where it started
            assert moved_m < 1e-5 and turned_deg < 0.05
    by_phase = {p: [visibility[k] for k in phases if phases[k] == p] for p in ("approach", "close", "lift")}
    assert sum(grasp.values()) == 20  # 5 lift frames x 2 sequences x 2 cameras
    assert max(by_phase["approach"]) == 1.0
    assert min(by_phase["lift"] + by_phase["close"]) < 0.6  # the object hides a good part of the hand
    assert sum(v <= 0.9 for v in visibility.values()) >= 10


def test_dexycb_truth_image_differs_only_around_the_object(synthetic_dexycb: Path, dexycb_records):
    for record in dexycb_records[8:48:12]:
        image = cv2.imread(record.image_path).astype(np.int16)
        rel = Path(record.image_path).relative_to(synthetic_dexycb)
        truth = cv2.imread(str(synthetic_dexycb / "truth" / rel)).astype(np.int16)
        seg = np.load(Path(record.image_path).with_name(f"labels_{record.frame_idx:06d}.npz"))["seg"]
        changed = np.abs(image - truth).max(axis=2) > 40
        near_object = cv2.dilate((seg == record.object_id).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert changed.sum() > 200
        assert (changed & ~near_object).sum() < 0.01 * changed.sum()


# --- HO3D layout, read back -----------------------------------------------------------------------


def test_ho3d_roundtrip_with_opengl_flip(synthetic_ho3d: Path, ho3d_records, ho3d_layers):
    cfg = SYNTHETIC_HO3D_CONFIG
    assert len(ho3d_records) == cfg.num_sequences * cfg.frames_per_sequence
    record = ho3d_records[0]
    assert record.sample_key == "train/ABF10/0000" and record.serial == "0" and record.hand_side == "right"
    assert Path(record.image_path) == synthetic_ho3d / "train" / "ABF10" / "rgb" / "0000.png"
    meta = load_ho3d_meta(synthetic_ho3d / "train" / "ABF10" / "meta" / "0000.pkl", synthetic_ho3d)
    assert np.all(meta["handJoints3D"][:, 2] < 0)  # stored in OpenGL coordinates (camera looks down -z)
    assert np.all(record.joints_3d[:, 2] > 0)  # read back in OpenCV coordinates
    # HO3D order (MANO 16 + tips) -> DexYCB order, flipped: wrist = HO3D joint 0, thumb tip = HO3D joint 16
    np.testing.assert_allclose(record.joints_3d[0], meta["handJoints3D"][0] * [1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(record.joints_3d[4], meta["handJoints3D"][16] * [1, -1, -1], atol=1e-6)
    joints = _layer_joints(ho3d_layers, ho3d_records)
    assert np.abs(joints - np.stack([r.joints_3d for r in ho3d_records])).max() < JOINT_TOL_M
    for record in ho3d_records:
        assert np.abs(project_points(record.joints_3d, record.K) - record.joints_2d).max() < 1e-3
        assert np.isclose(np.linalg.det(record.object_pose[:, :3]), 1.0, atol=1e-4)
    # the raw (unflipped) MANO parameters would not reproduce the flipped joints
    _, raw = ho3d_layers["right"].forward_numpy(meta["handPose"][None], meta["handBeta"][None], meta["handTrans"][None])
    assert np.abs(raw[0] - ho3d_records[0].joints_3d).max() > 0.1


def test_ho3d_depth_encoding_roundtrip():
    depth_m = np.array([[0.0, 0.5], [0.7421, 2.0]], dtype=np.float32)
    decoded = decode_ho3d_depth_m(encode_ho3d_depth(depth_m))
    assert np.abs(decoded - depth_m).max() <= 0.00012498664727900177 / 2 + 1e-7


def test_transform_mano_global_moves_the_hand_rigidly(layers):
    rng = np.random.default_rng(3)
    layer = layers["left"]
    pose = np.concatenate([rng.normal(0, 0.8, 3), rng.normal(0, 0.2, 45)])
    betas = rng.normal(0, 1, 10)
    transl = rng.normal(0, 0.2, 3)
    R = matrix_from_axis_angle(rng.normal(0, 1.5, 3))
    t = rng.normal(0, 0.5, 3)
    _, joints = layer.forward_numpy(pose[None], betas[None], transl[None])
    _, rest = layer.forward_numpy(np.zeros((1, 48)), betas[None], np.zeros((1, 3)))
    orient_new, transl_new = transform_mano_global(pose[:3], transl, R, t, rest[0, 0])
    _, moved = layer.forward_numpy(np.concatenate([orient_new, pose[3:]])[None], betas[None], transl_new[None])
    np.testing.assert_allclose(moved[0], joints[0] @ R.T + t, atol=2e-5)
    _, naive = layer.forward_numpy(np.concatenate([orient_new, pose[3:]])[None], betas[None], (R @ transl + t)[None])
    assert np.abs(naive[0] - (joints[0] @ R.T + t)).max() > 1e-3  # rotating about the root joint matters


# --- split rules --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_dexycb_tree(tmp_path_factory) -> Path:
    """10 subjects x 100 empty sequence folders with real names; two sequences carry a meta.yml."""
    root = tmp_path_factory.mktemp("fake_dexycb")
    for subject in DEXYCB_SUBJECTS:
        for idx in range(100):
            seconds = 9 * 3600 + 61 * idx
            (root / subject / f"{subject[:8]}_{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}").mkdir(parents=True)
    return root


def _sequence_idx(root: Path, sequence_key: str) -> tuple[int, int]:
    subject, name = sequence_key.split("/")
    return DEXYCB_SUBJECTS.index(subject), sorted(p.name for p in (root / subject).iterdir()).index(name)


@pytest.mark.parametrize(
    "split, subjects, rule, num_sequences",
    [
        ("all", range(10), lambda i: True, 1000),
        ("s0_train", range(10), lambda i: i % 5 != 4, 800),
        ("s0_val", (0, 1), lambda i: i % 5 == 4, 40),
        ("s0_test", range(2, 10), lambda i: i % 5 == 4, 160),
        ("s1_train", (0, 1, 2, 3, 4, 5, 9), lambda i: True, 700),
        ("s1_val", (6,), lambda i: True, 100),
        ("s1_test", (7, 8), lambda i: True, 200),
        ("s2_train", range(10), lambda i: True, 1000),
        ("s3_train", range(10), lambda i: i // 5 not in (3, 7, 11, 15, 19), 750),
        ("s3_val", range(10), lambda i: i // 5 in (3, 19), 100),
        ("s3_test", range(10), lambda i: i // 5 in (7, 11, 15), 150),
    ],
)
def test_dexycb_split_sequences(fake_dexycb_tree: Path, split, subjects, rule, num_sequences):
    keys = DexYCBSource(fake_dexycb_tree, split).sequence_keys()
    assert len(keys) == len(set(keys)) == num_sequences
    for key in keys:
        subject_idx, seq_idx = _sequence_idx(fake_dexycb_tree, key)
        assert subject_idx in subjects and rule(seq_idx)


def test_dexycb_splits_partition_and_serials(fake_dexycb_tree: Path, tmp_path: Path):
    for setup in ("s0", "s1", "s3"):
        parts = [set(DexYCBSource(fake_dexycb_tree, f"{setup}_{s}").sequence_keys()) for s in ("train", "val", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(set().union(*parts)) == 1000  # s3 covers every sequence
    # s2 splits by camera: build one sequence with all 8 serials and read the listed serials
    seq_dir = tmp_path / DEXYCB_SUBJECTS[4] / "20200908_101010"
    seq_dir.mkdir(parents=True)
    (seq_dir / "meta.yml").write_text(
        "serials: [" + ", ".join(f"'{s}'" for s in DEXYCB_SERIALS) + "]\nnum_frames: 2\nycb_ids: [3]\nycb_grasp_ind: 0\n"
        f"mano_sides: [right]\nmano_calib: ['{DEXYCB_SUBJECTS[4]}']\n"
    )
    mano_dir = tmp_path / "calibration" / f"mano_{DEXYCB_SUBJECTS[4]}"
    mano_dir.mkdir(parents=True)
    (mano_dir / "mano.yml").write_text("betas: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n")
    serials = {s: sorted({r.serial for r in DexYCBSource(tmp_path, s).index()}) for s in ("s2_train", "s2_val", "s2_test")}
    assert serials == {"s2_train": sorted(DEXYCB_SERIALS[:6]), "s2_val": [DEXYCB_SERIALS[6]], "s2_test": [DEXYCB_SERIALS[7]]}
    assert len(DexYCBSource(tmp_path, "s2_train").index()) == 6 * 2


def test_unknown_split_lists_valid_ones(fake_dexycb_tree: Path, synthetic_ho3d: Path):
    with pytest.raises(ValueError, match="s0_train"):
        DexYCBSource(fake_dexycb_tree, "s4_train")
    with pytest.raises(ValueError, match="evaluation"):
        HO3DSource(synthetic_ho3d, "test")
    assert set(DEXYCB_SPLITS) == {"all"} | {f"s{k}_{s}" for k in range(4) for s in ("train", "val", "test")}
    # the config accepts exactly the splits that have a rule (it checks names without importing the sources)
    assert tuple(DEXYCB_SPLITS) == DEXYCB_SPLIT_NAMES and tuple(HO3D_SPLITS) == HO3D_SPLIT_NAMES


# --- corrupt frames become skips ----------------------------------------------------------------


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


def test_dexycb_corrupt_frames_are_skipped_with_reasons(synthetic_dexycb: Path, tmp_path: Path):
    root = _copy_dataset(synthetic_dexycb, tmp_path / "dexycb")
    source = DexYCBSource(root, "all")
    refs = source.index()
    frame_dir = lambda ref: root / ref.sequence_key / ref.serial  # noqa: E731
    broken = {}
    # 1. missing image
    (frame_dir(refs[1]) / "color_000001.jpg").unlink()
    broken[refs[1].sample_key] = SkipReason.MISSING_FILE
    # 2. truncated JPEG
    path = frame_dir(refs[2]) / "color_000002.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    broken[refs[2].sample_key] = SkipReason.CORRUPT_FILE
    # 3. NaN in the labels
    labels_path = frame_dir(refs[3]) / "labels_000003.npz"
    labels = dict(np.load(labels_path))
    labels["joint_3d"][0, 5, 1] = np.nan
    np.savez_compressed(labels_path, **labels)
    broken[refs[3].sample_key] = SkipReason.NAN_VALUE
    # 4. no valid hand: joint_3d all -1, and (another frame) pose_m all 0
    for ref, field, value in ((refs[4], "joint_3d", -1.0), (refs[5], "pose_m", 0.0)):
        labels_path = frame_dir(ref) / f"labels_{ref.frame_idx:06d}.npz"
        labels = dict(np.load(labels_path))
        labels[field][:] = value
        np.savez_compressed(labels_path, **labels)
        broken[ref.sample_key] = SkipReason.NO_VALID_HAND
    # 5. a labels file that is not an npz at all, and a missing depth image
    (frame_dir(refs[6]) / "labels_000006.npz").write_bytes(b"not a zip file")
    broken[refs[6].sample_key] = SkipReason.CORRUPT_FILE
    (frame_dir(refs[7]) / "aligned_depth_to_color_000007.png").unlink()
    broken[refs[7].sample_key] = SkipReason.MISSING_FILE
    # 6. a whole sequence without its meta.yml (the last sequence)
    last_sequence = refs[-1].sequence_key
    (root / last_sequence / "meta.yml").unlink()

    refs = DexYCBSource(root, "all").index()  # meta.yml gone: its frames are listed from disk
    out = DexYCBSource(root, "all").load(refs)
    assert len(out) == 48
    for ref, item in zip(refs, out):
        if ref.sample_key in broken:
            assert isinstance(item, Skip) and item.reason == broken[ref.sample_key], (ref.sample_key, item)
            assert item.stage == "source" and item.detail
        elif ref.sequence_key == last_sequence:
            assert isinstance(item, Skip) and item.reason == SkipReason.MISSING_FILE and "meta.yml" in item.detail
        else:
            assert isinstance(item, FrameRecord), item
    summary = summarize_frames(out)
    assert summary.num_records == 24 - len(broken) and summary.num_skipped == 24 + len(broken)
    assert summary.skips_by_reason == {"missing_file": 26, "corrupt_file": 2, "nan_value": 1, "no_valid_hand": 2}


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-unihope-test",))


def test_ho3d_corrupt_frames_are_skipped_with_reasons(synthetic_ho3d: Path, tmp_path: Path):
    root = _copy_dataset(synthetic_ho3d, tmp_path / "ho3d")
    meta_dir = root / "train" / "ABF10" / "meta"
    (meta_dir / "0001.pkl").unlink()
    meta = load_ho3d_meta(meta_dir / "0002.pkl", root)
    meta["handTrans"] = np.array([np.nan, 0.0, 0.0])
    (meta_dir / "0002.pkl").write_bytes(pickle.dumps(meta))
    meta = load_ho3d_meta(meta_dir / "0003.pkl", root)
    meta["handPose"] = None  # as in HO3D's evaluation split
    (meta_dir / "0003.pkl").write_bytes(pickle.dumps(meta))
    (meta_dir / "0004.pkl").write_bytes(pickle.dumps({"handPose": _Evil()}))
    rgb = root / "train" / "ABF10" / "rgb" / "0005.png"
    rgb.write_bytes(rgb.read_bytes()[:1000])
    expected = {1: SkipReason.MISSING_FILE, 2: SkipReason.NAN_VALUE, 3: SkipReason.NO_VALID_HAND,
                4: SkipReason.CORRUPT_FILE, 5: SkipReason.CORRUPT_FILE}  # fmt: skip
    source = HO3DSource(root, "train")
    out = source.load(source.index())
    for item in out:
        seq, frame = item.sample_key.split("/")[1:]
        if seq == "ABF10" and int(frame) in expected:
            assert isinstance(item, Skip) and item.reason == expected[int(frame)], item
        else:
            assert isinstance(item, FrameRecord)
    assert "refusing global" in next(s.detail for s in out if isinstance(s, Skip) and s.sample_key.endswith("0004"))
    with pytest.raises(FrameFileError, match="outside the dataset root") as caught:
        load_ho3d_meta(meta_dir / "0000.pkl", tmp_path / "elsewhere")
    assert caught.value.reason == SkipReason.OUTSIDE_ROOT


# --- registry, determinism, idempotency ---------------------------------------------------------

TINY = SyntheticConfig(format="dexycb", num_sequences=1, frames_per_sequence=4, num_cameras=1, seed=7)


def test_prepare_source_synthetic_generates_once_then_open_source_reads_deterministically(tmp_path: Path):
    cfg = SourceConfig(kind="synthetic", root=tmp_path / "_synthetic", synthetic=TINY)
    assert prepare_source(cfg, HandModelConfig()) == tmp_path / "_synthetic"
    source = open_source(cfg, HandModelConfig())
    assert isinstance(source, DexYCBSource)
    records = source.load(source.index())
    assert len(records) == 4 and all(isinstance(r, FrameRecord) for r in records)
    marker = tmp_path / "_synthetic" / COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert prepare_source(cfg, HandModelConfig()) == tmp_path / "_synthetic"  # complete: nothing is regenerated
    again = open_source(cfg, HandModelConfig())
    assert marker.stat().st_mtime_ns == stamp and len(again.index()) == 4
    other = cfg.model_copy(update={"synthetic": TINY.model_copy(update={"seed": 8})})
    for step in (open_source, prepare_source):
        with pytest.raises(ValueError, match="another configuration"):
            step(other, HandModelConfig())
    capped = open_source(cfg.model_copy(update={"max_frames": 3}), HandModelConfig())
    assert len(capped.index()) == 3
    # the same config written elsewhere gives the same bytes
    write_synthetic_dataset(tmp_path / "again", TINY, HandModelConfig())
    first = tmp_path / "_synthetic"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    assert len(files) > 4 * 4
    for rel in files:
        assert (first / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_open_source_synthetic_only_reads(tmp_path: Path, synthetic_dexycb: Path):
    # Opening never synthesizes: a missing dataset is an error naming the explicit step, and nothing is written.
    cfg = SourceConfig(kind="synthetic", root=tmp_path / "_synthetic", synthetic=TINY)
    with pytest.raises(ValueError, match=r"holds no synthetic dataset yet.*prepare_source"):
        open_source(cfg, HandModelConfig())
    assert list(tmp_path.iterdir()) == []
    # the real datasets are read where they lie: preparing one writes nothing
    before = sorted(p.stat().st_mtime_ns for p in synthetic_dexycb.rglob("*"))
    assert prepare_source(SourceConfig(kind="dexycb", root=synthetic_dexycb), HandModelConfig()) == synthetic_dexycb
    assert sorted(p.stat().st_mtime_ns for p in synthetic_dexycb.rglob("*")) == before


def test_open_source_errors_name_the_fix(tmp_path: Path):
    assert set(SOURCES) == {"dexycb", "ho3d", "synthetic"}
    with pytest.raises(ValueError, match="dexycb, ho3d, synthetic"):
        open_source(SourceConfig.model_construct(kind="coco", root=tmp_path), HandModelConfig())
    for step in (open_source, prepare_source):
        with pytest.raises(ValueError, match="source.root"):
            step(SourceConfig(kind="synthetic", root=None), HandModelConfig())
    with pytest.raises(ValueError, match="not a folder"):
        open_source(SourceConfig(kind="dexycb", root=tmp_path / "missing"), HandModelConfig())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_synthetic_dataset(tmp_path / "busy", TINY, HandModelConfig())


# --- fingertip conventions ------------------------------------------------------------------------

# DexYCB's joint order from MANO's 16 joints plus the 5 tips (thumb..little), written out here on its own.
DEXYCB_FROM_MANO_AND_TIPS = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
MANOPTH_TIPS = {"right": [745, 317, 444, 556, 673], "left": [745, 317, 445, 556, 673]}
SMPLX_TIPS = [744, 320, 443, 554, 671]


def _smplx_joints_from_pose_m(side: str, pose_m: np.ndarray, betas: np.ndarray, tips: list[int]) -> np.ndarray:
    """(21, 3) joints of a plain smplx MANO forward of DexYCB's pose_m (PCA 45, flat_hand_mean=False)."""
    import smplx
    import torch

    model = smplx.create(str(resolve_mano_path(side)), model_type="mano", is_rhand=side == "right", use_pca=True,
                         num_pca_comps=45, flat_hand_mean=False)  # fmt: skip
    # smplx quietly turns PCA off at 45 components (hand_pose is then taken as axis-angle), so the
    # coefficients go through its own loaded basis here; it still adds the mean (flat_hand_mean=False).
    assert not model.use_pca
    hand_pose = np.asarray(pose_m[3:48], np.float64) @ np.asarray(model.np_hand_components, np.float64)
    as_tensor = lambda a: torch.tensor(np.asarray(a, np.float32)[None])  # noqa: E731
    with torch.no_grad():
        out = model(global_orient=as_tensor(pose_m[:3]), hand_pose=as_tensor(hand_pose), betas=as_tensor(betas),
                    transl=as_tensor(pose_m[48:51]))  # fmt: skip
    joints = torch.cat([out.joints[0, :16], out.vertices[0, tips]]).numpy()
    return joints[DEXYCB_FROM_MANO_AND_TIPS]


def test_synthetic_dexycb_labels_equal_smplx_forward_at_manopth_tips(synthetic_dexycb: Path, dexycb_records):
    checked = {"right": 0, "left": 0}
    for record in dexycb_records[::5]:
        labels = np.load(Path(record.image_path).with_name(f"labels_{record.frame_idx:06d}.npz"))
        subject = record.sequence_key.split("/")[0]
        betas = __import__("yaml").safe_load((synthetic_dexycb / "calibration" / f"mano_{subject}" / "mano.yml").read_text())["betas"]
        pose_m = labels["pose_m"][0]
        expected = _smplx_joints_from_pose_m(record.hand_side, pose_m, betas, MANOPTH_TIPS[record.hand_side])
        np.testing.assert_allclose(labels["joint_3d"][0], expected, atol=2e-5, err_msg=record.sample_key)
        # smplx's own tip ids are another vertex: the labels are not theirs (about 2 mm away here).
        smplx_tips = _smplx_joints_from_pose_m(record.hand_side, pose_m, betas, SMPLX_TIPS)[[4, 8, 12, 16, 20]]
        assert np.linalg.norm(labels["joint_3d"][0][[4, 8, 12, 16, 20]] - smplx_tips, axis=1).max() > 1e-3
        checked[record.hand_side] += 1
    assert min(checked.values()) >= 3


def test_sources_carry_their_tip_convention(synthetic_dexycb: Path, synthetic_ho3d: Path, tmp_path: Path):
    from unihope.config import ConfigError, PipelineConfig
    from unihope.tip_convention import recorded_tip_convention

    hand = HandModelConfig()
    assert open_source(SourceConfig(kind="dexycb", root=synthetic_dexycb), hand).tip_convention == "manopth"
    assert open_source(SourceConfig(kind="ho3d", root=synthetic_ho3d), hand).tip_convention == "ho3d"
    assert open_source(SourceConfig(kind="dexycb", root=synthetic_dexycb, tip_convention="smplx"), hand).tip_convention == "smplx"
    synthetic_ho3d_cfg = SourceConfig(kind="synthetic", root=tmp_path, synthetic=SyntheticConfig(format="ho3d"))
    assert synthetic_ho3d_cfg.resolved_tip_convention() == "ho3d"
    assert SourceConfig().resolved_tip_convention() == "manopth"  # synthetic DexYCB layout
    with pytest.raises(ValueError, match="synthetic dexycb source writes its labels with 'manopth' tips"):
        SourceConfig(kind="synthetic", tip_convention="ho3d")
    with pytest.raises(ConfigError, match="source.tip_convention"):
        PipelineConfig.from_yaml("source:\n  kind: dexycb\n  root: /data\n  tip_convention: mano\n")
    with pytest.raises(ValueError, match="unknown tip convention 'mano'"):
        DexYCBSource(synthetic_dexycb, tip_convention="mano")
    # What a build records, and how training reads it back (old builds: the layout's own).
    from unihope.buildplan.output_items import dataset_attrs

    attrs = dataset_attrs(PipelineConfig(source=SourceConfig(kind="ho3d", root=synthetic_ho3d)))
    assert attrs.config["source"]["tip_convention"] == "ho3d"
    assert recorded_tip_convention(attrs.config) == "ho3d"
    assert recorded_tip_convention({"source": {"kind": "synthetic", "synthetic": {"format": "dexycb"}}}) == "manopth"
    assert recorded_tip_convention({"source": {"kind": "dexycb", "tip_convention": "smplx"}}) == "smplx"


# --- DexYCB's quirks in the synthetic source ------------------------------------------------------


def test_quirks_unannotated_frames_are_skipped_with_a_reason(synthetic_dexycb_quirks: Path):
    unannotated = set(json.loads((synthetic_dexycb_quirks / "truth" / "unannotated.json").read_text()))
    source = DexYCBSource(synthetic_dexycb_quirks)
    refs = source.index()
    loaded = source.load(refs)
    skips = {item.sample_key: item for item in loaded if isinstance(item, Skip)}
    assert set(skips) == unannotated
    assert {s.reason for s in skips.values()} == {SkipReason.NO_VALID_HAND}
    assert all("hand not annotated" in s.detail for s in skips.values())
    # at the start of every camera, and scattered later in the sequence
    by_camera: dict[tuple[str, str], list[int]] = {}
    for ref in refs:
        if ref.sample_key in unannotated:
            by_camera.setdefault((ref.sequence_key, ref.serial), []).append(ref.frame_idx)
    assert len(by_camera) == 4 and all(frames[0] == 0 for frames in by_camera.values())
    assert any(np.any(np.diff(frames) > 1) for frames in by_camera.values())
    for key in unannotated:
        labels = np.load(synthetic_dexycb_quirks / f"{key.rsplit('/', 1)[0]}/labels_{key.rsplit('/', 1)[1]}.npz")
        assert np.all(labels["pose_m"] == 0) and labels["pose_m"].shape == (1, 51)
        assert np.all(labels["joint_3d"] == -1) and np.all(labels["joint_2d"] == -1)
        assert not np.any(labels["seg"] == 255) and labels["pose_y"].shape[1:] == (3, 4)
    records = [item for item in loaded if isinstance(item, FrameRecord)]
    assert len(records) == len(refs) - len(unannotated) > 0


def test_quirks_files_read_as_dex_ycb_toolkit_reads_them(synthetic_dexycb_quirks: Path):
    import yaml
    from scipy.spatial.transform import Rotation

    # 1. points.xyz beside every textured_simple.obj: "x y z" metres on the mesh's surface
    for model_dir in sorted((synthetic_dexycb_quirks / "models").iterdir()):
        points = np.loadtxt(model_dir / "points.xyz")
        mesh = trimesh.load(model_dir / "textured_simple.obj", force="mesh")
        assert points.shape == (2620, 3)
        assert np.all(points >= mesh.bounds[0] - 1e-5) and np.all(points <= mesh.bounds[1] + 1e-5)
        triangles = mesh.triangles
        for point in points[:: len(points) // 20]:  # on the surface: some triangle passes within 1e-5 m
            closest = trimesh.triangles.closest_point(triangles, np.repeat(point[None], len(triangles), axis=0))
            assert np.linalg.norm(closest - point, axis=1).min() < 1e-5
    # 2. extrinsics.yml: 3x4 world-from-camera per serial, `apriltag` and `master`, as SequenceLoader views them
    sequence_key = DexYCBSource(synthetic_dexycb_quirks).sequence_keys()[1]
    meta = yaml.safe_load((synthetic_dexycb_quirks / sequence_key / "meta.yml").read_text())
    extr = yaml.safe_load((synthetic_dexycb_quirks / "calibration" / f"extrinsics_{meta['extrinsics']}" / "extrinsics.yml").read_text())
    T = {name: np.asarray(value, dtype=np.float64).reshape(3, 4) for name, value in extr["extrinsics"].items()}
    assert set(T) == set(meta["serials"]) | {"apriltag"} and extr["master"] in meta["serials"]
    np.testing.assert_allclose(T["apriltag"][:, :3] @ T["apriltag"][:, :3].T, np.eye(3), atol=1e-9)
    # 3. pose.npz (world frame): camera = extrinsics^-1 @ world gives the per-camera labels
    pose = np.load(synthetic_dexycb_quirks / sequence_key / "pose.npz")
    num_objects = len(meta["ycb_ids"])
    assert pose["pose_y"].shape == (meta["num_frames"], num_objects, 7) and pose["pose_m"].shape == (meta["num_frames"], 1, 51)
    layer = HandLayer(side=meta["mano_sides"][0])
    betas = np.asarray(yaml.safe_load((synthetic_dexycb_quirks / "calibration" / f"mano_{meta['mano_calib'][0]}" / "mano.yml").read_text())["betas"])
    arrays = load_mano_arrays(resolve_mano_path(meta["mano_sides"][0]))
    for serial in meta["serials"]:
        R_wc, t_wc = T[serial][:, :3], T[serial][:, 3]
        for frame_idx in (0, 5, 9):
            labels = np.load(synthetic_dexycb_quirks / sequence_key / serial / f"labels_{frame_idx:06d}.npz")
            for obj_idx in range(num_objects):
                q, t = pose["pose_y"][frame_idx, obj_idx, :4], pose["pose_y"][frame_idx, obj_idx, 4:]
                R_world = Rotation.from_quat(q).as_matrix()  # (x, y, z, w), scipy's order as the toolkit's
                np.testing.assert_allclose(R_wc.T @ R_world, labels["pose_y"][obj_idx][:, :3], atol=1e-5)
                np.testing.assert_allclose(R_wc.T @ (t - t_wc), labels["pose_y"][obj_idx][:, 3], atol=1e-5)
            pose_m = pose["pose_m"][frame_idx, 0].astype(np.float64)
            if np.all(labels["pose_m"] == 0):
                assert np.all(pose_m == 0)
                continue
            hand_pose = arrays["hands_mean"] + pose_m[3:48] @ arrays["hands_components"]
            _, joints_world = layer.forward_numpy(np.concatenate([pose_m[:3], hand_pose])[None], betas[None], pose_m[None, 48:])
            np.testing.assert_allclose((joints_world[0] - t_wc) @ R_wc, labels["joint_3d"][0], atol=1e-4)


def test_quirks_off_writes_none_of_them(synthetic_dexycb: Path):
    import yaml

    assert not list((synthetic_dexycb / "models").glob("*/points.xyz"))
    assert not list(synthetic_dexycb.glob("*/*/pose.npz"))
    (extrinsics_path,) = (synthetic_dexycb / "calibration").glob("extrinsics_*/extrinsics.yml")
    assert "apriltag" not in yaml.safe_load(extrinsics_path.read_text())["extrinsics"]
    assert not (synthetic_dexycb / "truth" / "unannotated.json").exists()
    with pytest.raises(ValueError, match="quirks are DexYCB's"):
        SyntheticConfig(format="ho3d", quirks=True)


def test_ho3d_preset_holds_ho3d_upstream_values(tmp_path: Path):
    from unihope.buildplan.resolve import resolve_build_config
    from unihope.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(Path(__file__).parent.parent / "configs" / "ho3d.yaml")
    assert cfg.crop.size_px == 256
    assert cfg.deocclusion.max_visibility == 0.8
    assert cfg.source.tip_convention == "ho3d" and cfg.source.layout() == "ho3d" and cfg.source.split == "train"
    assert PipelineConfig.from_yaml(cfg.to_yaml()) == cfg
    real = resolve_build_config(cfg, str(tmp_path / "out"), source=f"ho3d:{tmp_path}")
    assert real.source.kind == "ho3d" and real.source.resolved_tip_convention() == "ho3d"
    assert real.crop.size_px == 256 and real.deocclusion.max_visibility == 0.8


def test_training_reads_the_tip_convention_a_dataset_recorded(tmp_path: Path):
    from unihope.storage.writer import finalize, write_shard
    from storage_fixtures import make_batch, make_keys
    from unihope.config import StorageConfig
    from unihope.tip_convention import dataset_tip_convention
    from unihope.train.spec import build_hand_layer

    attrs = {"name": "t", "source": "ho3d:/data", "config": {"source": {"kind": "ho3d", "tip_convention": "ho3d"}},
             "config_hash": "abc"}  # fmt: skip
    annotated, results = make_batch(make_keys(1, 3))
    url = tmp_path / "data"
    write_shard(url, 0, annotated, results, attrs, StorageConfig(shard_size=6))
    assert dataset_tip_convention(url) == "ho3d"  # from the shard, while the build is in progress
    finalize(url, attrs, [])
    assert dataset_tip_convention(url) == "ho3d"  # from the manifest
    from unihope.storage.paired import PairedDataset
    from unihope.tip_convention import tip_convention_of_dataset
    from unihope.train.data import FirstSamples

    layer = build_hand_layer(tip_convention=tip_convention_of_dataset(FirstSamples(PairedDataset(url), 2)))  # as `unihope train`
    assert layer.tip_convention == "ho3d" and layer.tip_vertex_idx.tolist() == [744, 333, 444, 555, 672]
    assert tip_convention_of_dataset([]) == "manopth"  # in memory: no record, the default


def test_heavy_occlusion_preset_hides_more_of_the_hand(tmp_path):
    """`synthetic.occlusion: heavy` (the pair ablation's preset) lowers the visibility the truth records.

    Measured on these 24 views: mean visibility 0.66 natural vs 0.49 heavy (seed 0), 0.66 vs 0.54 (seed 1).
    """
    means = {}
    for occlusion in ("natural", "heavy"):
        cfg = SyntheticConfig(num_sequences=4, frames_per_sequence=6, num_cameras=1, seed=0, occlusion=occlusion,
                              image_width_px=320, image_height_px=240)
        write_synthetic_dataset(tmp_path / occlusion, cfg, HandModelConfig())
        visibility = json.loads((tmp_path / occlusion / "truth" / "visibility.json").read_text())
        means[occlusion] = float(np.mean(list(visibility.values())))
    assert means["heavy"] < means["natural"] - 0.1
