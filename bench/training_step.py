"""Benchmark: cost of one training step of the demo-size model, as ratios against a baseline in the same process.

Baseline = a supervised-only step (no enhancement) with one torch thread. Compared: the full
UniHOPE step (teacher pass on the de-occluded images + three enhancement losses), target-focused
masking, and two intra-op threads. Run: `.venv/bin/python bench/training_step.py`.
"""

from __future__ import annotations

import statistics
import time

import torch

from tests.model_fixtures import InMemoryPairedDataset
from unihope.train.batch import batch_loss, prepare_batch, with_gt_vertices
from unihope.train.spec import build_model
from unihope.hand import HandLayer
from unihope.train_config import TrainConfig

REPEATS = 12
WARMUP = 2


def step_seconds(cfg: TrainConfig, batch: dict, hand_layer) -> float:
    model = build_model(cfg, hand_layer)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate)
    times = []
    for i in range(WARMUP + REPEATS):
        start = time.perf_counter()
        prepared = with_gt_vertices(model, prepare_batch(batch, cfg, torch.device("cpu"), epoch=i, is_train=True))
        loss, _ = batch_loss(model, prepared, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:])


def main() -> None:
    base = TrainConfig.from_yaml("configs/train_demo.yaml")
    hand_layer = HandLayer(side="right")
    data = InMemoryPairedDataset(base.optim.batch_size, base.model.input_size_px, seed=0, hand_layer=hand_layer)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    pairs = int(batch["has_pair"].sum())

    def variant(**updates) -> TrainConfig:
        data = base.model_dump()
        for section, values in updates.items():
            data[section].update(values)
        return TrainConfig.model_validate(data)

    torch.set_num_threads(1)
    baseline = step_seconds(variant(ablation=dict(use_enhancement=False), masking=dict(enabled=False)), batch, hand_layer)
    full = step_seconds(variant(ablation=dict(use_enhancement=True), masking=dict(enabled=False)), batch, hand_layer)
    masked = step_seconds(variant(ablation=dict(use_enhancement=True), masking=dict(enabled=True)), batch, hand_layer)
    torch.set_num_threads(2)
    two_threads = step_seconds(variant(ablation=dict(use_enhancement=True), masking=dict(enabled=False)), batch, hand_layer)
    print(f"batch {base.optim.batch_size} x {base.model.input_size_px} px, {pairs} de-occluded pairs; baseline "
          f"(supervised only, 1 thread): {baseline * 1e3:.0f} ms/step")
    print(f"full UniHOPE step (teacher pass + enhancement) / baseline: {full / baseline:.2f}")
    print(f"+ target-focused masking / full step:                      {masked / full:.2f}")
    print(f"2 torch threads / 1 thread (full step):                    {two_threads / full:.2f}")


if __name__ == "__main__":
    main()
