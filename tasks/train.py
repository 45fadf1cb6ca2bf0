"""The training run as Prefect tasks: the train flow's graph shows the work (training, then the held-out evaluation)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE


def _run_name(verb: str):
    """`<verb>-<dataset folder name>`, the task run's name in the UI."""

    def name() -> str:
        from prefect.runtime import task_run

        return f"{verb}-{Path(str(task_run.parameters['data_url']).rstrip('/')).name}"

    return name


@task(name="train", task_run_name=_run_name("train"), cache_policy=NO_CACHE, persist_result=False)
def train_model(data_url: str, train_config_path: str, runs_dir: str, mano_dir: str | None,
                overrides: tuple[str, ...]):
    """Train on the dataset version now at `data_url` (evaluation is the next task, `evaluate_model`).

    No retries and no cache: a run folder resumes from its own checkpoints (`unihope.train.checkpoints`),
    which a Prefect retry or cache would only duplicate. Not a work-folder item (the run folder is
    the training's own), so it is one plain call, like claim-output.

    Args:
        data_url: dataset path or URL.
        train_config_path: training config (YAML).
        runs_dir: root of the run folders (`<dataset version>-<config digest>/` each).
        mano_dir: the build's MANO files; None -> the training config's.
        overrides: `--set key=value` overrides of the training config.

    Returns:
        `unihope.train.loop.TrainResult` of the run (metrics.json with the training figures, `evaluated: false`).
    """
    return _train(data_url, train_config_path, runs_dir, mano_dir, overrides, log=get_run_logger().info)


@task(name="evaluate", task_run_name=_run_name("evaluate"), cache_policy=NO_CACHE, persist_result=False)
def evaluate_model(data_url: str, train_config_path: str, run_dir: str, mano_dir: str | None,
                   overrides: tuple[str, ...]) -> dict:
    """Evaluate the run's final checkpoint on the held-out split of the version it trained on.

    Args:
        data_url: dataset path or URL.
        train_config_path: training config (YAML).
        run_dir: the run folder `train_model` wrote.
        mano_dir: the build's MANO files; None -> the training config's.
        overrides: `--set key=value` overrides of the training config.

    Returns:
        The run's metrics.json, now with the evaluation (`evaluated: true` unless the split is empty).
    """
    return _evaluate(data_url, train_config_path, run_dir, mano_dir, overrides, log=get_run_logger().info)


# imported in the calls: torch and the model load only when a training runs, not when a deployment is served

def _train(data_url: str, train_config_path: str, runs_dir: str, mano_dir: str | None, overrides: tuple[str, ...],
           log):
    from unihope.train.run import run_training_in_runs_dir

    return run_training_in_runs_dir(config_path=Path(train_config_path), data_url=data_url, runs_dir=Path(runs_dir),
                                    mano_dir=Path(mano_dir) if mano_dir else None, overrides=tuple(overrides),
                                    log=log, final_evaluation=False)


def _evaluate(data_url: str, train_config_path: str, run_dir: str, mano_dir: str | None, overrides: tuple[str, ...],
              log) -> dict:
    from unihope.train.run import evaluate_run

    return evaluate_run(Path(train_config_path), data_url, Path(run_dir), Path(mano_dir) if mano_dir else None,
                        tuple(overrides), log=log)
