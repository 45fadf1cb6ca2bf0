"""Per-sample randomness: one seed from (config seed, ..., sample key), the same on every machine and run."""

from __future__ import annotations

import hashlib

import numpy as np

SEED_MASK = (1 << 63) - 1  # 63 bits: a non-negative int64, accepted by torch.Generator.manual_seed and numpy
SEED_PART_SEPARATOR = "/"  # sample keys use "/" too: parts and key segments hash alike, which is harmless


def seed_from(*parts: object) -> int:
    """A stable 63-bit seed from `parts` (e.g. config seed, epoch, sample key): sha256 of their "/"-joined text.

    Order-independent per-sample randomness: a sample draws the same values whatever the batch, the
    worker or the process it is read in (the global RNG is never used).
    """
    digest = hashlib.sha256(SEED_PART_SEPARATOR.join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & SEED_MASK


def numpy_generator(*parts: object) -> np.random.Generator:
    """A numpy generator seeded with `seed_from(*parts)`."""
    return np.random.default_rng(seed_from(*parts))


def torch_generator(*parts: object):
    """A CPU torch.Generator seeded with `seed_from(*parts)` (torch imported here: numpy-only callers skip it)."""
    import torch

    return torch.Generator().manual_seed(seed_from(*parts))
