"""``midas_loader``: a standard ``DataLoader`` that yields :class:`MidasBatch` objects.

It only wires the three parts together, each of which can be used on its own with a
DataLoader of your own: :class:`MidasDataset` (tags items with ids),
:class:`MidasBatchSampler` (the epoch plan) and :class:`MidasCollate` (builds the batch
in the workers). The loader is a :class:`MidasDataLoader` (or a subclass of the
``loader_class`` asked for) that counts the batches each pass hands out, so that a peek at
the first batch does not spend an epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader

from .data.batch import MidasBatch
from .data.collate import CollateFn, Key, MidasCollate, ModalityKeys
from .data.dataset import MidasDataset
from .feedback.epochs import EpochCursor
from .feedback.sampler import MidasBatchSampler, shared_epoch
from .feedback.stats import StatsTable

__all__ = ["MidasDataLoader", "attach_importance_weights", "counting_loader_class", "midas_loader", "set_epoch"]


class _CountingIterator:
    """A loader pass's iterator that reports each batch handed to the caller, and the end,
    to the batch sampler's :class:`EpochCursor`. Everything else is the wrapped iterator's.

    The DataLoader's own iterator is made at the first ``next()``, not at ``iter()``: with
    workers, making it asks the sampler for batches at once, and a trainer that makes the
    iterator before it restores a checkpoint or sets the epoch (PyTorch Lightning does both
    after ``iter``) would get batches planned for the wrong epoch.
    """

    def __init__(
        self,
        start: Callable[[], Iterator[Any]],
        cursor: EpochCursor,
        length: Callable[[], int],
        weigh: Callable[[Any], None] | None = None,
    ) -> None:
        self._start = start
        self._batches: Iterator[Any] | None = None
        self._cursor = cursor
        self._length = length
        self._weigh = weigh

    def _started(self) -> Iterator[Any]:
        if self._batches is None:
            self._batches = self._start()
        return self._batches

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        try:
            batch = next(self._started())
        except StopIteration:
            self._cursor.caller_reached_end()
            raise
        self._cursor.batch_delivered()
        if self._weigh is not None:
            self._weigh(batch)
        return batch

    def __len__(self) -> int:
        return len(self._batches) if self._batches is not None else self._length()  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._started(), name)


class _CountsPasses:
    """DataLoader mixin: each pass tells a MIDAS batch sampler how many batches the caller
    received. With workers the sampler is asked for batches ahead of the caller, so only
    the loader knows whether a pass was an epoch or a peek (see ``feedback/epochs.py``).

    No ``__init__``: frameworks re-create loaders as ``type(loader)(**kwargs)``.
    """

    def __iter__(self) -> Any:
        cursor = getattr(getattr(self, "batch_sampler", None), "cursor", None)
        if not isinstance(cursor, EpochCursor):
            return super().__iter__()  # type: ignore[misc]
        cursor.loader_pass()  # before the iterator: with workers, it starts the sampler's pass
        make = super().__iter__
        weigh = _importance_weigher(self.batch_sampler)  # type: ignore[attr-defined]
        return _CountingIterator(make, cursor, lambda: len(self), weigh)  # type: ignore[arg-type]


def weighs_batches(sampler: Any) -> bool:
    """Whether ``sampler`` has importance weights to attach: a policy other than ``uniform``."""
    return getattr(sampler, "policy", "uniform") != "uniform" and hasattr(sampler, "importance_weights")


def attach_importance_weights(sampler: Any, batch: Any) -> None:
    """Put ``sampler``'s importance weights of ``batch`` into ``batch.extras["importance_weights"]``,
    where :class:`~midas_data.MidasObjective` finds them (weights the batch already carries
    stay). Call it in the main process as the batch is received, while the sampler still
    holds that batch's epoch plan (workers fetch indices ahead, but the next plan is made
    only when the next pass starts)."""
    if weighs_batches(sampler) and isinstance(batch, MidasBatch) and "importance_weights" not in batch.extras:
        batch.extras["importance_weights"] = sampler.importance_weights(batch.ids)


def _importance_weigher(sampler: Any) -> Callable[[Any], None] | None:
    """:func:`attach_importance_weights` for each batch ``sampler`` delivers, or ``None`` under
    the uniform policy (nothing to attach)."""
    return functools.partial(attach_importance_weights, sampler) if weighs_batches(sampler) else None


_LOADER_FORMAT = "midas_data.MidasDataLoader/1"


class MidasDataLoader(_CountsPasses, DataLoader):
    """A ``DataLoader`` whose passes over a :class:`MidasBatchSampler` count as epochs only
    when they deliver two batches or run to the end; what :func:`midas_loader` returns.
    Takes exactly ``DataLoader``'s arguments.

    It is resumable: :meth:`state_dict` is the position after the last batch the caller
    received (not what the workers fetched ahead), and :meth:`load_state_dict` makes the next
    pass continue there. Trainers that checkpoint stateful loaders (PyTorch Lightning) save
    and restore it themselves, before the first batch is fetched.
    """

    def state_dict(self) -> dict[str, Any]:
        sampler = self.batch_sampler
        if not isinstance(sampler, MidasBatchSampler):
            raise TypeError("MidasDataLoader.state_dict: the batch sampler is not a MidasBatchSampler")
        state = sampler.state_dict()
        received = sampler.cursor.caller_position()
        if state["planned"] and received is not None:
            # With workers the sampler runs ahead of the caller: save what the caller got.
            # As torchdata's loader: after the last batch but before the caller saw the end,
            # the next pass is the (empty) rest of this epoch; after the end, the next epoch.
            state["yielded"], state["exhausted"] = received
        return {"format": _LOADER_FORMAT, "sampler": state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("format") != _LOADER_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"state['format']: expected {_LOADER_FORMAT!r} (a MidasDataLoader.state_dict()), got {got!r}"
            )
        sampler = self.batch_sampler
        if not isinstance(sampler, MidasBatchSampler):
            raise TypeError("MidasDataLoader.load_state_dict: the batch sampler is not a MidasBatchSampler")
        sampler.load_state_dict(state["sampler"])


_counting_classes: dict[type, type] = {DataLoader: MidasDataLoader}


def counting_loader_class(base: type[DataLoader]) -> type[DataLoader]:
    """The subclass of ``base`` (e.g. torchdata's ``StatefulDataLoader``) that counts
    passes as :class:`MidasDataLoader` does; made once per class."""
    if issubclass(base, _CountsPasses):
        return base
    made = _counting_classes.get(base)
    if made is None:
        namespace = {"__module__": __name__, "__doc__": MidasDataLoader.__doc__, "__reduce_ex__": _reduce_made}
        made = type(base)(f"Midas{base.__name__}", (_CountsPasses, base), namespace)
        _counting_classes[base] = made
    return made


def _reduce_made(loader: Any, protocol: int) -> Any:
    """Pickle a loader of a class made by :func:`counting_loader_class` through its base
    class, which pickle can find by name (the made class exists only once it is asked for)."""
    base = next((cls for cls, made in _counting_classes.items() if made is type(loader)), None)
    if base is None:  # a subclass of a made class: pickled as any other object
        return object.__reduce_ex__(loader, protocol)
    return _rebuild_made, (base,), loader.__dict__.copy()


def _rebuild_made(base: type[DataLoader]) -> Any:
    made = counting_loader_class(base)
    return made.__new__(made)


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
    ``loader_class`` may be torchdata's ``StatefulDataLoader`` (the loader is then of a
    subclass of it, see :func:`counting_loader_class`). Each pass over the loader that
    delivers at least two batches or runs to its end is an epoch: the next pass plans the
    next epoch (new order, new pair plans). A pass abandoned after zero or one batch (a
    ``next(iter(loader))`` to look at a batch) is not: the next pass repeats its epoch
    exactly. ``set_epoch(loader, epoch)`` before a pass chooses the epoch instead (for
    resume, or to follow a trainer's epoch counter).

    ``stats``, ``policy``, ``floor``, ``weak_modality``, ``num_replicas`` and ``rank`` go to
    :class:`MidasBatchSampler`: the prioritised policies (``"hard"``, ``"weak_modality"``,
    experimental) read the :class:`~midas_data.feedback.stats.StatsTable` given as ``stats``;
    ``num_replicas``/``rank`` split each epoch by rank for plain DDP loops (leave them at
    1/0 under Accelerate, which shards batches itself). See ``docs/feedback.md``.

    ``num_classes``, when given, makes a label outside ``[0, num_classes)`` an error that
    names its sample as the batch is built (see ``docs/errors.md``).

    Multi-label items (for ``MidasObjective(task="multilabel")``): a label that is a float
    or bool vector ``[C]`` is a multi-hot row; a list of class ids (or an integer vector,
    as a Hugging Face column of lists gives) becomes one and needs ``num_classes``. The
    batch's ``labels`` are then float32 ``[B, C]``, and ``rule="different_label"`` pairs
    each sample with one of another label set (``"different_set"``; ``"disjoint"``: no
    shared class). See ``docs/concepts.md``.
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
    if stats is not None and stats.batch_capacity is None:
        # A MIDAS batch has at most batch_size + 2 rows (a folded tail): sync_stats can then
        # all-gather a fixed number of rows per rank, with no size exchange (a host sync).
        stats.batch_capacity = batch_size + 2
    loader_class = counting_loader_class(loader_class)
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
    pair plans); without it, each pass is the epoch after the previous one (the same epoch
    again after a peek of zero or one batch)."""
    sampler = getattr(loader, "batch_sampler", None)
    if not hasattr(sampler, "set_epoch"):
        raise TypeError("loader: its batch_sampler has no set_epoch; was it made by midas_loader?")
    sampler.set_epoch(epoch)  # type: ignore[union-attr]
