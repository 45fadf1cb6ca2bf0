"""Commit records and the manifest: which shards of a dataset are committed, with their checksums."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone

from unihope.storage.io import Location, read_bytes
from unihope.storage.schema import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, DatasetAttrs, Manifest, ShardCommit

SHARDS_DIR = "shards"
MANIFEST_NAME = "manifest.json"  # the newest-version pointer (unihope.storage.versions)
SKIPS_NAME = "skips.jsonl"
COMMIT_SUFFIX = ".commit.json"
SHARD_STEM = "shard-{shard_idx:05d}"
_COMMIT_RE = re.compile(r"^shard-(\d{5,})\.commit\.json$")


class StoreError(ValueError):
    """A dataset that a reader refuses: unknown schema version, corrupt shard, missing field."""


def shard_stem(shard_idx: int) -> str:
    """`shard-00042` for shard 42."""
    return SHARD_STEM.format(shard_idx=shard_idx)


def chunk_key_of(name: str, ndim: int) -> str:
    """Key of the only chunk (column) or shard object (sample array) of array `name` in a shard group."""
    return f"{name}/c/" + "/".join(["0"] * ndim)


def commit_path(shard_idx: int) -> str:
    """Commit record of a shard, relative to the dataset root."""
    return f"{SHARDS_DIR}/{shard_stem(shard_idx)}{COMMIT_SUFFIX}"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def keys_sha256(sample_keys: list[str]) -> str:
    """sha256 of the sample keys joined by newlines (order matters)."""
    return hashlib.sha256("\n".join(sample_keys).encode()).hexdigest()


def files_digest(files_sha256: dict[str, str]) -> str:
    """One digest over a shard's per-file digests (sorted by file name)."""
    lines = "".join(f"{name} {files_sha256[name]}\n" for name in sorted(files_sha256))
    return hashlib.sha256(lines.encode()).hexdigest()


def read_many(loc: Location, relatives: list[str]) -> dict[str, bytes]:
    """Bytes of several objects (concurrent requests on object stores); missing ones are left out."""
    if loc.is_local:
        found = {}
        for relative in relatives:
            try:
                with open(loc.path(relative), "rb") as handle:
                    found[relative] = handle.read()
            except FileNotFoundError:
                continue
        return found
    absolute = {loc.path(relative): relative for relative in relatives}
    contents = loc.fs.cat(list(absolute), on_error="omit")
    return {absolute[path]: payload for path, payload in contents.items() if path in absolute}


def read_commit(loc: Location, shard_idx: int) -> ShardCommit | None:
    """The shard's commit record, or None when the shard is not committed.

    Raises:
        StoreError: when the record exists but is not valid JSON or misses fields.
    """
    payload = read_bytes(loc, commit_path(shard_idx))
    if payload is None:
        return None
    return parse_commit(payload, where=commit_path(shard_idx))


def parse_commit(payload: bytes, where: str) -> ShardCommit:
    """Decode a commit record.

    Raises:
        StoreError: naming `where` when the record is unreadable.
    """
    try:
        return ShardCommit.from_json(json.loads(payload))
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise StoreError(f"{where}: unreadable shard commit record ({err}); delete it and rewrite the shard") from err


def list_commits(loc: Location) -> list[ShardCommit]:
    """Every committed shard, sorted by shard index (commit records only; data dirs are not listed)."""
    base = loc.path(SHARDS_DIR)
    if not loc.fs.exists(base):
        return []
    commits = []
    for path in loc.fs.ls(base, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        match = _COMMIT_RE.match(name)
        if match:
            payload = loc.fs.cat_file(path)
            commits.append(parse_commit(payload, where=f"{SHARDS_DIR}/{name}"))
    return sorted(commits, key=lambda commit: commit.shard_idx)


def check_schema_version(version: int, where: str) -> None:
    """Refuse data written with a schema version this reader does not read (it reads READABLE_SCHEMA_VERSIONS:
    arrays added since an older shard's version read as their documented fill values).

    Raises:
        StoreError: naming `where` and both versions.
    """
    if version not in READABLE_SCHEMA_VERSIONS:
        raise StoreError(
            f"{where}: schema version {version} is not supported by this reader (reads "
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; writes {SCHEMA_VERSION}); "
            f"rebuild the dataset with this code version or read it with the matching one"
        )


def build_manifest(
    attrs: DatasetAttrs, commits: list[ShardCommit], skips_by_reason: dict[str, int]
) -> Manifest:
    """Assemble the manifest from per-shard commit records (never read-modify-written by writers)."""
    indices = [commit.shard_idx for commit in commits]
    expected = set(range(max(indices) + 1)) if indices else set()
    return Manifest(
        schema_version=SCHEMA_VERSION,
        attrs=attrs,
        shards=tuple(commits),
        num_samples=sum(commit.num_samples for commit in commits),
        missing_shard_indices=tuple(sorted(expected - set(indices))),
        skips_by_reason=dict(sorted(skips_by_reason.items())),
        created_utc=utc_now(),
    )


def manifest_to_json(manifest: Manifest) -> dict:
    return {
        "schema_version": manifest.schema_version,
        "attrs": manifest.attrs.to_json(),
        "num_samples": manifest.num_samples,
        "num_shards": len(manifest.shards),
        "missing_shard_indices": list(manifest.missing_shard_indices),
        "skips_by_reason": manifest.skips_by_reason,
        "created_utc": manifest.created_utc,
        "version_id": manifest.version_id,
        "version_seq": manifest.version_seq,
        "parent_version_id": manifest.parent_version_id,
        "shards": [commit.to_json() for commit in manifest.shards],
    }


def manifest_from_json(data: dict, where: str) -> Manifest:
    """Decode a version manifest (`versions/<id>.json`).

    Raises:
        StoreError: on an unknown schema version or missing keys.
    """
    check_schema_version(int(data.get("schema_version", -1)), where)
    try:
        return Manifest(
            schema_version=int(data["schema_version"]),
            attrs=DatasetAttrs(**data["attrs"]),
            shards=tuple(ShardCommit.from_json(item) for item in data["shards"]),
            num_samples=int(data["num_samples"]),
            missing_shard_indices=tuple(data.get("missing_shard_indices", ())),
            skips_by_reason=dict(data.get("skips_by_reason", {})),
            created_utc=data.get("created_utc", ""),
            version_id=str(data.get("version_id", "")),
            version_seq=int(data.get("version_seq", 0)),
            parent_version_id=str(data.get("parent_version_id", "")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(f"{where}: malformed manifest ({err}); run unihope.storage.writer.finalize again") from err
