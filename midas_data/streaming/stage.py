"""``MidasBatches``: a stream stage that turns samples into ``MidasBatch`` objects.

It is a callable over an iterator of samples, the form webdataset's own stages have, so
it goes at the end of a ``wds.WebDataset(...)`` / ``wds.DataPipeline`` with
``.compose(stage)`` and runs inside each DataLoader worker. Per worker it

1. names every sample: a stable int64 id (an id field, or the shard index's key -> slot
   map) and its decoded fields (``decode.py``: safe decoders only);
2. collects samples in a bounded window and draws them from it, uniformly or with
   priority from the stats table (``window.py``), each draw with its importance weight;
3. cuts the draws into batches and builds each with :class:`MidasCollate`, so a streamed
   batch has exactly the form of a map-style one. With a shard index the batch sizes come
   from ``balance.py``, so every rank yields the same number of batches per epoch.

Bad samples raise a :class:`MidasDataError` naming the shard and key; with ``handler``
(webdataset's convention: a function of the exception that returns ``True`` to go on) they
are skipped and counted in shared memory, where :meth:`MidasBatches.skip_counts` reads them.
"""

from __future__ import annotations

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
from ..errors import MidasDataError
from ..feedback.planning import POLICIES, choose_weak_modality
from ..feedback.sampler import shared_epoch
from ..feedback.stats import StatsTable
from .balance import batch_counts, split_sizes, worker_shards
from .decode import decode_member
from .ids import ShardIndex
from .window import draw_window

__all__ = ["MidasBatches", "midas_batches", "SkipHandler", "WorkerPlace"]

Handler = Callable[[Exception], bool]
# Rows of the shared skip counters: one per DataLoader worker (workers never write the
# same row, so no increment is lost); columns below.
_MAX_WORKERS = 256
_SKIPPED, _MISSING, _SOURCE = 0, 1, 2


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


class SkipHandler:
    """A webdataset ``handler`` that warns, counts the error in shared memory and goes on.

    Pass ``stage.source_handler`` as ``wds.WebDataset(urls, handler=...)`` so that errors
    inside webdataset's own stages (a shard that cannot be opened, a truncated tar) are
    counted with the stage's other skips instead of vanishing.
    """

    def __init__(self, counts: torch.Tensor, column: int) -> None:
        self.counts = counts
        self.column = column

    def __call__(self, error: Exception) -> bool:
        info = get_worker_info()
        row = 0 if info is None else info.id % _MAX_WORKERS
        self.counts[row, self.column] += 1
        warnings.warn(f"skipped: {error!r}", stacklevel=2)
        return True


class MidasBatches:
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
        stats: the :class:`StatsTable` (created before workers start) the prioritised
            policies read; workers read it through shared memory.
        policy: ``"uniform"`` (default), ``"hard"`` or ``"weak_modality"``.
        floor: share of every window drawn uniformly, in ``(0, 1]``; weights stay <= 1/floor.
        weak_modality: for ``"weak_modality"``: the modality to favour (default: the weak
            one in the table at the start of each epoch, per worker).
        window: samples held and drawn from at once (the bound on the priority buffer; also
            a shuffle buffer for the uniform policy). A worker's first batch waits for its
            first window.
        shuffle: uniform policy: shuffle within each window (``False``: stream order, and
            no window is held: batches leave as soon as they are full; shuffle upstream
            with webdataset's ``.shuffle(n)`` instead).
        resampled: the source resamples shards (``wds.WebDataset(..., resampled=True)``):
            the same sample may come again, so no duplicate check and no index sizes.
        handler: ``None`` (default) raises on a bad sample; a webdataset-style handler
            (``wds.warn_and_continue``) skips it, and the skip is counted.
        allow_pickle: decode ``.pyd``/``.pickle`` members (runs code from the data; only
            for shards you wrote yourself).
        rank, world_size: this process's place; default from ``torch.distributed`` (or the
            ``RANK``/``WORLD_SIZE`` variables) when the stage is made.

    Each batch's ``extras`` hold ``importance_weights`` (float32 ``[B]``, ``1 / e_i`` of
    the window draw; all ones under ``uniform``) and ``stats_updates`` (int64 scalar: the
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
        policy: str = "uniform",
        floor: float = 0.2,
        weak_modality: str | int | None = None,
        window: int = 256,
        shuffle: bool = True,
        resampled: bool = False,
        handler: Handler | None = None,
        allow_pickle: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if isinstance(modalities, (str, Mapping)):
            raise TypeError("modalities: expected a sequence of field names, e.g. ('image', 'audio')")
        if not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"batch_size: expected an int >= 2 (a misaligned row needs a partner), got {batch_size!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
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
        if rank is None or world_size is None:
            rank, world_size = _default_rank()
        self.names = tuple(str(m) for m in modalities)
        self.label_key = label_key
        self.batch_size = batch_size
        self.index = index
        self.id_field = id_field
        self.stats = stats
        self.policy = policy
        self.floor = float(floor)
        self.weak_modality = weak_modality
        self.window = window
        self.shuffle = shuffle
        self.resampled = resampled
        self.handler = handler
        self.allow_pickle = allow_pickle
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed)
        self.epoch = shared_epoch()
        self.collate = MidasCollate(
            self.names,
            label_key,
            mode=mode,
            seed=seed,
            rule=rule,
            modality_collate=modality_collate,
            epoch=self.epoch,
            materialize_in_worker=materialize_in_worker,
        )
        self._counts = torch.zeros((_MAX_WORKERS, 3), dtype=torch.int64).share_memory_()
        self.source_handler = SkipHandler(self._counts, _SOURCE)
        self._fields = (*self.names, label_key) + ((id_field,) if id_field else ())
        self._batch_counts: list[list[int]] | None = None

    # -- epoch and counters ----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (pair plans and window draws); reaches running workers."""
        self.epoch.fill_(int(epoch))

    def skip_counts(self) -> dict[str, int]:
        """Bad input skipped so far (all workers, all epochs): ``skipped`` samples this stage
        rejected, ``missing`` samples the index lists that never arrived (dropped upstream),
        ``source_errors`` errors counted by :attr:`source_handler`."""
        totals = self._counts.sum(0).tolist()
        return {"skipped": totals[_SKIPPED], "missing": totals[_MISSING], "source_errors": totals[_SOURCE]}

    def reset_skip_counts(self) -> None:
        self._counts.zero_()

    def batches_per_epoch(self, num_workers: int) -> int:
        """Batches every rank yields per epoch with ``num_workers`` DataLoader workers (0
        counts as 1); needs the shard index."""
        if self.index is None:
            raise ValueError("batches_per_epoch: needs the shard index (index=...)")
        return sum(batch_counts(self.index.counts, self.world_size, max(num_workers, 1), self.batch_size)[self.rank])

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
        return self._run(iter(samples), self.place(), int(self.epoch))

    def _run(self, samples: Iterator[Any], place: WorkerPlace, epoch: int) -> Iterator[MidasBatch]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, place.rank, place.worker))
        row = self._counts[place.worker % _MAX_WORKERS]
        sizes, shards = self._plan(place)
        expected = None if sizes is None else sum(sizes)
        weak = self._weak_modality()
        seen: set[int] = set()
        window: list[tuple[int, Any]] = []
        ready: deque[tuple[int, Any, float, int]] = deque()
        emitted = arrived = accepted = slots = 0
        # Without a draw to make (uniform, no shuffle) a window would only delay the first
        # batch: samples are ready as they come.
        hold = self.window if (self.shuffle or self.policy != "uniform") else 1
        for sample in samples:
            arrived += 1
            if expected is not None and arrived > expected:
                raise MidasDataError(
                    f"{self._where(sample)}: rank {place.rank}, worker {place.worker} got more than the {expected} "
                    f"samples the shard index lists for its shards {self._shard_names(shards)}; rebuild the index"
                )
            try:
                sample_id, item = self._identify(sample, place, shards, seen)
            except (MidasDataError, ValueError, KeyError, TypeError) as err:
                if self.handler is not None and self.handler(err):
                    row[_SKIPPED] += 1
                    continue
                raise
            window.append((sample_id, item))
            accepted += 1
            if len(window) >= hold:
                ready.extend(self._draw(window, generator, weak))
                window = []
            # Paced: after the first window, one batch per batch-size of new samples, so
            # every batch costs its worker the same reading work (as plain batching does)
            # instead of a window's worth of reading, then a burst of free batches.
            size, needed = self._next_size(sizes, emitted)
            if size and len(ready) >= needed and accepted - hold >= slots + size:
                yield self._batch(ready, size)
                emitted += 1
                slots += size
        if window:
            ready.extend(self._draw(window, generator, weak))
        if sizes is None:
            yield from self._finish_unsized(ready)
            return
        yield from self._finish_sized(ready, sizes[emitted:], place, shards, expected - arrived, row)  # type: ignore[operator]

    def _next_size(self, sizes: list[int] | None, emitted: int) -> tuple[int, int]:
        """``(size of the next batch, samples that must be ready to emit it)``; size 0: none."""
        if sizes is None:
            # Keep two samples back, so that the stream never ends on a single sample
            # that no batch could take.
            return self.batch_size, self.batch_size + 2
        size = sizes[emitted] if emitted < len(sizes) else 0
        return size, size

    def _finish_unsized(self, ready: deque) -> Iterator[MidasBatch]:
        while len(ready) >= self.batch_size + 2:
            yield self._batch(ready, self.batch_size)
        if len(ready) == 1:
            sample_id = ready[0][0]
            raise MidasDataError(f"sample {sample_id}: the stream held a single sample; a MIDAS batch needs two")
        if len(ready) > self.batch_size:
            for size in split_sizes(len(ready), 2):
                yield self._batch(ready, size)
        elif ready:
            yield self._batch(ready, len(ready))

    def _finish_sized(
        self,
        ready: deque,
        remaining: list[int],
        place: WorkerPlace,
        shards: list[int] | None,
        missing: int,
        row: torch.Tensor,
    ) -> Iterator[MidasBatch]:
        if missing > 0:
            if self.handler is None:
                raise MidasDataError(
                    f"rank {place.rank}, worker {place.worker}: received {missing} fewer samples than the shard "
                    f"index lists for its shards {self._shard_names(shards)}: a shard or sample was dropped upstream "
                    "(a webdataset handler such as "
                    "warn_and_continue?). Pass handler= to this stage as well to skip and count bad input"
                )
            row[_MISSING] += missing
        if not remaining:
            return
        if len(ready) < 2 * len(remaining):
            raise MidasDataError(
                f"rank {place.rank}, worker {place.worker}: after skipping bad samples only {len(ready)} remain for "
                f"its last {len(remaining)} batches (2 each); every rank must yield the same number of batches, so "
                f"the epoch cannot end evenly. Shards {self._shard_names(shards)}"
            )
        for size in split_sizes(len(ready), len(remaining)):
            yield self._batch(ready, size)

    # -- pieces ----------------------------------------------------------------------------
    def _plan(self, place: WorkerPlace) -> tuple[list[int] | None, list[int] | None]:
        """Batch sizes of this worker's epoch and its shard positions (index only)."""
        if self.index is None or self.resampled:
            return None, None
        if self._batch_counts is None or len(self._batch_counts[0]) != place.num_workers:
            self._batch_counts = batch_counts(self.index.counts, place.world_size, place.num_workers, self.batch_size)
        shards = worker_shards(len(self.index.shards), place.rank, place.world_size, place.worker, place.num_workers)
        samples = sum(self.index.shards[s].count for s in shards)
        return split_sizes(samples, self._batch_counts[place.rank][place.worker]), shards

    def _shard_names(self, shards: list[int] | None) -> list[str]:
        if self.index is None or shards is None:
            return []
        return [self.index.shards[s].name for s in shards]

    @staticmethod
    def _where(sample: Any) -> str:
        if isinstance(sample, Mapping):
            url, key = sample.get("__url__"), sample.get("__key__")
            if url is not None or key is not None:
                return f"shard {url!r}, key {key!r}"
        return "sample"

    def _field(self, sample: Mapping[str, Any], name: str) -> Any:
        if name in sample:
            return decode_member(name, sample[name], allow_pickle=self.allow_pickle)
        found = [k for k in sample if isinstance(k, str) and k.startswith(name + ".")]
        if len(found) != 1:
            have = sorted(k for k in sample if not str(k).startswith("__"))
            what = "no member" if not found else f"several members {found} for"
            raise MidasDataError(f"has {what} field {name!r} (expected {name!r} or {name}.<ext>); it has {have}")
        return decode_member(found[0], sample[found[0]], allow_pickle=self.allow_pickle)

    def _identify(
        self, sample: Any, place: WorkerPlace, shards: list[int] | None, seen: set[int]
    ) -> tuple[int, dict[str, Any]]:
        """The sample's id and decoded fields; errors name the shard and key (built only
        on error: this runs once per sample)."""
        try:
            return self._identify_unnamed(sample, place, shards, seen)
        except MidasDataError as err:
            text = str(err)
            where = self._where(sample)
            raise MidasDataError(text if text.startswith("shard ") else f"{where}: {text}") from None

    def _identify_unnamed(
        self, sample: Any, place: WorkerPlace, shards: list[int] | None, seen: set[int]
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(sample, Mapping):
            raise MidasDataError(f"expected a dict sample, got {type(sample).__name__}")
        url, key = sample.get("__url__"), sample.get("__key__")
        if shards is not None and url is not None and self.index is not None:
            if self.index.shard_position(url) not in shards:
                raise MidasDataError(
                    f"rank {place.rank} worker {place.worker} should read shards {self._shard_names(shards)} "
                    "(the node split, then the worker split, of the index's shard list). Build the pipeline with "
                    "the index's urls in order and nodesplitter=stage.split_by_node (wds.split_by_node sees no "
                    "process group inside workers unless RANK and WORLD_SIZE are set, as torchrun does)"
                )
        item = {name: self._field(sample, name) for name in self._fields}
        if self.id_field is not None:
            sample_id = item.pop(self.id_field)
            if isinstance(sample_id, torch.Tensor) and sample_id.numel() == 1:
                sample_id = sample_id.item()
            if isinstance(sample_id, bool) or not isinstance(sample_id, int):
                raise MidasDataError(f"id field {self.id_field!r} is {sample_id!r}; expected an int")
        elif self.index is not None and key is not None and url is not None:
            sample_id = self.index.slot(str(key), str(url))
        else:
            raise MidasDataError("has no __key__/__url__ to look up in the shard index; pass id_field=")
        if self.stats is not None and not 0 <= sample_id < self.stats.num_samples:
            raise MidasDataError(f"sample id {sample_id} is outside the stats table [0, {self.stats.num_samples})")
        if not self.resampled:
            if sample_id in seen:
                raise MidasDataError(
                    f"sample id {sample_id} came twice in one epoch (a duplicate key, or a shard listed twice); "
                    "every sample must be unique unless resampled=True"
                )
            seen.add(sample_id)
        return int(sample_id), item

    def _weak_modality(self) -> int:
        if self.policy != "weak_modality" or self.stats is None:
            return -1
        if self.weak_modality is not None:
            return self.stats.modality_index(self.weak_modality)
        chosen = choose_weak_modality(self.stats.confidence)
        return -1 if chosen is None else chosen

    def _draw(
        self, window: list[tuple[int, Any]], generator: torch.Generator, weak: int
    ) -> list[tuple[int, Any, float, int]]:
        if not self.shuffle and self.policy == "uniform":
            updates = -1 if self.stats is None else self.stats.num_updates
            return [(sid, item, 1.0, updates) for sid, item in window]
        ids = torch.tensor([sid for sid, _ in window], dtype=torch.int64)
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

    def _batch(self, ready: deque, size: int) -> MidasBatch:
        taken = [ready.popleft() for _ in range(size)]
        batch = self.collate([(sid, item) for sid, item, _, _ in taken])
        batch.extras["importance_weights"] = torch.tensor([w for _, _, w, _ in taken], dtype=torch.float32)
        batch.extras["stats_updates"] = torch.tensor(min(u for _, _, _, u in taken), dtype=torch.int64)
        return batch


def midas_batches(modalities: Sequence[str], label_key: str = "label", **options: Any) -> MidasBatches:
    """The stage in webdataset's lower-case style: ``dataset.compose(midas_batches(...))``."""
    return MidasBatches(modalities, label_key, **options)
