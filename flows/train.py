"""The train flow: train UniHOPE on a built dataset (chained by `unihope build --train` or the deployment trigger)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger


@flow(name="train")
def train_flow(data_url: str, train_config_path: str, out_dir: str) -> str:
    """Train (and evaluate on the held-out split) from the shards at `data_url`.

    Args:
        data_url: dataset path or URL written by the build.
        train_config_path: training config (YAML).
        out_dir: run folder for checkpoints, metrics.json and plots.

    Returns:
        The run folder.
    """
    from unihope.training import run_training_from_cli

    get_run_logger().info("training on %s with %s -> %s", data_url, train_config_path, out_dir)
    run_training_from_cli(config_path=Path(train_config_path), data_url=data_url, out_dir=Path(out_dir))
    return str(out_dir)
