"""Tests of the hand model: procedural MANO file, smplx compatibility, mirror, converter, layer."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import smplx
import torch

from unihope.hand import (
    FINGER_NAMES,
    MANO_FINGER_JOINTS,
    PROCEDURAL_MODEL_VERSION,
    TIP_CONVENTIONS,
    TIP_VERTEX_IDS,
    HandLayer,
    axis_angle_to_pca,
    convert_official_mano,
    curl_pose,
    describe_hand_model,
    load_mano_arrays,
    pca_to_axis_angle,
    resolve_mano_path,
    vertex_finger_labels,
)
from unihope.hand.convert import load_mano_pickle
from unihope.hand.procedural import left_vertex_order

MIRROR_XYZ = np.array([-1.0, 1.0, 1.0])
AXIS_ANGLE_MIRROR = np.tile([1.0, -1.0, -1.0], 16)  # global orient + 15 joints
STILL_TOL_M = 1e-6  # "unchanged": float32 LBS noise is far below this
# Palm skin allowed to follow a posed digit: near a finger's knuckle, or the thenar skin around the thumb.
PALM_FOLLOW_RADIUS_M = {"thumb": 0.05, "index": 0.025, "middle": 0.025, "ring": 0.025, "little": 0.025}
# On real MANO the conventions' fingertip vertices lie a few mm apart; on ours every one must be on the tip.
TIP_ON_FINGERTIP_TOL_M = 0.003


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mano_cache")


@pytest.fixture(scope="module")
def right_path(cache_dir: Path) -> Path:
    return resolve_mano_path("right", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def left_path(cache_dir: Path) -> Path:
    return resolve_mano_path("left", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def right_arrays(right_path: Path) -> dict:
    with open(right_path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


@pytest.fixture(scope="module")
def right_layer(right_path: Path) -> HandLayer:
    return HandLayer("right", model_path=right_path)


@pytest.fixture(scope="module")
def left_layer(left_path: Path) -> HandLayer:
    return HandLayer("left", model_path=left_path)


def _pose_right(layer: HandLayer, hand_pose: np.ndarray, global_orient=None, betas=None, transl=None):
    num = hand_pose.shape[0]
    global_orient = np.zeros((num, 3)) if global_orient is None else global_orient
    betas = np.zeros((num, 10)) if betas is None else betas
    transl = np.zeros((num, 3)) if transl is None else transl
    return layer.forward_numpy(np.concatenate([global_orient, hand_pose], axis=1), betas, transl)


def test_cache_layout_and_description(cache_dir: Path, right_path: Path) -> None:
    assert right_path == cache_dir / f"procedural-v{PROCEDURAL_MODEL_VERSION}" / "MANO_RIGHT.pkl"
    mtime_ns = right_path.stat().st_mtime_ns
    assert resolve_mano_path("right", cache_dir=cache_dir) == right_path
    assert right_path.stat().st_mtime_ns == mtime_ns  # cached, not regenerated
    info = describe_hand_model("right", cache_dir=cache_dir)
    assert info["kind"] == "procedural" and info["num_vertices"] == 778 and info["num_faces"] == 1538
    assert info["version"] == f"v{PROCEDURAL_MODEL_VERSION}"
    assert not list(right_path.parent.glob("*.incomplete"))
    with pytest.raises(ValueError, match="side must be one of"):
        resolve_mano_path("middle", cache_dir=cache_dir)


def test_smplx_loads_generated_model_unchanged(right_path: Path, right_arrays: dict) -> None:
    created = smplx.create(str(right_path), model_type="mano", use_pca=False, flat_hand_mean=True)
    direct = smplx.MANO(model_path=str(right_path), is_rhand=True, use_pca=False, flat_hand_mean=True)
    for model in (created, direct):
        assert model.v_template.shape == (778, 3)
        assert model.faces.shape == (1538, 3)
        assert model.J_regressor.shape == (16, 778)
        assert model.lbs_weights.shape == (778, 16)
        assert model.shapedirs.shape == (778, 3, 10)
        assert model.posedirs.shape == (135, 778 * 3)
        assert model.parents.tolist() == [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    assert scipy.sparse.issparse(right_arrays["J_regressor"]) and right_arrays["J_regressor"].format == "csc"
    np.testing.assert_allclose(np.asarray(right_arrays["J_regressor"].sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert right_arrays["J_regressor"].min() >= 0.0
    np.testing.assert_allclose(right_arrays["weights"].sum(axis=1), 1.0, atol=1e-12)
    components = right_arrays["hands_components"]
    np.testing.assert_allclose(components @ components.T, np.eye(45), atol=1e-10)
    assert right_arrays["bs_style"] == "lbs" and right_arrays["bs_type"] == "lrotmin"
    # Pose correctives exist but stay small (millimetres per unit of (R - I)).
    assert 1e-4 < np.abs(right_arrays["posedirs"]).max() < 5e-3


def test_surface_is_disk_with_16_vertex_wrist_loop(right_arrays: dict) -> None:
    faces = right_arrays["f"].astype(np.int64)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique_edges, counts = np.unique(edges, axis=0, return_counts=True)
    assert set(counts.tolist()) <= {1, 2}
    boundary = unique_edges[counts == 1]
    boundary_verts = np.unique(boundary)
    assert len(boundary) == 16 and len(boundary_verts) == 16  # one loop of 16 vertices
    assert 778 - len(unique_edges) + len(faces) == 1  # Euler characteristic of a disk (genus 0, 1 hole)
    # The wrist loop sits at the wrist end of the hand (largest x: fingers point to -x).
    verts = right_arrays["v_template"]
    assert verts[boundary_verts, 0].min() > verts[:, 0].max() - 0.005


def test_zero_pose_is_plausible_open_hand(right_layer: HandLayer, right_arrays: dict) -> None:
    verts, joints = _pose_right(right_layer, np.zeros((1, 45)))
    verts, joints = verts[0], joints[0]
    labels = vertex_finger_labels(right_arrays["weights"])
    palm_width_m = np.ptp(verts[labels == 0, 2])
    assert 0.075 < palm_width_m < 0.095
    # DexYCB order: base joint (1, 5, 9, 13, 17) and tip (4, 8, 12, 16, 20) of each finger.
    length_m = {name: np.linalg.norm(joints[4 * k + 4] - joints[4 * k + 1]) for k, name in enumerate(FINGER_NAMES)}
    assert 0.080 < length_m["middle"] < 0.095
    assert 0.072 < length_m["index"] < 0.092 and 0.072 < length_m["ring"] < 0.092
    assert 0.058 < length_m["little"] < 0.078
    assert length_m["little"] < length_m["ring"] < length_m["middle"]
    hand_length_m = np.linalg.norm(joints[12] - joints[0])
    assert 0.16 < hand_length_m < 0.21
    # Open flat hand: each finger's joints lie on a straight line.
    for k in range(1, 5):
        chain = joints[[4 * k + 1, 4 * k + 2, 4 * k + 3, 4 * k + 4]]
        direction = (chain[-1] - chain[0]) / np.linalg.norm(chain[-1] - chain[0])
        off_axis_m = np.linalg.norm(np.cross(chain - chain[0], direction), axis=1)
        assert off_axis_m.max() < 1e-3
    # Palm faces -y: curling (curl_pose) moves the fingertips towards -y.
    curled_verts, _ = _pose_right(right_layer, curl_pose(0.5, 0.0)[None])
    assert curled_verts[0, TIP_VERTEX_IDS["middle"], 1] < verts[TIP_VERTEX_IDS["middle"], 1] - 0.03


@pytest.mark.parametrize("finger", FINGER_NAMES)
def test_posing_one_finger_moves_only_that_finger(finger: str, right_layer: HandLayer, right_arrays: dict) -> None:
    """Rule: vertices labelled as another digit stay put (< 1 um); palm-labelled vertices may move
    only within PALM_FOLLOW_RADIUS_M of the posed digit's base joint (knuckle / thenar skin)."""
    labels = vertex_finger_labels(right_arrays["weights"])
    label = FINGER_NAMES.index(finger) + 1
    hand_pose = np.zeros((1, 45))
    rng = np.random.default_rng(7)
    for joint_idx in MANO_FINGER_JOINTS[finger]:
        hand_pose[0, 3 * (joint_idx - 1): 3 * joint_idx] = rng.normal(0.0, 0.5, 3)
    rest_verts, rest_joints_mano = _pose_right(right_layer, np.zeros((1, 45)))
    posed_verts, _ = _pose_right(right_layer, hand_pose)
    moved_m = np.linalg.norm(posed_verts[0] - rest_verts[0], axis=1)
    assert moved_m[(labels != label) & (labels != 0)].max() < STILL_TOL_M
    base_joint = (right_arrays["J_regressor"] @ right_arrays["v_template"])[MANO_FINGER_JOINTS[finger][0]]
    moving_palm = (labels == 0) & (moved_m > STILL_TOL_M)
    if moving_palm.any():
        dist_m = np.linalg.norm(right_arrays["v_template"][moving_palm] - base_joint, axis=1)
        assert dist_m.max() < PALM_FOLLOW_RADIUS_M[finger]
    assert moved_m[TIP_VERTEX_IDS[finger]] > 0.01


def _fingertip_vertex(verts: np.ndarray, joints: np.ndarray, labels: np.ndarray, finger: str) -> int:
    """The fingertip, defined without any tip id: the finger's vertex farthest along its PIP -> DIP bone."""
    label = FINGER_NAMES.index(finger) + 1
    _, pip_idx, dip_idx = MANO_FINGER_JOINTS[finger]
    direction = (joints[dip_idx] - joints[pip_idx]) / np.linalg.norm(joints[dip_idx] - joints[pip_idx])
    finger_idx = np.flatnonzero(labels == label)
    return int(finger_idx[np.argmax((verts[finger_idx] - joints[dip_idx]) @ direction)])


@pytest.mark.parametrize("side", ["right", "left"])
def test_every_tip_convention_lies_on_the_fingertips(side: str, right_path: Path, left_path: Path) -> None:
    with open(right_path if side == "right" else left_path, "rb") as handle:
        arrays = pickle.load(handle, encoding="latin1")
    verts = arrays["v_template"]
    labels = vertex_finger_labels(arrays["weights"])
    joints = arrays["J_regressor"] @ verts
    layer = HandLayer(side, model_path=right_path if side == "right" else left_path)
    rng = np.random.default_rng(11)
    posed_pose = np.concatenate([np.zeros((2, 3)), np.stack([curl_pose(0.6, 0.5), rng.normal(0.0, 0.3, 45)])], axis=1)
    posed_verts, _ = layer.forward_numpy(posed_pose, np.zeros((2, 10)), np.zeros((2, 3)))
    for convention, ids_by_side in TIP_CONVENTIONS.items():
        for finger, tip_idx in zip(FINGER_NAMES, ids_by_side[side]):
            fingertip_idx = _fingertip_vertex(verts, joints, labels, finger)
            where = f"{side} {convention} {finger} (vertex {tip_idx})"
            assert labels[tip_idx] == FINGER_NAMES.index(finger) + 1, where
            assert np.linalg.norm(verts[tip_idx] - verts[fingertip_idx]) < TIP_ON_FINGERTIP_TOL_M, where
            # Posed (curled, random): the tip vertices stay on the fingertip (skinned to the distal bone).
            gap_m = np.linalg.norm(posed_verts[:, tip_idx] - posed_verts[:, fingertip_idx], axis=1)
            assert gap_m.max() < TIP_ON_FINGERTIP_TOL_M + 0.0005, where
    # Rounded tip: the neighbouring ring is within a few millimetres of the apex.
    for finger in FINGER_NAMES:
        fingertip_idx = _fingertip_vertex(verts, joints, labels, finger)
        finger_idx = np.flatnonzero(labels == FINGER_NAMES.index(finger) + 1)
        assert np.sort(np.linalg.norm(verts[finger_idx] - verts[fingertip_idx], axis=1))[1] < 0.005


@pytest.mark.parametrize("convention", list(TIP_CONVENTIONS))
def test_layer_tip_joints_follow_the_convention(convention: str, left_path: Path) -> None:
    layer = HandLayer("left", model_path=left_path, tip_convention=convention)
    assert layer.tip_convention == convention
    verts, joints = layer.forward_numpy(np.zeros((1, 48)), np.zeros((1, 10)), np.zeros((1, 3)))
    for k, tip_idx in enumerate(TIP_CONVENTIONS[convention]["left"]):
        np.testing.assert_array_equal(joints[0, 4 * k + 4], verts[0, tip_idx])


def test_layer_rejects_unknown_tip_convention(right_path: Path) -> None:
    with pytest.raises(ValueError, match="tip convention 'mano'.*manopth, ho3d, smplx"):
        HandLayer("right", model_path=right_path, tip_convention="mano")
    assert HandLayer("right", model_path=right_path).tip_convention == "manopth"  # DexYCB's, the default


def test_left_mirrors_right(right_layer: HandLayer, left_layer: HandLayer, right_arrays: dict, left_path: Path) -> None:
    right_verts, right_joints = _pose_right(right_layer, np.zeros((1, 45)))
    left_verts, left_joints = _pose_right(left_layer, np.zeros((1, 45)))
    # Left vertex i mirrors right vertex order[i]: the identity but for 444 <-> 445, so that manopth's
    # left middle tip (445) mirrors its right one (444) and the default layers' joints mirror exactly.
    order = left_vertex_order()
    assert [i for i in range(778) if order[i] != i] == [444, 445] and order[445] == 444
    np.testing.assert_allclose(left_verts, right_verts[:, order] * MIRROR_XYZ, atol=1e-6)
    np.testing.assert_allclose(left_joints, right_joints * MIRROR_XYZ, atol=1e-6)
    np.testing.assert_array_equal(left_layer.faces, order[right_layer.faces[:, ::-1]])
    # A posed, shaped hand: mirrored pose (axis-angle components 1, 2 negated), x of transl negated.
    rng = np.random.default_rng(3)
    pose_right = rng.normal(0.0, 0.4, (2, 48))
    betas = rng.normal(0.0, 1.0, (2, 10))
    transl_right = rng.normal(0.0, 0.1, (2, 3))
    right_verts, right_joints = right_layer.forward_numpy(pose_right, betas, transl_right)
    left_verts, left_joints = left_layer.forward_numpy(pose_right * AXIS_ANGLE_MIRROR, betas, transl_right * MIRROR_XYZ)
    np.testing.assert_allclose(left_verts, right_verts[:, order] * MIRROR_XYZ, atol=2e-6)
    np.testing.assert_allclose(left_joints, right_joints * MIRROR_XYZ, atol=2e-6)
    left_arrays = load_mano_arrays(left_path)
    np.testing.assert_allclose(left_arrays["hands_mean"], right_arrays["hands_mean"] * AXIS_ANGLE_MIRROR[3:])


class _FakeCh:
    """Stands for chumpy.ch.Ch when writing the test pickle (pickled by class path)."""

    def __init__(self, value: np.ndarray) -> None:
        self.x = value
        self._dirty_vars = set()


def test_converter_reproduces_chumpy_pickle(tmp_path: Path, right_arrays: dict) -> None:
    # 1. Write an "official-style" pickle whose arrays are chumpy.ch.Ch objects.
    fake_chumpy = types.ModuleType("chumpy")
    fake_ch = types.ModuleType("chumpy.ch")
    fake_chumpy.ch = fake_ch
    _FakeCh.__module__, _FakeCh.__qualname__, _FakeCh.__name__ = "chumpy.ch", "Ch", "Ch"
    fake_ch.Ch = _FakeCh
    chumpy_keys = ("v_template", "shapedirs", "posedirs", "weights", "hands_components", "hands_mean")
    official = {key: (_FakeCh(value) if key in chumpy_keys else value) for key, value in right_arrays.items()}
    src = tmp_path / "official" / "MANO_RIGHT.pkl"
    src.parent.mkdir()
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = fake_chumpy, fake_ch
    try:
        src.write_bytes(pickle.dumps(official, protocol=2))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
        _FakeCh.__module__, _FakeCh.__qualname__, _FakeCh.__name__ = __name__, "_FakeCh", "_FakeCh"
    assert "chumpy" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(src.read_bytes())

    # 2. Convert without chumpy and compare every array exactly.
    dst = convert_official_mano(src, tmp_path / "converted" / "MANO_RIGHT.pkl")
    with open(dst, "rb") as handle:
        converted = pickle.load(handle)
    assert set(converted) == set(right_arrays)
    for key, value in right_arrays.items():
        if scipy.sparse.issparse(value):
            assert (converted[key] != value).nnz == 0
        elif isinstance(value, np.ndarray):
            assert type(converted[key]) is np.ndarray
            np.testing.assert_array_equal(converted[key], value)
        else:
            assert converted[key] == value
    assert smplx.MANO(model_path=str(dst), use_pca=False, flat_hand_mean=True).v_template.shape == (778, 3)

    # 3. resolve_mano_path converts a user's folder once, keyed by the file hash.
    resolved = resolve_mano_path("right", mano_dir=src.parent, cache_dir=tmp_path / "cache")
    assert resolved.parent.name.startswith("official-") and resolved.is_file()
    assert describe_hand_model("right", mano_dir=src.parent, cache_dir=tmp_path / "cache")["kind"] == "official"
    with pytest.raises(ValueError, match="MANO_LEFT.pkl"):
        resolve_mano_path("left", mano_dir=src.parent, cache_dir=tmp_path / "cache")


def test_converter_refuses_foreign_globals(tmp_path: Path) -> None:
    evil = tmp_path / "MANO_RIGHT.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_mano_pickle(evil)


def test_pca_round_trip(right_arrays: dict) -> None:
    components, mean = right_arrays["hands_components"], right_arrays["hands_mean"]
    rng = np.random.default_rng(11)
    coeffs = rng.normal(0.0, 1.0, (5, 45))
    axis_angle = pca_to_axis_angle(coeffs, components, mean)
    np.testing.assert_allclose(axis_angle_to_pca(axis_angle, components, mean), coeffs, atol=1e-10)
    few = rng.normal(0.0, 1.0, (5, 6))
    np.testing.assert_allclose(
        axis_angle_to_pca(pca_to_axis_angle(few, components, mean), components, mean, num_comps=6), few, atol=1e-10
    )
    np.testing.assert_allclose(pca_to_axis_angle(np.zeros((1, 12)), components, mean)[0], mean)
    # The first component is a coordinated curl: it flexes every finger's PIP the same way.
    curl = curl_pose(1.0, 0.0)
    assert components[0] @ curl / np.linalg.norm(curl) > 0.8
    with pytest.raises(ValueError, match="pca_coeffs"):
        pca_to_axis_angle(np.zeros((1, 46)), components, mean)


def test_layer_joint_order_and_tips(right_layer: HandLayer, right_path: Path) -> None:
    rng = np.random.default_rng(5)
    scales_and_sizes = ((0.5, 3), (0.3, 45), (1.0, 10), (0.1, 3))  # global_orient, hand_pose, betas, transl
    inputs = [torch.tensor(rng.normal(0.0, s, (3, n)), dtype=torch.float32) for s, n in scales_and_sizes]
    output = right_layer(*inputs)
    assert output.vertices.shape == (3, 778, 3) and output.joints.shape == (3, 21, 3)
    for k, tip_idx in enumerate(TIP_CONVENTIONS["manopth"]["right"]):  # the layer's default convention
        torch.testing.assert_close(output.joints[:, 4 * k + 4], output.vertices[:, tip_idx])
    mano = smplx.MANO(model_path=str(right_path), use_pca=False, flat_hand_mean=True)
    raw = mano(global_orient=inputs[0], hand_pose=inputs[1], betas=inputs[2], transl=inputs[3])
    torch.testing.assert_close(output.joints[:, 0], raw.joints[:, 0])
    torch.testing.assert_close(output.joints[:, 1:4], raw.joints[:, 13:16])  # thumb CMC/MCP/IP
    torch.testing.assert_close(output.joints[:, 5:8], raw.joints[:, 1:4])  # index
    torch.testing.assert_close(output.joints[:, 17:20], raw.joints[:, 7:10])  # little (MANO "pinky")
    assert right_layer.faces.dtype == np.int64 and right_layer.faces.shape == (1538, 3)
    with pytest.raises(ValueError, match="hand_pose"):
        right_layer(inputs[0], inputs[1][:, :44], inputs[2], inputs[3])


def test_vertex_finger_labels_cover_every_digit(right_arrays: dict) -> None:
    labels = vertex_finger_labels(right_arrays["weights"])
    assert labels.dtype == np.int8 and labels.shape == (778,)
    counts = np.bincount(labels, minlength=6)
    assert counts[0] > 150 and (counts[1:] > 80).all()


def test_building_a_hand_layer_prints_nothing_and_logs_smplx_notice(right_path: Path, capsys, caplog) -> None:
    import logging

    with caplog.at_level(logging.DEBUG, logger="unihope.hand.layer"):
        HandLayer("right", model_path=right_path)
        HandLayer("right", model_path=right_path)
    assert capsys.readouterr().out == ""  # smplx's print no longer reaches the console (or a progress display)
    notices = [r for r in caplog.records if "only 10 shape coefficients" in r.getMessage()]
    assert len(notices) == 2 and {r.levelno for r in notices} == {logging.DEBUG}
