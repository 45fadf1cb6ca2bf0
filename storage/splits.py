"""The splits of a stored dataset: the held-out split (whole sequences by a hash of the sequence key) and the
source's own official splits (DexYCB s0-s3, HO3D train / evaluation), chosen by name when the data is read."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from unihope.sources.splits import DEXYCB_SPLITS, DEXYCB_SUBJECTS, HO3D_SPLITS, dexycb_split

HELD_OUT_SPLITS = ("all", "train", "val")
# Official splits keep their upstream names; HO3D's carry a prefix because "train" is the held-out one.
DEXYCB_OFFICIAL_SPLITS = tuple(name for name in DEXYCB_SPLITS if name != "all")
HO3D_OFFICIAL_PREFIX = "ho3d_"
HO3D_OFFICIAL_SPLITS = tuple(f"{HO3D_OFFICIAL_PREFIX}{name}" for name in HO3D_SPLITS if name != "all")
SPLITS = HELD_OUT_SPLITS + DEXYCB_OFFICIAL_SPLITS + HO3D_OFFICIAL_SPLITS
DEFAULT_VAL_FRACTION = 0.1


class SplitWarning(UserWarning):
    """A split rule moved a sequence so that neither side of the held-out split is empty."""


def check_split_name(split: str) -> None:
    """Raise unless `split` is a held-out or an official split name.

    Raises:
        ValueError: listing the valid names.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_of_sequence(sequence_key: str, val_fraction: float) -> str:
    """'val' or 'train' from a hash of the sequence key (frames of one sequence never straddle splits)."""
    return "val" if _sequence_hash_unit(sequence_key) < val_fraction else "train"


def assign_splits(sequence_keys: Iterable[str], val_fraction: float) -> dict[str, str]:
    """Split of every sequence: `split_of_sequence`, except that a dataset of two or more sequences never
    ends with an empty side when val_fraction > 0: the sequence with the lowest hash goes to "val" when
    none did, the one with the highest hash to "train" when all went to "val" (a SplitWarning says so).
    Small builds such as the demo or a 2-sequence HO3D build can thus always be trained and evaluated."""
    unique_keys = sorted(set(sequence_keys))
    splits = {seq: split_of_sequence(seq, val_fraction) for seq in unique_keys}
    if val_fraction <= 0 or len(unique_keys) < 2:
        return splits
    for empty_side, pick in (("val", min), ("train", max)):
        if empty_side not in splits.values():
            moved = pick(unique_keys, key=_sequence_hash_unit)
            splits[moved] = empty_side
            warnings.warn(f"held-out split: no sequence of {len(unique_keys)} fell in {empty_side!r} at "
                          f"val_fraction={val_fraction}; sequence {moved} goes there", SplitWarning, stacklevel=2)
    return splits


def count_splits(splits: dict[str, str]) -> str:
    """`"3 sequences: 2 train, 1 val"` for error messages."""
    num_val = sum(side == "val" for side in splits.values())
    return f"{len(splits)} sequence(s): {len(splits) - num_val} train, {num_val} val"


def split_mask(split: str, column: Callable[[str], np.ndarray], source_config: dict, val_fraction: float) -> np.ndarray:
    """Which samples belong to `split`, from their stored sequence keys (and camera serials for DexYCB).

    Args:
        split: a name of SPLITS.
        column: reads a stored column of all N samples by name (`DatasetView.column`); called for
            `sequence_key`, and for `serial` by DexYCB's official splits only (s2 splits by camera).
        source_config: the build's `source` config (`attrs.config["source"]`): its layout decides
            which official splits apply, its root and split give DexYCB's sequence indices.
        val_fraction: share of sequences in the held-out "val" split.

    Returns:
        (N,) bool.

    Raises:
        ValueError: on an unknown split, an official split of the other source, or a DexYCB
            official split whose sequence indices cannot be known (see `_dexycb_sequence_index`).
    """
    check_split_name(split)
    keys = [str(key) for key in column("sequence_key").tolist()]
    if split == "all":
        return np.ones(len(keys), dtype=bool)
    if split in HELD_OUT_SPLITS:
        by_sequence = assign_splits(keys, val_fraction)
        return np.array([by_sequence[key] == split for key in keys], dtype=bool)
    layout = source_layout(source_config)
    if split in HO3D_OFFICIAL_SPLITS:
        _check_layout(split, layout, "ho3d")
        folders = set(HO3D_SPLITS[split.removeprefix(HO3D_OFFICIAL_PREFIX)])
        return np.array([key.split("/", 1)[0] in folders for key in keys], dtype=bool)
    _check_layout(split, layout, "dexycb")
    spec = dexycb_split(split)
    sequence_idx = _dexycb_sequence_index(sorted(set(keys)), source_config)
    subjects, serial_set = set(spec.subjects), set(spec.serials)
    return np.array([key.split("/", 1)[0] in subjects and str(serial) in serial_set
                     and spec.sequence_rule(sequence_idx[key])
                     for key, serial in zip(keys, column("serial").tolist())], dtype=bool)


def source_layout(source_config: dict) -> str:
    """"dexycb" or "ho3d": the on-disk layout a build read (a synthetic source's format)."""
    kind = source_config.get("kind")
    return (source_config.get("synthetic") or {}).get("format", "dexycb") if kind == "synthetic" else str(kind)


def _check_layout(split: str, layout: str, needed: str) -> None:
    if layout != needed:
        valid = DEXYCB_OFFICIAL_SPLITS if layout == "dexycb" else HO3D_OFFICIAL_SPLITS
        raise ValueError(f"split {split!r} is a {needed} split, but this dataset was built from {layout}; "
                         f"its official splits: {', '.join(valid)} (held-out: {', '.join(HELD_OUT_SPLITS)})")


def _dexycb_sequence_index(sequence_keys: list[str], source_config: dict) -> dict[str, int]:
    """Each stored sequence's DexYCB index: its position among its subject's sequence folders.

    From the source tree when it is on this machine (exact, like the build's reader); otherwise from
    the stored sequences themselves, which is exact only for a build of the whole source
    (`source.split: all`) that kept at least one frame of every sequence.

    Raises:
        ValueError: when the tree is absent and the build read a part of DexYCB only.
    """
    root = source_config.get("root")
    subjects = sorted({key.split("/", 1)[0] for key in sequence_keys})
    folders: dict[str, list[str]] = {}
    if root and Path(root).is_dir():
        from unihope.sources.dexycb import SEQUENCE_DIR_PATTERN  # the reader's folder rule (a slow import: meshes)

        for subject in subjects:
            subject_dir = Path(root) / subject
            names = sorted(p.name for p in subject_dir.iterdir() if p.is_dir() and SEQUENCE_DIR_PATTERN.match(p.name)) \
                if subject_dir.is_dir() else []
            folders[subject] = [f"{subject}/{name}" for name in names]
    elif source_config.get("split", "all") == "all":
        for subject in subjects:
            folders[subject] = [key for key in sequence_keys if key.split("/", 1)[0] == subject]
    else:
        raise ValueError(f"DexYCB's official splits need each sequence's index: the build read split "
                         f"{source_config.get('split')!r} of {root}, which is not on this machine; mount it there")
    index = {key: idx for subject in subjects for idx, key in enumerate(folders[subject])}
    unknown = [key for key in sequence_keys if key not in index or key.split("/", 1)[0] not in DEXYCB_SUBJECTS]
    if unknown:
        raise ValueError(f"sequence {unknown[0]} is not a DexYCB sequence of {root} (subjects "
                         f"{DEXYCB_SUBJECTS[0]}..{DEXYCB_SUBJECTS[-1]}); official splits cannot place it")
    return index


def _sequence_hash_unit(sequence_key: str) -> float:
    return int.from_bytes(hashlib.sha256(sequence_key.encode()).digest()[:8], "little") / 2.0**64
