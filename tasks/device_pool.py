"""One GPU, one slot, inside a worker process: de-occlusion batches take a free device and hold it while they run.

The server-side tag limit (`flow.gpu_tag`, limit `flow.gpu_concurrency`) caps how many GPU batches run
in the whole fleet; it cannot say which device a batch runs on, and a local `unihope build` has no
server limit at all. This pool does both inside a process: each batch takes one of the process's
visible CUDA devices (`cuda:0` .. `cuda:N-1`, after CUDA_VISIBLE_DEVICES) that no other batch holds,
waiting while all are busy. A worker pinned to one GPU (CUDA_VISIBLE_DEVICES=k) thus runs one batch
at a time on it; a process seeing N GPUs runs up to N batches, one per device. The process's pool is
held by its `unihope.tasks.resources.WorkerResources` (`device_slot`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

CUDA_PREFIX = "cuda"


def visible_cuda_devices() -> tuple[str, ...]:
    """`cuda:0` .. `cuda:N-1` for the CUDA devices this process sees (none without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple(f"{CUDA_PREFIX}:{idx}" for idx in range(torch.cuda.device_count()))


class DevicePool:
    """A fixed set of devices, each held by at most one caller at a time."""

    def __init__(self, devices: Sequence[str]) -> None:
        """Args:
            devices: device names, e.g. ("cuda:0", "cuda:1"); at least one, no duplicates.

        Raises:
            ValueError: on an empty or duplicated device list.
        """
        if not devices or len(set(devices)) != len(devices):
            raise ValueError(f"a device pool needs distinct devices, got {list(devices)}")
        self.devices = tuple(devices)
        self._free = list(self.devices)
        self._available = threading.Condition()

    @contextmanager
    def acquire(self, among: Sequence[str] | None = None) -> Iterator[str]:
        """Hold a free device for the duration of the block (waits while every candidate is held).

        Args:
            among: the candidates (a de-occluder pinned to `cuda:1` takes only that one); None -> any.

        Raises:
            ValueError: when a candidate is not in the pool.
        """
        candidates = self.devices if among is None else tuple(among)
        unknown = set(candidates) - set(self.devices)
        if not candidates or unknown:
            raise ValueError(f"devices {sorted(unknown) or list(candidates)} are not in the pool {list(self.devices)}")
        with self._available:
            while not any(device in self._free for device in candidates):
                self._available.wait()
            device = next(device for device in self._free if device in candidates)
            self._free.remove(device)
        try:
            yield device
        finally:
            with self._available:
                self._free.append(device)
                self._free.sort(key=self.devices.index)  # lowest index first: deterministic placement
                self._available.notify_all()  # waiters may want different devices


def devices_for(requested: str, visible: Sequence[str]) -> tuple[str, ...]:
    """The devices a de-occluder configured with `requested` may run on, given the `visible` ones.

    `auto` and `cuda`: every visible CUDA device; `cuda:N`: that device; `cpu`, or no CUDA: none
    (CPU work is not pooled).

    Raises:
        ValueError: for `cuda:N` beyond the visible devices.
    """
    if requested in ("auto", CUDA_PREFIX):
        return tuple(visible)
    if requested.startswith(f"{CUDA_PREFIX}:"):
        if requested not in visible:
            raise ValueError(f"device {requested!r} is not visible to this process (visible: {list(visible) or 'none'})")
        return (requested,)
    return ()
