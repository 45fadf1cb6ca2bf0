"""Feature pyramid (top-down path) that merges stages 1-4 of one stream into its stride-4 map P2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """FPN over (C1, C2, C3, C4) returning only the finest level P2 (stride 4), as HFL-Net uses it."""

    def __init__(self, in_channels: tuple[int, int, int, int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.smooth = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_channels = out_channels

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Args: features (C1..C4), finest first. Returns: P2 (B, out_channels, H/4, W/4)."""
        if len(features) != len(self.lateral):
            raise ValueError(f"FPN expects {len(self.lateral)} feature maps, got {len(features)}")
        top = self.lateral[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral[level](features[level])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return self.smooth(top)
