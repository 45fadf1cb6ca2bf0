"""Running a build in this process: point worker processes at one API server, then run the flow (CLI, demo,
benchmarks and tests start builds here). The flow itself holds the output's lock (`build_steps`)."""

from __future__ import annotations

from unihope.config import PipelineConfig
from unihope.prefect_server import api_for_worker_processes


def run_build(cfg: PipelineConfig, out: str, write_report: bool = True, wait_lock: bool = False):
    """Run `build_dataset` (config already resolved) on the task runner the config names.

    The flow holds the output's build lock for the whole run and first sweeps the temp files a
    failed or killed build left (`unihope.buildplan.output_lock`).

    Returns:
        `unihope.report.DatasetSummary`.

    Raises:
        OutputBusyError: when another build writes `out` (and `wait_lock` is False).
    """
    from unihope.flows.build import build_dataset

    with api_for_worker_processes(cfg.flow):
        return build_dataset(config=cfg, out=out, write_report=write_report, wait_lock=wait_lock)
