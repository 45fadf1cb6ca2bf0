"""PairedDataset: occluded / de-occluded training pairs of one dataset version, read and augmented per batch.

Worker processes open the store lazily (first `__getitem__`), so datasets pickle small and work with
the spawn start method. A list of items builds a whole batch (`load_batch`): images stay uint8 until
one float conversion per batch, and the batch crosses the worker queue as one shared buffer
(`unihope.storage.batch_buffer`). Measured effect: docs/performance/storage.md.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unihope.seeding import numpy_generator
from unihope.storage.augment import IDENTITY, AugmentConfig, augment_pair_u8, sample_params
from unihope.storage.batch_buffer import SharedBatch
from unihope.storage.manifest import StoreError, shard_stem
from unihope.storage.schema import CHUNKING_SAMPLE, SCHEMA, RecordSchema
from unihope.storage.splits import DEFAULT_VAL_FRACTION, check_split_name, split_mask
from unihope.storage.view import DatasetView, open_dataset

# The per-pixel arrays a batch holds are the ones augment_pair_u8 warps (a new per-pixel training
# array needs its warp there first); every other `train` array of the schema is a per-sample label.
_PAIR_SAMPLE_ARRAYS = ("image", "image_deoccluded", "mask_hand", "mask_object")
_BATCH_DTYPES = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}
# the keys computed per batch (unihope.storage.schema.COMPUTED_SAMPLE_FIELDS): dtype, per-sample shape
_COMPUTED_LAYOUT: dict[str, tuple[type, tuple[int, ...]]] = {
    "hand_box_xyxy": (np.float32, (4,)), "object_box_xyxy": (np.float32, (4,)), "index": (np.int64, ()),
}
_U8_FULL_SCALE = 255.0  # stored uint8 colour / this -> [0, 1]


@dataclass(frozen=True, slots=True)
class _BatchLayout:
    """What a batch reads and holds, derived from the schema's `train` entries."""

    columns: tuple[str, ...]  # column arrays read per sample
    labels: dict[str, tuple[str, type, tuple[int, ...]]]  # batch key -> (array, numpy dtype, per-sample shape)
    strings: dict[str, str]  # batch key -> array, collated to a list of str
    key_order: tuple[str, ...]  # the batch's keys (unihope.storage.schema.SAMPLE_FIELDS of the schema)


def batch_layout(schema: RecordSchema) -> _BatchLayout:
    """The batch a PairedDataset builds for `schema`.

    Raises:
        ValueError: for a per-pixel training array the augmentation does not warp, or an unknown batch dtype.
    """
    train = [spec for spec in schema.arrays if spec.train is not None]
    maps = tuple(spec.name for spec in train if spec.chunking == CHUNKING_SAMPLE)
    if maps != _PAIR_SAMPLE_ARRAYS:
        raise ValueError(f"training reads the per-pixel arrays {_PAIR_SAMPLE_ARRAYS} (warped by "
                         f"unihope.storage.augment.augment_pair_u8), the schema marks {maps}")
    labels, strings = {}, {}
    for spec in train:
        key = spec.train.key or spec.name
        if spec.chunking == CHUNKING_SAMPLE:
            continue
        if spec.train.dtype == "str":
            strings[key] = spec.name
        elif spec.train.dtype in _BATCH_DTYPES:
            labels[key] = (spec.name, _BATCH_DTYPES[spec.train.dtype], spec.sample_shape(0, 0))
        else:
            raise ValueError(f"array {spec.name!r}: batch dtype {spec.train.dtype!r} is not one of "
                             f"{sorted(_BATCH_DTYPES)} or 'str'")
    columns = tuple(spec.name for spec in train if spec.chunking != CHUNKING_SAMPLE)
    return _BatchLayout(columns, labels, strings, tuple(schema.sample_fields))


@dataclass(frozen=True, slots=True)
class _Selection:
    """What a PairedDataset shows: global indices into the view, and their shard offsets."""

    indices: np.ndarray  # (N,) int64 global sample indices


class PairedDataset(torch.utils.data.Dataset):
    """Occluded / de-occluded pairs with identical augmentation, as dicts of tensors (the schema's SAMPLE_FIELDS).

    Pickles small (url, options and the selected indices) and opens the store lazily in each worker.
    Augmentation is seeded per sample from (seed, epoch, sample_key); `make_loader` passes the epoch.
    """

    reads_batches = True  # make_loader hands whole batches (lists of items) to __getitem__

    def __init__(
        self,
        url: str | os.PathLike,
        split: str = "all",
        keep_only: bool = False,
        max_visibility: float | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        storage_options: dict | None = None,
        verify: str = "lazy",
        version: str | None = None,
        schema: RecordSchema = SCHEMA,
    ) -> None:
        """Select samples of one version of a dataset.

        Args:
            url: dataset root (path or fsspec URL).
            split: "all", "train" or "val" (the held-out split, by a hash of the sequence key), or an
                official split of the source (unihope.storage.splits.SPLITS: DexYCB "s0_train" ..
                "s3_test", HO3D "ho3d_train" / "ho3d_evaluation").
            keep_only: only samples whose de-occluded pair was kept.
            max_visibility: only samples with visibility <= this (occluded ones), None = all.
            augment: random augmentation ranges, None = no augmentation.
            seed: augmentation seed.
            val_fraction: share of sequences in "val" (the training config's data.val_fraction); the
                build does not fix it, so every training chooses its own held-out share.
            storage_options: fsspec options for URLs.
            verify: checksum mode for shard reads (see open_dataset).
            version: dataset version id (or unique prefix); None = the newest. Every process
                (DataLoader workers too, whenever they start) reads this version.
            schema: the stored arrays and which of them a batch holds (`ArraySpec.train`).

        Raises:
            ValueError: on an unknown split or out-of-range fractions, or a schema whose training arrays
                a batch cannot hold.
            StoreError: on a missing version or a damaged store.
        """
        # 1. Check inputs
        check_split_name(split)
        if max_visibility is not None and not 0.0 <= max_visibility <= 1.0:
            raise ValueError(f"max_visibility must be in [0, 1] or None, got {max_visibility}")
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        self.augment = augment
        self.seed = seed
        self.verify = verify
        self.epoch = 0
        self.schema = schema
        self._layout = batch_layout(schema)

        # 2. Filters from the small columns (read once here, never pickled)
        view = open_dataset(self.url, self.storage_options, verify=verify, version=version, schema=schema)
        self.version_id = view.version_id
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        selected = np.ones(view.num_samples, dtype=bool)
        if keep_only:
            selected &= view.column("keep").astype(bool)
        if max_visibility is not None:
            selected &= view.column("visibility") <= max_visibility
        if split != "all":
            source_config = dict(view.manifest.attrs.config.get("source") or {}) if view.manifest is not None else {}
            selected &= split_mask(split, view.column, source_config, val_fraction)
        self._selection = _Selection(np.flatnonzero(selected).astype(np.int64))
        # workers re-read the commit records; (index, digest) pins them to the shards filtered here
        self._shard_ids = tuple((commit.shard_idx, commit.digest_sha256) for commit in view.shards)
        view.close()
        self._view: DatasetView | None = None

    def __len__(self) -> int:
        return len(self._selection.indices)

    def pair_flags(self) -> np.ndarray:
        """(N,) bool: which selected samples have a kept de-occluded pair (the batch's `has_pair`)."""
        view = open_dataset(self.url, self.storage_options, verify="none", version=self.version_id or None,
                            schema=self.schema)
        try:
            return view.column("keep").astype(bool)[self._selection.indices]
        finally:
            view.close()

    @property
    def global_indices(self) -> np.ndarray:
        """(N,) int64: the version's sample index of every item of this dataset (a copy)."""
        return self._selection.indices.copy()

    def subset(self, positions: Sequence[int] | np.ndarray) -> "PairedDataset":
        """The items at `positions` of this dataset, in that order: same version, shards and augmentation.

        Raises:
            IndexError: on a position out of range.
        """
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and not (0 <= positions.min() and positions.max() < len(self)):
            raise IndexError(f"positions must be in [0, {len(self)}), got {positions.min()}..{positions.max()}")
        out = copy.copy(self)  # shares the open view in this process; pickles without it like any instance
        out._selection = _Selection(self._selection.indices[positions])
        return out

    def open_view(self) -> DatasetView:
        """The DatasetView this dataset reads (opened on first use in each process; see `_open_view`)."""
        return self._open_view()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_view"] = None
        return state

    def _open_view(self) -> DatasetView:
        """Open the store (first call in each process), pinned to the shards seen at construction.

        Raises:
            StoreError: when a shard was rewritten or removed since this dataset was created.
        """
        if self._view is None:
            view = open_dataset(self.url, self.storage_options, verify="none", version=self.version_id or None,
                                schema=self.schema)
            by_idx = {commit.shard_idx: commit for commit in view.shards}
            shards = []
            for shard_idx, digest in self._shard_ids:
                commit = by_idx.get(shard_idx)
                if commit is None or commit.digest_sha256 != digest:
                    raise StoreError(f"{self.url}: {shard_stem(shard_idx)} changed or vanished since this "
                                     f"PairedDataset was created; create it again")
                shards.append(commit)
            self._view = DatasetView(view.loc, tuple(shards), view.manifest, self.verify, self.schema)
        return self._view

    def __getitem__(self, item: int | tuple[int, int] | list) -> dict:
        """Sample `item` (an index, or (index, epoch) as EpochSampler yields it), or a collated batch.

        A list of items (what make_loader's batch sampler yields) returns the collated batch that
        `load_batch` builds; a single item is that batch's only row, so a sample read alone is
        bit-identical to the same sample read in a batch (in a worker or not).
        """
        if isinstance(item, list):
            return self.load_batch(item)
        batch = self.load_batch([item])
        return {key: value[0] for key, value in batch.items()}

    def load_batch(self, items: Sequence[int | tuple[int, int]]) -> dict:
        """Read, augment and collate several samples at once.

        Images stay uint8 through the augmentation and become float32 once per batch; all tensors of
        the batch are views of one buffer (in shared memory inside a DataLoader worker), so a batch
        crosses the worker queue as one shared-memory handle instead of one per tensor.

        Args:
            items: indices, or (index, epoch) pairs (a bare index uses `self.epoch`).

        Returns:
            The collated batch: unihope.storage.schema.SAMPLE_FIELDS with a leading batch axis (B,), and
            `sample_key` as a list of B str.

        Raises:
            ValueError: on an empty batch or crops of different sizes in one batch.
            IndexError: on an index out of range.
        """
        # 1. Check inputs
        pairs = [item if isinstance(item, tuple) else (item, self.epoch) for item in items]
        if not pairs:
            raise ValueError("load_batch needs at least one item, got none")
        for index, _ in pairs:
            if not 0 <= index < len(self):
                raise IndexError(f"index {index} out of range for a PairedDataset of {len(self)} samples")
        num_samples = len(pairs)
        view = self._open_view()
        layout = self._layout

        # 2. Columns of every shard the batch touches, fetched once
        global_idx = self._selection.indices[np.array([index for index, _ in pairs], dtype=np.int64)]
        positions = np.searchsorted(view.offsets, global_idx, side="right") - 1
        local_idx = global_idx - view.offsets[positions]
        for position in np.unique(positions).tolist():
            view.shard(position).load_columns(layout.columns)

        # 3. Per sample: read, draw, augment in uint8 (the same per-sample math whatever the batch), labels
        #    written straight into the batch buffer
        batch: SharedBatch | None = None
        out: dict[str, np.ndarray] = {}  # numpy views of the batch's tensors, written in place
        pairs_u8 = masks = None  # (B, 2, S, S, 3) uint8 occluded / de-occluded, (B, 2, S, S) bool hand / object
        strings: dict[str, list[str]] = {key: [] for key in layout.strings}
        for row, ((index, epoch), position, local) in enumerate(zip(pairs, positions.tolist(), local_idx.tolist())):
            shard = view.shard(position)
            raw = {name: shard.sample_array(name, local) for name in _PAIR_SAMPLE_ARRAYS}
            raw.update({name: shard.column(name)[local] for name in layout.columns})
            raw["sample_key"] = str(raw["sample_key"])
            S = raw["image"].shape[0]
            if batch is None:
                batch, out = SharedBatch.allocate({
                    "image": (np.float32, (num_samples, 3, S, S)),
                    "image_deoccluded": (np.float32, (num_samples, 3, S, S)),
                    "mask_hand": (np.float32, (num_samples, S, S)),
                    "mask_object": (np.float32, (num_samples, S, S)),
                    **{key: (dtype, (num_samples, *shape)) for key, (_, dtype, shape) in layout.labels.items()},
                    **{key: (dtype, (num_samples, *shape)) for key, (dtype, shape) in _COMPUTED_LAYOUT.items()},
                })
                pairs_u8 = np.empty((num_samples, 2, S, S, 3), np.uint8)
                masks = np.empty((num_samples, 2, S, S), bool)
            elif pairs_u8.shape[2] != S:
                raise ValueError(f"a batch needs crops of one size, got {pairs_u8.shape[2]} and {S} px "
                                 f"({raw['sample_key']})")
            if self.augment is None:
                params = IDENTITY
            else:
                rng = numpy_generator(self.seed, epoch, raw["sample_key"])
                params = sample_params(self.augment, rng, S)
            aug = augment_pair_u8(raw, params)
            pairs_u8[row] = aug["pair"]
            masks[row, 0], masks[row, 1] = aug["mask_hand"], aug["mask_object"]
            for key, (name, _, _) in layout.labels.items():
                out[key][row] = aug[name]  # augmented or passed through; float64 -> float32 rounds like np.asarray
            for key, name in layout.strings.items():
                strings[key].append(str(raw[name]))
            out["index"][row] = index

        # 4. Batch-wide: boxes, and float32 images and masks made once for the batch
        for box, points in (("hand_box_xyxy", "joints_2d"), ("object_box_xyxy", "object_keypoints_2d")):
            np.min(out[points], axis=1, out=out[box][:, :2])
            np.max(out[points], axis=1, out=out[box][:, 2:])
        # transposed while still uint8 (4x fewer bytes to move), then one division: == astype(float32) / 255
        images_chw = np.ascontiguousarray(pairs_u8.transpose(1, 0, 4, 2, 3))  # (2, B, 3, S, S)
        np.divide(images_chw[0], np.float32(_U8_FULL_SCALE), out=out["image"], dtype=np.float32)
        np.divide(images_chw[1], np.float32(_U8_FULL_SCALE), out=out["image_deoccluded"], dtype=np.float32)
        np.copyto(out["mask_hand"], masks[:, 0])
        np.copyto(out["mask_object"], masks[:, 1])
        return batch.finish(key_order=layout.key_order, **strings)
