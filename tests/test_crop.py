"""UniHOPE's crop rule against an independent implementation written from the rule's text (not from our code).

The rule (UniHOPE's loader, docs/DATASETS.md "Crop"): hand box = min/max of the 21 2D joints, centre cast
to int, half-size (max - min) * 1.5 / 2 per axis; when grasping, fused with the object's 21-keypoint box
made the same way: union, clipped to [0, W] x [0, H], centre int((min + max) / 2), side = the larger
extent. Not grasping: the hand box alone, clipped, the larger side.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from unihope.storage.schema import Crop, FrameRecord, GraspLabel, Skip, SkipReason
from unihope.config import CropConfig
from unihope.crop import apply_affine, compute_crop, unihope_affine
from unihope.render.camera import project_points
from unihope.render.features import box_keypoints

K_FULL = np.array([[612.0, 0.0, 321.7], [0.0, 609.0, 238.9], [0.0, 0.0, 1.0]])
WIDTH_PX, HEIGHT_PX = 640, 480


# --- the reference, in plain Python from the rule's text -------------------------------------------------


def reference_joint_box(points_px, factor):
    xs = [float(p[0]) for p in points_px]
    ys = [float(p[1]) for p in points_px]
    centre_x, centre_y = int((max(xs) + min(xs)) / 2), int((max(ys) + min(ys)) / 2)
    half_x, half_y = (max(xs) - min(xs)) * factor / 2, (max(ys) - min(ys)) * factor / 2
    box = [centre_x - half_x, centre_y - half_y, centre_x + half_x, centre_y + half_y]
    return [float(np.float32(v)) for v in box]  # upstream returns the box as a float32 array


def reference_square(boxes, width, height):
    min_x = max(0.0, min(b[0] for b in boxes))
    min_y = max(0.0, min(b[1] for b in boxes))
    max_x = min(float(width), max(b[2] for b in boxes))
    max_y = min(float(height), max(b[3] for b in boxes))
    centre_x, centre_y = int((max_x + min_x) / 2), int((max_y + min_y) / 2)
    side = max(max_x - min_x, max_y - min_y)
    return [centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2]


def reference_crop_box(joints_2d, object_keypoints_2d, is_grasping):
    boxes = [reference_joint_box(joints_2d, 1.5)]
    if is_grasping:
        boxes.append(reference_joint_box(object_keypoints_2d, 1.5))
    return reference_square(boxes, WIDTH_PX, HEIGHT_PX)


def reference_box_keypoints(lower, upper):
    """Upstream's 21: the 8 corners of the axis-aligned box, the 12 edge midpoints, the centre (any order)."""
    corners = [np.array(c) for c in itertools.product(*zip(lower, upper))]
    edges = [(a + b) / 2 for a, b in itertools.combinations(corners, 2) if np.count_nonzero(a != b) == 1]
    return np.array(corners + edges + [(np.asarray(lower) + np.asarray(upper)) / 2])


# --- frames ------------------------------------------------------------------------------------------------


def make_frame(joints_3d: np.ndarray, key: str = "s/seq/cam/000000") -> FrameRecord:
    return FrameRecord(
        sample_key=key, dataset="dexycb", sequence_key="s/seq", serial="cam", frame_idx=0, image_path="",
        depth_path="", image_size_wh=(WIDTH_PX, HEIGHT_PX), K=K_FULL, hand_side="right",
        mano_pose=np.zeros(48, np.float32), mano_betas=np.zeros(10, np.float32), mano_trans=np.zeros(3, np.float32),
        joints_3d=joints_3d.astype(np.float32), joints_2d=project_points(joints_3d, K_FULL).astype(np.float32),
        object_id=1, object_name="002_master_chef_can", object_mesh_path="", object_pose=np.zeros((3, 4), np.float32),
    )  # fmt: skip


def grasp_for(frame: FrameRecord, is_grasping: bool) -> GraspLabel:
    return GraspLabel(frame.sample_key, 0.0, 0.0, is_grasping, frame.sample_key)


def random_hand(rng: np.random.Generator, centre_m) -> np.ndarray:
    return rng.normal(size=(21, 3)) * [0.03, 0.025, 0.01] + centre_m


def random_object(rng: np.random.Generator, centre_m) -> np.ndarray:
    """(21, 3) camera-frame keypoints of a randomly rotated box of random extents."""
    half = rng.uniform(0.02, 0.08, 3)
    keypoints_obj = reference_box_keypoints(-half, half)
    R = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    return keypoints_obj @ R.T + centre_m


CASES = {
    # name: (hand centre, object centre) in metres, camera frame
    "centre": ((0.0, 0.0, 0.5), (0.06, 0.03, 0.5)),
    "left_top_edge": ((-0.22, -0.16, 0.5), (-0.26, -0.18, 0.5)),  # boxes cross x = 0 and y = 0
    "right_bottom_edge": ((0.22, 0.16, 0.5), (0.26, 0.18, 0.5)),  # boxes cross x = W and y = H
    "far": ((0.02, -0.01, 1.2), (0.05, 0.0, 1.2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("is_grasping", [False, True])
def test_crop_box_equals_upstream_rule(case: str, is_grasping: bool):
    hand_centre, object_centre = CASES[case]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        frame = make_frame(random_hand(rng, hand_centre))
        keypoints_cam = random_object(rng, object_centre)
        crop = compute_crop(frame, grasp_for(frame, is_grasping), CropConfig(), None, None, keypoints_cam)
        assert isinstance(crop, Crop), crop
        expected = reference_crop_box(frame.joints_2d, project_points(keypoints_cam, K_FULL), is_grasping)
        hand_box = reference_joint_box(frame.joints_2d, 1.5)
        if case == "left_top_edge":  # the case really is clipped
            assert hand_box[0] < 0 and hand_box[1] < 0
        if case == "right_bottom_edge":
            assert hand_box[2] > WIDTH_PX and hand_box[3] > HEIGHT_PX
        np.testing.assert_allclose(crop.box_xyxy, expected, rtol=0, atol=1e-9)
        # the crop maps the square box onto the crop's outer pixel edges and agrees with its intrinsics
        np.testing.assert_allclose(apply_affine(crop.box_xyxy.reshape(2, 2), crop.affine), [[-0.5, -0.5], [127.5] * 2])
        np.testing.assert_allclose(project_points(frame.joints_3d, crop.K), apply_affine(frame.joints_2d, crop.affine),
                                   atol=1e-3)  # fmt: skip
        # in UniHOPE's convention (get_affine_trans_no_rot(centre, side, 128), float32) the box edge is 0
        centre, side = (crop.box_xyxy[:2] + crop.box_xyxy[2:]) / 2, crop.box_xyxy[2] - crop.box_xyxy[0]
        upstream = np.float32([[128 / side, 0, 128 * (-centre[0] / side + 0.5)], [0, 128 / side, 128 * (-centre[1] / side + 0.5)]])
        np.testing.assert_allclose(unihope_affine(crop.affine), upstream, rtol=1e-6, atol=2e-5)


def test_edge_cases_clip_and_truncate_as_upstream():
    # Joints placed by hand: a box crossing the left edge (clipped there) and a half-integer centre.
    joints_2d = np.zeros((21, 2))
    joints_2d[:, 0] = np.linspace(-10.0, 31.0, 21)  # centre 10.5 -> 10; box x [-20.75, 40.75] -> clip at 0
    joints_2d[:, 1] = np.linspace(100.0, 121.0, 21)  # centre 110.5 -> 110; box y [94.25, 125.75]
    frame = make_frame(np.ones((21, 3)) * [0.0, 0.0, 0.5])
    frame = FrameRecord(**{**{f: getattr(frame, f) for f in FrameRecord.__slots__}, "joints_2d": joints_2d.astype(np.float32)})
    crop = compute_crop(frame, grasp_for(frame, False), CropConfig(min_hand_box_inside_fraction=0.0), None, None)
    assert isinstance(crop, Crop)
    # clipped x [0, 40.75], y [94.25, 125.75]: side 40.75, centre (int(20.375), int(110)) = (20, 110)
    np.testing.assert_allclose(crop.box_xyxy, [20 - 20.375, 110 - 20.375, 20 + 20.375, 110 + 20.375])
    np.testing.assert_allclose(crop.box_xyxy, reference_crop_box(joints_2d, None, False))


def test_crop_rule_needs_the_right_inputs_and_skips_with_reasons():
    rng = np.random.default_rng(7)
    frame = make_frame(random_hand(rng, (0.0, 0.0, 0.5)))
    keypoints = random_object(rng, (0.05, 0.0, 0.5))
    cfg = CropConfig()
    # grasping needs the object keypoints; a free hand does not
    missing = compute_crop(frame, grasp_for(frame, True), cfg, None, None, None)
    assert isinstance(missing, Skip) and missing.reason is SkipReason.DEGENERATE_POSE and "keypoints" in missing.detail
    assert isinstance(compute_crop(frame, grasp_for(frame, False), cfg, None, None, None), Crop)
    behind = keypoints.copy()
    behind[3, 2] = -0.2
    assert compute_crop(frame, grasp_for(frame, True), cfg, None, None, behind).reason is SkipReason.DEGENERATE_POSE
    # a hand mostly outside the image, or behind the camera
    far_right = make_frame(random_hand(rng, (0.62, 0.0, 0.5)))
    assert compute_crop(far_right, grasp_for(far_right, False), cfg, None, None).reason is SkipReason.HAND_OUTSIDE_IMAGE
    behind_camera = make_frame(random_hand(rng, (0.0, 0.0, -0.5)))
    assert compute_crop(behind_camera, grasp_for(behind_camera, False), cfg, None, None).reason is SkipReason.DEGENERATE_POSE


def test_mesh_rule_stays_available_and_differs():
    rng = np.random.default_rng(3)
    joints = random_hand(rng, (0.0, 0.0, 0.5))
    frame = make_frame(joints)
    skin = joints + rng.normal(size=joints.shape) * 0.01  # a "mesh" around the joints, wider than them
    unihope = compute_crop(frame, grasp_for(frame, False), CropConfig(), skin, None)
    mesh = compute_crop(frame, grasp_for(frame, False), CropConfig(rule="mesh"), skin, None)
    uv = project_points(skin, K_FULL)
    lo, hi = uv.min(0), uv.max(0)
    side = 1.5 * (hi - lo).max()
    np.testing.assert_allclose(mesh.box_xyxy, np.r_[(lo + hi) / 2 - side / 2, (lo + hi) / 2 + side / 2], atol=1e-9)
    np.testing.assert_allclose(unihope.box_xyxy, reference_crop_box(frame.joints_2d, None, False), atol=1e-9)
    assert not np.allclose(unihope.box_xyxy, mesh.box_xyxy)
    with pytest.raises(ValueError):
        CropConfig(rule="joints")


def test_box_keypoints_are_upstreams_21_points():
    rng = np.random.default_rng(0)
    vertices = rng.uniform(-1, 1, (500, 3)) * [0.04, 0.09, 0.02] + [0.01, -0.02, 0.03]
    ours = box_keypoints(vertices)
    theirs = reference_box_keypoints(vertices.min(0), vertices.max(0))
    assert ours.shape == theirs.shape == (21, 3)
    # the same 21 points (our order: centre first, then corners and edges; upstream: corners, edges, centre)
    assert sorted(map(tuple, ours.round(12))) == sorted(map(tuple, theirs.round(12)))
    np.testing.assert_allclose(ours[0], theirs[-1])
