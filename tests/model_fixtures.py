"""Small builders for the model and training tests: a stand-in hand layer and an in-memory paired dataset.

The in-memory dataset yields exactly the keys of `unihope.storage.paired.PairedDataset` samples. Its images
are rendered so that the labels are learnable: a bright disc per hand joint (their layout follows
the pose), an object square whose presence follows the grasp label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

NUM_VERTS = 778
NUM_JOINTS = 21


@dataclass(frozen=True)
class FakeHandOutput:
    vertices: torch.Tensor  # (B, 778, 3)
    joints: torch.Tensor  # (B, 21, 3)


def _rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    angle = axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    axis = axis_angle / angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*x.shape, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype).expand_as(skew)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return eye + s * skew + (1 - c) * (skew @ skew)


class FakeHandLayer(nn.Module):
    """A differentiable MANO stand-in: template + linear pose/shape blend, rotated by global_orient.

    Used only by unit tests of `unihope.model` (the model takes any hand layer); training tests
    use the project's real `unihope.hand.HandLayer`.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("template", torch.randn(NUM_VERTS, 3, generator=gen) * 0.03)
        self.register_buffer("pose_dirs", torch.randn(45, NUM_VERTS * 3, generator=gen) * 2e-3)
        self.register_buffer("shape_dirs", torch.randn(10, NUM_VERTS * 3, generator=gen) * 1e-3)
        # Each joint averages its own 5 vertices, so joints spread like the template (a few cm).
        regressor = torch.zeros(NUM_JOINTS, NUM_VERTS)
        for joint in range(NUM_JOINTS):
            regressor[joint, joint * 37 : joint * 37 + 5] = 0.2
        self.register_buffer("regressor", regressor)
        self.faces = np.zeros((1538, 3), dtype=np.int64)

    def forward(self, global_orient, hand_pose, betas, transl) -> FakeHandOutput:
        batch = hand_pose.shape[0]
        verts = self.template + (hand_pose @ self.pose_dirs + betas @ self.shape_dirs).reshape(batch, NUM_VERTS, 3)
        verts = verts @ _rodrigues(global_orient).transpose(1, 2) + transl[:, None]
        return FakeHandOutput(vertices=verts, joints=torch.einsum("jv,bvc->bjc", self.regressor, verts))


def tiny_spec(**overrides):
    """A model spec small enough for a CPU unit test (32-64 px inputs)."""
    from unihope.model.model import ModelSpec

    values = dict(
        depth=18, width_multiplier=0.125, norm="group", fpn_channels=16, roi_size=8, num_heads=4,
        mano_hidden=(64, 32), num_hand_res_blocks=2, switcher_channels=8, switcher_hidden=32,
    )
    values.update(overrides)
    return ModelSpec(**values)


class InMemoryPairedDataset(torch.utils.data.Dataset):
    """Samples with exactly the keys of `unihope.storage.paired.PairedDataset`, generated from a seed.

    Hand joints are a random 3D pose around a fixed wrist; the image shows each joint's projection
    as a disc whose brightness encodes its depth; grasping samples also show an object square
    (which occludes part of the hand) and have a de-occluded twin without it.

    Args:
        num_samples: dataset length.
        size_px: crop side S.
        seed: generator seed.
        left_fraction: share of left-hand samples.
    """

    def __init__(self, num_samples: int = 16, size_px: int = 32, seed: int = 0, left_fraction: float = 0.25,
                 hand_layer: nn.Module | None = None) -> None:
        self.size_px = size_px
        rng = np.random.default_rng(seed)
        layer = hand_layer or FakeHandLayer()
        self.samples = []
        for index in range(num_samples):
            self.samples.append(self._make(index, rng, layer, left_fraction))

    def _make(self, index, rng, layer, left_fraction):
        size = self.size_px
        f = 1.2 * size
        K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]], dtype=np.float32)
        pose = np.zeros(48, dtype=np.float32)
        pose[:3] = rng.normal(0, 0.3, 3)
        pose[3:] = rng.normal(0, 0.4, 45)
        betas = rng.normal(0, 0.5, 10).astype(np.float32)
        trans = np.array([0.0, 0.0, 0.5], dtype=np.float32) + rng.normal(0, 0.01, 3).astype(np.float32)
        with torch.no_grad():
            out = layer(global_orient=torch.from_numpy(pose[None, :3]), hand_pose=torch.from_numpy(pose[None, 3:]),
                        betas=torch.from_numpy(betas[None]), transl=torch.from_numpy(trans[None]))
        joints = out.joints[0].numpy().astype(np.float32)
        uvw = joints @ K.T
        joints_2d = (uvw[:, :2] / uvw[:, 2:]).astype(np.float32)
        grasp = int(rng.random() < 0.5)
        ys, xs = np.mgrid[0:size, 0:size]
        image = np.full((3, size, size), 0.2, dtype=np.float32)
        mask_hand = np.zeros((size, size), dtype=np.float32)
        for j, (u, v) in enumerate(joints_2d):
            disc = (xs - u) ** 2 + (ys - v) ** 2 <= (size / 24) ** 2 + 1
            image[0][disc] = np.clip(0.5 + (joints[j, 2] - trans[2]) * 5, 0, 1)
            image[1][disc] = j / 20
            mask_hand[disc] = 1
        hx0, hy0 = joints_2d.min(0) - 2
        hx1, hy1 = joints_2d.max(0) + 2
        ocx, ocy = joints_2d[9] + rng.normal(0, size / 16, 2)
        half = size / 6
        obox = np.array([ocx - half, ocy - half, ocx + half, ocy + half], dtype=np.float32)
        mask_object = np.zeros((size, size), dtype=np.float32)
        deoccluded = image.copy()
        if grasp:
            inside = (xs >= obox[0]) & (xs <= obox[2]) & (ys >= obox[1]) & (ys <= obox[3])
            image[:, inside] = np.array([0.1, 0.1, 0.9], dtype=np.float32)[:, None]
            mask_object[inside] = 1
        steps = np.linspace(-half, half, 5)
        obj_kp = np.array([[ocx + dx, ocy + dy] for dy in steps for dx in steps], dtype=np.float32)[:21]
        side = int(rng.random() < left_fraction)
        visible = float(1 - (mask_hand * mask_object).sum() / max(mask_hand.sum(), 1))
        obj_pose = np.concatenate([np.eye(3), np.array([[ocx / f], [ocy / f], [0.5]])], axis=1).astype(np.float32)
        return {
            "image": torch.from_numpy(image),
            "image_deoccluded": torch.from_numpy(deoccluded),
            "has_pair": bool(grasp),
            "mask_hand": torch.from_numpy(mask_hand),
            "mask_object": torch.from_numpy(mask_object),
            "joints_2d": torch.from_numpy(joints_2d),
            "joints_3d": torch.from_numpy(joints),
            "mano_pose": torch.from_numpy(pose),
            "mano_betas": torch.from_numpy(betas),
            "mano_trans": torch.from_numpy(trans),
            "hand_side": side,
            "grasp": torch.tensor(grasp, dtype=torch.long),
            "object_keypoints_2d": torch.from_numpy(obj_kp),
            "object_pose": torch.from_numpy(obj_pose),
            "object_id": 3,
            "K": torch.from_numpy(K),
            "visibility": visible,
            "hand_box_xyxy": torch.tensor([hx0, hy0, hx1, hy1], dtype=torch.float32),
            "object_box_xyxy": torch.from_numpy(obox),
            "sample_key": f"mem/{index:04d}",
            "index": index,
        }

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]
