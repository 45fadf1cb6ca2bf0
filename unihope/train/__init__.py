"""Training and evaluation of the UniHOPE model from the Zarr shards, one module per job.

`spec` (config -> model), `batch` (a batch -> inputs and targets, its loss), `stats` (training-set
statistics), `checkpoints`, `loop` (the training loop), `evaluate`, `plots`, `data` (a split of the
shards) and `run` (the entry points the CLI and the train flow call).

The names a user needs, without deep paths:

    from unihope.train import load_train_config, run_training_in_runs_dir, run_evaluation_from_cli

Exported names load their module on first use (PEP 562): `spec` and `weights` sit in the model layer
and are imported by stages (the pose scorer), which must not pull in the training loop through this package.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_train_config": "run", "run_training_in_runs_dir": "run", "run_training_from_cli": "run",
    "run_evaluation_from_cli": "run",
    "train": "loop", "TrainResult": "loop",
    "EvalReport": "evaluate",  # the function `evaluate` shares its module's name: unihope.train.evaluate.evaluate
    "build_model": "spec", "build_hand_layer": "spec",
    "load_checkpoint": "checkpoints", "open_paired_dataset": "data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unihope.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"unihope.train.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
