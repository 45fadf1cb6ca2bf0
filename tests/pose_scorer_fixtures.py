"""MANO-hand scenes for the pose-model scorer test: the project's procedural MANO hand with chosen finger flexion,
rendered by the de-occlusion test renderer (`tests/capsule_scenes.py:SceneBuilder`) at a fixed view.

`ManoScenes.training_batch` renders object-free hands with random flexion (what a pose model trains on);
`ManoScenes.ranking_case` renders one occluded frame and three de-occlusion candidates of it, composited into the
input as a de-occluder composites them (only the inpaint mask changes):
- truth: the hidden finger as it is (the object-free rendering);
- erased: the hidden finger left out of the hand (the palm or background behind it shows);
- bent: the hidden finger rendered with wrong flexion (every joint moved by half its range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from unihope.storage.schema import HAND_PART_FINGER_FIRST, HAND_PART_PALM, FINGER_NAMES, AnnotatedFrame

# Flexion ranges per joint (MCP, PIP, DIP; thumb: opposition, MCP, IP), degrees: the procedural hand's
# power grasp (`curl_pose`: 80/95/60, thumb 50 opposition + 30/45) is the top of each range.
FINGER_RANGE_DEG = np.array([80.0, 95.0, 60.0])
THUMB_RANGE_DEG = np.array([50.0, 30.0, 45.0])
VIEW_TILT_DEG = 45.0  # fingers point up and away from the camera: flexion moves them in the image plane too
VIEW_JITTER_DEG = 8.0  # random wrist rotation about each axis
PLACEMENT_JITTER_M = 0.008
HAND_CENTRE_M = np.array([0.0, -0.015, 0.32])  # where the middle finger's MCP joint sits (camera frame)
MIDDLE_MCP = 9
BOX_SIZE_M = (0.035, 0.04, 0.02)
BOX_GAP_M = 0.04  # the box sits this much closer to the camera than the finger it hides
SKIN_RGB = np.array([225, 170, 140])
OBJECT_COLOURS_RGB = ([40, 90, 200], [50, 160, 70], [220, 210, 40], [90, 60, 160])
CANDIDATE_KINDS = ("truth", "erased", "bent")


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(axis_angle, np.float64).reshape(3, 1))[0]


def _axis_angle(R: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(R, np.float64))[0].reshape(3)


@dataclass(frozen=True, slots=True)
class RankingCase:
    """One occluded frame, its inpaint mask and its candidates (CANDIDATE_KINDS order)."""

    frame: AnnotatedFrame
    mask_inpaint: np.ndarray  # (S, S) bool
    candidates_rgb: np.ndarray  # (3, S, S, 3) uint8
    hidden_finger: int  # thumb..little index of the finger the box hides


class ManoScenes:
    """Poses the procedural MANO hand and renders it with a `SceneBuilder` (one per session)."""

    def __init__(self, builder) -> None:  # noqa: ANN001 (SceneBuilder; imported lazily for the renderer)
        from unihope.hand import HandLayer, curl_pose, load_mano_arrays, resolve_mano_path, vertex_finger_labels
        from unihope.hand.constants import MANO_FINGER_JOINTS

        self.builder = builder
        self.layer = HandLayer(side="right")
        arrays = load_mano_arrays(resolve_mano_path("right"))
        labels = vertex_finger_labels(arrays["weights"])  # 0 palm, 1 thumb .. 5 little
        faces = arrays["f"]
        corner = labels[faces]
        face_labels = np.where((corner[:, 0] == corner[:, 1]) | (corner[:, 0] == corner[:, 2]), corner[:, 0], corner[:, 1])
        self.faces = faces
        self.part_faces = {HAND_PART_PALM + part: faces[face_labels == part] for part in range(6)}
        # Flexion axis of every finger joint: the direction of `curl_pose`'s axis-angle for it (the thumb's
        # first joint: its opposition axis).
        curl = curl_pose(1.0, 0.0).reshape(15, 3)
        curl[MANO_FINGER_JOINTS["thumb"][0] - 1] = curl_pose(0.0, 1.0).reshape(15, 3)[MANO_FINGER_JOINTS["thumb"][0] - 1]
        self.axes = curl / np.linalg.norm(curl, axis=1, keepdims=True)
        self.joint_ids = [MANO_FINGER_JOINTS[name] for name in FINGER_NAMES]
        # Base view: MANO's fingers (-x) point up the image (-y), its palm (-y) faces the camera (-z); then tilted.
        base = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.view = _rotation([np.deg2rad(VIEW_TILT_DEG), 0.0, 0.0]) @ base

    @staticmethod
    def ranges_deg() -> np.ndarray:
        """(5, 3) the top of each joint's flexion range, thumb..little."""
        return np.vstack([THUMB_RANGE_DEG, np.tile(FINGER_RANGE_DEG, (4, 1))])

    def sample_flexion_deg(self, rng: np.random.Generator) -> np.ndarray:
        """(5, 3) flexion, each joint uniform over its range."""
        return rng.uniform(0.0, 1.0, size=(5, 3)) * self.ranges_deg()

    def pose(self, flexion_deg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(48,) MANO pose (global orientation + hand pose) and (3,) jittered placement of the middle MCP."""
        hand_pose = np.zeros((15, 3))
        for finger, joints in enumerate(self.joint_ids):
            for k, joint in enumerate(joints):
                hand_pose[joint - 1] = np.deg2rad(flexion_deg[finger, k]) * self.axes[joint - 1]
        jitter = _rotation(np.deg2rad(rng.uniform(-VIEW_JITTER_DEG, VIEW_JITTER_DEG, size=3)))
        orient = _axis_angle(jitter @ self.view)
        centre = HAND_CENTRE_M + rng.uniform(-PLACEMENT_JITTER_M, PLACEMENT_JITTER_M, size=3)
        return np.concatenate([orient, hand_pose.reshape(-1)]), centre

    def hands(self, poses48: np.ndarray, centres_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (N, 778, 3) and joints (N, 21, 3) in the camera frame, the middle MCP at each centre."""
        num = len(poses48)
        verts, joints = self.layer.forward_numpy(poses48, np.zeros((num, 10)), np.zeros((num, 3)))
        shift = (np.asarray(centres_m) - joints[:, MIDDLE_MCP])[:, None]
        return (verts + shift).astype(np.float64), (joints + shift).astype(np.float64)

    def meshes(self, verts_m: np.ndarray, leave_out: int | None = None, whole: bool = False) -> dict[int, list[trimesh.Trimesh]]:
        """{part label: [mesh]} of one posed hand; `leave_out`: a finger index not drawn; `whole`: one mesh (a
        colour-only render needs no parts and draws one mesh faster than six)."""
        if whole:
            return {HAND_PART_PALM: [trimesh.Trimesh(verts_m, self.faces, process=False)]}
        return {
            label: [trimesh.Trimesh(verts_m, faces, process=False)]
            for label, faces in self.part_faces.items()
            if leave_out is None or label != HAND_PART_FINGER_FIRST + leave_out
        }

    def _look(self, rng: np.random.Generator):
        from capsule_scenes import _background

        skin = tuple(int(c) for c in SKIN_RGB + rng.integers(-15, 16, size=3))
        return skin, _background(self.builder.size_px, rng)

    def training_batch(self, seeds: range) -> dict[str, torch.Tensor | list | np.ndarray]:
        """Object-free hands with random flexion, as a collated `PairedDataset` batch (right hands, no pairs).

        The object box the model pools is a box placed as `ranking_case` places it, not drawn: the scorer sees
        de-occluded crops, whose object is gone but whose object box is the frame's.
        """
        from unihope.render.camera import project_points

        rngs = [np.random.default_rng(seed) for seed in seeds]
        placed = [self.pose(self.sample_flexion_deg(rng), rng) for rng in rngs]
        poses = np.stack([pose for pose, _ in placed])
        verts, joints_3d = self.hands(poses, np.stack([centre for _, centre in placed]))
        images, joints_2d, object_2d = [], [], []
        for rng, hand_verts, joints in zip(rngs, verts, joints_3d):
            skin, background = self._look(rng)
            images.append(self.builder.render_hand(self.meshes(hand_verts, whole=True), skin, background))
            joints_2d.append(project_points(joints, self.builder.K))
            box = self._box(joints, int(rng.integers(0, 5)), rng)
            object_2d.append(project_points(_box_keypoints(box), self.builder.K))
        num = len(images)
        size = self.builder.size_px
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        return {
            "image": image, "image_deoccluded": image.clone(),
            "mask_hand": torch.zeros(num, size, size), "mask_object": torch.zeros(num, size, size),
            "hand_side": torch.zeros(num, dtype=torch.long), "has_pair": torch.zeros(num, dtype=torch.bool),
            "joints_2d": torch.tensor(np.stack(joints_2d), dtype=torch.float32),
            "joints_3d": torch.tensor(np.stack(joints_3d), dtype=torch.float32),
            "object_keypoints_2d": torch.tensor(np.stack(object_2d), dtype=torch.float32),
            "mano_pose": torch.tensor(np.stack(poses), dtype=torch.float32),
            "mano_betas": torch.zeros(num, 10), "grasp": torch.ones(num, dtype=torch.long),
            "K": np.repeat(self.builder.K[None], num, axis=0), "object_pose": np.zeros((num, 3, 4)),
            "object_id": np.zeros(num, np.int64), "visibility": np.ones(num), "sample_key": [f"train/{s}" for s in seeds],
        }  # fmt: skip

    def _box(self, joints: np.ndarray, finger: int, rng: np.random.Generator) -> trimesh.Trimesh:
        """A box in front of `finger`'s middle joints (PIP, DIP), BOX_GAP_M closer to the camera."""
        centre = joints[2 + 4 * finger : 4 + 4 * finger].mean(axis=0) + rng.uniform(-0.005, 0.005, size=3)
        box = trimesh.creation.box(extents=BOX_SIZE_M)
        box.apply_translation([centre[0], centre[1], centre[2] - BOX_GAP_M])
        return box

    def ranking_case(self, seed: int, dilation_px: int = 3) -> RankingCase:
        """An occluded frame (the box hides a random finger) and its truth / erased / bent candidates."""
        from unihope.deocclude.hints import inpaint_mask

        rng = np.random.default_rng(seed)
        flexion = self.sample_flexion_deg(rng)
        hidden = int(rng.integers(1, 5))  # index..little: the thumb lies off to the side of the box
        pose48, centre = self.pose(flexion, rng)
        skin, background = self._look(rng)
        object_rgb = tuple(int(c) for c in OBJECT_COLOURS_RGB[int(rng.integers(0, len(OBJECT_COLOURS_RGB)))])
        # Wrong flexion: every joint of the hidden finger moved by half its range, toward the far end.
        ranges = self.ranges_deg()[hidden]
        bent = flexion.copy()
        bent[hidden] = np.where(flexion[hidden] < ranges / 2, flexion[hidden] + ranges / 2, flexion[hidden] - ranges / 2)
        # The same wrist pose as the truth: only the finger's joints change.
        bent_pose = pose48.copy()
        for k, joint in enumerate(self.joint_ids[hidden]):
            bent_pose[3 + 3 * (joint - 1) : 3 + 3 * joint] = np.deg2rad(bent[hidden, k]) * self.axes[joint - 1]
        verts, joints = self.hands(np.stack([pose48, bent_pose]), np.stack([centre, centre]))
        box = self._box(joints[0], hidden, rng)
        scene = self.builder.render_scene(f"mano/{seed:06d}", self.meshes(verts[0]), joints[0], box, skin, object_rgb,
                                          background)
        frame = scene.frame
        mask = inpaint_mask(frame, dilation_px=dilation_px)

        renders = [
            scene.truth_rgb,
            self.builder.render_hand(self.meshes(verts[0], leave_out=hidden), skin, background),
            self.builder.render_hand(self.meshes(verts[1]), skin, background),
        ]
        # A de-occluder only changes the inpaint mask: outside it every candidate is the input.
        candidates = np.stack([np.where(mask[..., None], render, frame.image) for render in renders]).astype(np.uint8)
        return RankingCase(frame=frame, mask_inpaint=mask, candidates_rgb=candidates, hidden_finger=hidden)


def _box_keypoints(box: trimesh.Trimesh) -> np.ndarray:
    """(21, 3) centre, 8 corners and 12 edge midpoints, as `SceneBuilder` annotates its box."""
    corners = np.array(box.bounds)
    points = np.array([[x, y, z] for x in corners[:, 0] for y in corners[:, 1] for z in corners[:, 2]])
    mids = [(points[a] + points[b]) / 2 for a in range(8) for b in range(a + 1, 8)
            if np.count_nonzero(points[a] != points[b]) == 1]
    return np.vstack([points.mean(axis=0, keepdims=True), points, mids])
