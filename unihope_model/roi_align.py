"""RoIAlign with plain torch ops: bilinear sampling through `grid_sample`, then average pooling per bin.

Also the one box convention shared by the model's decoding and the losses' targets (`roi_boxes`,
`box_to_roi_px`, `roi_px_to_box`) and UniHOPE's RoI boxes from 2D points (`points_box_xyxy`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HAND_ROI_BOX_SCALE = 1.1  # UniHOPE / HFL-Net: hand RoI = the 2D joints' box x1.1
OBJECT_ROI_BOX_SCALE = 1.0  # object RoI = the 21 projected box keypoints' box x1.0
MIN_BOX_SIDE_PX = 1.0  # degenerate boxes are widened to this side


def roi_align(
    features: torch.Tensor,
    boxes_xyxy_px: torch.Tensor,
    output_size: int,
    stride_px: float,
    sampling_ratio: int = 2,
) -> torch.Tensor:
    """Crop one box per image from a feature map into an `output_size` x `output_size` grid.

    Pixel convention: image coordinates put (0, 0) at the centre of the top-left pixel (the
    project's schema convention). A feature cell j of a stride-s map covers image pixels
    [j*s, (j+1)*s), so its centre sits at image coordinate j*s + (s-1)/2; equivalently, image
    coordinate x maps to feature coordinate (x + 0.5) / s - 0.5. Bin (i, k) averages
    `sampling_ratio`^2 bilinear samples spread evenly inside the bin (as Mask R-CNN's aligned
    RoIAlign). Samples outside the map take the nearest border value.

    Args:
        features: (B, C, H, W) float feature map.
        boxes_xyxy_px: (B, 4) float boxes (x0, y0, x1, y1) in input-image px, one per image.
        output_size: R, bins per side.
        stride_px: input pixels per feature cell (4 for FPN P2).
        sampling_ratio: samples per bin side (>= 1).

    Returns:
        (B, C, R, R) pooled features; differentiable w.r.t. `features` (and the boxes).

    Raises:
        ValueError: on mismatched batch sizes or non-positive sizes.
    """
    # 1. Check inputs
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if boxes_xyxy_px.shape != (features.shape[0], 4):
        raise ValueError(f"boxes must be (B, 4) with B={features.shape[0]}, got {tuple(boxes_xyxy_px.shape)}")
    if output_size < 1 or sampling_ratio < 1 or stride_px <= 0:
        raise ValueError(f"need output_size >= 1, sampling_ratio >= 1, stride_px > 0; got "
                         f"{output_size}, {sampling_ratio}, {stride_px}")
    batch, _, height, width = features.shape
    boxes = boxes_xyxy_px.to(features.dtype)

    # 2. Sample positions in feature coordinates: bin i, sub-sample k at (i + (k + 0.5) / n) / R of the box
    boxes_feat = (boxes + 0.5) / stride_px - 0.5
    num_samples = output_size * sampling_ratio
    frac = (torch.arange(num_samples, dtype=features.dtype, device=features.device) + 0.5) / num_samples
    xs = boxes_feat[:, 0:1] + frac[None] * (boxes_feat[:, 2:3] - boxes_feat[:, 0:1])  # (B, N)
    ys = boxes_feat[:, 1:2] + frac[None] * (boxes_feat[:, 3:4] - boxes_feat[:, 1:2])

    # 3. Normalise for grid_sample (align_corners=True: -1 and 1 are the centres of the edge cells)
    xs_norm = 2.0 * xs / max(width - 1, 1) - 1.0
    ys_norm = 2.0 * ys / max(height - 1, 1) - 1.0
    grid = torch.stack(
        [xs_norm[:, None, :].expand(batch, num_samples, num_samples), ys_norm[:, :, None].expand(batch, num_samples, num_samples)],
        dim=-1,
    )
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)

    # 4. Average the samples inside each bin
    if sampling_ratio == 1:
        return sampled
    return F.avg_pool2d(sampled, kernel_size=sampling_ratio, stride=sampling_ratio)


def box_to_roi_px(boxes_xyxy_px: torch.Tensor, uv_roi: torch.Tensor) -> torch.Tensor:
    """Map box-normalised coordinates (0..1 across the box) to input-image px.

    Args:
        boxes_xyxy_px: (B, 4) boxes.
        uv_roi: (B, ..., 2) coordinates in [0, 1] box units (bin i's centre is (i + 0.5) / R).

    Returns:
        (B, ..., 2) px, same convention as the boxes.
    """
    shape = (boxes_xyxy_px.shape[0],) + (1,) * (uv_roi.dim() - 2) + (2,)
    origin = boxes_xyxy_px[:, :2].reshape(shape)
    size = (boxes_xyxy_px[:, 2:] - boxes_xyxy_px[:, :2]).reshape(shape)
    return origin + uv_roi * size


def roi_px_to_box(boxes_xyxy_px: torch.Tensor, uv_px: torch.Tensor) -> torch.Tensor:
    """Inverse of `box_to_roi_px`: input-image px to box-normalised coordinates."""
    shape = (boxes_xyxy_px.shape[0],) + (1,) * (uv_px.dim() - 2) + (2,)
    origin = boxes_xyxy_px[:, :2].reshape(shape)
    size = (boxes_xyxy_px[:, 2:] - boxes_xyxy_px[:, :2]).reshape(shape).clamp_min(1e-6)
    return (uv_px - origin) / size


def points_box_xyxy(points_px: torch.Tensor, scale: float) -> torch.Tensor:
    """UniHOPE's box of 2D points: min/max box, centre truncated to int, half-size (max - min) * scale / 2.

    The truncation toward zero is upstream's int() cast of the centre (its boxes are made in the model
    input's px, after augmentation, as ours are).

    Args:
        points_px: (B, N, 2) points, px.
        scale: box factor (`HAND_ROI_BOX_SCALE`, `OBJECT_ROI_BOX_SCALE`).

    Returns:
        (B, 4) boxes [x0, y0, x1, y1], px, the dtype of `points_px`.
    """
    if points_px.dim() != 3 or points_px.shape[-1] != 2:
        raise ValueError(f"points must be (B, N, 2), got {tuple(points_px.shape)}")
    lower, upper = points_px.min(dim=1).values, points_px.max(dim=1).values
    centre = torch.trunc((lower + upper) / 2)
    half = (upper - lower) * scale / 2
    return torch.cat([centre - half, centre + half], dim=1)


def roi_boxes(boxes_xyxy_px: torch.Tensor) -> torch.Tensor:
    """The boxes the model pools, decodes and is supervised with: degenerate sides widened to MIN_BOX_SIDE_PX.

    Boxes are not clipped to the image. A box crossing the crop edge (routine after rotation, scale and
    shift augmentation) keeps all of its points inside [0, 1] box units, so a heatmap or keypoint target
    is representable; RoIAlign samples outside the feature map take the border value. The model returns
    these boxes (`UniHOPEOutput.hand_boxes_xyxy_px`, `object_boxes_xyxy_px`) and the losses normalise their
    targets with them, so a perfectly learned target decodes back to itself.

    Args:
        boxes_xyxy_px: (B, 4) boxes, px.

    Returns:
        (B, 4) boxes, px.
    """
    centre = (boxes_xyxy_px[:, :2] + boxes_xyxy_px[:, 2:]) / 2
    half = ((boxes_xyxy_px[:, 2:] - boxes_xyxy_px[:, :2]) / 2).clamp_min(MIN_BOX_SIDE_PX / 2)
    return torch.cat([centre - half, centre + half], dim=1)
