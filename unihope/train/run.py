"""Entry points of `unihope train` / `unihope eval` and the train flow: config path + data URL -> a run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unihope.run_keys import RunIdentity
from unihope.train.checkpoints import load_checkpoint, resume_hash
from unihope.train.data import open_paired_dataset
from unihope.train.evaluate import evaluate, json_safe
from unihope.train.loop import TrainResult, train
from unihope.train.plots import write_plots
from unihope.train.spec import build_hand_layer, build_model, resolve_device
from unihope.train_config import TrainConfig


# A run's pin on its dataset version: released at the end; a killed run's pin is stale at once on
# its host (its pid is gone) and after this long elsewhere.
TRAIN_PIN_TTL_S = 24 * 3600.0


def apply_cpu_threads(cfg: TrainConfig) -> None:
    # Entry points only: on a shared 2-core machine one thread per process is ~10-30x faster than two
    # threads competing with other processes (docs/performance/training.md).
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)


def with_mano_dir(cfg: TrainConfig, mano_dir: Path | None) -> TrainConfig:
    """`cfg` with `hand.mano_dir` replaced by the command line's `--mano-dir` (None: the config's own)."""
    if mano_dir is None:
        return cfg
    data = cfg.model_dump(mode="json")
    data["hand"]["mano_dir"] = str(mano_dir)
    return TrainConfig.model_validate(data)


def resolve_hand_model(cfg: TrainConfig, data_url: str, log=print):
    """The hand config training loads, and its identity, checked against the one the dataset at `data_url` records.

    The files come from `cfg.hand.mano_dir` (`--mano-dir` or the train config); when neither names
    any and the dataset was built with MANO files, from the build's own `hand.mano_dir` if that
    folder exists here: the user points at the files once, in the build config. Either way the
    digests must match the dataset's.

    Returns:
        (cfg with the hand config in use, HandModelIdentity of its files).

    Raises:
        ValueError: one line, when the dataset was built with another hand model (or is not finalized).
    """
    from unihope.storage.view import open_dataset
    from unihope.hand_identity import HAND_KIND_MANO, check_same_hand_model, dataset_hand_identity, hand_model_identity

    view = open_dataset(data_url)
    try:
        if view.manifest is None:
            raise ValueError(f"{data_url} is not finalized (no manifest): finish its build first")
        attrs = view.manifest.attrs
    finally:
        view.close()
    recorded = dataset_hand_identity(attrs.hand_model, attrs.config, data_url)
    build_mano_dir = (attrs.config.get("hand") or {}).get("mano_dir")
    if (cfg.hand.mano_dir is None and recorded is not None and recorded.kind == HAND_KIND_MANO
            and build_mano_dir and Path(build_mano_dir).is_dir()):
        cfg = with_mano_dir(cfg, Path(build_mano_dir))
        log(f"hand model: the build's hand.mano_dir {build_mano_dir}")
    from unihope.tip_convention import recorded_tip_convention

    loaded = hand_model_identity(cfg.hand, recorded_tip_convention(attrs.config))
    check_same_hand_model(recorded, loaded, data_url)
    return cfg, loaded


def run_training_from_cli(
    config_path: Path, data_url: str, out_dir: Path, mano_dir: Path | None = None, version: str | None = None,
    overrides: tuple[str, ...] = (), log=print, final_evaluation: bool = True,
) -> TrainResult:
    """`unihope train --out`: load the config, check the hand model, open the shards, train, evaluate.

    Args:
        config_path: training config (YAML).
        data_url: dataset path or URL.
        out_dir: the run folder.
        mano_dir: `--mano-dir`, overriding the config's `hand.mano_dir` (neither: the build's, see
            `resolve_hand_model`).
        version: the dataset version already read by the caller (`run_training_in_runs_dir`); None -> read now.
        overrides: `--set key=value` overrides (`unihope.overrides`).
        log: receives progress lines (the train flow passes its run logger).
        final_evaluation: evaluate the final model in this call; False leaves it to `evaluate_run`.

    Raises:
        ValueError: on a hand model mismatch, or a run folder holding a run on other data.
    """
    from unihope.storage.versions import current_version, pin

    cfg = with_mano_dir(load_train_config(config_path, overrides), mano_dir)
    apply_cpu_threads(cfg)
    cfg, hand_model = resolve_hand_model(cfg, data_url, log=log)
    # the run reads one dataset version, pinned so that `unihope gc` keeps it while the run lives
    version = version or current_version(data_url)
    identity = RunIdentity(dataset_version=version, hand_model=hand_model)
    with pin(data_url, version, owner=f"train:{out_dir}", ttl_s=TRAIN_PIN_TTL_S):
        train_set = open_paired_dataset(data_url, cfg.data.train_split, cfg, cfg.data.max_train_samples,
                                        augment_on=True, version=version)
        eval_set = open_paired_dataset(data_url, cfg.data.eval_split, cfg, cfg.data.max_eval_samples, version=version)
        log(f"training {cfg.name} on {len(train_set)} samples, evaluating on {len(eval_set)} ({data_url}, "
              f"version {identity.dataset_version}, hand {identity.hand_model.describe()})")
        from unihope.tip_convention import tip_convention_of_dataset

        hand_layer = build_hand_layer(cfg.hand, tip_convention_of_dataset(train_set))
        result = train(cfg, train_set, eval_set, Path(out_dir), hand_layer, identity=identity, log=log,
                       final_evaluation=final_evaluation)
    log(f"checkpoint: {result.checkpoint_path}")
    log(f"metrics:    {Path(out_dir) / 'metrics.json'}")
    return result


def evaluate_run(config_path: Path, data_url: str, run_dir: Path, mano_dir: Path | None = None,
                 overrides: tuple[str, ...] = (), log=print) -> dict:
    """Evaluate a run folder's newest checkpoint on the held-out split of the version it trained on.

    The train flow's `evaluate` task: training (`final_evaluation=False`) wrote the checkpoint and a
    metrics.json with the training figures; this adds the evaluation to it (`evaluated: true`) and writes
    the plots, as `train` does when it evaluates itself.

    Raises:
        ValueError: when the run folder has no metrics.json or checkpoint yet (train it first).
    """
    from unihope.storage.versions import pin
    from unihope.tip_convention import tip_convention_of_dataset
    from unihope.train.loop import LOSS_HISTORY_FILE, add_evaluation, read_history

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise ValueError(f"{run_dir} holds no finished training (no metrics.json); train it before evaluating")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = with_mano_dir(load_train_config(config_path, overrides), mano_dir)
    apply_cpu_threads(cfg)
    cfg, _ = resolve_hand_model(cfg, data_url, log=log)
    version = metrics["dataset_version"]
    with pin(data_url, version, owner=f"eval:{run_dir}", ttl_s=TRAIN_PIN_TTL_S):
        eval_set = open_paired_dataset(data_url, cfg.data.eval_split, cfg, cfg.data.max_eval_samples, version=version)
        if len(eval_set) == 0:
            log("evaluation skipped: the held-out split is empty (raise data.val_fraction or build more sequences)")
            return metrics
        device = resolve_device(cfg.device)
        model = build_model(cfg, build_hand_layer(cfg.hand, tip_convention_of_dataset(eval_set))).to(device)
        _, stats = load_checkpoint(run_dir, model)
        metrics = add_evaluation(model, eval_set, cfg, stats, device, metrics, run_dir,
                                 read_history(run_dir / LOSS_HISTORY_FILE), log)
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    return metrics


def load_train_config(config_path: Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """The training config at `config_path` with `--set` overrides applied (ConfigError names a bad one)."""
    from unihope.overrides import apply_overrides

    return apply_overrides(TrainConfig.from_yaml(Path(config_path)), overrides)


def run_training_in_runs_dir(
    config_path: Path, data_url: str, runs_dir: Path, mano_dir: Path | None = None,
    overrides: tuple[str, ...] = (), log=print, final_evaluation: bool = True,
) -> TrainResult:
    """Train in `<runs_dir>/<dataset version>-<config digest>/` (`unihope build --train`, the train deployment).

    Each build of a dataset location gets a run of its own, trained from scratch with its full
    budget; rerunning on the same version and config resumes that version's run.

    Args:
        config_path: training config (YAML).
        data_url: dataset path or URL.
        runs_dir: root of the run folders.
        mano_dir: `--mano-dir`, overriding the config's `hand.mano_dir`.
        overrides: `--set key=value` overrides (part of the config digest, like any config change).
        log: receives progress lines.
        final_evaluation: evaluate here; False leaves it to `evaluate_run` (the train flow's evaluate task).
    """
    from unihope.run_keys import dataset_version, run_dir_for

    cfg = with_mano_dir(load_train_config(config_path, overrides), mano_dir)
    version = dataset_version(data_url)
    run_dir = run_dir_for(Path(runs_dir), version, resume_hash(cfg))
    return run_training_from_cli(config_path, data_url, run_dir, mano_dir=mano_dir, version=version,
                                 overrides=overrides, log=log, final_evaluation=final_evaluation)


def run_evaluation_from_cli(
    config_path: Path | None, checkpoint_path: Path, data_url: str, out_dir: Path, mano_dir: Path | None = None,
) -> dict:
    """`unihope eval`: score a checkpoint on the config's evaluation split; writes eval_metrics.json and plots.

    The hand model (`--mano-dir` or the config's `hand`) must be the dataset's, and the checkpoint's
    when it records one. With `config_path` None the config is the one the checkpoint records.

    Raises:
        ValueError: on a hand model mismatch, or a checkpoint without training statistics.
    """
    from unihope.hand_identity import HandModelIdentity

    from unihope.checkpoint_config import train_config_of_checkpoint

    recorded = TrainConfig.from_yaml(Path(config_path)) if config_path is not None else train_config_of_checkpoint(
        Path(checkpoint_path))
    cfg = with_mano_dir(recorded, mano_dir)
    apply_cpu_threads(cfg)
    cfg, loaded = resolve_hand_model(cfg, data_url)
    device = resolve_device(cfg.device)
    from unihope.tip_convention import tip_convention_of_dataset

    eval_set = open_paired_dataset(data_url, cfg.data.eval_split, cfg, cfg.data.max_eval_samples)
    model = build_model(cfg, build_hand_layer(cfg.hand, tip_convention_of_dataset(eval_set))).to(device)
    state, stats = load_checkpoint(Path(checkpoint_path), model)
    if stats is None:
        raise ValueError(f"{checkpoint_path} carries no training statistics; evaluate a checkpoint from `unihope train`")
    trained = HandModelIdentity.from_json(json.loads(state.hand_model)) if state.hand_model else None
    if trained is not None and not trained.matches(loaded):
        raise ValueError(f"hand model mismatch: {checkpoint_path} was trained with {trained.describe()}, "
                         f"evaluation loads {loaded.describe()}")
    report = evaluate(model, eval_set, cfg, stats, device)
    summary = report.summary(stats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_metrics.json").write_text(json.dumps(json_safe(summary), indent=2))
    write_plots(out_dir / "plots", report, stats, [])
    print(f"MPJPE {summary['mpjpe_mm']:.2f} mm, PA-MPJPE {summary['pa_mpjpe_mm']:.2f} mm, "
          f"switcher accuracy {summary['switcher_accuracy']:.3f} -> {out_dir / 'eval_metrics.json'}")
    print(f"F@5mm {summary['f_score_5mm']:.3f}, F@15mm {summary['f_score_15mm']:.3f} "
          f"(Procrustes-aligned {summary['pa_f_score_5mm']:.3f}, {summary['pa_f_score_15mm']:.3f}), "
          f"3D PCK AUC 0-50 mm {summary['auc_joints_0_50mm']:.3f} (aligned {summary['pa_auc_joints_0_50mm']:.3f})")
    return summary
