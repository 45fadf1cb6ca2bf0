"""Rendered annotation against truth the tests construct: box occluders, ray casting, feature maps, skips."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from matplotlib.path import Path as PolygonPath
from scipy.spatial import ConvexHull

from unihope.storage.schema import (
    HAND_PART_FINGER_FIRST,
    SEG_BACKGROUND,
    SEG_HAND,
    SEG_OBJECT,
    AnnotatedFrame,
    FrameRecord,
    GraspLabel,
    Skip,
    SkipReason,
)
from unihope.config import CropConfig, HandModelConfig, RenderConfig
from unihope.hand import TIP_VERTEX_IDS
from unihope.render.annotate import AnnotationResources, annotate_frames, occlusion_bin
from unihope.render.camera import project_points
from unihope.render.features import box_keypoints, unit_cube_coordinates
from unihope.render.renderer import feature_intrinsics

K_FULL = np.array([[610.0, 0.0, 318.3], [0.0, 605.0, 243.7], [0.0, 0.0, 1.0]])
HAND_CFG = HandModelConfig()
RESOURCES = AnnotationResources()  # one per module, as a worker keeps one across batches
FACING_CAMERA = np.array([np.pi / 2, 0.0, 0.0])  # the procedural hand's palm plane becomes the image plane
HAND_TRANSL_M = np.array([-0.01, 0.0, 0.5])


# --- scene construction ----------------------------------------------------------------------------------


def hand_frame_geometry(side: str = "right", global_orient=FACING_CAMERA, transl_m=HAND_TRANSL_M):
    """Pose, vertices (778, 3) and joints (21, 3) of a hand in the camera frame."""
    layer, _ = RESOURCES.hand_layer(side, HAND_CFG)
    pose = np.zeros(48, np.float32)
    pose[:3] = global_orient
    pose[3:] = np.tile([0.0, 0.0, 0.15], 15)  # a slight, even curl
    betas = np.zeros(10, np.float32)
    verts, joints = layer.forward_numpy(pose[None], betas[None], np.asarray(transl_m, np.float32)[None])
    return pose, betas, np.asarray(transl_m, np.float32), verts[0].astype(np.float64), joints[0].astype(np.float64)


def write_image(path: Path) -> str:
    ys, xs = np.mgrid[:480, :640]
    image = np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)  # BGR gradient
    cv2.imwrite(str(path), image)
    return str(path)


def write_box(path: Path, extents_m) -> str:
    trimesh.creation.box(extents=extents_m).export(str(path))
    return str(path)


def make_frame(
    tmp_path: Path,
    key: str,
    box_min_m,
    box_max_m,
    side: str = "right",
    global_orient=FACING_CAMERA,
    transl_m=HAND_TRANSL_M,
    mesh_path: str | None = None,
    image_path: str | None = None,
) -> tuple[FrameRecord, np.ndarray]:
    """A frame with the test hand and an axis-aligned box object spanning [box_min_m, box_max_m] (camera frame)."""
    pose, betas, transl, verts, joints = hand_frame_geometry(side, global_orient, transl_m)
    box_min_m, box_max_m = np.asarray(box_min_m, float), np.asarray(box_max_m, float)
    if mesh_path is None:
        mesh_path = write_box(tmp_path / f"box_{key.replace('/', '_')}.obj", box_max_m - box_min_m)
    if image_path is None:
        image_path = write_image(tmp_path / "image.png")
    object_pose = np.hstack([np.eye(3), ((box_min_m + box_max_m) / 2)[:, None]])
    frame = FrameRecord(
        sample_key=key,
        dataset="dexycb",
        sequence_key="test/seq",
        serial="cam",
        frame_idx=0,
        image_path=image_path,
        depth_path="",
        image_size_wh=(640, 480),
        K=K_FULL,
        hand_side=side,
        mano_pose=pose,
        mano_betas=betas,
        mano_trans=transl,
        joints_3d=joints.astype(np.float32),
        joints_2d=project_points(joints, K_FULL).astype(np.float32),
        object_id=1,
        object_name="box",
        object_mesh_path=mesh_path,
        object_pose=object_pose.astype(np.float32),
    )
    return frame, verts


def label(frame: FrameRecord, is_grasping: bool = False) -> GraspLabel:
    return GraspLabel(frame.sample_key, 0.0, 0.0, is_grasping, frame.sample_key)


def box_corners(box_min_m, box_max_m) -> np.ndarray:
    return np.array([[x, y, z] for x in (box_min_m[0], box_max_m[0]) for y in (box_min_m[1], box_max_m[1])
                     for z in (box_min_m[2], box_max_m[2])])  # fmt: skip


def pixels_inside_projection(points_cam_m: np.ndarray, K: np.ndarray, size_px: int) -> np.ndarray:
    """(S, S) bool: pixel centres inside the convex hull of the projected points."""
    uv = project_points(points_cam_m, K)
    hull = PolygonPath(uv[ConvexHull(uv).vertices])
    ys, xs = np.mgrid[:size_px, :size_px]
    return hull.contains_points(np.stack([xs.ravel(), ys.ravel()], axis=1)).reshape(size_px, size_px)


def ray_cast_first_hit(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, size_px: int) -> np.ndarray:
    """(S, S) depth (camera z, metres; inf = no hit) of the first triangle hit by each pixel's ray.

    Möller-Trumbore against every triangle (both sides), rays through the pixel centres of K.
    """
    triangles = vertices[faces]  # (T, 3, 3)
    v0, edge1, edge2 = triangles[:, 0], triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    ys, xs = np.mgrid[:size_px, :size_px]
    pixels = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1).astype(np.float64)
    directions = pixels @ np.linalg.inv(K).T  # z = 1, so the ray parameter is the camera depth
    depth = np.full(len(directions), np.inf)
    uv = project_points(vertices, K)  # rays outside the mesh's projected box cannot hit it
    candidates = np.nonzero(((pixels[:, :2] >= uv.min(0) - 1) & (pixels[:, :2] <= uv.max(0) + 1)).all(axis=1))[0]
    for start in range(0, len(candidates), 256):
        rows = candidates[start : start + 256]
        d = directions[rows, None, :]  # (R, 1, 3)
        p = np.cross(d, edge2[None])  # (R, T, 3)
        det = np.einsum("rtk,tk->rt", p, edge1)
        inv_det = 1.0 / np.where(np.abs(det) < 1e-15, np.nan, det)
        s = -v0[None]  # origin (0, 0, 0) - v0
        u = np.einsum("rtk,tk->rt", p, -v0) * inv_det
        q = np.cross(s, edge1[None])  # (1, T, 3)
        v = np.einsum("rk,tk->rt", d[:, 0], q[0]) * inv_det
        t = np.einsum("tk,tk->t", edge2, q[0])[None] * inv_det
        hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
        depth[rows] = np.where(hit, t, np.inf).min(axis=1)
    return depth.reshape(size_px, size_px)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --- tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cover_from", [0.45, 0.7])
def test_box_in_front_gives_the_expected_visibility(tmp_path: Path, cover_from: float):
    _, _, _, verts, _ = hand_frame_geometry()
    lo, hi = verts.min(0), verts.max(0)
    box_min = [lo[0] + cover_from * (hi[0] - lo[0]), lo[1] - 0.03, lo[2] - 0.06]
    box_max = [hi[0] + 0.05, hi[1] + 0.03, lo[2] - 0.02]  # entirely in front of the hand
    frame, _ = make_frame(tmp_path, "test/seq/cam/000000", box_min, box_max)
    (result,) = annotate_frames([frame], [label(frame)], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert isinstance(result, AnnotatedFrame), result

    covered = pixels_inside_projection(box_corners(box_min, box_max), result.crop.K, 128)
    expected_visibility = 1.0 - (result.mask_hand & covered).sum() / result.mask_hand.sum()
    assert 0.15 < expected_visibility < 0.85  # a real partial occlusion
    assert result.visibility == pytest.approx(expected_visibility, abs=0.01)
    assert result.occlusion_ratio == pytest.approx(1.0 - result.visibility)
    assert result.occlusion_bin == occlusion_bin(expected_visibility, (0.25, 0.5, 0.75))
    assert iou(result.mask_object, covered) >= 0.98
    assert iou(result.mask_hand_visible, result.mask_hand & ~covered) >= 0.98
    # per finger, independently from the part map and the box's rectangle
    for finger_idx in range(5):
        part = result.hand_parts == HAND_PART_FINGER_FIRST + finger_idx
        if part.sum() > 0:
            expected = 1.0 - (part & covered).sum() / part.sum()
            assert result.finger_visibility[finger_idx] == pytest.approx(expected, abs=0.03)


def test_masks_and_depth_match_ray_casting(tmp_path: Path):
    _, _, _, verts, _ = hand_frame_geometry()
    lo, hi = verts.min(0), verts.max(0)
    mid = (lo + hi) / 2
    # a box that pierces the hand: in front of part of it, behind another part
    box_min = [mid[0] - 0.02, mid[1] - 0.015, lo[2] - 0.01]
    box_max = [mid[0] + 0.06, mid[1] + 0.045, hi[2] + 0.04]
    frame, _ = make_frame(tmp_path, "test/seq/cam/000001", box_min, box_max)
    (result,) = annotate_frames([frame], [label(frame, True)], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert isinstance(result, AnnotatedFrame), result

    layer, _ = RESOURCES.hand_layer("right", HAND_CFG)
    box = trimesh.creation.box(extents=np.subtract(box_max, box_min))
    hand_depth = ray_cast_first_hit(verts, layer.faces, result.crop.K, 128)
    box_depth = ray_cast_first_hit(box.vertices + (np.add(box_min, box_max) / 2), box.faces, result.crop.K, 128)
    hand_mask, visible = np.isfinite(hand_depth), hand_depth < box_depth
    object_mask = np.isfinite(box_depth) & (box_depth <= hand_depth)
    assert 0.2 < visible.sum() / hand_mask.sum() < 0.95 and object_mask.sum() > 100

    assert iou(result.mask_hand, hand_mask) >= 0.98
    assert iou(result.mask_hand_visible, visible) >= 0.98
    assert iou(result.mask_object, object_mask) >= 0.98
    both = result.mask_hand & hand_mask
    np.testing.assert_allclose(result.depth_hand[both], hand_depth[both], atol=2e-3)
    assert (result.depth_hand[~result.mask_hand] == 0).all()
    scene_both = (result.depth_scene > 0) & np.isfinite(np.minimum(hand_depth, box_depth))
    np.testing.assert_allclose(result.depth_scene[scene_both], np.minimum(hand_depth, box_depth)[scene_both], atol=2e-3)
    # visibility is the mask ratio
    assert result.visibility == pytest.approx(result.mask_hand_visible.sum() / result.mask_hand.sum())


def test_parts_keypoints_and_image_crop(tmp_path: Path):
    frame, verts = make_frame(tmp_path, "test/seq/cam/000002", [0.3, 0.3, 0.4], [0.35, 0.35, 0.45])  # box off to the side
    (result,) = annotate_frames([frame], [label(frame)], CropConfig(size_px=256), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert isinstance(result, AnnotatedFrame), result
    assert result.image.shape == (256, 256, 3) and result.image.dtype == np.uint8
    assert result.visibility == 1.0 and result.occlusion_bin == 3
    np.testing.assert_array_equal(result.finger_visibility, np.ones(5, np.float32))
    # every part appears, and each fingertip vertex lands on its finger's label
    assert set(np.unique(result.hand_parts)) == set(range(7))
    for finger_idx, tip_vertex in enumerate(TIP_VERTEX_IDS.values()):
        u, v = np.round(project_points(verts[tip_vertex], result.crop.K)).astype(int)
        window = result.hand_parts[v - 1 : v + 2, u - 1 : u + 2]
        assert (window == HAND_PART_FINGER_FIRST + finger_idx).any(), (finger_idx, window)
    # joints: affine of the full-image joints == projection with the crop intrinsics
    np.testing.assert_allclose(result.joints_2d, project_points(frame.joints_3d, result.crop.K), atol=1e-3)
    # object keypoints: centre, corners and edge midpoints of the box, projected with the crop intrinsics
    corners = box_corners([0.3, 0.3, 0.4], [0.35, 0.35, 0.45])
    centre_px = project_points([0.325, 0.325, 0.425], result.crop.K)
    np.testing.assert_allclose(result.object_keypoints_2d[0], centre_px, atol=1e-3)
    assert {tuple(np.round(p, 2)) for p in result.object_keypoints_2d[1:9]} == {
        tuple(np.round(p, 2)) for p in project_points(corners, result.crop.K).astype(np.float32)
    }
    # the RGB crop is the warped BGR image
    bgr = cv2.imread(frame.image_path)
    expected = cv2.warpAffine(bgr, result.crop.affine, (256, 256), flags=cv2.INTER_LINEAR)[..., ::-1]
    np.testing.assert_array_equal(result.image, expected)


def test_feature_maps_ranges_and_values(tmp_path: Path):
    _, _, _, verts, _ = hand_frame_geometry()
    lo, hi = verts.min(0), verts.max(0)
    box_min = [(lo[0] + hi[0]) / 2, lo[1] - 0.01, lo[2] - 0.05]
    box_max = [hi[0] + 0.04, hi[1] + 0.02, lo[2] - 0.005]
    frame, _ = make_frame(tmp_path, "test/seq/cam/000003", box_min, box_max)
    render_cfg = RenderConfig(relative_depth_range_m=0.1)
    (result,) = annotate_frames([frame], [label(frame, True)], CropConfig(), render_cfg, HAND_CFG, resources=RESOURCES)
    assert isinstance(result, AnnotatedFrame), result

    assert result.seg_map.shape == (32, 32) and result.seg_map.dtype == np.uint8
    assert result.dense_map.shape == (32, 32, 3) and result.dense_map.dtype == np.float32
    assert result.relative_depth_map.shape == (32, 32) and result.relative_depth_map.dtype == np.float32
    assert set(np.unique(result.seg_map)) == {SEG_BACKGROUND, SEG_HAND, SEG_OBJECT}
    assert result.dense_map.min() >= 0.0 and result.dense_map.max() <= 1.0
    assert result.relative_depth_map.min() >= -1.0 and result.relative_depth_map.max() <= 1.0
    background = result.seg_map == SEG_BACKGROUND
    assert (result.dense_map[background] == 0).all() and (result.relative_depth_map[background] == 0).all()

    # the low-resolution segmentation agrees with the full-size masks sampled at the feature pixel centres
    centres = (np.arange(32) * 4 + 1.5).round().astype(int)
    full_seg = np.where(result.mask_object, SEG_OBJECT, np.where(result.mask_hand_visible, SEG_HAND, SEG_BACKGROUND))
    assert (full_seg[np.ix_(centres, centres)] == result.seg_map).mean() >= 0.93

    # object pixels: back-project with the rendered depth and compare NOC and relative depth with the truth
    K_feature = feature_intrinsics(result.crop.K, 128, 32)
    obj = result.seg_map == SEG_OBJECT
    interior = obj & (cv2.erode(obj.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    assert interior.sum() >= 10
    centre_z = (box_min[2] + box_max[2]) / 2
    ys, xs = np.nonzero(interior)
    z = centre_z + result.relative_depth_map[ys, xs] * 0.1  # invert the documented scaling
    points = (np.stack([xs, ys, np.ones_like(xs)], axis=1) @ np.linalg.inv(K_feature).T) * z[:, None]
    # Song et al.'s NOC: one scale (the longest side) for all axes, centred in the unit cube
    box_centre, longest_m = (np.asarray(box_min) + np.asarray(box_max)) / 2, float(np.subtract(box_max, box_min).max())
    expected_noc = (points - box_centre) / longest_m + 0.5
    np.testing.assert_allclose(result.dense_map[ys, xs], expected_noc, atol=0.03)
    assert np.allclose(z, box_min[2], atol=1e-3)  # the visible face is the front face
    # hand pixels: the dense map is the template embedding, so it lies inside the unit cube and varies
    hand = result.seg_map == SEG_HAND
    assert result.dense_map[hand].std(axis=0).min() > 0.05


def test_bad_frames_are_skipped_with_reasons(tmp_path: Path):
    box = ([0.3, 0.3, 0.4], [0.35, 0.35, 0.45])
    good, _ = make_frame(tmp_path, "t/s/c/000000", *box)
    no_mesh, _ = make_frame(tmp_path, "t/s/c/000001", *box, mesh_path=str(tmp_path / "nope.obj"))
    bad_mesh_path = tmp_path / "bad.obj"
    bad_mesh_path.write_text("v 0 0 0\nv 1 0 0\n")  # no faces
    bad_mesh, _ = make_frame(tmp_path, "t/s/c/000002", *box, mesh_path=str(bad_mesh_path))
    no_image, _ = make_frame(tmp_path, "t/s/c/000003", *box, image_path=str(tmp_path / "missing.png"))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    bad_image, _ = make_frame(tmp_path, "t/s/c/000004", *box, image_path=str(garbage))
    outside, _ = make_frame(tmp_path, "t/s/c/000005", *box, transl_m=[1.0, 0.0, 0.5])
    behind, _ = make_frame(tmp_path, "t/s/c/000006", *box, transl_m=[0.0, 0.0, -0.5])
    left, _ = make_frame(tmp_path, "t/s/c/000007", *box, side="left")
    beyond_far_plane, _ = make_frame(tmp_path, "t/s/c/000008", *box, transl_m=[0.0, 0.0, 12.0])  # box ~10 px wide
    frames = [good, no_mesh, bad_mesh, no_image, bad_image, outside, behind, left, beyond_far_plane]
    results = annotate_frames(frames, [label(f) for f in frames], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert [r.frame.sample_key if isinstance(r, AnnotatedFrame) else r.sample_key for r in results] == [
        f.sample_key for f in frames
    ]
    reasons = [r.reason if isinstance(r, Skip) else None for r in results]
    assert reasons == [
        None,
        SkipReason.MESH_MISSING,
        SkipReason.MESH_MISSING,
        SkipReason.MISSING_FILE,
        SkipReason.CORRUPT_FILE,
        SkipReason.HAND_OUTSIDE_IMAGE,
        SkipReason.DEGENERATE_POSE,
        None,
        SkipReason.HAND_NOT_VISIBLE,
    ]
    assert all(r.stage == "annotate" and r.detail for r in results if isinstance(r, Skip))
    assert results[7].mask_hand.sum() > 500  # the left hand renders too

    with pytest.raises(ValueError, match="one label per frame"):
        annotate_frames(frames, [label(good)], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    with pytest.raises(ValueError, match="multiple of"):
        annotate_frames([good], [label(good)], CropConfig(size_px=130), RenderConfig(), HAND_CFG, resources=RESOURCES)


def test_survives_another_renderer_being_deleted(tmp_path: Path):
    """pyrender's EGL delete() terminates the process-wide display; the cached renderer must rebuild."""
    from unihope.render.gl import import_pyrender

    frame, _ = make_frame(tmp_path, "t/s/c/000000", [0.3, 0.3, 0.4], [0.35, 0.35, 0.45])
    (first,) = annotate_frames([frame], [label(frame)], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    other = import_pyrender("egl").OffscreenRenderer(64, 64)  # e.g. the synthetic source's renderer
    other.delete()
    (second,) = annotate_frames([frame], [label(frame)], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert isinstance(first, AnnotatedFrame) and isinstance(second, AnnotatedFrame)
    np.testing.assert_array_equal(first.hand_parts, second.hand_parts)
    np.testing.assert_array_equal(first.dense_map, second.dense_map)


def test_render_pixel_centres_follow_the_opencv_convention():
    """A quad edge projected at u = 63.25 px must start covering pixel 64, not 63 (half-pixel convention)."""
    renderer = RESOURCES.renderer(128, "egl")
    _, geometry = RESOURCES.hand_layer("right", HAND_CFG)
    K = np.array([[100.0, 0.0, 63.25], [0.0, 100.0, 40.25], [0.0, 0.0, 1.0]])
    quad = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3], [2, 1, 0], [3, 2, 0]], dtype=np.uint32)
    noc = np.c_[unit_cube_coordinates(quad), np.ones(4)].astype(np.float32)
    renderer.set_object("unit-quad", quad, faces, noc)
    far_hand = np.zeros((778, 3)) + [0.0, 0.0, 5.0]  # collapsed behind the quad
    layers = renderer.render(K, far_hand, geometry, np.hstack([np.eye(3), [[0.0], [0.0], [1.0]]]), 32)
    covered = layers.scene_labels == SEG_OBJECT
    cols, rows = np.nonzero(covered.any(0))[0], np.nonzero(covered.any(1))[0]
    assert (cols.min(), rows.min()) == (64, 41)
    assert box_keypoints(quad).shape == (21, 3)


def test_synthetic_dataset_end_to_end(synthetic_dexycb: Path):
    """Every synthetic frame is annotated; visibility agrees with the generator's full-image truth."""
    import json

    from unihope.config import GraspConfig, SourceConfig
    from unihope.grasp import label_grasps
    from unihope.sources import open_source

    source = open_source(SourceConfig(kind="dexycb", root=synthetic_dexycb), HAND_CFG)
    frames = source.load(source.index())
    assert all(isinstance(frame, FrameRecord) for frame in frames)
    results = annotate_frames(frames, label_grasps(frames, GraspConfig()), CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    skips = [r for r in results if isinstance(r, Skip)]
    assert skips == []
    truth = json.loads((synthetic_dexycb / "truth" / "visibility.json").read_text())
    measured = np.array([r.visibility for r in results])
    expected = np.array([truth[r.frame.sample_key] for r in results])
    assert np.abs(measured - expected).max() < 0.03  # crop (128 px) vs full-image (640 px) rasterisation
    assert np.abs(measured - expected).mean() < 0.005
    assert measured.min() < 0.9  # the grasps occlude
    assert {r.frame.hand_side for r in results} == {"right", "left"}
    for result in results:
        np.testing.assert_allclose(result.joints_2d, project_points(result.frame.joints_3d, result.crop.K), atol=1e-3)
        assert result.mask_hand.shape == (128, 128) and result.image.shape == (128, 128, 3)
        assert result.occlusion_bin == occlusion_bin(result.visibility, (0.25, 0.5, 0.75))
        if result.grasp.is_grasping:  # the grasped object is inside the crop
            assert result.mask_object.sum() > 0


# Rasterisers promise the same pixels for the same input on one machine, not across CPUs or after an ulp
# of a vertex: an edge pixel may flip and a depth sample move by microns. A stale mesh moves whole pixels.
MAX_FLIPPED_LABEL_FRACTION = 0.002  # of the crop's pixels
MAX_DEPTH_DIFF_M = 2e-5  # where both renders see a surface


def assert_same_render(first: AnnotatedFrame, again: AnnotatedFrame) -> None:
    """The two annotations show the same geometry, up to rasteriser rounding."""
    for name in ("hand_parts", "mask_object", "seg_map"):
        a, b = getattr(first, name), getattr(again, name)
        flipped = np.count_nonzero(a != b) / a.size
        assert flipped <= MAX_FLIPPED_LABEL_FRACTION, f"{name}: {flipped:.2%} of pixels differ"
    for name in ("depth_hand", "depth_scene"):
        a, b = getattr(first, name), getattr(again, name)
        both = (a > 0) & (b > 0)
        assert np.count_nonzero((a > 0) != (b > 0)) / a.size <= MAX_FLIPPED_LABEL_FRACTION, f"{name} coverage"
        assert np.abs(a[both] - b[both]).max() <= MAX_DEPTH_DIFF_M, f"{name}: {np.abs(a[both] - b[both]).max()} m"
    for name in ("dense_map", "relative_depth_map"):
        a, b = getattr(first, name), getattr(again, name)
        assert np.count_nonzero(np.abs(a - b).max(axis=-1) > 1e-3 if a.ndim == 3 else np.abs(a - b) > 1e-3) / a[..., 0].size <= 0.02, name


def test_hand_vertices_do_not_depend_on_the_batch(tmp_path: Path):
    """A frame's hand mesh is the same alone, first or last in a batch, beside either side (no batch coupling)."""
    from unihope.render.annotate import _hand_vertices_by_frame

    right, _ = make_frame(tmp_path, "t/s/c/000000", [0.3, 0.3, 0.4], [0.35, 0.35, 0.45])
    left, _ = make_frame(tmp_path, "t/s/c/000001", [0.2, 0.2, 0.4], [0.28, 0.26, 0.47], side="left")
    other, _ = make_frame(tmp_path, "t/s/c/000002", [0.2, 0.2, 0.4], [0.28, 0.26, 0.47], transl_m=[0.02, 0.01, 0.45])
    (alone,) = _hand_vertices_by_frame([right], HAND_CFG, "manopth", RESOURCES)
    batches = ([right, left, right], [other, right, other, other, left], [left] * 3 + [right])
    for batch in batches:
        for frame, verts in zip(batch, _hand_vertices_by_frame(batch, HAND_CFG, "manopth", RESOURCES)):
            if frame is right:
                np.testing.assert_array_equal(verts, alone)


def test_cached_gpu_meshes_give_the_same_result_after_other_frames(tmp_path: Path):
    """Uploaded object meshes and the per-side hand buffer are reused: a frame renders the same after others."""
    import dataclasses

    box = ([0.3, 0.3, 0.4], [0.35, 0.35, 0.45])
    right, _ = make_frame(tmp_path, "t/s/c/000000", *box)
    left, _ = make_frame(tmp_path, "t/s/c/000001", [0.2, 0.2, 0.4], [0.28, 0.26, 0.47], side="left")
    # the same hand with its fingers curled a little more: what a stale hand buffer would show
    curled_pose = right.mano_pose.copy()
    curled_pose[3:] = np.tile(np.float32([0.0, 0.0, 0.25]), 15)
    moved = dataclasses.replace(right, sample_key="t/s/c/000002", mano_pose=curled_pose)
    frames = [right, left, right, moved]
    first, other, again, stale = annotate_frames(frames, [label(f) for f in frames], CropConfig(), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert all(isinstance(r, AnnotatedFrame) for r in (first, other, again, stale))
    assert not np.array_equal(first.hand_parts, other.hand_parts)
    assert_same_render(first, again)
    assert set(np.unique(first.hand_parts)) == set(range(7))
    # the comparison is tolerant of rounding, not of a mesh that moved by a few pixels
    with pytest.raises(AssertionError):
        assert_same_render(first, stale)


def test_feature_labels_and_depth_are_the_scene_pass_at_feature_pixel_centres(tmp_path: Path):
    """The 1/4 label and depth maps are the crop-size scene pass sampled at each 4x4 block's centre pixel."""
    from unihope.render.features import block_centre_samples

    ramp = np.arange(64).reshape(8, 8)
    np.testing.assert_array_equal(block_centre_samples(ramp, 4), ramp[[2, 6]][:, [2, 6]])
    np.testing.assert_array_equal(block_centre_samples(ramp, 1), ramp)
    with pytest.raises(ValueError, match="blocks"):
        block_centre_samples(ramp, 3)

    _, _, _, verts, _ = hand_frame_geometry()
    lo, hi = verts.min(0), verts.max(0)
    frame, _ = make_frame(tmp_path, "t/s/c/000000", [(lo[0] + hi[0]) / 2, lo[1], lo[2] - 0.03], [hi[0] + 0.03, hi[1], lo[2] - 0.01])
    (result,) = annotate_frames([frame], [label(frame, True)], CropConfig(), RenderConfig(relative_depth_range_m=0.1), HAND_CFG, resources=RESOURCES)
    assert isinstance(result, AnnotatedFrame), result
    centres = np.arange(32) * 4 + 2
    full_seg = np.where(result.mask_object, SEG_OBJECT, np.where(result.depth_scene > 0, SEG_HAND, SEG_BACKGROUND))
    np.testing.assert_array_equal(result.seg_map, full_seg[np.ix_(centres, centres)])
    centre_z = float(result.depth_scene[result.mask_object].min())  # the box front face, seen flat on
    assert centre_z == pytest.approx(lo[2] - 0.03, abs=1e-3)
    relative = np.clip((result.depth_scene[np.ix_(centres, centres)] - (lo[2] - 0.02)) / 0.1, -1, 1)
    np.testing.assert_allclose(result.relative_depth_map, np.where(result.seg_map > 0, relative, 0.0), atol=1e-6)


def test_annotation_crops_by_upstreams_rule_from_joints_and_box_keypoints(tmp_path: Path):
    """The annotated crop is UniHOPE's box of the 2D joints and the object mesh's 21 box keypoints."""
    from tests.test_crop import reference_box_keypoints, reference_crop_box

    _, _, _, verts, _ = hand_frame_geometry()
    lo, hi = verts.min(0), verts.max(0)
    box_min = [hi[0] - 0.01, lo[1] - 0.03, lo[2]]  # beside the hand, sticking out of its box
    box_max = [hi[0] + 0.07, lo[1] + 0.05, lo[2] + 0.05]
    frame, _ = make_frame(tmp_path, "test/seq/cam/000009", box_min, box_max)
    free, held = annotate_frames([frame, frame], [label(frame), label(frame, True)], CropConfig(), RenderConfig(),
                                 HAND_CFG, resources=RESOURCES)  # fmt: skip
    assert isinstance(free, AnnotatedFrame) and isinstance(held, AnnotatedFrame)
    keypoints_2d = project_points(reference_box_keypoints(box_min, box_max), K_FULL)
    np.testing.assert_allclose(free.crop.box_xyxy, reference_crop_box(frame.joints_2d, None, False), atol=1e-6)
    np.testing.assert_allclose(held.crop.box_xyxy, reference_crop_box(frame.joints_2d, keypoints_2d, True), atol=1e-6)
    assert held.crop.box_xyxy[2] > free.crop.box_xyxy[2]  # the object widened the grasping crop


def test_object_coordinates_keep_the_aspect():
    """A 4 x 2 x 1 box maps to [0, 1] x [0.25, 0.75] x [0.375, 0.625]: one scale, centred (not per axis)."""
    corners = box_corners([0.3, -0.1, 2.0], [0.34, -0.08, 2.01])  # 4 x 2 x 1 cm, off the origin
    noc = unit_cube_coordinates(corners)
    np.testing.assert_allclose(noc.min(0), [0.0, 0.25, 0.375], atol=1e-6)
    np.testing.assert_allclose(noc.max(0), [1.0, 0.75, 0.625], atol=1e-6)
    # distances scale by one factor: the shape is similar to the input
    pair_m = np.linalg.norm(corners[:, None] - corners[None], axis=-1)
    pair_noc = np.linalg.norm(noc[:, None].astype(np.float64) - noc[None], axis=-1)
    np.testing.assert_allclose(pair_noc, pair_m / 0.04, atol=1e-6)
    np.testing.assert_allclose(unit_cube_coordinates(np.zeros((3, 3))), 0.5)  # a point: the cube's centre


def test_a_frame_annotated_on_another_thread_after_this_one_renders(tmp_path: Path):
    """A build renders on its render thread after a direct caller rendered the same crop size on the main
    thread: each thread gets its own GL context (one context cannot be current on two threads)."""
    from unihope.tasks.common import on_render_thread

    frame, _ = make_frame(tmp_path, "t/s/c/000000", [0.3, 0.3, 0.4], [0.35, 0.35, 0.45])
    (here,) = annotate_frames([frame], [label(frame)], CropConfig(size_px=64), RenderConfig(), HAND_CFG, resources=RESOURCES)
    (there,) = on_render_thread(partial(annotate_frames, resources=RESOURCES), [frame], [label(frame)],
                                CropConfig(size_px=64), RenderConfig(), HAND_CFG)
    (again,) = annotate_frames([frame], [label(frame)], CropConfig(size_px=64), RenderConfig(), HAND_CFG, resources=RESOURCES)
    assert isinstance(there, AnnotatedFrame) and isinstance(again, AnnotatedFrame)
    assert_same_render(here, there)
    assert_same_render(here, again)
