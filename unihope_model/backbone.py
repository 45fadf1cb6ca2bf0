"""HFL-Net-style ResNet backbone: shared stem + stage 1, separate hand/object stages 2-3, shared stage 4."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
BASE_WIDTHS = (64, 128, 256, 512)  # channels of ResNet stages 1-4 before the block expansion
MIN_CHANNELS = 8  # narrowest stage a width multiplier may produce (GroupNorm needs a few channels)
MAX_NORM_GROUPS = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # input normalisation the ImageNet weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_norm(kind: str, num_channels: int) -> nn.Module:
    """BatchNorm (what ImageNet weights expect) or GroupNorm (stable for tiny CPU batches)."""
    if kind == "batch":
        return nn.BatchNorm2d(num_channels)
    if kind == "group":
        groups = MAX_NORM_GROUPS
        while num_channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, num_channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 convolutions with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), make_norm(norm, out_channels)
    )


def _make_stage(block: type[nn.Module], in_channels: int, channels: int, num_blocks: int, stride: int, norm: str):
    layers = [block(in_channels, channels, stride, norm)]
    for _ in range(num_blocks - 1):
        layers.append(block(channels * block.expansion, channels, 1, norm))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class BackboneFeatures:
    """Multi-scale features of both streams (strides relative to the input image)."""

    c1: torch.Tensor  # (B, C1, H/4, W/4), shared stage 1
    hand: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # stages 2, 3, 4 of the hand stream (strides 8, 16, 32)
    obj: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # stages 2, 3, 4 of the object stream


class HFLBackbone(nn.Module):
    """ResNet whose hand and object streams split after stage 1 and share stage 4 (HFL-Net).

    Unshared stages 2-3 let each stream treat only its own target as foreground; the shared stage 4
    puts both streams in one feature space so that hand and object features can be mixed later.
    Module names inside stages follow the usual ResNet state-dict names, so ImageNet weights load
    with a simple key mapping (`load_resnet_weights`).
    """

    def __init__(self, depth: int = 50, width_multiplier: float = 1.0, norm: str = "batch") -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"backbone depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
        kind, blocks = RESNET_BLOCKS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        widths = [max(MIN_CHANNELS, int(round(w * width_multiplier))) for w in BASE_WIDTHS]
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.norm = norm
        self.stage_channels = tuple(w * block.expansion for w in widths)  # outputs of stages 1-4

        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _make_stage(block, widths[0], widths[0], blocks[0], 1, norm)
        c1 = self.stage_channels[0]
        self.hand_layer2 = _make_stage(block, c1, widths[1], blocks[1], 2, norm)
        self.hand_layer3 = _make_stage(block, self.stage_channels[1], widths[2], blocks[2], 2, norm)
        self.obj_layer2 = _make_stage(block, c1, widths[1], blocks[1], 2, norm)
        self.obj_layer3 = _make_stage(block, self.stage_channels[1], widths[2], blocks[2], 2, norm)
        self.layer4 = _make_stage(block, self.stage_channels[2], widths[3], blocks[3], 2, norm)

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        """Args: images (B, 3, H, W) float in [0, 1] (normalised inside). Returns: BackboneFeatures."""
        x = (images - images.new_tensor(IMAGENET_MEAN)[:, None, None]) / images.new_tensor(IMAGENET_STD)[:, None, None]
        c1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        h2 = self.hand_layer2(c1)
        h3 = self.hand_layer3(h2)
        o2 = self.obj_layer2(c1)
        o3 = self.obj_layer3(o2)
        # Stage 4 is shared: run both streams as one batch.
        c4 = self.layer4(torch.cat([h3, o3], dim=0))
        h4, o4 = c4.chunk(2, dim=0)
        return BackboneFeatures(c1=c1, hand=(h2, h3, h4), obj=(o2, o3, o4))

    def load_resnet_weights(self, path: str | Path) -> list[str]:
        """Load ImageNet ResNet weights (safetensors or a torch state dict) into both streams.

        Stages 2-3 of the checkpoint initialise both the hand and the object stream, as in HFL-Net.

        Args:
            path: local file with a ResNet state dict (`conv1.weight`, `layer1.0.conv1.weight`, ...).

        Returns:
            Checkpoint keys that were not used (e.g. `fc.weight`).

        Raises:
            ValueError: when the file is missing, or a tensor's shape does not match this backbone
                (a width multiplier other than 1 or GroupNorm cannot take ImageNet weights).
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"backbone weights file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            source = load_file(str(path))
        else:
            source = torch.load(str(path), map_location="cpu", weights_only=True)
            source = source.get("state_dict", source)
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        unused = []
        for key, tensor in source.items():
            if key.startswith(("layer2.", "layer3.")):
                targets = ["hand_" + key, "obj_" + key]
            else:
                targets = [key]
            targets = [t for t in targets if t in own]
            if not targets:
                unused.append(key)
            for target in targets:
                if own[target].shape != tensor.shape:
                    raise ValueError(
                        f"{path}: {key} has shape {tuple(tensor.shape)} but the backbone expects "
                        f"{tuple(own[target].shape)}; ImageNet weights need width_multiplier=1 and norm='batch' "
                        f"and the same depth ({self.depth})"
                    )
                mapped[target] = tensor
        missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{path}: no weights for {len(missing)} backbone tensors, e.g. {missing[:3]}")
        self.load_state_dict(mapped, strict=False)
        return unused

