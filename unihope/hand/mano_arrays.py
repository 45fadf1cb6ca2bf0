"""MANO arrays and pose conversions in numpy: what readers and writers need without the torch layer.

Kept apart from `unihope.hand.layer` (smplx, torch) so that reading a dataset, listing frames or
an unchanged rerun never imports torch (~3 s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unihope.hand.constants import MANO_JOINT_FINGER_LABEL, NUM_HAND_POSE_DIMS, NUM_MANO_JOINTS
from unihope.hand.convert import load_mano_pickle


def load_mano_arrays(path: Path) -> dict[str, np.ndarray]:
    """Loads the arrays the pipeline needs from a MANO pickle (official or procedural, no chumpy).

    Args:
        path: a MANO_RIGHT.pkl / MANO_LEFT.pkl file.

    Returns:
        hands_components (45, 45), hands_mean (45,) radians, weights (778, 16), f (1538, 3) int64,
        v_template (778, 3) metres; float64 arrays.

    Raises:
        ValueError: if the file is not a MANO pickle.
    """
    raw = load_mano_pickle(Path(path))
    return {
        "hands_components": np.asarray(raw["hands_components"], dtype=np.float64),
        "hands_mean": np.asarray(raw["hands_mean"], dtype=np.float64).reshape(-1),
        "weights": np.asarray(raw["weights"], dtype=np.float64),
        "f": np.asarray(raw["f"], dtype=np.int64),
        "v_template": np.asarray(raw["v_template"], dtype=np.float64),
    }


def pca_to_axis_angle(pca_coeffs: np.ndarray, hands_components: np.ndarray, hands_mean: np.ndarray) -> np.ndarray:
    """Hand pose from MANO PCA coefficients, DexYCB convention (flat_hand_mean=False).

    axis_angle = hands_mean + pca_coeffs @ hands_components[:k]; the result is the absolute pose to
    feed a layer built with flat_hand_mean=True (such as HandLayer).

    Args:
        pca_coeffs: (N, k) PCA coefficients, 1 <= k <= 45.
        hands_components: (45, 45) MANO PCA basis (rows are components).
        hands_mean: (45,) MANO mean hand pose, radians.

    Returns:
        (N, 45) axis-angle hand pose, radians (float64).

    Raises:
        ValueError: on shape mismatches.
    """
    coeffs = np.asarray(pca_coeffs, dtype=np.float64)
    components = np.asarray(hands_components, dtype=np.float64)
    mean = np.asarray(hands_mean, dtype=np.float64).reshape(-1)
    if coeffs.ndim != 2 or not 1 <= coeffs.shape[1] <= components.shape[0]:
        raise ValueError(f"pca_coeffs must be (N, k) with 1 <= k <= {components.shape[0]}, got {coeffs.shape}")
    if components.shape[1] != NUM_HAND_POSE_DIMS or mean.shape != (NUM_HAND_POSE_DIMS,):
        raise ValueError(
            f"expected hands_components (k, 45) and hands_mean (45,), got {components.shape}, {mean.shape}"
        )
    return mean + coeffs @ components[: coeffs.shape[1]]


def axis_angle_to_pca(
    axis_angle: np.ndarray, hands_components: np.ndarray, hands_mean: np.ndarray, num_comps: int = 45
) -> np.ndarray:
    """Inverse of pca_to_axis_angle: least-squares PCA coefficients of an absolute hand pose.

    Args:
        axis_angle: (N, 45) absolute hand pose, radians.
        hands_components: (45, 45) MANO PCA basis.
        hands_mean: (45,) MANO mean hand pose, radians.
        num_comps: number of leading components to fit (exact round trip with 45).

    Returns:
        (N, num_comps) coefficients (float64).

    Raises:
        ValueError: on shape mismatches or num_comps outside [1, 45].
    """
    pose = np.asarray(axis_angle, dtype=np.float64)
    components = np.asarray(hands_components, dtype=np.float64)
    if pose.ndim != 2 or pose.shape[1] != NUM_HAND_POSE_DIMS:
        raise ValueError(f"axis_angle must be (N, 45), got {pose.shape}")
    if not 1 <= num_comps <= components.shape[0]:
        raise ValueError(f"num_comps must be in [1, {components.shape[0]}], got {num_comps}")
    centred = pose - np.asarray(hands_mean, dtype=np.float64).reshape(1, -1)
    coeffs, *_ = np.linalg.lstsq(components[:num_comps].T, centred.T, rcond=None)
    return coeffs.T


def vertex_finger_labels(weights: np.ndarray) -> np.ndarray:
    """Per-vertex digit label from the strongest skinning joint (works for the real MANO too).

    Args:
        weights: (778, 16) MANO skinning weights.

    Returns:
        (778,) int8: 0 palm/wrist, 1 thumb, 2 index, 3 middle, 4 ring, 5 little.

    Raises:
        ValueError: if weights is not (V, 16).
    """
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != NUM_MANO_JOINTS:
        raise ValueError(f"weights must be (V, {NUM_MANO_JOINTS}), got {weights.shape}")
    return np.asarray(MANO_JOINT_FINGER_LABEL, dtype=np.int8)[np.argmax(weights, axis=1)]
