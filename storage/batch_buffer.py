"""A collated batch whose tensors are views of one (shared-memory) buffer, pickled as that one buffer."""

from __future__ import annotations

import math

import numpy as np
import torch

_TORCH_DTYPES = {np.float32: torch.float32, np.bool_: torch.bool, np.int64: torch.int64}
_BATCH_ALIGN_BYTES = 64  # every field of a batch buffer starts on a cache line (and any dtype's alignment)


class SharedBatch(dict):
    """A collated batch whose tensors are views of one byte buffer.

    Pickling sends the buffer once (in a DataLoader worker it lives in shared memory, so that is one
    file-descriptor handover) and rebuilds a plain dict of views on the other side. Pickling each
    tensor instead costs a socket connection and an fd transfer per tensor (~20 per batch), which
    measurably loaded the main process. A value replaced after collation is pickled normally.
    The tensors are torch views of the buffer (never torch.from_numpy of numpy views): pickling a
    buffer that is not yet in shared memory moves its storage there, and only torch views follow.
    """

    __slots__ = ("_buffer", "_layout", "_views")

    @classmethod
    def allocate(cls, fields: dict[str, tuple[type, tuple[int, ...]]]) -> tuple[SharedBatch, dict[str, np.ndarray]]:
        """Empty tensors for `fields` (name -> (numpy dtype, shape)) carved from one buffer, and their numpy views."""
        layout, offset = [], 0
        for name, (dtype, shape) in fields.items():
            layout.append((name, offset, dtype, shape))
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            offset += -(-nbytes // _BATCH_ALIGN_BYTES) * _BATCH_ALIGN_BYTES
        if torch.utils.data.get_worker_info() is not None:
            # what default_collate does in a worker: allocate in shared memory rather than copy there later
            buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(offset))
        else:
            buffer = torch.empty(offset, dtype=torch.uint8)
        batch = cls(_views_of(buffer, layout))
        batch._buffer, batch._layout, batch._views = buffer, tuple(layout), dict(batch)
        return batch, {name: tensor.numpy() for name, tensor in batch.items()}

    def finish(self, key_order: tuple[str, ...], **extra) -> SharedBatch:
        """Add the non-tensor fields and put the keys in `key_order`.

        Raises:
            KeyError: when the batch's keys and `key_order` differ (a field would vanish or be missing).
        """
        items = {**self, **extra}
        if set(items) != set(key_order):
            raise KeyError(f"batch fields and their declared keys differ: not declared {sorted(set(items) - set(key_order))}, "
                           f"declared but missing {sorted(set(key_order) - set(items))} "
                           f"(unihope.storage.schema.SAMPLE_FIELDS comes from the schema's `train` entries)")
        self.clear()
        self.update((key, items[key]) for key in key_order)
        return self

    def __reduce__(self):
        packed = tuple(entry for entry in self._layout if self.get(entry[0]) is self._views[entry[0]])
        packed_names = {entry[0] for entry in packed}
        others = {key: value for key, value in self.items() if key not in packed_names}
        return _rebuild_batch, (self._buffer, packed, others, tuple(self))


def _views_of(buffer: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    return {name: buffer[offset:offset + math.prod(shape) * np.dtype(dtype).itemsize].view(_TORCH_DTYPES[dtype])
            .view(shape) for name, offset, dtype, shape in layout}


def _rebuild_batch(buffer: torch.Tensor, layout, others: dict, key_order: tuple[str, ...]) -> dict:
    """Unpickle a SharedBatch as a plain dict of views of its (shared-memory) buffer."""
    items = {**_views_of(buffer, layout), **others}
    return {key: items[key] for key in key_order}
