"""HOMAE's target-focused masking: Gaussian-noise patches, half of them aimed inside the object box."""

from __future__ import annotations

import torch

REFERENCE_INPUT_PX = 224  # HOMAE: 224 px input,
REFERENCE_PATCH_PX = 28  # 28 px patches (an 8 x 8 grid),
REFERENCE_NUM_PATCHES = 12  # 12 masked patches,
REFERENCE_PROB_IN_OBJECT = 0.5  # each inside the object box with probability 0.5


def scaled_patch_layout(image_size_px: int, patch_px: int | None = None, num_patches: int | None = None) -> tuple[int, int]:
    """Patch size and count for an input size, scaled from HOMAE's 224 px / 28 px / 12 patches.

    The patch side scales with the input side; the count scales with the number of grid cells,
    so the masked fraction of the image stays at HOMAE's 12 / 64.

    Returns:
        (patch_px, num_patches).
    """
    if image_size_px < 2:
        raise ValueError(f"image_size_px must be >= 2, got {image_size_px}")
    if patch_px is None:
        patch_px = max(1, round(REFERENCE_PATCH_PX * image_size_px / REFERENCE_INPUT_PX))
    if num_patches is None:
        cells = (image_size_px // patch_px) ** 2
        reference_cells = (REFERENCE_INPUT_PX // REFERENCE_PATCH_PX) ** 2
        num_patches = max(1, round(REFERENCE_NUM_PATCHES * cells / reference_cells))
    return patch_px, num_patches


def target_focused_mask(
    image: torch.Tensor,
    object_box_xyxy_px: torch.Tensor,
    generator: torch.Generator,
    patch_px: int,
    num_patches: int,
    prob_in_object: float = REFERENCE_PROB_IN_OBJECT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace `num_patches` grid patches of one image with Gaussian noise.

    Each patch falls, with probability `prob_in_object`, on a grid cell overlapping the object box
    (while such cells remain), otherwise on any remaining cell; cells are drawn without replacement.
    Noise follows the image's own mean and standard deviation (HOMAE: Gaussian fill beats zero or
    mean fill), clipped to [0, 1].

    Args:
        image: (3, S, S) float in [0, 1].
        object_box_xyxy_px: (4,) object box in px.
        generator: torch generator seeded by the caller (e.g. from the sample key and epoch).
        patch_px: patch side.
        num_patches: patches to mask.
        prob_in_object: probability that a patch is drawn from the object box.

    Returns:
        (masked image (3, S, S), mask (S, S) bool of the replaced pixels).
    """
    # 1. Check inputs
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image must be (3, S, S), got {tuple(image.shape)}")
    if not 0.0 <= prob_in_object <= 1.0:
        raise ValueError(f"prob_in_object must be in [0, 1], got {prob_in_object}")
    size = image.shape[-1]
    cells_per_side = size // patch_px
    if cells_per_side < 1:
        raise ValueError(f"patch_px={patch_px} is larger than the image ({size} px)")

    # 2. Grid cells overlapping the object box
    x0, y0, x1, y1 = [float(v) for v in object_box_xyxy_px]
    starts = torch.arange(cells_per_side) * patch_px
    overlap_x = (starts + patch_px - 1 >= x0) & (starts <= x1)
    overlap_y = (starts + patch_px - 1 >= y0) & (starts <= y1)
    in_object = (overlap_y[:, None] & overlap_x[None, :]).flatten()

    # 3. Draw cells without replacement
    available = torch.ones(cells_per_side * cells_per_side, dtype=torch.bool)
    chosen = []
    for _ in range(min(num_patches, available.numel())):
        candidates = available & in_object
        use_object = bool(candidates.any()) and float(torch.rand((), generator=generator)) < prob_in_object
        pool = torch.nonzero(candidates if use_object else available).flatten()
        cell = int(pool[torch.randint(len(pool), (), generator=generator)])
        available[cell] = False
        chosen.append(cell)

    # 4. Fill with Gaussian noise
    masked = image.clone()
    mask = torch.zeros(size, size, dtype=torch.bool)
    mean, std = float(image.mean()), float(image.std().clamp_min(1e-3))
    for cell in chosen:
        row, col = divmod(cell, cells_per_side)
        ys, xs = slice(row * patch_px, (row + 1) * patch_px), slice(col * patch_px, (col + 1) * patch_px)
        noise = torch.randn((3, patch_px, patch_px), generator=generator) * std + mean
        masked[:, ys, xs] = noise.clamp(0.0, 1.0).to(image.dtype)
        mask[ys, xs] = True
    return masked, mask
