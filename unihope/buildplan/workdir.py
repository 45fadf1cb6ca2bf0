"""The work folder of a build: where it is, and the path of every intermediate file.

Every stage writes under `<work>/<stage>-<hash>/` (`unihope.buildplan.hashes`). The work folder is
the build's only cache: a stage item whose output file exists is reused, never recomputed.

Layout:

    <work>/
      index-<h>/index.json               refs + plan (which frames each task handles)
      grasp-<h>/part-0000.npz            loaded FrameRecords + GraspLabels + source skips of one part
      annotate-<h>/batch-0000.*          unihope.storage.batches file of AnnotatedFrames (+ .skips.jsonl)
      deocclude-<h>/results-0000.npz     the batch's DeocclusionResults (its frames stay in annotate-<h>)
      pack-<h>/shard-0000.json           marker: shard 0 of this pack hash is committed at the output
      output.json                        which pack hash the output currently holds
      executions.jsonl                   one line per stage item actually computed (not reused)

Every data file is one work-file format, `unihope.storage.batches` (an .npz of Blosc-compressed arrays
plus a JSON header, read with `allow_pickle=False`; the rest is JSON): no work file is ever
unpickled. Prefect persists no results and keeps no cache here (tasks run with `NO_CACHE`,
`persist_result=False`): nothing in the folder is a pickle.

A file exists only once complete (written to a hidden `.*.tmp-*` file, then renamed), so a build killed
at any point resumes by skipping what exists and redoing the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unihope.buildplan.hashes import STAGES, StageHashes, stage_hashes
from unihope.config import PipelineConfig

WORK_DIR_NAME = "_work"


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
        return self.stage_dir("index") / "index.json"

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


def make_layout(cfg: PipelineConfig, out: str) -> WorkLayout:
    """The work layout of a build of `cfg` into `out` (see `resolve_work_dir`)."""
    return WorkLayout(root=resolve_work_dir(out, cfg.flow.work_dir), hashes=stage_hashes(cfg, out))
