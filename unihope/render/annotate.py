"""Rendered annotation of a batch of frames: crop, masks, depth, visibility, hand parts and Song et al. maps."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh

from unihope.storage.schema import (
    HAND_PART_FINGER_FIRST,
    SEG_HAND,
    SEG_OBJECT,
    AnnotatedFrame,
    Crop,
    FrameRecord,
    GraspLabel,
    Skip,
    SkipReason,
)
from unihope.config import CropConfig, HandModelConfig, RenderConfig
from unihope.crop import apply_affine, compute_crop
from unihope.image_check import ImageDecodeError, read_color_image_bgr
from unihope.render.camera import project_points
from unihope.render.features import (
    box_keypoints,
    dense_map_from_rgba,
    relative_depth_map,
    segmentation_map,
    unit_cube_coordinates,
)
from unihope.render.renderer import (
    AnnotationRenderer,
    HandPartGeometry,
    RenderedLayers,
    double_sided,
    split_hand_faces,
)

STAGE = "annotate"
NUM_FINGERS = 5
MAX_CACHED_OBJECTS = 64  # distinct object meshes kept per AnnotationResources (DexYCB has 21)


@dataclass(frozen=True, slots=True, eq=False)
class ObjectAsset:
    """An object mesh loaded once per process, with what every frame derives from it."""

    cache_key: str  # path plus modification time and size: a rewritten file is loaded again
    vertices_obj_m: np.ndarray  # (V, 3) float64, object frame, metres
    faces: np.ndarray  # (2F, 3) uint32, double-sided
    noc_rgba: np.ndarray  # (V, 4) float32 normalised object coordinates in [0, 1], alpha 1
    keypoints_obj_m: np.ndarray  # (21, 3) float64 box centre, corners, edge midpoints, object frame


class AnnotationResources:
    """What annotation reuses across batches: renderers, hand layers and object meshes, keyed by what makes them differ.

    A GL context with compiled shaders and a hand layer (it loads a model file) each cost far more
    than annotating a frame (docs/performance/annotate.md), so a worker that annotates many batches
    keeps one of these and passes it to every `annotate_frames` call (a build worker's lives in
    `unihope.tasks.resources.WorkerResources`). Nothing is cached at module level; no per-frame state.
    """

    def __init__(self) -> None:
        self._renderers: dict[tuple[int, str, int], AnnotationRenderer] = {}  # (size, platform, thread id)
        self._hand_layers: dict[tuple[str, str, str], tuple[object, HandPartGeometry]] = {}
        self._objects: dict[str, ObjectAsset | Skip] = {}  # keyed by ObjectAsset.cache_key

    def renderer(self, size_px: int, platform: str) -> AnnotationRenderer:
        """This thread's renderer for crops of `size_px` on `platform` (created on first use).

        Keyed by thread as well: an EGL context stays current on the thread that rendered with it, and
        making it current on another thread fails (EGL_BAD_ACCESS). Builds render on one render thread
        (`unihope.tasks.resources.WorkerResources.on_render_thread`); a caller on another thread gets its own renderer.
        """
        key = (int(size_px), platform, threading.get_ident())
        if key not in self._renderers:
            self._renderers[key] = AnnotationRenderer(size_px, platform)
        return self._renderers[key]

    def forget_renderers(self) -> None:
        """Drop the renderers without touching their GL contexts (after their render thread got stuck).

        A context works only on the thread that made it current; once that thread is abandoned, the next
        renderer must be created on the new render thread.
        """
        self._renderers.clear()

    def hand_layer(self, side: str, hand_cfg: HandModelConfig, tip_convention: str = "manopth"
                   ) -> tuple[object, HandPartGeometry]:
        """The `HandLayer` for `side` (fingertips of `tip_convention`, the source's) and its part faces /
        embedding colours (created on first use)."""
        from unihope.hand import HandLayer, resolve_mano_path, vertex_finger_labels

        key = (side, hand_cfg.config_hash(), tip_convention)
        if key not in self._hand_layers:
            layer = HandLayer(side=side, model_path=resolve_mano_path(side, hand_cfg.mano_dir, hand_cfg.cache_dir),
                              tip_convention=tip_convention)
            template_vertices_m, _ = layer.forward_numpy(
                np.zeros((1, 48), np.float32), np.zeros((1, 10), np.float32), np.zeros((1, 3), np.float32)
            )
            embedding = unit_cube_coordinates(template_vertices_m[0])
            embedding_rgba = np.concatenate([embedding, np.ones((len(embedding), 1), np.float32)], axis=1)
            labels = vertex_finger_labels(layer.mano.lbs_weights.detach().cpu().numpy())
            geometry = HandPartGeometry(
                faces=double_sided(layer.faces),
                part_faces=split_hand_faces(layer.faces, labels),
                embedding_rgba=embedding_rgba,
            )
            self._hand_layers[key] = (layer, geometry)
        return self._hand_layers[key]

    def object_asset(self, mesh_path: str, sample_key: str = "") -> ObjectAsset | Skip:
        """Load (once) an object mesh and derive its NOC colours and box keypoints.

        Returns:
            The asset, or a Skip (MESH_MISSING for a missing or empty mesh, CORRUPT_FILE when unparsable)
            carrying `sample_key`.
        """
        try:
            stat = Path(mesh_path).stat() if mesh_path else None
        except OSError:
            stat = None
        if stat is None:
            return Skip(sample_key, STAGE, SkipReason.MESH_MISSING, f"object mesh not found: {mesh_path!r}")
        cache_key = f"{mesh_path}|{stat.st_mtime_ns}|{stat.st_size}"
        cached = self._objects.get(cache_key)
        if cached is None:
            cached = _load_object_asset_uncached(mesh_path, cache_key)
            if len(self._objects) >= MAX_CACHED_OBJECTS:
                self._objects.pop(next(iter(self._objects)))
            self._objects[cache_key] = cached
        if isinstance(cached, Skip):
            return Skip(sample_key, cached.stage, cached.reason, cached.detail)
        return cached


def _load_object_asset_uncached(mesh_path: str, cache_key: str) -> ObjectAsset | Skip:
    try:
        # Only geometry is needed: skip_materials avoids decoding the texture image.
        mesh = trimesh.load(mesh_path, force="mesh", process=False, skip_materials=True)
    except (ValueError, KeyError, IndexError, OSError) as err:
        return Skip("", STAGE, SkipReason.CORRUPT_FILE, f"object mesh {mesh_path}: {type(err).__name__}: {err}")
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64)
    if len(vertices) == 0 or len(faces) == 0 or not np.isfinite(vertices).all():
        return Skip("", STAGE, SkipReason.MESH_MISSING, f"object mesh {mesh_path} has no usable triangles")
    noc = unit_cube_coordinates(vertices)
    return ObjectAsset(
        cache_key=cache_key,
        vertices_obj_m=vertices,
        faces=double_sided(faces),
        noc_rgba=np.concatenate([noc, np.ones((len(noc), 1), np.float32)], axis=1),
        keypoints_obj_m=box_keypoints(vertices),
    )


def read_crop_image(
    image_path: str, affine: np.ndarray, size_px: int, image_size_wh: tuple[int, int]
) -> np.ndarray | tuple[SkipReason, str]:
    """Read a colour image and cut the crop with the affine; (reason, detail) when it cannot be read.

    Returns:
        (size_px, size_px, 3) uint8 RGB, or a (SkipReason, detail) pair.
    """
    if not Path(image_path).is_file():
        return SkipReason.MISSING_FILE, f"image not found: {image_path}"
    try:
        image_bgr = read_color_image_bgr(image_path)  # damaged JPEG entropy data is an error, not pixels
    except ImageDecodeError as err:
        return SkipReason.CORRUPT_FILE, str(err)
    height_px, width_px = image_bgr.shape[:2]
    if (width_px, height_px) != tuple(image_size_wh):
        # the file changed since the source read its header (its size was checked against the camera's there)
        return SkipReason.WRONG_RESOLUTION, f"image is {width_px}x{height_px} px, the record says {image_size_wh}"
    crop_bgr = cv2.warpAffine(
        image_bgr, affine, (size_px, size_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)


def occlusion_bin(visibility: float, edges: Sequence[float]) -> int:
    """UniHOPE's interval of a visibility: 0 for [0, e0], 1 for (e0, e1], ... (right-closed bins)."""
    return int(np.searchsorted(np.asarray(edges, dtype=np.float64), visibility, side="left"))


def annotate_frames(
    frames: Sequence[FrameRecord],
    grasps: Sequence[GraspLabel],
    crop_cfg: CropConfig,
    render_cfg: RenderConfig,
    hand_cfg: HandModelConfig,
    tip_convention: str = "manopth",
    *,
    resources: AnnotationResources,
) -> list[AnnotatedFrame | Skip]:
    """Crop, render and annotate a batch of frames; bad frames become Skips, never exceptions.

    Args:
        frames: loaded frame records.
        grasps: their grasp labels, same order and keys (from `unihope.grasp.label_grasps`).
        crop_cfg: crop size and box scales.
        render_cfg: GL platform, feature-map downsampling, relative depth range, occlusion bins.
        hand_cfg: which MANO files the hand layer uses.
        tip_convention: the source's fingertip convention (`FrameSource.tip_convention`), so that the
            layer's joints are the records' joints.
        resources: the renderer, hand layers and object meshes to use (the caller keeps one across batches).

    Returns:
        One `AnnotatedFrame` or `Skip` per input frame, in input order.

    Raises:
        ValueError: when frames and grasp labels do not pair up, or the crop size is not a multiple of
            the feature downsampling factor.
    """
    # 1. Check inputs.
    if len(frames) != len(grasps):
        raise ValueError(f"got {len(frames)} frames but {len(grasps)} grasp labels; pass one label per frame")
    for frame, grasp in zip(frames, grasps, strict=True):
        if frame.sample_key != grasp.sample_key:
            raise ValueError(
                f"grasp label {grasp.sample_key!r} is paired with frame {frame.sample_key!r}; keep both in the same order"
            )
    size_px = crop_cfg.size_px
    if size_px % render_cfg.feature_downsample:
        raise ValueError(
            f"crop.size_px={size_px} must be a multiple of render.feature_downsample={render_cfg.feature_downsample}"
        )
    feature_size_px = size_px // render_cfg.feature_downsample

    # 2. Hand meshes, one forward pass per frame (batch-invariant).
    hand_vertices_m = _hand_vertices_by_frame(frames, hand_cfg, tip_convention, resources)

    # 3. Annotate frame by frame with the caller's renderer.
    renderer = resources.renderer(size_px, render_cfg.platform)
    results: list[AnnotatedFrame | Skip] = []
    for pos, (frame, grasp) in enumerate(zip(frames, grasps, strict=True)):
        _, hand_geometry = resources.hand_layer(frame.hand_side, hand_cfg, tip_convention)
        asset = resources.object_asset(frame.object_mesh_path, frame.sample_key)
        results.append(_annotate_one(frame, grasp, hand_vertices_m[pos], hand_geometry, asset, renderer, crop_cfg,
                                     render_cfg, feature_size_px))
    return results


def _hand_vertices_by_frame(
    frames: Sequence[FrameRecord], hand_cfg: HandModelConfig, tip_convention: str, resources: AnnotationResources
) -> list[np.ndarray]:
    """(778, 3) camera-frame hand vertices of every frame, one forward pass per frame.

    One pass per frame, not one per batch: a batched MANO forward is not batch-invariant (BLAS blocks
    rows differently with the batch size, so a row moves by an ulp with its neighbours), and an ulp of a
    vertex can move a depth sample by microns or flip an edge pixel. A frame's annotation must depend on
    that frame alone, whichever batch (or retry, or OOM-halved chunk) it lands in. It costs a few per
    cent of annotating a frame (docs/performance/annotate.md).
    """
    vertices: list[np.ndarray] = []
    for frame in frames:
        layer, _ = resources.hand_layer(frame.hand_side, hand_cfg, tip_convention)
        verts_m, _ = layer.forward_numpy(
            np.asarray(frame.mano_pose, np.float32)[None],
            np.asarray(frame.mano_betas, np.float32)[None],
            np.asarray(frame.mano_trans, np.float32)[None],
        )
        vertices.append(np.asarray(verts_m[0], dtype=np.float64))
    return vertices


def _annotate_one(
    frame: FrameRecord,
    grasp: GraspLabel,
    hand_vertices_cam_m: np.ndarray,
    hand_geometry: HandPartGeometry,
    asset: ObjectAsset | Skip,
    renderer: AnnotationRenderer,
    crop_cfg: CropConfig,
    render_cfg: RenderConfig,
    feature_size_px: int,
) -> AnnotatedFrame | Skip:
    """Annotate one frame (see `annotate_frames`)."""
    key = frame.sample_key

    # 1. Object mesh and its pose.
    if isinstance(asset, Skip):
        return asset
    T_cam_from_obj = np.asarray(frame.object_pose, dtype=np.float64)
    if not np.isfinite(T_cam_from_obj).all():
        return Skip(key, STAGE, SkipReason.DEGENERATE_POSE, "object pose is not finite")
    R, t = T_cam_from_obj[:, :3], T_cam_from_obj[:, 3]
    object_vertices_cam_m = asset.vertices_obj_m @ R.T + t
    object_keypoints_cam_m = asset.keypoints_obj_m @ R.T + t

    # 2. Crop.
    crop = compute_crop(frame, grasp, crop_cfg, hand_vertices_cam_m, object_vertices_cam_m, object_keypoints_cam_m)
    if isinstance(crop, Skip):
        return crop

    # 3. Image crop.
    image = read_crop_image(frame.image_path, crop.affine, crop.size_px, frame.image_size_wh)
    if isinstance(image, tuple):
        return Skip(key, STAGE, image[0], image[1])

    # 4. Render.
    renderer.set_object(asset.cache_key, asset.vertices_obj_m, asset.faces, asset.noc_rgba)
    layers = renderer.render(crop.K, hand_vertices_cam_m, hand_geometry, T_cam_from_obj, feature_size_px)
    num_hand_px = int(np.count_nonzero(layers.hand_parts))
    if num_hand_px == 0:
        return Skip(key, STAGE, SkipReason.HAND_NOT_VISIBLE, "the hand covers no pixel of the crop")

    # 5. Masks, visibility and the record.
    return _build_record(frame, grasp, crop, image, layers, asset, render_cfg, num_hand_px)


def _build_record(
    frame: FrameRecord,
    grasp: GraspLabel,
    crop: Crop,
    image: np.ndarray,
    layers: RenderedLayers,
    asset: ObjectAsset,
    render_cfg: RenderConfig,
    num_hand_px: int,
) -> AnnotatedFrame:
    """Derive masks, visibility, per-finger visibility, keypoints and feature maps from the raw layers."""
    # 1. Masks and visibility.
    mask_hand = layers.hand_parts > 0
    mask_hand_visible = (layers.scene_labels == SEG_HAND) & mask_hand  # SEG edges may differ by a pixel between passes
    mask_object = layers.scene_labels == SEG_OBJECT
    visibility = float(np.count_nonzero(mask_hand_visible) / num_hand_px)

    # 2. Per-finger visibility: 1.0 for a finger with no pixel of its own (nothing there to occlude).
    #    A visible hand pixel shows the same surface as in the hand-alone render (the object only hides).
    finger_labels = np.arange(HAND_PART_FINGER_FIRST, HAND_PART_FINGER_FIRST + NUM_FINGERS)
    num_labels = HAND_PART_FINGER_FIRST + NUM_FINGERS
    full_counts = np.bincount(layers.hand_parts.ravel(), minlength=num_labels)[finger_labels]
    visible_counts = np.bincount(layers.hand_parts[mask_hand_visible], minlength=num_labels)[finger_labels]
    finger_visibility = np.where(full_counts > 0, visible_counts / np.maximum(full_counts, 1), 1.0).astype(np.float32)

    # 3. Keypoints in crop px.
    joints_2d_crop = apply_affine(frame.joints_2d, crop.affine).astype(np.float32)
    T_cam_from_obj = np.asarray(frame.object_pose, dtype=np.float64)
    keypoints_cam_m = asset.keypoints_obj_m @ T_cam_from_obj[:, :3].T + T_cam_from_obj[:, 3]
    object_keypoints_2d = project_points(keypoints_cam_m, crop.K).astype(np.float32)

    # 4. Song et al. feature maps.
    seg_map = segmentation_map(layers.feature_seg == SEG_HAND, layers.feature_seg == SEG_OBJECT)
    dense_map = dense_map_from_rgba(layers.feature_rgba, seg_map > 0)
    relative_depth = relative_depth_map(
        np.where(seg_map > 0, layers.feature_depth_m, 0.0), float(keypoints_cam_m[0, 2]), render_cfg.relative_depth_range_m
    )
    return AnnotatedFrame(
        frame=frame,
        grasp=grasp,
        crop=crop,
        image=image,
        mask_hand=mask_hand,
        mask_hand_visible=mask_hand_visible,
        mask_object=mask_object,
        depth_hand=np.where(mask_hand, layers.depth_hand_m, 0.0).astype(np.float32),
        depth_scene=layers.depth_scene_m.astype(np.float32),
        hand_parts=layers.hand_parts.astype(np.uint8),
        visibility=visibility,
        occlusion_ratio=1.0 - visibility,
        occlusion_bin=occlusion_bin(visibility, render_cfg.occlusion_bin_edges),
        finger_visibility=finger_visibility,
        joints_2d=joints_2d_crop,
        object_keypoints_2d=object_keypoints_2d,
        seg_map=seg_map,
        dense_map=dense_map,
        relative_depth_map=relative_depth,
    )
