"""One reusable pyrender offscreen renderer: hand parts + object at crop size, masks, depth and feature passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unihope.storage.schema import HAND_PART_PALM, SEG_BACKGROUND, SEG_HAND, SEG_OBJECT
from unihope.render.camera import cv_pose_to_gl, intrinsics_camera, set_camera_intrinsics
from unihope.render.features import block_centre_samples
from unihope.render.gl import import_pyrender

NUM_HAND_PARTS = 6  # palm + 5 fingers
ZNEAR_M = 0.01
ZFAR_M = 10.0
GL_TRIANGLES = 4
MAX_CACHED_OBJECT_MESHES = 64  # object meshes kept uploaded-ready per renderer (DexYCB has 21)


def double_sided(faces: np.ndarray) -> np.ndarray:
    """Faces plus their reversed copies.

    pyrender culls back faces in SEG and DEPTH passes and offers no switch for them. MANO is open at the
    wrist and object meshes need not be closed, so a view into an opening would show holes; with both
    windings every triangle is drawn from either side, as a ray caster sees it.
    """
    faces = np.asarray(faces, dtype=np.uint32)
    return np.concatenate([faces, faces[:, ::-1]])


@dataclass(frozen=True, slots=True, eq=False)
class HandPartGeometry:
    """Per-side constant hand data: faces split by part, and the per-vertex dense embedding colours."""

    faces: np.ndarray  # (2F, 3) uint32, all faces, double-sided
    part_faces: tuple[np.ndarray, ...]  # NUM_HAND_PARTS x (F_i, 3) uint32, double-sided; palm first
    embedding_rgba: np.ndarray  # (778, 4) float32 in [0, 1], alpha 1


def split_hand_faces(faces: np.ndarray, vertex_labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Split hand faces into palm + 5 finger sub-meshes by majority vote of their vertices' labels.

    Args:
        faces: (F, 3) int vertex indices.
        vertex_labels: (V,) int, 0 palm/wrist, 1 thumb .. 5 little (`vertex_finger_labels`).

    Returns:
        NUM_HAND_PARTS double-sided (F_i, 3) uint32 face arrays, palm first.
    """
    faces = np.asarray(faces, dtype=np.int64)
    corner_labels = np.asarray(vertex_labels)[faces]  # (F, 3)
    a, b, c = corner_labels.T
    # majority of three labels; with three different labels the first corner decides
    face_labels = np.where((a == b) | (a == c), a, np.where(b == c, b, a))
    return tuple(double_sided(faces[face_labels == part]) for part in range(NUM_HAND_PARTS))


@dataclass(frozen=True, slots=True, eq=False)
class RenderedLayers:
    """Raw render outputs of one frame (full = crop size S, feature = S / feature_downsample)."""

    hand_parts: np.ndarray  # (S, S) uint8 hand alone: 0 none, 1 palm, 2..6 thumb..little
    depth_hand_m: np.ndarray  # (S, S) float32 hand alone, metres, 0 = background
    scene_labels: np.ndarray  # (S, S) uint8 hand + object: SEG_BACKGROUND / SEG_HAND / SEG_OBJECT
    depth_scene_m: np.ndarray  # (S, S) float32 hand + object, metres, 0 = background
    feature_seg: np.ndarray  # (s, s) uint8 scene_labels at the feature pixel centres (`block_centre_samples`)
    feature_depth_m: np.ndarray  # (s, s) float32 depth_scene_m at the same pixels, metres, 0 = background
    feature_rgba: np.ndarray  # (s, s, 4) uint8 FLAT vertex-colour render (hand embedding / object NOC)


class AnnotationRenderer:
    """An OffscreenRenderer and a scene kept for the life of a worker process; meshes are swapped per frame.

    Creating an OffscreenRenderer (an EGL/OSMesa context plus shader compilation) costs more than
    rendering a frame (docs/performance/annotate.md), so one is made per (size, platform) and reused.
    The scene holds a fixed camera node, NUM_HAND_PARTS hand-part nodes, one whole-hand node and one
    object node whose meshes are replaced in place.

    pyrender spends a fixed Python cost per drawn node and pass, so only the hand-alone pass draws the
    parts (SEG colours are per node); the other passes draw the whole hand as one node. The visible
    part labels follow from the hand-alone parts and the scene's hand mask: the object can hide hand
    surface but never reveal a different one.
    """

    def __init__(self, size_px: int, platform: str = "egl") -> None:
        """Create the GL context and the scene.

        Args:
            size_px: crop size S; feature passes render at smaller sizes with the same context.
            platform: "egl" (default, headless GPU or Mesa) or "osmesa" (pure software).
        """
        if size_px < 1:
            raise ValueError(f"render size must be a positive number of pixels, got {size_px}")
        self.size_px = int(size_px)
        self.platform = platform
        self._pyrender = import_pyrender(platform)
        self._build_context()

    def _build_context(self) -> None:
        """Create the OffscreenRenderer, the scene and its nodes (once per renderer)."""
        self._renderer = self._pyrender.OffscreenRenderer(self.size_px, self.size_px)
        self._scene = self._pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
        self._camera = intrinsics_camera(self._pyrender, np.eye(3), znear_m=ZNEAR_M, zfar_m=ZFAR_M)
        self._scene.add(self._camera, pose=np.eye(4))
        self._hand_nodes = []
        for _ in range(NUM_HAND_PARTS):
            node = self._pyrender.Node(mesh=self._empty_mesh(), matrix=cv_pose_to_gl(np.eye(4)))
            self._scene.add_node(node)
            self._hand_nodes.append(node)
        self._hand_node = self._pyrender.Node(mesh=self._empty_mesh(), matrix=cv_pose_to_gl(np.eye(4)))
        self._scene.add_node(self._hand_node)
        self._object_node = self._pyrender.Node(mesh=self._empty_mesh(), matrix=np.eye(4))
        self._scene.add_node(self._object_node)
        self._object_meshes: dict[str, object] = {}  # object key -> pyrender.Mesh living in this context
        self._current_object: tuple | None = None  # set_object arguments

    def _empty_mesh(self):
        """A one-triangle invisible placeholder so nodes exist before the first frame."""
        mesh = self._pyrender.Mesh(
            [
                self._pyrender.Primitive(
                    positions=np.zeros((3, 3), np.float32), indices=np.array([[0, 1, 2]]), mode=GL_TRIANGLES
                )
            ]
        )
        mesh.is_visible = False
        return mesh

    def set_object(self, object_key: str, vertices_obj_m: np.ndarray, faces: np.ndarray, noc_rgba: np.ndarray) -> None:
        """Make `object_key` the scene's object, building its mesh the first time it is seen.

        Args:
            object_key: a stable id of the mesh (its path).
            vertices_obj_m: (V, 3) vertices in the object frame, metres.
            faces: (F, 3) double-sided faces.
            noc_rgba: (V, 4) float32 vertex colours (normalised object coordinates, alpha 1).
        """
        mesh = self._object_meshes.get(object_key)
        if mesh is None:
            primitive = self._pyrender.Primitive(
                positions=np.asarray(vertices_obj_m, np.float32), indices=faces, color_0=noc_rgba, mode=GL_TRIANGLES
            )
            mesh = self._pyrender.Mesh([primitive])
            if len(self._object_meshes) >= MAX_CACHED_OBJECT_MESHES:
                self._object_meshes.pop(next(iter(self._object_meshes)))
            self._object_meshes[object_key] = mesh
        self._object_node.mesh = mesh
        self._current_object = (object_key, vertices_obj_m, faces, noc_rgba)

    def render(
        self,
        K_crop: np.ndarray,
        hand_vertices_cam_m: np.ndarray,
        hand_geometry: HandPartGeometry,
        T_cam_from_obj: np.ndarray,
        feature_size_px: int,
    ) -> RenderedLayers:
        """Render one frame's passes: hand alone (SEG), hand + object (SEG), then the feature-size FLAT pass.

        The object must have been set with `set_object` first.

        Args:
            K_crop: (3, 3) crop intrinsics (OpenCV, pixel centres at integers), px.
            hand_vertices_cam_m: (778, 3) hand vertices, OpenCV camera frame, metres.
            hand_geometry: the side's part faces and embedding colours.
            T_cam_from_obj: (3, 4) object pose, metres.
            feature_size_px: size of the Song et al. feature maps; must divide the crop size.

        Returns:
            The frame's `RenderedLayers`.

        Raises:
            ValueError: on wrong shapes or sizes.
        """
        # 1. Check inputs.
        hand_vertices = np.asarray(hand_vertices_cam_m, dtype=np.float32)
        if hand_vertices.shape != (hand_geometry.embedding_rgba.shape[0], 3):
            raise ValueError(f"hand vertices must be ({hand_geometry.embedding_rgba.shape[0]}, 3), got {hand_vertices.shape}")
        if not 1 <= feature_size_px <= self.size_px or self.size_px % feature_size_px:
            raise ValueError(f"feature_size_px must divide the crop size {self.size_px}, got {feature_size_px}")
        if self._current_object is None:
            raise ValueError("call set_object() before render()")

        # 2. Render.
        return self._render_passes(K_crop, hand_vertices, hand_geometry, T_cam_from_obj, feature_size_px)

    def _render_passes(
        self,
        K_crop: np.ndarray,
        hand_vertices: np.ndarray,
        hand_geometry: HandPartGeometry,
        T_cam_from_obj: np.ndarray,
        feature_size_px: int,
    ) -> RenderedLayers:
        """The passes of `render` (inputs already checked)."""
        pyrender = self._pyrender

        # 1. Swap meshes and poses: part meshes share the vertex array, their faces pick the part.
        for node, part_faces in zip(self._hand_nodes, hand_geometry.part_faces, strict=True):
            node.mesh = pyrender.Mesh([pyrender.Primitive(positions=hand_vertices, indices=part_faces, mode=GL_TRIANGLES)])
        whole_hand = pyrender.Primitive(
            positions=hand_vertices, indices=hand_geometry.faces, color_0=hand_geometry.embedding_rgba, mode=GL_TRIANGLES
        )
        self._hand_node.mesh = pyrender.Mesh([whole_hand])
        self._scene.set_pose(self._object_node, cv_pose_to_gl(T_cam_from_obj))

        # 2. Full-size SEG passes (SEG also returns depth): hand parts alone, then hand + object.
        part_map = {node: (HAND_PART_PALM + part,) * 3 for part, node in enumerate(self._hand_nodes)}
        scene_map = {self._hand_node: (SEG_HAND,) * 3, self._object_node: (SEG_OBJECT,) * 3}
        self._set_view(K_crop, self.size_px)
        hand_rgb, depth_hand_m = self._renderer.render(self._scene, flags=pyrender.RenderFlags.SEG, seg_node_map=part_map)
        scene_rgb, depth_scene_m = self._renderer.render(self._scene, flags=pyrender.RenderFlags.SEG, seg_node_map=scene_map)
        scene_labels = _clean_labels(scene_rgb[..., 0])
        depth_scene_m = depth_scene_m.astype(np.float32, copy=False)

        # 3. Feature-size labels and depth: the crop-size scene pass sampled at the feature pixels' centres
        #    (`block_centre_samples`) instead of a third SEG pass, which cost more than the sampling.
        factor = self.size_px // feature_size_px
        feature_seg = block_centre_samples(scene_labels, factor)
        feature_depth_m = block_centre_samples(depth_scene_m, factor)

        # 4. Feature-size FLAT pass for the vertex colours, without the part nodes. It stays a render at the
        #    feature size: a crop-size FLAT pass sampled down avoids pyrender's framebuffer rebuild on the
        #    viewport change but was slower overall (4x MSAA raster and readback of 16x the pixels; A/B in
        #    docs/performance/annotate.md).
        self._set_view(feature_intrinsics(K_crop, self.size_px, feature_size_px), feature_size_px)
        for node in self._hand_nodes:
            node.mesh.is_visible = False
        rgba, _ = self._renderer.render(self._scene, flags=pyrender.RenderFlags.FLAT | pyrender.RenderFlags.RGBA)
        return RenderedLayers(
            hand_parts=hand_rgb[..., 0].copy(),
            depth_hand_m=depth_hand_m.astype(np.float32, copy=False),
            scene_labels=scene_labels,
            depth_scene_m=depth_scene_m,
            feature_seg=feature_seg,
            feature_depth_m=feature_depth_m,
            feature_rgba=rgba,
        )

    def _set_view(self, K: np.ndarray, size_px: int) -> None:
        """Point the camera with intrinsics K at a size_px x size_px viewport."""
        set_camera_intrinsics(self._camera, K)
        self._renderer.viewport_width = size_px
        self._renderer.viewport_height = size_px

    def delete(self) -> None:
        """Free the GL context (with EGL this also ends every other pyrender context of the process)."""
        self._renderer.delete()


def _clean_labels(labels: np.ndarray) -> np.ndarray:
    """SEG labels with anything but SEG_HAND / SEG_OBJECT set to SEG_BACKGROUND."""
    return np.where((labels == SEG_HAND) | (labels == SEG_OBJECT), labels, SEG_BACKGROUND).astype(np.uint8)


def feature_intrinsics(K_crop: np.ndarray, size_px: int, feature_size_px: int) -> np.ndarray:
    """Intrinsics of the same view at feature_size_px (pixel centres at integers: u' = (u + .5) * r - .5)."""
    ratio = feature_size_px / size_px
    resize = np.array([[ratio, 0.0, 0.5 * ratio - 0.5], [0.0, ratio, 0.5 * ratio - 0.5], [0.0, 0.0, 1.0]])
    return resize @ np.asarray(K_crop, dtype=np.float64)
