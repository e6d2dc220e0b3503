"""One storage per batch: the tensors a worker sends as views of a single buffer.

A DataLoader worker hands every storage of a batch to the main process through its own
shared-memory segment: one file, one file descriptor, one ``mmap`` and its page faults on
each side. With two modalities, labels, ids and a plan that is five segments per batch;
packed here it is one. On two cores that saves about 8% of loader throughput against
``default_collate`` (``benchmarks/loader_overhead.py``), more than MIDAS's own work costs.

:func:`pack_tensors` is what ``default_collate`` does for a list of tensors (stack into a
fresh buffer, in shared memory when called inside a worker), for several entries at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

__all__ = ["pack_tensors", "stackable"]

# Every entry starts on a 64-byte boundary: aligned for any dtype and for vector loads.
_ALIGN = 64


def stackable(values: Sequence[object]) -> bool:
    """Whether ``default_collate`` would stack ``values`` into one plain CPU tensor.

    Like ``default_collate`` this looks at the first value only; a later value of another
    shape or type makes the stacking fail, and the caller's fallback reports it.
    """
    first = values[0] if values else None
    return (
        type(first) is torch.Tensor
        and first.layout == torch.strided
        and first.device.type == "cpu"
        and not first.is_nested
        and not first.is_quantized
        and not first.requires_grad
    )


def pack_tensors(
    entries: Mapping[Any, Sequence[torch.Tensor] | torch.Tensor],
) -> dict[Any, torch.Tensor]:
    """Tensors for ``entries``, all views of one new storage, in shared memory inside a worker.

    An entry is either a ready tensor (copied in) or a sequence of equal-shape tensors
    (stacked along a new first dimension, as ``torch.stack`` does). Raises what
    ``torch.stack`` raises when the tensors of a sequence differ in shape.
    """
    layout: list[tuple[Any, tuple[int, ...], torch.dtype, int, int]] = []
    nbytes = 0
    for name, entry in entries.items():
        if isinstance(entry, torch.Tensor):
            shape, dtype = tuple(entry.shape), entry.dtype
        else:
            shape, dtype = (len(entry), *entry[0].shape), entry[0].dtype
        size = math.prod(shape) * dtype.itemsize
        nbytes = -(-nbytes // _ALIGN) * _ALIGN
        layout.append((name, shape, dtype, nbytes, size))
        nbytes += size
    # Inside a worker the buffer goes straight to shared memory, as default_collate's own
    # does, so sending it does not copy it once more.
    if get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    else:
        storage = torch.UntypedStorage(max(nbytes, 1))
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    packed = {}
    for name, shape, dtype, offset, size in layout:
        view = buffer[offset : offset + size].view(dtype).view(shape)
        entry = entries[name]
        if isinstance(entry, torch.Tensor):
            view.copy_(entry)
        else:
            torch.stack(list(entry), 0, out=view)
        packed[name] = view
    return packed
