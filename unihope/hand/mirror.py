"""Mirroring between the right and the left hand (reflection x -> -x) of axis-angle poses and of points.

With M = diag(-1, 1, 1), a rotation R becomes M R M, whose axis-angle is (a0, -a1, -a2); a point
(x, y, z) becomes (-x, y, z). The one place these two rules live, for numpy arrays and torch tensors
alike (training mirrors left samples to the right-hand layer, the generator and the preview mirror
right-hand curl poses to the left hand, the procedural left model mirrors its PCA basis), and
`mirror_mano`, which applies them to a whole MANO model.
"""

from __future__ import annotations

from typing import Any

from unihope.hand.constants import AXIS_ANGLE_MIRROR_SIGNS

POINT_MIRROR_SIGNS = (-1.0, 1.0, 1.0)  # x -> -x


def _signs_like(values, signs: tuple[float, ...]):
    """`signs` as an array of `values`' kind (torch tensor on its device and dtype, else numpy)."""
    if type(values).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(signs, dtype=values.dtype, device=values.device)
    import numpy as np

    return np.asarray(signs, dtype=values.dtype if values.dtype.kind == "f" else np.float64)


def mirror_axis_angle(pose):
    """Mirror axis-angle triples: (..., 3 k) -> (..., 3 k) with (a0, a1, a2) -> (a0, -a1, -a2) per triple.

    Args:
        pose: numpy array or torch tensor whose last axis holds k axis-angle triples (radians), e.g.
            a (45,) hand pose, a (B, 48) MANO pose or a (45, 45) PCA basis (rows are poses).

    Returns:
        The mirrored pose, same shape and kind.

    Raises:
        ValueError: when the last axis is not a multiple of 3.
    """
    if pose.shape[-1] % 3:
        raise ValueError(f"axis-angle poses need a last axis of 3 k values, got shape {tuple(pose.shape)}")
    signs = _signs_like(pose, AXIS_ANGLE_MIRROR_SIGNS)
    return (pose.reshape(*pose.shape[:-1], -1, 3) * signs).reshape(pose.shape)


def mirror_points_x(points):
    """Mirror points across the x = 0 plane: (..., 3) -> (..., 3) with x negated (numpy or torch)."""
    if points.shape[-1] != 3:
        raise ValueError(f"points need a last axis of 3, got shape {tuple(points.shape)}")
    return points * _signs_like(points, POINT_MIRROR_SIGNS)


def mirror_mano(arrays: dict[str, Any]) -> dict[str, Any]:
    """Mirrors a MANO array dict across the x = 0 plane (right <-> left).

    Rule, with M = diag(-1, 1, 1): vertices, shape directions and pose-corrective offsets get x
    negated; faces reverse their winding; J_regressor, weights and kintree_table are unchanged (same
    vertex and joint numbering). A rotation R becomes M R M, so its (R - I) feature entry (r, s) changes
    sign when exactly one of r, s is 0: posedirs[v, c, 9 j + 3 r + s] is multiplied by
    M[c, c] M[r, r] M[s, s]. Axis-angle triples (hands_components rows, hands_mean) become
    (a0, -a1, -a2). Posing the mirrored model with the mirrored pose gives the mirrored vertices.

    Args:
        arrays: a MANO dict as unihope.hand.procedural.build_procedural_mano returns it (plain numpy / scipy arrays).

    Returns:
        A new dict with the mirrored arrays; other keys are copied unchanged.
    """
    import numpy as np

    sign_xyz = np.array(POINT_MIRROR_SIGNS)
    feature_sign = np.outer(sign_xyz, sign_xyz).ravel()  # (9,) sign of (R - I)[r, s] under M . M
    num_pose_joints = arrays["posedirs"].shape[-1] // 9
    posedirs_sign = sign_xyz[:, None] * np.tile(feature_sign, num_pose_joints)[None, :]
    mirrored = dict(arrays)
    mirrored["v_template"] = mirror_points_x(arrays["v_template"])
    mirrored["f"] = arrays["f"][:, ::-1].copy()
    mirrored["shapedirs"] = arrays["shapedirs"] * sign_xyz[None, :, None]
    mirrored["posedirs"] = arrays["posedirs"] * posedirs_sign[None]
    mirrored["hands_components"] = mirror_axis_angle(np.asarray(arrays["hands_components"]))
    mirrored["hands_mean"] = mirror_axis_angle(np.asarray(arrays["hands_mean"]))
    mirrored["hands_coeffs"] = mirror_axis_angle(np.array(arrays["hands_coeffs"]))
    return mirrored
