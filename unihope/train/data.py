"""The training run's view of a stored dataset: a split through PairedDataset, optionally capped."""

from __future__ import annotations

import torch

from unihope.train_config import TrainConfig


def open_paired_dataset(data_url: str, split: str, cfg: TrainConfig, max_samples: int | None, augment_on: bool = False,
                        version: str | None = None):
    """The shards' split through `unihope.storage.paired.PairedDataset` (capped to `max_samples`; augmented when asked).

    `version` is a dataset version id (unihope.storage.versions); None = the newest.

    Raises:
        ValueError: when the split holds no sample, naming the sequence counts and `data.val_fraction`
            (a run must stop before it starts, not fail later on an empty loader or evaluation).
    """
    from unihope.storage.augment import AugmentConfig
    from unihope.storage.paired import PairedDataset

    augment = AugmentConfig() if (augment_on and cfg.data.augment) else None
    dataset = PairedDataset(data_url, split=split, augment=augment, seed=cfg.seed, val_fraction=cfg.data.val_fraction,
                            version=version)
    if len(dataset) == 0:
        raise ValueError(_empty_split_message(data_url, split, cfg, version))
    if max_samples is not None and len(dataset) > max_samples:
        dataset = FirstSamples(dataset, max_samples)
    return dataset


def _empty_split_message(data_url: str, split: str, cfg: TrainConfig, version: str | None) -> str:
    """Why `split` came out empty: the dataset's sequence counts per side at `data.val_fraction`."""
    from unihope.storage.splits import assign_splits, count_splits
    from unihope.storage.view import open_dataset

    view = open_dataset(data_url, verify="none", version=version)
    try:
        sequences = view.column("sequence_key").tolist() if len(view) else []
    finally:
        view.close()
    counts = count_splits(assign_splits(sequences, cfg.data.val_fraction))
    if len(set(sequences)) < 2 and cfg.data.val_fraction > 0:
        fix = "build more sequences (training and evaluation each need at least one)"
    else:
        fix = f"change data.val_fraction or data.{'train' if split == cfg.data.train_split else 'eval'}_split"
    return (f"the {split!r} split of {data_url} holds no sample ({counts} at data.val_fraction="
            f"{cfg.data.val_fraction}); {fix}")


class FirstSamples(torch.utils.data.Dataset):
    """The first `num_samples` of a dataset, forwarding (index, epoch) items and the `augment` attribute."""

    def __init__(self, dataset, num_samples: int) -> None:
        self.dataset, self.num_samples = dataset, min(num_samples, len(dataset))
        self.augment = getattr(dataset, "augment", None)
        self.reads_batches = getattr(dataset, "reads_batches", False)  # unihope.storage.loader.make_loader's batched path
        self.version_id = getattr(dataset, "version_id", "")

    def __len__(self) -> int:
        return self.num_samples

    def pair_flags(self):
        """The wrapped dataset's pair flags of the first `num_samples` (for the pair-aware sampler)."""
        return self.dataset.pair_flags()[: self.num_samples]

    def __getitem__(self, item):
        for one in item if isinstance(item, list) else [item]:  # a list is a whole batch (make_loader)
            index = one[0] if isinstance(one, tuple) else one
            if not 0 <= index < self.num_samples:
                raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return self.dataset[item]
