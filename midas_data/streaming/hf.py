"""``MidasIterable``: MIDAS batches over a Hugging Face ``datasets.IterableDataset``.

A thin ``torch.utils.data.IterableDataset`` that runs the dataset's examples through a
:class:`~midas_data.streaming.stage.MidasBatches` stage inside each DataLoader worker.
The Hugging Face dataset keeps doing its own splitting: by rank with
``datasets.distributed.split_dataset_by_node`` (done by you, before wrapping) and by
DataLoader worker (done by the dataset when a worker iterates it).

For exactly-once epochs with equal work per rank, give the stage
``index=ShardIndex.for_hf(len(ds), num_shards)`` for a dataset made by
``ds.to_iterable_dataset(num_shards=...)``. ``datasets`` shuffles the order of the shards
before dealing them (every epoch after the first, and the first too after ``.shuffle()``),
so which shards a worker reads is not known ahead; how many it reads is (an even split by
rank, then by worker), and with the shard sizes that bounds its number of samples: the
stage plans its batches from those bounds (``balance.py``) and counts what arrives. Only
public parts of ``datasets`` are read: ``num_shards`` (to check the split by rank when the
wrapper is made) and ``set_epoch``.

Each pass over the wrapper is the next epoch, for the stage and for the dataset's shuffle
alike; :meth:`MidasIterable.set_epoch` chooses one instead.

Every worker of a pass gives the dataset its epoch, and the dataset shares its epoch
between the processes; ``datasets``' ``set_epoch`` reads and then writes that shared value,
so two workers setting it at once could leave it at another epoch, and then read their
shards in different orders (a sample twice in the rank's epoch, another never). The
wrapper holds a process lock, made with it before any worker starts, around that call.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.context import get_spawning_popen
from typing import Any

from torch.utils.data import IterableDataset

from ..data.batch import MidasBatch
from ..errors import MidasDataError
from .stage import MidasBatches

__all__ = ["MidasIterable"]


def _epoch_lock() -> Any:
    """A lock shared by the DataLoader workers, started by fork or spawn alike."""
    return multiprocessing.get_context("spawn").Lock()


def _num_shards(dataset: Any) -> int | None:
    """The dataset's shard count as ``datasets`` reports it (after a split by rank, this
    rank's), or ``None`` for an iterable that does not say."""
    for name in ("num_shards", "n_shards"):
        value = getattr(dataset, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class MidasIterable(IterableDataset):
    """``dataset`` (any iterable of dict examples, e.g. ``datasets.IterableDataset``) as
    MIDAS batches; use with ``DataLoader(..., batch_size=None)``.

    Each pass is the next epoch: in every worker the pass takes the stage's next epoch
    (:meth:`MidasBatches.begin_pass`) and gives it to the dataset (``set_epoch``, its shard
    order and shuffle buffer) before reading it. :meth:`set_epoch` before a pass chooses
    the epoch of both instead.

    Raises ``MidasDataError`` when made if the dataset's shard count does not fit the
    stage's index and rank: not split by rank (``split_dataset_by_node`` forgotten, or it
    split by examples), or an index for another ``num_shards``.
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
        self._epoch_lock = _epoch_lock()
        self._check_split()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if get_spawning_popen() is None:
            # A process lock pickles only into a process being started (a spawned worker);
            # any other copy (``copy.deepcopy``) gets a lock of its own.
            state["_epoch_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._epoch_lock is None:
            self._epoch_lock = _epoch_lock()

    def _check_split(self) -> None:
        index, stage = self.stage.index, self.stage
        have = _num_shards(self.dataset)
        if index is None or index.source != "hf" or stage.resampled or have is None:
            return
        total, rank, world = len(index.shards), stage.rank, stage.world_size
        expected = len(range(rank, total, world))
        if have == expected:
            return
        split = f"datasets.distributed.split_dataset_by_node(ds, rank={rank}, world_size={world}) before MidasIterable"
        if world > 1 and have == total:
            if total % world:
                why = (
                    f"Either it was not split by rank (pass it through {split}), or split_dataset_by_node split it by "
                    f"examples, as it does when num_shards ({total}) is not a multiple of world_size ({world}): every "
                    f"rank then reads every shard and keeps one example in {world}, and no worker's share can be "
                    f"known. Use a num_shards that is a multiple of {world} in to_iterable_dataset (and "
                    "ShardIndex.for_hf), or split_dataset_by_node(..., strategy='shards')"
                )
            else:
                why = f"It was not split by rank: pass it through {split} (with the default strategy, by shards)"
            raise MidasDataError(
                f"MidasIterable on rank {rank} of {world}: the dataset has all {total} shards of the index, where this "
                f"rank should read {expected}. {why}"
            )
        raise MidasDataError(
            f"MidasIterable on rank {rank} of {world}: the dataset has {have} shards, but the index lists {total} "
            f"shards, of which this rank should read {expected}. Give ShardIndex.for_hf(len(ds), num_shards) the "
            "num_shards of to_iterable_dataset"
            + (f", and split the dataset by rank with {split}" if world > 1 else "")
            + (". (datasets older than 5.1 merge shards in .shuffle(): use datasets>=5.1)" if have < expected else "")
        )

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass, for the stage (pair plans, window draws) and the
        dataset (its shuffle); later passes count on from it."""
        self.stage.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            with self._epoch_lock:
                self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[MidasBatch]:
        place = self.stage.place()
        epoch = self.stage.begin_pass(place)
        if hasattr(self.dataset, "set_epoch"):
            # Every worker of the pass sets the same epoch (the dataset shares it between
            # processes): the shard order all of them split must be the same. One at a
            # time: set_epoch reads, then writes, the shared value.
            with self._epoch_lock:
                self.dataset.set_epoch(epoch)
        return self.stage._run(iter(self.dataset), place, epoch)
