"""The synthetic dataset in DexYCB's layout: subjects, sequences, cameras, label files and DexYCB's quirks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unihope.config import SyntheticConfig
from unihope.hand import axis_angle_to_pca
from unihope.render.camera import project_points
from unihope.sources.dexycb import COLOR_FORMAT, DEPTH_FORMAT, IMAGE_SIZE_TAG, LABEL_FORMAT, META_FILE
from unihope.sources.splits import DEXYCB_SUBJECTS
from unihope.sources.synthetic.common import TRUTH_DIR, seed_from
from unihope.sources.synthetic.files import write_jpeg, write_png, write_yaml
from unihope.sources.synthetic.rig import camera_subset
from unihope.sources.synthetic.scene import SequencePlan, SequenceWriter, subject_betas
from unihope.sources.ycb_meshes import YCB_NAMES

M_TO_MM = 1000.0
# DexYCB quirks (SyntheticConfig.quirks).
QUIRK_START_UNANNOTATED_RANGE = (1, 3)  # unannotated frames at a sequence's start (inclusive range)
QUIRK_SCATTERED_UNANNOTATED_FRACTION = 0.1  # share of the later frames without a hand annotation
INVALID_JOINT_VALUE = -1.0  # DexYCB fills joint_3d / joint_2d of unannotated frames with -1
SEG_HAND_LABEL = 255
POSE_FILE = "pose.npz"  # per sequence: pose_y (T, n_obj, 7) quaternion xyzw + t, pose_m (T, hands, 51); world frame
APRILTAG_WORLD_M = (-0.4, -0.3, 0.0)  # the tag lies flat on the table, its x/y along the world's
EXTRINSICS_NAME = "20200702_151821"  # a DexYCB calibration folder name (extrinsics_<name>)
# Sequence folders are named YYYYMMDD_HHMMSS like DexYCB's: the first at 14:17:54, the next ones later.
FIRST_SEQUENCE_TIME_S = 14 * 3600 + 17 * 60 + 54
SEQUENCE_INTERVAL_S = 97


def _sequence_name(subject: str, seq_idx: int) -> str:
    """`YYYYMMDD_HHMMSS` on the subject's date; later sequences get later times (sorted = generated order)."""
    seconds = FIRST_SEQUENCE_TIME_S + SEQUENCE_INTERVAL_S * seq_idx
    return f"{subject[:8]}_{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _unannotated_frames(cfg: SyntheticConfig, sequence_key: str) -> frozenset[int]:
    """Frames of a sequence whose hand is not annotated (quirks only): a few at the start, some scattered."""
    if not cfg.quirks:
        return frozenset()
    rng = np.random.default_rng(seed_from(cfg.seed, sequence_key, "unannotated"))
    num_frames = cfg.frames_per_sequence
    num_start = min(int(rng.integers(QUIRK_START_UNANNOTATED_RANGE[0], QUIRK_START_UNANNOTATED_RANGE[1] + 1)),
                    max(1, num_frames // 4))  # fmt: skip
    scattered = {i for i in range(num_start, num_frames) if rng.random() < QUIRK_SCATTERED_UNANNOTATED_FRACTION}
    return frozenset(range(num_start)) | frozenset(scattered)


def _pose_y_row(T_world_from_obj: np.ndarray) -> np.ndarray:
    """(7,) pose.npz row: quaternion (x, y, z, w, scipy's order as the toolkit reads it) + translation."""
    from scipy.spatial.transform import Rotation

    return np.concatenate([Rotation.from_matrix(T_world_from_obj[:3, :3]).as_quat(), T_world_from_obj[:3, 3]])


def _write_sequence_pose_npz(path: Path, seq: SequencePlan, pca: dict, unannotated: frozenset[int]) -> None:
    """DexYCB's per-sequence pose.npz, world frame: pose_y (T, n_obj, 7), pose_m (T, 1, 51) (0 = not annotated)."""
    trajectory = seq.trajectory
    num = len(trajectory.phases)
    pose_y = np.zeros((num, len(seq.ycb_names), 7))
    for obj_idx, name in enumerate(seq.ycb_names):
        for frame_idx in range(num):
            T = trajectory.T_world_from_grasped[frame_idx] if name == seq.grasped else seq.static_poses[name]
            pose_y[frame_idx, obj_idx] = _pose_y_row(T)
    coeffs = axis_angle_to_pca(trajectory.hand_pose, pca["hands_components"], pca["hands_mean"])
    pose_m = np.concatenate([trajectory.global_orient_world, coeffs, trajectory.transl_world_m], axis=1)[:, None]
    pose_m[sorted(unannotated)] = 0.0
    np.savez_compressed(path, pose_y=pose_y.astype(np.float32), pose_m=pose_m.astype(np.float32))


def write_dexycb_layout(writer: SequenceWriter, cfg: SyntheticConfig) -> list[str]:
    root = writer.root
    cameras = camera_subset(writer.rig, cfg.num_cameras)
    # 1. Calibration: intrinsics per serial, extrinsics of the rig
    for camera in cameras:
        K = camera.K
        write_yaml(
            root / "calibration" / "intrinsics" / f"{camera.serial}_{IMAGE_SIZE_TAG}.yml",
            {"color": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])},
             "depth": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])}},
        )  # fmt: skip
    extrinsics_name = EXTRINSICS_NAME
    # world-from-camera, row-major 3x4 (the toolkit maps camera points to the world with it)
    extrinsics = {c.serial: np.linalg.inv(c.T_cam_from_world)[:3].reshape(-1).round(6).tolist() for c in cameras}
    if cfg.quirks:  # DexYCB's file: the tag's world-from-tag pose beside the cameras, nothing else
        extrinsics["apriltag"] = np.hstack([np.eye(3), np.array(APRILTAG_WORLD_M)[:, None]]).reshape(-1).tolist()
        extrinsics_file = {"extrinsics": extrinsics, "master": cameras[0].serial}
    else:
        extrinsics_file = {"extrinsics": extrinsics, "master": cameras[0].serial,
                           "frame": "world (table plane z = 0) from camera, row-major 3x4"}  # fmt: skip
    write_yaml(root / "calibration" / f"extrinsics_{extrinsics_name}" / "extrinsics.yml", extrinsics_file)
    unannotated_keys: list[str] = []

    # 2. Sequences
    sequence_keys = []
    for seq_idx in range(cfg.num_sequences):
        subject = DEXYCB_SUBJECTS[seq_idx % len(DEXYCB_SUBJECTS)]
        sequence_key = f"{subject}/{_sequence_name(subject, seq_idx)}"
        side = "left" if seq_idx % 2 == 1 else "right"
        betas = subject_betas(cfg, subject)
        write_yaml(root / "calibration" / f"mano_{subject}" / "mano.yml", {"betas": betas.astype(float).round(6).tolist()})
        seq = writer.plan_sequence(sequence_key, side, betas, primary=cameras[seq_idx % len(cameras)])
        ycb_ids = [YCB_NAMES.index(n) + 1 for n in seq.ycb_names]
        write_yaml(
            root / sequence_key / META_FILE,
            {"serials": [c.serial for c in cameras], "num_frames": cfg.frames_per_sequence, "ycb_ids": ycb_ids,
             "ycb_grasp_ind": seq.ycb_names.index(seq.grasped), "mano_sides": [side], "mano_calib": [subject],
             "extrinsics": extrinsics_name},
        )  # fmt: skip
        pca = writer.pca[side]
        unannotated = _unannotated_frames(cfg, sequence_key)
        if cfg.quirks:
            _write_sequence_pose_npz(root / sequence_key / POSE_FILE, seq, pca, unannotated)
        for camera, frame_idx, view, labels in writer.render_sequence(seq, cameras):
            frame_dir = root / sequence_key / camera.serial
            coeffs = axis_angle_to_pca(labels.hand_pose[None], pca["hands_components"], pca["hands_mean"])[0]
            pose_m = np.concatenate([labels.orient_cam, coeffs, labels.transl_cam])[None].astype(np.float32)
            joints_3d = labels.joints_cam_m[None].astype(np.float32)
            joints_2d = project_points(labels.joints_cam_m, camera.K)[None].astype(np.float32)
            seg = view.seg
            key = f"{sequence_key}/{camera.serial}/{frame_idx:06d}"
            if frame_idx in unannotated:  # as DexYCB: no hand annotation, so none in the rendered seg either
                pose_m = np.zeros_like(pose_m)
                joints_3d = np.full_like(joints_3d, INVALID_JOINT_VALUE)
                joints_2d = np.full_like(joints_2d, INVALID_JOINT_VALUE)
                seg = np.where(seg == SEG_HAND_LABEL, 0, seg).astype(seg.dtype)
                unannotated_keys.append(key)
            write_jpeg(frame_dir / COLOR_FORMAT.format(frame_idx), view.color_rgb)
            write_png(frame_dir / DEPTH_FORMAT.format(frame_idx), np.round(view.depth_m * M_TO_MM).astype(np.uint16))
            np.savez_compressed(
                frame_dir / LABEL_FORMAT.format(frame_idx),
                seg=seg,
                pose_y=np.stack([T[:3] for T in labels.T_cam_from_objs]).astype(np.float32),
                pose_m=pose_m,
                joint_3d=joints_3d,
                joint_2d=joints_2d,
            )
            write_jpeg(root / TRUTH_DIR / sequence_key / camera.serial / COLOR_FORMAT.format(frame_idx), view.color_no_object_rgb)
            writer.record_truth(key, seq.trajectory.phases[frame_idx], view)
        sequence_keys.append(sequence_key)
    if cfg.quirks:
        (root / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
        (root / TRUTH_DIR / "unannotated.json").write_text(json.dumps(sorted(unannotated_keys), indent=0))
    return sequence_keys
