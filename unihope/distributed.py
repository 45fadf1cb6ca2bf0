"""Data-parallel training through Hugging Face accelerate (`accelerate launch`, as upstream UniHOPE trains).

`optim.batch_size` is the GLOBAL batch (upstream's `Accelerator(split_batches=True)`): each of the W
processes reads its contiguous slice of the same seeded batch (`unihope.storage.loader.shard_slice`), so the
learning rate needs no scaling with the process count and a run resumes on any number of processes.
Each rank's loss is scaled by n_local * W / n_global before DDP averages the gradients, which makes the
update the global-batch mean for every per-sample-mean term (exact on an uneven last batch too).
Terms averaged over a subset (object terms over grasping samples, enhancement over pairs) are averaged
per rank first, as upstream's DDP does. BatchNorm statistics are per process.

A single process without mixed precision builds no Accelerator: the loop runs exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from unihope.storage.loader import shard_slice


def launched_num_processes() -> int:
    """The process count of `accelerate launch` / torchrun (WORLD_SIZE), 1 when started plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class DataParallel:
    """This process's place in a data-parallel run; `accelerator` is None for a plain single process."""

    accelerator: object | None
    process_index: int
    num_processes: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @property
    def active(self) -> bool:
        return self.accelerator is not None

    def local_share(self, global_batch: int) -> tuple[int, float]:
        """(samples this process trains on, loss scale n_local * W / n_global) for a global batch."""
        start, stop = shard_slice(global_batch, self.num_processes, self.process_index)
        return stop - start, (stop - start) * self.num_processes / global_batch

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """(module for the student forward pass, optimizer to step): DDP + autocast, or the inputs."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, parameters, max_norm: float) -> None:
        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        else:
            self.accelerator.clip_grad_norm_(parameters, max_norm)  # unscales fp16 gradients first

    def global_terms(self, loss: float, terms: dict[str, float], n_local: int, n_global: int) -> tuple[float, dict]:
        """The global batch's loss and terms (sample-weighted means over the ranks); local values when alone."""
        if self.num_processes == 1:
            return loss, terms
        gathered: list = [None] * self.num_processes
        torch.distributed.all_gather_object(gathered, (n_local, loss, terms))
        names = sorted({name for _, _, t in gathered for name in t})
        total = sum(n * value for n, value, _ in gathered) / n_global
        return total, {name: sum(n * t.get(name, 0.0) for n, _, t in gathered) / n_global for name in names}

    def wait_for_everyone(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def data_parallel(device: torch.device, mixed_precision: str) -> DataParallel:
    """Build the Accelerator when launched with > 1 process or asked for mixed precision (CUDA only).

    Raises:
        ValueError: on mixed precision with a CPU device.
    """
    num_processes = launched_num_processes()
    if mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed_precision={mixed_precision!r} needs a CUDA device, got {device}; use mixed_precision: no")
    if num_processes == 1 and mixed_precision == "no":
        return DataParallel(None, 0, 1, device)
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # find_unused_parameters as upstream: the object branch and switcher may sit out a batch
    accelerator = Accelerator(
        mixed_precision=mixed_precision, cpu=device.type == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )  # fmt: skip
    return DataParallel(accelerator, accelerator.process_index, accelerator.num_processes, accelerator.device)
