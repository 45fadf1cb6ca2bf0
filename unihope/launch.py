"""Running a build in this process: hold the output's lock, sweep what a killed build left, point worker
processes at one API server, then run the flow (CLI, demo, benchmarks and tests start builds here)."""

from __future__ import annotations

from unihope.config import PipelineConfig
from unihope.prefect_server import api_for_worker_processes
from unihope.storage.io import sweep_temp_files
from unihope.storage.lock import build_lock
from unihope.buildplan.workdir import local_output_path, resolve_work_dir


def run_build(cfg: PipelineConfig, out: str, write_report: bool = True, wait_lock: bool = False):
    """Run `build_dataset` with the task runner the config names (config already resolved).

    Holds the output's build lock (`unihope.storage.lock`) for the whole run, and first sweeps the temp
    files a failed or killed build left in the output and work folders (safe: the lock is held).

    Returns:
        `unihope.report.DatasetSummary`.

    Raises:
        OutputBusyError: when another build writes `out` (and `wait_lock` is False).
    """
    from unihope.flows.build import build_flow_for

    with build_lock(out, wait=wait_lock):
        for folder in (local_output_path(out), resolve_work_dir(out, cfg.flow.work_dir)):
            if folder is not None:
                sweep_temp_files(folder)
        with api_for_worker_processes(cfg.flow):
            return build_flow_for(cfg.flow)(config=cfg, out=out, write_report=write_report)
