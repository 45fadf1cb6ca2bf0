"""Synthetic AnnotatedFrame / DeocclusionResult inputs for the storage tests (no rendering).

Geometry is consistent: joints_2d and object_keypoints_2d are the projections of joints_3d and of
the object's box keypoints (posed by object_pose) with the crop intrinsics K.
"""

from __future__ import annotations

import hashlib

import numpy as np

from unihope.storage.schema import (
    AnnotatedFrame,
    Crop,
    DeocclusionResult,
    FrameRecord,
    GraspLabel,
)

CROP_FOCAL_PX_PER_S = 3.0  # crop focal length = 3 * S px
FEATURE_DOWNSAMPLE = 4


def _rng(key: str, salt: str = "") -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{salt}|{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def rotation_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues formula, (3,) -> (3, 3)."""
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-12:
        return np.eye(3)
    axis = np.asarray(axis_angle, dtype=np.float64) / angle
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def box_keypoints(half_extent_m: np.ndarray) -> np.ndarray:
    """(21, 3): centre, 8 corners, 12 edge midpoints of an axis-aligned box at the origin."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    corners = signs * half_extent_m
    edges = [(i, j) for i in range(8) for j in range(i + 1, 8) if np.sum(signs[i] != signs[j]) == 1]
    mids = np.array([(corners[i] + corners[j]) / 2 for i, j in edges])
    return np.concatenate([np.zeros((1, 3)), corners, mids])


def project(points_cam_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = points_cam_m @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def make_annotated(
    sample_key: str, crop_size_px: int = 32, hand_side: str = "right", visibility: float | None = None
) -> AnnotatedFrame:
    """One synthetic annotated frame whose arrays all derive from `sample_key` (deterministic)."""
    S = crop_size_px
    F = S // FEATURE_DOWNSAMPLE
    rng = _rng(sample_key)
    parts = sample_key.split("/")
    sequence_key = "/".join(parts[:2])
    K_full = np.array([[600.0, 0, 320.0], [0, 600.0, 240.0], [0, 0, 1]])
    # crop: scale 0.5 from a box at (100, 80) in the full image
    scale = S / 200.0
    affine = np.array([[scale, 0, -100 * scale], [0, scale, -80 * scale]])
    K_crop = np.array([[CROP_FOCAL_PX_PER_S * S, 0, S / 2 - 0.3], [0, CROP_FOCAL_PX_PER_S * S * 1.01, S / 2 + 0.2],
                       [0, 0, 1]])
    joints_3d = (np.array([0.0, 0.0, 0.6]) + rng.uniform(-0.04, 0.04, (21, 3))).astype(np.float32)
    mano_trans = (joints_3d[0] - rng.uniform(-0.02, 0.02, 3)).astype(np.float32)
    R_obj = rotation_matrix(rng.normal(0, 1, 3))
    t_obj = np.array([0.01, -0.01, 0.62]) + rng.uniform(-0.01, 0.01, 3)
    object_pose = np.concatenate([R_obj, t_obj[:, None]], axis=1).astype(np.float32)
    keypoints_obj = box_keypoints(np.array([0.03, 0.02, 0.05]))
    keypoints_cam = keypoints_obj @ object_pose[:, :3].T.astype(np.float64) + object_pose[:, 3]
    frame_idx = int(parts[-1])
    record = FrameRecord(
        sample_key=sample_key, dataset="dexycb", sequence_key=sequence_key, serial=parts[2] if len(parts) > 3 else "0",
        frame_idx=frame_idx, image_path=f"/data/{sample_key}.jpg", depth_path=f"/data/{sample_key}.png",
        image_size_wh=(640, 480), K=K_full, hand_side=hand_side,
        mano_pose=rng.normal(0, 0.3, 48).astype(np.float32), mano_betas=rng.normal(0, 1, 10).astype(np.float32),
        mano_trans=mano_trans, joints_3d=joints_3d,
        joints_2d=project(joints_3d.astype(np.float64), K_full).astype(np.float32),
        object_id=int(rng.integers(1, 22)), object_name="006_mustard_bottle",
        object_mesh_path="/models/006_mustard_bottle/textured_simple.obj", object_pose=object_pose,
    )
    rre = float(rng.uniform(0, 20))
    grasp = GraspLabel(sample_key=sample_key, rre_deg=rre, rte_m=float(rng.uniform(0, 0.1)), is_grasping=rre > 5,
                       reference_key=f"{'/'.join(parts[:-1])}/000000")
    crop = Crop(size_px=S, affine=affine, K=K_crop, box_xyxy=np.array([100.0, 80.0, 300.0, 280.0]))
    yy, xx = np.mgrid[0:S, 0:S]
    mask_hand = (xx - S * 0.45) ** 2 + (yy - S * 0.5) ** 2 < (S * 0.3) ** 2
    mask_object = (xx > S * 0.55) & (yy > S * 0.3) & (yy < S * 0.8)
    mask_visible = mask_hand & ~mask_object
    vis = float(mask_visible.sum() / mask_hand.sum()) if visibility is None else visibility
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    depth_hand = np.where(mask_hand, rng.uniform(0.55, 0.65, (S, S)), 0).astype(np.float32)
    depth_scene = np.where(mask_hand | mask_object, rng.uniform(0.55, 0.65, (S, S)), 0).astype(np.float32)
    hand_parts = np.where(mask_hand, rng.integers(1, 7, (S, S)), 0).astype(np.uint8)
    return AnnotatedFrame(
        frame=record, grasp=grasp, crop=crop, image=image,
        mask_hand=mask_hand, mask_hand_visible=mask_visible, mask_object=mask_object,
        depth_hand=depth_hand, depth_scene=depth_scene, hand_parts=hand_parts,
        visibility=vis, occlusion_ratio=1.0 - vis, occlusion_bin=min(3, int(vis * 4)),
        finger_visibility=rng.uniform(0, 1, 5).astype(np.float32),
        joints_2d=project(joints_3d.astype(np.float64), K_crop).astype(np.float32),
        object_keypoints_2d=project(keypoints_cam, K_crop).astype(np.float32),
        seg_map=rng.integers(0, 3, (F, F)).astype(np.uint8),
        dense_map=rng.uniform(0, 1, (F, F, 3)).astype(np.float32),
        relative_depth_map=rng.uniform(-1, 1, (F, F)).astype(np.float32),
    )


def make_result(frame: AnnotatedFrame, keep: bool = True) -> DeocclusionResult:
    """A de-occlusion result: the image with the occluded hand region re-painted."""
    rng = _rng(frame.frame.sample_key, "deocc")
    inpaint = frame.mask_hand & ~frame.mask_hand_visible
    image = frame.image.copy()
    image[inpaint] = rng.integers(0, 256, (int(inpaint.sum()), 3), dtype=np.uint8)
    betas = np.array([0.4, 0.6, 0.8], dtype=np.float32)
    scores = rng.uniform(0, 1, 3).astype(np.float32)
    return DeocclusionResult(
        sample_key=frame.frame.sample_key, image_deoccluded=image, inpaint_mask=inpaint,
        beta=float(betas[np.argmax(scores)]), candidate_betas=betas, candidate_scores=scores,
        original_score=float(rng.uniform(0, 1)), deocclusion_score=float(scores.max()), keep=keep,
        reason="kept" if keep else "no_gain", backend="render",
    )


def make_keys(num_sequences: int, frames_per_sequence: int, serial: str = "836212060125") -> list[str]:
    """DexYCB-style keys `<subject>/<sequence>/<serial>/<frame:06d>`."""
    return [f"20200709-subject-01/20200709_1{seq:05d}/{serial}/{frame:06d}"
            for seq in range(num_sequences) for frame in range(frames_per_sequence)]


def make_batch(keys: list[str], crop_size_px: int = 32, every_nth_without_result: int = 3):
    """(annotated, results) for `keys`; every n-th frame has no result, every other result keep=False."""
    annotated = [make_annotated(key, crop_size_px) for key in keys]
    results = [None if i % every_nth_without_result == every_nth_without_result - 1 else make_result(a, keep=i % 2 == 0)
               for i, a in enumerate(annotated)]
    return annotated, results


# ---- helpers run in spawned writer processes (must be importable by module name) -----------------

STORAGE_ATTRS = {"name": "test", "source": "synthetic:dexycb", "config": {"source": {"kind": "synthetic"}, "storage": {"shard_size": 6}},
                 "config_hash": "abc123"}


def shard_plan(num_shards: int, shard_size: int = 6) -> dict[int, list[str]]:
    """shard index -> sample keys (two sequences per shard, no key in two shards)."""
    keys = make_keys(num_shards * 2, shard_size // 2)
    return {idx: keys[idx * shard_size:(idx + 1) * shard_size] for idx in range(num_shards)}


def writer_child(url: str, plan: dict[int, list[str]], stall_at: str, stalled, crop_size_px: int = 32) -> None:
    """Write shards of `plan` in order; with `stall_at`, announce (stalled.set()) and hang at that point
    of the last shard so the parent can SIGKILL this process there.

    stall_at: "" (no stall), "mid_arrays" (half of the shard's objects on disk), "before_commit" (all
    objects written and the folder renamed, commit record not yet).
    """
    import time

    import unihope.storage.writer as writer
    from unihope.config import StorageConfig

    last_idx = max(plan)

    def hang():
        stalled.set()
        while True:
            time.sleep(1)

    for shard_idx, keys in sorted(plan.items()):
        if shard_idx == last_idx and stall_at == "before_commit":
            writer.write_bytes_atomic = lambda *args, **kwargs: hang()
        if shard_idx == last_idx and stall_at == "mid_arrays":
            original_put = writer._put_objects

            def put_half_then_hang(loc, data_path, objects):
                half = dict(list(objects.items())[: len(objects) // 2])
                original_put(loc, data_path, half)
                hang()

            writer._put_objects = put_half_then_hang
        annotated, results = make_batch(keys, crop_size_px)
        writer.write_shard(url, shard_idx, annotated, results, STORAGE_ATTRS, StorageConfig(shard_size=len(keys)))
