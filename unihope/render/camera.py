"""Camera conventions in one place: OpenCV (labels, x right / y down / z forward) to OpenGL (pyrender)."""

from __future__ import annotations

import numpy as np

# OpenGL looks down -z with y up: flip the y and z axes of an OpenCV camera frame.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
# OpenCV puts pixel centres at integer coordinates; GL window coordinates put them at +0.5.
# Without this shift every render lands half a pixel up-left of `project_points`.
PYRENDER_PIXEL_CENTRE_OFFSET_PX = 0.5


def cv_pose_to_gl(T_cam_from_obj: np.ndarray) -> np.ndarray:
    """Pose of a mesh for pyrender with the camera at the origin (pyrender camera pose = identity).

    Args:
        T_cam_from_obj: (3, 4) or (4, 4) [R|t] mapping object points into the OpenCV camera frame.

    Returns:
        (4, 4) float64 pose to give `scene.add(mesh, pose=...)`.
    """
    T = np.eye(4)
    T[:3, :4] = np.asarray(T_cam_from_obj, dtype=np.float64)[:3, :4]
    return CV_TO_GL @ T


def intrinsics_camera(pyrender, K: np.ndarray, znear_m: float = 0.01, zfar_m: float = 10.0):
    """A pyrender IntrinsicsCamera whose pixels match an OpenCV K (pixel centres at integer coordinates)."""
    camera = pyrender.IntrinsicsCamera(fx=1.0, fy=1.0, cx=0.0, cy=0.0, znear=znear_m, zfar=zfar_m)
    set_camera_intrinsics(camera, K)
    return camera


def set_camera_intrinsics(camera, K: np.ndarray) -> None:
    """Point an existing pyrender IntrinsicsCamera at an OpenCV K (reused cameras, one per renderer)."""
    camera.fx, camera.fy = float(K[0, 0]), float(K[1, 1])
    camera.cx = float(K[0, 2]) + PYRENDER_PIXEL_CENTRE_OFFSET_PX
    camera.cy = float(K[1, 2]) + PYRENDER_PIXEL_CENTRE_OFFSET_PX


def project_points(points_cam_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Project (..., 3) OpenCV camera-frame points with K to (..., 2) pixel coordinates."""
    points = np.asarray(points_cam_m, dtype=np.float64)
    uvw = points @ np.asarray(K, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]
