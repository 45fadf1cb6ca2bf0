"""Datasets on disk, installed as `unihope.storage`: the record schema, shard writer, manifests, versions and reader.

The names a user needs, without deep paths:

    from unihope.storage import open_dataset, PairedDataset, make_loader
    view = open_dataset("demo_out/dataset")          # newest version; view.record(i), view.column(name)
    loader = make_loader(PairedDataset("demo_out/dataset", split="train"), batch_size=8)

Exported names load their module on first use (PEP 562): importing `unihope.storage.schema`, which
every layer does, must not pull in zarr and torch through this package.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # reading
    "open_dataset": "view", "DatasetView": "view", "PairedDataset": "paired", "make_loader": "loader",
    "AugmentConfig": "augment", "StoreError": "manifest",
    # versions
    "current_version": "versions", "list_versions": "versions", "pin": "versions", "gc": "versions",
    # writing
    "write_shard": "writer", "finalize": "writer",
    # the schema and the records it stores
    "SCHEMA": "schema", "ARRAYS": "schema", "SAMPLE_FIELDS": "schema", "ArraySpec": "schema",
    "AnnotatedFrame": "schema", "DeocclusionResult": "schema", "FrameRecord": "schema", "GraspLabel": "schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unihope.storage' has no attribute {name!r}")
    return getattr(importlib.import_module(f"unihope.storage.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
