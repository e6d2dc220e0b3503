"""``midas_loader``: a standard ``DataLoader`` that yields :class:`MidasBatch` objects.

It only wires the three parts together, each of which can be used on its own with a
DataLoader of your own: :class:`MidasDataset` (tags items with ids),
:class:`MidasBatchSampler` (the epoch plan) and :class:`MidasCollate` (builds the batch
in the workers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader

from .data.collate import CollateFn, Key, MidasCollate, ModalityKeys
from .data.dataset import MidasDataset
from .feedback.sampler import MidasBatchSampler, shared_epoch
from .feedback.stats import StatsTable

__all__ = ["midas_loader", "set_epoch"]


def midas_loader(
    dataset: Any,
    modalities: ModalityKeys,
    label_key: Key = "label",
    *,
    batch_size: int,
    mode: str = "feature",
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    rule: str = "different_label",
    modality_collate: Mapping[str, CollateFn] | None = None,
    materialize_in_worker: bool = False,
    loader_class: type[DataLoader] = DataLoader,
    stats: StatsTable | None = None,
    policy: str = "uniform",
    floor: float = 0.2,
    weak_modality: str | int | None = None,
    num_replicas: int = 1,
    rank: int = 0,
    num_classes: int | None = None,
    **loader_kwargs: Any,
) -> DataLoader:
    """A DataLoader of MIDAS batches over ``dataset``.

    ``loader_kwargs`` go to the DataLoader (``num_workers``, ``pin_memory``,
    ``persistent_workers``, ``prefetch_factor``, ``multiprocessing_context``...);
    ``loader_class`` may be torchdata's ``StatefulDataLoader``. Each pass over the loader is
    the next epoch (new order, new pair plans); ``set_epoch(loader, epoch)`` before a pass
    chooses the epoch instead (for resume, or to follow a trainer's epoch counter).

    ``stats``, ``policy``, ``floor``, ``weak_modality``, ``num_replicas`` and ``rank`` go to
    :class:`MidasBatchSampler`: the prioritised policies (``"hard"``, ``"weak_modality"``,
    experimental) read the :class:`~midas_data.feedback.stats.StatsTable` given as ``stats``;
    ``num_replicas``/``rank`` split each epoch by rank for plain DDP loops (leave them at
    1/0 under Accelerate, which shards batches itself). See ``docs/feedback.md``.

    ``num_classes``, when given, makes a label outside ``[0, num_classes)`` an error that
    names its sample as the batch is built (see ``docs/errors.md``).
    """
    for taken in ("sampler", "batch_sampler", "collate_fn", "batch_size", "shuffle", "drop_last"):
        if taken in loader_kwargs:
            raise TypeError(f"midas_loader sets {taken!r} itself; build the DataLoader by hand to choose your own")
    wrapped = dataset if isinstance(dataset, MidasDataset) else MidasDataset(dataset)
    epoch = shared_epoch()
    batch_sampler = MidasBatchSampler(
        len(wrapped),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        epoch=epoch,
        policy=policy,
        stats=stats,
        floor=floor,
        weak_modality=weak_modality,
        num_replicas=num_replicas,
        rank=rank,
    )
    collate = MidasCollate(
        modalities,
        label_key,
        mode=mode,
        seed=seed,
        rule=rule,
        modality_collate=modality_collate,
        epoch=epoch,
        materialize_in_worker=materialize_in_worker,
        num_classes=num_classes,
    )
    _check_table_order(stats, collate.modalities)
    return loader_class(wrapped, batch_sampler=batch_sampler, collate_fn=collate, **loader_kwargs)


def _check_table_order(stats: StatsTable | None, modalities: tuple[str, ...]) -> None:
    """A table with the loader's modality names in another order would store each
    modality's confidence in another's column: refuse it."""
    if stats is None or tuple(stats.modalities) == modalities or set(stats.modalities) != set(modalities):
        return
    raise ValueError(
        f"stats: the table's modalities {tuple(stats.modalities)} are the loader's {modalities} in another order; "
        "the objective's per-sample confidences follow the loader's order, so build the table with that order"
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Use ``epoch`` for the next pass over a loader made by :func:`midas_loader` (order and
    pair plans); without it, each pass is the epoch after the previous one."""
    sampler = getattr(loader, "batch_sampler", None)
    if not hasattr(sampler, "set_epoch"):
        raise TypeError("loader: its batch_sampler has no set_epoch; was it made by midas_loader?")
    sampler.set_epoch(epoch)  # type: ignore[union-attr]
