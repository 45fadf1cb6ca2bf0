"""The public Python API: `unihope.load_dataset` and `unihope.open_xarray`, over the readers training uses.

`load_dataset` selects samples with `unihope.storage.paired.PairedDataset` (the class the training loop
reads, so a split means the same samples here and in a training run) and reads them through that
dataset's own `DatasetView`; `with_format("torch")` hands back the PairedDataset itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from unihope.storage.paired import PairedDataset
from unihope.storage.schema import ARRAYS, ARRAYS_BY_NAME
from unihope.storage.splits import (
    DEFAULT_VAL_FRACTION,
    DEXYCB_OFFICIAL_SPLITS,
    HELD_OUT_SPLITS,
    HO3D_OFFICIAL_SPLITS,
    source_layout,
)

FORMATS = ("numpy", "torch")
_REPR_WIDTH = 110  # characters per line of the array list in a repr


def load_dataset(
    path: str | os.PathLike, split: str = "all", version: str | None = None, *,
    val_fraction: float = DEFAULT_VAL_FRACTION, storage_options: dict | None = None, verify: str = "lazy",
) -> "Dataset":
    """Open one split of one version of a dataset written by `unihope build`.

    Args:
        path: dataset root, a local path or an fsspec URL.
        split: "all"; the held-out split "train" / "val" (whole sequences by a hash of the sequence
            key, as training's `data.val_fraction`); or an official split of the source: DexYCB
            "s0_train" .. "s3_test", HO3D "ho3d_train" / "ho3d_evaluation".
        version: a version id or unique prefix (`unihope ls-versions`); None = the newest.
        val_fraction: share of sequences in the held-out "val" split.
        storage_options: fsspec options (e.g. S3 endpoint and credentials).
        verify: checksum mode for shard reads ("lazy", "eager", "none"; see `open_dataset`).

    Returns:
        A Dataset: `len`, integer indexing (a dict of numpy arrays and str), slicing, iteration,
        `filter`, `select`, `with_format("torch")`.

    Raises:
        StoreError: when `path` holds no dataset, the version is missing or the store is damaged.
        ValueError: on an unknown split, or an official split of the other source.
    """
    pairs = PairedDataset(path, split=split, val_fraction=val_fraction, storage_options=storage_options,
                          verify=verify, version=version)
    return Dataset(pairs, split)


def open_xarray(path: str | os.PathLike, version: str | None = None, storage_options: dict | None = None):
    """Every sample of a version as one `xarray.Dataset` (see `unihope.storage.interop.open_xarray`).

    Dimension "sample" with a `sample_key` coordinate; string fields decoded to str (lazily).
    """
    from unihope.storage.interop import open_xarray as open_table

    return open_table(path, version=version, storage_options=storage_options)


class Dataset:
    """Samples of one split of one dataset version, read by position (0..len-1).

    `ds[i]` is a dict with every stored array of sample i (numpy; strings as str), `ds[a:b]` and
    `ds.select(positions)` are Datasets over those samples, `ds.filter(...)` keeps samples by their
    stored labels, and `ds.with_format("torch")` is the training reader (PairedDataset: dicts of
    tensors, float images, optional paired augmentation) over the same samples.
    """

    def __init__(self, pairs: PairedDataset, split: str) -> None:
        self._pairs = pairs
        self._indices = pairs.global_indices  # (N,) int64 sample indices in the version
        self.split = split

    # -- what it is ------------------------------------------------------------------------------

    @property
    def version_id(self) -> str:
        """The dataset version read ("" for a first build still in progress)."""
        return self._pairs.version_id

    @property
    def url(self) -> str:
        return self._pairs.url

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names this dataset can be loaded with (held-out ones and its source's official ones)."""
        view = self._pairs.open_view()
        config = view.manifest.attrs.config if view.manifest is not None else {}
        layout = source_layout(dict(config.get("source") or {}))
        official = {"dexycb": DEXYCB_OFFICIAL_SPLITS, "ho3d": HO3D_OFFICIAL_SPLITS}.get(layout, ())
        return HELD_OUT_SPLITS + official

    @property
    def features(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype, per-sample shape) of every stored array ("str" for strings)."""
        crop_px, feature_px = self._sizes()
        return {spec.name: (spec.dtype, spec.sample_shape(crop_px, feature_px)) for spec in ARRAYS}

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        entries = [f"{name}: {dtype}{list(shape) if shape else ''}" for name, (dtype, shape) in self.features.items()]
        lines = [""]
        for entry in entries:  # whole entries per line (textwrap would split "name: dtype[...]" at its spaces)
            if lines[-1] and len(lines[-1]) + len(entry) + 2 > _REPR_WIDTH:
                lines.append("")
            lines[-1] += f"{entry}, " if entry != entries[-1] else entry
        lines = [" " * 8 + line.rstrip() for line in lines]
        return "\n".join([
            f"unihope.Dataset(url={self.url!r}, version={self.version_id or '(build in progress)'!r}, "
            f"split={self.split!r}, num_samples={len(self)},",
            f"    splits=[{', '.join(self.splits)}],",
            f"    arrays ({len(self.features)}, per sample; str = text):",
            *lines, ")",
        ])

    # -- reading ---------------------------------------------------------------------------------

    def __getitem__(self, item: int | slice) -> "dict[str, np.ndarray | str] | Dataset":
        """Sample `item` (a dict of every stored array), or a Dataset over a slice.

        Raises:
            IndexError: on a position out of range.
            TypeError: on anything but an int or a slice.
        """
        if isinstance(item, slice):
            return self.select(range(len(self))[item])
        if not isinstance(item, (int, np.integer)):
            raise TypeError(f"a Dataset is indexed by an int or a slice, got {type(item).__name__}")
        position = int(item) + len(self) if item < 0 else int(item)
        if not 0 <= position < len(self):
            raise IndexError(f"index {item} out of range for a Dataset of {len(self)} samples")
        global_idx = int(self._indices[position])
        return self._pairs.open_view().sample(global_idx)

    def __iter__(self) -> Iterator[dict]:
        view = self._pairs.open_view()
        for global_idx in self._indices.tolist():
            yield view.sample(global_idx)

    def column(self, name: str) -> np.ndarray:
        """One small (per-sample scalar or vector) stored field over this dataset's samples, in order.

        Raises:
            ValueError: for an image-like field (read those per sample: `ds[i][name]`).
        """
        values = self._pairs.open_view().column(name)[self._indices]
        return np.array([str(v) for v in values], dtype=object) if ARRAYS_BY_NAME[name].dtype == "str" else values

    # -- choosing samples ------------------------------------------------------------------------

    def select(self, positions: Sequence[int] | np.ndarray | range) -> "Dataset":
        """A Dataset over the samples at `positions` (in that order)."""
        return Dataset(self._pairs.subset(np.asarray(list(positions), dtype=np.int64)), self.split)

    def filter(self, occlusion_bin: int | Sequence[int] | None = None, grasp: bool | None = None,
               has_pair: bool | None = None, max_visibility: float | None = None) -> "Dataset":
        """The samples whose stored labels match every condition given (None = no condition).

        Args:
            occlusion_bin: one bin or several (the `occlusion_bin` column: visibility bins, docs/DATASET.md).
            grasp: grasping (True) or not (False), the `grasp` label.
            has_pair: whose de-occluded pair was kept (the `keep` column).
            max_visibility: visibility (fraction of the hand visible) <= this.
        """
        keep = np.ones(len(self), dtype=bool)
        if occlusion_bin is not None:
            bins = [occlusion_bin] if isinstance(occlusion_bin, (int, np.integer)) else list(occlusion_bin)
            keep &= np.isin(self.column("occlusion_bin"), bins)
        if grasp is not None:
            keep &= self.column("grasp").astype(bool) == grasp
        if has_pair is not None:
            keep &= self.column("keep").astype(bool) == has_pair
        if max_visibility is not None:
            keep &= self.column("visibility") <= max_visibility
        return self.select(np.flatnonzero(keep))

    def with_format(self, format: str) -> "Dataset | PairedDataset":
        """"numpy": this Dataset; "torch": the training reader over the same samples (a torch Dataset).

        The torch form yields what training batches hold (unihope.storage.schema.SAMPLE_FIELDS: float
        images in [0, 1], channels first); `unihope.storage.loader.make_loader` batches it.

        Raises:
            ValueError: on another format.
        """
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        return self if format == "numpy" else self._pairs

    def _sizes(self) -> tuple[int, int]:
        """(crop size px, feature-map size px) of the stored samples (0, 0 when there is none)."""
        view = self._pairs.open_view()
        if not len(view):
            return 0, 0
        first = view.sample(0, names=("image", "seg_map"))
        return int(first["image"].shape[0]), int(first["seg_map"].shape[0])

