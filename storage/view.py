"""A verified view of one dataset version: open_dataset resolves the version, DatasetView reads by global index."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from unihope.storage.io import Location, locate
from unihope.storage.manifest import check_schema_version, commit_path, list_commits
from unihope.storage.presence import require_dataset
from unihope.storage.records import rebuild_records
from unihope.storage.schema import (
    CHUNKING_COLUMN,
    CHUNKING_SAMPLE,
    SCHEMA,
    AnnotatedFrame,
    DeocclusionResult,
    Manifest,
    RecordSchema,
    ShardCommit,
)
from unihope.storage.shard_reader import ShardReader
from unihope.storage.verify import VERIFY_MODES, verify_shard
from unihope.storage.versions import check_against_commits, load_version, newest_version_id, resolve_version

MAX_OPEN_SHARDS = 64  # per process; each holds open file handles and cached columns


class DatasetView:
    """The committed shards of a dataset, read by global sample index (0..num_samples-1).

    Built from one version manifest (unihope.storage.versions), else from the shard commit records (a
    first build in progress): either way only committed shards are visible, and a view keeps
    reading its version however many newer ones are committed meanwhile. `schema` says which arrays
    there are and which records they rebuild.
    """

    def __init__(self, loc: Location, shards: tuple[ShardCommit, ...], manifest: Manifest | None, verify: str,
                 schema: RecordSchema = SCHEMA) -> None:
        self.loc = loc
        self.schema = schema
        self._specs = schema.by_name
        self.shards = shards
        self.manifest = manifest
        self.verify_mode = verify
        counts = np.array([commit.num_samples for commit in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: OrderedDict[int, ShardReader] = OrderedDict()
        self._verified: set[int] = set()

    @property
    def num_samples(self) -> int:
        return int(self.offsets[-1])

    @property
    def is_finalized(self) -> bool:
        return self.manifest is not None

    @property
    def version_id(self) -> str:
        """The dataset version this view reads ("" for the commit records of a first build in progress)."""
        return self.manifest.version_id if self.manifest is not None else ""

    def __len__(self) -> int:
        return self.num_samples

    def locate_index(self, index: int) -> tuple[int, int]:
        """(position in self.shards, index within that shard) of a global sample index."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample index {index} out of range for a dataset of {self.num_samples} samples")
        position = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return position, index - int(self.offsets[position])

    def shard(self, position: int) -> ShardReader:
        """The opened shard at `position` (LRU-cached; verified on first open when verify='lazy')."""
        reader = self._open.get(position)
        if reader is not None:
            self._open.move_to_end(position)
            return reader
        commit = self.shards[position]
        # lazy: each object is checked on first read; a shard verified whole (eager) is not checked again
        must_verify = self.verify_mode == "lazy" and commit.shard_idx not in self._verified
        reader = ShardReader(self.loc, commit, verify=must_verify, schema=self.schema)
        self._open[position] = reader
        if len(self._open) > MAX_OPEN_SHARDS:
            _, evicted = self._open.popitem(last=False)
            evicted.close()
        return reader

    def column(self, name: str) -> np.ndarray:
        """A column field over all shards of the version, concatenated (each chunk checked unless verify="none").

        Raises:
            ValueError: for a per-sample (image-like) field, which is read by sample instead.
        """
        if self._specs[name].chunking != CHUNKING_COLUMN:
            raise ValueError(f"{name!r} is a per-sample array; read it with sample(index, names=[{name!r}])")
        parts = [ShardReader(self.loc, commit, verify=self.verify_mode == "lazy", schema=self.schema).column(name)
                 for commit in self.shards] \
            if len(self.shards) > MAX_OPEN_SHARDS else [self.shard(p).column(name) for p in range(len(self.shards))]
        if not parts:
            return np.zeros((0, *self._specs[name].shape), dtype=object)
        return np.concatenate(parts)

    def sample(self, index: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Stored values of one sample (numpy; strings as str)."""
        position, local_idx = self.locate_index(index)
        reader = self.shard(position)
        names = names or self.schema.names
        reader.load_columns(tuple(name for name in names if self._specs[name].chunking == CHUNKING_COLUMN))
        out: dict[str, np.ndarray] = {}
        for name in names:
            if self._specs[name].chunking == CHUNKING_SAMPLE:
                out[name] = reader.sample_array(name, local_idx)
            else:
                value = reader.column(name)[local_idx]
                out[name] = str(value) if self._specs[name].dtype == "str" else value
        return out

    def record(self, index: int) -> tuple[AnnotatedFrame, DeocclusionResult | None]:
        """Rebuild the records that were written for one sample (each array's field, as the schema maps them)."""
        return rebuild_records(self.sample(index), self.schema)

    def verify(self) -> None:
        """Check every committed shard's checksums and fields now.

        Raises:
            StoreError: naming the first bad shard.
        """
        for position, commit in enumerate(self.shards):
            verify_shard(self.loc, commit)
            self._verified.add(commit.shard_idx)
            reader = self.shard(position)
            for spec in self.schema.arrays:
                if reader.stores(spec.name):
                    reader.array(spec.name)

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


def open_dataset(
    url: str | os.PathLike, storage_options: dict | None = None, verify: str = "lazy", version: str | None = None,
    schema: RecordSchema = SCHEMA,
) -> DatasetView:
    """Open one version of a dataset (the newest by default).

    Args:
        url: dataset root, a local path or an fsspec URL.
        storage_options: fsspec options (e.g. S3 endpoint and credentials).
        verify: "lazy" checks a shard's sha256 checksums when it is first read, "eager" checks all
            shards now, "none" trusts the store.
        version: a version id (or a unique prefix of one); None = the newest committed version, or
            the committed shards of a first build still in progress when there is none yet.
        schema: the arrays and records to read (unihope.storage.schema.SCHEMA).

    Returns:
        A DatasetView over the version's shards; `view.version_id` names it ("" for a build in progress).

    Raises:
        ValueError: on an unknown verify mode.
        StoreError: on a path that holds no dataset (missing, a file, a folder no build wrote), an
            unknown schema version, a missing version, a version manifest that is
            doubled, dropped or altered, a corrupt shard (eager), or a missing field (eager).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    loc = locate(url, storage_options)
    newest = newest_version_id(loc)
    if version is not None:
        version_id = resolve_version(loc, version)
    else:
        version_id = newest
    if version_id is not None:
        manifest = load_version(loc, version_id)
        if version_id == newest and verify != "none":
            check_against_commits(loc, manifest)
        shards = manifest.shards
    else:
        manifest = None
        shards = tuple(list_commits(loc))
        if not shards:
            require_dataset(loc)  # an empty view only for a build in progress, never for a wrong path
        for commit in shards:
            check_schema_version(commit.schema_version, f"{loc.url}/{commit_path(commit.shard_idx)}")
    view = DatasetView(loc, shards, manifest, verify, schema)
    if verify == "eager":
        view.verify()
    return view
