"""Hand decoder (heatmaps + MANO mean/log-variance) and object decoder (21 keypoint votes + confidences)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unihope.model.backbone import make_norm

NUM_JOINTS = 21
NUM_OBJECT_KEYPOINTS = 21  # centre, 8 box corners, 12 edge midpoints
NUM_MANO_POSE = 48  # axis-angle: 3 global orientation + 45 finger joints
NUM_MANO_BETAS = 10
NUM_MANO_PARAMS = NUM_MANO_POSE + NUM_MANO_BETAS
NUM_OBJECT_CONV_LAYERS = 6  # HFL-Net / Liu et al. object decoder depth
OUTPUT_INIT_STD = 1e-3  # last MANO layer starts near the flat hand so early losses stay sane
LOGVAR_RANGE = (-12.0, 4.0)  # clamp of predicted log-variances (numerical safety for the KL)


def _conv_block(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        make_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (strided) shortcut."""

    def __init__(self, channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(channels, channels, stride, norm),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            make_norm(norm, channels),
        )
        self.shortcut = nn.Identity() if stride == 1 else nn.AvgPool2d(stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class HandDecoder(nn.Module):
    """Hourglass -> 2D heatmaps, fused back; residual blocks -> flatten -> MLP -> MANO mean and log-variance.

    Predicting a Gaussian (mean, log-variance) per MANO parameter is what UniHOPE's output-level
    enhancement compares (KL between the occluded and de-occluded predictions).

    Args:
        channels: C of the input RoI features.
        roi_size: R (>= 4, a multiple of 4).
        hidden: widths of the MANO MLP ((1024, 512) upstream).
        num_res_blocks: residual blocks after the fusion (4 upstream); the first two halve the grid.
        norm: "batch" or "group".
    """

    def __init__(
        self, channels: int, roi_size: int, hidden: tuple[int, ...] = (1024, 512), num_res_blocks: int = 4, norm: str = "batch"
    ) -> None:
        super().__init__()
        if roi_size < 4 or roi_size % 4:
            raise ValueError(f"roi_size must be a multiple of 4 and >= 4, got {roi_size}")
        self.down = _conv_block(channels, channels, 2, norm)
        self.skip = _conv_block(channels, channels, 1, norm)
        self.up = _conv_block(channels, channels, 1, norm)
        self.heatmap = nn.Conv2d(channels, NUM_JOINTS, 1)
        self.merge_features = nn.Conv2d(channels, channels, 1)
        self.merge_heatmaps = nn.Conv2d(NUM_JOINTS, channels, 1)
        self.blocks = nn.Sequential(
            *[ResidualBlock(channels, 2 if i < 2 else 1, norm) for i in range(num_res_blocks)]
        )
        reduced = roi_size // (2 ** min(2, num_res_blocks))
        layers: list[nn.Module] = [nn.Flatten()]
        width = channels * reduced * reduced
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.encoding_width = width
        self.mean = nn.Linear(width, NUM_MANO_PARAMS)
        self.logvar = nn.Linear(width, NUM_MANO_PARAMS)
        for head in (self.mean, self.logvar):
            nn.init.normal_(head.weight, std=OUTPUT_INIT_STD)
            nn.init.zeros_(head.bias)

    def forward(self, hand_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: F_he (B, C, R, R).

        Returns: heatmaps (B, 21, R, R), MANO mean (B, 58), log-variance (B, 58), and the hand encoding
        (B, hidden[-1]) the MANO head reads (what UniHOPE's output-level enhancement compares).
        """
        coarse = self.down(hand_features)
        up = F.interpolate(coarse, size=hand_features.shape[-2:], mode="nearest")
        features = self.up(up + self.skip(hand_features))
        heatmaps = self.heatmap(features)
        fused = hand_features + self.merge_features(features) + self.merge_heatmaps(heatmaps)
        hidden = self.mlp(self.blocks(fused))
        logvar = self.logvar(hidden).clamp(*LOGVAR_RANGE)
        return heatmaps, self.mean(hidden), logvar, hidden


class ObjectDecoder(nn.Module):
    """Six convolutions -> per-cell 2D offsets to each of the 21 keypoints plus a confidence (Liu et al. / HFL-Net).

    Coordinates are box-normalised: 0..1 across the object RoI, bin i's centre at (i + 0.5) / R.
    A keypoint is the confidence-softmax-weighted mean of the per-cell votes (cell centre + offset).
    """

    def __init__(self, channels: int, roi_size: int, norm: str = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_block(channels, channels, 1, norm) for _ in range(NUM_OBJECT_CONV_LAYERS - 1)]
        layers.append(nn.Conv2d(channels, 3 * NUM_OBJECT_KEYPOINTS, 1))
        self.net = nn.Sequential(*layers)
        centres = (torch.arange(roi_size, dtype=torch.float32) + 0.5) / roi_size
        grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("cell_centres", torch.stack([grid_x, grid_y], dim=-1), persistent=False)  # (R, R, 2)

    def forward(self, object_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: F_oe (B, C, R, R).

        Returns:
            keypoints (B, 21, 2) box-normalised, votes (B, 21, R, R, 2) box-normalised,
            confidence logits (B, 21, R, R).
        """
        batch, _, size, _ = object_features.shape
        out = self.net(object_features)
        offsets = out[:, : 2 * NUM_OBJECT_KEYPOINTS].reshape(batch, NUM_OBJECT_KEYPOINTS, 2, size, size)
        votes = self.cell_centres + offsets.permute(0, 1, 3, 4, 2)
        conf_logits = out[:, 2 * NUM_OBJECT_KEYPOINTS :]
        weights = torch.softmax(conf_logits.flatten(2), dim=-1).reshape(batch, NUM_OBJECT_KEYPOINTS, size, size, 1)
        keypoints = (weights * votes).sum(dim=(2, 3))
        return keypoints, votes, conf_logits


def heatmap_argmax_box(heatmaps: torch.Tensor) -> torch.Tensor:
    """Soft-argmax of (B, J, R, R) heatmaps to box-normalised (B, J, 2) coordinates (bin centres at (i+.5)/R)."""
    batch, joints, size, _ = heatmaps.shape
    probs = torch.softmax(heatmaps.flatten(2) * size, dim=-1).reshape(batch, joints, size, size)
    centres = (torch.arange(size, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5) / size
    u = (probs.sum(dim=2) * centres).sum(-1)
    v = (probs.sum(dim=3) * centres).sum(-1)
    return torch.stack([u, v], dim=-1)
