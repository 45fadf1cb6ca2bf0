"""The training loop: optimise from the shards (resuming), log per epoch, then evaluate and write metrics.json."""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unihope.run_keys import RunIdentity
from unihope.storage.loader import make_loader
from unihope.model import total_loss
from unihope.train.batch import loss_terms, prepare_batch, term_gradient_norms, with_gt_vertices
from unihope.train.checkpoints import (
    CHECKPOINT_DIR,
    check_resume_identity,
    latest_checkpoint,
    load_checkpoint,
    resume_hash,
    train_state,
    write_checkpoint,
)
from unihope.train.evaluate import evaluate, json_safe
from unihope.train.plots import write_plots
from unihope.train.spec import build_model, resolve_device
from unihope.train.stats import collect_train_statistics
from unihope.train_config import TrainConfig

LOSS_HISTORY_FILE = "loss_history.jsonl"
EPOCH_LOG_FILE = "metrics.jsonl"


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step decay: lr * gamma ** (epoch // decay_every_epochs)."""
    return cfg.optim.learning_rate * cfg.optim.lr_decay_gamma ** (epoch // cfg.optim.lr_decay_every_epochs)


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    out_dir: Path
    steps: int
    checkpoint_path: Path
    step_losses: list[float]
    metrics: dict  # contents of metrics.json (training figures only when there was no evaluation)


def read_history(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The rows of a run's loss_history.jsonl (up to `up_to_step`; all when None); [] without the file."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if up_to_step is None or row["step"] <= up_to_step]


def train(
    cfg: TrainConfig,
    train_dataset: torch.utils.data.Dataset,
    eval_dataset: torch.utils.data.Dataset | None,
    out_dir: Path,
    hand_layer: nn.Module,
    resume: bool = True,
    log=print,
    identity: RunIdentity | None = None,
    final_evaluation: bool = True,
) -> TrainResult:
    """Train (resuming from the run folder's latest checkpoint), then evaluate on `eval_dataset`.

    Args:
        cfg: training config.
        train_dataset: samples with the `unihope.storage.paired.PairedDataset` keys.
        eval_dataset: held-out samples, or None to skip evaluation.
        out_dir: run folder (checkpoints/, loss_history.jsonl, metrics.jsonl, metrics.json, plots/).
        hand_layer: right-hand MANO layer.
        resume: continue from `out_dir`'s latest checkpoint when there is one.
        final_evaluation: evaluate the final model here; False leaves it to `evaluate_run` (the train flow's
            own `evaluate` task), and metrics.json says `evaluated: false` until then.
        log: where progress lines go.
        identity: dataset version and hand model of a run on a stored dataset; recorded in checkpoints
            and metrics.json, and a checkpoint of another dataset version is not resumed.

    Returns:
        TrainResult.
    """
    # 1. Check inputs and set up
    if len(train_dataset) == 0:
        raise ValueError("the training dataset is empty")
    from unihope.distributed import data_parallel

    out_dir = Path(out_dir)
    # data parallel (unihope/distributed.py): every process builds the same seeded model; only the main
    # process writes files; optim.batch_size is the global batch, each process reads its slice
    dp = data_parallel(resolve_device(cfg.device), cfg.mixed_precision)
    device = dp.device
    if dp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.yaml").write_text(cfg.to_yaml())
    model = build_model(cfg, hand_layer).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(len(train_dataset) / cfg.optim.batch_size)
    total_steps = cfg.optim.epochs * steps_per_epoch
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)

    # 2. Resume or start (statistics are gathered once and travel inside checkpoints)
    step, stats = 0, None
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        state, stats = load_checkpoint(checkpoint, model, optimizer)
        if state.config_hash != resume_hash(cfg):
            raise ValueError(
                f"{checkpoint} was written with another config (hash {state.config_hash} != {resume_hash(cfg)}); "
                "use a new --out folder or the same config"
            )
        check_resume_identity(checkpoint, state, identity)
        step = state.step
        log(f"resumed from {checkpoint.name} at step {step}")
    if stats is None:
        stats = collect_train_statistics(train_dataset, cfg)
    history_path = out_dir / LOSS_HISTORY_FILE
    history = read_history(history_path, step)
    epoch_log = out_dir / EPOCH_LOG_FILE
    if dp.is_main:
        history_path.write_text("".join(json.dumps(row) + "\n" for row in history))
        if step == 0 and epoch_log.exists():
            epoch_log.unlink()
    forward, stepper = dp.wrap(model, optimizer)  # DDP + autocast; (model, optimizer) for one plain process

    # 3. Optimise
    model.train()
    started = time.perf_counter()
    while step < total_steps:
        epoch, first_batch = divmod(step, steps_per_epoch)
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # make_loader: the epoch's order is a permutation seeded by (seed, epoch) (EpochSampler), resumable mid-epoch
        loader = make_loader(train_dataset, cfg.optim.batch_size, cfg.data.num_workers, shuffle=True, seed=cfg.seed,
                             epoch=epoch, skip_batches=first_batch, num_shards=dp.num_processes,
                             shard_index=dp.process_index, pair_share=cfg.data.pair_share)
        for batch in itertools.islice(loader, min(steps_per_epoch - first_batch, total_steps - step)):
            prepared = with_gt_vertices(model, prepare_batch(batch, cfg, device, epoch=epoch, is_train=True))
            term_tensors = loss_terms(model, prepared, cfg, forward=forward)
            loss = total_loss(term_tensors)
            terms = {name: float(value.detach()) for name, value in term_tensors.items()}
            every = cfg.grad_norm_every_steps
            log_norms = every is not None and dp.num_processes == 1 and (step == 0 or (step + 1) % every == 0)
            norms = term_gradient_norms(model, term_tensors) if log_norms else {}
            # data parallel: this rank's share of the global batch weights its loss (1 for one process)
            n_global = min(cfg.optim.batch_size, len(train_dataset) - (step % steps_per_epoch) * cfg.optim.batch_size)
            n_local, scale = dp.local_share(n_global)
            loss_value, terms = dp.global_terms(float(loss.detach()), terms, n_local, n_global)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}: lower optim.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            dp.backward(loss if dp.num_processes == 1 else loss * scale)
            if cfg.optim.grad_clip_norm is not None:
                dp.clip_grad_norm(model.parameters(), cfg.optim.grad_clip_norm)
            stepper.step()
            step += 1
            row = {"step": step, "epoch": epoch, "loss": loss_value, **terms, **norms}
            history.append(row)
            if dp.is_main:
                with history_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            if step % cfg.checkpoint_every_steps == 0 and dp.is_main:
                write_checkpoint(out_dir, model, optimizer, train_state(step, epoch, cfg, identity), stats, cfg)
        epoch_done = step % steps_per_epoch == 0 or step == total_steps
        if epoch_done and dp.is_main:
            _log_epoch(cfg, model, eval_dataset, stats, device, history, epoch, step, lr, epoch_log, log)
    final_state = train_state(step, step // steps_per_epoch, cfg, identity)
    checkpoint_path = out_dir / CHECKPOINT_DIR / f"step_{step:08d}.safetensors"
    if dp.is_main:
        checkpoint_path = write_checkpoint(out_dir, model, optimizer, final_state, stats, cfg)
    train_seconds = time.perf_counter() - started
    if not dp.is_main:  # the main process evaluates and writes metrics.json
        dp.wait_for_everyone()
        return TrainResult(out_dir=out_dir, steps=step, checkpoint_path=checkpoint_path,
                           step_losses=[row["loss"] for row in history], metrics={})

    # 4. Evaluate on the held-out split (metrics.json is written either way)
    losses = [row["loss"] for row in history]
    window = cfg.loss_window_steps
    metrics: dict = {
        "train_loss_first": float(np.mean(losses[:window])) if losses else float("nan"),
        "train_loss_last": float(np.mean(losses[-window:])) if losses else float("nan"),
        "train_steps": step,
        "train_seconds_this_session": train_seconds,
        "device": str(device),
        "config_hash": cfg.config_hash(),
        # the dataset version the run read (one name; a CLI run's identity below carries the same id)
        "dataset_version": getattr(train_dataset, "version_id", ""),
        "evaluated": False,
        **(identity.to_json() if identity is not None else {}),
    }
    if final_evaluation and eval_dataset is not None:  # else the train flow's evaluate task does it
        if len(eval_dataset) == 0:
            log("evaluation skipped: the held-out split is empty (raise data.val_fraction or build more sequences)")
        else:
            metrics = add_evaluation(model, eval_dataset, cfg, stats, device, metrics, out_dir, history, log)
    (out_dir / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    dp.wait_for_everyone()
    return TrainResult(out_dir=out_dir, steps=step, checkpoint_path=checkpoint_path, step_losses=losses, metrics=metrics)


def add_evaluation(model, eval_dataset, cfg: TrainConfig, stats, device, metrics: dict, out_dir: Path,
                   history: list[dict], log=print) -> dict:
    """Evaluate the final model on the held-out split: `metrics` with the evaluation added (`evaluated: true`),
    the plots written; the end of `train`, or the train flow's separate `evaluate` task (`train.run.evaluate_run`)."""
    report = evaluate(model, eval_dataset, cfg, stats, device)
    metrics = {**report.summary(stats), **metrics, "evaluated": True}
    write_plots(Path(out_dir) / "plots", report, stats, history)
    log(f"eval: MPJPE {metrics['mpjpe_mm']:.2f} mm (mean-pose baseline {metrics['mean_pose_mpjpe_mm']:.2f}), "
        f"switcher acc {metrics['switcher_accuracy']:.3f} (majority {metrics['majority_switcher_accuracy']:.3f})")
    return metrics


def _log_epoch(cfg, model, eval_dataset, stats, device, history, epoch, step, lr, epoch_log: Path, log) -> None:
    rows = [row for row in history if row["epoch"] == epoch]
    entry = {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(np.mean([r["loss"] for r in rows]))}
    names = dict.fromkeys(name for row in rows for name in row)  # gradnorm_* sit in some rows only
    for name in names:
        if name not in ("step", "epoch", "loss"):
            entry[f"train_{name}"] = float(np.mean([r[name] for r in rows if name in r]))
    if eval_dataset is not None and len(eval_dataset) and cfg.eval_every_epochs and (epoch + 1) % cfg.eval_every_epochs == 0:
        summary = evaluate(model, eval_dataset, cfg, stats, device).summary(stats)
        entry.update({f"val_{k}": summary[k] for k in ("mpjpe_mm", "pa_mpjpe_mm", "switcher_accuracy")})
        model.train()
    with epoch_log.open("a") as handle:
        handle.write(json.dumps(json_safe(entry)) + "\n")
    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
