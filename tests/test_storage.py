"""Storage: sharded Zarr round trips, atomic commits under SIGKILL, concurrent writers, clear errors, batches."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import socket

import numpy as np
import pytest
import zarr

from unihope.storage.batches import load_batch, save_batch
from unihope.storage.manifest import StoreError
from unihope.storage.view import open_dataset
from unihope.storage.schema import ARRAY_NAMES, SCHEMA_VERSION, AnnotatedFrame, DeocclusionResult, Skip, SkipReason
from unihope.storage.writer import finalize, write_shard
from storage_fixtures import STORAGE_ATTRS, make_batch, make_keys, shard_plan, writer_child
from unihope.config import StorageConfig

CFG = StorageConfig(shard_size=6)
SPAWN = multiprocessing.get_context("spawn")
CHILD_TIMEOUT_S = 60


def assert_same_record(actual, expected) -> None:
    """Every field equal: arrays by value, dtype and shape; nested records recursively; scalars by type."""
    assert type(actual) is type(expected)
    for field in dataclasses.fields(expected):
        a, e = getattr(actual, field.name), getattr(expected, field.name)
        where = f"{type(expected).__name__}.{field.name}"
        if dataclasses.is_dataclass(e):
            assert_same_record(a, e)
        elif isinstance(e, np.ndarray):
            assert isinstance(a, np.ndarray), where
            assert a.shape == e.shape and a.dtype == e.dtype, f"{where}: {a.shape}/{a.dtype} vs {e.shape}/{e.dtype}"
            np.testing.assert_array_equal(a, e, err_msg=where)
        elif isinstance(e, float) and np.isnan(e):
            assert np.isnan(a), where
        else:
            assert a == e, f"{where}: {a!r} != {e!r}"


def write_dataset(url, num_shards=2, storage_options=None, skips=()):
    plan = shard_plan(num_shards)
    inputs = {}
    for idx, keys in plan.items():
        annotated, results = make_batch(keys)
        write_shard(url, idx, annotated, results, STORAGE_ATTRS, CFG, storage_options=storage_options)
        for a, r in zip(annotated, results):
            inputs[a.frame.sample_key] = (a, r)
    manifest = finalize(url, STORAGE_ATTRS, list(skips), storage_options=storage_options)
    return inputs, manifest


def check_round_trip(url, inputs, storage_options=None) -> None:
    view = open_dataset(url, storage_options=storage_options, verify="eager")
    assert view.num_samples == len(inputs)
    seen = []
    for index in range(view.num_samples):
        annotated, result = view.record(index)
        key = annotated.frame.sample_key
        seen.append(key)
        expected_annotated, expected_result = inputs[key]
        assert_same_record(annotated, expected_annotated)
        if expected_result is None:
            assert result is None
            stored = view.sample(index, ("image_deoccluded", "keep", "deocclusion_reason", "beta"))
            np.testing.assert_array_equal(stored["image_deoccluded"], expected_annotated.image)
            assert not stored["keep"] and stored["deocclusion_reason"] == "no_result" and np.isnan(stored["beta"])
        else:
            assert_same_record(result, expected_result)
    assert sorted(seen) == sorted(inputs)
    assert set(view.sample(0)) == set(ARRAY_NAMES)


def test_round_trip_every_field_local(tmp_path):
    skips = [Skip("a/b/c/000001", "annotate", SkipReason.HAND_NOT_VISIBLE, "0 px"),
             Skip("a/b/c/000002", "source", SkipReason.MISSING_FILE)]
    inputs, manifest = write_dataset(tmp_path / "ds", skips=skips)
    check_round_trip(tmp_path / "ds", inputs)
    # the pointer names the version; the version manifest: counts, key ranges, checksums, skips
    pointer = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert pointer["version_id"] == manifest.version_id and pointer["num_samples"] == 12
    data = json.loads((tmp_path / "ds" / "versions" / f"{manifest.version_id}.json").read_text())
    assert data["num_samples"] == 12 and data["num_shards"] == 2 and data["missing_shard_indices"] == []
    assert data["skips_by_reason"] == {"hand_not_visible": 1, "missing_file": 1}
    assert [s["first_key"] for s in data["shards"]] == [shard_plan(2)[0][0], shard_plan(2)[1][0]]
    assert all(len(s["digest_sha256"]) == 64 and s["files_sha256"] for s in data["shards"])
    lines = (tmp_path / "ds" / "skips.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in lines] == ["hand_not_visible", "missing_file"]
    root = zarr.open_group(str(tmp_path / "ds"), mode="r")
    assert root.attrs["unihope"]["schema_version"] == SCHEMA_VERSION
    assert root.attrs["unihope"]["dataset"]["config_hash"] == "abc123"
    shard = zarr.open_group(str(tmp_path / "ds" / manifest.shards[0].data_path), mode="r")
    assert shard.attrs["unihope"]["storage_config"]["shard_size"] == 6
    assert shard["image"].shards == (6, 32, 32, 3) and shard["image"].chunks == (1, 32, 32, 3)


def test_memory_url_round_trip():
    url = "memory://unihope-test/round-trip"
    inputs, manifest = write_dataset(url)
    assert manifest.num_samples == 12
    check_round_trip(url, inputs)


def test_rewrite_is_noop_and_changed_inputs_replace(tmp_path):
    url = tmp_path / "ds"
    keys = make_keys(2, 3)
    annotated, results = make_batch(keys)
    first = write_shard(url, 0, annotated, results, STORAGE_ATTRS, CFG)
    image_file = url / first.data_path / "image" / "c" / "0" / "0" / "0" / "0"
    mtime_ns = image_file.stat().st_mtime_ns
    again = write_shard(url, 0, annotated, results, STORAGE_ATTRS, CFG)
    assert again == first and image_file.stat().st_mtime_ns == mtime_ns
    # other inputs: a new attempt folder is committed; the old one goes at finalize (no version names it)
    changed = [dataclasses.replace(r, keep=not r.keep) if r is not None else None for r in results]
    third = write_shard(url, 0, annotated, changed, STORAGE_ATTRS, CFG)
    assert third.data_path != first.data_path and (url / first.data_path).exists()
    finalize(url, STORAGE_ATTRS, [])
    assert not (url / first.data_path).exists() and (url / third.data_path).exists()
    view = open_dataset(url)
    assert [bool(view.sample(i, ("keep",))["keep"]) for i in range(6)] == [r is not None and not r.keep for r in results]


@pytest.mark.parametrize("stall_at", ["mid_arrays", "before_commit"])
def test_sigkill_mid_shard_leaves_only_committed_shards_and_rerun_completes(tmp_path, stall_at):
    url = str(tmp_path / "ds")
    plan = shard_plan(3)
    stalled = SPAWN.Event()
    child = SPAWN.Process(target=writer_child, args=(url, plan, stall_at, stalled))
    child.start()
    assert stalled.wait(CHILD_TIMEOUT_S), "writer child never reached the kill point"
    os.kill(child.pid, signal.SIGKILL)
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == -signal.SIGKILL
    # shard 2 was being written: something is on disk, but no reader accepts it
    leftovers = sorted(os.listdir(tmp_path / "ds" / "shards"))
    prefix = "shard-00002.incomplete-" if stall_at == "mid_arrays" else "shard-00002."
    assert any(name.startswith(prefix) for name in leftovers), leftovers
    assert "shard-00002.commit.json" not in leftovers
    view = open_dataset(url, verify="eager")
    assert [c.shard_idx for c in view.shards] == [0, 1]
    assert sorted(view.column("sample_key").tolist()) == sorted(plan[0] + plan[1])
    # rerun everything: shards 0 and 1 are no-ops, shard 2 gets written; nothing missing or doubled
    commits_before = {c.shard_idx: c for c in view.shards}
    writer_child(url, plan, "", None)
    manifest = finalize(url, STORAGE_ATTRS, [])
    assert manifest.shards[0] == commits_before[0] and manifest.shards[1] == commits_before[1]
    # finalize removed the killed attempt: only committed folders and commit records are left
    committed = {c.data_path.split("/")[-1] for c in manifest.shards}
    names = set(os.listdir(tmp_path / "ds" / "shards"))
    assert names == committed | {f"shard-{i:05d}.commit.json" for i in range(3)}
    keys = open_dataset(url, verify="eager").column("sample_key").tolist()
    expected = [key for idx in sorted(plan) for key in plan[idx]]
    assert keys == expected and len(set(keys)) == len(keys) == 18


def test_two_writer_processes_at_once(tmp_path):
    url = str(tmp_path / "ds")
    plan = shard_plan(4)
    children = [SPAWN.Process(target=writer_child, args=(url, {i: plan[i] for i in part}, "", None))
                for part in ((0, 2), (1, 3))]
    for child in children:
        child.start()
    for child in children:
        child.join(CHILD_TIMEOUT_S)
        assert child.exitcode == 0
    manifest = finalize(url, STORAGE_ATTRS, [])
    assert [c.shard_idx for c in manifest.shards] == [0, 1, 2, 3] and manifest.num_samples == 24
    keys = open_dataset(url, verify="eager").column("sample_key").tolist()
    assert keys == [key for idx in range(4) for key in plan[idx]]


def _corrupt_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_shard_is_refused_with_its_name(tmp_path):
    url = tmp_path / "ds"
    _, manifest = write_dataset(url)
    shard1 = manifest.shards[1]
    _corrupt_byte(url / shard1.data_path / "image" / "c" / "0" / "0" / "0" / "0")
    with pytest.raises(StoreError, match=r"shard-00001 .*checksum mismatch in image/c/0/0/0/0"):
        open_dataset(url, verify="eager")
    view = open_dataset(url)  # lazy: shard 0 still reads, shard 1 fails when first touched
    assert view.sample(0, ("sample_key",))["sample_key"] == shard_plan(2)[0][0]
    with pytest.raises(StoreError, match="shard-00001.*checksum mismatch"):
        view.sample(7)
    # verify="none" skips the sha256 pass (blosc has no checksum, so flipped pixel bytes go unseen),
    # but the sharding index keeps its crc32c: a damaged index still fails loudly, naming the shard
    mask_file = url / shard1.data_path / "mask_hand" / "c" / "0" / "0" / "0"
    data = bytearray(mask_file.read_bytes())
    data[-10] ^= 0xFF
    mask_file.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard-00001 .*shard index of .*mask_hand is corrupt"):
        open_dataset(url, verify="none").sample(6, ("mask_hand",))


def test_unknown_schema_version_is_refused(tmp_path):
    url = tmp_path / "ds"
    write_dataset(url)
    manifest_path = url / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 98
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 98} is not supported"):
        open_dataset(url)
    manifest_path.unlink()  # an unfinalized store: the commit records are checked
    commit_path = url / "shards" / "shard-00001.commit.json"
    commit = json.loads(commit_path.read_text())
    commit["schema_version"] = SCHEMA_VERSION + 1
    commit_path.write_text(json.dumps(commit))
    with pytest.raises(StoreError, match=r"shard-00001\.commit\.json: schema version"):
        open_dataset(url)


def test_missing_field_is_refused_with_shard_and_field(tmp_path):
    url = tmp_path / "ds"
    _, manifest = write_dataset(url)
    import shutil

    shutil.rmtree(url / manifest.shards[0].data_path / "mask_object")
    with pytest.raises(StoreError, match=r"shard-00000 .*stored file mask_object/.* is missing"):
        open_dataset(url, verify="eager")
    with pytest.raises(StoreError, match=r"shard-00000 .*field 'mask_object' is missing"):
        open_dataset(url, verify="none").sample(0)


def test_same_key_in_two_shards_fails_finalize(tmp_path):
    keys = make_keys(1, 4)
    for idx, part in enumerate((keys[:3], keys[2:])):
        annotated, results = make_batch(part)
        write_shard(tmp_path, idx, annotated, results, STORAGE_ATTRS, CFG)
    with pytest.raises(StoreError, match=f"{keys[2]}.*shard-00000 and shard-00001"):
        finalize(tmp_path, STORAGE_ATTRS, [])


def test_write_shard_rejects_bad_inputs(tmp_path):
    annotated, results = make_batch(make_keys(1, 3))
    with pytest.raises(ValueError, match="out of order"):
        write_shard(tmp_path, 0, annotated, results[::-1], STORAGE_ATTRS, CFG)
    with pytest.raises(ValueError, match="2 entries for 3"):
        write_shard(tmp_path, 0, annotated, results[:2], STORAGE_ATTRS, CFG)
    with pytest.raises(ValueError, match="appears twice"):
        write_shard(tmp_path, 0, annotated + annotated[:1], results + results[:1], STORAGE_ATTRS, CFG)
    with pytest.raises(ValueError, match="unknown keys"):
        write_shard(tmp_path, 0, annotated, results, {"nmae": "x", "source": "y"}, CFG)


@pytest.fixture(scope="module")
def s3_options():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}",
               "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="unihope-test")
    yield options
    server.stop()


def test_s3_round_trip_against_moto_server(s3_options):
    url = "s3://unihope-test/ds"
    inputs, manifest = write_dataset(url, num_shards=1, storage_options=s3_options)  # moto: ~50 ms per request
    assert manifest.num_samples == 6
    check_round_trip(url, inputs, storage_options=s3_options)


# ---- batches ----------------------------------------------------------------------------------

def test_batch_round_trip_exact(tmp_path):
    annotated, results = make_batch(make_keys(2, 3))
    # a numpy scalar and a frame with another crop size must survive too
    annotated[1] = dataclasses.replace(annotated[1], visibility=np.float32(0.25))
    path = tmp_path / "batch-0000.npz"
    save_batch(path, annotated, results)
    assert os.listdir(tmp_path) == ["batch-0000.npz"]  # no temp file left behind
    loaded_annotated, loaded_results = load_batch(path)
    assert len(loaded_annotated) == 6 and [r is None for r in loaded_results] == [r is None for r in results]
    for a, e in zip(loaded_annotated, annotated):
        assert_same_record(a, e)
    assert type(loaded_annotated[1].visibility) is np.float32
    for a, e in zip(loaded_results, results):
        if e is not None:
            assert_same_record(a, e)
    assert loaded_annotated[0].frame.image_size_wh == (640, 480)


def test_batch_without_results_and_mixed_shapes_on_memory_url():
    from storage_fixtures import make_annotated

    annotated = [make_annotated("s/q/0/000001", 32), make_annotated("s/q/0/000002", 48)]
    url = "memory://unihope-test/batches/b.npz"
    save_batch(url, annotated)
    loaded, results = load_batch(url)
    assert results is None
    for a, e in zip(loaded, annotated):
        assert_same_record(a, e)
    assert isinstance(loaded[0], AnnotatedFrame) and not isinstance(loaded[0], DeocclusionResult)


def test_load_batch_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="batch file not found"):
        load_batch(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a batch file"):
        load_batch(tmp_path / "bad.npz")


# ---- versions: ids, pointer, pins, gc ----------------------------------------------------------


def _rebuild_shard0_changed(url) -> None:
    """The next build: shard 0 with other de-occlusion results (a new attempt folder), shard 1 unchanged."""
    plan = shard_plan(2)
    for idx, keys in plan.items():
        annotated, results = make_batch(keys)
        if idx == 0:
            results = [dataclasses.replace(r, keep=not r.keep) if r is not None else None for r in results]
        write_shard(url, idx, annotated, results, STORAGE_ATTRS, CFG)
    finalize(url, STORAGE_ATTRS, [])


def test_versions_are_immutable_and_an_unchanged_rebuild_commits_none(tmp_path):
    from unihope.storage.versions import current_version, list_versions, version_digest

    url = tmp_path / "ds"
    _, first = write_dataset(url)
    assert current_version(url) == first.version_id == version_digest(first.shards) and first.version_seq == 1
    v1_keep = open_dataset(url).column("keep").copy()
    write_dataset(url)  # same inputs: same shards, same id, nothing new
    assert [row.version_id for row in list_versions(url)] == [first.version_id]
    _rebuild_shard0_changed(url)
    second = current_version(url)
    rows = list_versions(url)
    assert [row.version_id for row in rows] == [second, first.version_id] and rows[0].is_current
    assert [row.seq for row in rows] == [2, 1] and all(row.num_samples == 12 for row in rows)
    # the old version still reads exactly as it was written, by id or unique prefix
    old = open_dataset(url, version=first.version_id[:6], verify="eager")
    assert old.version_id == first.version_id
    np.testing.assert_array_equal(old.column("keep"), v1_keep)
    assert not np.array_equal(open_dataset(url).column("keep")[:6], v1_keep[:6])
    with pytest.raises(StoreError, match="does not exist"):
        open_dataset(url, version="ffffffffffff")


def test_gc_keeps_pinned_versions_and_removes_them_once_released(tmp_path):
    import subprocess
    import time

    from unihope.storage.versions import PinRecord, current_version, gc, list_versions, pin

    url = tmp_path / "ds"
    _, first = write_dataset(url)
    _rebuild_shard0_changed(url)
    newest = current_version(url)
    only_v1 = {c.data_path for c in first.shards} - {c.data_path for c in open_dataset(url).shards}
    assert len(only_v1) == 1 and all((url / path).is_dir() for path in only_v1)
    with pin(url, first.version_id, owner="test-run", ttl_s=600) as held:
        assert list_versions(url)[1].pinned_by == ("test-run",)
        result = gc(url, keep=1)
        assert result.removed_versions == () and set(result.kept_versions) == {newest, first.version_id}
        assert open_dataset(url, version=first.version_id, verify="eager").num_samples == 12
    assert held.is_released
    result = gc(url, keep=1)
    assert result.removed_versions == (first.version_id,) and set(result.removed_folders) == only_v1
    assert not any((url / path).exists() for path in only_v1)
    assert [row.version_id for row in list_versions(url)] == [newest]
    assert open_dataset(url, verify="eager").num_samples == 12  # the newest is untouched
    with pytest.raises(StoreError, match="does not exist"):
        pin(url, first.version_id, owner="late", ttl_s=60)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        gc(url, keep=0)
    # pins left by a killed run: expired, or their process is gone on this host
    expired = pin(url, newest, owner="expired", ttl_s=0.01)
    time.sleep(0.05)
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = PinRecord("pins/x.json", newest, "killed", dead.pid, socket.gethostname(), time.time() + 600)
    alive = PinRecord("pins/y.json", newest, "alive", os.getpid(), socket.gethostname(), time.time() + 600)
    assert not killed.is_live(time.time()) and alive.is_live(time.time())
    assert gc(url, keep=1).removed_pins == (expired.relative_path,)


# ---- damaged stores: refused in plain words, naming the shard ----------------------------------


def _version_file(url, manifest):
    return url / "versions" / f"{manifest.version_id}.json"


def test_doubled_dropped_or_altered_manifests_are_refused(tmp_path):
    from unihope.storage.versions import POINTER_FORMAT, version_digest

    url = tmp_path / "ds"
    _, manifest = write_dataset(url, num_shards=3)
    path = _version_file(url, manifest)
    original = json.loads(path.read_text())

    def damaged(edit):
        data = json.loads(json.dumps(original))
        edit(data)
        path.write_text(json.dumps(data))

    # a shard listed twice (the sample count made to match): 24 samples with 6 duplicates before
    damaged(lambda d: (d["shards"].insert(1, d["shards"][0]), d.update(num_samples=24)))
    with pytest.raises(StoreError, match="lists shard-00000 2 times"):
        open_dataset(url, verify="none")
    # a shard dropped: a gap the manifest does not record, or (the last one) a digest that no longer matches
    damaged(lambda d: (d["shards"].pop(1), d.update(num_samples=12)))
    with pytest.raises(StoreError, match=r"shard indices \[1\] are absent.*dropped"):
        open_dataset(url, verify="none")
    damaged(lambda d: (d["shards"].pop(2), d.update(num_samples=12)))
    with pytest.raises(StoreError, match="digest to .* not to its id .* altered"):
        open_dataset(url, verify="none")
    damaged(lambda d: d.update(num_samples=17))
    with pytest.raises(StoreError, match="says 17 samples but its shards hold 18"):
        open_dataset(url)
    # a self-consistent version that drops a shard the commit records say was committed before it
    path.write_text(json.dumps(original))
    forged = json.loads(json.dumps(original))
    forged["shards"].pop(2)
    forged.update(num_samples=12, created_utc="2999-01-01T00:00:00Z")
    from unihope.storage.schema import ShardCommit

    forged["version_id"] = version_digest([ShardCommit.from_json(s) for s in forged["shards"]])
    (url / "versions" / f"{forged['version_id']}.json").write_text(json.dumps(forged))
    (url / "manifest.json").write_text(json.dumps({"format": POINTER_FORMAT, "schema_version": SCHEMA_VERSION,
                                                   "version_id": forged["version_id"]}))
    with pytest.raises(StoreError, match=r"shard-00002\.commit\.json was committed before version .* dropped"):
        open_dataset(url)
    # a manifest.json of the old layout (the shards inline, no pointer)
    (url / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "shards": original["shards"]}))
    with pytest.raises(StoreError, match="not a version pointer"):
        open_dataset(url)


def test_truncated_column_names_its_shard_even_without_verification(tmp_path):
    url = tmp_path / "ds"
    _, manifest = write_dataset(url)
    chunk = url / manifest.shards[1].data_path / "visibility" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(StoreError, match=r"shard-00001 .*cannot decode visibility"):
        open_dataset(url, verify="none").column("visibility")
    with pytest.raises(StoreError, match=r"shard-00001 .*checksum mismatch in visibility/c/0"):
        open_dataset(url).column("visibility")  # the default verifies what it reads
    assert open_dataset(url).sample(0, ("visibility",))["visibility"] == open_dataset(
        url, verify="none").shard(0).column("visibility")[0]  # shard 0 is intact and reads


def test_report_and_cli_refuse_a_damaged_store_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from unihope.cli import app
    from unihope.report import summarize_dataset, write_report

    url = tmp_path / "ds"
    _, manifest = write_dataset(url)
    _corrupt_byte(url / manifest.shards[1].data_path / "image" / "c" / "0" / "0" / "0" / "0")
    summarize_dataset(str(url))  # columns only: the image is not read, the columns are intact
    with pytest.raises(StoreError, match=r"shard-00001 .*checksum mismatch in image"):
        write_report(data_url=str(url), out_dir=tmp_path / "report")
    _corrupt_byte(url / manifest.shards[0].data_path / "keep" / "c" / "0")
    with pytest.raises(StoreError, match=r"shard-00000 .*checksum mismatch in keep/c/0"):
        summarize_dataset(str(url))
    runner = CliRunner()
    for args in (["train", "--data", str(url), "--out", str(tmp_path / "run")],
                 ["report", "--data", str(url), "--out", str(tmp_path / "report")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        # one line from us (smplx may print its MANO shape warning before it): no traceback
        errors = [line for line in result.output.splitlines() if "cannot read the dataset: " in line]
        assert len(errors) == 1 and "shard-00000" in errors[0] and "checksum mismatch" in errors[0], result.output
        assert "Traceback" not in result.output and len(result.output.splitlines()) <= 3, result.output


# ---- standard Zarr v3 readers: tensorstore, xarray, no consolidated metadata -------------------


def _zarr_values(group_path, name):
    return zarr.open_array(f"{group_path}/{name}", mode="r", zarr_format=3)[...]


def test_tensorstore_reads_every_array_of_a_version_like_zarr_python(tmp_path):
    import tensorstore as ts

    from unihope.storage.interop import shard_group_urls
    from unihope.storage.schema import ARRAY_DIMS

    url = tmp_path / "ds"
    write_dataset(url)
    groups = shard_group_urls(url)
    assert len(groups) == 2
    for group in groups:
        for name in ARRAY_NAMES:
            store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{group}/{name}"}},
                            read=True).result()
            expected = _zarr_values(group, name)
            assert store.domain.labels == ARRAY_DIMS[name], name
            actual = store.read().result()
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
            np.testing.assert_array_equal(actual, expected, err_msg=name)  # NaNs compare equal


def test_xarray_opens_a_version_as_one_table_with_all_samples(tmp_path):
    from unihope.storage.interop import open_xarray
    from unihope.storage.versions import current_version

    url = tmp_path / "ds"
    inputs, first = write_dataset(url)
    _rebuild_shard0_changed(url)
    for version_id in (first.version_id, current_version(url)):
        table = open_xarray(url, version=version_id)
        view = open_dataset(url, version=version_id, verify="eager")
        assert table.sizes["sample"] == view.num_samples == 12 and set(table.data_vars) == set(ARRAY_NAMES) - {"sample_key"}
        assert set(table.coords) == {"sample_key"}
        assert table.attrs["unihope"]["version_id"] == version_id
        keys = table["sample_key"].values.tolist()  # decoded, the "sample" coordinate
        assert keys == view.column("sample_key").tolist() == sorted(inputs)
        np.testing.assert_array_equal(table["keep"].values, view.column("keep"))
        for index in (0, 7, 11):
            stored = view.sample(index, ("image", "hand_parts", "joints_3d", "beta"))
            for name, value in stored.items():
                np.testing.assert_array_equal(table[name].values[index], value, err_msg=name)
        assert table["image"].dims == ("sample", "y", "x", "rgb")
    assert not np.array_equal(open_xarray(url, version=first.version_id)["keep"].values,
                              open_xarray(url)["keep"].values)


def test_reader_does_not_need_consolidated_metadata(tmp_path):
    url = tmp_path / "ds"
    inputs, manifest = write_dataset(url)
    for commit in manifest.shards:
        meta_path = url / commit.data_path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        assert meta.pop("consolidated_metadata", None) is not None
        meta_path.write_text(json.dumps(meta))
    view = open_dataset(url, verify="none")  # the rewritten zarr.json no longer matches its checksum
    assert view.column("sample_key").tolist() == sorted(inputs)
    for index in range(view.num_samples):
        annotated, result = view.record(index)
        expected_annotated, expected_result = inputs[annotated.frame.sample_key]
        assert_same_record(annotated, expected_annotated)
        if expected_result is not None:
            assert_same_record(result, expected_result)
    with pytest.raises(StoreError, match="checksum mismatch in zarr.json"):
        open_dataset(url).column("keep")


def test_too_long_strings_are_refused_naming_the_field(tmp_path):
    annotated, results = make_batch(make_keys(1, 2))
    record = dataclasses.replace(annotated[0].frame, image_path="/data/" + "x" * 1100 + ".jpg")
    annotated[0] = dataclasses.replace(annotated[0], frame=record)
    with pytest.raises(ValueError, match=r"field 'image_path'.* 1110 bytes in UTF-8.* at most 1024"):
        write_shard(tmp_path, 0, annotated, results, STORAGE_ATTRS, CFG)


# ---- UniHOPE's own label files (export-unihope), read as the released loader reads them ---------

# dex-ycb-toolkit's s0 setup (dex_ycb.py), written out here from the toolkit, not from our splits module
TOOLKIT_SUBJECTS = ["20200709-subject-01", "20200813-subject-02", "20200820-subject-03", "20200903-subject-04",
                    "20200908-subject-05", "20200918-subject-06", "20200928-subject-07", "20201002-subject-08",
                    "20201015-subject-09", "20201022-subject-10"]
TOOLKIT_SERIALS = ["836212060125", "839512060362", "840412060917", "841412060263", "932122060857", "932122060861",
                   "932122061900", "932122062010"]
TOOLKIT_S0 = {"train": (range(10), lambda i: i % 5 != 4), "val": ([0, 1], lambda i: i % 5 == 4),
              "test": (range(2, 10), lambda i: i % 5 == 4)}
NUM_TOOLKIT_FRAMES = 5


def _toolkit_s0_ids(root, mode) -> dict[str, int]:
    """frame key -> index, as DexYCBDataset('s0', mode) enumerates: subject, sorted sequences, camera, frame."""
    subject_idx, rule = TOOLKIT_S0[mode]
    ids = {}
    for s in subject_idx:
        subject = TOOLKIT_SUBJECTS[s]
        if not (root / subject).is_dir():
            continue
        sequences = [name for i, name in enumerate(sorted(os.listdir(root / subject))) if rule(i)]
        for sequence in sequences:
            for serial in TOOLKIT_SERIALS:
                for frame in range(NUM_TOOLKIT_FRAMES):
                    ids[f"{subject}/{sequence}/{serial}/{frame:06d}"] = len(ids)
    return ids


def _upstream_like_read(root, setup, mode) -> list[dict]:
    """What data_loader/DEX_YCB_HOPE.py takes from the files (local mode), sample by sample in its order."""
    with open(root / f"dex_ycb_{setup}_{mode}_data.json", encoding="utf-8") as handle:
        sample_dict = json.load(handle)
    sample_list = sorted(sample_dict.keys(), key=lambda x: int(x[3:]))
    grasp_gt = np.load(root / f"grasp_{setup}_{mode}.npy", allow_pickle=True).item()
    occ_ratio = np.load(root / f"hand_occ_{setup}_{mode}.npy", allow_pickle=True).item()
    rows = []
    for sample_key in sample_list:
        info = sample_dict[sample_key]
        intr = info["intrinsics"]
        rows.append({
            "id": sample_key, "color_file": info["color_file"], "object_seg_file": info["object_seg_file"],
            "K": np.array([[intr["fx"], 0, intr["ppx"]], [0, intr["fy"], intr["ppy"]], [0, 0, 1]]),
            "joint_2d": np.array(info["joint_2d"], dtype=np.float32).squeeze(),
            "joint_3d": np.array(info["joint_3d"], dtype=np.float32).squeeze(),
            "pose_m": np.array(info["pose_m"], dtype=np.float32).squeeze(),
            "grasp_object_pose": np.array(info["pose_y"][info["ycb_grasp_ind"]], dtype=np.float32),
            "grasp_object_id": info["ycb_ids"][info["ycb_grasp_ind"]],
            "mano_side": info["mano_side"], "mano_betas": np.array(info["mano_betas"], dtype=np.float32),
            "gt_grasping": grasp_gt[sample_key], "occluded": not occ_ratio[sample_key] > 0.8,
            "occ_ratio": occ_ratio[sample_key], "is_grasp_target": info.get("is_grasp_target"),
        })
    return rows


def _dexycb_tree(root, keys) -> dict[str, dict]:
    """A DexYCB-layout tree: 5 sequences for subjects 01 and 03, meta.yml, label files for `keys`."""
    labels = {}
    for subject in (TOOLKIT_SUBJECTS[0], TOOLKIT_SUBJECTS[2]):
        for i in range(5):
            sequence_dir = root / subject / f"2020{i + 1:02d}01_1000{i:02d}"
            sequence_dir.mkdir(parents=True)
            (sequence_dir / "meta.yml").write_text(
                f"num_frames: {NUM_TOOLKIT_FRAMES}\nserials: {TOOLKIT_SERIALS}\nycb_ids: [4, 5, 12]\n"
                f"ycb_grasp_ind: 1\nmano_sides: [right]\nmano_calib: [calib_a]\n")
    mano_dir = root / "calibration" / "mano_calib_a"
    mano_dir.mkdir(parents=True, exist_ok=True)
    (mano_dir / "mano.yml").write_text(f"betas: {[0.1 * (i + 1) for i in range(10)]}\n")
    rng = np.random.default_rng(7)
    for key in keys:
        subject, sequence, serial, frame = key.split("/")
        folder = root / subject / sequence / serial
        folder.mkdir(parents=True, exist_ok=True)
        label = {"joint_3d": rng.normal(0, 1, (1, 21, 3)).astype(np.float32),
                 "joint_2d": rng.uniform(0, 400, (1, 21, 2)).astype(np.float32),
                 "pose_m": rng.normal(0, 1, (1, 51)).astype(np.float32),
                 "pose_y": rng.normal(0, 1, (3, 3, 4)).astype(np.float32), "seg": np.zeros((4, 4), np.uint8)}
        np.savez(folder / f"labels_{frame}.npz", **label)
        labels[key] = label
    return labels


def test_export_unihope_writes_what_the_released_loader_reads(tmp_path):
    from typer.testing import CliRunner

    from unihope.cli import app

    root = tmp_path / "dexycb"
    (root / "calibration").mkdir(parents=True)
    keys = [f"{TOOLKIT_SUBJECTS[0]}/20200201_100001/{TOOLKIT_SERIALS[1]}/000002",
            f"{TOOLKIT_SUBJECTS[0]}/20200201_100001/{TOOLKIT_SERIALS[1]}/000003",
            f"{TOOLKIT_SUBJECTS[2]}/20200301_100002/{TOOLKIT_SERIALS[6]}/000001",
            f"{TOOLKIT_SUBJECTS[0]}/20200501_100004/{TOOLKIT_SERIALS[0]}/000001",
            f"{TOOLKIT_SUBJECTS[2]}/20200501_100004/{TOOLKIT_SERIALS[7]}/000004",
            f"{TOOLKIT_SUBJECTS[2]}/20200501_100004/{TOOLKIT_SERIALS[7]}/000000"]
    labels = _dexycb_tree(root, keys)
    annotated, results = make_batch(keys)
    write_shard(tmp_path / "ds", 0, annotated, results, STORAGE_ATTRS, CFG)
    finalize(tmp_path / "ds", STORAGE_ATTRS, [])
    by_key = {a.frame.sample_key: a for a in annotated}
    out = tmp_path / "unihope"
    result = CliRunner().invoke(app, ["export-unihope", "--data", str(tmp_path / "ds"), "--split", "s0", "--out",
                                      str(out), "--dexycb-root", str(root)])
    assert result.exit_code == 0, result.output
    assert "train 3, val 1, test 2" in result.output
    for mode, expected_keys in (("train", keys[:3]), ("val", keys[3:4]), ("test", keys[4:])):
        ids = _toolkit_s0_ids(root, mode)
        rows = _upstream_like_read(out, "s0", mode)
        assert [row["id"] for row in rows] == sorted((f"id_{ids[k]}" for k in expected_keys), key=lambda x: int(x[3:]))
        key_of = {f"id_{ids[k]}": k for k in expected_keys}
        for row in rows:
            key = key_of[row["id"]]
            frame = by_key[key]
            color_file = f"{key.rsplit('/', 1)[0]}/color_{key.rsplit('/', 1)[1]}.jpg"
            assert row["color_file"] == f"../dexycb/{color_file}"  # relative to the loader's dataset_root
            assert row["object_seg_file"] == "object_render/" + color_file.replace(
                "color", "grasp_object_seg").replace("jpg", "png")
            np.testing.assert_allclose(row["K"], frame.frame.K)
            np.testing.assert_array_equal(row["joint_2d"], labels[key]["joint_2d"][0])
            np.testing.assert_array_equal(row["pose_m"], labels[key]["pose_m"][0])
            np.testing.assert_array_equal(row["grasp_object_pose"], labels[key]["pose_y"][1])
            assert row["grasp_object_id"] == 5 and row["mano_side"] == "right"
            np.testing.assert_array_equal(row["mano_betas"], np.float32([0.1 * (i + 1) for i in range(10)]))
            assert isinstance(row["gt_grasping"], bool) and row["gt_grasping"] == frame.grasp.is_grasping
            assert row["occ_ratio"] == pytest.approx(frame.visibility) and row["occluded"] == (frame.visibility <= 0.8)
    test_rows = {row["id"]: row for row in _upstream_like_read(out, "s0", "test")}
    ids = _toolkit_s0_ids(root, "test")
    assert test_rows[f"id_{ids[keys[4]]}"]["is_grasp_target"] is True  # frame 4 of 5: the last BOP target
    assert test_rows[f"id_{ids[keys[5]]}"]["is_grasp_target"] is False  # frame 0: a BOP target, not the last


def test_direct_shard_encoder_writes_the_bytes_zarr_writes(tmp_path):
    """encode_group encodes sample arrays itself (zarr-python's pipeline is the write bottleneck):
    every stored object must be byte-identical to what zarr-python writes for the same arrays."""
    from unihope.storage.schema import ARRAYS_BY_NAME, CHUNKING_SAMPLE
    from unihope.storage.writer import build_columns, encode_group

    annotated, results = make_batch(make_keys(2, 5))
    columns = build_columns(annotated, results)
    ours = encode_group(columns, {"x": 1}, CFG)
    to_buffer = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes
    for name, spec in ARRAYS_BY_NAME.items():
        if spec.chunking != CHUNKING_SAMPLE:
            continue
        chunk = "c/" + "/".join(["0"] * columns[name].ndim)
        reference = {"zarr.json": to_buffer(ours[f"{name}/zarr.json"])}  # the same array metadata, zarr writes
        array = zarr.open_array(zarr.storage.MemoryStore(reference), mode="r+", zarr_format=3,
                                config={"write_empty_chunks": True})
        array[...] = columns[name]
        assert reference[chunk].to_bytes() == ours[f"{name}/{chunk}"], name
    # and the stored shards decode to the columns through zarr-python and our fast reader
    url = tmp_path / "ds"
    write_shard(url, 0, annotated, results, STORAGE_ATTRS, CFG)
    finalize(url, STORAGE_ATTRS, [])
    view = open_dataset(url, verify="eager")
    shard = zarr.open_group(str(url / view.shards[0].data_path), mode="r")
    for name, spec in ARRAYS_BY_NAME.items():
        if spec.chunking == CHUNKING_SAMPLE:
            np.testing.assert_array_equal(shard[name][...], columns[name], err_msg=name)
            np.testing.assert_array_equal(view.sample(3, (name,))[name], columns[name][3], err_msg=name)
