"""Deployments: `build-dataset` on a cron schedule, `train` triggered when a build-dataset run completes."""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from unihope.flows.build import scheduled_build
from unihope.flows.train import train_flow
from unihope.config import PipelineConfig
from unihope.overrides import apply_overrides

BUILD_DEPLOYMENT = "build-dataset"
TRAIN_DEPLOYMENT = "train"
BUILD_COMPLETED_EVENT = "prefect.flow-run.Completed"


def build_completed_trigger(build_deployment: str = BUILD_DEPLOYMENT) -> DeploymentEventTrigger:
    """Fire once per completed run of the build deployment; pass the run's `out` as the dataset URL.

    The run's parameters come from the flow run the event is about (`{{ flow_run.parameters.out }}`),
    so every build output, scheduled or started by hand with another `out`, gets its training.
    """
    return DeploymentEventTrigger(
        name=f"train-after-{build_deployment}",
        expect={BUILD_COMPLETED_EVENT},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=[
            {"prefect.resource.role": "deployment", "prefect.resource.name": build_deployment},
            {"prefect.resource.role": "flow", "prefect.resource.name": scheduled_build.name},
        ],
        parameters={"data_url": "{{ flow_run.parameters.out }}"},
    )


def make_deployments(
    config_path: Path, out: str, cron: str | None, train_config_path: Path, train_out: Path,
    overrides: tuple[str, ...] = (), train_overrides: tuple[str, ...] = (),
) -> tuple[RunnerDeployment, RunnerDeployment]:
    """The two deployments `serve_deployments` serves (tests serve them the same way).

    Args:
        config_path: pipeline config the scheduled builds read (at run time).
        out: dataset path or URL the scheduled builds write.
        cron: cron schedule of the build; None -> no schedule (runs started by hand or API).
        train_config_path: training config.
        train_out: root of the triggered trainings' run folders (one `<dataset version>-<config digest>/`
            per build, so a new night's build trains from scratch instead of resuming last night's run).
        overrides: `--set key=value` overrides of the pipeline config (the build's `overrides` parameter).
        train_overrides: `--train-set` overrides of the training config (the train run's `overrides`).

    Raises:
        ConfigError: when the pipeline config, the training config or an override does not load
            (checked now, not at 3 a.m.).
    """
    from unihope.train.run import load_train_config

    apply_overrides(PipelineConfig.from_yaml(Path(config_path)), overrides)
    load_train_config(Path(train_config_path), tuple(train_overrides))
    build = scheduled_build.to_deployment(
        name=BUILD_DEPLOYMENT, cron=cron,
        parameters={"config_path": str(Path(config_path).resolve()), "out": out, "overrides": list(overrides)},
        description="Build the paired UniHOPE dataset (source -> grasp -> annotate -> de-occlude -> pack).",
        tags=["unihope", "build"],
    )
    train = train_flow.to_deployment(
        name=TRAIN_DEPLOYMENT,
        parameters={"data_url": out, "train_config_path": str(Path(train_config_path).resolve()),
                    "runs_dir": str(Path(train_out).resolve()),  # MANO files: the build's (recorded in the data)
                    "overrides": list(train_overrides)},
        triggers=[build_completed_trigger()],
        description="Train UniHOPE on the dataset a completed build-dataset run wrote.",
        tags=["unihope", "train"],
    )
    return build, train


def ensure_gpu_concurrency_limit(tag: str, limit: int) -> None:
    """Create or update the tag concurrency limit (`prefect concurrency-limit create gpu 1`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)


def serve_deployments(
    config_path: Path, out: str, cron: str, train_config_path: Path, train_out: Path, limit: int | None = None,
    overrides: tuple[str, ...] = (), train_overrides: tuple[str, ...] = (),
) -> None:
    """`unihope deploy`: set the GPU tag limit, then serve both deployments until interrupted.

    Uses the Prefect API the environment points at (PREFECT_API_URL); runs execute in
    subprocesses of this process.
    """
    cfg = apply_overrides(PipelineConfig.from_yaml(Path(config_path)), overrides)
    build, train = make_deployments(config_path, out, cron, train_config_path, train_out, overrides, train_overrides)
    ensure_gpu_concurrency_limit(cfg.flow.gpu_tag, cfg.flow.gpu_concurrency)
    serve(build, train, limit=limit)
