"""Records <-> arrays through the schema: stack records into columns, rebuild records from stored values, check a schema.

Every mapping here is read from the schema's table (`ArraySpec.field`, `codec`, `fill`), so a new
array row is written and read back with no edit to this module, the writer or the readers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from unihope.storage.schema import (
    CHUNKING_COLUMN,
    CHUNKING_SAMPLE,
    CODEC_HAND_SIDE,
    CODEC_LENGTH,
    CODEC_PADDED,
    CODEC_PLAIN,
    CODEC_PRESENT,
    CODECS,
    HAND_SIDE_CODES,
    MAX_BETA_CANDIDATES,
    SCHEMA,
    AnnotatedFrame,
    ArraySpec,
    DeocclusionResult,
    RecordSchema,
    SameAs,
)

RESULT = "result"  # field-path prefix of the DeocclusionResult
_SIDE_BY_CODE = {code: side for side, code in HAND_SIDE_CODES.items()}
# record field annotation -> how a stored value becomes that field's value again
_CASTS = {
    "str": str, "int": int, "float": float, "bool": bool,
    "tuple[int, int]": lambda value: tuple(int(x) for x in value),
    "np.ndarray": lambda value: value,
}


def _annotation(field: dataclasses.Field) -> str:
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))


def _get(annotated: AnnotatedFrame, result: DeocclusionResult | None, path: str):
    """The value at a field path (`grasp.rre_deg`, `result.beta`) of one sample's records."""
    parts = path.split(".")
    value = result if parts[0] == RESULT else getattr(annotated, parts[0])
    for part in parts[1:]:
        value = getattr(value, part)
    return value


def _stored_value(spec: ArraySpec, sample_shape: tuple[int, ...], annotated: AnnotatedFrame,
                  result: DeocclusionResult | None):
    """What `spec` stores for one sample (a SameAs fill is resolved by the caller)."""
    if spec.codec == CODEC_PRESENT:
        return result is not None
    if spec.field.split(".")[0] == RESULT and result is None:
        return spec.fill if sample_shape == () or isinstance(spec.fill, SameAs) else np.full(sample_shape, spec.fill)
    value = _get(annotated, result, spec.field)
    if spec.codec == CODEC_HAND_SIDE:
        return HAND_SIDE_CODES[value]
    if spec.codec == CODEC_LENGTH:
        return len(value)
    if spec.codec == CODEC_PADDED:
        padded = np.full(spec.shape, np.nan, dtype=spec.dtype)
        padded[: len(value)] = np.asarray(value, dtype=spec.dtype)
        return padded
    return value


def build_columns(
    annotated: list[AnnotatedFrame], results: list[DeocclusionResult | None], schema: RecordSchema = SCHEMA
) -> dict[str, np.ndarray]:
    """Stack records into one array per schema array (first axis = sample), as each row's `field` says.

    A sample without a de-occlusion result stores each `result.*` array's `fill` (e.g.
    image_deoccluded = image, keep = False, NaN scores, reason "no_result").

    Raises:
        ValueError: on mismatched lengths or keys, inconsistent crop sizes, too many beta candidates, or a
            value whose shape differs from the schema's.
    """
    # 1. Check inputs
    if not annotated:
        raise ValueError("write_shard got no samples: a shard needs at least one AnnotatedFrame")
    if len(results) != len(annotated):
        raise ValueError(f"results has {len(results)} entries for {len(annotated)} annotated frames; pass None "
                         f"for frames without a de-occlusion result")
    crop_size_px = annotated[0].image.shape[0]
    feature_size_px = annotated[0].seg_map.shape[0]
    padded = [spec for spec in schema.arrays if spec.codec == CODEC_PADDED]
    seen: set[str] = set()
    for frame, result in zip(annotated, results):
        key = frame.frame.sample_key
        if key in seen:
            raise ValueError(f"sample key {key!r} appears twice in one shard")
        seen.add(key)
        if frame.image.shape != (crop_size_px, crop_size_px, 3) or frame.seg_map.shape[0] != feature_size_px:
            raise ValueError(f"{key}: crop {frame.image.shape} / feature map {frame.seg_map.shape} differ from the "
                             f"shard's first frame ({crop_size_px}, {feature_size_px}); one crop size per dataset")
        if result is not None and result.sample_key != key:
            raise ValueError(f"results are out of order: annotated {key!r} is paired with result {result.sample_key!r}")
        for spec in padded:
            if result is not None and len(_get(frame, result, spec.field)) > MAX_BETA_CANDIDATES:
                raise ValueError(f"{key}: {len(_get(frame, result, spec.field))} beta candidates; the schema stores "
                                 f"at most {MAX_BETA_CANDIDATES} (unihope.storage.schema.MAX_BETA_CANDIDATES)")

    # 2. Per-sample values, then fills that repeat another array of the same sample
    shapes = {spec.name: spec.sample_shape(crop_size_px, feature_size_px) for spec in schema.arrays}
    rows: dict[str, list] = {spec.name: [_stored_value(spec, shapes[spec.name], frame, result)
                                         for frame, result in zip(annotated, results)] for spec in schema.arrays}
    for spec in schema.arrays:
        if isinstance(spec.fill, SameAs):
            rows[spec.name] = [rows[spec.fill.array][i] if result is None else value
                               for i, (value, result) in enumerate(zip(rows[spec.name], results))]

    # 3. Stack with the schema's dtype and shape
    columns: dict[str, np.ndarray] = {}
    for spec in schema.arrays:
        expected = (len(annotated), *shapes[spec.name])
        values = rows[spec.name]
        if spec.dtype == "str":
            column = np.array([str(v) for v in values], dtype=np.dtypes.StringDType())
        else:
            column = np.asarray(np.stack([np.asarray(v) for v in values]), dtype=spec.dtype)
        if column.shape != expected:
            bad_idx = next(i for i, v in enumerate(values) if np.shape(v) != expected[1:])
            raise ValueError(f"{annotated[bad_idx].frame.sample_key}: field {spec.name!r} has shape "
                             f"{np.shape(values[bad_idx])}, the schema expects {expected[1:]}")
        columns[spec.name] = column
    return columns


def fill_column(spec: ArraySpec, num_samples: int, sample_shape: tuple[int, ...]) -> np.ndarray:
    """`num_samples` copies of a plain `fill` (what a shard older than `spec.since` reads for this array)."""
    if isinstance(spec.fill, SameAs) or spec.fill is None:
        raise ValueError(f"array {spec.name!r} (schema version {spec.since}) has no plain fill value; a shard older "
                         f"than its schema version cannot be read, rebuild it")
    if spec.dtype == "str":
        return np.array([str(spec.fill)] * num_samples, dtype=np.dtypes.StringDType())
    return np.full((num_samples, *sample_shape), spec.fill, dtype=spec.dtype)


def rebuild_records(
    values: dict[str, object], schema: RecordSchema = SCHEMA
) -> tuple[AnnotatedFrame, DeocclusionResult | None]:
    """The records one sample was written from, given its stored values (array name -> value).

    Raises:
        KeyError: when `values` lacks an array of the schema.
    """
    # 1. Decode every array into its field path
    by_path: dict[str, object] = {}
    has_result = True
    for spec in schema.arrays:
        value = values[spec.name]
        if spec.codec == CODEC_PRESENT:
            has_result = bool(value)
        elif spec.codec == CODEC_HAND_SIDE:
            by_path[spec.field] = _SIDE_BY_CODE[int(value)]
        elif spec.codec == CODEC_PADDED:
            by_path[spec.field] = np.asarray(value)[: int(values[spec.count])].copy()
        elif spec.codec == CODEC_PLAIN:
            by_path[spec.field] = value

    # 2. Build each record from its fields (stored, or rebuilt as UNSTORED says), innermost first
    def build(prefix: str):
        cls = schema.record_types[prefix]
        kwargs = {}
        for field in dataclasses.fields(cls):
            path = f"{prefix}.{field.name}" if prefix else field.name
            if path in schema.record_types:
                kwargs[field.name] = build(path)
            elif path in by_path:
                kwargs[field.name] = _CASTS[_annotation(field)](by_path[path])
            elif path in schema.unstored:
                rule = schema.unstored[path]
                if rule.copy_of:
                    kwargs[field.name] = by_path[rule.copy_of]
                elif rule.size_of:
                    kwargs[field.name] = int(np.shape(by_path[rule.size_of])[0])
        return cls(**kwargs)

    return build(""), build(RESULT) if has_result else None


def schema_problems(schema: RecordSchema = SCHEMA) -> list[str]:
    """What is inconsistent in a schema: a record field with no array (nor an UNSTORED rule), an array whose
    field is no record field, a bad codec, fill, dimension list or string width. [] = consistent.
    """
    problems: list[str] = []
    # every record field path, and its annotation
    fields: dict[str, str] = {}
    for prefix, cls in schema.record_types.items():
        for field in dataclasses.fields(cls):
            path = f"{prefix}.{field.name}" if prefix else field.name
            if path not in schema.record_types:
                fields[path] = _annotation(field)
    stored = set()
    for spec in schema.arrays:
        where = f"array {spec.name!r}"
        if spec.codec not in CODECS:
            problems.append(f"{where}: unknown codec {spec.codec!r} (one of {CODECS})")
        if spec.codec == CODEC_PRESENT:
            if spec.field != RESULT:
                problems.append(f"{where}: codec {CODEC_PRESENT!r} needs field {RESULT!r}, got {spec.field!r}")
            continue
        if spec.field not in fields:
            problems.append(f"{where}: field {spec.field!r} is no record field")
            continue
        stored.add(spec.field)
        if spec.codec == CODEC_PLAIN and fields[spec.field] not in _CASTS:
            problems.append(f"{where}: field {spec.field!r} has type {fields[spec.field]!r}, which no reader rebuilds")
        if spec.field.startswith(f"{RESULT}.") and spec.fill is None:
            problems.append(f"{where}: a result field needs a fill value (stored when a sample has no result)")
        if spec.since > 2 and (spec.fill is None or isinstance(spec.fill, SameAs)):
            problems.append(f"{where}: added in schema {spec.since}, so it needs a plain fill value for older shards")
        if spec.codec == CODEC_PADDED and (spec.count not in schema.by_name
                                           or schema.by_name[spec.count].codec != CODEC_LENGTH):
            problems.append(f"{where}: a padded array's `count` must name a {CODEC_LENGTH!r} array, got {spec.count!r}")
        if spec.dtype == "str":
            if spec.width_bytes <= 0 or spec.shape != ():
                problems.append(f"{where}: a str array is a scalar with width_bytes > 0")
        elif len(spec.dims) != len(spec.shape):
            problems.append(f"{where}: {len(spec.dims)} dimension names for a {len(spec.shape)}-d sample shape")
        if spec.chunking not in (CHUNKING_SAMPLE, CHUNKING_COLUMN):
            problems.append(f"{where}: unknown chunking {spec.chunking!r}")
        if isinstance(spec.fill, SameAs) and spec.fill.array not in schema.by_name:
            problems.append(f"{where}: fill repeats {spec.fill.array!r}, which is no array")
    for path in fields:
        if path not in stored and path not in schema.unstored:
            problems.append(f"record field {path!r} has no array; add an ArraySpec with field={path!r} "
                            f"(or an UNSTORED entry saying why it is not stored)")
    for path, rule in schema.unstored.items():
        if path not in fields:
            problems.append(f"UNSTORED names {path!r}, which is no record field")
        elif path in stored:
            problems.append(f"UNSTORED names {path!r}, which an array stores")
        for source in (rule.copy_of, rule.size_of):
            if source and source not in stored:
                problems.append(f"UNSTORED {path!r} is rebuilt from {source!r}, which no array stores")
    if len(set(schema.names)) != len(schema.names):
        problems.append("two arrays share a name")
    return problems
