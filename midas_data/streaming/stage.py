"""``MidasBatches``: a stream stage that turns samples into ``MidasBatch`` objects.

It is a callable over an iterator of samples, the form webdataset's own stages have, so
it goes at the end of a ``wds.WebDataset(...)`` / ``wds.DataPipeline`` with
``.compose(stage)`` and runs inside each DataLoader worker. Per worker and pass it

1. takes the pass's epoch: each pass over the stage is the next epoch, unless
   :meth:`MidasBatches.set_epoch` chose one (see :meth:`MidasBatches.begin_pass`);
2. names every sample: a stable int64 id (an id field, or the shard index's key -> slot
   map) and its decoded fields (``decode.py``: safe decoders, and yours), and checks them:
   no missing value, an integer label, the same type, dtype and shape as the other samples;
3. collects samples in a bounded window and draws them from it, uniformly or with
   priority from the stats table (``window.py``), or prunes a fixed count of its
   low-score half (``pruning.py``), each draw with its importance weight;
4. cuts the draws into batches and builds each with :class:`MidasCollate`, so a streamed
   batch has exactly the form of a map-style one. With a shard index the batch sizes come
   from ``balance.py``, so every rank yields the same number of batches per epoch;
5. at the end of its stream, compares what arrived from each shard with the index: a
   shard that gave fewer samples is inspected, and named as damaged when its tar file is
   cut short or corrupt (webdataset stops at such a point without an error).

Bad samples raise a :class:`MidasDataError` naming the shard and key; with ``handler``
(webdataset's convention: a function of the exception that returns ``True`` to go on) they
are skipped and counted in shared memory, where :meth:`MidasBatches.skip_counts` reads them,
and each worker warns once per epoch with what it skipped.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import struct
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import get_worker_info

from ..data.batch import MidasBatch
from ..data.collate import CollateFn, MidasCollate
from ..errors import MidasDataError, MidasDataWarning
from ..feedback.epochs import checked_epoch, shared_epoch
from ..feedback.planning import POLICIES, choose_weak_modality
from ..feedback.prune import PrunePolicy, prune_policy_of
from ..feedback.stats import StatsTable
from .balance import split_sizes
from .decode import Decoder, SampleReader
from .faults import MAX_WORKERS, SkipHandler, ValueAgreement, epoch_report, upstream_failure
from .ids import ShardIndex
from .pruning import prune_window
from .shares import _SKIPPED, _SOURCE, SKIP_COUNTS, WorkerShares
from .window import draw_window

__all__ = ["MidasBatches", "midas_batches", "SkipHandler", "WorkerPlace", "SKIP_COUNTS"]

Handler = Callable[[Exception], bool]
# Errors of one sample that a handler may skip.
_SAMPLE_ERRORS = (MidasDataError, ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class WorkerPlace:
    """Where a stream runs: rank of ``world_size``, DataLoader worker of ``num_workers``."""

    rank: int
    world_size: int
    worker: int
    num_workers: int


def _default_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """A 63-bit generator seed of one worker's stream in one epoch."""
    digest = hashlib.blake2b(struct.pack("<qqqq", seed, epoch, rank, worker), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class MidasBatches(WorkerShares):
    """Group a stream of samples into :class:`MidasBatch` objects, inside each worker.

    Args:
        modalities: modality field names, in plan-column order. A webdataset sample's
            field ``name`` is its member ``name`` or ``name.<ext>`` (``image.npy``).
        label_key: the label field (``label.cls`` in shards from :func:`write_shards`).
        batch_size: samples per batch (the most any batch holds when ``index`` is given).
        index: the :class:`ShardIndex` of the shards: gives ids (key -> slot) and shard
            sizes, hence equal work per rank and exactly-once epochs. Without it, batches
            have ``batch_size`` samples until the stream ends (use ``resampled=True`` with
            ``with_epoch`` for equal work then).
        id_field: a field holding each sample's int id (used instead of the index's map).
        mode, seed, rule, modality_collate, materialize_in_worker: as :class:`MidasCollate`.
        num_classes: ``C``, as :class:`MidasCollate`: class ids are checked against it, and a
            label member holding a list of class ids (``json``) or an integer array (``npy``)
            becomes a multi-hot row ``[C]`` (multi-label streams need it); a float ``npy``
            member is a multi-hot row as it is.
        stats: the :class:`StatsTable` (created before workers start) the prioritised
            policies read; workers read it through shared memory.
        policy: ``"uniform"`` (default), ``"hard"``, ``"weak_modality"``, or ``"prune"`` (a
            :class:`~midas_data.feedback.prune.PrunePolicy` sets its options): pruning
            within each window, a fixed count per window so that every rank's batches
            stay known in advance (``pruning.py``; docs/streaming.md).
        floor: share of every window drawn uniformly, in ``(0, 1]``; weights stay <= 1/floor.
        weak_modality: for ``"weak_modality"``: the modality to favour (default: the weak
            one in the table at the start of each epoch, per worker).
        num_epochs: ``policy="prune"`` given as a string: the training's epochs (the last
            eighth of them are full), as ``PrunePolicy(num_epochs=...)``.
        window: samples held and drawn from at once (the bound on the priority buffer; also
            a shuffle buffer for the uniform policy). A worker's first batch waits for its
            first window.
        shuffle: uniform policy: shuffle within each window (``False``: stream order, and
            no window is held: batches leave as soon as they are full; shuffle upstream
            with webdataset's ``.shuffle(n)`` instead).
        resampled: the source resamples shards (``wds.WebDataset(..., resampled=True)``):
            the same sample may come again, so no duplicate check and no index sizes.
        handler: ``None`` (default) raises on bad input; a webdataset-style handler
            (``wds.warn_and_continue``) skips it: a sample that does not decode, lacks a
            field or has a missing (``None``) value, a non-integer label, a modality of
            another type, dtype or shape than the others, a duplicate id; and a shard that
            gave fewer samples than the index lists (damaged, or dropped upstream). Each is
            counted (:meth:`skip_counts`), and each worker warns once per epoch.
        decoders: your decoders, run by the stage (so their failures are named and may be
            skipped): field name (``"image"``) or member extension (``"png"``) -> function
            of the value (the member's bytes).
        allow_pickle: decode ``.pyd``/``.pickle`` members (runs code from the data; only
            for shards you wrote yourself).
        rank, world_size: this process's place; default from ``torch.distributed`` (or the
            ``RANK``/``WORLD_SIZE`` variables) when the stage is made.

    Epochs: each pass over the stage is the next epoch (new window draws and pair plans,
    ``batch.epoch`` counting up), as each pass over ``midas_loader`` is; :meth:`set_epoch`
    before a pass chooses its epoch instead. See :meth:`begin_pass`.

    Each batch's ``extras`` hold ``importance_weights`` (float32 ``[B]``, ``1 / e_i`` of
    the window draw; ``m / (m - d)`` on the kept low-half samples of a pruned window; all
    ones under ``uniform``) and ``stats_updates`` (int64 scalar: the
    table's ``num_updates`` when the batch's samples were drawn, ``-1`` without a table).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        label_key: str = "label",
        *,
        batch_size: int,
        index: ShardIndex | None = None,
        id_field: str | None = None,
        mode: str = "feature",
        seed: int = 0,
        rule: str = "different_label",
        modality_collate: Mapping[str, CollateFn] | None = None,
        materialize_in_worker: bool = False,
        stats: StatsTable | None = None,
        policy: str | PrunePolicy = "uniform",
        floor: float = 0.2,
        weak_modality: str | int | None = None,
        num_epochs: int | None = None,
        window: int = 256,
        shuffle: bool = True,
        resampled: bool = False,
        handler: Handler | None = None,
        decoders: Mapping[str, Decoder] | None = None,
        allow_pickle: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        if isinstance(modalities, (str, Mapping)):
            raise TypeError("modalities: expected a sequence of field names, e.g. ('image', 'audio')")
        if not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"batch_size: expected an int >= 2 (a misaligned row needs a partner), got {batch_size!r}")
        prune = prune_policy_of(policy, num_epochs)
        if prune is not None:
            policy = "prune"
        elif policy not in POLICIES:
            raise ValueError(f"policy: expected one of {(*POLICIES, 'prune')} or a PrunePolicy, got {policy!r}")
        if policy != "uniform" and stats is None:
            raise ValueError(f"policy={policy!r} reads per-sample statistics: pass stats=StatsTable(...)")
        if not (isinstance(floor, (int, float)) and 0.0 < float(floor) <= 1.0):
            raise ValueError(f"floor: expected a share in (0, 1], got {floor!r}")
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"window: expected an int >= 2, got {window!r}")
        if index is None and id_field is None:
            raise ValueError("ids: pass index=ShardIndex.load(...) (key -> slot) or id_field='<field with int ids>'")
        if stats is not None and index is not None and stats.num_samples < index.num_samples:
            raise ValueError(f"stats: the table has {stats.num_samples} rows, the shard index {index.num_samples}")
        if stats is not None and weak_modality is not None:
            stats.modality_index(weak_modality)
        if decoders is not None and not all(isinstance(k, str) and callable(f) for k, f in decoders.items()):
            raise TypeError("decoders: expected a mapping of field names or extensions to functions")
        if rank is None or world_size is None:
            rank, world_size = _default_rank()
        self.names = tuple(str(m) for m in modalities)
        self.label_key = label_key
        self.batch_size = batch_size
        self.index = index
        self.id_field = id_field
        self.stats = stats
        self.policy = policy
        self.prune = prune
        self.floor = float(floor)
        self.weak_modality = weak_modality
        self.window = window
        self.shuffle = shuffle
        self.resampled = resampled
        self.handler = handler
        self.decoders = dict(decoders or {})
        self.allow_pickle = allow_pickle
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed)
        # The epoch of the latest pass (written by the workers as they start one), and per
        # worker row the epoch of that worker's next pass: shared memory, made before
        # workers start, so that set_epoch in the main process reaches running workers.
        self.epoch = shared_epoch()
        self._next_epochs = torch.zeros(MAX_WORKERS, dtype=torch.int64).share_memory_()
        self.collate = MidasCollate(
            self.names,
            label_key,
            mode=mode,
            seed=seed,
            rule=rule,
            modality_collate=modality_collate,
            epoch=self.epoch,
            materialize_in_worker=materialize_in_worker,
            num_classes=num_classes,
        )
        self._checked = tuple(n for n in self.names if n not in (modality_collate or {}))
        self._counts = torch.zeros((MAX_WORKERS, len(SKIP_COUNTS)), dtype=torch.int64).share_memory_()
        self.source_handler = SkipHandler(self._counts, _SOURCE)
        self._reader = SampleReader(
            self.names,
            label_key,
            id_field,
            index,
            None if stats is None else stats.num_samples,
            resampled,
            allow_pickle,
            self.decoders,
        )
        self._plans = {}

    # -- epochs ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (and count on from it); reaches running workers.
        Going back warns, as on the map-style loader: that epoch repeats exactly."""
        epoch = checked_epoch(epoch, int(self.epoch))
        self._next_epochs.fill_(epoch)
        self.epoch.fill_(epoch)

    def begin_pass(self, place: WorkerPlace | None = None) -> int:
        """Start a pass of this worker and return its epoch: the one :meth:`set_epoch` chose,
        else the one after this worker's previous pass.

        Called once per worker for every pass (the stage calls it itself; wrappers such as
        :class:`MidasIterable` call it to give the epoch to their dataset too). Every
        worker of a pass starts one, so all of them, and all ranks running the same loop,
        agree on its epoch without talking to each other. Every pass counts, a pass
        abandoned after one batch too: unlike ``midas_loader``, the stage cannot see how
        many batches reached the caller (workers run ahead of it). Use one stage per
        loader: a second loader over the same stage counts its passes in the same rows.
        """
        place = self.place() if place is None else place
        row = place.worker % MAX_WORKERS
        epoch = int(self._next_epochs[row])
        self._next_epochs[row] = epoch + 1
        self.epoch.fill_(epoch)
        return epoch

    # -- counters --------------------------------------------------------------------------
    def skip_counts(self) -> dict[str, int]:
        """Bad input skipped so far (all workers, all epochs): ``skipped`` samples this stage
        rejected, ``missing`` samples the index lists that never arrived, ``source_errors``
        errors counted by :attr:`source_handler`, ``damaged_shards`` shards found cut short
        or corrupt (or unreadable) at the end of an epoch, one count per shard and epoch."""
        totals = self._counts.sum(0).tolist()
        return dict(zip(SKIP_COUNTS, totals))

    def reset_skip_counts(self) -> None:
        self._counts.zero_()

    def batches_per_epoch(self, num_workers: int, epoch: int | None = None) -> int:
        """Batches every rank yields per epoch with ``num_workers`` DataLoader workers (0
        counts as 1); needs the shard index. Under ``prune``: those of a full epoch, or with
        ``epoch``, those of a pass of that epoch started now (:meth:`prunes`)."""
        if self.index is None:
            raise ValueError("batches_per_epoch: needs the shard index (index=...)")
        pruned = epoch is not None and self.prunes(epoch)
        return sum(self._plan(self.world_size, max(num_workers, 1), pruned)[0][self.rank])

    def prunes(self, epoch: int) -> bool:
        """Whether a pass of ``epoch`` started now prunes: ``policy="prune"``, an epoch that
        :meth:`PrunePolicy.prunes` (not in the full-data tail) and a table with an update
        (so the first epoch of a run is full). Read when each worker starts its pass, from
        values equal on every rank whose table is kept equal (``sync_stats``)."""
        if self.prune is None or self.stats is None:
            return False
        return self.prune.prunes(epoch) and self.stats.num_updates > 0

    def split_by_node(self, source: Iterator[Any], group: Any = None) -> Iterator[Any]:
        """A webdataset node splitter that uses this stage's rank and world size, known in
        the main process: ``wds.WebDataset(urls, nodesplitter=stage.split_by_node)``.

        ``wds.split_by_node`` asks ``torch.distributed`` (or ``RANK``/``WORLD_SIZE``) from
        inside each DataLoader worker, where a process group started by ``mp.spawn`` is not
        visible: every rank would then read every shard. Under ``torchrun`` both agree.
        """
        yield from itertools.islice(source, self.rank, None, self.world_size)

    def place(self) -> WorkerPlace:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return WorkerPlace(self.rank, self.world_size, worker, num_workers)

    # -- the stage -------------------------------------------------------------------------
    def __call__(self, samples: Iterator[Any]) -> Iterator[MidasBatch]:
        place = self.place()
        return self._run(iter(samples), place, self.begin_pass(place))

    def _run(self, samples: Iterator[Any], place: WorkerPlace, epoch: int) -> Iterator[MidasBatch]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, place.rank, place.worker))
        row = self._counts[place.worker % MAX_WORKERS]
        before = row.clone()
        pruning = self.prunes(epoch)
        share = self._share(place, pruning)
        sizes = None if share is None else split_sizes(share.planned, share.batches)
        collate = copy.copy(self.collate)
        collate.epoch = torch.tensor(epoch, dtype=torch.int64)  # this pass's, in this worker only
        weak = self._weak_modality()
        agreement = ValueAgreement(self._checked)
        seen: set[int] = set()
        arrivals: dict[int, int] = {}  # shard position -> samples that came from it
        window: list[tuple[int, Any]] = []
        ready: deque[tuple[int, Any, float, int]] = deque()
        emitted = arrived = accepted = slots = 0
        last = None  # the last sample received, for errors raised upstream
        # Without a draw to make (uniform, no shuffle) a window would only delay the first
        # batch: samples are ready as they come.
        hold = self.window if (self.shuffle or self.policy != "uniform") else 1
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except Exception as err:
                failure = upstream_failure(err, last, place, self.id_field)
                if failure is err:
                    raise  # its own type and traceback, with a note
                raise failure from err
            last = sample
            arrived += 1
            position = self._arrival(sample, share, arrivals, place, arrived)
            try:
                entry = self._reader.read(sample, place, None if share is None else share.shards, position, seen)
            except _SAMPLE_ERRORS as err:
                self._skip_or_raise(err, row)
                continue
            taken, rejected = agreement.offer(entry)
            for err in rejected:
                self._skip_or_raise(err, row)
            for sample_id, item, _ in taken:
                window.append((sample_id, item))
                accepted += 1
                if len(window) >= hold:
                    ready.extend(self._draw(window, generator, weak, pruning))
                    window = []
            # Paced: after the first window, one batch per batch-size of new samples, so
            # every batch costs its worker the same reading work (as plain batching does)
            # instead of a window's worth of reading, then a burst of free batches.
            size, needed = self._next_size(sizes, emitted)
            if size and len(ready) >= needed and accepted - hold >= slots + size:
                yield self._batch(collate, ready, size)
                emitted += 1
                slots += size
        taken, rejected = agreement.finish()
        for err in rejected:
            self._skip_or_raise(err, row)
        window.extend((sample_id, item) for sample_id, item, _ in taken)
        while window:  # held samples may overfill it: windows keep their size (prune counts on it)
            ready.extend(self._draw(window[:hold], generator, weak, pruning))
            window = window[hold:]
        if share is None:
            self._report(row, before, place, epoch, [])
            yield from self._finish_unsized(collate, ready)
            return
        damaged = self._settle(share, arrived, arrivals, place, row)
        self._report(row, before, place, epoch, damaged)
        remaining = share.batches - emitted
        if remaining <= 0:
            return
        if len(ready) < 2 * remaining:
            raise MidasDataError(
                f"rank {place.rank}, worker {place.worker}: after skipping bad input only {len(ready)} samples remain "
                f"for its last {remaining} batches (2 each); every rank must yield the same number of batches, so "
                f"the epoch cannot end evenly. {self._shards_text(share)}"
            )
        for size in split_sizes(len(ready), remaining):
            yield self._batch(collate, ready, size)

    def _next_size(self, sizes: list[int] | None, emitted: int) -> tuple[int, int]:
        """``(size of the next batch, samples that must be ready to emit it)``; size 0: none."""
        if sizes is None:
            # Keep two samples back, so that the stream never ends on a single sample
            # that no batch could take.
            return self.batch_size, self.batch_size + 2
        size = sizes[emitted] if emitted < len(sizes) else 0
        return size, size

    def _finish_unsized(self, collate: MidasCollate, ready: deque) -> Iterator[MidasBatch]:
        while len(ready) >= self.batch_size + 2:
            yield self._batch(collate, ready, self.batch_size)
        if len(ready) == 1:
            sample_id = ready[0][0]
            raise MidasDataError(f"sample {sample_id}: the stream held a single sample; a MIDAS batch needs two")
        if len(ready) > self.batch_size:
            for size in split_sizes(len(ready), 2):
                yield self._batch(collate, ready, size)
        elif ready:
            yield self._batch(collate, ready, len(ready))

    def _report(
        self, row: torch.Tensor, before: torch.Tensor, place: WorkerPlace, epoch: int, damaged: list[str]
    ) -> None:
        """One warning per worker and epoch with what it skipped, if anything."""
        text = epoch_report(dict(zip(SKIP_COUNTS, (row - before).tolist())), place, epoch, damaged)
        if text is not None:
            warnings.warn(text, MidasDataWarning, stacklevel=2)

    def _skip_or_raise(self, error: Exception, row: torch.Tensor) -> None:
        if self.handler is not None and self.handler(error):
            row[_SKIPPED] += 1
            return
        raise error

    # -- pieces ----------------------------------------------------------------------------
    def _weak_modality(self) -> int:
        if self.policy != "weak_modality" or self.stats is None:
            return -1
        if self.weak_modality is not None:
            return self.stats.modality_index(self.weak_modality)
        chosen = choose_weak_modality(self.stats.confidence)
        return -1 if chosen is None else chosen

    def _draw(
        self, window: list[tuple[int, Any]], generator: torch.Generator, weak: int, pruning: bool = False
    ) -> list[tuple[int, Any, float, int]]:
        if not self.shuffle and self.policy in ("uniform", "prune") and not pruning:
            updates = -1 if self.stats is None else self.stats.num_updates
            return [(sid, item, 1.0, updates) for sid, item in window]
        ids = torch.tensor([sid for sid, _ in window], dtype=torch.int64)
        if pruning:
            assert self.stats is not None and self.prune is not None
            updates = self.stats.num_updates
            scores = getattr(self.stats, self.prune.score).index_select(0, ids)
            positions, weights = prune_window(scores, self.prune.ratio, generator, self.shuffle)
            return [(*window[p], w, updates) for p, w in zip(positions.tolist(), weights.tolist())]
        snapshot, updates = None, -1
        if self.stats is not None:
            updates = self.stats.num_updates
            if self.policy == "hard":
                snapshot = self.stats.similarity.index_select(0, ids)
            elif self.policy == "weak_modality" and weak >= 0:
                snapshot = self.stats.confidence[weak].index_select(0, ids)
        if not self.shuffle and snapshot is None:
            return [(sid, item, 1.0, updates) for sid, item in window]
        positions, weights = draw_window(snapshot, self.policy, self.floor, generator, len(window))
        return [(*window[p], w, updates) for p, w in zip(positions.tolist(), weights.tolist())]

    @staticmethod
    def _batch(collate: MidasCollate, ready: deque, size: int) -> MidasBatch:
        taken = [ready.popleft() for _ in range(size)]
        batch = collate([(sid, item) for sid, item, _, _ in taken])
        batch.extras["importance_weights"] = torch.tensor([w for _, _, w, _ in taken], dtype=torch.float32)
        batch.extras["stats_updates"] = torch.tensor(min(u for _, _, _, u in taken), dtype=torch.int64)
        return batch


def midas_batches(modalities: Sequence[str], label_key: str = "label", **options: Any) -> MidasBatches:
    """The stage in webdataset's lower-case style: ``dataset.compose(midas_batches(...))``."""
    return MidasBatches(modalities, label_key, **options)
