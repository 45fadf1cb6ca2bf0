"""Offscreen PNG preview of the hand model closing from an open hand to a grasp."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unihope.hand.constants import NUM_BETAS
from unihope.hand.mirror import mirror_axis_angle, mirror_points_x
from unihope.hand.poses import curl_pose

SKIN_RGBA = (0.87, 0.66, 0.54, 1.0)
BACKGROUND_RGBA = (0.96, 0.96, 0.97, 1.0)
CAMERA_YFOV_RAD = 0.55
CAMERA_DISTANCE_M = 0.36
# Camera looks at the palm, from the thumb side and slightly from the wrist (hand's own frame).
CAMERA_VIEW_DIR = np.array([0.25, -1.0, 0.55])
CAMERA_UP = np.array([-1.0, 0.0, 0.0])  # fingers point up in the image
MAX_THUMB_OPPOSITION = 1.0


def _look_at_opencv(eye_m: np.ndarray, target_m: np.ndarray, up: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world pose in OpenCV convention (x right, y down, z forward)."""
    forward = target_m - eye_m
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye_m
    return pose


def render_grasp_preview(
    out_dir: Path,
    num_frames: int = 8,
    size_px: int = 256,
    side: str = "right",
    model_path: Path | None = None,
    render_platform: str = "egl",
) -> list[Path]:
    """Renders the hand closing from open (frame 0) to a grasp (last frame) as PNGs.

    Args:
        out_dir: folder for grasp_<k>.png (created if missing).
        num_frames: number of frames, >= 2.
        size_px: image width and height in pixels, >= 32.
        side: "right" or "left".
        model_path: MANO file; None -> the cached procedural hand.
        render_platform: PyOpenGL platform, "egl" or "osmesa".

    Returns:
        The PNG paths, in motion order.

    Raises:
        ValueError: if num_frames < 2 or size_px < 32.
    """
    # 1. Check inputs.
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if size_px < 32:
        raise ValueError(f"size_px must be >= 32, got {size_px}")

    # 2. Pose the hand along the motion.
    from unihope.hand.layer import HandLayer

    layer = HandLayer(side=side, model_path=model_path)
    amounts = np.linspace(0.0, 1.0, num_frames)
    hand_pose = np.stack([curl_pose(t, MAX_THUMB_OPPOSITION * t) for t in amounts])
    hand_pose = mirror_axis_angle(hand_pose) if side == "left" else hand_pose
    mano_pose = np.concatenate([np.zeros((num_frames, 3)), hand_pose], axis=1)
    verts_m, _ = layer.forward_numpy(mano_pose, np.zeros((num_frames, NUM_BETAS)), np.zeros((num_frames, 3)))

    # 3. Render each frame with a fixed camera framing the open hand.
    os.environ.setdefault("PYOPENGL_PLATFORM", render_platform)
    from unihope.render.gl import import_pyrender

    pyrender = import_pyrender(os.environ["PYOPENGL_PLATFORM"])
    import trimesh
    from PIL import Image

    def for_side(direction: np.ndarray) -> np.ndarray:  # the left hand's view is the right hand's, mirrored
        return mirror_points_x(direction) if side == "left" else direction

    view_dir, camera_up = for_side(CAMERA_VIEW_DIR), for_side(CAMERA_UP)
    target_m = verts_m[0].mean(axis=0)
    eye_m = target_m + CAMERA_DISTANCE_M * view_dir / np.linalg.norm(view_dir)
    cam_pose_gl = _look_at_opencv(eye_m, target_m, camera_up) @ np.diag([1.0, -1.0, -1.0, 1.0])
    renderer = pyrender.OffscreenRenderer(size_px, size_px)
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=SKIN_RGBA, metallicFactor=0.0, roughnessFactor=0.65
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # The renderer is never deleted: with EGL, delete() terminates the display that every pyrender
    # context of the process shares (the synthetic source's and the annotation stage's included).
    for frame_idx, frame_verts_m in enumerate(verts_m):
        scene = pyrender.Scene(bg_color=BACKGROUND_RGBA, ambient_light=(0.25, 0.25, 0.25))
        mesh = trimesh.Trimesh(frame_verts_m, layer.faces, process=False)
        scene.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=True))
        scene.add(pyrender.PerspectiveCamera(yfov=CAMERA_YFOV_RAD), pose=cam_pose_gl)
        scene.add(pyrender.DirectionalLight(intensity=2.5), pose=cam_pose_gl)
        key_light = _look_at_opencv(target_m + for_side(np.array([0.2, -0.3, 0.3])), target_m, camera_up)
        scene.add(pyrender.DirectionalLight(intensity=1.5), pose=key_light @ np.diag([1.0, -1.0, -1.0, 1.0]))
        color, _ = renderer.render(scene)
        path = out_dir / f"grasp_{frame_idx:02d}.png"
        Image.fromarray(color).save(path)
        paths.append(path)
    return paths
