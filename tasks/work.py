"""The work folder of a build: stage hashes, the batch and shard plans, atomic intermediate files.

Plain Python (no Prefect) so it can be unit-tested and reused by benchmarks. Every stage writes
under `<work>/<stage>-<hash>/`, where the hash chains the stage's own config with the hashes of
the stages upstream of it: changing only the de-occlusion config changes the `deocclude` and
`pack` folders and nothing else, so only those stages recompute.

Layout:

    <work>/
      source-<h>/index.json              refs + plan (which frames each task handles)
      grasp-<h>/part-0000.npz            loaded FrameRecords + GraspLabels + source skips of one part
      annotate-<h>/batch-0000.*          unihope.storage.batches file of AnnotatedFrames (+ .skips.jsonl)
      deocclude-<h>/results-0000.npz     the batch's DeocclusionResults (its frames stay in annotate-<h>)
      pack-<h>/shard-0000.json           marker: shard 0 of this pack hash is committed at the output
      output.json                        which pack hash the output currently holds
      executions.jsonl                   one line per stage item actually computed (not reused)
      _prefect-results/                  Prefect's persisted task results and cache records

Every data file is one work-file format, `unihope.storage.batches` (an .npz of Blosc-compressed arrays
plus a JSON header, read with `allow_pickle=False`; the rest is JSON): no work file is ever
unpickled. (Prefect's own result records in `_prefect-results/` are not ours: Prefect serializes
them with its default pickle serializer and reads them back on a cache hit; removing that cache
is issue 15's "one caching mechanism".)

A file exists only once complete (written to a hidden `.*.tmp-*` file, then renamed), so a build killed
at any point resumes by skipping what exists and redoing the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from unihope.storage.batches import load_records, save_records
from unihope.storage.io import write_file_atomic
from unihope.storage.schema import DeocclusionResult, FrameRecord, FrameRef, GraspLabel, Skip, SkipReason
from unihope.config import PipelineConfig

STAGES = ("source", "grasp", "annotate", "deocclude", "pack")
WORK_DIR_NAME = "_work"
RESULTS_DIR_NAME = "_prefect-results"
INDEX_FORMAT_VERSION = 1
# Bump when the meaning of a stage's output files changes: old folders are then not reused.
# grasp 2 / deocclude 3: parts and results became unihope.storage.batches work files (were pickles, never read now).
STAGE_CODE_VERSIONS = {"source": 1, "grasp": 2, "annotate": 1, "deocclude": 3, "pack": 1}


# ----------------------------------------------------------------------------------------------
# Hashes and folders
# ----------------------------------------------------------------------------------------------


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def _file_digest(path: Path | None) -> str:
    """Digest of a file the config points at (e.g. grasp label overrides): edits then invalidate."""
    if path is None:
        return "-"
    path = Path(path)
    if not path.is_file():
        return f"missing:{path}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class StageHashes:
    """One short hash per stage, each covering its own config and every upstream stage's hash."""

    source: str
    grasp: str
    annotate: str
    deocclude: str
    pack: str

    def as_dict(self) -> dict[str, str]:
        return {stage: getattr(self, stage) for stage in STAGES}


def stage_hashes(cfg: PipelineConfig, out_url: str) -> StageHashes:
    """Chain the stage configs into per-stage hashes.

    `flow.frames_per_task` is part of the source hash because it decides which frames each batch
    file holds; the orchestration-only flow settings (retries, runner, fault injection) are not,
    so changing them never recomputes anything.

    Args:
        cfg: the resolved pipeline config (source root already set).
        out_url: the dataset path or URL, part of the pack hash (shards are written there).

    Returns:
        The stage hashes.
    """
    source = _short_hash(
        f"v{STAGE_CODE_VERSIONS['source']}", cfg.source.config_hash(), cfg.hand.config_hash(),
        str(cfg.flow.frames_per_task),
    )
    grasp = _short_hash(
        f"v{STAGE_CODE_VERSIONS['grasp']}", source, cfg.grasp.config_hash(), _file_digest(cfg.grasp.label_override_path)
    )
    annotate = _short_hash(
        f"v{STAGE_CODE_VERSIONS['annotate']}", grasp, cfg.crop.config_hash(), cfg.render.config_hash(),
        cfg.hand.config_hash(),
    )
    deocclude = _short_hash(f"v{STAGE_CODE_VERSIONS['deocclude']}", annotate, cfg.deocclusion.config_hash())
    pack = _short_hash(f"v{STAGE_CODE_VERSIONS['pack']}", deocclude, cfg.storage.config_hash(), out_url)
    return StageHashes(source=source, grasp=grasp, annotate=annotate, deocclude=deocclude, pack=pack)


def is_remote_url(out: str) -> bool:
    """True for fsspec URLs such as s3://bucket/key (a local path or file:// URL is not remote)."""
    return "://" in out and not out.startswith("file://")


def local_output_path(out: str) -> Path | None:
    """The local folder of a path or file:// URL; None for a remote URL."""
    if is_remote_url(out):
        return None
    return Path(out.removeprefix("file://")).expanduser().resolve()


def resolve_work_dir(out: str, work_dir: Path | None) -> Path:
    """Where intermediate batches live: `flow.work_dir`, else `<out>/_work` for a local output.

    Raises:
        ValueError: for a remote output URL without `flow.work_dir`.
    """
    if work_dir is not None:
        return Path(work_dir).expanduser().resolve()
    local = local_output_path(out)
    if local is None:
        raise ValueError(
            f"output {out!r} is a remote URL: set flow.work_dir in the config to a local folder for "
            "the intermediate batches (they are large and written often)"
        )
    return local / WORK_DIR_NAME


@dataclass(frozen=True, slots=True)
class WorkLayout:
    """Paths of every intermediate file of one build (work root + stage hashes)."""

    root: Path
    hashes: StageHashes

    def stage_dir(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        return self.root / f"{stage}-{getattr(self.hashes, stage)}"

    @property
    def index_path(self) -> Path:
        return self.stage_dir("source") / "index.json"

    def grasp_part_path(self, part_idx: int) -> Path:
        return self.stage_dir("grasp") / f"part-{part_idx:04d}.npz"

    def annotate_batch_path(self, batch_idx: int) -> Path:
        return self.stage_dir("annotate") / f"batch-{batch_idx:04d}.batch"

    def annotate_skips_path(self, batch_idx: int) -> Path:
        return self.stage_dir("annotate") / f"batch-{batch_idx:04d}.skips.jsonl"

    def deocclude_results_path(self, batch_idx: int) -> Path:
        return self.stage_dir("deocclude") / f"results-{batch_idx:04d}.npz"

    def shard_marker_path(self, shard_idx: int) -> Path:
        return self.stage_dir("pack") / f"shard-{shard_idx:04d}.json"

    @property
    def output_state_path(self) -> Path:
        return self.root / "output.json"

    @property
    def executions_path(self) -> Path:
        return self.root / "executions.jsonl"

    @property
    def results_dir(self) -> Path:
        return self.root / RESULTS_DIR_NAME


def make_layout(cfg: PipelineConfig, out: str) -> WorkLayout:
    """The work layout of a build of `cfg` into `out` (see `resolve_work_dir`)."""
    return WorkLayout(root=resolve_work_dir(out, cfg.flow.work_dir), hashes=stage_hashes(cfg, out))


# ----------------------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------------------


def atomic_write_json(path: Path, value: object) -> None:
    write_file_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode())


def append_line(path: Path, line: str) -> None:
    """Append one line; a single small O_APPEND write is atomic between processes on POSIX."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def record_execution(layout: WorkLayout, stage: str, item_idx: int, num_frames: int, seconds: float) -> None:
    """Note in `executions.jsonl` that a stage item was computed (not reused): how reruns are audited."""
    entry = {
        "stage": stage, "item": item_idx, "hash": getattr(layout.hashes, stage, layout.hashes.pack),
        "num_frames": num_frames,
        "seconds": round(seconds, 4), "pid": os.getpid(), "time": time.time(),
    }
    append_line(layout.executions_path, json.dumps(entry, sort_keys=True))


def read_executions(work_root: Path) -> list[dict]:
    """The entries `record_execution` wrote (empty when none)."""
    path = Path(work_root) / "executions.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """Which frames one annotate / de-occlude task handles: refs[start:stop] of one grasp part."""

    batch_idx: int
    part_idx: int
    start: int
    stop: int

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """What the index task returns: where the refs are and how the frames split into tasks."""

    index_path: str
    num_frames: int
    part_sizes: tuple[int, ...]  # frames per grasp part
    batches: tuple[BatchSpec, ...]


def plan_parts(refs: list[FrameRef], frames_per_task: int) -> list[list[FrameRef]]:
    """Group refs into grasp parts of whole (sequence, camera) groups, about `frames_per_task` frames each.

    A group is never split across parts: its grasp labels are measured against its earliest frame.
    A group larger than `frames_per_task` forms a part of its own (its annotate batches split it).

    Args:
        refs: the source index, any order.
        frames_per_task: target frames per task.

    Returns:
        Parts in a deterministic order (sorted by sequence, camera, frame).

    Raises:
        ValueError: on duplicate sample keys or a non-positive `frames_per_task`.
    """
    # 1. Check inputs.
    if frames_per_task < 1:
        raise ValueError(f"frames_per_task must be >= 1, got {frames_per_task}")
    keys = [ref.sample_key for ref in refs]
    if len(set(keys)) != len(keys):
        raise ValueError("the source index lists a sample key more than once; sample keys must be unique")

    # 2. Group by (sequence, camera) in a stable order.
    groups: dict[tuple[str, str], list[FrameRef]] = {}
    for ref in sorted(refs, key=lambda r: (r.sequence_key, r.serial, r.frame_idx, r.sample_key)):
        groups.setdefault((ref.sequence_key, ref.serial), []).append(ref)

    # 3. Greedily fill parts with whole groups.
    parts: list[list[FrameRef]] = []
    current: list[FrameRef] = []
    for group in groups.values():
        if current and len(current) + len(group) > frames_per_task:
            parts.append(current)
            current = []
        current = current + group
    if current:
        parts.append(current)
    return parts


def plan_batches(part_sizes: list[int], frames_per_task: int) -> list[BatchSpec]:
    """Split each grasp part into annotate batches of at most `frames_per_task` refs."""
    batches: list[BatchSpec] = []
    for part_idx, size in enumerate(part_sizes):
        for start in range(0, size, frames_per_task):
            stop = min(size, start + frames_per_task)
            batches.append(BatchSpec(batch_idx=len(batches), part_idx=part_idx, start=start, stop=stop))
    return batches


def write_index(path: Path, parts: list[list[FrameRef]], batches: list[BatchSpec]) -> None:
    """Store the refs of every part and the batch plan (atomic JSON)."""
    atomic_write_json(path, {
        "format_version": INDEX_FORMAT_VERSION,
        "parts": [[[r.sample_key, r.sequence_key, r.serial, r.frame_idx] for r in part] for part in parts],
        "batches": [[b.batch_idx, b.part_idx, b.start, b.stop] for b in batches],
    })


def read_index(path: Path) -> tuple[list[list[FrameRef]], list[BatchSpec]]:
    """Inverse of `write_index`.

    Raises:
        ValueError: when the file was written by another index format.
    """
    data = json.loads(Path(path).read_text())
    if data.get("format_version") != INDEX_FORMAT_VERSION:
        raise ValueError(f"{path}: index format {data.get('format_version')} != {INDEX_FORMAT_VERSION}; delete it")
    parts = [[FrameRef(sample_key=k, sequence_key=s, serial=c, frame_idx=int(i)) for k, s, c, i in part]
             for part in data["parts"]]
    batches = [BatchSpec(batch_idx=b, part_idx=p, start=lo, stop=hi) for b, p, lo, hi in data["batches"]]
    return parts, batches


@dataclass(frozen=True, slots=True)
class ShardSlice:
    """Samples [start, stop) of one de-occluded batch file that go into a shard."""

    batch_idx: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One shard: its index and the batch slices it packs, in order."""

    shard_idx: int
    slices: tuple[ShardSlice, ...]

    @property
    def num_samples(self) -> int:
        return sum(s.stop - s.start for s in self.slices)


def plan_shards(batch_sample_counts: list[int], shard_size: int) -> list[ShardSpec]:
    """Cut the concatenation of the annotated batches (in batch order) into shards of `shard_size`.

    Deterministic in the counts alone, so a resumed build assigns every sample to the same shard
    and position as an uninterrupted one.

    Raises:
        ValueError: on a negative count or a shard size below 1.
    """
    if shard_size < 1:
        raise ValueError(f"storage.shard_size must be >= 1, got {shard_size}")
    if any(count < 0 for count in batch_sample_counts):
        raise ValueError(f"batch sample counts must be >= 0, got {batch_sample_counts}")
    shards: list[ShardSpec] = []
    current: list[ShardSlice] = []
    room = shard_size
    for batch_idx, count in enumerate(batch_sample_counts):
        start = 0
        while start < count:
            take = min(room, count - start)
            current.append(ShardSlice(batch_idx=batch_idx, start=start, stop=start + take))
            start += take
            room -= take
            if room == 0:
                shards.append(ShardSpec(shard_idx=len(shards), slices=tuple(current)))
                current, room = [], shard_size
    if current:
        shards.append(ShardSpec(shard_idx=len(shards), slices=tuple(current)))
    return shards


# ----------------------------------------------------------------------------------------------
# Intermediate payloads
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraspPartOutput:
    """One grasp part on disk: the frames the source loaded, their grasp labels, and source skips."""

    records: tuple[FrameRecord, ...]
    grasps: tuple[GraspLabel, ...]
    skips: tuple[Skip, ...]


def save_grasp_part(path: Path, output: GraspPartOutput) -> None:
    """Write a part atomically as a work file (`unihope.storage.batches.save_records`: arrays + JSON, no pickle)."""
    save_records(path, {"records": list(output.records), "grasps": list(output.grasps), "skips": list(output.skips)})


def load_grasp_part(path: Path) -> GraspPartOutput:
    """Inverse of `save_grasp_part`.

    Raises:
        ValueError: when the file is not a grasp part work file (e.g. a pickle planted in its place:
            it is refused unread, never unpickled).
    """
    groups = load_records(path)
    if set(groups) != {"records", "grasps", "skips"}:
        raise ValueError(f"{path}: not a grasp part file (groups {sorted(groups)}); delete it and rebuild")
    output = GraspPartOutput(tuple(groups["records"]), tuple(groups["grasps"]), tuple(groups["skips"]))
    _check_types(path, "grasp part", (
        (output.records, FrameRecord), (output.grasps, GraspLabel), (output.skips, Skip)))
    return output


def save_results(path: Path, results: list[DeocclusionResult]) -> None:
    """Write a batch's de-occlusion results atomically as a work file (no pickle).

    Only the results: the frames are already in the annotate batch file, and writing them again
    cost ~2 ms per frame (a tenth of a 128 px frame's whole pipeline).
    """
    save_records(path, {"results": list(results)})


def load_results(path: Path) -> list[DeocclusionResult]:
    """Inverse of `save_results`.

    Raises:
        ValueError: when the file is not a de-occlusion results work file (never unpickled).
    """
    groups = load_records(path)
    if set(groups) != {"results"}:
        raise ValueError(f"{path}: not a de-occlusion results file (groups {sorted(groups)}); delete it and rebuild")
    _check_types(path, "de-occlusion results", ((groups["results"], DeocclusionResult),))
    return list(groups["results"])


def _check_types(path: Path, what: str, groups: tuple) -> None:
    for records, cls in groups:
        for record in records:
            if not isinstance(record, cls):
                raise ValueError(f"{path}: not a {what} file ({type(record).__name__} where a {cls.__name__} "
                                 "belongs); delete it and rebuild")


def write_skips(path: Path, skips: list[Skip]) -> None:
    write_file_atomic(path, "".join(json.dumps(s.to_json(), sort_keys=True) + "\n" for s in skips).encode())


def read_skips(path: Path) -> list[Skip]:
    if not Path(path).is_file():
        return []
    skips = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            skips.append(Skip(item["sample_key"], item["stage"], SkipReason(item["reason"]), item.get("detail", "")))
    return skips


def count_by_reason(skips: list[Skip]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for skip in skips:
        counts[skip.reason.value] = counts.get(skip.reason.value, 0) + 1
    return dict(sorted(counts.items()))
