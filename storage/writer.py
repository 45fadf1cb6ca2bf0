"""Pack annotated + de-occluded frames into committed Zarr v3 shards, and finalize a dataset.

One writer per shard: every shard is its own Zarr group, written into a fresh attempt folder and
committed by writing `shards/shard-XXXXX.commit.json` last (temp file + fsync + `os.replace` on
local disk, a single PUT on object stores). A killed writer leaves at most an uncommitted folder
that readers never look at; `finalize` assembles `manifest.json` from the commit records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import TYPE_CHECKING

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from unihope.storage.codes import decode_utf8_fixed, encode_utf8_fixed
from unihope.storage.io import Location, locate, remove_tree, write_bytes_atomic
from unihope.storage.manifest import (
    SHARDS_DIR,
    SKIPS_NAME,
    StoreError,
    build_manifest,
    chunk_key_of,
    check_schema_version,
    commit_path,
    files_digest,
    keys_sha256,
    list_commits,
    read_commit,
    shard_stem,
    utc_now,
)
from unihope.storage.records import build_columns
from unihope.storage.schema import (
    CHUNKING_SAMPLE,
    SCHEMA,
    SCHEMA_VERSION,
    AnnotatedFrame,
    DatasetAttrs,
    DeocclusionResult,
    Manifest,
    RecordSchema,
    ShardCommit,
    Skip,
)
from unihope.storage.versions import commit_version, referenced_folders

if TYPE_CHECKING:  # storage/ does not import the pipeline at run time
    from unihope.config import StorageConfig

GROUP_ATTRS_KEY = "unihope"
FSYNC_THREADS = 16
# Every stored object is written, even an all-zero one: a missing object then always means a damaged
# shard (inside a shard object, an all-zero sample is an empty index entry, as zarr-python writes it).
_WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
_BLOSC_SHUFFLE_BY_DTYPE = {"bool": BloscShuffle.bitshuffle, "uint8": BloscShuffle.noshuffle}
_EMPTY_INNER_CHUNK = np.iinfo(np.uint64).max  # sharding index entry of an inner chunk that is all fill value
_NUMCODECS_SHUFFLE = {BloscShuffle.noshuffle: numcodecs.Blosc.NOSHUFFLE, BloscShuffle.shuffle: numcodecs.Blosc.SHUFFLE,
                      BloscShuffle.bitshuffle: numcodecs.Blosc.BITSHUFFLE}


def code_version() -> str:
    """Version of the installed package (the lead may append a git revision in attrs)."""
    try:
        return metadata.version("unihope-datagen")
    except metadata.PackageNotFoundError:
        return "unknown"


def _as_attrs(attrs: DatasetAttrs | dict) -> DatasetAttrs:
    if isinstance(attrs, DatasetAttrs):
        return attrs
    if not isinstance(attrs, dict):
        raise ValueError(f"attrs must be a DatasetAttrs or a dict, got {type(attrs).__name__}")
    unknown = set(attrs) - set(DatasetAttrs.__slots__)
    if unknown:
        raise ValueError(f"attrs has unknown keys {sorted(unknown)}; allowed: {list(DatasetAttrs.__slots__)}")
    return DatasetAttrs(**attrs)


def input_fingerprint(columns: dict[str, np.ndarray], attrs: DatasetAttrs, cfg: "StorageConfig",
                      schema_version: int = SCHEMA_VERSION) -> str:
    """sha256 over the schema version, configs and every array's dtype, shape and bytes."""
    digest = hashlib.sha256()
    header = {"schema_version": schema_version, "storage": cfg.model_dump(mode="json"), "attrs": attrs.to_json()}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, column in columns.items():
        digest.update(f"|{name}|{column.dtype}|{column.shape}|".encode())
        if column.dtype.kind == "T":
            digest.update("\x00".join(column.tolist()).encode())
        else:
            digest.update(np.ascontiguousarray(column).tobytes())
    return digest.hexdigest()


def encode_group(columns: dict[str, np.ndarray], group_attrs: dict, cfg: "StorageConfig",
                 schema: RecordSchema = SCHEMA) -> dict[str, bytes]:
    """Encode one shard group in memory: object key -> bytes, exactly as Zarr stores them.

    Sample arrays: sharding codec, whole shard = one object, inner chunk = one sample, blosc.
    Columns: one zstd chunk. Strings: uint8 UTF-8 code units. Every array carries `dimension_names`.
    The group's zarr.json also carries consolidated metadata so our reader opens all arrays with
    one request (other readers ignore it; ours works without it).
    """
    objects: dict = {}
    shard_objects: dict[str, bytes] = {}
    group = zarr.open_group(zarr.storage.MemoryStore(objects), mode="w", zarr_format=3)
    group.attrs[GROUP_ATTRS_KEY] = group_attrs
    num_samples = len(columns["sample_key"])
    for spec in schema.arrays:
        column = columns[spec.name]
        if spec.dtype == "str":  # a Zarr v3 core type: uint8 UTF-8 code units (unihope.storage.codes)
            column = encode_utf8_fixed(column, spec.width_bytes, spec.name)
        common = {"shape": column.shape, "dtype": column.dtype, "dimension_names": spec.dimension_names,
                  "attributes": {"units": spec.units, "description": spec.description}, "config": _WRITE_EVERY_CHUNK}
        if spec.chunking == CHUNKING_SAMPLE:
            shuffle = _BLOSC_SHUFFLE_BY_DTYPE.get(spec.dtype, BloscShuffle.shuffle)
            array = group.create_array(
                spec.name, fill_value=0, chunks=(1, *column.shape[1:]), shards=column.shape,
                compressors=BloscCodec(cname=cfg.image_codec, clevel=cfg.compression_level, shuffle=shuffle), **common,
            )
            # Zarr writes the array's metadata; the shard object itself is encoded directly (same bytes, tested):
            # zarr-python's codec pipeline spends most of a shard's encode on per-inner-chunk overhead
            # (docs/performance/storage.md, direct shard encoder).
            shard_objects[chunk_key_of(spec.name, column.ndim)] = encode_blosc_shard(
                column, cname=cfg.image_codec, clevel=cfg.compression_level, shuffle=shuffle)
            continue
        else:
            array = group.create_array(
                spec.name, chunks=(num_samples, *column.shape[1:]), compressors=ZstdCodec(level=cfg.compression_level),
                **common,
            )
        array[...] = column
    with warnings.catch_warnings():  # a zarr-python extension: the reader uses it when present (one request), never needs it
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(group.store)
    return {**{key: buffer.to_bytes() for key, buffer in objects.items()}, **shard_objects}


def encode_blosc_shard(column: np.ndarray, cname: str, clevel: int, shuffle: BloscShuffle) -> bytes:
    """The shard object Zarr's sharding codec writes for `column` with one inner chunk per sample.

    Layout (Zarr v3 `sharding_indexed`, index at the end): the Blosc-compressed bytes of every
    sample, in order, then the index ((offset, nbytes) uint64 little-endian per inner chunk) and
    the index's crc32c (uint32 little-endian). A sample whose values all equal the fill value (0)
    stores no bytes and an index entry of 2**64 - 1 twice, as zarr-python writes it.
    """
    codec = numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=_NUMCODECS_SHUFFLE[shuffle], blocksize=0)
    pieces = []
    index = np.empty((len(column), 2), dtype="<u8")
    offset = 0
    for row, values in enumerate(column):
        if not np.any(values != 0):  # all fill value: zarr stores no inner chunk, the index marks it empty
            index[row] = (_EMPTY_INNER_CHUNK, _EMPTY_INNER_CHUNK)
            continue
        piece = codec.encode(np.ascontiguousarray(values))
        pieces.append(piece)
        index[row] = (offset, len(piece))
        offset += len(piece)
    index_bytes = index.tobytes()
    return b"".join(pieces) + index_bytes + np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()


def _put_objects(loc: Location, data_path: str, objects: dict[str, bytes]) -> None:
    """Store encoded objects under data_path: durable files on disk, one concurrent batch of PUTs elsewhere.

    On disk every file and folder is fsynced before the caller commits. The fsyncs run on a thread
    pool: the file system then batches them into a few journal commits, far faster than fsyncing a
    shard's files one after another (docs/performance/storage.md).
    """
    if not loc.is_local:
        loc.fs.pipe({loc.path(f"{data_path}/{key}"): payload for key, payload in objects.items()})
        return
    folders = set()
    fds = []
    try:
        for key, payload in objects.items():
            path = loc.path(f"{data_path}/{key}")
            folder = os.path.dirname(path)
            if folder not in folders:
                os.makedirs(folder, exist_ok=True)
                folders.add(folder)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds.append(fd)
            with memoryview(payload) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
        for folder in folders:
            fds.append(os.open(folder, os.O_RDONLY))
        with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as pool:
            list(pool.map(os.fsync, fds))
    finally:
        for fd in fds:
            os.close(fd)


def write_shard(
    url: str | os.PathLike,
    shard_idx: int,
    annotated: list[AnnotatedFrame],
    results: list[DeocclusionResult | None],
    attrs: DatasetAttrs | dict,
    cfg: "StorageConfig",
    storage_options: dict | None = None,
    schema: RecordSchema = SCHEMA,
) -> ShardCommit:
    """Write and commit one shard; rerunning with the same inputs is a no-op.

    Exactly one process may write a given shard index at a time (different indices in parallel are fine).

    Args:
        url: dataset root, a local path or an fsspec URL (`memory://...`, `s3://bucket/prefix`).
        shard_idx: index of this shard (>= 0); the caller assigns disjoint frame ranges to indices.
        annotated: frames to store, in order.
        results: one DeocclusionResult per frame, or None where the frame has none (stored with keep=False).
        attrs: dataset attributes stored with the shard (name, source, config, config hash, code version).
        cfg: StorageConfig (codec, level).
        storage_options: fsspec options for URLs (e.g. S3 endpoint and credentials).
        schema: the records and arrays to store (unihope.storage.schema.SCHEMA; a test passes a copy with
            one more label).

    Returns:
        The shard's commit record (the existing one when the inputs are unchanged).

    Raises:
        ValueError: on invalid inputs (see `build_columns`) or a negative shard index.
    """
    # 1. Check inputs and build the columns
    if shard_idx < 0:
        raise ValueError(f"shard_idx must be >= 0, got {shard_idx}")
    attrs = _as_attrs(attrs)
    if not attrs.code_version:
        attrs = dataclasses.replace(attrs, code_version=code_version())
    columns = build_columns(annotated, results, schema)
    loc = locate(url, storage_options)
    fingerprint = input_fingerprint(columns, attrs, cfg, schema.version)

    # 2. Resume: an identical committed shard is left alone
    previous = read_commit(loc, shard_idx)
    if (previous is not None and previous.input_fingerprint == fingerprint
            and previous.schema_version == schema.version
            and loc.fs.exists(loc.path(f"{previous.data_path}/zarr.json"))):
        return previous

    # 3. Write the arrays into a fresh attempt folder nobody reads
    attempt = uuid.uuid4().hex[:12]
    final_path = f"{SHARDS_DIR}/{shard_stem(shard_idx)}.{attempt}"
    write_path = f"{SHARDS_DIR}/{shard_stem(shard_idx)}.incomplete-{attempt}" if loc.is_local else final_path
    crop_size_px = int(columns["image"].shape[1])
    group_attrs = {
        "schema_version": schema.version,
        "shard_idx": shard_idx,
        "num_samples": len(annotated),
        "crop_size_px": crop_size_px,
        "feature_size_px": int(columns["seg_map"].shape[1]),
        "storage_config": cfg.model_dump(mode="json"),
        "storage_config_hash": cfg.config_hash(),
        "dataset": attrs.to_json(),
    }
    objects = encode_group(columns, group_attrs, cfg, schema)
    try:
        _put_objects(loc, write_path, objects)
        if write_path != final_path:  # local disk: a directory rename is atomic
            os.rename(loc.path(write_path), loc.path(final_path))
    except BaseException:
        # e.g. a full disk: the attempt's partial folder is garbage, remove it now rather than at finalize
        remove_tree(loc, write_path)
        raise

    # 4. Checksums of the stored bytes (hashed from memory), then the commit record, written last
    files_sha256 = {key: hashlib.sha256(payload).hexdigest() for key, payload in objects.items()}
    num_bytes = sum(len(payload) for payload in objects.values())
    sample_keys = columns["sample_key"].tolist()
    commit = ShardCommit(
        shard_idx=shard_idx, data_path=final_path, num_samples=len(annotated),
        first_key=sample_keys[0], last_key=sample_keys[-1], keys_sha256=keys_sha256(sample_keys),
        input_fingerprint=fingerprint, files_sha256=files_sha256, digest_sha256=files_digest(files_sha256),
        num_bytes=num_bytes, crop_size_px=crop_size_px, schema_version=schema.version, created_utc=utc_now(),
    )
    write_bytes_atomic(loc, commit_path(shard_idx), json.dumps(commit.to_json(), indent=1).encode())

    # 5. A superseded attempt (a rewrite with other inputs) stays: a committed version may still
    #    reference it. `finalize` removes it when none does, `gc` once its versions are gone.
    return commit


def finalize(
    url: str | os.PathLike,
    attrs: DatasetAttrs | dict,
    skips: list[Skip],
    storage_options: dict | None = None,
    remove_orphans: bool = True,
) -> Manifest:
    """Commit the shard commit records as a dataset version; write skips.jsonl and root attrs.

    The version manifest (`versions/<id>.json`) is written once, then the newest-version pointer
    `manifest.json`; an unchanged rebuild commits no new version. Run it once all writers are done
    (with `remove_orphans`, attempt folders that neither a commit record nor a version references are deleted).

    Args:
        url: dataset root (path or fsspec URL).
        attrs: dataset attributes for the root group and the manifest.
        skips: every Skip of the build (all stages).
        storage_options: fsspec options for URLs.
        remove_orphans: delete shard folders that no commit record and no version names (killed or
            superseded writers).

    Returns:
        The committed version.

    Raises:
        StoreError: on a commit record with another schema version or a sample key in two shards.
    """
    # 1. Check inputs
    attrs = _as_attrs(attrs)
    if not attrs.code_version:
        attrs = dataclasses.replace(attrs, code_version=code_version())
    loc = locate(url, storage_options)
    commits = list_commits(loc)
    for commit in commits:
        check_schema_version(commit.schema_version, commit_path(commit.shard_idx))

    # 2. No sample may be in two shards (a frame assigned to two shard indices)
    owner: dict[str, int] = {}
    for commit in commits:
        group = zarr.open_group(loc.zarr_store(commit.data_path, read_only=True), mode="r")
        for key in decode_utf8_fixed(group["sample_key"][...]).tolist():
            if key in owner:
                raise StoreError(f"sample {key!r} is in {shard_stem(owner[key])} and {shard_stem(commit.shard_idx)}; "
                                 f"each frame must go to exactly one shard index")
            owner[key] = commit.shard_idx

    # 3. Remove folders of killed or superseded writers that no version references
    if remove_orphans and loc.fs.exists(loc.path(SHARDS_DIR)):
        committed = referenced_folders(loc)
        for path in loc.fs.ls(loc.path(SHARDS_DIR), detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            relative = f"{SHARDS_DIR}/{name}"
            if not name.endswith(".commit.json") and relative not in committed:
                remove_tree(loc, relative)

    # 4. skips.jsonl and the root group's attributes
    skips_payload = "".join(json.dumps(skip.to_json()) + "\n" for skip in skips)
    write_bytes_atomic(loc, SKIPS_NAME, skips_payload.encode())
    root = zarr.open_group(loc.zarr_store("", read_only=False), mode="a", zarr_format=3)
    root.attrs[GROUP_ATTRS_KEY] = {"schema_version": SCHEMA_VERSION, "dataset": attrs.to_json()}

    # 5. The version and the newest-version pointer, last
    manifest = build_manifest(attrs, commits, dict(Counter(skip.reason.value for skip in skips)))
    return commit_version(loc, manifest)
