"""The held-out split of a stored dataset: whole sequences go to "val" by a hash of the sequence key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPLITS = ("all", "train", "val")
DEFAULT_VAL_FRACTION = 0.1


def split_of_sequence(sequence_key: str, val_fraction: float) -> str:
    """'val' or 'train' from a hash of the sequence key (frames of one sequence never straddle splits)."""
    return "val" if _sequence_hash_unit(sequence_key) < val_fraction else "train"


def assign_splits(sequence_keys: Iterable[str], val_fraction: float) -> dict[str, str]:
    """Split of every sequence: `split_of_sequence`, except that a dataset of two or more sequences
    never ends with an empty held-out split when val_fraction > 0 (the sequence with the lowest hash
    goes to "val"), so small builds such as the demo can always be evaluated."""
    unique_keys = sorted(set(sequence_keys))
    splits = {seq: split_of_sequence(seq, val_fraction) for seq in unique_keys}
    if val_fraction > 0 and len(unique_keys) >= 2 and "val" not in splits.values():
        splits[min(unique_keys, key=_sequence_hash_unit)] = "val"
    return splits


def _sequence_hash_unit(sequence_key: str) -> float:
    return int.from_bytes(hashlib.sha256(sequence_key.encode()).digest()[:8], "little") / 2.0**64
