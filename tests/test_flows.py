"""Flows and tasks: plans, retries, OOM halving, fault injection, and the build DAG end to end under Prefect."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unihope.storage.schema import FrameRef
from unihope.tasks.options import (
    InjectedFault, is_cuda_oom, is_transient, parse_fail_once, run_with_oom_halving, should_fail,
)
from unihope.buildplan.hashes import stage_hashes
from unihope.buildplan.plan import ShardSlice, plan_batches, plan_parts, plan_shards, read_index, write_index
from unihope.buildplan.workfiles import read_executions
from unihope.config import DeocclusionConfig, FlowConfig, PipelineConfig, StorageConfig
from unihope.progress import BuildProgress, format_duration

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Plans and hashes (no Prefect)
# ----------------------------------------------------------------------------------------------


def _refs(groups: dict[tuple[str, str], int]) -> list[FrameRef]:
    refs = []
    for (seq, serial), count in groups.items():
        refs += [FrameRef(f"{seq}/{serial}/{i:06d}", seq, serial, i) for i in range(count)]
    return refs[::-1]  # any order in, sorted plan out


def test_plan_parts_keeps_sequence_camera_groups_whole():
    refs = _refs({("s/a", "1"): 5, ("s/a", "2"): 5, ("s/b", "1"): 12, ("s/c", "1"): 3})
    parts = plan_parts(refs, frames_per_task=10)
    # groups: a/1 (5) + a/2 (5) = 10 | b/1 (12, alone, larger than a task) | c/1 (3)
    assert [len(p) for p in parts] == [10, 12, 3]
    assert [r.frame_idx for r in parts[0][:5]] == [0, 1, 2, 3, 4]
    for part in parts:
        for seq, serial in {(r.sequence_key, r.serial) for r in part}:
            group_sizes = sum(1 for p in parts for r in p if (r.sequence_key, r.serial) == (seq, serial))
            assert group_sizes == sum(1 for r in part if (r.sequence_key, r.serial) == (seq, serial))
    batches = plan_batches([len(p) for p in parts], frames_per_task=10)
    assert [(b.part_idx, b.start, b.stop) for b in batches] == [(0, 0, 10), (1, 0, 10), (1, 10, 12), (2, 0, 3)]
    assert [b.batch_idx for b in batches] == [0, 1, 2, 3]


def test_plan_parts_rejects_duplicate_keys():
    ref = FrameRef("s/a/1/000000", "s/a", "1", 0)
    with pytest.raises(ValueError, match="more than once"):
        plan_parts([ref, ref], 4)


def test_index_round_trip(tmp_path):
    parts = plan_parts(_refs({("s/a", "1"): 3, ("s/b", "1"): 2}), 3)
    batches = plan_batches([len(p) for p in parts], 2)
    write_index(tmp_path / "index.json", parts, batches)
    parts_back, batches_back = read_index(tmp_path / "index.json")
    assert parts_back == parts and batches_back == batches


def test_plan_shards_cuts_the_concatenation_in_order():
    shards = plan_shards([5, 0, 7, 2], shard_size=4)
    assert [s.num_samples for s in shards] == [4, 4, 4, 2]
    assert shards[0].slices == (ShardSlice(0, 0, 4),)
    assert shards[1].slices == (ShardSlice(0, 4, 5), ShardSlice(2, 0, 3))
    assert shards[2].slices == (ShardSlice(2, 3, 7),)
    assert shards[3].slices == (ShardSlice(3, 0, 2),)
    assert plan_shards([], 4) == []


def test_stage_hashes_change_only_downstream():
    base = PipelineConfig()
    h0 = stage_hashes(base, "/data/out")
    h_deocc = stage_hashes(base.model_copy(update={"deocclusion": DeocclusionConfig(beta_fixed=0.6)}), "/data/out")
    assert (h_deocc.index, h_deocc.grasp, h_deocc.annotate) == (h0.index, h0.grasp, h0.annotate)
    assert h_deocc.deocclude != h0.deocclude and h_deocc.pack != h0.pack
    h_store = stage_hashes(base.model_copy(update={"storage": StorageConfig(shard_size=7)}), "/data/out")
    assert h_store.deocclude == h0.deocclude and h_store.pack != h0.pack
    # orchestration settings never invalidate results
    h_flow = stage_hashes(base.model_copy(update={"flow": FlowConfig(retries=5, task_runner="dask")}), "/data/out")
    assert h_flow == h0
    assert stage_hashes(base, "/data/other").pack != h0.pack


# ----------------------------------------------------------------------------------------------
# Retries, OOM halving, fault injection, progress (no Prefect)
# ----------------------------------------------------------------------------------------------


class FakeOutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by class name)."""


FakeOutOfMemoryError.__name__ = "OutOfMemoryError"


def test_transient_errors_are_classified():
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_cuda_oom(FakeOutOfMemoryError("boom"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))
    assert is_transient(OSError("disk")) and is_transient(InjectedFault("x"))
    assert not is_transient(ValueError("bad config")) and not is_transient(KeyError("k"))


def test_retry_condition_retries_transient_failures_only():
    from prefect.states import Failed

    from unihope.tasks.options import retry_on_transient

    assert retry_on_transient(None, None, Failed(data=OSError("connection reset")))
    assert retry_on_transient(None, None, Failed(data=RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")))
    assert retry_on_transient(None, None, Failed(data=InjectedFault("first attempt")))
    assert not retry_on_transient(None, None, Failed(data=ValueError("source.root does not exist")))


def test_oom_halving_finishes_the_batch_in_halves():
    calls: list[int] = []
    halvings: list[int] = []

    def fake_gpu(chunk: list[int]) -> list[int]:
        calls.append(len(chunk))
        if len(chunk) > 3:  # a "GPU" that fits 3 frames at a time
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return [x * 10 for x in chunk]

    out = run_with_oom_halving(fake_gpu, list(range(11)), chunk_size=8, on_halve=halvings.append)
    assert out == [x * 10 for x in range(11)]
    assert halvings == [4, 2]
    assert calls == [8, 4, 2, 2, 2, 2, 2, 1]


def test_oom_on_a_single_frame_and_other_errors_propagate():
    def always_oom(chunk):
        raise FakeOutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_with_oom_halving(always_oom, [1, 2, 3], chunk_size=2)

    def broken(chunk):
        raise RuntimeError("not an OOM")

    with pytest.raises(RuntimeError, match="not an OOM"):
        run_with_oom_halving(broken, [1, 2, 3], chunk_size=2)


def test_fault_injection_selects_name_or_item_and_first_attempt_only():
    assert parse_fail_once(" pack , annotate:2,,") == ("pack", "annotate:2")
    assert should_fail("pack", 5, ("pack",), run_count=1)
    assert not should_fail("pack", 5, ("pack",), run_count=2)
    assert should_fail("annotate", 2, ("annotate:2",), run_count=1)
    assert not should_fail("annotate", 3, ("annotate:2",), run_count=1)


def test_only_gpu_deoccluders_carry_the_gpu_tag():
    from unihope.tasks.deocclude import deocclude_tags
    from unihope.tasks.deocclude import deocclude_batch
    from unihope.tasks.options import configure_task

    def cfg(backend: str, device: str = "auto", gpu_tag: str = "gpu") -> PipelineConfig:
        return PipelineConfig.model_validate({"deocclusion": {"backend": backend, "controlnet": {"device": device}},
                                              "flow": {"gpu_tag": gpu_tag}})

    assert deocclude_tags(cfg("controlnet")) == ["gpu"]
    assert deocclude_tags(cfg("controlnet", device="cuda:1")) == ["gpu"]
    assert deocclude_tags(cfg("controlnet", device="cpu")) == []  # pinned to the CPU: holds no GPU
    assert deocclude_tags(cfg("controlnet", gpu_tag="")) == []  # tagging switched off
    assert deocclude_tags(cfg("render")) == deocclude_tags(cfg("inpaint")) == []
    tagged = configure_task(deocclude_batch, FlowConfig(),
                            tags=deocclude_tags(cfg("controlnet")))
    assert "gpu" in tagged.tags


def test_progress_lines_report_rate_and_eta():
    now = [0.0]
    lines: list[str] = []
    progress = BuildProgress(emit=lines.append, min_interval_s=5.0, clock=lambda: now[0])
    progress.add_stage("annotate", 100)
    now[0] = 10.0
    progress.advance("annotate", 25)  # 2.5 frames/s, 75 left -> 30 s
    now[0] = 11.0
    progress.advance("annotate", 25)  # throttled
    now[0] = 20.0
    progress.advance("annotate", 50)  # complete: always emitted
    assert len(lines) == 2
    assert "25/100" in lines[0] and "2.5 frames/s" in lines[0] and "ETA 0:30" in lines[0]
    assert "100/100" in lines[1] and "done" in lines[1]
    assert format_duration(3725) == "1:02:05"
    with pytest.raises(ValueError, match="unknown stage"):
        progress.advance("pack", 1)


# ----------------------------------------------------------------------------------------------
# The build DAG end to end, under one Prefect test harness for the whole module
# ----------------------------------------------------------------------------------------------

# The session's synthetic DexYCB fixture (2 sequences x 12 frames x 2 cameras), capped at its first
# 24 frames: sequence 0, two cameras = two (sequence, camera) groups of 12. With 8 frames per task,
# each group is a grasp part of its own (never split) and splits into annotate batches of 8 + 4.
NUM_FRAMES = 24
FRAMES_PER_TASK = 8
NUM_PARTS, NUM_BATCHES = 2, 4
SHARD_SIZE = 10  # 24 samples at most -> 3 shards


def tiny_config(dataset_root: Path, **flow_updates) -> PipelineConfig:
    """A 24-frame build of the synthetic DexYCB-layout fixture: 2 parts, 4 batches, 3 shards."""
    return PipelineConfig.model_validate({
        "name": "flow-test",
        "source": {"kind": "dexycb", "root": str(dataset_root), "max_frames": NUM_FRAMES},
        "crop": {"size_px": 64},
        "deocclusion": {"backend": "render", "batch_size": 4},
        "storage": {"shard_size": SHARD_SIZE},
        "flow": {"frames_per_task": FRAMES_PER_TASK, "task_runner": "threads", "max_workers": 2, "retries": 2,
                 "retry_delay_s": 0.0, **flow_updates},
    })


def dataset_digest(url: str | Path) -> dict[str, str]:
    """sha256 of every stored array of a dataset (all samples, in order), plus its sample keys."""
    from unihope.storage.view import open_dataset
    from unihope.storage.schema import ARRAYS, CHUNKING_COLUMN

    view = open_dataset(str(url), verify="eager")
    try:
        digest = {"__keys__": hashlib.sha256("\n".join(map(str, view.column("sample_key"))).encode()).hexdigest()}
        for spec in ARRAYS:
            h = hashlib.sha256()
            if spec.chunking == CHUNKING_COLUMN:
                values = view.column(spec.name)
                h.update("\x1f".join(map(str, values)).encode() if spec.dtype == "str"
                         else np.ascontiguousarray(values).tobytes())
            else:
                for index in range(len(view)):
                    h.update(np.ascontiguousarray(view.sample(index, names=(spec.name,))[spec.name]).tobytes())
            digest[spec.name] = h.hexdigest()
        return digest
    finally:
        view.close()


def executions_by_stage(out: Path) -> dict[str, list[int]]:
    by_stage: dict[str, list[int]] = {}
    for entry in read_executions(out / "_work"):
        by_stage.setdefault(entry["stage"], []).append(entry["item"])
    return {stage: sorted(items) for stage, items in by_stage.items()}


def task_run_counts(flow_run_id) -> dict[str, int]:
    """Task run name -> Prefect's run_count (attempts) for every task run of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.run_count for run in runs}


@pytest.fixture(scope="module")
def reference_build(prefect_api, synthetic_dexycb, tmp_path_factory):
    """An uninterrupted threads build in which `annotate` batch 1 fails once and is retried."""
    from unihope.flows.build import build_dataset

    out = tmp_path_factory.mktemp("reference") / "data"
    cfg = tiny_config(synthetic_dexycb, fail_once=("annotate:1",))
    state = build_dataset(config=cfg, out=str(out), return_state=True)
    return {"out": out, "cfg": cfg, "state": state, "summary": state.result(),
            "executions": executions_by_stage(out), "digest": dataset_digest(out)}


def test_build_end_to_end_counts_every_frame(reference_build):
    from unihope.storage.view import open_dataset

    summary, out = reference_build["summary"], reference_build["out"]
    assert reference_build["state"].is_completed()
    # every indexed frame is either a sample or a recorded skip: never both, never lost
    assert summary.num_frames_seen == NUM_FRAMES
    view = open_dataset(str(out))
    keys = list(map(str, view.column("sample_key")))
    skipped = [json.loads(line)["sample_key"] for line in (out / "skips.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == summary.num_samples
    assert not set(keys) & set(skipped) and len(keys) + len(skipped) == NUM_FRAMES
    assert view.manifest is not None and len(view.shards) == -(-len(keys) // SHARD_SIZE)
    assert [c.num_samples for c in view.shards][:-1] == [SHARD_SIZE] * (len(view.shards) - 1)
    # samples keep the source's order: sequence, camera, frame
    assert keys == sorted(keys)
    assert summary.num_pairs_kept == int(view.column("keep").sum())
    assert sum(summary.visibility_counts) == summary.num_samples
    assert sum(summary.skips_by_reason.values()) == len(skipped)
    # each stage item computed exactly once (the failed attempt records nothing)
    executions = reference_build["executions"]
    assert executions["index"] == [0]
    assert executions["grasp"] == list(range(NUM_PARTS))
    assert executions["annotate"] == list(range(NUM_BATCHES))
    assert executions["deocclude"] == list(range(NUM_BATCHES))
    assert executions["pack"] == list(range(len(view.shards)))
    assert executions["finalize"] == [0]
    report = (out / "report" / "index.html").read_text()
    assert "contact_sheet.png" in report and (out / "report" / "contact_sheet.png").stat().st_size > 1000


def test_a_task_failing_once_is_retried_and_the_run_completes(reference_build):
    counts = task_run_counts(reference_build["state"].state_details.flow_run_id)
    annotate_runs = sorted(n for name, n in counts.items() if name.startswith("annotate"))
    assert annotate_runs == [1] * (NUM_BATCHES - 1) + [2]  # batch 1 failed its first attempt, then passed
    assert all(n == 1 for name, n in counts.items() if not name.startswith("annotate"))


def test_rerun_with_nothing_changed_recomputes_nothing(reference_build):
    from unihope.flows.build import build_dataset

    out, cfg = reference_build["out"], reference_build["cfg"]
    before = read_executions(out / "_work")
    state = build_dataset(config=cfg, out=str(out), return_state=True)
    assert read_executions(out / "_work") == before
    assert state.result() == reference_build["summary"]
    assert dataset_digest(out) == reference_build["digest"]
    # The work folder answered, not Prefect's cache (there is none): every task ran once and completed
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert {run.name.split("-", 1)[0] for run in runs} >= {"index", "grasp", "annotate", "deocclude", "pack", "finalize"}
    assert {run.state.name for run in runs} == {"Completed"}


def _pickled_files(folder: Path) -> list[str]:
    """Files under `folder` that are pickles (protocol >= 2 opens with 0x80) or .npz files holding object arrays."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            head = handle.read(2)
        if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            found.append(str(path))
        elif path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    for name in arrays.files:
                        arrays[name]
            except ValueError:
                found.append(str(path))
    return found


def test_a_build_leaves_no_pickled_prefect_results_and_a_rerun_reuses_every_stage(reference_build):
    """One caching mechanism (issue 15.3): the stage-hash work folder. Prefect persists no results and
    keeps no cache records (those are pickles: code execution when a shared folder is read)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from unihope.flows.build import build_dataset

    # 1. The reference build wrote no Prefect result records and no pickle: output, work folder, report.
    out = reference_build["out"]
    assert not list(out.rglob("_prefect-results")) and not list(out.rglob("unihope-results*"))
    assert (out / "_work").is_dir() and _pickled_files(out) == []

    # 2. A rerun reuses every stage from the work folder and writes no Prefect result either.
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value()).expanduser()
    stored_before = sorted(storage.rglob("*")) if storage.is_dir() else []
    before = read_executions(out / "_work")
    assert {entry["stage"] for entry in before} == {"index", "grasp", "annotate", "deocclude", "pack", "finalize"}
    summary = build_dataset(config=reference_build["cfg"], out=str(out))
    assert read_executions(out / "_work") == before  # nothing computed: every stage item reused
    assert summary == reference_build["summary"]
    assert (sorted(storage.rglob("*")) if storage.is_dir() else []) == stored_before
    assert _pickled_files(out) == []


def test_changing_only_deocclusion_recomputes_only_deocclusion_and_packing(reference_build, tmp_path):
    import shutil

    from unihope.flows.build import build_dataset

    out = tmp_path / "data"
    shutil.copytree(reference_build["out"], out)
    before = read_executions(out / "_work")
    cfg = reference_build["cfg"]
    changed = cfg.model_copy(update={"deocclusion": cfg.deocclusion.model_copy(update={"keep_rule": "score", "keep_margin": 0.5})})
    summary = build_dataset(config=changed, out=str(out))
    new = read_executions(out / "_work")[len(before):]
    by_stage: dict[str, list[int]] = {}
    for entry in new:
        by_stage.setdefault(entry["stage"], []).append(entry["item"])
    assert {stage: sorted(items) for stage, items in by_stage.items()} == {
        "deocclude": list(range(NUM_BATCHES)), "pack": list(range(summary.num_shards)), "finalize": [0]}
    digest = dataset_digest(out)
    reference = reference_build["digest"]
    # annotation is reused byte for byte; the score rule with a margin no score clears keeps no pair
    for name in ("__keys__", "image", "mask_hand", "depth_scene", "visibility", "joints_2d", "grasp"):
        assert digest[name] == reference[name], name
    assert summary.num_pairs_kept == 0
    from unihope.storage.view import open_dataset

    assert open_dataset(str(out)).manifest.attrs.config["deocclusion"]["keep_margin"] == 0.5


def test_deocclude_task_halves_its_chunks_on_cuda_oom(reference_build, tmp_path, monkeypatch):
    """A de-occluder that runs out of memory above 2 frames still yields the reference results."""
    import unihope.tasks.deocclude as deocclude_tasks
    import unihope.tasks.resources as resources
    from unihope.buildplan.workdir import make_layout
    from unihope.buildplan.workfiles import load_results

    cfg, out = reference_build["cfg"], reference_build["out"]
    layout = make_layout(cfg, str(out))
    worker = resources.WorkerResources()
    real = worker.deoccluder(cfg.deocclusion)
    chunk_sizes: list[int] = []

    class SmallGpu:
        def run(self, frames):
            chunk_sizes.append(len(frames))
            if len(frames) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 3.00 GiB")
            return real.run(frames)

    monkeypatch.setattr(worker, "deoccluder", lambda _cfg: SmallGpu())
    monkeypatch.setattr(resources, "_WORKER", worker)
    summary = deocclude_tasks.deocclude_batch.fn(
        cfg.deocclusion, layout.__class__(root=tmp_path, hashes=layout.hashes), 0,
        str(layout.annotate_batch_path(0)), str(tmp_path / "results.npz"))
    assert chunk_sizes[:2] == [4, 2] and max(chunk_sizes[2:]) == 2
    results = load_results(tmp_path / "results.npz")
    expected = load_results(layout.deocclude_results_path(0))
    assert summary.num_in == len(expected) == len(results)
    for got, want in zip(results, expected):
        assert got.sample_key == want.sample_key and got.keep == want.keep and got.reason == want.reason
        np.testing.assert_array_equal(got.image_deoccluded, want.image_deoccluded)


def _cli_env(prefect_api: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("UNIHOPE_FAIL_ONCE", None)
    env.update(extra)
    return env


def test_sigkill_mid_build_then_rerun_gives_the_uninterrupted_dataset(reference_build, prefect_api, tmp_path):
    import yaml

    # 1. A build whose shard 1 fails once and then waits a minute before its retry: killed meanwhile.
    cfg = reference_build["cfg"].model_copy(
        update={"flow": reference_build["cfg"].flow.model_copy(update={"fail_once": (), "retry_delay_s": 60.0})})
    config_path = tmp_path / "build.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "data"
    command = [sys.executable, "-m", "unihope.cli", "build", "--config", str(config_path), "--out", str(out)]
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=_cli_env(prefect_api, UNIHOPE_FAIL_ONCE="pack:1"),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 150
            while not list((out / "_work").glob("pack-*/shard-0000.json")):
                assert proc.poll() is None, f"build exited early:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no shard committed in time:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()  # killed mid-run: not finalized
    done_before = executions_by_stage(out)
    assert "pack:1" in log_path.read_text() or "injected failure" in log_path.read_text()

    # 2. Rerun to completion: only what was missing is computed.
    rerun = subprocess.run(command, cwd=REPO, env=_cli_env(prefect_api), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "frames seen 24" in rerun.stdout
    after = executions_by_stage(out)
    for stage in ("index", "grasp", "annotate", "deocclude", "pack"):
        assert after[stage] == sorted(set(after[stage])), f"{stage} item computed twice: {after[stage]}"
    assert 0 in done_before["pack"] and 1 in after["pack"]
    assert dataset_digest(out) == reference_build["digest"]


@pytest.mark.parametrize("runner", ["dask", "processes"])
def test_worker_process_runners_give_the_same_dataset_as_threads(reference_build, tmp_path, runner):
    from unihope.launch import run_build

    cfg = reference_build["cfg"]
    runner_cfg = cfg.model_copy(update={"flow": cfg.flow.model_copy(update={"task_runner": runner, "fail_once": ()})})
    out = tmp_path / "data"
    summary = run_build(runner_cfg, str(out), write_report=False)
    assert summary.num_samples == reference_build["summary"].num_samples
    assert dataset_digest(out) == reference_build["digest"]
    # the work really ran in worker processes, not in this one
    pids = {entry["pid"] for entry in read_executions(out / "_work") if entry["stage"] in ("annotate", "deocclude")}
    assert pids and os.getpid() not in pids


def test_build_into_an_object_store_url_gives_the_same_dataset(reference_build, tmp_path):
    """An fsspec URL output (memory://, as s3:// goes): shards, manifest and skips land in the store."""
    import fsspec

    from unihope.launch import run_build

    cfg = reference_build["cfg"]
    url_cfg = cfg.model_copy(update={"flow": cfg.flow.model_copy(update={"fail_once": (), "work_dir": tmp_path / "work"})})
    url = "memory://unihope-flow-test/data"
    try:
        summary = run_build(url_cfg, url, write_report=False)
        assert summary.num_samples == reference_build["summary"].num_samples
        assert dataset_digest(url) == reference_build["digest"]
        stored = {path.rsplit("/", 1)[-1] for path in fsspec.filesystem("memory").ls(url, detail=False)}
        assert {"manifest.json", "skips.jsonl"} <= stored
        assert (tmp_path / "work" / "executions.jsonl").is_file()  # batches stay on local disk
    finally:
        fsspec.filesystem("memory").rm("/unihope-flow-test", recursive=True)


# ----------------------------------------------------------------------------------------------
# One GPU, one slot; no task hangs forever
# ----------------------------------------------------------------------------------------------


def test_device_pool_gives_each_holder_its_own_device():
    import threading

    from unihope.tasks.device_pool import DevicePool, devices_for

    pool = DevicePool(("cuda:0", "cuda:1"))
    with pool.acquire() as first, pool.acquire() as second:
        assert {first, second} == {"cuda:0", "cuda:1"}
        waited = threading.Event()

        def third():
            with pool.acquire(("cuda:1",)) as device:
                waited.set()
                assert device == "cuda:1"

        thread = threading.Thread(target=third)
        thread.start()
        assert not waited.wait(0.3)  # both held: the third holder waits
    thread.join(5)
    assert waited.is_set()
    assert devices_for("auto", ("cuda:0", "cuda:1")) == ("cuda:0", "cuda:1")
    assert devices_for("cuda:1", ("cuda:0", "cuda:1")) == ("cuda:1",) and devices_for("cpu", ("cuda:0",)) == ()
    with pytest.raises(ValueError, match="cuda:3"):
        devices_for("cuda:3", ("cuda:0",))


def test_local_gpu_build_runs_one_batch_per_device(reference_build, tmp_path, monkeypatch):
    """Two (faked) GPUs, four workers, no server-side limit: at most one batch per device, both devices used."""
    import shutil
    import threading

    import unihope.tasks.resources as resources
    from unihope.flows.build import build_dataset

    out = tmp_path / "data"
    shutil.copytree(reference_build["out"], out)
    cfg = reference_build["cfg"]
    worker = resources.WorkerResources(visible_devices=("cuda:0", "cuda:1"))
    real = worker.deoccluder(cfg.deocclusion)
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}
    lock = threading.Lock()

    class FakeGpu:
        def __init__(self, device: str) -> None:
            self.device = device

        def run(self, frames):
            with lock:
                running[self.device] = running.get(self.device, 0) + 1
                peaks[self.device] = max(peaks.get(self.device, 0), running[self.device])
                peaks["all"] = max(peaks.get("all", 0), sum(running.values()))
            time.sleep(0.3)
            with lock:
                running[self.device] -= 1
            return real.run(frames)

    monkeypatch.setattr(worker, "deoccluder", lambda c: FakeGpu(c.controlnet.device))
    monkeypatch.setattr(resources, "_WORKER", worker)
    gpu_cfg = PipelineConfig.model_validate({
        **cfg.model_dump(mode="json"),
        "deocclusion": {**cfg.deocclusion.model_dump(mode="json"), "backend": "controlnet"},
        "flow": {**cfg.flow.model_dump(mode="json"), "fail_once": [], "max_workers": 4},
    })
    summary = build_dataset(config=gpu_cfg, out=str(out), write_report=False)
    assert summary.num_samples == reference_build["summary"].num_samples
    assert set(peaks) == {"cuda:0", "cuda:1", "all"}  # `auto` spread the batches over both devices
    assert peaks["cuda:0"] == peaks["cuda:1"] == 1 and peaks["all"] <= 2


def test_hang_injection_and_watchdog_timeout_are_transient():
    from unihope.tasks.options import HANG_SUFFIX, should_hang
    from unihope.tasks.timeouts import StageTimeout, call_with_timeout

    assert should_hang("annotate", 2, ("annotate:2" + HANG_SUFFIX,), run_count=1)
    assert not should_hang("annotate", 2, ("annotate:2" + HANG_SUFFIX,), run_count=2)
    assert not should_hang("annotate", 2, ("annotate:2",), run_count=1)  # plain entries still just fail
    assert not should_fail("annotate", 2, ("annotate:2" + HANG_SUFFIX,), run_count=1)
    with pytest.raises(StageTimeout, match="probe did not finish within 0.2 s") as err:
        call_with_timeout(lambda: "never", timeout_s=0.2, what="probe", hang_s=30.0)
    assert is_transient(err.value)
    assert call_with_timeout(lambda x: x + 1, 1, timeout_s=5.0, what="probe") == 2
    with pytest.raises(KeyError):
        call_with_timeout(lambda: {}["missing"], timeout_s=5.0, what="probe")


def test_work_on_another_thread_runs_in_the_callers_context():
    """The render thread and the watchdog's thread see the calling task's context variables (Prefect's task
    run context among them), so a stage's log line there reaches its run instead of starting a server."""
    import contextvars

    from unihope.tasks.resources import WorkerResources
    from unihope.tasks.timeouts import call_with_timeout

    task_run = contextvars.ContextVar("task_run", default="none")
    task_run.set("annotate-batch-3")
    assert call_with_timeout(task_run.get, timeout_s=5.0, what="probe") == "annotate-batch-3"
    assert WorkerResources(visible_devices=()).on_render_thread(task_run.get) == "annotate-batch-3"


def test_a_hanging_task_times_out_and_its_retry_is_counted(reference_build, tmp_path):
    """annotate and deocclude batches that hang on their first attempt time out, are retried once and match the reference."""
    from prefect import flow

    from unihope.storage.batches import load_batch
    from unihope.tasks.annotate import annotate_batch
    from unihope.tasks.deocclude import deocclude_batch
    from unihope.tasks.options import configure_task
    from unihope.buildplan.plan import read_index
    from unihope.buildplan.workdir import make_layout
    from unihope.buildplan.workfiles import load_results

    cfg = reference_build["cfg"]
    cfg = cfg.model_copy(update={"flow": cfg.flow.model_copy(update={
        "fail_once": ("annotate:0@hang", "deocclude:0@hang"), "annotate_timeout_s": 4.0, "deocclude_timeout_s": 3.0})})
    layout = make_layout(cfg, str(reference_build["out"]))
    _, batches = read_index(layout.index_path)
    annotated_path, results_path = tmp_path / "annotate-0.batch", tmp_path / "deocclude-0.npz"

    @flow(name="hang-once")
    def hang_once():
        options = dict(flow_cfg=cfg.flow)
        annotate = configure_task(annotate_batch, **options)(
            cfg, layout, batches[0], str(layout.index_path), str(layout.grasp_part_path(batches[0].part_idx)),
            str(annotated_path), str(tmp_path / "skips-0.jsonl"), cfg.flow.fail_once, cfg.flow.torch_threads)
        configure_task(deocclude_batch, **options)(
            cfg.deocclusion, layout, 0, str(annotated_path), str(results_path), cfg.flow.fail_once,
            cfg.flow.torch_threads, cfg.flow.deocclude_timeout_s)
        return annotate

    state = hang_once(return_state=True)
    assert state.is_completed()
    counts = task_run_counts(state.state_details.flow_run_id)
    assert sorted(counts.values()) == [2, 2], counts  # each hung once, timed out, and its retry passed
    got, _ = load_batch(str(annotated_path))
    want, _ = load_batch(str(layout.annotate_batch_path(0)))
    assert [a.frame.sample_key for a in got] == [a.frame.sample_key for a in want]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask_hand, b.mask_hand)  # rendered again on a fresh render thread
    assert [r.keep for r in load_results(results_path)] == [r.keep for r in load_results(layout.deocclude_results_path(0))]


# ----------------------------------------------------------------------------------------------
# Prefect-native visibility (issue 15, item 6): artifacts and task run names of the reference build
# ----------------------------------------------------------------------------------------------


def test_build_publishes_summary_skip_deocclusion_report_and_progress_artifacts(reference_build):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    from unihope.tasks.artifacts import (
        BUILD_DEOCCLUSION_KEY, BUILD_PROGRESS_KEY_PREFIX, BUILD_REPORT_KEY, BUILD_SKIPS_KEY, BUILD_SUMMARY_KEY,
        artifact_key,
    )

    flow_run_id = reference_build["state"].state_details.flow_run_id
    summary, out = reference_build["summary"], reference_build["out"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # keys per dataset: <prefix>-<folder name>-<hash of the URL>
    stored = {a.key: a for a in artifacts if a.key}
    prefixes = (BUILD_SUMMARY_KEY, BUILD_SKIPS_KEY, BUILD_DEOCCLUSION_KEY, BUILD_REPORT_KEY,
                *(BUILD_PROGRESS_KEY_PREFIX + stage for stage in ("grasp", "annotate", "deocclude", "pack")))
    by_key = {prefix: stored[artifact_key(prefix, str(out))] for prefix in prefixes}
    assert by_key[BUILD_SUMMARY_KEY].key.startswith("build-summary-data-")
    assert {by_key[k].type for k in (BUILD_SUMMARY_KEY,)} == {"markdown"}
    assert by_key[BUILD_SKIPS_KEY].type == by_key[BUILD_DEOCCLUSION_KEY].type == "table"
    assert by_key[BUILD_REPORT_KEY].type == "table"  # paths to copy, not a file:// link the UI cannot open
    # the summary artifact carries the summary's own lines
    for line in summary.describe()[:2]:
        assert line in by_key[BUILD_SUMMARY_KEY].data
    # the skip table's counts add up to the summary's skips, per reason
    skip_rows = json.loads(by_key[BUILD_SKIPS_KEY].data)
    by_reason: dict[str, int] = {}
    for row in skip_rows:
        if row["frames"]:
            by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["frames"]
    assert by_reason == summary.skips_by_reason
    deocclusion_rows = json.loads(by_key[BUILD_DEOCCLUSION_KEY].data)
    outcomes = {row["name"]: row["samples"] for row in deocclusion_rows if row["kind"] == "outcome"}
    assert outcomes == summary.deocclusion_reasons and sum(outcomes.values()) == summary.num_samples
    report_files = {row["file"]: row["path"] for row in json.loads(by_key[BUILD_REPORT_KEY].data)}
    assert report_files["index.html"] == str((out / "report" / "index.html").resolve())
    assert "file://" not in by_key[BUILD_REPORT_KEY].data
    # one progress artifact per stage, ending at 100%
    for stage in ("grasp", "annotate", "deocclude", "pack"):
        progress = by_key[BUILD_PROGRESS_KEY_PREFIX + stage]
        assert progress.type == "progress" and float(progress.data) == 100.0, (stage, progress.data)
    # task runs are named by their item
    names = {run.name for run in runs}
    assert {f"annotate-batch-{i}" for i in range(NUM_BATCHES)} <= names
    assert {f"deocclude-batch-{i}" for i in range(NUM_BATCHES)} <= names
    assert {f"grasp-part-{i}" for i in range(NUM_PARTS)} <= names
    assert {f"pack-shard-{i}" for i in range(summary.num_shards)} <= names


def test_train_flow_publishes_its_metrics_and_applies_set_overrides(reference_build, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    from unihope.flows.train import train_flow
    from unihope.tasks.artifacts import TRAIN_METRICS_KEY, TRAIN_RUN_KEY, artifact_key

    overrides = ["optim.max_steps=2", "optim.batch_size=4", "data.val_fraction=0.0", "data.eval_split=train",
                 "data.max_train_samples=8", "data.max_eval_samples=4", "eval_batch_size=4"]
    state = train_flow(data_url=str(reference_build["out"]), train_config_path="configs/train_demo.yaml",
                       runs_dir=str(tmp_path / "runs"), overrides=overrides, return_state=True)
    run_dir = Path(state.result())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 2  # the override reached the run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    metrics_key, run_key = (artifact_key(k, str(reference_build["out"])) for k in (TRAIN_METRICS_KEY, TRAIN_RUN_KEY))
    assert by_key[metrics_key].type == "table" and by_key[run_key].type == "markdown"
    rows = {row["metric"]: row["value"] for row in json.loads(by_key[metrics_key].data)}
    assert rows["train_steps"] == 2 and rows["mpjpe_mm"] == pytest.approx(metrics["mpjpe_mm"])
    assert str(run_dir) in by_key[run_key].data
    # the flow run's graph holds the work: a task run for the training, then one for its evaluation
    name = reference_build['out'].name
    assert sorted(run.name for run in runs) == [f"evaluate-{name}", f"train-{name}"]
    assert all(run.state.is_completed() for run in runs)
    assert metrics["evaluated"] is True and np.isfinite(metrics["mpjpe_mm"])  # the evaluate task wrote it
    assert (run_dir / "plots").is_dir()


def test_unchanged_build_is_found_without_a_flow_and_keyed_by_version(reference_build, tmp_path):
    """The CLI's no-op check: the stored summary when nothing changed; None after a config change, without
    the report, or when the finalized version is not the output's newest (the report describes another)."""
    from typer.testing import CliRunner

    from unihope.buildplan.output_items import FINALIZED_VERSION, finalized_marker_path
    from unihope.buildplan.workdir import make_layout
    from unihope.cli import app
    from unihope.storage.versions import current_version
    from unihope.unchanged_build import unchanged_build_summary

    out, cfg = reference_build["out"], reference_build["cfg"]  # the stage hashes include the output: used in place
    assert unchanged_build_summary(cfg, str(out)) == reference_build["summary"]
    version_path = finalized_marker_path(make_layout(cfg, str(out))).with_name(FINALIZED_VERSION)
    assert version_path.read_text() == current_version(str(out))

    # 1. The CLI prints it and starts nothing: no server, no flow run, no stage item
    config_path = tmp_path / "build.yaml"
    config_path.write_text(cfg.to_yaml())
    before = read_executions(out / "_work")
    result = CliRunner().invoke(app, ["build", "--config", str(config_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"unchanged: {out} already holds this build" in result.output
    assert f"{reference_build['summary'].num_samples} samples" in result.output
    assert "Starting temporary server" not in result.output and "Beginning flow run" not in result.output
    assert read_executions(out / "_work") == before

    # 2. Any change upstream of the output is work to do
    changed = cfg.model_copy(update={"deocclusion": cfg.deocclusion.model_copy(update={"keep_rule": "score"})})
    assert unchanged_build_summary(changed, str(out)) is None
    # 3. The summary and report describe one version: another newest version makes them stale
    report_path = out / "report" / "index.html"
    try:
        version_path.write_text("v-another")
        assert unchanged_build_summary(cfg, str(out)) is None
        version_path.write_text(current_version(str(out)))
        assert unchanged_build_summary(cfg, str(out)) is not None
        # 4. No report, no reuse (the build writes one)
        report_path.rename(tmp_path / "index.html")
        assert unchanged_build_summary(cfg, str(out)) is None
        assert unchanged_build_summary(cfg, str(out), write_report=False) is not None
    finally:  # the module's reference build, as it was
        version_path.write_text(current_version(str(out)))
        if not report_path.exists():
            (tmp_path / "index.html").rename(report_path)
