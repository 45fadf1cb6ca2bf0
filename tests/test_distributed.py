"""Data-parallel training (unihope/distributed.py): 2 CPU processes (gloo, through accelerate) train in
step with one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from unihope.storage.loader import shard_slice
from tests.test_training import tiny_config
from unihope.train.checkpoints import latest_checkpoint
from unihope.train.loop import LOSS_HISTORY_FILE, train

# Per-sample-mean terms only: subset-averaged terms (object terms over grasping samples, enhancement
# over pairs) are averaged per rank first, as upstream's DDP does (module docstring).
CONFIG = dict(optim=dict(batch_size=4, max_steps=2, epochs=1), ablation=dict(use_enhancement=False),
              loss=dict(object_keypoints=0.0, object_confidence=0.0))


def _datasets():
    from tests.model_fixtures import InMemoryPairedDataset
    from unihope.hand import HandLayer

    layer = HandLayer(side="right")
    return InMemoryPairedDataset(7, 32, seed=0, hand_layer=layer), layer


def _rank(rank: int, world: int, port: int, out_dir: str, batch_size: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dataset, layer = _datasets()
    cfg = tiny_config(**{**CONFIG, "optim": {**CONFIG["optim"], "batch_size": batch_size}}, device="cpu")
    train(cfg, dataset, None, out_dir, layer, log=lambda *_: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_slices_cover_a_batch_once():
    for n in range(0, 9):
        bounds = [shard_slice(n, 3, r) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def _first_moments(path) -> dict[str, torch.Tensor]:
    """Adam's exp_avg tensors of a checkpoint: proportional to the gradients (Adam's step is not)."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.endswith("/exp_avg")}


def test_two_processes_train_in_step_with_one_on_the_global_batch(tmp_path, monkeypatch):
    # 7 samples, global batch 4: a step of 4 (2 + 2 per process), then an uneven last batch of 3 (2 + 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dataset, layer = _datasets()
    cfg = tiny_config(**CONFIG, device="cpu")
    single = train(cfg, dataset, None, tmp_path / "one", layer, log=lambda *_: None)
    mp.start_processes(_rank, args=(2, _free_port(), str(tmp_path / "two"), 4), nprocs=2, start_method="spawn")
    two = latest_checkpoint(tmp_path / "two")
    assert two is not None and two.name == single.checkpoint_path.name  # step 2, written once (main process)
    history = [json.loads(line) for line in (tmp_path / "two" / LOSS_HISTORY_FILE).read_text().splitlines()]
    # step 2's loss is taken after step 1's update: it matches only if both processes applied the same mean gradient
    assert [r["loss"] for r in history] == pytest.approx(single.step_losses, rel=1e-5)
    # Adam's first moments = 0.1 * (0.9 g1 + g2): a summed (2x) or unweighted uneven-batch gradient is far off.
    # Compared by relative norm, not elementwise: Adam's sign-like first step moves near-zero-gradient
    # weights by up to lr on float noise, which perturbs g2 slightly (a few 1e-3 overall, ~1e-2 in the
    # worst tensor, measured); a 2x gradient gives 1.0.
    one_m, two_m = _first_moments(single.checkpoint_path), _first_moments(two)
    assert one_m.keys() == two_m.keys() and len(one_m) > 10
    a, b = torch.cat([one_m[k].flatten() for k in one_m]), torch.cat([two_m[k].flatten() for k in one_m])
    assert float((b - a).norm()) <= 1e-2 * float(a.norm())
    for name in one_m:
        assert float((two_m[name] - one_m[name]).norm()) <= 0.1 * float(one_m[name].norm()) + 1e-12, name
