"""The training run's view of a stored dataset: a split through PairedDataset, optionally capped."""

from __future__ import annotations

import torch

from unihope.train_config import TrainConfig


def open_paired_dataset(data_url: str, split: str, cfg: TrainConfig, max_samples: int | None, augment_on: bool = False,
                        version: str | None = None):
    """The shards' split through `unihope.storage.paired.PairedDataset` (capped to `max_samples`; augmented when asked).

    `version` is a dataset version id (unihope.storage.versions); None = the newest.
    """
    from unihope.storage.augment import AugmentConfig
    from unihope.storage.paired import PairedDataset

    augment = AugmentConfig() if (augment_on and cfg.data.augment) else None
    dataset = PairedDataset(data_url, split=split, augment=augment, seed=cfg.seed, val_fraction=cfg.data.val_fraction,
                            version=version)
    if max_samples is not None and len(dataset) > max_samples:
        dataset = FirstSamples(dataset, max_samples)
    return dataset


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
