"""One sequence's scene and views: objects on the table, hand shape and skin, the plan, rendered views and labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unihope.config import TIP_CONVENTION_OF_LAYOUT, HandModelConfig, SyntheticConfig
from unihope.hand import HandLayer, load_mano_arrays, vertex_finger_labels
from unihope.hand.constants import NUM_BETAS
from unihope.sources.common import hand_model_path, transform_mano_global
from unihope.sources.synthetic.common import rigid, rot_about, seed_from
from unihope.sources.synthetic.grasp_plan import GraspPlan, plan_grasp
from unihope.sources.synthetic.rig import Camera, camera_rig
from unihope.sources.synthetic.trajectory import plan_trajectory, Trajectory
from unihope.sources.synthetic_render import SceneRenderer, table_texture, table_trimesh
from unihope.sources.ycb_meshes import (
    MESH_FILE_NAME,
    YCB_NAMES,
    YCBObject,
    build_ycb_object,
    write_ycb_object,
    write_ycb_points,
)

# The hand approaches from the far side of the object as seen from the sequence's primary camera,
# within this angle: that camera sees the object in front of the palm, the opposite one the back of the hand.
APPROACH_SPREAD_DEG = 45.0
HEAVY_APPROACH_SPREAD_DEG = 15.0  # `occlusion: heavy`: the hand straight behind the object (rig.py)
MAX_WRAPPABLE_WIDTH_M = 0.10  # boxes up to this wide are held with the palm on their wide face
BETAS_STD = 0.8
BETAS_ABS_MAX = 2.0  # shapes beyond +-2 std look implausible
NUM_DISTRACTORS_RANGE = (1, 2)
DISTRACTOR_DISTANCE_RANGE_M = (0.21, 0.28)
DISTRACTOR_SPACING_DEG = 70.0  # between distractors, so they do not overlap on the table
DISTRACTOR_ANGLE_JITTER_RAD = 0.3
OBJECT_XY_JITTER_M = 0.03  # the grasped object rests within this of the table centre (per axis)
SKIN_TONES_RGB = ((0.87, 0.68, 0.56), (0.78, 0.58, 0.46), (0.58, 0.40, 0.30), (0.93, 0.77, 0.66), (0.70, 0.50, 0.38))
# Low-frequency skin variation (knuckles, palm creases): two sines of a projection of the rest vertices.
SKIN_VARIATION_FREQ_PER_M = np.array([91.0, 57.0, 73.0])
SKIN_VARIATION_AMPLITUDES = (0.06, 0.03)  # relative brightness of the two sines
SKIN_VARIATION_SECOND_FREQ_RATIO, SKIN_VARIATION_SECOND_PHASE_RAD = 2.3, 1.0
PALM_TINT_RGB = np.array([1.02, 0.97, 0.96])  # palms are a little redder
LIGHT_DIRECTIONS_WORLD = (np.array([0.3, 0.45, -1.0]), np.array([-0.6, -0.2, -0.5]))


@dataclass(frozen=True, slots=True)
class SequencePlan:
    """Everything one sequence's rendering and label writing need, drawn from the sequence's generator."""

    side: str  # "right" | "left"
    betas: np.ndarray  # (10,) float32
    grasped: str  # YCB name of the grasped object
    ycb_names: list[str]  # the sequence's objects in their (shuffled) ycb_ids order, grasped included
    static_poses: dict[str, np.ndarray]  # distractor name -> (4, 4) T_world_from_obj at rest
    grasp: GraspPlan
    trajectory: Trajectory
    table_seed: int  # seeds the table texture
    skin_rgb: np.ndarray  # (3,) float, in [0, 1]
    root_joint_rest_m: np.ndarray  # (3,) float64 wrist of the posed-at-zero hand (MANO's rotation centre)


@dataclass(frozen=True, slots=True)
class _ViewLabels:
    """The labels of one view (camera x frame), in that camera's OpenCV frame."""

    orient_cam: np.ndarray  # (3,) MANO global orient, axis-angle radians
    transl_cam: np.ndarray  # (3,) MANO transl, metres
    hand_pose: np.ndarray  # (45,) absolute hand pose, axis-angle radians
    joints_cam_m: np.ndarray  # (21, 3) float64, DexYCB order
    T_cam_from_objs: list[np.ndarray]  # per object of the plan's ycb_names: (4, 4)


def _resting_pose(obj: YCBObject, xy_m: np.ndarray, yaw_rad: float) -> np.ndarray:
    return rigid(rot_about([0, 0, 1], yaw_rad), np.array([xy_m[0], xy_m[1], obj.resting_height_m]))


class SequenceWriter:
    """Holds the per-dataset state (renderer, hand layers, objects) and writes one sequence at a time."""

    def __init__(self, root: Path, cfg: SyntheticConfig, hand_cfg: HandModelConfig, renderer: SceneRenderer,
                 on_image: Callable[[], None] | None = None):
        self.root = root
        self.cfg = cfg
        # Labels use the layout's own fingertips (DexYCB manopth, HO3D ho3d), as the real dataset's do.
        self.tip_convention = TIP_CONVENTION_OF_LAYOUT[cfg.format]
        self.layers = {
            side: HandLayer(side=side, model_path=hand_model_path(hand_cfg, side), tip_convention=self.tip_convention)
            for side in ("right", "left")
        }
        self.finger_labels = {
            side: vertex_finger_labels(load_mano_arrays(layer.model_path)["weights"]) for side, layer in self.layers.items()
        }
        self.pca = {side: load_mano_arrays(layer.model_path) for side, layer in self.layers.items()}
        self.renderer = renderer  # the caller's (`SceneRenderers`), of cfg's image size
        self.on_image = on_image  # called after each rendered image (the caller's progress)
        self.objects = {name: build_ycb_object(name) for name in YCB_NAMES}
        self.graspable = [name for name, obj in self.objects.items() if obj.is_graspable_side]
        self.rig = camera_rig(cfg)
        self.truth_grasp: dict[str, bool] = {}
        self.truth_phase: dict[str, str] = {}
        self.truth_visibility: dict[str, float] = {}

    def write_models(self) -> None:
        models_dir = self.root / "models"
        for obj in self.objects.values():
            write_ycb_object(obj, models_dir)
            if self.cfg.quirks:
                write_ycb_points(obj, models_dir)

    def render_mesh(self, name: str):
        """pyrender mesh of an object as the readers will load it: from the written OBJ, not the in-memory mesh."""
        return self.renderer.object_mesh(self.root / "models" / name / MESH_FILE_NAME)

    # -- one sequence ----------------------------------------------------------------------------

    def plan_sequence(self, sequence_key: str, side: str, betas: np.ndarray, primary: Camera) -> SequencePlan:
        """Objects on the table, grasp plan and trajectory of one sequence (its own generator)."""
        rng = np.random.default_rng(seed_from(self.cfg.seed, sequence_key))
        layer = self.layers[side]
        grasped = self.graspable[int(rng.integers(len(self.graspable)))]
        others = [n for n in YCB_NAMES if n != grasped]
        num_distractors = int(rng.integers(NUM_DISTRACTORS_RANGE[0], NUM_DISTRACTORS_RANGE[1] + 1))
        distractors = list(rng.choice(others, size=num_distractors, replace=False))
        obj = self.objects[grasped]
        # approach direction: away from the primary camera (so it looks at the object in front of the palm)
        camera_xy = np.linalg.inv(primary.T_cam_from_world)[:2, 3]
        spread_deg = HEAVY_APPROACH_SPREAD_DEG if self.cfg.occlusion == "heavy" else APPROACH_SPREAD_DEG
        toward_hand_rad = np.arctan2(-camera_xy[1], -camera_xy[0]) + np.deg2rad(rng.uniform(-spread_deg, spread_deg))
        half = np.asarray(obj.grip.half_extents_m)
        if obj.grip.kind == "cylinder":
            approach_obj = np.array([1.0, 0.0, 0.0])
        else:  # palm against the wide face when the fingers can reach around it, else against the narrow one
            wide_axis, narrow_axis = (0, 1) if half[0] >= half[1] else (1, 0)
            palm_on_wide = 2 * half[wide_axis] <= MAX_WRAPPABLE_WIDTH_M
            approach_obj = np.eye(3)[narrow_axis if palm_on_wide else wide_axis] * rng.choice([-1.0, 1.0])
        yaw = toward_hand_rad - np.arctan2(approach_obj[1], approach_obj[0])
        T_obj0 = _resting_pose(obj, rng.uniform(-OBJECT_XY_JITTER_M, OBJECT_XY_JITTER_M, 2), yaw)
        plan = plan_grasp(layer, self.finger_labels[side], betas, obj, T_obj0, approach_obj, rng)
        _, joints_rest = layer.forward_numpy(np.zeros((1, 48)), betas[None], np.zeros((1, 3)))
        trajectory = plan_trajectory(plan, self.cfg.frames_per_sequence, T_obj0, joints_rest[0, 0].astype(np.float64), rng)
        # distractors rest on the far side of the grasped object, away from the approaching hand
        placed = []
        hand_dir = np.arctan2(-plan.palm_normal_world[1], -plan.palm_normal_world[0])
        for k, name in enumerate(distractors):
            angle = (hand_dir + np.pi + (k - (num_distractors - 1) / 2) * np.deg2rad(DISTRACTOR_SPACING_DEG)
                     + rng.uniform(-DISTRACTOR_ANGLE_JITTER_RAD, DISTRACTOR_ANGLE_JITTER_RAD))
            radius = rng.uniform(*DISTRACTOR_DISTANCE_RANGE_M)
            xy = T_obj0[:2, 3] + radius * np.array([np.cos(angle), np.sin(angle)])
            placed.append((name, _resting_pose(self.objects[name], xy, rng.uniform(0, 2 * np.pi))))
        ycb_names = [grasped] + [name for name, _ in placed]
        order = rng.permutation(len(ycb_names))
        ycb_names = [ycb_names[i] for i in order]
        static_poses = {name: T for name, T in placed}
        skin = np.asarray(SKIN_TONES_RGB[seed_from(sequence_key.split("/")[0]) % len(SKIN_TONES_RGB)])
        return SequencePlan(
            side=side, betas=betas, grasped=grasped, ycb_names=ycb_names, static_poses=static_poses, grasp=plan,
            trajectory=trajectory, table_seed=seed_from(self.cfg.seed, sequence_key, "table"), skin_rgb=skin,
            root_joint_rest_m=joints_rest[0, 0].astype(np.float64),
        )  # fmt: skip

    def hand_colours(self, side: str, skin_rgb: np.ndarray, vertices_rest: np.ndarray) -> np.ndarray:
        """Per-vertex skin colour with a little low-frequency variation (knuckles, palm creases)."""
        phase_rad = vertices_rest @ SKIN_VARIATION_FREQ_PER_M
        first, second = SKIN_VARIATION_AMPLITUDES
        variation = first * np.sin(phase_rad) + second * np.sin(
            SKIN_VARIATION_SECOND_FREQ_RATIO * phase_rad + SKIN_VARIATION_SECOND_PHASE_RAD)
        colours = skin_rgb[None, :] * (1.0 + variation[:, None])
        palm = self.finger_labels[side] == 0
        colours[palm] *= PALM_TINT_RGB
        return np.clip(colours, 0, 1)

    def render_sequence(self, seq: SequencePlan, cameras: list[Camera]):
        """Yield (camera, frame_idx, RenderedView, _ViewLabels) for every view of the sequence."""
        # 1. Hand vertices in the world frame (for rendering) and per-vertex skin colours
        trajectory = seq.trajectory
        side, betas, layer = seq.side, seq.betas, self.layers[seq.side]
        num = len(trajectory.phases)
        world_pose = np.concatenate([trajectory.global_orient_world, trajectory.hand_pose], axis=1)
        verts_world, _ = layer.forward_numpy(world_pose, np.repeat(betas[None], num, 0), trajectory.transl_world_m)
        verts_rest, _ = layer.forward_numpy(np.zeros((1, 48)), betas[None], np.zeros((1, 3)))
        colours = self.hand_colours(side, seq.skin_rgb, verts_rest[0].astype(np.float64))
        table_mesh = self.renderer.pyrender.Mesh.from_trimesh(table_trimesh(table_texture(seq.table_seed)))
        # 2. One scene per sequence
        faces = layer.faces
        grasped_label = YCB_NAMES.index(seq.grasped) + 1
        objects = [
            (YCB_NAMES.index(name) + 1, self.render_mesh(name),
             trajectory.T_world_from_grasped[0] if name == seq.grasped else seq.static_poses[name])
            for name in seq.ycb_names
        ]  # fmt: skip
        self.renderer.begin_sequence(table_mesh, objects, grasped_label, list(LIGHT_DIRECTIONS_WORLD))
        # 3. Per camera: MANO parameters and joints in its frame (the labels), background, then every frame
        for camera in cameras:
            R_cw, t_cw = camera.T_cam_from_world[:3, :3], camera.T_cam_from_world[:3, 3]
            cam_params = [
                transform_mano_global(trajectory.global_orient_world[i], trajectory.transl_world_m[i], R_cw, t_cw, seq.root_joint_rest_m)
                for i in range(num)
            ]
            orient_cam = np.array([p[0] for p in cam_params])
            transl_cam = np.array([p[1] for p in cam_params])
            _, joints_cam = layer.forward_numpy(
                np.concatenate([orient_cam, trajectory.hand_pose], axis=1), np.repeat(betas[None], num, 0), transl_cam
            )
            background = self.renderer.render_background(camera.K, camera.T_cam_from_world)
            for frame_idx in range(num):
                T_grasped = trajectory.T_world_from_grasped[frame_idx]
                view = self.renderer.render_view(
                    background=background,
                    K=camera.K,
                    T_cam_from_world=camera.T_cam_from_world,
                    T_world_from_grasped=T_grasped,
                    hand_vertices_world_m=verts_world[frame_idx].astype(np.float64),
                    hand_faces=faces,
                    hand_vertex_rgb=colours,
                )
                labels = _ViewLabels(
                    orient_cam=orient_cam[frame_idx],
                    transl_cam=transl_cam[frame_idx],
                    hand_pose=trajectory.hand_pose[frame_idx],
                    joints_cam_m=joints_cam[frame_idx].astype(np.float64),
                    T_cam_from_objs=[camera.T_cam_from_world @ (T_grasped if label == grasped_label else T)
                                     for label, _, T in objects],
                )  # fmt: skip
                yield camera, frame_idx, view, labels
                if self.on_image is not None:
                    self.on_image()

    def record_truth(self, key: str, phase: str, view) -> None:
        self.truth_grasp[key] = phase == "lift"
        self.truth_phase[key] = phase
        self.truth_visibility[key] = round(float(view.visibility), 5)


def subject_betas(cfg: SyntheticConfig, subject: str) -> np.ndarray:
    rng = np.random.default_rng(seed_from(cfg.seed, subject, "betas"))
    return np.clip(rng.normal(0.0, BETAS_STD, NUM_BETAS), -BETAS_ABS_MAX, BETAS_ABS_MAX).astype(np.float32)
