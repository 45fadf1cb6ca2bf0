"""Whether a location holds a dataset at all: readers and `gc` refuse a missing path or a foreign folder."""

from __future__ import annotations

from unihope.storage.io import Location
from unihope.storage.lock import LOCK_NAME
from unihope.storage.manifest import MANIFEST_NAME, SHARDS_DIR, StoreError
from unihope.storage.versions import VERSIONS_DIR

# What `unihope build` writes at a dataset root, first to last: the build lock, committed shards
# (with their commit records), version manifests, the newest-version pointer. A root holding any
# of them is a dataset (possibly a first build still in progress, whose view is empty until its
# first shard commits); a root holding none is not, and reading it as an empty dataset would hide
# a wrong path.
DATASET_MARKERS = (MANIFEST_NAME, VERSIONS_DIR, SHARDS_DIR, LOCK_NAME)


def require_dataset(loc: Location) -> None:
    """Raise unless `loc` is a dataset root (finished, or a build in progress).

    Raises:
        StoreError: naming the path and what was expected there: the path does not exist, is not a
            folder, or holds none of `DATASET_MARKERS`.
    """
    hint = f"build one with `unihope build --out {loc.url}`"
    if not loc.fs.exists(loc.root):
        raise StoreError(f"no dataset at {loc.url}: the path does not exist ({hint})")
    if not loc.fs.isdir(loc.root):
        raise StoreError(f"no dataset at {loc.url}: it is a file, not a dataset folder ({hint})")
    if not any(loc.fs.exists(loc.path(name)) for name in DATASET_MARKERS):
        expected = ", ".join(f"{name}/" if "." not in name else name for name in DATASET_MARKERS[:3])
        raise StoreError(f"{loc.url} is not a unihope dataset: expected {expected} there ({hint})")
