"""export-unihope on a real small build: every file UniHOPE's DexYCB loader opens exists and reads back as it reads it.

The upstream rules below (crop box, box keypoints, affine) are restated from the released loader's
behaviour (data_loader/DEX_YCB_HOPE.py, common/utils/dataset_hor_util.py, see ../shared/REFERENCE.md)
independently of unihope.crop, so that a drift on either side fails here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import trimesh
import yaml
from PIL import Image

from unihope.config import HandModelConfig
from unihope.sources.ycb_meshes import YCB_NAMES

INPUT_RES_PX = 64  # build_small_dataset's crop size
IMAGE_WH = (640, 480)


def _upstream_box(points_px: np.ndarray, factor: float) -> np.ndarray:
    """Upstream's joint box: min/max, centre cast with int(), half-size (max - min) * factor / 2, float32."""
    lo, hi = points_px.min(0), points_px.max(0)
    centre = np.asarray([int((hi[0] + lo[0]) / 2), int((hi[1] + lo[1]) / 2)])
    delta = (hi - lo) * factor / 2
    return np.array([*(centre - delta), *(centre + delta)], dtype=np.float32)


def _upstream_affine(joint_2d: np.ndarray, object_2d: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, scale and the (2, 3) affine upstream crops with (no rotation, no jitter), float32 as it returns it."""
    boxes = [_upstream_box(joint_2d, 1.5)] + ([] if object_2d is None else [_upstream_box(object_2d, 1.5)])
    corners = np.concatenate([b.reshape(2, 2) for b in boxes])
    lo = np.maximum(corners.min(0), 0)
    hi = np.minimum(corners.max(0), IMAGE_WH)
    centre = np.asarray([int((hi[0] + lo[0]) / 2), int((hi[1] + lo[1]) / 2)])
    scale = float(max(hi - lo))
    res = INPUT_RES_PX
    affine = np.array([[res / scale, 0, res * (-centre[0] / scale + 0.5)],
                       [0, res / scale, res * (-centre[1] / scale + 0.5)]])
    return centre, affine.astype(np.float32), scale


def _upstream_box_keypoints(points_m: np.ndarray) -> np.ndarray:
    """Upstream's 21 object keypoints only matter through their box here: the 8 corners suffice for min/max."""
    lo, hi = points_m.min(0), points_m.max(0)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small synthetic DexYCB build (8 frames), its calibration betas made float64-only, exported to a folder
    outside the tree."""
    from tests.training_fixtures import build_small_dataset
    from unihope.export_unihope import export_unihope_labels

    work = tmp_path_factory.mktemp("export")
    build_small_dataset(work, str(work / "ds"), HandModelConfig(), num_sequences=2)
    root = work / "src-2"
    # betas no float32 can hold: the export must pass the calibration's float64 values through
    for mano_yml in root.glob("calibration/mano_*/mano.yml"):
        data = yaml.safe_load(mano_yml.read_text())
        data["betas"] = [float(b) + 1e-9 * (i + 1) for i, b in enumerate(data["betas"])]
        mano_yml.write_text(yaml.safe_dump(data))
    out = work / "unihope"
    summary = export_unihope_labels(work / "ds", "s0", out, dexycb_root=root)
    return root, out, summary


def _samples(out):
    for path in sorted(out.glob("dex_ycb_s0_*_data.json")):
        mode = path.name.split("_")[3]
        yield mode, json.loads(path.read_text())


def test_every_file_the_loader_opens_exists_from_its_dataset_root(exported):
    root, out, summary = exported
    # all 21 objects' points, read as the loader reads them (trimesh's xyz reader)
    points = {name: np.asarray(trimesh.load(out / "models" / name / "points.xyz").vertices) for name in YCB_NAMES}
    assert all(p.ndim == 2 and p.shape[1] == 3 for p in points.values())
    num_samples = 0
    for mode, samples in _samples(out):
        grasp = np.load(out / f"grasp_s0_{mode}.npy", allow_pickle=True).item()
        occlusion = np.load(out / f"hand_occ_s0_{mode}.npy", allow_pickle=True).item()
        assert set(grasp) == set(samples) == set(occlusion)
        for info in samples.values():
            image = Image.open(os.path.join(out, info["color_file"])).convert("RGB")
            gray = Image.open(os.path.join(out, info["object_seg_file"]))
            assert gray.mode == "L" and gray.size == image.size == IMAGE_WH
            assert info["object_seg_file"].startswith("object_render/") and "grasp_object_seg_" in info["object_seg_file"]
            with np.load(os.path.join(out, info["label_file"])) as label:
                seg = label["seg"]
            grasped_id = info["ycb_ids"][info["ycb_grasp_ind"]]
            np.testing.assert_array_equal(np.asarray(gray) != 0, seg == grasped_id)
            assert (seg == grasped_id).any()
            # the grasped object's points are real geometry (the placeholders are for objects no sample uses)
            assert YCB_NAMES[grasped_id - 1] not in summary.placeholder_models
            assert np.ptp(points[YCB_NAMES[grasped_id - 1]], axis=0).min() > 0.01
            num_samples += 1
    assert num_samples == 8 and summary.num_masks_written == 8


def test_betas_are_the_calibration_float64_values(exported):
    root, out, _ = exported
    checked = 0
    for _, samples in _samples(out):
        for info in samples.values():
            sequence = "/".join(info["color_file"].split("/")[-4:-2])
            meta = yaml.safe_load((root / sequence / "meta.yml").read_text())
            mano = yaml.safe_load((root / "calibration" / f"mano_{meta['mano_calib'][0]}" / "mano.yml").read_text())
            assert info["mano_betas"] == mano["betas"]  # exact: no trip through float32
            assert info["mano_betas"] != np.float32(mano["betas"]).tolist()
            checked += 1
    assert checked == 8


def test_exported_crop_is_unihopes_crop_to_float_precision(exported):
    """UniHOPE's rule on the exported labels (2D joints, object pose, points.xyz box) gives the exported crop."""
    from unihope.storage.view import open_dataset

    root, out, _ = exported
    view = open_dataset(out.parent / "ds")
    stored = dict(zip(view.column("sample_key").tolist(), view.column("crop_affine")))
    view.close()
    num_grasping = 0
    for mode, samples in _samples(out):
        grasp = np.load(out / f"grasp_s0_{mode}.npy", allow_pickle=True).item()
        for sample_id, info in samples.items():
            joint_2d = np.array(info["joint_2d"], dtype=np.float32).squeeze()
            object_2d = None
            if grasp[sample_id]:
                name = YCB_NAMES[info["ycb_ids"][info["ycb_grasp_ind"]] - 1]
                keypoints = _upstream_box_keypoints(np.asarray(trimesh.load(out / "models" / name / "points.xyz").vertices))
                rt = np.array(info["pose_y"][info["ycb_grasp_ind"]], dtype=np.float32)
                intr = info["intrinsics"]
                K = np.array([[intr["fx"], 0, intr["ppx"]], [0, intr["fy"], intr["ppy"]], [0, 0, 1]])
                uvw = (K @ (rt[:3, :3] @ keypoints.T + rt[:3, 3:])).T
                object_2d = uvw[:, :2] / uvw[:, 2:]
                num_grasping += 1
            centre, affine, scale = _upstream_affine(joint_2d, object_2d)
            np.testing.assert_array_equal(info["crop_center"], centre)
            assert info["crop_scale"] == pytest.approx(scale, rel=1e-6)
            exported_affine = np.asarray(info["crop_affine"], dtype=np.float32)
            np.testing.assert_allclose(exported_affine, affine, rtol=1e-6, atol=2e-5)
            # the stored (cv2) affine is the same crop, half a crop pixel apart: the convention, not the box
            key = "/".join(info["color_file"].split("/")[-4:-1]) + "/" + info["color_file"][-10:-4]
            np.testing.assert_allclose(stored[key][:, 2] + 0.5, affine[:, 2], atol=2e-5)
    assert num_grasping > 0
