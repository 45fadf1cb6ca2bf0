"""The train-deoccluder flow: fine-tune the ControlNet de-occluder on synthetic pairs (a thin Prefect wrapper)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger


@flow(name="train-deoccluder")
def train_deoccluder_flow(config_path: str, out_dir: str, overrides: list[str] | None = None) -> list[str]:
    """Train the de-occluder of a config into `out_dir` (see `unihope.train.deoccluder`).

    Args:
        config_path: de-occluder training config (YAML).
        out_dir: output folder (base/, controlnet/, checkpoints/, training.json, README.md).
        overrides: `--set key=value` overrides of the config.

    Returns:
        The `--set` options that make `unihope build` use the trained folder.
    """
    from unihope.train.deoccluder import load_deoccluder_config, train_deoccluder

    logger = get_run_logger()
    cfg = load_deoccluder_config(Path(config_path), tuple(overrides or ()))
    result = train_deoccluder(cfg, Path(out_dir), log=logger.info)
    logger.info("trained %s in %.0f s; build with: %s", out_dir, result.wall_s,
                " ".join(f"--set {o}" for o in result.build_overrides))
    return list(result.build_overrides)
