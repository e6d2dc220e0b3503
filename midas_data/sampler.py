"""``MidasBatchSampler``: the epoch plan of index batches for the MIDAS loader.

One global order per epoch, deterministic from ``(seed, epoch)``, cut into batches. The
epoch lives in a shared ``int64`` tensor that the collate step reads inside the workers,
so that ``set_epoch`` in the main process reaches the pair planning there too.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["MidasBatchSampler", "shared_epoch"]


def shared_epoch(epoch: int = 0) -> torch.Tensor:
    """A 0-dim ``int64`` tensor in shared memory, to be created before workers start."""
    return torch.full((), epoch, dtype=torch.int64).share_memory_()


class MidasBatchSampler(Sampler[list[int]]):
    """Yields lists of sample indices, one list a batch.

    Args:
        num_samples: size of the dataset.
        batch_size: samples per batch, at least 2 (a misaligned row needs a partner).
        shuffle: a new random order every epoch; ``False`` keeps dataset order.
        seed: base seed of the order.
        drop_last: drop a final incomplete batch. When kept, a final batch of one sample
            (which could not be misaligned) is folded into the batch before it, so every
            sample still appears exactly once per epoch.
        epoch: the shared epoch tensor (see :func:`shared_epoch`); one is made if omitted.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        epoch: torch.Tensor | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples: expected a positive dataset size, got {num_samples}")
        if batch_size < 2:
            raise ValueError(
                f"batch_size: expected at least 2, got {batch_size}; a misaligned sample takes a modality "
                "from another sample of the same batch"
            )
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch_tensor = epoch if epoch is not None else shared_epoch()

    @property
    def epoch(self) -> int:
        return int(self.epoch_tensor)

    def set_epoch(self, epoch: int) -> None:
        self.epoch_tensor.fill_(int(epoch))

    def epoch_order(self) -> torch.Tensor:
        """The ``int64`` order of all samples for the current epoch."""
        if not self.shuffle:
            return torch.arange(self.num_samples, dtype=torch.int64)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order().tolist()
        for start, stop in self._bounds():
            yield order[start:stop]

    def _bounds(self) -> list[tuple[int, int]]:
        n, size = self.num_samples, self.batch_size
        full, rest = divmod(n, size)
        bounds = [(i * size, (i + 1) * size) for i in range(full)]
        if rest and not self.drop_last:
            if rest == 1 and bounds:
                bounds[-1] = (bounds[-1][0], n)
            else:
                bounds.append((full * size, n))
        return bounds

    def __len__(self) -> int:
        return len(self._bounds())
