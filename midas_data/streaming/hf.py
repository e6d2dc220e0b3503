"""``MidasIterable``: MIDAS batches over a Hugging Face ``datasets.IterableDataset``.

A thin ``torch.utils.data.IterableDataset`` that runs the dataset's examples through a
:class:`~midas_data.streaming.stage.MidasBatches` stage inside each DataLoader worker.
The Hugging Face dataset keeps doing its own splitting: by rank with
``datasets.distributed.split_dataset_by_node`` (done by you, before wrapping) and by
DataLoader worker (done by the dataset when a worker iterates it). For exactly-once
epochs with equal work per rank, give the stage ``index=ShardIndex.for_hf(len(ds),
num_shards)`` for a dataset made by ``ds.to_iterable_dataset(num_shards=...)`` with a
number of shards divisible by the world size (``split_dataset_by_node`` splits by shards
then; otherwise it splits by examples and the counts would not hold, which the stage
reports as an error at the end of the epoch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset

from ..data.batch import MidasBatch
from .stage import MidasBatches

__all__ = ["MidasIterable"]


class MidasIterable(IterableDataset):
    """``dataset`` (any iterable of dict examples, e.g. ``datasets.IterableDataset``) as
    MIDAS batches; use with ``DataLoader(..., batch_size=None)``.

    ``set_epoch`` sets the epoch of the stage and of the dataset (its shuffle), before
    each epoch.
    """

    def __init__(self, dataset: Any, stage: MidasBatches) -> None:
        if not isinstance(stage, MidasBatches):
            raise TypeError(f"stage: expected MidasBatches, got {type(stage).__name__}")
        if stage.id_field is None:
            raise ValueError(
                "stage: examples of a Hugging Face dataset have no __key__; give the stage id_field='<column of int "
                "ids>' (e.g. ds.add_column('id', range(len(ds))) before to_iterable_dataset)"
            )
        self.dataset = dataset
        self.stage = stage

    def set_epoch(self, epoch: int) -> None:
        self.stage.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[MidasBatch]:
        return self.stage(iter(self.dataset))
