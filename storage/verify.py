"""Checksums of stored shards against their commit records (one object, or a whole shard)."""

from __future__ import annotations

import hashlib

from unihope.storage.io import Location
from unihope.storage.manifest import StoreError, read_many, shard_stem
from unihope.storage.schema import ShardCommit

VERIFY_MODES = ("lazy", "eager", "none")


def check_sha256(where: str, name: str, payload: bytes, expected: str | None) -> None:
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
        check_sha256(where, name, payload, expected)
