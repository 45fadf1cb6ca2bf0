"""The one work-file format: intermediate files that tasks pass by path, one atomic .npz each, never a pickle.

Annotated batches (`save_batch`, annotate -> deocclude -> pack) and named groups of records
(`save_records`: grasp parts, de-occlusion results) share one container and one encoder.

The file holds a JSON header (scalar fields, nested record structure, which results are None) and
every array field stacked over the batch when shapes agree (else one entry per record), each
Blosc/lz4-compressed (Blosc reads the codec from each buffer, so older zstd files still load).
AnnotatedFrame (with its FrameRecord, GraspLabel and Crop) and
DeocclusionResult round-trip exactly: same values, dtypes, shapes and Python/numpy scalar types
(NaN included). Files are read with `allow_pickle=False` and records are rebuilt only as the schema
types listed here, so a file planted in the work folder (a pickle, an object array) is refused
with a ValueError and never runs code.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import zipfile

import numcodecs
import numpy as np

from unihope.storage.io import locate, read_bytes, write_bytes_atomic
from unihope.storage.schema import AnnotatedFrame, Crop, DeocclusionResult, FrameRecord, GraspLabel, Skip, SkipReason

BATCH_FORMAT_VERSION = 1
BATCH_COMPRESSION_LEVEL = 1
# lz4, not zstd: these files live minutes and are written once and read twice per build, so saving
# and loading time matters more than their size (lz4-1 vs zstd-1: docs/performance/pipeline.md).
_META_KEY = "__meta__"
RECORDS_FORMAT_VERSION = 1
_RECORDS_KIND = "records"
_RECORD_TYPES = {cls.__name__: cls for cls in (AnnotatedFrame, FrameRecord, GraspLabel, Crop, DeocclusionResult, Skip)}
_ENUM_TYPES = {cls.__name__: cls for cls in (SkipReason,)}
_CODEC = numcodecs.Blosc(cname="lz4", clevel=BATCH_COMPRESSION_LEVEL, shuffle=numcodecs.Blosc.SHUFFLE)


def _flatten(record, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """Scalars (JSON-able, with type tags) of a record; its arrays go into `arrays` under dotted paths."""
    if type(record).__name__ not in _RECORD_TYPES:
        raise ValueError(f"save_batch cannot store a {type(record).__name__} (expected one of {sorted(_RECORD_TYPES)})")
    scalars: dict = {"__type__": type(record).__name__}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        path = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            scalars[field.name] = _flatten(value, f"{path}.", arrays)
        elif isinstance(value, np.ndarray):
            arrays[path] = value
            scalars[field.name] = {"__array__": path}
        elif isinstance(value, enum.Enum):  # before str: SkipReason is a str enum
            if type(value).__name__ not in _ENUM_TYPES:
                raise ValueError(f"save_batch: field {path} has unsupported enum type {type(value).__name__}")
            scalars[field.name] = {"__enum__": type(value).__name__, "v": value.value}
        elif isinstance(value, np.generic):
            scalars[field.name] = {"__np__": value.dtype.str, "v": value.item()}
        elif isinstance(value, tuple):
            scalars[field.name] = {"__tuple__": list(value)}
        elif value is None or isinstance(value, (bool, int, float, str)):
            scalars[field.name] = value
        else:
            raise ValueError(f"save_batch: field {path} has unsupported type {type(value).__name__}")
    return scalars


def _unflatten(scalars: dict, arrays: dict[str, np.ndarray]):
    cls = _RECORD_TYPES[scalars["__type__"]]  # KeyError for a type not listed: never built from a name
    kwargs = {}
    for name, value in scalars.items():
        if name == "__type__":
            continue
        if isinstance(value, dict) and "__type__" in value:
            kwargs[name] = _unflatten(value, arrays)
        elif isinstance(value, dict) and "__array__" in value:
            kwargs[name] = arrays[value["__array__"]]
        elif isinstance(value, dict) and "__enum__" in value:
            kwargs[name] = _ENUM_TYPES[value["__enum__"]](value["v"])
        elif isinstance(value, dict) and "__np__" in value:
            kwargs[name] = np.dtype(value["__np__"]).type(value["v"])
        elif isinstance(value, dict) and "__tuple__" in value:
            kwargs[name] = tuple(value["__tuple__"])
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _pack_group(group: str, per_record: list[dict[str, np.ndarray]], entries: dict, layout: dict) -> None:
    """Stack each array path over records when shapes and dtypes agree; compress into `entries`."""
    paths = sorted({path for arrays in per_record for path in arrays})
    for path in paths:
        present = [i for i, arrays in enumerate(per_record) if path in arrays]  # an optional array may be None
        values = [per_record[i][path] for i in present]
        stackable = (len(present) == len(per_record)
                     and len({(v.shape, v.dtype.str) for v in values}) == 1 and values[0].dtype.kind not in "OUT")
        if stackable:
            stacked = np.ascontiguousarray(np.stack(values))
            entries[f"{group}/{path}"] = np.frombuffer(_CODEC.encode(stacked), dtype=np.uint8)
            layout[f"{group}/{path}"] = {"dtype": stacked.dtype.str, "shape": list(stacked.shape), "stacked": True}
        else:
            for i, value in zip(present, values):
                if value.dtype.kind in "OT":
                    raise ValueError(f"save_batch: array {path} has object/string dtype {value.dtype}")
                entries[f"{group}/{path}#{i}"] = np.ascontiguousarray(value)
            layout[f"{group}/{path}"] = {"stacked": False}
            if len(present) != len(per_record):
                layout[f"{group}/{path}"]["present"] = present


def _unpack_group(group: str, num: int, npz, layout: dict) -> list[dict[str, np.ndarray]]:
    per_record: list[dict[str, np.ndarray]] = [{} for _ in range(num)]
    prefix = f"{group}/"
    for key, spec in layout.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):]
        if spec["stacked"]:
            raw = _CODEC.decode(npz[key].tobytes())
            stacked = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
            for i in range(num):
                per_record[i][path] = stacked[i]
        else:
            for i in spec.get("present", range(num)):
                per_record[i][path] = npz[f"{key}#{i}"]
    return per_record


def save_batch(
    path_or_url: str | os.PathLike,
    annotated: list[AnnotatedFrame],
    results: list[DeocclusionResult | None] | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write a batch atomically (readers see no file or the whole file).

    Args:
        path_or_url: target file (`.npz`), local path or fsspec URL.
        annotated: the frames.
        results: one DeocclusionResult (or None) per frame, or None for a batch before de-occlusion.
        storage_options: fsspec options for URLs.

    Returns:
        The path written (as given).

    Raises:
        ValueError: on mismatched lengths or unsupported field types.
    """
    # 1. Check inputs
    if results is not None and len(results) != len(annotated):
        raise ValueError(f"save_batch: {len(results)} results for {len(annotated)} annotated frames")

    # 2. Flatten records into JSON scalars + arrays
    entries: dict[str, np.ndarray] = {}
    layout: dict = {}
    ann_arrays: list[dict[str, np.ndarray]] = []
    ann_scalars = []
    for frame in annotated:
        arrays: dict[str, np.ndarray] = {}
        ann_scalars.append(_flatten(frame, "", arrays))
        ann_arrays.append(arrays)
    _pack_group("annotated", ann_arrays, entries, layout)
    res_scalars: list | None = None
    if results is not None:
        res_arrays = []
        res_scalars = []
        for result in results:
            if result is None:
                res_scalars.append(None)
                continue
            arrays = {}
            res_scalars.append(_flatten(result, "", arrays))
            res_arrays.append(arrays)
        _pack_group("results", res_arrays, entries, layout)

    # 3. One npz, written atomically
    meta = {"version": BATCH_FORMAT_VERSION, "num": len(annotated), "annotated": ann_scalars,
            "results": res_scalars, "layout": layout}
    entries[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    loc = locate(path_or_url, storage_options)
    write_bytes_atomic(loc, "", buffer.getvalue())
    return os.fspath(path_or_url)


def _read_payload(path_or_url: str | os.PathLike, storage_options: dict | None, what: str) -> bytes:
    """The file's bytes (local or fsspec URL); FileNotFoundError naming `what` when it is missing."""
    payload = read_bytes(locate(path_or_url, storage_options), "")
    if payload is None:
        raise FileNotFoundError(f"{what} not found: {path_or_url}")
    return payload


def _open_npz(payload: bytes):
    """(npz, JSON header) of a work file's bytes; never unpickles (the caller turns errors into its message)."""
    npz = np.load(io.BytesIO(payload), allow_pickle=False)
    return npz, json.loads(npz[_META_KEY].tobytes())


def load_batch(
    path_or_url: str | os.PathLike, storage_options: dict | None = None
) -> tuple[list[AnnotatedFrame], list[DeocclusionResult | None] | None]:
    """Read a batch written by `save_batch`.

    Returns:
        (annotated, results); results is None when the batch was saved without them.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not a batch of a known format version.
    """
    payload = _read_payload(path_or_url, storage_options, "batch file")
    try:
        npz, meta = _open_npz(payload)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"{path_or_url}: not a batch file written by unihope.storage.batches.save_batch ({err})") from err
    if meta.get("version") != BATCH_FORMAT_VERSION:
        raise ValueError(f"{path_or_url}: batch format version {meta.get('version')} is not supported "
                         f"(expects {BATCH_FORMAT_VERSION}); rerun the stage that wrote it")
    ann_arrays = _unpack_group("annotated", meta["num"], npz, meta["layout"])
    annotated = [_unflatten(scalars, arrays) for scalars, arrays in zip(meta["annotated"], ann_arrays)]
    if meta["results"] is None:
        return annotated, None
    num_present = sum(r is not None for r in meta["results"])
    res_arrays = iter(_unpack_group("results", num_present, npz, meta["layout"]))
    results = [None if scalars is None else _unflatten(scalars, next(res_arrays)) for scalars in meta["results"]]
    return annotated, results


def save_records(path_or_url: str | os.PathLike, groups: dict[str, list], storage_options: dict | None = None) -> str:
    """Write named groups of schema records (e.g. a grasp part's frames, labels and skips) atomically.

    The same container as `save_batch`: a JSON header under `__meta__` with every scalar field and
    Blosc-compressed arrays stacked per field over each group.

    Args:
        path_or_url: target file (`.npz`), local path or fsspec URL.
        groups: group name -> records, each an instance of a schema type this module lists.
        storage_options: fsspec options for URLs.

    Returns:
        The path written (as given).

    Raises:
        ValueError: on a record of an unsupported type or a field of an unsupported type.
    """
    entries: dict[str, np.ndarray] = {}
    layout: dict = {}
    scalars: dict[str, list] = {}
    for group, records in groups.items():
        if "/" in group:
            raise ValueError(f"save_records: group name {group!r} may not contain '/'")
        per_record: list[dict[str, np.ndarray]] = []
        scalars[group] = []
        for record in records:
            arrays: dict[str, np.ndarray] = {}
            scalars[group].append(_flatten(record, "", arrays))
            per_record.append(arrays)
        _pack_group(group, per_record, entries, layout)
    meta = {"version": RECORDS_FORMAT_VERSION, "kind": _RECORDS_KIND, "groups": scalars, "layout": layout}
    entries[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    write_bytes_atomic(locate(path_or_url, storage_options), "", buffer.getvalue())
    return os.fspath(path_or_url)


def load_records(path_or_url: str | os.PathLike, storage_options: dict | None = None) -> dict[str, list]:
    """Read a file written by `save_records` (never unpickles: `allow_pickle=False`).

    Returns:
        Group name -> records, in the order written.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not a records file of a known version (a pickle, an npz with
            object arrays, an unknown record type, a damaged file).
    """
    payload = _read_payload(path_or_url, storage_options, "work file")
    try:
        npz, meta = _open_npz(payload)
        if not isinstance(meta, dict) or meta.get("kind") != _RECORDS_KIND:
            raise ValueError("no records header")
        if meta.get("version") != RECORDS_FORMAT_VERSION:
            raise ValueError(f"records format version {meta.get('version')} is not supported "
                             f"(expects {RECORDS_FORMAT_VERSION})")
        groups = {}
        for group, group_scalars in meta["groups"].items():
            per_record = _unpack_group(group, len(group_scalars), npz, meta["layout"])
            groups[group] = [_unflatten(scalars, arrays) for scalars, arrays in zip(group_scalars, per_record)]
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path_or_url}: not a work file written by unihope.storage.batches.save_records ({err}); "
                         "delete it and rebuild") from err
    return groups
