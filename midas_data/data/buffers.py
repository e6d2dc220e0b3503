"""Reusable host buffers for the misaligned inputs that a batch builds on the CPU.

An input-level batch of two modalities gathers twice its aligned bytes into new tensors
(8 MB per batch in ``benchmarks/loader_overhead.py``). Freed and allocated again every
step, that memory goes back to the operating system and comes back as fresh pages, and
the page faults cost about as much as the copy itself. The pool hands out the same
buffers again once nothing refers to them any more.

"Nothing refers to them" is checked on the storage's own reference count: every tensor
that shares the memory (the alias handed out, views of it, tensors that autograd saved
for a backward pass, numpy arrays made from them) holds a reference, so a buffer is
reused only when the pool's own tensor is the last one. A buffer that has been moved to
shared memory (sent to another process) is never reused. GPU memory has its own caching
allocator and never comes here.
"""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["HostBufferPool", "host_buffers"]


def _storage_refs(tensor: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


class HostBufferPool:
    """CPU buffers reused once their last outside user is gone.

    ``empty(shape, dtype)`` gives a tensor like ``torch.empty`` would. It is the front of
    a free buffer of that dtype when one holds enough elements, but not more than twice
    as many (padded inputs change shape from batch to batch and still find one), else
    new memory. The pool keeps at most ``capacity`` buffers and ``max_bytes`` bytes,
    forgetting the oldest first; a forgotten buffer lives on with whoever still uses it.
    """

    def __init__(self, capacity: int = 16, max_bytes: int = 512 * 2**20) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: expected >= 0, got {capacity}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes: expected >= 0, got {max_bytes}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._buffers: list[torch.Tensor] = []  # flat, oldest first
        self._lock = threading.Lock()
        # References the pool's own tensor accounts for: itself and the temporary Python
        # storage object made to ask; measured rather than assumed.
        probe = torch.empty(1)
        self._own_refs = _storage_refs(probe) if _COUNTS_REFS else -1

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        if not _COUNTS_REFS or self.capacity == 0 or numel * dtype.itemsize > self.max_bytes:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            for buffer in self._buffers:
                if buffer.dtype == dtype and numel <= buffer.numel() <= 2 * numel and self._free(buffer):
                    return buffer[:numel].view(shape)
            buffer = torch.empty(numel, dtype=dtype)
            self._buffers.append(buffer)
            while len(self._buffers) > self.capacity or self.nbytes > self.max_bytes:
                self._buffers.pop(0)
            return buffer.view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers the pool keeps (in use or free)."""
        return sum(b.numel() * b.element_size() for b in self._buffers)

    def _free(self, buffer: torch.Tensor) -> bool:
        # No Python storage object is held across the count: it would be counted too.
        if buffer.untyped_storage().is_shared():
            return False
        return _storage_refs(buffer) == self._own_refs

    def clear(self) -> None:
        """Drop every buffer (their memory is freed once no batch uses it)."""
        with self._lock:
            self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)


# The reference count comes from a private PyTorch call; without it, no reuse.
_COUNTS_REFS = hasattr(torch._C, "_storage_Use_Count")

host_buffers = HostBufferPool()
