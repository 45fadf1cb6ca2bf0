"""Read committed shards: `open_dataset` (a verified view) and `PairedDataset` (torch, paired augmentation).

Speed notes (measured, docs/performance/storage.md):
- Per-sample arrays are read with one byte-range read per array from the shard object, using the
  shard index that Zarr's sharding codec writes at the end of the object (read once per shard and
  cached); the chunk is decoded with numcodecs' Blosc. That is ~9x faster than `zarr.Array[i]`,
  whose per-call event-loop round trip dominates for small chunks. Arrays whose stored codecs differ
  from what `unihope.storage.writer` writes fall back to `zarr.Array[i]`. Never `.oindex` on sharded arrays.
- Column arrays (scalars, joints, poses, keys) are read whole per shard and kept in memory.
- Worker processes open the store lazily (first `__getitem__`), so datasets pickle small and
  work with the spawn start method.
- `make_loader`'s workers build whole batches (`PairedDataset[list]`): images stay uint8 until one
  float conversion per batch, and a batch crosses the worker queue as one shared buffer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import google_crc32c
import numcodecs
import numpy as np
import torch
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync as zarr_sync

from unihope.storage.augment import IDENTITY, AugmentConfig, augment_pair_u8, sample_params
from unihope.storage.codes import decode_utf8_fixed
from unihope.storage.io import Location, locate, read_bytes
from unihope.storage.manifest import (
    StoreError,
    chunk_key_of,
    check_schema_version,
    commit_path,
    list_commits,
    read_many,
    shard_stem,
)
from unihope.storage.schema import (
    ARRAYS,
    ARRAYS_BY_NAME,
    CHUNKING_COLUMN,
    CHUNKING_SAMPLE,
    HAND_SIDE_CODES,
    SAMPLE_KEYS,
    AnnotatedFrame,
    Crop,
    DeocclusionResult,
    FrameRecord,
    GraspLabel,
    Manifest,
    ShardCommit,
)
from unihope.storage.versions import check_against_commits, load_version, newest_version_id, resolve_version

VERIFY_MODES = ("lazy", "eager", "none")
SPLITS = ("all", "train", "val")
DEFAULT_VAL_FRACTION = 0.1
MAX_OPEN_SHARDS = 64  # per process; each holds open file handles and cached columns
_EMPTY_CHUNK = np.iinfo(np.uint64).max  # sharding index entry of a chunk never written (all fill value)
_SIDE_BY_CODE = {code: side for side, code in HAND_SIDE_CODES.items()}
# what PairedDataset reads per sample
_PAIR_SAMPLE_ARRAYS = ("image", "image_deoccluded", "mask_hand", "mask_object")
_PAIR_COLUMNS = ("joints_2d", "joints_3d", "mano_pose", "mano_betas", "mano_trans", "hand_side", "grasp",
                 "object_keypoints_2d", "object_pose", "object_id", "K", "visibility", "keep", "sample_key")
# per-sample labels of a training batch: name -> (dtype, shape); all samples' values are stacked per name
_PAIR_LABELS: dict[str, tuple[type, tuple[int, ...]]] = {
    "has_pair": (np.bool_, ()), "joints_2d": (np.float32, (21, 2)), "joints_3d": (np.float32, (21, 3)),
    "mano_pose": (np.float32, (48,)), "mano_betas": (np.float32, (10,)), "mano_trans": (np.float32, (3,)),
    "hand_side": (np.int64, ()), "grasp": (np.int64, ()), "object_keypoints_2d": (np.float32, (21, 2)),
    "object_pose": (np.float32, (3, 4)), "object_id": (np.int64, ()), "K": (np.float32, (3, 3)),
    "visibility": (np.float32, ()), "hand_box_xyxy": (np.float32, (4,)), "object_box_xyxy": (np.float32, (4,)),
    "index": (np.int64, ()),
}
_BATCH_ALIGN_BYTES = 64  # every field of a batch buffer starts on a cache line (and any dtype's alignment)
_U8_FULL_SCALE = 255.0  # stored uint8 colour / this -> [0, 1]


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


def _seed_for(seed: int, epoch: int, sample_key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{epoch}|{sample_key}".encode()).digest()[:8], "little")


def _check_sha256(where: str, name: str, payload: bytes, expected: str | None) -> None:
    """Refuse an object whose sha256 differs from its commit record's (or that the record does not list).

    Raises:
        StoreError: naming the shard (`where`) and the object.
    """
    if expected is None:
        raise StoreError(f"{where}: stored file {name} is not listed in the commit record; the shard is damaged, "
                         f"rewrite it")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise StoreError(f"{where}: checksum mismatch in {name} (sha256 {actual[:12]}..., commit record says "
                         f"{expected[:12]}...); the shard is corrupt, rewrite it")


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
                    _check_sha256(where, chunk_key, os.pread(self._fd, size, 0), expected_sha256)
                raw = os.pread(self._fd, index_nbytes, size - index_nbytes)
            else:
                if expected_sha256 is not None:
                    whole = loc.fs.cat_file(self.path)
                    _check_sha256(where, chunk_key, whole, expected_sha256)
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


class _ShardReader:
    """An opened, checked shard group: lazily loaded columns and per-sample chunk readers.

    With `verify`, every stored object is checked against the commit record's sha256 when it is
    first read (the group's zarr.json at open, a column's chunk when it is loaded, a sample array's
    shard object when its first sample is read), so nothing is decoded unchecked and objects that
    are never read are never hashed.
    """

    def __init__(self, loc: Location, commit: ShardCommit, verify: bool) -> None:
        self.commit = commit
        self.loc = loc
        self.verify = verify
        self.where = f"{shard_stem(commit.shard_idx)} ({commit.data_path})"
        # 1. The group's metadata, checked against the commit record
        if verify:
            payload = read_bytes(loc, f"{commit.data_path}/zarr.json")
            if payload is None:
                raise StoreError(f"{self.where}: stored file zarr.json is missing; rewrite the shard")
            _check_sha256(self.where, "zarr.json", payload, commit.files_sha256.get("zarr.json"))
        # 2. Schema version and fields (consolidated metadata, when present, holds every array's: one request)
        try:
            self.group = zarr.open_group(loc.zarr_store(commit.data_path, read_only=True), mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise StoreError(f"{self.where}: shard group cannot be opened ({err}); rewrite the shard") from err
        consolidated = self.group.metadata.consolidated_metadata
        self._array_meta = {name: meta.to_dict() for name, meta in consolidated.metadata.items()} \
            if consolidated is not None else {}
        attrs = self.group.attrs.get("unihope", {})
        check_schema_version(int(attrs.get("schema_version", -1)), self.where)
        if attrs.get("shard_idx") != commit.shard_idx or attrs.get("num_samples") != commit.num_samples:
            raise StoreError(f"{self.where}: the group holds shard {attrs.get('shard_idx')} with "
                             f"{attrs.get('num_samples')} samples, the manifest says shard {commit.shard_idx} with "
                             f"{commit.num_samples}; the manifest and the shards disagree")
        self.attrs = attrs
        self._columns: dict[str, np.ndarray] = {}
        self._chunk_readers: dict[str, _ChunkReader] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._arrays_verified: set[str] = set()

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
            _check_sha256(self.where, name, payload, self.commit.files_sha256[name])

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
                _check_sha256(self.where, key, fetched[f"{prefix}{key}"], self.commit.files_sha256.get(key))
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
        if ARRAYS_BY_NAME[name].dtype == "str":
            try:
                return decode_utf8_fixed(values)
            except ValueError as err:
                raise StoreError(f"{self.where}: field {name!r}: {err}; the shard is corrupt, rewrite it") from err
        return values

    def sample_array(self, name: str, local_idx: int) -> np.ndarray:
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


def verify_shard(loc: Location, commit: ShardCommit) -> None:
    """Compare every stored object of a shard with the sha256 in its commit record.

    Raises:
        StoreError: naming the shard and the first file that is missing or differs.
    """
    where = f"{shard_stem(commit.shard_idx)} ({commit.data_path})"
    contents = read_many(loc, [f"{commit.data_path}/{name}" for name in commit.files_sha256])
    for name, expected in sorted(commit.files_sha256.items()):
        payload = contents.get(f"{commit.data_path}/{name}")
        if payload is None:
            raise StoreError(f"{where}: stored file {name} is missing; rewrite the shard")
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            raise StoreError(f"{where}: checksum mismatch in {name} (sha256 {actual[:12]}..., commit record says "
                             f"{expected[:12]}...); the shard is corrupt, rewrite it")


class DatasetView:
    """The committed shards of a dataset, read by global sample index (0..num_samples-1).

    Built from one version manifest (unihope.storage.versions), else from the shard commit records (a
    first build in progress): either way only committed shards are visible, and a view keeps
    reading its version however many newer ones are committed meanwhile.
    """

    def __init__(self, loc: Location, shards: tuple[ShardCommit, ...], manifest: Manifest | None, verify: str) -> None:
        self.loc = loc
        self.shards = shards
        self.manifest = manifest
        self.verify_mode = verify
        counts = np.array([commit.num_samples for commit in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: OrderedDict[int, _ShardReader] = OrderedDict()
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

    def shard(self, position: int) -> _ShardReader:
        """The opened shard at `position` (LRU-cached; verified on first open when verify='lazy')."""
        reader = self._open.get(position)
        if reader is not None:
            self._open.move_to_end(position)
            return reader
        commit = self.shards[position]
        # lazy: each object is checked on first read; a shard verified whole (eager) is not checked again
        must_verify = self.verify_mode == "lazy" and commit.shard_idx not in self._verified
        reader = _ShardReader(self.loc, commit, verify=must_verify)
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
        if ARRAYS_BY_NAME[name].chunking != CHUNKING_COLUMN:
            raise ValueError(f"{name!r} is a per-sample array; read it with sample(index, names=[{name!r}])")
        parts = [_ShardReader(self.loc, commit, verify=self.verify_mode == "lazy").column(name)
                 for commit in self.shards] \
            if len(self.shards) > MAX_OPEN_SHARDS else [self.shard(p).column(name) for p in range(len(self.shards))]
        if not parts:
            return np.zeros((0, *ARRAYS_BY_NAME[name].shape), dtype=object)
        return np.concatenate(parts)

    def sample(self, index: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Stored values of one sample (numpy; strings as str)."""
        position, local_idx = self.locate_index(index)
        reader = self.shard(position)
        names = names or tuple(spec.name for spec in ARRAYS)
        reader.load_columns(tuple(name for name in names if ARRAYS_BY_NAME[name].chunking == CHUNKING_COLUMN))
        out: dict[str, np.ndarray] = {}
        for name in names:
            if ARRAYS_BY_NAME[name].chunking == CHUNKING_SAMPLE:
                out[name] = reader.sample_array(name, local_idx)
            else:
                value = reader.column(name)[local_idx]
                out[name] = str(value) if ARRAYS_BY_NAME[name].dtype == "str" else value
        return out

    def record(self, index: int) -> tuple[AnnotatedFrame, DeocclusionResult | None]:
        """Rebuild the records that were written for one sample."""
        v = self.sample(index)
        record = FrameRecord(
            sample_key=v["sample_key"], dataset=v["dataset"], sequence_key=v["sequence_key"], serial=v["serial"],
            frame_idx=int(v["frame_idx"]), image_path=v["image_path"], depth_path=v["depth_path"],
            image_size_wh=tuple(int(x) for x in v["image_size_wh"]), K=v["K_full"],
            hand_side=_SIDE_BY_CODE[int(v["hand_side"])], mano_pose=v["mano_pose"], mano_betas=v["mano_betas"],
            mano_trans=v["mano_trans"], joints_3d=v["joints_3d"],
            joints_2d=v["joints_2d_full"],
            object_id=int(v["object_id"]), object_name=v["object_name"], object_mesh_path=v["object_mesh_path"],
            object_pose=v["object_pose"],
        )
        grasp = GraspLabel(sample_key=v["sample_key"], rre_deg=float(v["rre_deg"]), rte_m=float(v["rte_m"]),
                           is_grasping=bool(v["grasp"]), reference_key=v["grasp_reference_key"],
                           source=v["grasp_source"])
        crop = Crop(size_px=int(v["image"].shape[0]), affine=v["crop_affine"], K=v["K"], box_xyxy=v["crop_box_xyxy"])
        frame = AnnotatedFrame(
            frame=record, grasp=grasp, crop=crop, image=v["image"], mask_hand=v["mask_hand"],
            mask_hand_visible=v["mask_hand_visible"], mask_object=v["mask_object"], depth_hand=v["depth_hand"],
            depth_scene=v["depth_scene"], hand_parts=v["hand_parts"], visibility=float(v["visibility"]),
            occlusion_ratio=float(v["occlusion_ratio"]), occlusion_bin=int(v["occlusion_bin"]),
            finger_visibility=v["finger_visibility"], joints_2d=v["joints_2d"],
            object_keypoints_2d=v["object_keypoints_2d"], seg_map=v["seg_map"], dense_map=v["dense_map"],
            relative_depth_map=v["relative_depth_map"],
        )
        if not bool(v["has_deocclusion"]):
            return frame, None
        num = int(v["num_beta_candidates"])
        result = DeocclusionResult(
            sample_key=v["sample_key"], image_deoccluded=v["image_deoccluded"], inpaint_mask=v["inpaint_mask"],
            beta=float(v["beta"]), candidate_betas=v["candidate_betas"][:num].copy(),
            candidate_scores=v["candidate_scores"][:num].copy(), original_score=float(v["original_score"]),
            deocclusion_score=float(v["deocclusion_score"]), keep=bool(v["keep"]), reason=v["deocclusion_reason"],
            backend=v["deocclusion_backend"],
        )
        return frame, result

    def verify(self) -> None:
        """Check every committed shard's checksums and fields now.

        Raises:
            StoreError: naming the first bad shard.
        """
        for position, commit in enumerate(self.shards):
            verify_shard(self.loc, commit)
            self._verified.add(commit.shard_idx)
            reader = self.shard(position)
            for spec in ARRAYS:
                reader.array(spec.name)

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


def open_dataset(
    url: str | os.PathLike, storage_options: dict | None = None, verify: str = "lazy", version: str | None = None
) -> DatasetView:
    """Open one version of a dataset (the newest by default).

    Args:
        url: dataset root, a local path or an fsspec URL.
        storage_options: fsspec options (e.g. S3 endpoint and credentials).
        verify: "lazy" checks a shard's sha256 checksums when it is first read, "eager" checks all
            shards now, "none" trusts the store.
        version: a version id (or a unique prefix of one); None = the newest committed version, or
            the committed shards of a first build still in progress when there is none yet.

    Returns:
        A DatasetView over the version's shards; `view.version_id` names it ("" for a build in progress).

    Raises:
        ValueError: on an unknown verify mode.
        StoreError: on an unknown schema version, a missing version, a version manifest that is
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
        for commit in shards:
            check_schema_version(commit.schema_version, f"{loc.url}/{commit_path(commit.shard_idx)}")
    view = DatasetView(loc, shards, manifest, verify)
    if verify == "eager":
        view.verify()
    return view


@dataclass(frozen=True, slots=True)
class _Selection:
    """What a PairedDataset shows: global indices into the view, and their shard offsets."""

    indices: np.ndarray  # (N,) int64 global sample indices


class PairedDataset(torch.utils.data.Dataset):
    """Occluded / de-occluded pairs with identical augmentation, as dicts of tensors (unihope.storage.schema.SAMPLE_KEYS).

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
        val_fraction: float | None = None,
        storage_options: dict | None = None,
        verify: str = "lazy",
        version: str | None = None,
    ) -> None:
        """Select samples of one version of a dataset.

        Args:
            url: dataset root (path or fsspec URL).
            split: "all", "train" or "val" (by a hash of the sequence key).
            keep_only: only samples whose de-occluded pair was kept.
            max_visibility: only samples with visibility <= this (occluded ones), None = all.
            augment: random augmentation ranges, None = no augmentation.
            seed: augmentation seed.
            val_fraction: share of sequences in "val"; None = the value the dataset was built with
                (StorageConfig.val_fraction, default 0.1).
            storage_options: fsspec options for URLs.
            verify: checksum mode for shard reads (see open_dataset).
            version: dataset version id (or unique prefix); None = the newest. Every process
                (DataLoader workers too, whenever they start) reads this version.

        Raises:
            ValueError: on an unknown split or out-of-range fractions.
            StoreError: on a missing version or a damaged store.
        """
        # 1. Check inputs
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if max_visibility is not None and not 0.0 <= max_visibility <= 1.0:
            raise ValueError(f"max_visibility must be in [0, 1] or None, got {max_visibility}")
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        self.augment = augment
        self.seed = seed
        self.verify = verify
        self.epoch = 0

        # 2. Filters from the small columns (read once here, never pickled)
        view = open_dataset(self.url, self.storage_options, verify=verify, version=version)
        self.version_id = view.version_id
        if val_fraction is None:
            val_fraction = DEFAULT_VAL_FRACTION
            if view.shards:
                stored = view.shard(0).attrs.get("storage_config", {})
                val_fraction = float(stored.get("val_fraction", DEFAULT_VAL_FRACTION))
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        selected = np.ones(view.num_samples, dtype=bool)
        if keep_only:
            selected &= view.column("keep").astype(bool)
        if max_visibility is not None:
            selected &= view.column("visibility") <= max_visibility
        if split != "all":
            sequences = view.column("sequence_key").tolist()
            split_by_sequence = assign_splits(sequences, val_fraction)
            selected &= np.array([split_by_sequence[seq] == split for seq in sequences], dtype=bool)
        self._selection = _Selection(np.flatnonzero(selected).astype(np.int64))
        # workers re-read the commit records; (index, digest) pins them to the shards filtered here
        self._shard_ids = tuple((commit.shard_idx, commit.digest_sha256) for commit in view.shards)
        view.close()
        self._view: DatasetView | None = None

    def __len__(self) -> int:
        return len(self._selection.indices)

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
            view = open_dataset(self.url, self.storage_options, verify="none", version=self.version_id or None)
            by_idx = {commit.shard_idx: commit for commit in view.shards}
            shards = []
            for shard_idx, digest in self._shard_ids:
                commit = by_idx.get(shard_idx)
                if commit is None or commit.digest_sha256 != digest:
                    raise StoreError(f"{self.url}: {shard_stem(shard_idx)} changed or vanished since this "
                                     f"PairedDataset was created; create it again")
                shards.append(commit)
            self._view = DatasetView(view.loc, tuple(shards), view.manifest, self.verify)
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

        # 2. Columns of every shard the batch touches, fetched once
        global_idx = self._selection.indices[np.array([index for index, _ in pairs], dtype=np.int64)]
        positions = np.searchsorted(view.offsets, global_idx, side="right") - 1
        local_idx = global_idx - view.offsets[positions]
        for position in np.unique(positions).tolist():
            view.shard(position).load_columns(_PAIR_COLUMNS)

        # 3. Per sample: read, draw, augment in uint8 (the same per-sample math whatever the batch), labels
        #    written straight into the batch buffer
        batch: _SharedBatch | None = None
        out: dict[str, np.ndarray] = {}  # numpy views of the batch's tensors, written in place
        pairs_u8 = masks = None  # (B, 2, S, S, 3) uint8 occluded / de-occluded, (B, 2, S, S) bool hand / object
        sample_keys: list[str] = []
        for row, ((index, epoch), position, local) in enumerate(zip(pairs, positions.tolist(), local_idx.tolist())):
            shard = view.shard(position)
            raw = {name: shard.sample_array(name, local) for name in _PAIR_SAMPLE_ARRAYS}
            raw.update({name: shard.column(name)[local] for name in _PAIR_COLUMNS})
            raw["sample_key"] = str(raw["sample_key"])
            S = raw["image"].shape[0]
            if batch is None:
                batch, out = _SharedBatch.allocate({
                    "image": (np.float32, (num_samples, 3, S, S)),
                    "image_deoccluded": (np.float32, (num_samples, 3, S, S)),
                    "mask_hand": (np.float32, (num_samples, S, S)),
                    "mask_object": (np.float32, (num_samples, S, S)),
                    **{name: (dtype, (num_samples, *shape)) for name, (dtype, shape) in _PAIR_LABELS.items()},
                })
                pairs_u8 = np.empty((num_samples, 2, S, S, 3), np.uint8)
                masks = np.empty((num_samples, 2, S, S), bool)
            elif pairs_u8.shape[2] != S:
                raise ValueError(f"a batch needs crops of one size, got {pairs_u8.shape[2]} and {S} px "
                                 f"({raw['sample_key']})")
            if self.augment is None:
                params = IDENTITY
            else:
                rng = np.random.default_rng(_seed_for(self.seed, epoch, raw["sample_key"]))
                params = sample_params(self.augment, rng, S)
            aug = augment_pair_u8(raw, params)
            pairs_u8[row] = aug["pair"]
            masks[row, 0], masks[row, 1] = aug["mask_hand"], aug["mask_object"]
            for name in ("joints_2d", "joints_3d", "mano_pose", "mano_trans", "object_keypoints_2d", "object_pose",
                         "K"):
                out[name][row] = aug[name]  # float64 -> float32 rounds like np.asarray(x, np.float32)
            out["mano_betas"][row] = raw["mano_betas"]
            out["has_pair"][row] = bool(raw["keep"])
            out["hand_side"][row] = int(raw["hand_side"])
            out["grasp"][row] = int(bool(raw["grasp"]))
            out["object_id"][row] = int(raw["object_id"])
            out["visibility"][row] = float(raw["visibility"])
            out["index"][row] = index
            sample_keys.append(raw["sample_key"])

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
        return batch.finish(key_order=SAMPLE_KEYS, sample_key=sample_keys)




class _SharedBatch(dict):
    """A collated batch whose tensors are views of one byte buffer.

    Pickling sends the buffer once (in a DataLoader worker it lives in shared memory, so that is one
    file-descriptor handover) and rebuilds a plain dict of views on the other side. Pickling each
    tensor instead costs a socket connection and an fd transfer per tensor (~20 per batch), which
    measurably loaded the main process. A value replaced after collation is pickled normally.
    The tensors are torch views of the buffer (never torch.from_numpy of numpy views): pickling a
    buffer that is not yet in shared memory moves its storage there, and only torch views follow.
    """

    __slots__ = ("_buffer", "_layout", "_views")

    @classmethod
    def allocate(cls, fields: dict[str, tuple[type, tuple[int, ...]]]) -> tuple[_SharedBatch, dict[str, np.ndarray]]:
        """Empty tensors for `fields` (name -> (numpy dtype, shape)) carved from one buffer, and their numpy views."""
        layout, offset = [], 0
        for name, (dtype, shape) in fields.items():
            layout.append((name, offset, dtype, shape))
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            offset += -(-nbytes // _BATCH_ALIGN_BYTES) * _BATCH_ALIGN_BYTES
        if torch.utils.data.get_worker_info() is not None:
            # what default_collate does in a worker: allocate in shared memory rather than copy there later
            buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(offset))
        else:
            buffer = torch.empty(offset, dtype=torch.uint8)
        batch = cls(_views_of(buffer, layout))
        batch._buffer, batch._layout, batch._views = buffer, tuple(layout), dict(batch)
        return batch, {name: tensor.numpy() for name, tensor in batch.items()}

    def finish(self, key_order: tuple[str, ...], **extra) -> _SharedBatch:
        """Add the non-tensor fields and put the keys in `key_order`."""
        items = {**self, **extra}
        self.clear()
        self.update((key, items[key]) for key in key_order)
        return self

    def __reduce__(self):
        packed = tuple(entry for entry in self._layout if self.get(entry[0]) is self._views[entry[0]])
        packed_names = {entry[0] for entry in packed}
        others = {key: value for key, value in self.items() if key not in packed_names}
        return _rebuild_batch, (self._buffer, packed, others, tuple(self))


def _views_of(buffer: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    return {name: buffer[offset:offset + math.prod(shape) * np.dtype(dtype).itemsize].view(_TORCH_DTYPES[dtype])
            .view(shape) for name, offset, dtype, shape in layout}


def _rebuild_batch(buffer: torch.Tensor, layout, others: dict, key_order: tuple[str, ...]) -> dict:
    """Unpickle a _SharedBatch as a plain dict of views of its (shared-memory) buffer."""
    items = {**_views_of(buffer, layout), **others}
    return {key: items[key] for key in key_order}


_TORCH_DTYPES = {np.float32: torch.float32, np.bool_: torch.bool, np.int64: torch.int64}


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) so workers seed augmentation per epoch; reshuffles (seeded) each epoch.

    The order of an epoch depends only on (seed, epoch): `np.random.default_rng([seed, epoch])`,
    so a run resumed mid-epoch (`epoch`, `skip_samples`) continues with the very same items.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, epoch: int = 0, skip_samples: int = 0) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.skip_samples = skip_samples  # of the first epoch iterated only

    def __len__(self) -> int:
        return self.num_samples - self.skip_samples

    def __iter__(self):
        epoch, skip = self.epoch, self.skip_samples
        self.epoch += 1
        self.skip_samples = 0
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        for index in order[skip:].tolist():
            yield index, epoch


class _PerSampleBatches(torch.utils.data.Dataset):
    """Batches of a dataset that only reads single samples (e.g. an in-memory test double): the
    worker collates them with default_collate. PairedDataset never goes through here."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.is_augmented = getattr(dataset, "augment", None) is not None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, items: list[tuple[int, int]]) -> dict:
        # (index, epoch) seeds an augmented sample; an unaugmented one is indexed plainly
        return torch.utils.data.default_collate(
            [self.dataset[item if self.is_augmented else item[0]] for item in items])


def _worker_init(_worker_id: int) -> None:
    """One thread per worker for OpenCV and torch: the workers are the parallelism."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(
    dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
    drop_last: bool = False, epoch: int = 0, skip_batches: int = 0, num_shards: int = 1, shard_index: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a PairedDataset: spawn-started workers that open the store lazily.

    Args:
        dataset: the PairedDataset (or any dataset whose `reads_batches` is True); another dataset
            is read sample by sample and collated in the worker.
        batch_size: samples per batch.
        num_workers: worker processes (0 = in the main process).
        shuffle: reshuffle every epoch (seeded by `seed` and the epoch).
        seed: shuffle seed.
        drop_last: drop the last incomplete batch.
        epoch: the first epoch the loader yields (later iterations yield epoch + 1, ...).
        skip_batches: batches of the first epoch to leave out (a run resumed mid-epoch).
        num_shards, shard_index: data-parallel training: every batch of `batch_size` is cut into
            `num_shards` contiguous slices (`shard_slice`) and this loader yields slice `shard_index`;
            an empty slice (a last batch shorter than num_shards) yields the batch's first sample.

    Returns:
        A DataLoader yielding dicts of batched tensors (`sample_key` as a list of str).

    Raises:
        ValueError: on a non-positive batch size, negative worker count, epoch or skip.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    if epoch < 0 or not 0 <= skip_batches * batch_size <= len(dataset):
        raise ValueError(f"epoch must be >= 0 and skip_batches within the epoch, got {epoch} and {skip_batches}")
    # each worker builds a whole collated batch (PairedDataset.load_batch) and sends it as one buffer
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch,
                           skip_samples=skip_batches * batch_size)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards), got {shard_index} of {num_shards}")
    if num_shards > 1:
        batches = _ShardedBatches(batches, num_shards, shard_index)
    return torch.utils.data.DataLoader(
        dataset if getattr(dataset, "reads_batches", False) else _PerSampleBatches(dataset),
        batch_size=None,
        sampler=batches,
        collate_fn=_collated,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        pin_memory=False,
    )


def shard_slice(num_items: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """[start, stop) of shard `shard_index` when `num_items` are cut into `num_shards` contiguous slices
    whose sizes differ by at most one (the first `num_items % num_shards` are one longer)."""
    base, extra = divmod(num_items, num_shards)
    start = shard_index * base + min(shard_index, extra)
    return start, start + base + (1 if shard_index < extra else 0)


class _ShardedBatches:
    """One process's slice of every batch of a BatchSampler (make_loader's num_shards / shard_index)."""

    def __init__(self, batches, num_shards: int, shard_index: int) -> None:
        self.batches, self.num_shards, self.shard_index = batches, num_shards, shard_index

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            start, stop = shard_slice(len(batch), self.num_shards, self.shard_index)
            yield batch[start:stop] if stop > start else batch[:1]  # a placeholder keeps the ranks in step


def _collated(batch: dict) -> dict:
    """The loader's collate_fn: PairedDataset already returns a collated batch for a list of items."""
    return batch
