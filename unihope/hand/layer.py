"""MANO hand layer (smplx) returning vertices and DexYCB-ordered joints (the numpy pose helpers: `mano_arrays`)."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import smplx
import torch

from unihope.hand.assets import resolve_mano_path
from unihope.hand.constants import (
    DEFAULT_TIP_CONVENTION,
    FINGER_NAMES,
    MANO_TO_DEXYCB_JOINTS,
    NUM_BETAS,
    NUM_HAND_POSE_DIMS,
    SIDES,
    TIP_CONVENTIONS,
    TIP_VERTEX_IDS,
    tip_vertex_ids,
)
from unihope.hand.mano_arrays import axis_angle_to_pca, load_mano_arrays, pca_to_axis_angle, vertex_finger_labels

LOGGER = logging.getLogger(__name__)
SMPLX_TEN_BETAS_NOTICE = "with only 10 shape coefficients"  # smplx's print for every MANO model

__all__ = [
    "FINGER_NAMES",
    "MANO_TO_DEXYCB_JOINTS",
    "TIP_CONVENTIONS",
    "TIP_VERTEX_IDS",
    "HandLayer",
    "HandOutput",
    "axis_angle_to_pca",
    "load_mano_arrays",
    "pca_to_axis_angle",
    "vertex_finger_labels",
]

NUM_MANO_POSE_DIMS = 3 + NUM_HAND_POSE_DIMS  # global orient + hand pose, axis-angle radians


@dataclass(frozen=True, slots=True)
class HandOutput:
    """Posed hand in the frame of global_orient/transl (metres)."""

    vertices: torch.Tensor  # (B, 778, 3) float32
    joints: torch.Tensor  # (B, 21, 3) float32, DexYCB order (0 wrist, 1-4 thumb MCP..tip, ...)


class HandLayer(torch.nn.Module):
    """smplx MANO (full 45-d axis-angle pose, flat hand mean) returning DexYCB-ordered joints.

    The five fingertip joints are vertices, and which vertices depends on the dataset's convention
    (`TIP_CONVENTIONS`): build the layer with the convention of the data it is compared against
    (a source's `tip_convention`, a dataset's recorded one). The default is manopth's, DexYCB's.
    """

    def __init__(
        self, side: str = "right", model_path: Path | None = None, tip_convention: str = DEFAULT_TIP_CONVENTION
    ) -> None:
        """Builds the layer.

        Args:
            side: "right" or "left".
            model_path: a MANO_RIGHT.pkl / MANO_LEFT.pkl file; None -> resolve_mano_path(side)
                (the cached procedural hand).
            tip_convention: whose fingertip vertex ids give joints 4, 8, 12, 16, 20: "manopth"
                (DexYCB, the default), "ho3d" or "smplx".

        Raises:
            ValueError: if side or tip_convention is unknown or model_path does not exist.
        """
        super().__init__()
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        tip_ids = tip_vertex_ids(tip_convention, side)
        path = Path(model_path) if model_path is not None else resolve_mano_path(side)
        if not path.is_file():
            raise ValueError(f"MANO model file {path} does not exist")
        self.side = side
        self.model_path = path
        self.tip_convention = tip_convention
        # smplx takes the side from a file name containing RIGHT; is_rhand matters for folders only.
        # smplx print()s "WARNING: You are using a MANO model, with only 10 shape coefficients." for every
        # MANO file (MANO has 10 by design): caught and sent to logging, so it neither repeats per layer on
        # the console nor tears a progress display
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self.mano = smplx.MANO(
                model_path=str(path), is_rhand=side == "right", use_pca=False, flat_hand_mean=True,
                num_pca_comps=NUM_HAND_POSE_DIMS, batch_size=1,
            )
        for line in filter(None, (text.strip() for text in printed.getvalue().splitlines())):
            LOGGER.log(logging.DEBUG if SMPLX_TEN_BETAS_NOTICE in line else logging.INFO, "smplx: %s", line)
        self.register_buffer("tip_vertex_idx", torch.tensor(tip_ids, dtype=torch.long))
        self.register_buffer("dexycb_order", torch.tensor(MANO_TO_DEXYCB_JOINTS, dtype=torch.long))

    @property
    def faces(self) -> np.ndarray:
        """(1538, 3) int64 triangle vertex indices (outward winding)."""
        return np.asarray(self.mano.faces, dtype=np.int64)

    def forward(
        self, global_orient: torch.Tensor, hand_pose: torch.Tensor, betas: torch.Tensor, transl: torch.Tensor
    ) -> HandOutput:
        """Poses the hand.

        Args:
            global_orient: (B, 3) wrist rotation, axis-angle radians.
            hand_pose: (B, 45) absolute finger pose (flat hand = zeros), axis-angle radians.
            betas: (B, 10) shape coefficients.
            transl: (B, 3) translation, metres.

        Returns:
            HandOutput with vertices (B, 778, 3) and joints (B, 21, 3) in DexYCB order, metres.

        Raises:
            ValueError: on shape mismatches.
        """
        batch = global_orient.shape[0] if global_orient.ndim == 2 else -1
        expected = {"global_orient": 3, "hand_pose": NUM_HAND_POSE_DIMS, "betas": NUM_BETAS, "transl": 3}
        for name, tensor in zip(expected, (global_orient, hand_pose, betas, transl)):
            if tensor.ndim != 2 or tensor.shape != (batch, expected[name]):
                batch_text = batch if batch > 0 else "B"
                raise ValueError(f"{name} must be ({batch_text}, {expected[name]}), got {tuple(tensor.shape)}")
        output = self.mano(betas=betas, global_orient=global_orient, hand_pose=hand_pose, transl=transl)
        vertices = output.vertices
        joints_mano = torch.cat([output.joints, vertices[:, self.tip_vertex_idx]], dim=1)
        return HandOutput(vertices=vertices, joints=joints_mano[:, self.dexycb_order])

    def forward_numpy(
        self, mano_pose: np.ndarray, betas: np.ndarray, transl: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """numpy convenience wrapper (no gradients).

        Args:
            mano_pose: (N, 48) global orient (3) + absolute hand pose (45), axis-angle radians.
            betas: (N, 10) shape coefficients.
            transl: (N, 3) translation, metres.

        Returns:
            vertices (N, 778, 3) and joints (N, 21, 3, DexYCB order), float32 metres.

        Raises:
            ValueError: on shape mismatches.
        """
        pose = np.asarray(mano_pose, dtype=np.float32)
        if pose.ndim != 2 or pose.shape[1] != NUM_MANO_POSE_DIMS:
            raise ValueError(f"mano_pose must be (N, {NUM_MANO_POSE_DIMS}), got {pose.shape}")
        device = self.mano.v_template.device
        as_tensor = lambda arr: torch.as_tensor(np.asarray(arr, dtype=np.float32), device=device)  # noqa: E731
        with torch.no_grad():
            output = self.forward(as_tensor(pose[:, :3]), as_tensor(pose[:, 3:]), as_tensor(betas), as_tensor(transl))
        return output.vertices.cpu().numpy(), output.joints.cpu().numpy()
