"""Filesystem plumbing for datasets: local paths and fsspec URLs, atomic small writes, Zarr stores."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

TEMP_FILE_INFIX = ".tmp-"  # write_file_atomic's hidden temp files: .<name>.tmp-<8 hex>
# Temp files and uncommitted shard folders (unihope.storage.writer: shard-XXXXX.incomplete-<attempt>) that a
# killed or failed writer leaves; nothing reads them, and `sweep_temp_files` deletes them.
TEMP_NAME_PATTERN = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$|^shard-\d+\.incomplete-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Location:
    """A dataset root: a filesystem and the root path inside it (no trailing slash)."""

    url: str  # what the user passed
    fs: fsspec.AbstractFileSystem
    root: str
    storage_options: dict

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """Absolute path (in `fs`) of `relative` under the root."""
        return f"{self.root}/{relative}" if relative else self.root

    def zarr_store(self, relative: str, read_only: bool) -> zarr.abc.store.Store:
        """A Zarr store rooted at `relative` (LocalStore on disk, FsspecStore elsewhere)."""
        if self.is_local:
            return zarr.storage.LocalStore(self.path(relative), read_only=read_only)
        url = self.fs.unstrip_protocol(self.path(relative))
        return zarr.storage.FsspecStore.from_url(url, storage_options=self.storage_options or None, read_only=read_only)


def locate(url: str | os.PathLike, storage_options: dict | None = None) -> Location:
    """Resolve a local path or fsspec URL (`memory://`, `s3://`, `file://`) to a `Location`.

    Raises:
        ValueError: when the URL's protocol has no fsspec implementation installed.
    """
    text = os.fspath(url)
    try:
        fs, root = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except (ImportError, ValueError) as err:
        raise ValueError(f"cannot open dataset location {text!r}: {err}") from err
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
    return Location(url=text, fs=fs, root=root.rstrip("/"), storage_options=dict(storage_options or {}))


def write_bytes_atomic(loc: Location, relative: str, payload: bytes) -> None:
    """Write a small object so that readers see either the old or the complete new content.

    Local disk: `write_file_atomic`. Object stores: one PUT (an object becomes visible only once complete).
    """
    target = loc.path(relative)
    if loc.is_local:
        write_file_atomic(target, payload)
    else:
        loc.fs.pipe_file(target, payload)


def write_file_atomic(path: str | os.PathLike, payload: bytes) -> None:
    """Write a local file so that readers see either nothing (or the old file) or the whole new one.

    A hidden temp file in the same folder (unique per call, so concurrent writers never clash),
    fsync, `os.replace`, fsync of the folder.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    tmp_path = os.path.join(folder, f".{os.path.basename(target)}{TEMP_FILE_INFIX}{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp_path, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        # A full disk (ENOSPC) or an interrupt: the half-written temp file must not stay behind.
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_bytes(loc: Location, relative: str) -> bytes | None:
    """The object's bytes, or None when it does not exist."""
    try:
        return loc.fs.cat_file(loc.path(relative))
    except FileNotFoundError:
        return None


def remove_tree(loc: Location, relative: str) -> None:
    """Delete a folder (or prefix) if it exists."""
    path = loc.path(relative)
    if loc.fs.exists(path):
        loc.fs.rm(path, recursive=True)


def sweep_temp_files(root: str | os.PathLike) -> list[str]:
    """Delete the temp files and uncommitted shard folders a failed or killed build left under `root`.

    Only safe while no other build writes there: call it with the output's build lock held
    (`unihope.storage.lock`). A missing root is fine (nothing to sweep).

    Args:
        root: a local folder (the dataset root or the work folder).

    Returns:
        The paths removed.
    """
    removed: list[str] = []
    for folder, dir_names, file_names in os.walk(os.fspath(root)):
        for name in list(dir_names):
            if TEMP_NAME_PATTERN.match(name):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                dir_names.remove(name)
                removed.append(os.path.join(folder, name))
        for name in file_names:
            if TEMP_NAME_PATTERN.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed
