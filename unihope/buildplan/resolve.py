"""Resolving a build's config at an entry point (CLI, deployment, demo): `--source`, fault injection from
the environment, and the folders a config leaves open (synthetic source, report, the train run's MANO files)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from unihope.config import ConfigError, PipelineConfig, describe_validation_error
from unihope.buildplan.faults import parse_fail_once
from unihope.buildplan.workdir import WorkLayout, local_output_path, resolve_work_dir

SYNTHETIC_DIR_NAME = "_synthetic"
REPORT_DIR_NAME = "report"
SOURCE_KINDS = ("synthetic", "dexycb", "ho3d")


def resolve_build_config(
    cfg: PipelineConfig, out: str, source: str | None = None, fail_once_env: str | None = None
) -> PipelineConfig:
    """Apply the command-line overrides and fill the paths the config leaves open.

    Args:
        cfg: the config as loaded from YAML.
        out: dataset path or URL.
        source: `synthetic`, `dexycb:PATH` or `ho3d:PATH`; replaces the config's source kind and root.
        fail_once_env: the value of UNIHOPE_FAIL_ONCE (comma-separated task names), added to
            `flow.fail_once`; read by the caller so no stage or task reads the environment.

    Returns:
        The resolved config: source root set (synthetic: `<out>/_synthetic`, or `<work>/_synthetic`
        for a remote output), fault injection merged.

    Raises:
        ConfigError: on a malformed `source` or a dataset kind without a path.
    """
    # 1. Check inputs and parse the source override.
    source_cfg = cfg.source
    if source is not None:
        kind, _, root = source.partition(":")
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"--source {source!r}: kind must be one of {SOURCE_KINDS} (e.g. dexycb:/data/dex-ycb)")
        if kind != "synthetic" and not root:
            raise ConfigError(f"--source {source!r}: {kind} needs a path, e.g. --source {kind}:/data/{kind}")
        source_cfg = source_cfg.model_copy(update={"kind": kind, "root": Path(root).expanduser() if root else None})

    # 2. Default the synthetic source's folder next to the output.
    if source_cfg.kind == "synthetic" and source_cfg.root is None:
        local = local_output_path(out)
        base = local if local is not None and cfg.flow.work_dir is None else resolve_work_dir(out, cfg.flow.work_dir)
        source_cfg = source_cfg.model_copy(update={"root": base / SYNTHETIC_DIR_NAME})

    # 3. Merge fault injection from the environment.
    fail_once = tuple(dict.fromkeys(cfg.flow.fail_once + parse_fail_once(fail_once_env)))
    flow_cfg = cfg.flow.model_copy(update={"fail_once": fail_once})

    # Re-validate the whole model so the overrides pass the same checks as YAML values.
    data = cfg.model_dump(mode="json")
    data["source"] = source_cfg.model_dump(mode="json")
    data["flow"] = flow_cfg.model_dump(mode="json")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error("command-line overrides", err)) from err


def default_report_dir(out: str, layout: WorkLayout) -> Path:
    """`<out>/report` for a local output, `<work>/report` for a remote one."""
    local = local_output_path(out)
    return (local if local is not None else layout.root) / REPORT_DIR_NAME


def mano_dir_parameter(cfg: PipelineConfig) -> str | None:
    """The build's `hand.mano_dir` as the train flow's parameter: training loads the files the build used."""
    return str(Path(cfg.hand.mano_dir).expanduser().resolve()) if cfg.hand.mano_dir is not None else None
