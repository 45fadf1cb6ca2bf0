"""Song et al.'s 2D feature maps (segmentation, dense mapping, relative depth) and object box keypoints."""

from __future__ import annotations

import itertools

import numpy as np

from unihope.storage.schema import NUM_OBJECT_KEYPOINTS, SEG_BACKGROUND, SEG_HAND, SEG_OBJECT

MIN_EXTENT_M = 1e-6  # a mesh smaller than this (a point) maps to the cube's centre, not a division by zero

# The 8 corners of an axis-aligned box as (x, y, z) bit triples (0 = min, 1 = max), x slowest.
BOX_CORNER_BITS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int64)  # (8, 3)
# The 12 edges: corner pairs that differ in exactly one bit, in lexicographic order of the pair.
BOX_EDGE_CORNERS = np.array(
    [(a, b) for a, b in itertools.combinations(range(8), 2) if np.abs(BOX_CORNER_BITS[a] - BOX_CORNER_BITS[b]).sum() == 1],
    dtype=np.int64,
)  # (12, 2)


def unit_cube_coordinates(vertices_m: np.ndarray) -> np.ndarray:
    """Scale vertices uniformly into the unit cube, centred: Song et al.'s normalised object coordinates.

    One scale for all three axes (1 / the longest side of the axis-aligned bounds), so the shape's aspect
    is kept: the longest axis spans [0, 1] and the others are centred on 0.5, e.g. a 4 x 2 x 1 cm box
    maps to [0, 1] x [0.25, 0.75] x [0.375, 0.625]. Per-axis scaling would stretch a flat object into a
    cube and make the map's values depend on its proportions. Used for the object's NOC and for the
    hand's fixed per-vertex embedding (the normalised template vertices).

    Args:
        vertices_m: (V, 3) vertices in the model frame, metres.

    Returns:
        (V, 3) float32 in [0, 1].
    """
    vertices = np.asarray(vertices_m, dtype=np.float64)
    lower, upper = vertices.min(axis=0), vertices.max(axis=0)
    longest_m = float((upper - lower).max())
    scale = 1.0 / longest_m if longest_m > MIN_EXTENT_M else 0.0
    centred = (vertices - (lower + upper) / 2.0) * scale + 0.5
    return np.clip(centred, 0.0, 1.0).astype(np.float32)


def box_keypoints(vertices_m: np.ndarray) -> np.ndarray:
    """The 21 object keypoints: centre, 8 corners, 12 edge midpoints of the vertices' axis-aligned box.

    Args:
        vertices_m: (V, 3) object mesh vertices in the object frame, metres.

    Returns:
        (21, 3) float64 keypoints in the object frame, metres (order: centre, `BOX_CORNER_BITS`,
        `BOX_EDGE_CORNERS`).
    """
    vertices = np.asarray(vertices_m, dtype=np.float64)
    lower, upper = vertices.min(axis=0), vertices.max(axis=0)
    corners = np.where(BOX_CORNER_BITS == 1, upper, lower)
    midpoints = corners[BOX_EDGE_CORNERS].mean(axis=1)
    keypoints = np.concatenate([((lower + upper) / 2.0)[None], corners, midpoints])
    assert keypoints.shape == (NUM_OBJECT_KEYPOINTS, 3)
    return keypoints


def segmentation_map(hand_mask: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 SEG_BACKGROUND / SEG_HAND / SEG_OBJECT from disjoint visible masks."""
    seg = np.full(hand_mask.shape, SEG_BACKGROUND, dtype=np.uint8)
    seg[hand_mask] = SEG_HAND
    seg[object_mask] = SEG_OBJECT
    return seg


def relative_depth_map(depth_m: np.ndarray, object_centre_depth_m: float, range_m: float) -> np.ndarray:
    """Depth minus the object centre's depth, divided by `range_m` and clipped to [-1, 1]; 0 on background.

    Args:
        depth_m: (H, W) rendered scene depth, metres, 0 = background.
        object_centre_depth_m: camera-frame z of the object's box centre, metres.
        range_m: depth offset that maps to +-1 (RenderConfig.relative_depth_range_m).

    Returns:
        (H, W) float32 in [-1, 1].
    """
    relative = np.clip((depth_m - object_centre_depth_m) / range_m, -1.0, 1.0)
    return np.where(depth_m > 0, relative, 0.0).astype(np.float32)


def block_centre_samples(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by an integer factor, taking from each factor x factor block the pixel nearest its centre.

    Feature pixel i covers full pixels [factor * i, factor * i + factor - 1]; its centre lies at
    factor * i + (factor - 1) / 2 (`feature_intrinsics`). For an odd factor that is a pixel; for an even
    factor it lies between two, and the lower-right one (factor * i + factor // 2) is taken, half a full
    pixel off the exact centre. Nearest, not averaging or a mode: labels stay labels, and a depth value stays
    one surface's depth (averaging across a silhouette would invent depths between hand, object and background).

    Args:
        image: (H, W, ...) array with H and W multiples of `factor`.
        factor: integer downsampling factor (RenderConfig.feature_downsample).

    Returns:
        (H // factor, W // factor, ...) array of the same dtype.

    Raises:
        ValueError: when the size is not a multiple of `factor`.
    """
    height_px, width_px = image.shape[:2]
    if factor < 1 or height_px % factor or width_px % factor:
        raise ValueError(f"image of {width_px}x{height_px} px cannot be split into {factor}x{factor} blocks")
    offset_px = factor // 2
    return np.ascontiguousarray(image[offset_px::factor, offset_px::factor])


def dense_map_from_rgba(rgba_u8: np.ndarray, foreground_mask: np.ndarray) -> np.ndarray:
    """Dense-mapping values from a FLAT vertex-colour render, background set to 0.

    pyrender anti-aliases non-SEG passes (4x MSAA), so an edge pixel holds coverage x colour over a
    transparent black background; the alpha channel is that coverage, and dividing by it restores the
    surface's value (exact along hand/background and object/background edges; hand/object edges stay mixed).

    Args:
        rgba_u8: (H, W, 4) uint8 FLAT render with vertex colours, background (0, 0, 0, 0).
        foreground_mask: (H, W) bool, pixels that belong to the hand or the object (SEG pass).

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    rgba = rgba_u8.astype(np.float32) / 255.0
    alpha = rgba[..., 3:4]
    dense = np.where(alpha > 0, rgba[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    dense = np.clip(dense, 0.0, 1.0)
    dense[~foreground_mask] = 0.0
    return dense.astype(np.float32)
