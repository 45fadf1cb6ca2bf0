"""The fast read path of one committed shard: byte-range chunk reads, cached columns, lazy checksums.

Per-sample arrays are read with one byte-range read per array from the shard object, using the
shard index that Zarr's sharding codec writes at the end of the object (read once per shard and
cached); the chunk is decoded with numcodecs' Blosc. Arrays whose stored codecs differ from what
`unihope.storage.writer` writes fall back to `zarr.Array[i]`. Never `.oindex` on sharded arrays.
Column arrays (scalars, joints, poses, keys) are read whole per shard and kept in memory.
Why this path and what it gains (measured): docs/performance/storage.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import os

import google_crc32c
import numcodecs
import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync as zarr_sync

from unihope.storage.codes import decode_utf8_fixed
from unihope.storage.io import Location, read_bytes
from unihope.storage.manifest import StoreError, check_schema_version, chunk_key_of, read_many, shard_stem
from unihope.storage.records import fill_column
from unihope.storage.schema import SCHEMA, RecordSchema, ShardCommit
from unihope.storage.verify import check_sha256

_EMPTY_CHUNK = np.iinfo(np.uint64).max  # sharding index entry of a chunk never written (all fill value)


class _ChunkReader:
    """One sharded per-sample array of one shard: cached shard index + byte-range reads + Blosc decode."""

    def __init__(self, loc: Location, data_path: str, name: str, meta: dict, num_samples: int, where: str,
                 expected_sha256: str | None = None) -> None:
        """Open the shard object of array `name` in the shard group at `data_path`.

        With `expected_sha256` the whole object is read once and checked first (lazy verification).

        Raises:
            StoreError: naming the shard when the object is missing, corrupt or fails its checksum.
        """
        self.where = where
        self.sample_shape = tuple(meta["shape"][1:])
        self.dtype = np.dtype(meta["data_type"])
        self.fill_value = meta.get("fill_value", 0)
        self.loc = loc
        array_path = f"{data_path}/{name}"
        chunk_key = chunk_key_of(name, len(meta["shape"]))
        self.path = loc.path(f"{data_path}/{chunk_key}")
        self._blosc = numcodecs.Blosc()
        self._fd: int | None = None
        index_nbytes = num_samples * 16 + 4
        try:
            if loc.is_local:
                self._fd = os.open(self.path, os.O_RDONLY)
                size = os.fstat(self._fd).st_size
                if expected_sha256 is not None:  # lazy verification: the whole object once, on first use
                    check_sha256(where, chunk_key, os.pread(self._fd, size, 0), expected_sha256)
                raw = os.pread(self._fd, index_nbytes, size - index_nbytes)
            else:
                if expected_sha256 is not None:
                    whole = loc.fs.cat_file(self.path)
                    check_sha256(where, chunk_key, whole, expected_sha256)
                    size, raw = len(whole), whole[-index_nbytes:]
                else:
                    size = loc.fs.size(self.path)
                    raw = loc.fs.cat_file(self.path, start=size - index_nbytes, end=size)
        except FileNotFoundError as err:
            field_name = array_path.rsplit("/", 1)[-1]
            raise StoreError(f"{where}: field {field_name!r} is missing (no {self.path}); the shard is incomplete "
                             f"or damaged, rewrite it") from err
        if len(raw) != index_nbytes or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
            raise StoreError(f"{where}: shard index of {array_path} is corrupt (crc32c mismatch); rewrite the shard")
        self.index = np.frombuffer(raw[:-4], dtype="<u8").reshape(num_samples, 2)

    @staticmethod
    def supports(meta: dict) -> bool:
        """True when the array is stored exactly as unihope.storage.writer writes sample arrays."""
        try:
            (codec,) = meta["codecs"]
            config = codec["configuration"]
            inner = config["codecs"]
            return (
                codec["name"] == "sharding_indexed"
                and config["index_location"] == "end"
                and [c["name"] for c in config["index_codecs"]] == ["bytes", "crc32c"]
                and config["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                and [c["name"] for c in inner] == ["bytes", "blosc"]
                and inner[0].get("configuration", {}).get("endian", "little") == "little"
                and config["chunk_shape"] == [1, *meta["shape"][1:]]
                and meta["chunk_grid"]["configuration"]["chunk_shape"] == meta["shape"]
                and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
            )
        except (KeyError, TypeError, ValueError):
            return False

    def read(self, local_idx: int) -> np.ndarray:
        offset, nbytes = (int(v) for v in self.index[local_idx])
        if offset == _EMPTY_CHUNK and nbytes == _EMPTY_CHUNK:
            return np.full(self.sample_shape, self.fill_value, dtype=self.dtype)
        if self._fd is not None:
            raw = os.pread(self._fd, nbytes, offset)
        else:
            raw = self.loc.fs.cat_file(self.path, start=offset, end=offset + nbytes)
        try:
            decoded = self._blosc.decode(raw)
        except (RuntimeError, ValueError) as err:
            raise StoreError(f"{self.where}: cannot decode sample {local_idx} of {self.path} ({err}); "
                             f"the shard is corrupt, rewrite it") from err
        expected = math.prod(self.sample_shape) * self.dtype.itemsize
        if len(decoded) != expected:
            raise StoreError(f"{self.where}: sample {local_idx} of {self.path} decodes to {len(decoded)} bytes, "
                             f"expected {expected}; the shard is corrupt, rewrite it")
        return np.frombuffer(decoded, dtype=self.dtype).reshape(self.sample_shape)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ShardReader:
    """An opened, checked shard group: lazily loaded columns and per-sample chunk readers.

    With `verify`, every stored object is checked against the commit record's sha256 when it is
    first read (the group's zarr.json at open, a column's chunk when it is loaded, a sample array's
    shard object when its first sample is read), so nothing is decoded unchecked and objects that
    are never read are never hashed. An array the schema added after the shard's schema version
    reads as its fill value (`ArraySpec.fill`, `since`).
    """

    def __init__(self, loc: Location, commit: ShardCommit, verify: bool, schema: RecordSchema = SCHEMA) -> None:
        self.commit = commit
        self.loc = loc
        self.verify = verify
        self.schema = schema
        self._specs = schema.by_name
        self.where = f"{shard_stem(commit.shard_idx)} ({commit.data_path})"
        # 1. The group's metadata, checked against the commit record
        if verify:
            payload = read_bytes(loc, f"{commit.data_path}/zarr.json")
            if payload is None:
                raise StoreError(f"{self.where}: stored file zarr.json is missing; rewrite the shard")
            check_sha256(self.where, "zarr.json", payload, commit.files_sha256.get("zarr.json"))
        # 2. Schema version and fields (consolidated metadata, when present, holds every array's: one request)
        try:
            self.group = zarr.open_group(loc.zarr_store(commit.data_path, read_only=True), mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise StoreError(f"{self.where}: shard group cannot be opened ({err}); rewrite the shard") from err
        consolidated = self.group.metadata.consolidated_metadata
        self._array_meta = {name: meta.to_dict() for name, meta in consolidated.metadata.items()} \
            if consolidated is not None else {}
        attrs = self.group.attrs.get("unihope", {})
        self.schema_version = int(attrs.get("schema_version", -1))
        check_schema_version(self.schema_version, self.where)
        if attrs.get("shard_idx") != commit.shard_idx or attrs.get("num_samples") != commit.num_samples:
            raise StoreError(f"{self.where}: the group holds shard {attrs.get('shard_idx')} with "
                             f"{attrs.get('num_samples')} samples, the manifest says shard {commit.shard_idx} with "
                             f"{commit.num_samples}; the manifest and the shards disagree")
        self.attrs = attrs
        self._columns: dict[str, np.ndarray] = {}
        self._chunk_readers: dict[str, _ChunkReader] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._arrays_verified: set[str] = set()

    def stores(self, name: str) -> bool:
        """False for an array the schema added after this shard's schema version (it reads as its fill value)."""
        return self._specs[name].since <= self.schema_version

    def _filled(self, name: str, sample_shape: tuple[int, ...]) -> np.ndarray:
        return fill_column(self._specs[name], self.commit.num_samples, sample_shape)

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                self._arrays[name] = self.group[name]
            except KeyError as err:
                raise StoreError(f"{self.where}: field {name!r} is missing; the shard was written by another "
                                 f"schema or is incomplete, rewrite it") from err
        return self._arrays[name]

    def _verify_objects(self, prefix: str) -> None:
        """Check every stored object whose key starts with `prefix` (an array read through zarr-python)."""
        names = [name for name in self.commit.files_sha256 if name.startswith(prefix)]
        fetched = read_many(self.loc, [f"{self.commit.data_path}/{name}" for name in names])
        for name in names:
            payload = fetched.get(f"{self.commit.data_path}/{name}")
            if payload is None:
                raise StoreError(f"{self.where}: stored file {name} is missing; rewrite the shard")
            check_sha256(self.where, name, payload, self.commit.files_sha256[name])

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            self.load_columns((name,))
        return self._columns[name]

    def load_columns(self, names: tuple[str, ...]) -> None:
        """Fetch the chunks of several columns in one concurrent batch and decode them in one Zarr call.

        Raises:
            StoreError: naming the shard when a column is not in the shard, its chunk is missing,
                fails its checksum or does not decode.
        """
        names = tuple(name for name in dict.fromkeys(names) if name not in self._columns)
        for name in names:
            if not self.stores(name):
                self._columns[name] = self._filled(name, self._specs[name].sample_shape(0, 0))
        names = tuple(name for name in names if name not in self._columns)
        if not names:
            return
        missing = [name for name in names if self._array_meta and name not in self._array_meta]
        if missing:
            raise StoreError(f"{self.where}: field {missing[0]!r} is missing; the shard was written by another "
                             f"schema or is incomplete, rewrite it")
        if not self._array_meta:  # no consolidated metadata: plain Zarr reads
            for name in names:
                array = self.array(name)
                if self.verify:
                    self._verify_objects(f"{name}/")
                self._columns[name] = self._checked(name, self._decoded(name, lambda: array[...]))
            return
        keys = {name: chunk_key_of(name, len(self._array_meta[name]["shape"])) for name in names}
        fetched = read_many(self.loc, [f"{self.commit.data_path}/{key}" for key in ["zarr.json", *keys.values()]])
        prefix = f"{self.commit.data_path}/"
        for name, key in keys.items():
            if f"{prefix}{key}" not in fetched:
                raise StoreError(f"{self.where}: field {name!r} has no data ({key}); the shard is incomplete or "
                                 f"damaged, rewrite it")
            if self.verify:
                check_sha256(self.where, key, fetched[f"{prefix}{key}"], self.commit.files_sha256.get(key))
        to_buffer = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes
        memory = zarr.storage.MemoryStore({path[len(prefix):]: to_buffer(payload) for path, payload in fetched.items()})
        decoded = self._decoded(", ".join(names), lambda: zarr_sync(_decode_columns(memory, names)))
        for name, values in zip(names, decoded):
            self._columns[name] = self._checked(name, values)

    def _decoded(self, what: str, decode):
        """Run a Zarr decode; a codec failure (a truncated or damaged chunk) names the shard and the fields.

        Raises:
            StoreError: naming the shard and `what`.
        """
        try:
            return decode()
        except StoreError:
            raise
        except Exception as err:  # codecs raise RuntimeError, ValueError, TypeError, zstd/blosc-specific errors
            raise StoreError(f"{self.where}: cannot decode {what} ({type(err).__name__}: {err}); the shard is "
                             f"corrupt, rewrite it") from err

    def _checked(self, name: str, values: np.ndarray) -> np.ndarray:
        """The column as the schema declares it (strings decoded from their code units), its length checked."""
        if values.shape[0] != self.commit.num_samples:
            raise StoreError(f"{self.where}: field {name!r} holds {values.shape[0]} samples, the commit record "
                             f"says {self.commit.num_samples}")
        if self._specs[name].dtype == "str":
            try:
                return decode_utf8_fixed(values)
            except ValueError as err:
                raise StoreError(f"{self.where}: field {name!r}: {err}; the shard is corrupt, rewrite it") from err
        return values

    def sample_array(self, name: str, local_idx: int) -> np.ndarray:
        if not self.stores(name):
            shape = self._specs[name].sample_shape(self.attrs["crop_size_px"], self.attrs["feature_size_px"])
            return self._filled(name, shape)[local_idx]
        reader = self._chunk_readers.get(name)
        if reader is None:
            array = self.array(name)
            meta = self._array_meta.get(name)
            if meta is None:
                meta = json.loads(read_bytes(self.loc, f"{self.commit.data_path}/{name}/zarr.json") or b"{}")
            meta = json.loads(json.dumps(meta, default=_json_default))
            if not _ChunkReader.supports(meta):
                if self.verify and name not in self._arrays_verified:
                    self._verify_objects(f"{name}/")
                    self._arrays_verified.add(name)
                return np.asarray(self._decoded(f"sample {local_idx} of {name}", lambda: array[local_idx]))
            chunk_key = chunk_key_of(name, len(meta["shape"]))
            expected = self.commit.files_sha256.get(chunk_key) if self.verify else None
            if self.verify and expected is None:
                raise StoreError(f"{self.where}: stored file {chunk_key} is not listed in the commit record; the "
                                 f"shard is damaged, rewrite it")
            reader = _ChunkReader(self.loc, self.commit.data_path, name, meta, self.commit.num_samples, self.where,
                                  expected_sha256=expected)
            self._chunk_readers[name] = reader
        return reader.read(local_idx)

    def close(self) -> None:
        for reader in self._chunk_readers.values():
            reader.close()
        self._chunk_readers.clear()


async def _decode_columns(store: zarr.storage.MemoryStore, names: tuple[str, ...]) -> list[np.ndarray]:
    """Decode whole column arrays from an in-memory copy of their chunks (one event-loop round trip)."""
    group = await zarr.api.asynchronous.open_group(store=store, mode="r", zarr_format=3)
    arrays = await asyncio.gather(*(group.getitem(name) for name in names))
    return list(await asyncio.gather(*(array.getitem(Ellipsis) for array in arrays)))


def _json_default(value):
    """JSON form of the few non-JSON values in Zarr's metadata dicts (enums, numpy scalars, codecs)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
