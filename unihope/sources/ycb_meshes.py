"""Procedural stand-ins for the 21 DexYCB/YCB objects: textured meshes shaped like the named objects.

The real YCB scans cannot ship with the project, so the synthetic source writes meshes of the same
names, rough sizes and colours (a can is a labelled cylinder, a box a printed cuboid, a mug a cylinder
with a handle, ...). Each object also carries a *grip proxy*: the analytic primitive (cylinder or box,
axis = the object's z axis) the synthetic grasp generator closes the fingers around.

Object frame: origin at the centre of the object's bounding box, z up when the object stands on a
table, metres (as the YCB `textured_simple.obj` files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh

from unihope.storage.io import write_file_atomic

# The 21 YCB objects of DexYCB, in YCB-id order (id = index + 1).
YCB_NAMES: tuple[str, ...] = (
    "002_master_chef_can",
    "003_cracker_box",
    "004_sugar_box",
    "005_tomato_soup_can",
    "006_mustard_bottle",
    "007_tuna_fish_can",
    "008_pudding_box",
    "009_gelatin_box",
    "010_potted_meat_can",
    "011_banana",
    "019_pitcher_base",
    "021_bleach_cleanser",
    "024_bowl",
    "025_mug",
    "035_power_drill",
    "036_wood_block",
    "037_scissors",
    "040_large_marker",
    "051_large_clamp",
    "052_extra_large_clamp",
    "061_foam_brick",
)

MESH_FILE_NAME = "textured_simple.obj"
MTL_FILE_NAME = "textured_simple.obj.mtl"
TEXTURE_FILE_NAME = "texture_map.png"
POINTS_FILE_NAME = "points.xyz"  # YCB's surface point sample, "x y z" metres per line (UniHOPE's loader reads it)
NUM_MODEL_POINTS = 2620  # as many as YCB-Video's points.xyz files hold
TEXTURE_SIZE_PX = 256
CYLINDER_SECTIONS = 48
CAP_V_BOTTOM = 0.02  # texture rows reserved for the bottom / top caps
CAP_V_TOP = 0.98
SIDE_V_MIN, SIDE_V_MAX = 0.06, 0.94


@dataclass(frozen=True, slots=True)
class GripProxy:
    """The primitive the grasp generator wraps the fingers around (object frame, axis = z).

    kind "cylinder": `half_extents_m` = (radius, radius, half height);
    kind "box": `half_extents_m` = (half x, half y, half z).
    """

    kind: str
    half_extents_m: tuple[float, float, float]
    centre_m: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def signed_distance_m(self, points_obj_m: np.ndarray) -> np.ndarray:
        """Signed distance (negative inside) of (..., 3) object-frame points to the proxy surface."""
        points = np.asarray(points_obj_m, dtype=np.float64) - np.asarray(self.centre_m)
        hx, hy, hz = self.half_extents_m
        if self.kind == "cylinder":
            radial = np.linalg.norm(points[..., :2], axis=-1) - hx
            axial = np.abs(points[..., 2]) - hz
            outside = np.sqrt(np.maximum(radial, 0) ** 2 + np.maximum(axial, 0) ** 2)
            return outside + np.minimum(np.maximum(radial, axial), 0.0)
        q = np.abs(points) - np.array([hx, hy, hz])
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        return outside + np.minimum(q.max(axis=-1), 0.0)


@dataclass(frozen=True, slots=True)
class YCBObject:
    """One procedural YCB stand-in: its id, name, mesh, texture and grip proxy."""

    ycb_id: int
    name: str
    mesh: trimesh.Trimesh  # object frame, metres
    uv_per_corner: np.ndarray  # (F, 3, 2) float32 texture coordinates of each face corner
    texture_rgb: np.ndarray  # (T, T, 3) uint8
    grip: GripProxy
    is_graspable_side: bool  # stands on the table and can be wrapped around its z axis
    resting_height_m: float  # z of the object origin when it rests on the table


def ycb_id_from_name(name: str) -> int:
    """YCB id (1-21) of an object name such as "006_mustard_bottle".

    Raises:
        ValueError: when the name is not one of the 21 DexYCB objects.
    """
    if name not in YCB_NAMES:
        raise ValueError(f"unknown YCB object {name!r}; expected one of: {', '.join(YCB_NAMES)}")
    return YCB_NAMES.index(name) + 1


# --- shapes -------------------------------------------------------------------------------------


def _revolve(profile_rz_m: list[tuple[float, float]], sections: int = CYLINDER_SECTIONS) -> trimesh.Trimesh:
    """Surface of revolution about z from a (radius, z) profile, closed at both ends."""
    return trimesh.creation.revolve(np.asarray(profile_rz_m, dtype=np.float64), sections=sections)


def _box(extents_m: tuple[float, float, float], centre_m: tuple[float, float, float] = (0, 0, 0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=extents_m)
    mesh.apply_translation(centre_m)
    return mesh


def _cylinder(radius_m: float, height_m: float, centre_m=(0.0, 0.0, 0.0), axis: str = "z") -> trimesh.Trimesh:
    mesh = trimesh.creation.cylinder(radius=radius_m, height=height_m, sections=CYLINDER_SECTIONS)
    if axis == "x":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    elif axis == "y":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    mesh.apply_translation(centre_m)
    return mesh


def _banana() -> trimesh.Trimesh:
    """A capsule bent along an arc (banana lying on its side)."""
    capsule = trimesh.creation.capsule(height=0.15, radius=0.018, count=[24, 24])
    capsule.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))  # axis -> x
    bend_radius_m = 0.12
    v = capsule.vertices.copy()
    angle = v[:, 0] / bend_radius_m
    radius = bend_radius_m + v[:, 1]
    capsule.vertices = np.stack([radius * np.sin(angle), radius * np.cos(angle) - bend_radius_m, v[:, 2]], axis=1)
    return capsule


def _mug() -> trimesh.Trimesh:
    body = _revolve([(0.0, -0.041), (0.040, -0.041), (0.040, 0.041), (0.036, 0.041), (0.036, -0.035), (0.0, -0.035)])
    handle = trimesh.creation.torus(major_radius=0.024, minor_radius=0.006, major_sections=32, minor_sections=12)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([0.052, 0.0, 0.0])
    return trimesh.util.concatenate([body, handle])


def _bowl() -> trimesh.Trimesh:
    return _revolve(
        [(0.0, -0.0265), (0.045, -0.0265), (0.0795, 0.0265), (0.074, 0.0265), (0.041, -0.020), (0.0, -0.020)]
    )


def _bottle(radius_m: float, height_m: float, neck_radius_m: float, cap_height_m: float, squash_y: float):
    """Body, shoulder, neck and cap as one revolved profile, squashed along y for flat bottles."""
    h = height_m / 2
    profile = [
        (0.0, -h),
        (radius_m, -h),
        (radius_m, h - 0.35 * height_m),
        (neck_radius_m * 1.3, h - cap_height_m - 0.02),
        (neck_radius_m, h - cap_height_m),
        (neck_radius_m, h),
        (0.0, h),
    ]
    mesh = _revolve(profile)
    mesh.apply_scale([1.0, squash_y, 1.0])
    return mesh


def _drill() -> trimesh.Trimesh:
    body = _box((0.16, 0.05, 0.06), (0.0, 0.0, 0.06))
    grip = _box((0.045, 0.045, 0.12), (-0.035, 0.0, -0.02))
    battery = _box((0.08, 0.07, 0.035), (-0.035, 0.0, -0.0825))
    chuck = _cylinder(0.016, 0.05, centre_m=(0.10, 0.0, 0.06), axis="x")
    return trimesh.util.concatenate([body, grip, battery, chuck])


def _clamp(scale: float) -> trimesh.Trimesh:
    parts = [
        _box((0.14 * scale, 0.025 * scale, 0.035 * scale), (0.0, 0.06 * scale, 0.0)),
        _box((0.14 * scale, 0.025 * scale, 0.035 * scale), (0.0, -0.06 * scale, 0.0)),
        _box((0.025 * scale, 0.145 * scale, 0.035 * scale), (-0.07 * scale, 0.0, 0.0)),
    ]
    return trimesh.util.concatenate(parts)


def _scissors() -> trimesh.Trimesh:
    blades = _box((0.11, 0.018, 0.008), (0.045, 0.0, 0.0))
    ring_a = trimesh.creation.torus(major_radius=0.022, minor_radius=0.005, major_sections=24, minor_sections=8)
    ring_a.apply_translation([-0.035, 0.022, 0.0])
    ring_b = trimesh.creation.torus(major_radius=0.022, minor_radius=0.005, major_sections=24, minor_sections=8)
    ring_b.apply_translation([-0.035, -0.022, 0.0])
    return trimesh.util.concatenate([blades, ring_a, ring_b])


def _marker() -> trimesh.Trimesh:
    body = _cylinder(0.009, 0.105, centre_m=(0.0, 0.0, -0.008))
    tip = trimesh.creation.cone(radius=0.009, height=0.016, sections=CYLINDER_SECTIONS)
    tip.apply_translation([0.0, 0.0, 0.0445])
    mesh = trimesh.util.concatenate([body, tip])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))  # lies along x
    return mesh


# name -> (mesh builder, base colour RGB, label colour RGB, cap colour RGB, grip proxy or None)
def _object_table() -> dict[str, tuple]:
    cyl = lambda r, h: GripProxy("cylinder", (r, r, h / 2))  # noqa: E731
    box = lambda x, y, z: GripProxy("box", (x / 2, y / 2, z / 2))  # noqa: E731
    return {
        "002_master_chef_can": (lambda: _cylinder(0.051, 0.140), (30, 70, 160), (200, 40, 40), (170, 170, 175), cyl(0.051, 0.140)),
        "003_cracker_box": (lambda: _box((0.060, 0.158, 0.210)), (200, 30, 30), (240, 220, 60), (200, 30, 30), box(0.060, 0.158, 0.210)),
        "004_sugar_box": (lambda: _box((0.038, 0.089, 0.175)), (240, 220, 90), (40, 120, 200), (240, 240, 230), box(0.038, 0.089, 0.175)),
        "005_tomato_soup_can": (lambda: _cylinder(0.033, 0.101), (210, 40, 35), (245, 245, 240), (175, 175, 180), cyl(0.033, 0.101)),
        "006_mustard_bottle": (lambda: _bottle(0.045, 0.190, 0.013, 0.030, 0.62), (240, 200, 30), (200, 40, 30), (240, 200, 30), GripProxy("box", (0.045, 0.028, 0.07))),
        "007_tuna_fish_can": (lambda: _cylinder(0.043, 0.033), (200, 200, 205), (40, 80, 160), (170, 170, 175), None),
        "008_pudding_box": (lambda: _box((0.110, 0.089, 0.035)), (120, 70, 40), (240, 240, 230), (120, 70, 40), None),
        "009_gelatin_box": (lambda: _box((0.085, 0.073, 0.028)), (200, 40, 70), (240, 240, 230), (200, 40, 70), None),
        "010_potted_meat_can": (lambda: _box((0.050, 0.097, 0.082)), (40, 70, 150), (240, 200, 40), (170, 170, 175), box(0.050, 0.097, 0.082)),
        "011_banana": (_banana, (235, 205, 60), (120, 100, 40), (235, 205, 60), None),
        "019_pitcher_base": (lambda: _bottle(0.054, 0.235, 0.045, 0.005, 1.0), (40, 110, 190), (40, 110, 190), (30, 90, 160), None),
        "021_bleach_cleanser": (lambda: _bottle(0.049, 0.250, 0.014, 0.040, 0.66), (245, 245, 245), (30, 90, 200), (30, 90, 200), GripProxy("box", (0.049, 0.032, 0.08))),
        "024_bowl": (_bowl, (190, 60, 50), (190, 60, 50), (190, 60, 50), None),
        "025_mug": (_mug, (200, 50, 40), (230, 230, 230), (200, 50, 40), cyl(0.040, 0.082)),
        "035_power_drill": (_drill, (40, 150, 160), (30, 30, 30), (40, 40, 40), None),
        "036_wood_block": (lambda: _box((0.085, 0.085, 0.200)), (200, 160, 100), (170, 130, 80), (200, 160, 100), box(0.085, 0.085, 0.200)),
        "037_scissors": (_scissors, (40, 40, 45), (30, 90, 180), (40, 40, 45), None),
        "040_large_marker": (_marker, (30, 30, 30), (240, 240, 240), (30, 30, 30), None),
        "051_large_clamp": (lambda: _clamp(1.0), (230, 140, 30), (30, 30, 30), (230, 140, 30), None),
        "052_extra_large_clamp": (lambda: _clamp(1.35), (230, 140, 30), (30, 30, 30), (230, 140, 30), None),
        "061_foam_brick": (lambda: _box((0.075, 0.050, 0.050)), (200, 40, 40), (180, 30, 30), (200, 40, 40), None),
    }  # fmt: skip


# --- textures -----------------------------------------------------------------------------------


def _make_texture(ycb_id: int, base_rgb, label_rgb, cap_rgb) -> np.ndarray:
    """A printed-package look: base colour, a label band with 'text' stripes, cap rows at top and bottom.

    Deterministic in the object id (its own generator), so every dataset writes the same texture.
    """
    rng = np.random.default_rng(1000 + ycb_id)
    size = TEXTURE_SIZE_PX
    tex = np.empty((size, size, 3), dtype=np.float32)
    tex[:] = np.asarray(base_rgb, dtype=np.float32)
    # label band in the middle third with darker "text" dashes
    band_lo, band_hi = int(size * 0.35), int(size * 0.68)
    tex[band_lo:band_hi] = np.asarray(label_rgb, dtype=np.float32)
    text_rgb = np.asarray(base_rgb, dtype=np.float32) * 0.35
    for _ in range(14):
        row = int(rng.integers(band_lo + 4, band_hi - 8))
        col = int(rng.integers(0, size - 40))
        cv2.rectangle(tex, (col, row), (col + int(rng.integers(12, 40)), row + int(rng.integers(2, 6))), text_rgb.tolist(), -1)
    # a logo disc and a thin stripe so rotation about the axis is visible
    centre = (int(rng.integers(30, size - 30)), int(size * 0.22))
    cv2.circle(tex, centre, int(size * 0.08), (np.asarray(label_rgb, np.float32) * 0.8).tolist(), -1)
    tex[int(size * 0.80) : int(size * 0.83)] = np.asarray(label_rgb, dtype=np.float32)
    # low-frequency print/wear variation
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 6)
    tex *= (1.0 + 0.08 * noise / (np.abs(noise).max() + 1e-6))[..., None]
    # cap rows (v near 0 and 1; image row 0 is v = 1)
    cap_rows = max(2, int(size * 0.04))
    tex[:cap_rows] = np.asarray(cap_rgb, dtype=np.float32)
    tex[-cap_rows:] = np.asarray(cap_rgb, dtype=np.float32)
    return np.clip(tex, 0, 255).astype(np.uint8)


def _corner_uvs(mesh: trimesh.Trimesh) -> np.ndarray:
    """Cylindrical texture coordinates per face corner; caps map to the reserved cap rows.

    The seam (u wrapping from 1 to 0) is fixed per face by shifting the small u values by 1; the
    texture sampler repeats, so u slightly above 1 reads the start of the texture.
    """
    corners = mesh.vertices[mesh.faces]  # (F, 3, 3)
    z_min, z_max = mesh.bounds[0, 2], mesh.bounds[1, 2]
    u = (np.arctan2(corners[..., 1], corners[..., 0]) / (2 * np.pi)) + 0.5
    spread = u.max(axis=1) - u.min(axis=1)
    wrap = spread > 0.5
    u[wrap] = np.where(u[wrap] < 0.5, u[wrap] + 1.0, u[wrap])
    v = SIDE_V_MIN + (corners[..., 2] - z_min) / max(z_max - z_min, 1e-9) * (SIDE_V_MAX - SIDE_V_MIN)
    normal_z = mesh.face_normals[:, 2]
    v[normal_z > 0.9] = CAP_V_TOP
    v[normal_z < -0.9] = CAP_V_BOTTOM
    return np.stack([u, v], axis=-1).astype(np.float32)


# --- building and writing -----------------------------------------------------------------------


def build_ycb_object(name: str) -> YCBObject:
    """Build the procedural stand-in of one YCB object.

    Args:
        name: a DexYCB object name, e.g. "025_mug".

    Returns:
        The object with its mesh (object frame, metres, centred on its bounding box), texture and grip proxy.

    Raises:
        ValueError: when the name is not one of the 21 DexYCB objects.
    """
    ycb_id = ycb_id_from_name(name)
    builder, base_rgb, label_rgb, cap_rgb, grip = _object_table()[name]
    mesh = builder()
    shift_m = -mesh.bounds.mean(axis=0)
    mesh.apply_translation(shift_m)
    mesh.fix_normals()
    if grip is not None:  # the proxy was built around the builder's origin (e.g. the mug body, not its handle)
        grip = GripProxy(grip.kind, grip.half_extents_m, tuple(float(c) for c in shift_m))
    return YCBObject(
        ycb_id=ycb_id,
        name=name,
        mesh=mesh,
        uv_per_corner=_corner_uvs(mesh),
        texture_rgb=_make_texture(ycb_id, base_rgb, label_rgb, cap_rgb),
        grip=grip if grip is not None else GripProxy("box", tuple(float(e) / 2 for e in mesh.extents)),
        is_graspable_side=grip is not None,
        resting_height_m=float(-mesh.bounds[0, 2]),
    )


def write_ycb_object(obj: YCBObject, models_dir: Path) -> Path:
    """Write `<models_dir>/<name>/textured_simple.obj` (+ .mtl and texture_map.png) as YCB lays it out.

    Args:
        obj: the object to write.
        models_dir: the dataset's `models/` folder.

    Returns:
        Path of the written OBJ file.
    """
    out_dir = Path(models_dir) / obj.name
    out_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_dir / TEXTURE_FILE_NAME), cv2.cvtColor(obj.texture_rgb, cv2.COLOR_RGB2BGR))
    (out_dir / MTL_FILE_NAME).write_text(
        "newmtl material_0\nKa 0.2 0.2 0.2\nKd 1.0 1.0 1.0\nKs 0.1 0.1 0.1\nNs 20\nd 1.0\n"
        f"map_Kd {TEXTURE_FILE_NAME}\n"
    )
    lines = [f"mtllib {MTL_FILE_NAME}", f"o {obj.name}"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in obj.mesh.vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in obj.uv_per_corner.reshape(-1, 2)]
    lines += [f"vn {x:.6f} {y:.6f} {z:.6f}" for x, y, z in obj.mesh.vertex_normals]
    lines.append("usemtl material_0")
    for face_idx, (a, b, c) in enumerate(obj.mesh.faces):
        t = 3 * face_idx
        lines.append(f"f {a + 1}/{t + 1}/{a + 1} {b + 1}/{t + 2}/{b + 1} {c + 1}/{t + 3}/{c + 1}")
    path = out_dir / MESH_FILE_NAME
    write_file_atomic(path, ("\n".join(lines) + "\n").encode())
    return path


def write_ycb_points(obj: YCBObject, models_dir: Path, num_points: int = NUM_MODEL_POINTS) -> Path:
    """Write `<models_dir>/<name>/points.xyz`: points sampled on the object's surface, object frame.

    The sample is seeded by the object's name, so the same object always gets the same points.

    Args:
        obj: the object.
        models_dir: the dataset's `models/` folder.
        num_points: how many points.

    Returns:
        Path of the written file.
    """
    seed = int.from_bytes(obj.name.encode()[:8].ljust(8, b"\0"), "little")
    points, _ = trimesh.sample.sample_surface(obj.mesh, num_points, seed=seed)
    out_dir = Path(models_dir) / obj.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / POINTS_FILE_NAME
    write_file_atomic(path, ("\n".join(f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in points) + "\n").encode())
    return path
