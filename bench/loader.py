"""Loader benchmark: shard reader vs. the HFL-Net-style per-sample JPEG pipeline, same augmentation and workers.

Baseline (what HFL-Net / UniHOPE's loaders do per sample): decode the full 640x480 JPEG, load the
DexYCB labels npz (segmentation for the masks), decode the de-occluded 128 px crop PNG and paste it
back into the frame with the inverse crop affine, then cut crop + augmentation with one warp per image
from the full frame. Shard reader: unihope.storage.paired.PairedDataset. Both apply the same augmentation
draws (unihope.storage.augment: uint8 warps + colour, the baseline then converts each sample to float as
HFL-Net's ToTensor does) and the same worker count, batch size, spawn start and one thread per worker.
The baseline runs in a per-sample DataLoader (default_collate), the shard reader in `make_loader`
(workers build whole batches, one shared buffer per batch). Also reports write throughput and bytes
per sample. Prints ratios against the baseline measured in the same run, and the 1-minute load average.

Data wait: the share of a training step spent waiting for the next batch from `make_loader` (what
`unihope train` reads through), for the CPU demo config (configs/train_demo.yaml: its model, batch
size and workers, real optimiser steps) and, at the GPU config's batch size (configs/train_dexycb_gpu.yaml),
the loader's time per batch here, i.e. the shortest GPU step it keeps fed (no GPU on this machine).

    .venv/bin/python bench/loader.py [--samples 512] [--workers 2] [--batch 32] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from unihope.storage.augment import AugmentConfig, augment_pair, sample_params  # noqa: E402
from unihope.storage.loader import make_loader, worker_init  # noqa: E402
from unihope.seeding import numpy_generator  # noqa: E402
from unihope.storage.paired import PairedDataset  # noqa: E402
from unihope.storage.writer import finalize, write_shard  # noqa: E402
from storage_fixtures import STORAGE_ATTRS, make_annotated, make_keys, make_result  # noqa: E402
from unihope.config import StorageConfig  # noqa: E402

CROP_SIZE_PX = 128
FULL_WH = (640, 480)
JPEG_QUALITY = 95
SEG_HAND, SEG_OBJECT = 255, 6


def _full_frame(key: str) -> tuple[np.ndarray, np.ndarray]:
    """A textured 640x480 RGB frame and a DexYCB-style seg map (0 bg, YCB id object, 255 hand)."""
    rng = numpy_generator(key)
    low = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = cv2.resize(low, FULL_WH, interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 24, (*FULL_WH[::-1], 3), dtype=np.uint8))
    seg = np.zeros(FULL_WH[::-1], np.uint8)
    cv2.circle(seg, (190, 175), 55, SEG_HAND, -1)
    cv2.rectangle(seg, (215, 140), (275, 240), SEG_OBJECT, -1)
    return image, seg


def _rendered_like_maps(crop_seg: np.ndarray) -> dict:
    """Piecewise-smooth maps like the renderer's (the fixtures' per-pixel noise would not compress)."""
    S = crop_seg.shape[0]
    F = S // 4
    mask_hand, mask_object = crop_seg == SEG_HAND, crop_seg == SEG_OBJECT
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    depth = (0.55 + 0.0004 * xx + 0.0002 * yy).astype(np.float32)
    small = cv2.resize(crop_seg, (F, F), interpolation=cv2.INTER_NEAREST)
    fy, fx = np.mgrid[0:F, 0:F].astype(np.float32) / F
    return {
        "mask_hand": mask_hand, "mask_object": mask_object, "mask_hand_visible": mask_hand & ~mask_object,
        "depth_hand": np.where(mask_hand, depth, 0).astype(np.float32),
        "depth_scene": np.where(mask_hand | mask_object, depth - 0.01 * mask_object, 0).astype(np.float32),
        "hand_parts": np.where(mask_hand, 1 + (xx.astype(np.int32) // 12) % 6, 0).astype(np.uint8),
        "seg_map": np.select([small == SEG_HAND, small == SEG_OBJECT], [1, 2], 0).astype(np.uint8),
        "dense_map": np.where((small > 0)[..., None], np.stack([fx, fy, 1 - fx], axis=-1), 0).astype(np.float32),
        "relative_depth_map": np.where(small > 0, fx - fy, 0).astype(np.float32),
    }


def build_sources(root: Path, num_samples: int):
    """Write the baseline's files and return (annotated, results, baseline index)."""
    keys = make_keys(num_samples // 16, 16)[:num_samples]
    annotated, results, index = [], [], []
    for key in keys:
        frame = make_annotated(key, CROP_SIZE_PX)
        full, seg = _full_frame(key)
        stem = root / "frames" / key.replace("/", "_")
        stem.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(f"{stem}_color.jpg", cv2.cvtColor(full, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        np.savez_compressed(f"{stem}_labels.npz", seg=seg)
        decoded = cv2.cvtColor(cv2.imread(f"{stem}_color.jpg"), cv2.COLOR_BGR2RGB)  # what the baseline sees
        affine = frame.crop.affine
        crop = cv2.warpAffine(decoded, affine, (CROP_SIZE_PX, CROP_SIZE_PX), flags=cv2.INTER_LINEAR)
        crop_seg = cv2.warpAffine(seg, affine, (CROP_SIZE_PX, CROP_SIZE_PX), flags=cv2.INTER_NEAREST)
        import dataclasses

        frame = dataclasses.replace(frame, image=crop, **_rendered_like_maps(crop_seg))
        result = make_result(frame)
        cv2.imwrite(f"{stem}_deocc.png", cv2.cvtColor(result.image_deoccluded, cv2.COLOR_RGB2BGR))
        annotated.append(frame)
        results.append(result)
        index.append({"stem": str(stem), "key": key, "affine": affine, "K": frame.crop.K,
                      "joints_2d": frame.joints_2d, "joints_3d": frame.frame.joints_3d,
                      "object_keypoints_2d": frame.object_keypoints_2d, "mano_pose": frame.frame.mano_pose,
                      "mano_trans": frame.frame.mano_trans, "object_pose": frame.frame.object_pose})
    return annotated, results, index


class JpegBaseline(torch.utils.data.Dataset):
    """HFL-Net-style loading from the original files, same augmentation as PairedDataset."""

    def __init__(self, index: list[dict], augment: AugmentConfig, seed: int) -> None:
        self.index = index
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        entry = self.index[i]
        full = cv2.cvtColor(cv2.imread(f"{entry['stem']}_color.jpg"), cv2.COLOR_BGR2RGB)
        seg = np.load(f"{entry['stem']}_labels.npz")["seg"]
        deocc_crop = cv2.cvtColor(cv2.imread(f"{entry['stem']}_deocc.png"), cv2.COLOR_BGR2RGB)
        affine = np.vstack([entry["affine"], [0, 0, 1]])
        # UniHOPE pastes the generated crop back into the frame with the inverse affine
        inverse = np.linalg.inv(affine)[:2]
        pasted = cv2.warpAffine(deocc_crop, inverse, FULL_WH, flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(np.full((CROP_SIZE_PX, CROP_SIZE_PX), 255, np.uint8), inverse, FULL_WH) > 127
        full_deocc = np.where(inside[..., None], pasted, full)
        rng = numpy_generator(self.seed, 0, entry["key"])
        params = sample_params(self.augment, rng, CROP_SIZE_PX)
        # cut the crop from the full frame (labels in crop px, as stored), then the same paired augmentation
        S = CROP_SIZE_PX
        sample = {
            "image": cv2.warpAffine(full, entry["affine"], (S, S), flags=cv2.INTER_LINEAR),
            "image_deoccluded": cv2.warpAffine(full_deocc, entry["affine"], (S, S), flags=cv2.INTER_LINEAR),
            "mask_hand": cv2.warpAffine(seg, entry["affine"], (S, S), flags=cv2.INTER_NEAREST) == SEG_HAND,
            "mask_object": cv2.warpAffine(seg, entry["affine"], (S, S), flags=cv2.INTER_NEAREST) == SEG_OBJECT,
            **{k: entry[k] for k in ("K", "joints_2d", "joints_3d", "object_keypoints_2d", "mano_pose",
                                     "mano_trans", "object_pose")},
        }
        aug = augment_pair(sample, params)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(aug["image"].transpose(2, 0, 1))),
            "image_deoccluded": torch.from_numpy(np.ascontiguousarray(aug["image_deoccluded"].transpose(2, 0, 1))),
            "mask_hand": torch.from_numpy(aug["mask_hand"]),
            "mask_object": torch.from_numpy(aug["mask_object"]),
            "joints_2d": torch.from_numpy(aug["joints_2d"]),
            "joints_3d": torch.from_numpy(aug["joints_3d"]),
            "K": torch.from_numpy(aug["K"].astype(np.float32)),
            "sample_key": entry["key"],
        }


def per_sample_loader(dataset, workers: int, batch: int) -> torch.utils.data.DataLoader:
    """The HFL-Net-style DataLoader: one item per sample, default_collate, spawn workers."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers,
        multiprocessing_context="spawn" if workers else None, persistent_workers=workers > 0,
        worker_init_fn=worker_init if workers else None, generator=torch.Generator().manual_seed(0))


def samples_per_s(loader: torch.utils.data.DataLoader, epochs: int) -> float:
    """Throughput over `epochs` full passes, after one warm-up epoch (worker start excluded)."""
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start, imports, first shard open
    for _ in iterator:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for batch_dict in loader:
            count += len(batch_dict["sample_key"])
    return count / (time.perf_counter() - start)


def data_wait(loader: torch.utils.data.DataLoader, step, num_steps: int) -> tuple[float, float]:
    """(seconds waiting for batches, seconds in `step`) over `num_steps` steps after one warm-up step."""
    iterator = iter(loader)
    step(next(iterator))  # warm-up: worker start, first shard open, first forward
    wait_s = step_s = 0.0
    for _ in range(num_steps):
        start = time.perf_counter()
        try:
            batch_dict = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch_dict = next(iterator)
        middle = time.perf_counter()
        step(batch_dict)
        wait_s += middle - start
        step_s += time.perf_counter() - middle
    return wait_s, step_s


def report_data_wait(url: Path, num_steps: int) -> None:
    """Data-wait share of a real demo training step, and the loader's batch time at the GPU batch size."""
    from unihope.train.batch import batch_loss, prepare_batch, with_gt_vertices
    from unihope.train.spec import build_hand_layer, build_model
    from unihope.train_config import TrainConfig

    demo = TrainConfig.from_yaml("configs/train_demo.yaml")
    hand_layer = build_hand_layer()
    model = build_model(demo, hand_layer)
    optimizer = torch.optim.Adam(model.parameters(), lr=demo.optim.learning_rate)

    def train_step(batch_dict: dict) -> None:
        prepared = with_gt_vertices(model, prepare_batch(batch_dict, demo, torch.device("cpu"), is_train=True))
        loss, _ = batch_loss(model, prepared, demo)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    dataset = PairedDataset(url, augment=AugmentConfig(), seed=0)
    for workers in sorted({demo.data.num_workers, 2}):
        loader = make_loader(dataset, demo.optim.batch_size, num_workers=workers, seed=0)
        wait_s, step_s = data_wait(loader, train_step, num_steps)
        print(f"data wait, CPU demo config (batch {demo.optim.batch_size}, {workers} workers, load avg "
              f"{os.getloadavg()[0]:.1f}): {wait_s / (wait_s + step_s):.1%} of a training step "
              f"({wait_s / num_steps * 1e3:.0f} ms waiting, {step_s / num_steps * 1e3:.0f} ms computing per step)")
    gpu = TrainConfig.from_yaml("configs/train_dexycb_gpu.yaml")
    for workers in (0, 2):
        loader = make_loader(dataset, gpu.optim.batch_size, num_workers=workers, seed=0)
        wait_s, _ = data_wait(loader, lambda batch_dict: None, num_steps)
        print(f"data wait, GPU config's batch {gpu.optim.batch_size}, {workers} workers here: "
              f"{wait_s / num_steps * 1e3:.0f} ms per batch: no wait for GPU steps longer than that "
              f"(the config asks for {gpu.data.num_workers} workers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="training steps per data-wait measurement")
    parser.add_argument("--skip-baseline", action="store_true", help="only write throughput and data wait")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="unihope-bench-loader-"))
    try:
        # 1. Sources for both loaders
        annotated, results, index = build_sources(root, args.samples)
        source_bytes = sum(os.path.getsize(p) for p in (root / "frames").iterdir())

        # 2. Write throughput
        cfg = StorageConfig(shard_size=256)
        url = root / "dataset"
        start = time.perf_counter()
        stored_bytes = 0
        for shard_idx, first in enumerate(range(0, len(annotated), cfg.shard_size)):
            commit = write_shard(url, shard_idx, annotated[first:first + cfg.shard_size],
                                 results[first:first + cfg.shard_size], STORAGE_ATTRS, cfg)
            stored_bytes += commit.num_bytes
        finalize(url, STORAGE_ATTRS, [])
        write_s = time.perf_counter() - start
        raw_bytes = sum(a.image.nbytes * 2 + a.mask_hand.nbytes * 4 + a.depth_hand.nbytes * 2 + a.hand_parts.nbytes
                        + a.seg_map.nbytes + a.dense_map.nbytes + a.relative_depth_map.nbytes for a in annotated)
        print(f"write: {len(annotated)} samples in {write_s:.2f} s = {len(annotated) / write_s:.0f} samples/s, "
              f"{raw_bytes / write_s / 1e6:.1f} MB/s uncompressed in, {stored_bytes / write_s / 1e6:.1f} MB/s stored")
        print(f"bytes per sample: {stored_bytes / len(annotated) / 1e3:.1f} kB stored (all fields) vs "
              f"{raw_bytes / len(annotated) / 1e3:.1f} kB raw; baseline source files "
              f"{source_bytes / len(annotated) / 1e3:.1f} kB (jpg + labels npz + deocc png)")

        # 3. Data wait of a training step through make_loader
        report_data_wait(url, args.steps)
        if args.skip_baseline:
            return

        # 4. Read throughput, same augmentation, same workers
        augment = AugmentConfig()
        shard_ds = PairedDataset(url, augment=augment, seed=0)
        base_ds = JpegBaseline(index, augment, seed=0)
        for workers in sorted({0, args.workers}):
            base = samples_per_s(per_sample_loader(base_ds, workers, args.batch), args.epochs)
            shard = samples_per_s(make_loader(shard_ds, args.batch, num_workers=workers), args.epochs)
            per_sample = samples_per_s(per_sample_loader(shard_ds, workers, args.batch), args.epochs)
            print(f"read, {workers} workers, batch {args.batch} (load avg {os.getloadavg()[0]:.1f}): baseline "
                  f"{base:.0f} samples/s, shards {shard:.0f} samples/s, ratio {shard / base:.2f}x "
                  f"(shards in a per-sample DataLoader: {per_sample:.0f} samples/s)")
        no_aug = PairedDataset(url, augment=None)
        print(f"read, 0 workers, no augmentation: shards "
              f"{samples_per_s(make_loader(no_aug, args.batch), args.epochs):.0f} samples/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
