"""Dataset versions: immutable version manifests, the newest-version pointer, pins and garbage collection.

A version is the list of committed shard groups one build produced (`versions/<version_id>.json`,
written once, never rewritten); its id is the digest of what it references (shard index, data
folder and content digest of every shard), so an unchanged rebuild commits no new version.
`manifest.json` is the small newest-version pointer, replaced atomically by `finalize`. Shard
folders are never deleted while a version references them; `gc` removes old versions (never the
newest `keep`, the pointer's, or a pinned one) and then the folders no remaining version or commit
record references. A pin (`pins/<version_id>.<token>.json`) names its owner, pid, host and expiry;
it is live until it expires or, on its own host, until its process is gone (a killed run's pin).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from unihope.storage.io import Location, locate, read_bytes, remove_tree, write_bytes_atomic
from unihope.storage.manifest import (
    MANIFEST_NAME,
    StoreError,
    check_schema_version,
    commit_path,
    list_commits,
    manifest_from_json,
    manifest_to_json,
    shard_stem,
    utc_now,
)
from unihope.storage.schema import SCHEMA_VERSION, Manifest, ShardCommit

VERSIONS_DIR = "versions"
PINS_DIR = "pins"
VERSION_ID_HEX = 16  # 64 bits of sha256: ids stay short enough to type
POINTER_FORMAT = "unihope-version-pointer"
_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def version_path(version_id: str) -> str:
    """The version manifest of `version_id`, relative to the dataset root."""
    return f"{VERSIONS_DIR}/{version_id}.json"


def version_digest(shards: tuple[ShardCommit, ...] | list[ShardCommit], schema_version: int = SCHEMA_VERSION) -> str:
    """The id of a version: sha256 over (shard index, data folder, content digest, samples) of every shard.

    Any change to what a version references (a shard rewritten, added, dropped or listed twice)
    changes the id, so a version manifest whose content does not match its id is damaged.
    `schema_version` is the version manifest's own (an older store's ids stay valid).
    """
    rows = [[c.shard_idx, c.data_path, c.digest_sha256, c.num_samples, c.keys_sha256] for c in shards]
    payload = json.dumps({"schema_version": schema_version, "shards": rows}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:VERSION_ID_HEX]


# ---------------------------------------------------------------- reading versions


def _pointer(loc: Location) -> dict | None:
    payload = read_bytes(loc, MANIFEST_NAME)
    if payload is None:
        return None
    where = f"{loc.url}/{MANIFEST_NAME}"
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        raise StoreError(f"{where}: not valid JSON ({err}); run the build's finalize again") from err
    if not isinstance(data, dict) or data.get("format") != POINTER_FORMAT:
        check_schema_version(int(data.get("schema_version", -1)) if isinstance(data, dict) else -1, where)
        raise StoreError(f"{where}: not a version pointer (format {POINTER_FORMAT!r} expected); run finalize again")
    check_schema_version(int(data.get("schema_version", -1)), where)
    if not isinstance(data.get("version_id"), str) or not data["version_id"]:
        raise StoreError(f"{where}: names no version_id; run finalize again")
    return data


def newest_version_id(loc: Location) -> str | None:
    """The id the newest-version pointer names, or None when no version was committed yet."""
    pointer = _pointer(loc)
    return None if pointer is None else pointer["version_id"]


def current_version(url: str | os.PathLike, storage_options: dict | None = None) -> str:
    """The id of the newest committed version of a dataset.

    Raises:
        StoreError: when the dataset has no committed version (never finalized) or a bad pointer.
    """
    loc = locate(url, storage_options)
    version_id = newest_version_id(loc)
    if version_id is None:
        raise StoreError(f"{loc.url}: no committed dataset version ({MANIFEST_NAME} is missing); "
                         f"finish `unihope build` first")
    return version_id


def _version_ids(loc: Location) -> list[str]:
    base = loc.path(VERSIONS_DIR)
    if not loc.fs.exists(base):
        return []
    names = [path.rstrip("/").rsplit("/", 1)[-1] for path in loc.fs.ls(base, detail=False)]
    return sorted(name[: -len(".json")] for name in names if name.endswith(".json") and not name.startswith("."))


def resolve_version(loc: Location, version: str) -> str:
    """A full version id from an id or a unique prefix of one.

    Raises:
        StoreError: when no version, or more than one, matches.
    """
    if read_bytes(loc, version_path(version)) is not None:
        return version
    matches = [vid for vid in _version_ids(loc) if vid.startswith(version)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"{loc.url}: dataset version {version!r} does not exist (removed by `unihope gc`?); "
                         f"`unihope ls-versions` lists the versions")
    raise StoreError(f"{loc.url}: version prefix {version!r} matches {len(matches)} versions {matches}; give more "
                     f"characters")


def check_version(manifest: Manifest, version_id: str, where: str) -> None:
    """Refuse a version manifest that is not what its id says: doubled, dropped or altered shards.

    Raises:
        StoreError: naming `where` and what is inconsistent.
    """
    indices = [commit.shard_idx for commit in manifest.shards]
    doubled = sorted({idx for idx in indices if indices.count(idx) > 1})
    if doubled:
        raise StoreError(f"{where}: lists {shard_stem(doubled[0])} {indices.count(doubled[0])} times; the manifest "
                         f"is damaged (each shard index may appear once)")
    paths = [commit.data_path for commit in manifest.shards]
    if len(set(paths)) != len(paths):
        raise StoreError(f"{where}: two shard entries name one data folder; the manifest is damaged")
    if indices != sorted(indices):
        raise StoreError(f"{where}: shards are not in index order; the manifest is damaged")
    total = sum(commit.num_samples for commit in manifest.shards)
    if total != manifest.num_samples:
        raise StoreError(f"{where}: says {manifest.num_samples} samples but its shards hold {total}; the manifest "
                         f"is damaged")
    gaps = tuple(sorted(set(range(max(indices) + 1)) - set(indices))) if indices else ()
    if gaps != tuple(manifest.missing_shard_indices):
        raise StoreError(f"{where}: shard indices {list(gaps)} are absent but the manifest records "
                         f"{list(manifest.missing_shard_indices)} as missing; a shard was dropped from the manifest")
    if manifest.version_id != version_id:
        raise StoreError(f"{where}: holds version {manifest.version_id!r}, expected {version_id!r}")
    digest = version_digest(manifest.shards, manifest.schema_version)
    if digest != version_id:
        raise StoreError(f"{where}: its shards digest to {digest}, not to its id {version_id}; the manifest was "
                         f"altered (shards doubled, dropped or changed)")


def load_version(loc: Location, version_id: str) -> Manifest:
    """Read and check a version manifest.

    Raises:
        StoreError: when it is missing, unreadable or inconsistent with its id.
    """
    where = f"{loc.url}/{version_path(version_id)}"
    payload = read_bytes(loc, version_path(version_id))
    if payload is None:
        raise StoreError(f"{where}: dataset version {version_id!r} does not exist (removed by `unihope gc`?)")
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        raise StoreError(f"{where}: not valid JSON ({err}); the version manifest is damaged") from err
    if not isinstance(data, dict):
        raise StoreError(f"{where}: not a version manifest")
    manifest = manifest_from_json(data, where=where)
    for commit in manifest.shards:
        check_schema_version(commit.schema_version, f"{where} ({shard_stem(commit.shard_idx)})")
    check_version(manifest, version_id, where)
    return manifest


def check_against_commits(loc: Location, manifest: Manifest) -> None:
    """Refuse a newest version that disagrees with the shard commit records it was assembled from.

    A commit record older than the version must be one of its shards (same folder, same digest);
    newer records belong to a build in progress and are ignored.

    Raises:
        StoreError: naming the shard whose commit record the version contradicts.
    """
    by_idx = {commit.shard_idx: commit for commit in manifest.shards}
    for record in list_commits(loc):
        if not record.created_utc or not manifest.created_utc or record.created_utc >= manifest.created_utc:
            continue
        listed = by_idx.get(record.shard_idx)
        if listed is None:
            raise StoreError(f"{loc.url}: {commit_path(record.shard_idx)} was committed before version "
                             f"{manifest.version_id} but the version does not list it; the manifest dropped a shard")
        if listed.data_path != record.data_path or listed.digest_sha256 != record.digest_sha256:
            raise StoreError(f"{loc.url}: version {manifest.version_id} lists {listed.data_path} for "
                             f"{shard_stem(record.shard_idx)}, its older commit record names {record.data_path}; "
                             f"the manifest is inconsistent")


# ---------------------------------------------------------------- committing versions


def commit_version(loc: Location, manifest: Manifest) -> Manifest:
    """Commit `manifest` (built from the commit records) as a version and point the pointer at it.

    The version manifest is written once (an existing file of the same id is left as it is), then
    the pointer is replaced atomically: readers see the old or the new version, never a mix.

    Returns:
        The committed version (the stored one when this id existed already).
    """
    # 1. The id and, when it is new, the immutable version manifest
    version_id = version_digest(manifest.shards, manifest.schema_version)
    existing = read_bytes(loc, version_path(version_id))
    if existing is not None:
        committed = load_version(loc, version_id)
    else:
        parent = newest_version_id(loc) or ""
        seqs = [_version_seq(loc, vid) for vid in _version_ids(loc)]
        committed = Manifest(
            schema_version=manifest.schema_version, attrs=manifest.attrs, shards=manifest.shards,
            num_samples=manifest.num_samples, missing_shard_indices=manifest.missing_shard_indices,
            skips_by_reason=manifest.skips_by_reason, created_utc=manifest.created_utc or utc_now(),
            version_id=version_id, version_seq=max(seqs, default=0) + 1, parent_version_id=parent,
        )
        write_bytes_atomic(loc, version_path(version_id), json.dumps(manifest_to_json(committed), indent=1).encode())

    # 2. The pointer, last
    pointer = {"format": POINTER_FORMAT, "schema_version": SCHEMA_VERSION, "version_id": version_id,
               "version_path": version_path(version_id), "num_samples": committed.num_samples,
               "num_shards": len(committed.shards), "committed_utc": utc_now()}
    write_bytes_atomic(loc, MANIFEST_NAME, json.dumps(pointer, indent=1).encode())
    return committed


def _version_seq(loc: Location, version_id: str) -> int:
    payload = read_bytes(loc, version_path(version_id))
    try:
        return int(json.loads(payload).get("version_seq", 0)) if payload is not None else 0
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0


def referenced_folders(loc: Location, ignoring: frozenset[str] = frozenset()) -> set[str]:
    """Shard data folders that a version or a current commit record references (never to be deleted).

    `ignoring`: version ids counted as gone (what `gc(dry_run=True)` would remove).
    """
    folders = {commit.data_path for commit in list_commits(loc)}
    for version_id in _version_ids(loc):
        if version_id in ignoring:
            continue
        payload = read_bytes(loc, version_path(version_id))
        if payload is None:
            continue
        try:
            shards = json.loads(payload)["shards"]
            folders.update(str(shard["data_path"]) for shard in shards)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise StoreError(f"{loc.url}/{version_path(version_id)}: unreadable version manifest ({err}); "
                             f"nothing is deleted while it is unreadable") from err
    return folders


# ---------------------------------------------------------------- pins


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Pin:
    """A pin on a dataset version: while it is live, `gc` keeps the version and its shards.

    Use it as a context manager (released on exit) or call `release()`.
    """

    url: str
    version_id: str
    owner: str
    pid: int
    host: str
    expires_unix_s: float
    relative_path: str
    storage_options: dict = field(default_factory=dict)
    is_released: bool = False

    def to_json(self) -> dict:
        return {"version_id": self.version_id, "owner": self.owner, "pid": self.pid, "host": self.host,
                "expires_unix_s": self.expires_unix_s,
                "expires_utc": time.strftime(_UTC_FORMAT, time.gmtime(self.expires_unix_s)),
                "created_utc": utc_now()}

    def renew(self, ttl_s: float) -> None:
        """Extend the pin to `ttl_s` seconds from now (a long run renews before its pin expires)."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.expires_unix_s = time.time() + ttl_s
        write_bytes_atomic(locate(self.url, self.storage_options), self.relative_path,
                           json.dumps(self.to_json()).encode())

    def release(self) -> None:
        """Remove the pin (idempotent)."""
        if not self.is_released:
            loc = locate(self.url, self.storage_options)
            if loc.fs.exists(loc.path(self.relative_path)):
                loc.fs.rm(loc.path(self.relative_path))
            self.is_released = True

    def __enter__(self) -> "Pin":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def pin(url: str | os.PathLike, version: str, owner: str, ttl_s: float,
        storage_options: dict | None = None) -> Pin:
    """Pin a dataset version so that `gc` keeps it until the pin is released or expires.

    Args:
        url: dataset root (path or fsspec URL).
        version: a version id (or a unique prefix of one).
        owner: who holds the pin, e.g. "train:runs/demo".
        ttl_s: seconds until the pin expires (a pin of a process that died on this host is stale at once).
        storage_options: fsspec options for URLs.

    Returns:
        The Pin (a context manager).

    Raises:
        ValueError: on a non-positive ttl_s or an empty owner.
        StoreError: when the version does not exist (or `gc` removed it while the pin was taken).
    """
    # 1. Check inputs
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    if not owner:
        raise ValueError("owner must name who holds the pin, got ''")
    loc = locate(url, storage_options)
    version_id = resolve_version(loc, version)

    # 2. Write the pin, then check that the version survived: gc deletes a version file before it
    #    looks at pins a second time, so either gc sees this pin or this check sees the version gone.
    token = uuid.uuid4().hex[:12]
    handle = Pin(url=os.fspath(url), version_id=version_id, owner=owner, pid=os.getpid(), host=_host(),
                 expires_unix_s=time.time() + ttl_s, relative_path=f"{PINS_DIR}/{version_id}.{token}.json",
                 storage_options=dict(storage_options or {}))
    write_bytes_atomic(loc, handle.relative_path, json.dumps(handle.to_json()).encode())
    if read_bytes(loc, version_path(version_id)) is None:
        handle.release()
        raise StoreError(f"{loc.url}: version {version_id} was removed while it was being pinned")
    return handle


@dataclass(frozen=True, slots=True)
class PinRecord:
    """A pin as stored."""

    relative_path: str
    version_id: str
    owner: str
    pid: int
    host: str
    expires_unix_s: float

    def is_live(self, now_unix_s: float) -> bool:
        """Not expired, and (on this host) its process still runs."""
        if now_unix_s >= self.expires_unix_s:
            return False
        return not (self.host == _host() and not _pid_alive(self.pid))


def list_pins(loc: Location) -> list[PinRecord]:
    """Every pin file of the dataset (unreadable pin files count as live forever: never guess them away)."""
    base = loc.path(PINS_DIR)
    if not loc.fs.exists(base):
        return []
    pins = []
    for path in loc.fs.ls(base, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith("."):
            continue
        relative = f"{PINS_DIR}/{name}"
        payload = read_bytes(loc, relative)
        if payload is None:
            continue
        try:
            data = json.loads(payload)
            pins.append(PinRecord(relative, str(data["version_id"]), str(data["owner"]), int(data["pid"]),
                                  str(data["host"]), float(data["expires_unix_s"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pins.append(PinRecord(relative, name.split(".", 1)[0], "<unreadable pin file>", -1, "", float("inf")))
    return pins


# ---------------------------------------------------------------- listing and garbage collection


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One row of `ls-versions`."""

    version_id: str
    seq: int
    created_utc: str
    num_samples: int
    num_shards: int
    is_current: bool
    pinned_by: tuple[str, ...]  # owners of live pins


def list_versions(url: str | os.PathLike, storage_options: dict | None = None) -> list[VersionInfo]:
    """Every committed version, newest first.

    Raises:
        StoreError: when `url` holds no dataset, or on a damaged version manifest.
    """
    loc = locate(url, storage_options)
    from unihope.storage.presence import require_dataset  # presence imports this module

    require_dataset(loc)
    current = newest_version_id(loc)
    now = time.time()
    live = [record for record in list_pins(loc) if record.is_live(now)]
    rows = []
    for version_id in _version_ids(loc):
        manifest = load_version(loc, version_id)
        rows.append(VersionInfo(version_id, manifest.version_seq, manifest.created_utc, manifest.num_samples,
                                len(manifest.shards), version_id == current,
                                tuple(record.owner for record in live if record.version_id == version_id)))
    return sorted(rows, key=lambda row: row.seq, reverse=True)


@dataclass(frozen=True, slots=True)
class GcResult:
    """What `gc` removed and kept."""

    removed_versions: tuple[str, ...]
    kept_versions: tuple[str, ...]
    removed_folders: tuple[str, ...]
    removed_pins: tuple[str, ...]  # stale pin files (expired, or their process is gone)


def gc(url: str | os.PathLike, keep: int, storage_options: dict | None = None, dry_run: bool = False) -> GcResult:
    """Remove old versions and the shard folders only they referenced (or, with `dry_run`, only say which).

    Never removes the newest `keep` versions, the version the pointer names, or a pinned version.
    Run it when no build is writing into `url` (a build's own commit records are respected anyway).

    Args:
        url: dataset root.
        keep: how many of the newest versions to keep (>= 1).
        storage_options: fsspec options for URLs.
        dry_run: delete nothing; the result lists what a real run would remove now.

    Returns:
        GcResult.

    Raises:
        ValueError: when keep < 1.
        StoreError: when `url` holds no dataset (a typo must not look like a clean collection).
    """
    # 1. Check inputs; stale pins go first
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the newest version always stays), got {keep}")
    loc = locate(url, storage_options)
    from unihope.storage.presence import require_dataset  # presence imports this module

    require_dataset(loc)
    now = time.time()
    stale = [record for record in list_pins(loc) if not record.is_live(now)]
    if dry_run:
        return _gc_plan(loc, keep, stale, now)
    for record in stale:
        loc.fs.rm(loc.path(record.relative_path))

    # 2. Choose what goes
    newest_first, candidates = _gc_candidates(loc, keep, now)

    # 3. Delete each version file, then look at pins again: a pin taken meanwhile restores it
    removed: list[str] = []
    released_folders: set[str] = set()
    for version_id in candidates:
        payload = read_bytes(loc, version_path(version_id))
        if payload is None:
            continue
        loc.fs.rm(loc.path(version_path(version_id)))
        if any(record.version_id == version_id and record.is_live(time.time()) for record in list_pins(loc)):
            write_bytes_atomic(loc, version_path(version_id), payload)
            continue
        removed.append(version_id)
        released_folders.update(str(shard["data_path"]) for shard in json.loads(payload)["shards"])

    # 4. Folders of the removed versions that no remaining version or commit record references
    #    (only those: a folder no version ever named may be a writer's attempt about to be committed)
    referenced = referenced_folders(loc)
    removed_folders = sorted(released_folders - referenced)
    for relative in removed_folders:
        remove_tree(loc, relative)
    kept = tuple(vid for vid in newest_first if vid not in removed)
    return GcResult(tuple(removed), kept, tuple(removed_folders), tuple(r.relative_path for r in stale))


def _gc_plan(loc: Location, keep: int, stale: list[PinRecord], now: float) -> GcResult:
    """What `gc` would remove now (the same choice as its step 2), deleting nothing."""
    newest_first, removed = _gc_candidates(loc, keep, now)
    released: set[str] = set()
    for version_id in removed:
        payload = read_bytes(loc, version_path(version_id))
        if payload is not None:
            released.update(str(shard["data_path"]) for shard in json.loads(payload)["shards"])
    folders = sorted(released - referenced_folders(loc, ignoring=frozenset(removed)))
    kept = tuple(vid for vid in newest_first if vid not in removed)
    return GcResult(tuple(removed), kept, tuple(folders), tuple(r.relative_path for r in stale))


def _gc_candidates(loc: Location, keep: int, now: float) -> tuple[list[str], list[str]]:
    """(every version id newest first, the ones gc removes: beyond the newest `keep`, not current, not pinned)."""
    current = newest_version_id(loc)
    seqs = {vid: _version_seq(loc, vid) for vid in _version_ids(loc)}
    newest_first = sorted(seqs, key=lambda vid: seqs[vid], reverse=True)
    pinned = {record.version_id for record in list_pins(loc) if record.is_live(now)}
    return newest_first, [vid for vid in newest_first[keep:] if vid != current and vid not in pinned]
