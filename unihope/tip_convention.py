"""The fingertip convention a built dataset's joints use, read back from its recorded config."""

from __future__ import annotations

import os

from unihope.config import TIP_CONVENTION_OF_LAYOUT


def recorded_tip_convention(config: dict) -> str:
    """The tip convention of a dataset from its stored PipelineConfig (DatasetAttrs.config).

    Builds record `source.tip_convention` resolved ("manopth", "ho3d" or "smplx"); a dataset built
    before the field existed stored no such key, and its joints then follow its layout's own
    convention (the readers copy the labels), which is what is returned.

    Args:
        config: the JSON dict stored as the dataset's `config` attribute.

    Returns:
        The convention name.

    Raises:
        ValueError: when the config names no source layout.
    """
    source = config.get("source", {}) if isinstance(config, dict) else {}
    convention = source.get("tip_convention", "auto")
    if convention != "auto":
        return str(convention)
    kind = source.get("kind")
    layout = source.get("synthetic", {}).get("format", "dexycb") if kind == "synthetic" else kind
    if layout not in TIP_CONVENTION_OF_LAYOUT:
        raise ValueError(f"dataset config names no known source layout (source.kind={kind!r}); cannot tell its tip convention")
    return TIP_CONVENTION_OF_LAYOUT[layout]


def dataset_tip_convention(url: str | os.PathLike, storage_options: dict | None = None) -> str:
    """The tip convention recorded in a built dataset (manifest, else the first committed shard).

    Raises:
        ValueError: when the dataset has no committed shard to read the attributes from.
    """
    from unihope.storage.view import open_dataset

    view = open_dataset(url, storage_options, verify="none")
    try:
        if view.manifest is not None:
            return recorded_tip_convention(view.manifest.attrs.config)
        if not view.shards:
            raise ValueError(f"{os.fspath(url)}: no committed shard; build the dataset first")
        return recorded_tip_convention(view.shard(0).attrs.get("dataset", {}).get("config", {}))
    finally:
        view.close()


def tip_convention_of_dataset(dataset, default: str = "manopth") -> str:
    """The recorded tip convention behind a training dataset (a PairedDataset, possibly wrapped).

    Wrappers exposing `.dataset` (e.g. training's FirstSamples) are unwrapped down to the object with
    the store's `url`. A dataset with no store behind it (built in memory, e.g. in tests) records no
    convention: its samples come from whatever hand layer made them, and `default` is returned.

    Raises:
        ValueError: when the store has no committed shard.
    """
    inner = dataset
    while not hasattr(inner, "url") and hasattr(inner, "dataset"):
        inner = inner.dataset
    if not hasattr(inner, "url"):
        return default
    return dataset_tip_convention(inner.url, getattr(inner, "storage_options", None))
