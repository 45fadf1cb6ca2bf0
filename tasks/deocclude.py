"""Task: de-occlude one annotated batch (tagged `gpu`; halves its chunk size on CUDA out-of-memory)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prefect import task

from storage.schema import StageSummary
from tasks.common import ExecutionTimer, reuse_summary, set_torch_threads, write_summary
from tasks.options import maybe_fail_once, run_with_oom_halving
from tasks.work import WorkLayout, save_results
from unihope.config import DeocclusionConfig

LOGGER = logging.getLogger(__name__)

# One de-occluder per worker process and config: building one loads model weights (seconds to
# minutes for ControlNet), so consecutive batches on a worker reuse it.
_DEOCCLUDERS: dict[str, object] = {}
_DEOCCLUDERS_LOCK = threading.Lock()


def get_deoccluder(cfg: DeocclusionConfig):
    """The worker's de-occluder for `cfg`, built on first use."""
    from unihope.deocclude import build_deoccluder

    key = cfg.config_hash()
    with _DEOCCLUDERS_LOCK:
        if key not in _DEOCCLUDERS:
            _DEOCCLUDERS[key] = build_deoccluder(cfg)
        return _DEOCCLUDERS[key]


@task(name="deocclude")
def deocclude_batch(
    cfg: DeocclusionConfig, layout: WorkLayout, batch_idx: int, in_path: str, out_path: str,
    fail_once: tuple[str, ...] = (), torch_threads: int = 1,
) -> StageSummary:
    """De-occlude the hands of one annotated batch and store the results.

    On a CUDA out-of-memory error the batch continues in halves (down to one frame per call), so
    a GPU worker short of memory finishes the batch instead of failing it; a task-level retry then
    only sees an OOM that a single frame causes.

    Args:
        cfg: the de-occlusion config (`batch_size` is the first chunk size).
        layout: work layout (execution log).
        batch_idx: index of the batch (fault injection, logs).
        in_path: the annotated batch file.
        out_path: the results file (`layout.deocclude_results_path`); reused when it exists.
        fail_once: fault injection list (`deocclude` or `deocclude:<batch_idx>`).
        torch_threads: torch CPU threads of this worker (`flow.torch_threads`; a GPU backend ignores it).

    Returns:
        Summary: num_in = annotated frames, num_out = kept pairs (UniHOPE's filter passed).
    """
    from storage.batches import load_batch

    # 1. Reuse a complete output.
    reused = reuse_summary(out_path)
    if reused is not None:
        return reused
    maybe_fail_once("deocclude", batch_idx, fail_once)
    set_torch_threads(torch_threads)

    with ExecutionTimer(layout, "deocclude", batch_idx) as timer:
        # 2. Load the batch and run the worker's de-occluder, halving chunks on CUDA OOM.
        annotated, _ = load_batch(in_path)
        deoccluder = get_deoccluder(cfg)

        def _on_halve(size: int) -> None:
            LOGGER.warning("deocclude batch %d: CUDA out of memory, continuing with %d frames per call",
                           batch_idx, size)

        results = run_with_oom_halving(deoccluder.run, annotated, chunk_size=cfg.batch_size, on_halve=_on_halve)

        # 3. Store; the summary first, then the results (their file's existence marks the batch complete).
        summary = StageSummary(stage="deocclude", output_path=out_path, num_in=len(annotated),
                               num_out=sum(1 for r in results if r.keep), skips_by_reason={})
        write_summary(summary)
        save_results(Path(out_path), results)
        timer.num_frames = len(annotated)
    return summary
