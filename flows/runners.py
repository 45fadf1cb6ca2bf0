"""The task runner a build uses (threads, processes, or Dask); the API server a CLI build starts is `unihope.prefect_server`."""

from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from unihope.config import FlowConfig

TASK_RUNNERS = ("threads", "processes", "dask")


def make_task_runner(flow_cfg: FlowConfig) -> TaskRunner:
    """Build the runner `flow.task_runner` names, with `flow.max_workers` workers.

    - threads: Prefect's ThreadPoolTaskRunner (one process; rendering and numpy release the GIL
      for most of their time).
    - processes: Prefect's ProcessPoolTaskRunner (one Python per worker; each keeps its own
      renderer and de-occluder).
    - dask: prefect-dask's DaskTaskRunner: a LocalCluster of `max_workers` single-threaded worker
      processes, or the scheduler at `flow.dask_address` (e.g. tcp://10.0.0.5:8786).

    Raises:
        ValueError: for an unknown runner name.
    """
    if flow_cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=flow_cfg.max_workers)
    if flow_cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=flow_cfg.max_workers)
    if flow_cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if flow_cfg.dask_address:
            return DaskTaskRunner(address=flow_cfg.dask_address)
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": flow_cfg.max_workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None,
        })
    raise ValueError(f"flow.task_runner must be one of {TASK_RUNNERS}, got {flow_cfg.task_runner!r}")
