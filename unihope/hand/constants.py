"""Fixed facts about the MANO hand layout shared by the procedural generator and the hand layer."""

from __future__ import annotations

NUM_MANO_VERTICES = 778
NUM_MANO_FACES = 1538
NUM_MANO_JOINTS = 16  # wrist + 15 finger joints
NUM_HAND_POSE_DIMS = 45  # 15 joints x 3 axis-angle values (radians)
NUM_BETAS = 10
NUM_WRIST_BOUNDARY_VERTICES = 16  # MANO's open wrist loop

SIDES = ("right", "left")

FINGER_NAMES = ("thumb", "index", "middle", "ring", "little")

# Fingertip vertex ids of the 21-joint hand, per convention and side, thumb..little (FINGER_NAMES order).
# The field uses three: manopth (dex-ycb-toolkit's MANO layer, hence DexYCB's joint_3d; its left hand
# takes 445 for the middle tip), the HO3D toolkit (its patched setup_mano.py, hence HO3D's
# handJoints3D) and smplx (smplx.vertex_ids.VERTEX_IDS["mano"]). On real MANO they lie a few mm apart;
# the procedural hand puts every one of them on its fingertip (unihope.hand.procedural).
TIP_CONVENTIONS: dict[str, dict[str, tuple[int, int, int, int, int]]] = {
    "manopth": {"right": (745, 317, 444, 556, 673), "left": (745, 317, 445, 556, 673)},
    "ho3d": {"right": (744, 333, 444, 555, 672), "left": (744, 333, 444, 555, 672)},
    "smplx": {"right": (744, 320, 443, 554, 671), "left": (744, 320, 443, 554, 671)},
}
# The convention HandLayer uses when none is named: DexYCB's (manopth), the project's primary dataset.
DEFAULT_TIP_CONVENTION = "manopth"

# smplx's fingertip ids by finger name (kept for callers that index vertices by finger; every
# convention's tip vertex lies on the same fingertip of the procedural hand).
TIP_VERTEX_IDS: dict[str, int] = dict(zip(FINGER_NAMES, TIP_CONVENTIONS["smplx"]["right"]))


def tip_vertex_ids(convention: str, side: str) -> tuple[int, int, int, int, int]:
    """Fingertip vertex ids (thumb..little) of a convention for one side.

    Raises:
        ValueError: for an unknown convention or side.
    """
    if convention not in TIP_CONVENTIONS:
        raise ValueError(f"unknown tip convention {convention!r}; valid: {', '.join(TIP_CONVENTIONS)}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return TIP_CONVENTIONS[convention][side]

# MANO joint order: 0 wrist, 1-3 index, 4-6 middle, 7-9 little, 10-12 ring, 13-15 thumb.
# Each finger's joints from the palm outwards (MCP, PIP, DIP; for the thumb CMC, MCP, IP).
MANO_FINGER_JOINTS: dict[str, tuple[int, int, int]] = {
    "thumb": (13, 14, 15),
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "ring": (10, 11, 12),
    "little": (7, 8, 9),
}

# Parent of each MANO joint (-1 for the wrist root).
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# Index into the 21 joints [16 MANO joints, then the 5 tip vertices in FINGER_NAMES order]
# that yields DexYCB's order: 0 wrist, 1-4 thumb (MCP, PIP, DIP, tip), 5-8 index, 9-12 middle,
# 13-16 ring, 17-20 little.
MANO_TO_DEXYCB_JOINTS: tuple[int, ...] = (
    0,
    13, 14, 15, 16,
    1, 2, 3, 17,
    4, 5, 6, 18,
    10, 11, 12, 19,
    7, 8, 9, 20,
)  # fmt: skip

# Label of every MANO joint for vertex_finger_labels: 0 palm/wrist, 1 thumb .. 5 little.
MANO_JOINT_FINGER_LABEL: tuple[int, ...] = (0, 2, 2, 2, 3, 3, 3, 5, 5, 5, 4, 4, 4, 1, 1, 1)

# Mirroring an axis-angle triple between the right and the left hand (reflection x -> -x):
# the rotation M R M (M = diag(-1, 1, 1)) has axis-angle (a0, -a1, -a2).
AXIS_ANGLE_MIRROR_SIGNS = (1.0, -1.0, -1.0)
