"""The train flow: train UniHOPE on a built dataset (chained by `unihope build --train` or the deployment trigger)."""

from __future__ import annotations


from dataclasses import replace

from prefect import flow, get_run_logger

from unihope.tasks.artifacts import publish_train_artifacts
from unihope.tasks.train import evaluate_model, train_model


@flow(name="train")
def train_flow(data_url: str, train_config_path: str, runs_dir: str, mano_dir: str | None = None,
               overrides: list[str] | None = None) -> str:
    """Train (and evaluate on the held-out split) on the dataset version now at `data_url`.

    Args:
        data_url: dataset path or URL written by the build.
        train_config_path: training config (YAML).
        runs_dir: root of the run folders; this run trains in `<runs_dir>/<dataset version>-<config digest>/`.
        mano_dir: the MANO files the build used (its `hand.mano_dir`); None -> the training config's.
        overrides: `--set key=value` overrides of the training config.

    Returns:
        The run folder.
    """
    logger = get_run_logger()
    logger.info("training on %s with %s -> %s/<version>-<config>", data_url, train_config_path, runs_dir)
    overrides = tuple(overrides or ())
    result = train_model(data_url, train_config_path, runs_dir, mano_dir, overrides)
    logger.info("trained %d steps in %s", result.metrics["train_steps"], result.out_dir)
    metrics = evaluate_model(data_url, train_config_path, str(result.out_dir), mano_dir, overrides)
    publish_train_artifacts(replace(result, metrics=metrics), data_url)
    return str(result.out_dir)
