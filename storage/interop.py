"""A dataset version through standard Zarr v3 tools: its shard groups' locations, and one xarray table.

Every shard group is a plain Zarr v3 group (core data types, `dimension_names` on every array), so
zarr-python, tensorstore's zarr3 driver and xarray read each directly; a version is the ordered
list of its groups, concatenated along "sample", with `sample_key` as its coordinate and strings
decoded. xarray is imported only when asked for (a test extra, not a dependency of the pipeline).
"""

from __future__ import annotations

import os

import numpy as np

from unihope.storage.codes import decode_utf8_fixed
from unihope.storage.io import locate
from unihope.storage.schema import ARRAYS_BY_NAME, SAMPLE_DIM, SCHEMA_VERSION
from unihope.storage.versions import current_version, load_version, resolve_version

GROUP_ATTRS_KEY = "unihope"
SAMPLE_KEY_COORD = "sample_key"  # the coordinate that names each sample in open_xarray's table


def shard_group_urls(url: str | os.PathLike, version: str | None = None,
                     storage_options: dict | None = None) -> list[str]:
    """The version's shard groups, in sample order: absolute local paths, or full fsspec URLs.

    Args:
        url: dataset root.
        version: version id or unique prefix; None = the newest.
        storage_options: fsspec options for URLs.

    Raises:
        StoreError: when there is no such version or its manifest is damaged.
    """
    loc = locate(url, storage_options)
    version_id = resolve_version(loc, version) if version is not None else current_version(url, storage_options)
    manifest = load_version(loc, version_id)
    paths = [loc.path(commit.data_path) for commit in manifest.shards]
    return paths if loc.is_local else [loc.fs.unstrip_protocol(path) for path in paths]


def open_xarray(url: str | os.PathLike, version: str | None = None, storage_options: dict | None = None):
    """One `xarray.Dataset` holding every sample of a version (lazy, dask-backed).

    Each shard group is opened with `xr.open_zarr(group, consolidated=False)` and the groups are
    concatenated along "sample". `sample_key` becomes the indexed coordinate of "sample" (so
    `table.sel(sample_key=key)` finds a sample), and every other string field is decoded to str
    lazily, per chunk (the stored uint8 code units are a storage detail; the root itself is no
    Zarr group of the shards, so `xr.open_zarr(root)` cannot see them and this is the one-line open).

    Raises:
        StoreError: when there is no such version or its manifest is damaged.
        ValueError: when the version has no shards.
    """
    import xarray as xr

    loc = locate(url, storage_options)
    version_id = resolve_version(loc, version) if version is not None else current_version(url, storage_options)
    groups = shard_group_urls(url, version_id, storage_options)
    if not groups:
        raise ValueError(f"{loc.url}: version {version_id} has no shards")
    options = {"storage_options": storage_options} if storage_options and not loc.is_local else {}
    parts = [xr.open_zarr(group, consolidated=False, zarr_format=3, **options) for group in groups]
    table = xr.concat(parts, dim=SAMPLE_DIM, data_vars="all", coords="minimal", compat="override",
                      combine_attrs="drop")
    dataset_attrs = parts[0].attrs.get(GROUP_ATTRS_KEY, {}).get("dataset", {})
    table = _decode_strings(table)
    table.attrs[GROUP_ATTRS_KEY] = {"schema_version": SCHEMA_VERSION, "version_id": version_id,
                                    "dataset": dataset_attrs}
    return table


def _decode_strings(table):
    """`table` with its uint8 string fields as str: `sample_key` an indexed coordinate, the rest lazy."""
    import dask.array

    for name, spec in ARRAYS_BY_NAME.items():
        if spec.dtype != "str" or name not in table.variables:
            continue
        codes = table[name]
        if name == SAMPLE_KEY_COORD:
            keys = np.array(decode_utf8_fixed(codes.values).tolist(), dtype=str)  # small (128 bytes a sample); an index needs it now
            table = table.drop_vars(name).assign_coords({name: (SAMPLE_DIM, keys)}).set_xindex(name)
            continue
        data = codes.data
        if isinstance(data, dask.array.Array):  # one task per chunk of samples, run when read
            decoded = data.rechunk({1: -1}).map_blocks(_decode_block, drop_axis=1, dtype=object)
        else:
            decoded = _decode_block(np.asarray(data))
        table[name] = _xr_variable(decoded, codes.attrs)
    return table


def _decode_block(codes: np.ndarray) -> np.ndarray:
    """(n, W) uint8 code units -> (n,) object array of str (what xarray and pandas show as text)."""
    return decode_utf8_fixed(codes).astype(object)


def _xr_variable(values, attrs: dict):
    """A 1-D variable along "sample" (the width dimension of the stored code units dropped)."""
    import xarray as xr

    return xr.Variable((SAMPLE_DIM,), values, attrs=dict(attrs))
