"""Work files: atomic JSON, the execution log, grasp parts, de-occlusion results, skips, summary sidecars.

One work-file format for data, `unihope.storage.batches` (arrays + JSON, read with `allow_pickle=False`);
the rest is JSON. A file exists only once complete (written to a hidden temp file, then renamed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from unihope.buildplan.workdir import WorkLayout
from unihope.storage.batches import load_records, save_records
from unihope.storage.io import write_file_atomic
from unihope.storage.schema import DeocclusionResult, FrameRecord, GraspLabel, Skip, SkipReason, StageSummary

# Execution-log stages without a hash of their own: finalize commits what its pack hash wrote.
_HASH_OF_STAGE = {"finalize": "pack"}


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
    """Note in `executions.jsonl` that a stage item was computed (not reused): how reruns are audited.

    Raises:
        ValueError: for a stage name that is neither a hashed stage nor finalize (a typo would
            otherwise be logged under the pack hash).
    """
    hashes = layout.hashes.as_dict()
    hash_stage = _HASH_OF_STAGE.get(stage, stage)
    if hash_stage not in hashes:
        raise ValueError(f"execution log: unknown stage {stage!r} (one of {sorted([*hashes, *_HASH_OF_STAGE])})")
    entry = {
        "stage": stage, "item": item_idx, "hash": hashes[hash_stage],
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


# ----------------------------------------------------------------------------------------------
# Stage items: the summary sidecar
# ----------------------------------------------------------------------------------------------


def summary_path(out_path: str | Path) -> Path:
    """Sidecar holding the StageSummary of an output (read instead of the output itself on reuse)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".summary.json")


def reuse_summary(out_path: str | Path) -> StageSummary | None:
    """The summary of a complete earlier output, or None when the stage item must (re)compute.

    The output file itself is the completion marker (written last, atomically); the summary
    sidecar is written just before it.
    """
    if not Path(out_path).exists():
        return None
    side = summary_path(out_path)
    if not side.is_file():
        return None
    data = json.loads(side.read_text())
    return StageSummary(stage=data["stage"], output_path=data["output_path"], num_in=int(data["num_in"]),
                        num_out=int(data["num_out"]), skips_by_reason=dict(data["skips_by_reason"]))


def write_summary(summary: StageSummary) -> None:
    """Write the summary sidecar of `summary.output_path` (call before writing the output itself)."""
    atomic_write_json(summary_path(summary.output_path), {
        "stage": summary.stage, "output_path": summary.output_path, "num_in": summary.num_in,
        "num_out": summary.num_out, "skips_by_reason": summary.skips_by_reason,
    })
