"""Plans of a build: grasp parts (whole sequence x camera groups), annotate batches, shards; the index file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unihope.buildplan.workfiles import atomic_write_json
from unihope.storage.schema import FrameRef

INDEX_FORMAT_VERSION = 1


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
