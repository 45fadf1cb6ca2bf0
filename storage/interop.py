"""A dataset version through standard Zarr v3 tools: its shard groups' locations, and one xarray table.

Every shard group is a plain Zarr v3 group (core data types, `dimension_names` on every array), so
zarr-python, tensorstore's zarr3 driver and xarray read each directly; a version is the ordered
list of its groups, concatenated along "sample". xarray is imported only when asked for (a test
extra, not a dependency of the pipeline).
"""

from __future__ import annotations

import os

from unihope.storage.io import locate
from unihope.storage.schema import SAMPLE_DIM, SCHEMA_VERSION
from unihope.storage.versions import current_version, load_version, resolve_version

GROUP_ATTRS_KEY = "unihope"


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
    concatenated along "sample". String fields stay uint8 code units (decode a column with
    `unihope.storage.codes.decode_utf8_fixed(ds[name].values)`).

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
    table.attrs[GROUP_ATTRS_KEY] = {"schema_version": SCHEMA_VERSION, "version_id": version_id,
                                    "dataset": dataset_attrs}
    return table
