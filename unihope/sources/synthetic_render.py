"""Offscreen rendering of the synthetic scenes: a textured table, lights, YCB stand-ins and the hand.

One `SceneRenderer` (one pyrender OffscreenRenderer, reused) renders every view of a dataset. The
scene is expressed in the camera frame of the view being rendered: every mesh pose is mapped with
`unihope.render.camera.cv_pose_to_gl` and the pyrender camera stays at the origin, so the OpenCV ->
OpenGL flip lives in one place. Per view it produces the colour image, the object-free colour image
(the true de-occluded image), the scene depth and an exact segmentation built from depth passes
(not pyrender's SEG pass, whose anti-aliased edges blend label colours).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from unihope.render.camera import cv_pose_to_gl, intrinsics_camera, project_points
from unihope.render.gl import import_pyrender

TABLE_SIZE_M = 4.0
TABLE_TEXTURE_PX = 512
TABLE_TEXTURE_REPEATS = 4  # texture tiles across the table (a tile is 1 m)
TABLE_PLANKS_PER_TILE = 5
AMBIENT_LIGHT = (0.32, 0.32, 0.32)
KEY_LIGHT_INTENSITY = 3.2
FILL_LIGHT_INTENSITY = 1.2
BACKGROUND_RGB = (0.55, 0.55, 0.58)
DEPTH_MATCH_TOLERANCE_M = 1e-4  # a component owns a pixel when its depth equals the scene depth
SEG_BACKGROUND_LABEL = 0
WINDOW_PAD_PX = 6  # margin of the per-frame render window around the moving parts
WINDOW_STEP_PX = 32  # window sizes are multiples of this (fewer framebuffer reallocations)
SEG_HAND_LABEL = 255  # DexYCB's hand label in `seg`
HAND_ROUGHNESS = 0.65
ZNEAR_M, ZFAR_M = 0.05, 6.0


@dataclass(frozen=True, slots=True, eq=False)
class RenderedView:
    """What one camera sees in one frame (all arrays at the full image size H x W)."""

    color_rgb: np.ndarray  # (H, W, 3) uint8, hand + objects + table
    color_no_object_rgb: np.ndarray  # (H, W, 3) uint8, the same without the grasped object
    depth_m: np.ndarray  # (H, W) float32 scene depth, metres (0 = nothing)
    seg: np.ndarray  # (H, W) uint8: 0 background/table, YCB id for objects, 255 hand
    hand_mask_full: np.ndarray  # (H, W) bool, hand silhouette rendered alone

    @property
    def visibility(self) -> float:
        """Visible hand pixels / full hand pixels (1.0 = not occluded; nan when the hand is off-screen)."""
        full = int(self.hand_mask_full.sum())
        return float((self.seg == SEG_HAND_LABEL).sum() / full) if full else float("nan")


def _periodic_noise(rng: np.random.Generator, size: int, sigma_x_px: float, sigma_y_px: float) -> np.ndarray:
    """Gaussian-filtered white noise that tiles seamlessly (filtered in the Fourier domain), in [-1, 1]."""
    freq_y = np.fft.fftfreq(size)[:, None]
    freq_x = np.fft.fftfreq(size)[None, :]
    kernel = np.exp(-2 * np.pi**2 * ((freq_x * sigma_x_px) ** 2 + (freq_y * sigma_y_px) ** 2))
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(0, 1, (size, size))) * kernel))
    return (noise / (np.abs(noise).max() + 1e-12)).astype(np.float32)


def table_texture(seed: int) -> np.ndarray:
    """A wooden table top (planks with long grain streaks), tiling seamlessly, deterministic in `seed`.

    Args:
        seed: generator seed (e.g. derived from the sequence key).

    Returns:
        (TABLE_TEXTURE_PX, TABLE_TEXTURE_PX, 3) uint8.
    """
    rng = np.random.default_rng(seed)
    size = TABLE_TEXTURE_PX
    streaks = _periodic_noise(rng, size, sigma_x_px=40.0, sigma_y_px=1.5)  # grain along x
    blotches = _periodic_noise(rng, size, sigma_x_px=30.0, sigma_y_px=12.0)
    fine = _periodic_noise(rng, size, sigma_x_px=1.0, sigma_y_px=1.0)
    base = np.array(rng.choice([[150, 105, 70], [185, 150, 110], [125, 90, 62], [200, 188, 170]]), dtype=np.float32)
    shade = 0.88 + 0.09 * streaks + 0.05 * blotches + 0.03 * fine
    rows = np.arange(size)
    plank_px = size // TABLE_PLANKS_PER_TILE
    shade[(rows % plank_px) < 2] *= 0.72  # gaps between planks
    for plank in range(TABLE_PLANKS_PER_TILE):  # each plank a slightly different tint
        shade[plank * plank_px : (plank + 1) * plank_px] *= 1.0 + rng.uniform(-0.06, 0.06)
    return np.clip(base[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)


def table_trimesh(texture_rgb: np.ndarray) -> trimesh.Trimesh:
    half = TABLE_SIZE_M / 2
    vertices = np.array([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64) * TABLE_TEXTURE_REPEATS
    material = trimesh.visual.material.SimpleMaterial(image=_to_pil(texture_rgb))
    return trimesh.Trimesh(vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False)


def _to_pil(image_rgb: np.ndarray):
    from PIL import Image

    return Image.fromarray(image_rgb)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def look_at_cv(camera_centre_m: np.ndarray, target_m: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """(4, 4) T_cam_from_world of an OpenCV camera at `camera_centre_m` looking at `target_m` (world z up)."""
    z_axis = np.asarray(target_m, dtype=np.float64) - np.asarray(camera_centre_m, dtype=np.float64)
    z_axis /= np.linalg.norm(z_axis)
    x_axis = np.cross(z_axis, up)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    R_world_from_cam = np.stack([x_axis, y_axis, z_axis], axis=1)
    T = np.eye(4)
    T[:3, :3] = R_world_from_cam.T
    T[:3, 3] = -R_world_from_cam.T @ np.asarray(camera_centre_m, dtype=np.float64)
    return T


class SceneRenderers:
    """The scene renderers a caller reuses across synthetic datasets, one per image size, platform and thread.

    Creating a GL context and compiling its shaders costs more than a frame, so whoever generates
    several datasets keeps one of these (a build worker's lives in `unihope.tasks.resources.WorkerResources`)
    and passes it to `write_synthetic_dataset`. Keyed by thread too: an EGL context stays current on the
    thread that rendered with it (making it current on another fails with EGL_BAD_ACCESS). Dropping one
    frees only its own context (`unihope.render.gl` keeps the shared EGL display alive).
    """

    def __init__(self) -> None:
        self._renderers: dict[tuple[int, int, str, int], SceneRenderer] = {}

    def get(self, width_px: int, height_px: int, platform: str = "egl") -> "SceneRenderer":
        """This thread's renderer for this image size and platform, created on first use."""
        key = (int(width_px), int(height_px), platform, threading.get_ident())
        if key not in self._renderers:
            self._renderers[key] = SceneRenderer(*key[:3])
        return self._renderers[key]


class SceneRenderer:
    """Renders table + objects + hand for many views with one reused OffscreenRenderer.

    Per sequence, `begin_sequence` builds one scene (table, objects, lights). Per camera,
    `render_background` renders the static part once (table and resting distractors); per frame,
    `render_view` renders only the moving part (hand and grasped object) with a transparent
    background and composites it over that background by depth. Directional lights without shadows
    shade a surface independently of the rest of the scene, so the composite equals a full render
    (up to the anti-aliased silhouette edges, blended with the rendered coverage).

    Args:
        width_px, height_px: image size.
        platform: "egl" or "osmesa".
    """

    def __init__(self, width_px: int, height_px: int, platform: str = "egl"):
        self.pyrender = import_pyrender(platform)
        self.width_px, self.height_px = int(width_px), int(height_px)
        self.renderer = self.pyrender.OffscreenRenderer(self.width_px, self.height_px)
        self._object_meshes: dict[str, object] = {}
        self._scene = None

    def object_mesh(self, mesh_path: Path):
        """pyrender mesh of an object file, loaded once per path (textures uploaded once per scene)."""
        key = str(mesh_path)
        if key not in self._object_meshes:
            loaded = trimesh.load(mesh_path, force="mesh", process=False)
            self._object_meshes[key] = self.pyrender.Mesh.from_trimesh(loaded, smooth=False)
        return self._object_meshes[key]

    def begin_sequence(
        self,
        table_mesh,
        objects: list[tuple[int, object, np.ndarray]],
        grasped_label: int,
        light_dirs_world: list[np.ndarray],
    ) -> None:
        """Build the scene of one sequence.

        Args:
            table_mesh: pyrender mesh of the table (world frame, z = 0).
            objects: (YCB id, pyrender mesh, (4, 4) resting T_world_from_obj) per object.
            grasped_label: YCB id of the grasped (moving) object.
            light_dirs_world: unit directions the lights shine along (world frame); the first is the key light.
        """
        pyrender = self.pyrender
        scene = pyrender.Scene(ambient_light=AMBIENT_LIGHT, bg_color=(0.0, 0.0, 0.0, 0.0))
        self._lights = [
            (scene.add(pyrender.DirectionalLight(intensity=KEY_LIGHT_INTENSITY if k == 0 else FILL_LIGHT_INTENSITY)),
             _light_pose_world(direction))
            for k, direction in enumerate(light_dirs_world)
        ]  # fmt: skip
        self._table = scene.add(table_mesh)
        self._objects = [(label, scene.add(mesh), T) for label, mesh, T in objects]
        self._grasped_label = grasped_label
        self._grasped_radius_m = max(
            float(np.linalg.norm(mesh.bounds, axis=1).max()) for label, mesh, _ in objects if label == grasped_label
        )
        self._hand = None
        self._camera = None
        self._scene = scene

    def _set_camera(self, K: np.ndarray, T_cam_from_world: np.ndarray) -> None:
        scene = self._scene
        if self._camera is not None:
            scene.remove_node(self._camera)
        self._camera = scene.add(intrinsics_camera(self.pyrender, K, znear_m=ZNEAR_M, zfar_m=ZFAR_M), pose=np.eye(4))
        for node, T_world_from_light in self._lights:
            scene.set_pose(node, cv_pose_to_gl(T_cam_from_world @ T_world_from_light))
        scene.set_pose(self._table, cv_pose_to_gl(T_cam_from_world))
        for _, node, T_world_from_obj in self._objects:
            scene.set_pose(node, cv_pose_to_gl(T_cam_from_world @ T_world_from_obj))

    def _show(self, nodes: list) -> None:
        everything = [self._table] + [node for _, node, _ in self._objects] + ([self._hand] if self._hand else [])
        for node in everything:
            node.mesh.is_visible = any(node is shown for shown in nodes)

    def _render_rgba(self) -> tuple[np.ndarray, np.ndarray]:
        color, depth = self.renderer.render(self._scene, flags=self.pyrender.RenderFlags.RGBA)
        return color.astype(np.float32) / 255.0, depth

    def _set_viewport(self, width_px: int, height_px: int) -> None:
        if (self.renderer.viewport_width, self.renderer.viewport_height) != (width_px, height_px):
            self.renderer.viewport_width, self.renderer.viewport_height = width_px, height_px

    def _window(self, K: np.ndarray, points_cam_m: np.ndarray) -> tuple[int, int, int, int]:
        """(x0, y0, width, height) of the render window around projected points; the full image when large."""
        uv = project_points(points_cam_m[points_cam_m[:, 2] > ZNEAR_M], K)
        if len(uv) == 0:
            return 0, 0, self.width_px, self.height_px
        lo = np.floor(uv.min(axis=0)).astype(int) - WINDOW_PAD_PX
        hi = np.ceil(uv.max(axis=0)).astype(int) + WINDOW_PAD_PX
        size = int(np.ceil((hi - lo).max() / WINDOW_STEP_PX) * WINDOW_STEP_PX)
        if size >= min(self.width_px, self.height_px):
            return 0, 0, self.width_px, self.height_px
        centre = (lo + hi) // 2
        return int(centre[0] - size // 2), int(centre[1] - size // 2), size, size

    def _render_depth(self) -> np.ndarray:
        return self.renderer.render(self._scene, flags=self.pyrender.RenderFlags.DEPTH_ONLY)

    def render_background(self, K: np.ndarray, T_cam_from_world: np.ndarray) -> dict[str, np.ndarray]:
        """The static part seen by one camera: table and the objects that never move.

        Returns:
            {"rgb": (H, W, 3) float in [0, 1], "depth_m": (H, W), "seg": (H, W) uint8 (0 or the YCB id)}.
        """
        self._set_viewport(self.width_px, self.height_px)
        self._set_camera(K, T_cam_from_world)
        static = [(label, node) for label, node, _ in self._objects if label != self._grasped_label]
        self._show([self._table] + [node for _, node in static])
        rgba, depth = self._render_rgba()
        rgb = rgba[..., :3] + (1.0 - rgba[..., 3:]) * np.asarray(BACKGROUND_RGB, dtype=np.float32)
        seg = np.zeros(depth.shape, dtype=np.uint8)
        for label, node in static:
            self._show([node])
            component = self._render_depth()
            seg[(component > 0) & (np.abs(component - depth) < DEPTH_MATCH_TOLERANCE_M)] = label
        return {"rgb": rgb, "depth_m": depth, "seg": seg}

    def render_view(
        self,
        background: dict[str, np.ndarray],
        K: np.ndarray,
        T_cam_from_world: np.ndarray,
        T_world_from_grasped: np.ndarray,
        hand_vertices_world_m: np.ndarray,
        hand_faces: np.ndarray,
        hand_vertex_rgb: np.ndarray,
    ) -> RenderedView:
        """Render one frame of one camera over that camera's background.

        Args:
            background: `render_background` of the same camera.
            K: (3, 3) intrinsics, px.
            T_cam_from_world: (4, 4) OpenCV camera pose.
            T_world_from_grasped: (4, 4) pose of the grasped object in this frame.
            hand_vertices_world_m: (778, 3) hand vertices in the world frame.
            hand_faces: (F, 3) triangles.
            hand_vertex_rgb: (778, 3) float in [0, 1], skin colour per vertex.

        Returns:
            The RenderedView.
        """
        # 1. Pose the moving parts for this camera (the static poses were set by render_background)
        pyrender, scene = self.pyrender, self._scene
        grasped = [node for label, node, _ in self._objects if label == self._grasped_label]
        for node in grasped:
            scene.set_pose(node, cv_pose_to_gl(T_cam_from_world @ T_world_from_grasped))
        if self._hand is not None:
            scene.remove_node(self._hand)
        hand_primitive = pyrender.Primitive(
            positions=hand_vertices_world_m.astype(np.float32),
            normals=_vertex_normals(hand_vertices_world_m, hand_faces).astype(np.float32),
            indices=hand_faces.astype(np.uint32),
            color_0=np.concatenate([hand_vertex_rgb, np.ones((len(hand_vertex_rgb), 1))], axis=1).astype(np.float32),
            material=pyrender.MetallicRoughnessMaterial(metallicFactor=0.0, roughnessFactor=HAND_ROUGHNESS),
        )
        self._hand = scene.add(pyrender.Mesh([hand_primitive]), pose=cv_pose_to_gl(T_cam_from_world))

        # 2. A render window around the moving parts (only those pixels can change)
        corners_obj = trimesh.bounds.corners(np.array([[-1.0, -1, -1], [1, 1, 1]]) * self._grasped_radius_m)
        T_cam_from_grasped = T_cam_from_world @ T_world_from_grasped
        points_cam = np.concatenate([hand_vertices_world_m, corners_obj @ T_world_from_grasped[:3, :3].T
                                     + T_world_from_grasped[:3, 3]]) @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]  # fmt: skip
        del T_cam_from_grasped
        x0, y0, win_w, win_h = self._window(K, points_cam)
        K_window = np.asarray(K, dtype=np.float64).copy()
        K_window[0, 2] -= x0
        K_window[1, 2] -= y0
        self._set_viewport(win_w, win_h)
        scene.remove_node(self._camera)
        self._camera = scene.add(intrinsics_camera(pyrender, K_window, znear_m=ZNEAR_M, zfar_m=ZFAR_M), pose=np.eye(4))

        # 3. Hand + grasped object, then the hand alone (the object-free image and the full hand mask)
        self._show([self._hand] + grasped)
        fg_rgba, fg_depth = self._render_rgba()
        self._show([self._hand])
        hand_rgba, hand_depth = self._render_rgba()

        # 4. Composite over the background by depth inside the window; segmentation from the same depths
        full_h, full_w = background["depth_m"].shape
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + win_w, full_w), min(y0 + win_h, full_h)
        inside = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        region = (slice(iy0, iy1), slice(ix0, ix1))
        bg = {name: background[name][region] for name in ("rgb", "depth_m", "seg")}
        fg_rgba, fg_depth, hand_rgba, hand_depth = fg_rgba[inside], fg_depth[inside], hand_rgba[inside], hand_depth[inside]
        color = _to_uint8(background["rgb"])
        color_no_object = color.copy()
        color[region] = _to_uint8(_composite(fg_rgba, fg_depth, bg))
        color_no_object[region] = _to_uint8(_composite(hand_rgba, hand_depth, bg))
        depth = background["depth_m"].copy()
        nearer = (fg_depth > 0) & ((bg["depth_m"] == 0) | (fg_depth < bg["depth_m"]))
        depth[region] = np.where(nearer, fg_depth, bg["depth_m"])
        is_hand = nearer & (hand_depth > 0) & (np.abs(hand_depth - fg_depth) < DEPTH_MATCH_TOLERANCE_M)
        seg = background["seg"].copy()
        seg_region = seg[region]
        seg_region[nearer] = self._grasped_label
        seg_region[is_hand] = SEG_HAND_LABEL
        hand_mask_full = np.zeros(depth.shape, dtype=bool)
        hand_mask_full[region] = hand_depth > 0
        return RenderedView(
            color_rgb=color,
            color_no_object_rgb=color_no_object,
            depth_m=depth.astype(np.float32),
            seg=seg,
            hand_mask_full=hand_mask_full,
        )


def _composite(fg_rgba: np.ndarray, fg_depth: np.ndarray, background: dict[str, np.ndarray]) -> np.ndarray:
    """Premultiplied foreground over the background where the foreground is nearer (or at its soft edges)."""
    bg_depth = background["depth_m"]
    alpha = fg_rgba[..., 3:]
    nearer = (fg_depth > 0) & ((bg_depth == 0) | (fg_depth < bg_depth))
    edge = (fg_depth == 0) & (alpha[..., 0] > 0) & (background["seg"] == 0)  # coverage without a depth sample
    use_fg = (nearer | edge)[..., None]
    return np.where(use_fg, fg_rgba[..., :3] + (1.0 - alpha) * background["rgb"], background["rgb"])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _light_pose_world(direction_world: np.ndarray) -> np.ndarray:
    """(4, 4) pose whose -z axis points along `direction_world` (pyrender lights shine along -z).

    Expressed as an OpenCV-style pose (z forward = -direction) so that cv_pose_to_gl maps it like any mesh.
    """
    forward = -np.asarray(direction_world, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    helper = np.array([1.0, 0.0, 0.0]) if abs(forward[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x_axis = np.cross(helper, forward)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(forward, x_axis)
    T = np.eye(4)
    T[:3, :3] = np.stack([x_axis, y_axis, forward], axis=1)
    return T
