"""make_loader: the DataLoader over a PairedDataset (seeded epoch order, resumable, data-parallel slices)."""

from __future__ import annotations

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) so workers seed augmentation per epoch; reshuffles (seeded) each epoch.

    The order of an epoch depends only on (seed, epoch): `np.random.default_rng([seed, epoch])`,
    so a run resumed mid-epoch (`epoch`, `skip_samples`) continues with the very same items.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, epoch: int = 0, skip_samples: int = 0,
                 pair_flags: np.ndarray | None = None, pair_share: float | None = None, batch_size: int = 1) -> None:
        if pair_share is not None and (pair_flags is None or len(pair_flags) != num_samples):
            raise ValueError("pair_share needs pair_flags with one entry per sample")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.skip_samples = skip_samples  # of the first epoch iterated only
        self.pair_flags = None if pair_flags is None else np.asarray(pair_flags, dtype=bool)
        self.pair_share = pair_share
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.num_samples - self.skip_samples

    def __iter__(self):
        epoch, skip = self.epoch, self.skip_samples
        self.epoch += 1
        self.skip_samples = 0
        if self.shuffle and self.pair_share is not None:
            order = pair_aware_order(self.pair_flags, self.pair_share, self.batch_size, np.random.default_rng([self.seed, epoch]))
        elif self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        for index in order[skip:].tolist():
            yield index, epoch


def pair_aware_order(pair_flags: np.ndarray, pair_share: float, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's sample order in which every batch of `batch_size` holds round(pair_share * batch_size)
    paired samples (at least one), the rest unpaired; each pool is walked in a shuffled order and
    reshuffled when used up, so a small pool repeats within the epoch. The epoch keeps its length.

    Args:
        pair_flags: (N,) bool, which samples have a de-occluded pair.
        pair_share: wanted share of paired samples per batch, in (0, 1].
        batch_size: samples per batch.
        rng: the epoch's generator.

    Returns:
        (N,) int64 indices (a pool that is empty contributes nothing: the other fills the batch).
    """
    paired, unpaired = np.flatnonzero(pair_flags), np.flatnonzero(~np.asarray(pair_flags, dtype=bool))
    per_batch = min(batch_size, max(1, int(round(pair_share * batch_size))))
    pools = [_Cycle(paired, rng), _Cycle(unpaired, rng)]
    order: list[int] = []
    while len(order) < len(pair_flags):
        size = min(batch_size, len(pair_flags) - len(order))
        num_paired = min(size, per_batch) if len(paired) else 0
        if not len(unpaired):
            num_paired = size
        order += pools[0].take(num_paired) + pools[1].take(size - num_paired)
    return np.asarray(order, dtype=np.int64)


class _Cycle:
    """Draws from a pool in shuffled order, reshuffling each time it is used up."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator) -> None:
        self.pool, self.rng, self.queue = pool, rng, []

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if not self.queue:
                self.queue = self.rng.permutation(self.pool).tolist()
            out.append(self.queue.pop())
        return out


class _PerSampleBatches(torch.utils.data.Dataset):
    """Batches of a dataset that only reads single samples (e.g. an in-memory test double): the
    worker collates them with default_collate. PairedDataset never goes through here."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.is_augmented = getattr(dataset, "augment", None) is not None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, items: list[tuple[int, int]]) -> dict:
        # (index, epoch) seeds an augmented sample; an unaugmented one is indexed plainly
        return torch.utils.data.default_collate(
            [self.dataset[item if self.is_augmented else item[0]] for item in items])


def worker_init(_worker_id: int) -> None:
    """One thread per worker for OpenCV and torch: the workers are the parallelism."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(
    dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
    drop_last: bool = False, epoch: int = 0, skip_batches: int = 0, num_shards: int = 1, shard_index: int = 0,
    pair_share: float | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a PairedDataset: spawn-started workers that open the store lazily.

    Args:
        dataset: the PairedDataset (or any dataset whose `reads_batches` is True); another dataset
            is read sample by sample and collated in the worker.
        batch_size: samples per batch.
        num_workers: worker processes (0 = in the main process).
        shuffle: reshuffle every epoch (seeded by `seed` and the epoch).
        seed: shuffle seed.
        drop_last: drop the last incomplete batch.
        epoch: the first epoch the loader yields (later iterations yield epoch + 1, ...).
        skip_batches: batches of the first epoch to leave out (a run resumed mid-epoch).
        num_shards, shard_index: data-parallel training: every batch of `batch_size` is cut into
            `num_shards` contiguous slices (`shard_slice`) and this loader yields slice `shard_index`;
            an empty slice (a last batch shorter than num_shards) yields the batch's first sample.
        pair_share: share of de-occluded pairs in every batch (`pair_aware_order`; the dataset's
            `pair_flags()` says which samples have one); None = a plain shuffle.

    Returns:
        A DataLoader yielding dicts of batched tensors (`sample_key` as a list of str).

    Raises:
        ValueError: on a non-positive batch size, negative worker count, epoch or skip.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    if epoch < 0 or not 0 <= skip_batches * batch_size <= len(dataset):
        raise ValueError(f"epoch must be >= 0 and skip_batches within the epoch, got {epoch} and {skip_batches}")
    # each worker builds a whole collated batch (PairedDataset.load_batch) and sends it as one buffer
    flags = dataset.pair_flags() if pair_share is not None else None
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch,
                           skip_samples=skip_batches * batch_size, pair_flags=flags, pair_share=pair_share,
                           batch_size=batch_size)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards), got {shard_index} of {num_shards}")
    if num_shards > 1:
        batches = _ShardedBatches(batches, num_shards, shard_index)
    return torch.utils.data.DataLoader(
        dataset if getattr(dataset, "reads_batches", False) else _PerSampleBatches(dataset),
        batch_size=None,
        sampler=batches,
        collate_fn=_collated,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init if num_workers > 0 else None,
        pin_memory=False,
    )


def shard_slice(num_items: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """[start, stop) of shard `shard_index` when `num_items` are cut into `num_shards` contiguous slices
    whose sizes differ by at most one (the first `num_items % num_shards` are one longer)."""
    base, extra = divmod(num_items, num_shards)
    start = shard_index * base + min(shard_index, extra)
    return start, start + base + (1 if shard_index < extra else 0)


class _ShardedBatches:
    """One process's slice of every batch of a BatchSampler (make_loader's num_shards / shard_index)."""

    def __init__(self, batches, num_shards: int, shard_index: int) -> None:
        self.batches, self.num_shards, self.shard_index = batches, num_shards, shard_index

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            start, stop = shard_slice(len(batch), self.num_shards, self.shard_index)
            yield batch[start:stop] if stop > start else batch[:1]  # a placeholder keeps the ranks in step


def _collated(batch: dict) -> dict:
    """The loader's collate_fn: PairedDataset already returns a collated batch for a list of items."""
    return batch
