"""Object switcher: grasp confidence from the object's RoI features (UniHOPE)."""

from __future__ import annotations

import torch
from torch import nn

NUM_GRASP_CLASSES = 2  # 0 hand-only (no grasp), 1 hand-object (grasping)


class ObjectSwitcher(nn.Module):
    """conv1x1 C->64, flatten, linear -> 1024 -> 2 (UniHOPE's switcher on the object features).

    Args:
        in_channels: channels of the object RoI features (256 upstream).
        roi_size: R of the (R, R) RoI grid.
        reduced_channels: output channels of the 1x1 convolution (64 upstream).
        hidden: width of the hidden linear layer (1024 upstream).
    """

    def __init__(self, in_channels: int, roi_size: int, reduced_channels: int = 64, hidden: int = 1024) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, reduced_channels, 1), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(reduced_channels * roi_size * roi_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, NUM_GRASP_CLASSES),
        )

    def forward(self, object_features: torch.Tensor) -> torch.Tensor:
        """Args: object_features (B, C, R, R). Returns: grasp logits (B, 2); softmax[:, 1] is s."""
        return self.mlp(self.reduce(object_features))
