"""The MANO hand: procedural stand-in or official files, and a smplx layer with DexYCB joint order."""

from unihope.hand.assets import describe_hand_model, resolve_mano_path
from unihope.hand.constants import (
    DEFAULT_TIP_CONVENTION,
    FINGER_NAMES,
    MANO_FINGER_JOINTS,
    MANO_TO_DEXYCB_JOINTS,
    NUM_MANO_FACES,
    NUM_MANO_VERTICES,
    TIP_CONVENTIONS,
    TIP_VERTEX_IDS,
    tip_vertex_ids,
)
from unihope.hand.convert import convert_official_mano
from unihope.hand.mano_arrays import axis_angle_to_pca, load_mano_arrays, pca_to_axis_angle, vertex_finger_labels
from unihope.hand.preview import render_grasp_preview
from unihope.hand.mirror import mirror_mano
from unihope.hand.poses import curl_pose
from unihope.hand.procedural import PROCEDURAL_MODEL_VERSION, build_procedural_mano

__all__ = [
    "DEFAULT_TIP_CONVENTION",
    "FINGER_NAMES",
    "MANO_FINGER_JOINTS",
    "MANO_TO_DEXYCB_JOINTS",
    "NUM_MANO_FACES",
    "NUM_MANO_VERTICES",
    "PROCEDURAL_MODEL_VERSION",
    "TIP_CONVENTIONS",
    "TIP_VERTEX_IDS",
    "HandLayer",
    "HandOutput",
    "axis_angle_to_pca",
    "build_procedural_mano",
    "convert_official_mano",
    "curl_pose",
    "describe_hand_model",
    "load_mano_arrays",
    "mirror_mano",
    "pca_to_axis_angle",
    "render_grasp_preview",
    "resolve_mano_path",
    "tip_vertex_ids",
    "vertex_finger_labels",
]

# The torch layer is imported on first use: readers, listing and an unchanged rerun never need torch.
_LAZY_FROM_LAYER = ("HandLayer", "HandOutput")


def __getattr__(name: str):
    if name in _LAZY_FROM_LAYER:
        from unihope.hand import layer

        return getattr(layer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
