"""Constructed hand-object crops with known truth (the object-free rendering), for the de-occlusion tests and benches.

A capsule hand (palm box, five three-segment fingers with chosen flexion) and a box in front of it are rendered
with pyrender at crop size; the annotation maps are built the way the annotation stage defines them
(storage/schema.py), and the same scene without the box gives the true de-occluded crop. It does not depend on
the MANO hand layer or on the annotation stage, so de-occlusion can be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import trimesh

from unihope.storage.schema import (
    FINGER_NAMES,
    HAND_PART_FINGER_FIRST,
    HAND_PART_PALM,
    SEG_BACKGROUND,
    SEG_HAND,
    SEG_OBJECT,
    AnnotatedFrame,
    Crop,
    FrameRecord,
    GraspLabel,
)
from unihope.render.camera import cv_pose_to_gl, intrinsics_camera, project_points
from unihope.render.gl import import_pyrender

HAND_DEPTH_M = 0.45  # palm centre distance from the camera
OBJECT_GAP_M = 0.06  # the box sits this much closer to the camera than the palm
PALM_SIZE_M = (0.08, 0.09, 0.025)  # width (x), length (y), thickness (z)
FINGER_BASE_X_M = (-0.03, -0.01, 0.01, 0.03)  # index..little along the palm's top edge
FINGER_SEGMENTS_M = {  # proximal, middle, distal lengths
    "thumb": (0.035, 0.03, 0.025),
    "index": (0.04, 0.025, 0.02),
    "middle": (0.044, 0.028, 0.021),
    "ring": (0.04, 0.026, 0.02),
    "little": (0.032, 0.02, 0.018),
}
FINGER_RADIUS_M = 0.0085
OBJECT_LABEL = 7  # SEG label of the box (hand parts use 1..6)
FEATURE_DOWNSAMPLE = 4
SAME_DEPTH_TOL_M = 1e-4  # scene depth within this of the hand's: the hand is what the camera sees


@dataclass(frozen=True, slots=True, eq=False)
class ConstructedScene:
    """An annotated crop and its true object-free image."""

    frame: AnnotatedFrame
    truth_rgb: np.ndarray  # (S, S, 3) uint8, the same crop rendered without the object
    object_rgb: tuple[int, int, int]


def _segment_transform(start_m: np.ndarray, end_m: np.ndarray) -> np.ndarray:
    """4x4 pose putting a z-aligned capsule centred at the origin onto the segment start -> end."""
    axis = end_m - start_m
    z_axis = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z_axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x_axis = np.cross(helper, z_axis)
    x_axis /= np.linalg.norm(x_axis)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x_axis, np.cross(z_axis, x_axis), z_axis], axis=1)
    pose[:3, 3] = (start_m + end_m) / 2.0
    return pose


def capsule_hand(curl_rad: np.ndarray) -> tuple[dict[int, list[trimesh.Trimesh]], np.ndarray]:
    """Meshes of a palm-facing right hand in the OpenCV camera frame, and its 21 joints (DexYCB order).

    Args:
        curl_rad: (5, 3) flexion of each finger's three joints (thumb..little), radians; fingers curl to the camera.

    Returns:
        ({part label: meshes}, (21, 3) joints in metres).
    """
    palm_centre = np.array([0.0, 0.02, HAND_DEPTH_M])
    palm = trimesh.creation.box(extents=PALM_SIZE_M)
    palm.apply_translation(palm_centre)
    parts: dict[int, list[trimesh.Trimesh]] = {HAND_PART_PALM: [palm]}
    joints = np.zeros((21, 3))
    joints[0] = palm_centre + [0.0, PALM_SIZE_M[1] / 2, 0.0]
    top_y = palm_centre[1] - PALM_SIZE_M[1] / 2
    bases = {"thumb": np.array([PALM_SIZE_M[0] / 2, palm_centre[1] + 0.01, HAND_DEPTH_M])}
    for x_m, name in zip(FINGER_BASE_X_M, FINGER_NAMES[1:]):
        bases[name] = np.array([x_m, top_y, HAND_DEPTH_M])
    toward_camera = np.array([0.0, 0.0, -1.0])
    for finger_idx, name in enumerate(FINGER_NAMES):
        rest = np.array([0.8, -0.6, 0.0]) if name == "thumb" else np.array([0.0, -1.0, 0.0])
        point, bend, meshes = bases[name], 0.0, []
        joints[1 + 4 * finger_idx] = point
        for seg_idx, length_m in enumerate(FINGER_SEGMENTS_M[name]):
            bend += float(curl_rad[finger_idx, seg_idx])
            direction = np.cos(bend) * rest + np.sin(bend) * toward_camera
            end = point + length_m * direction
            capsule = trimesh.creation.capsule(height=length_m, radius=FINGER_RADIUS_M, count=[12, 12])
            capsule.apply_transform(_segment_transform(point, end))
            meshes.append(capsule)
            point = end
            joints[2 + 4 * finger_idx + seg_idx] = point
        parts[HAND_PART_FINGER_FIRST + finger_idx] = meshes
    return parts, joints


def _background(size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth coloured background with some low-contrast texture."""
    low = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.float32)
    smooth = cv2.resize(low, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
    texture = cv2.GaussianBlur(rng.normal(0, 6, size=(size_px, size_px, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


class SceneBuilder:
    """Renders constructed scenes at one crop size; holds one OffscreenRenderer (reuse the builder).

    The renderer is never deleted: with EGL, delete() terminates the display every pyrender context
    of the process shares.
    """

    def __init__(self, size_px: int = 96, platform: str = "egl") -> None:
        self.pyrender = import_pyrender(platform)
        self.size_px = size_px
        self.renderer = self.pyrender.OffscreenRenderer(size_px, size_px)
        focal_px = size_px * HAND_DEPTH_M / 0.22  # the crop spans about 22 cm at the hand
        self.K = np.array([[focal_px, 0, (size_px - 1) / 2], [0, focal_px, (size_px - 1) / 2 + size_px * 0.08], [0, 0, 1]])

    def _render(self, meshes: dict[int, list[trimesh.Trimesh]], colours: dict[int, tuple[int, int, int]],
                with_parts: bool = True):
        pyrender = self.pyrender
        scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[0.3, 0.3, 0.3])
        camera = intrinsics_camera(pyrender, self.K)
        scene.add(camera, pose=np.eye(4))
        light = pyrender.DirectionalLight(color=np.ones(3), intensity=3.0)
        scene.add(light, pose=cv_pose_to_gl(np.hstack([_light_rotation(np.array([0.3, 0.4, 1.0])), np.zeros((3, 1))])))
        seg_map = {}
        for label, label_meshes in meshes.items():
            rgba = np.array([*colours[label], 255]) / 255.0
            material = pyrender.MetallicRoughnessMaterial(baseColorFactor=rgba, metallicFactor=0.0, roughnessFactor=0.9)
            for mesh in label_meshes:
                node = scene.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=True), pose=cv_pose_to_gl(np.eye(4)))
                seg_map[node] = (label, label, label)
        colour, depth = self.renderer.render(scene)
        if not with_parts:
            return colour[..., :3].copy(), depth.astype(np.float32), None
        seg, _ = self.renderer.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=seg_map)
        return colour[..., :3].copy(), depth.astype(np.float32), seg[..., 0].copy()

    def build(
        self,
        sample_key: str,
        seed: int,
        curl_rad: np.ndarray | None = None,
        object_centre_xy_m: tuple[float, float] | None = None,
        object_size_m: tuple[float, float] = (0.06, 0.05),
    ) -> ConstructedScene:
        """One constructed crop: random skin, background and (unless given) finger curl and box position.

        Args:
            sample_key: key of the frame.
            seed: seeds everything random about the scene.
            curl_rad: (5, 3) finger flexion, radians; None -> random in [0.1, 0.9].
            object_centre_xy_m: box centre (x, y) in the camera frame, metres; None -> random over the fingers.
            object_size_m: box width and height, metres.

        Returns:
            The scene.
        """
        # 1. Scene parameters (all from the scene's own generator)
        rng = np.random.default_rng(seed)
        curl = rng.uniform(0.1, 0.9, size=(5, 3)) if curl_rad is None else np.asarray(curl_rad, dtype=np.float64)
        if object_centre_xy_m is None:
            object_centre_xy_m = (float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.05, -0.01)))
        skin = tuple(int(c) for c in np.array([225, 170, 140]) + rng.integers(-15, 16, size=3))
        object_rgb = tuple(int(c) for c in rng.choice([[40, 90, 200], [50, 160, 70], [220, 210, 40], [90, 60, 160]]))
        hand_meshes, joints_3d = capsule_hand(curl)
        box = trimesh.creation.box(extents=(*object_size_m, 0.03))
        box.apply_translation([object_centre_xy_m[0], object_centre_xy_m[1], HAND_DEPTH_M - OBJECT_GAP_M])
        return self.render_scene(sample_key, hand_meshes, joints_3d, box, skin, object_rgb, _background(self.size_px, rng))

    def render_scene(
        self,
        sample_key: str,
        hand_meshes: dict[int, list[trimesh.Trimesh]],
        joints_3d: np.ndarray,
        box: trimesh.Trimesh,
        skin_rgb: tuple[int, int, int],
        object_rgb: tuple[int, int, int],
        background_rgb: np.ndarray,
    ) -> ConstructedScene:
        """Render any hand (part label -> meshes, camera frame) with `box` in front, annotated as `build` does.

        Args:
            sample_key: key of the frame.
            hand_meshes: {HAND_PART_* label: meshes} in the OpenCV camera frame, metres.
            joints_3d: (21, 3) the hand's joints (DexYCB order) in the same frame.
            box: the occluding object's mesh.
            skin_rgb, object_rgb: flat colours of hand and object.
            background_rgb: (S, S, 3) uint8 image behind everything.

        Returns:
            The scene (its truth: the same crop rendered without the box).
        """
        colours = {label: skin_rgb for label in hand_meshes} | {OBJECT_LABEL: object_rgb}

        # 1. Renders: the hand alone (truth, depth_hand, parts) and the hand with the box (the input crop)
        colour_hand, depth_hand, parts = self._render(hand_meshes, colours)
        colour_scene, depth_scene, _ = self._render(hand_meshes | {OBJECT_LABEL: [box]}, colours)
        truth = np.where((depth_hand > 0)[..., None], colour_hand, background_rgb)
        image = np.where((depth_scene > 0)[..., None], colour_scene, background_rgb)

        # 2. Masks from the depth passes only (pyrender's SEG pass misses a few edge pixels the depth pass has):
        # a hand pixel is visible where the scene's depth is the hand's own.
        mask_hand = depth_hand > 0
        same_depth = np.abs(depth_scene - depth_hand) < SAME_DEPTH_TOL_M
        mask_hand_visible = mask_hand & same_depth
        mask_object = (depth_scene > 0) & ~(mask_hand & same_depth)
        # 3. Part labels from SEG, its missed edge pixels filled from their labelled neighbours.
        parts = np.where(mask_hand, parts, 0).astype(np.uint8)
        filled = cv2.dilate(parts, np.ones((3, 3), np.uint8))
        hand_parts = np.where(mask_hand & (parts == 0), filled, parts).astype(np.uint8)
        frame = self._annotated(
            sample_key, image, mask_hand, mask_hand_visible, mask_object, depth_hand, depth_scene, hand_parts, joints_3d, box
        )
        return ConstructedScene(frame=frame, truth_rgb=truth.astype(np.uint8), object_rgb=object_rgb)

    def render_hand(
        self,
        hand_meshes: dict[int, list[trimesh.Trimesh]],
        skin_rgb: tuple[int, int, int],
        background_rgb: np.ndarray,
    ) -> np.ndarray:
        """The hand alone over a background, as `render_scene` draws its truth: (S, S, 3) uint8 (no part pass)."""
        colour, depth, _ = self._render(hand_meshes, {label: skin_rgb for label in hand_meshes}, with_parts=False)
        return np.where((depth > 0)[..., None], colour, background_rgb).astype(np.uint8)

    def _annotated(
        self, sample_key, image, mask_hand, mask_hand_visible, mask_object, depth_hand, depth_scene, hand_parts, joints_3d, box
    ) -> AnnotatedFrame:
        """The AnnotatedFrame of a constructed scene (visibility, keypoints and small maps as annotate defines them)."""
        size = self.size_px
        num_hand = max(int(mask_hand.sum()), 1)
        visibility = float(mask_hand_visible.sum()) / num_hand
        finger_visibility = np.array(
            [
                float((mask_hand_visible & (hand_parts == part)).sum()) / max(int((hand_parts == part).sum()), 1)
                for part in range(HAND_PART_FINGER_FIRST, HAND_PART_FINGER_FIRST + 5)
            ],
            dtype=np.float32,
        )
        joints_2d = project_points(joints_3d, self.K).astype(np.float32)
        corners = np.array(box.bounds)
        box_points = np.array([[x, y, z] for x in corners[:, 0] for y in corners[:, 1] for z in corners[:, 2]])
        edge_midpoints = [(box_points[a] + box_points[b]) / 2 for a in range(8) for b in range(a + 1, 8)
                          if np.count_nonzero(box_points[a] != box_points[b]) == 1]
        object_points = np.vstack([box_points.mean(axis=0, keepdims=True), box_points, edge_midpoints])
        seg_full = np.full((size, size), SEG_BACKGROUND, np.uint8)
        seg_full[mask_object] = SEG_OBJECT
        seg_full[mask_hand_visible] = SEG_HAND
        small = size // FEATURE_DOWNSAMPLE
        record = FrameRecord(
            sample_key=sample_key,
            dataset="dexycb",
            sequence_key=sample_key.rsplit("/", 2)[0],
            serial="000000",
            frame_idx=0,
            image_path="",
            depth_path="",
            image_size_wh=(size, size),
            K=self.K.copy(),
            hand_side="right",
            mano_pose=np.zeros(48, np.float32),
            mano_betas=np.zeros(10, np.float32),
            mano_trans=np.zeros(3, np.float32),
            joints_3d=joints_3d.astype(np.float32),
            joints_2d=joints_2d,
            object_id=16,
            object_name="036_wood_block",
            object_mesh_path="",
            object_pose=np.hstack([np.eye(3), box.centroid[:, None]]).astype(np.float32),
        )
        visibility_edges = (0.25, 0.5, 0.75)
        return AnnotatedFrame(
            frame=record,
            grasp=GraspLabel(sample_key=sample_key, rre_deg=20.0, rte_m=0.1, is_grasping=True, reference_key=sample_key),
            crop=Crop(size_px=size, affine=np.hstack([np.eye(2), np.zeros((2, 1))]), K=self.K.copy(),
                      box_xyxy=np.array([0.0, 0.0, size, size])),
            image=image.astype(np.uint8),
            mask_hand=mask_hand,
            mask_hand_visible=mask_hand_visible,
            mask_object=mask_object,
            depth_hand=depth_hand,
            depth_scene=depth_scene,
            hand_parts=hand_parts,
            visibility=visibility,
            occlusion_ratio=1.0 - visibility,
            occlusion_bin=int(np.searchsorted(visibility_edges, visibility, side="left")),
            finger_visibility=finger_visibility,
            joints_2d=joints_2d,
            object_keypoints_2d=project_points(object_points, self.K).astype(np.float32),
            seg_map=cv2.resize(seg_full, (small, small), interpolation=cv2.INTER_NEAREST),
            dense_map=np.zeros((small, small, 3), np.float32),
            relative_depth_map=np.zeros((small, small), np.float32),
        )


def _light_rotation(shine_direction: np.ndarray) -> np.ndarray:
    """Rotation (OpenCV camera frame) for a pyrender light shining along `shine_direction`.

    pyrender lights shine along their node's local -z; after `cv_pose_to_gl` that is the third column negated.
    """
    forward = -shine_direction / np.linalg.norm(shine_direction)
    helper = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(helper, forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)
