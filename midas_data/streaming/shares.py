"""What each worker of a stream receives in an epoch, and what did not come.

The part of :class:`~midas_data.streaming.stage.MidasBatches` that works from the shard
index: the batch plan of every rank and worker (``balance.py``; under ``prune``, from the
samples each worker keeps, ``pruning.py``), this worker's share of it, the count of what
arrives from each shard, and the check at the end of a worker's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MidasDataError
from ..feedback.prune import PrunePolicy
from .balance import batch_counts, plan_batches, shard_share, worker_bounds, worker_shards
from .faults import excess_error, inspect_shortfall, shortfall_error
from .ids import ShardIndex
from .pruning import pruned_bounds

if TYPE_CHECKING:
    from .stage import WorkerPlace

__all__ = ["SKIP_COUNTS", "WorkerShares"]

_SKIPPED, _MISSING, _SOURCE, _DAMAGED = 0, 1, 2, 3
SKIP_COUNTS = ("skipped", "missing", "source_errors", "damaged_shards")
"""The keys of :meth:`MidasBatches.skip_counts`, in column order."""

Plan = tuple[list[list[int]], list[list[tuple[int, int]]]]


@dataclass(frozen=True)
class _Share:
    """What one worker should receive in an epoch, from the shard index."""

    batches: int  # batches it yields
    low: int  # the fewest samples it may receive (shards dealt by count) ...
    high: int  # ... and the most; equal when its shards are known
    shards: list[int] | None  # its shard positions; None when only their number is known
    num_shards: int  # how many shards it reads
    planned: int  # the samples its batch sizes are planned for: ``high``, or what it keeps of them


class WorkerShares:
    """Mixed into the stage: reads ``index``, ``batch_size``, ``window``, ``prune``,
    ``resampled``, ``handler`` and the plan cache ``_plans`` of the stage."""

    index: ShardIndex | None
    batch_size: int
    window: int
    prune: PrunePolicy | None
    resampled: bool
    handler: Callable[[Exception], bool] | None
    _plans: dict[tuple[int, int, bool], Plan]

    def _plan(self, world_size: int, num_workers: int, pruned: bool = False) -> Plan:
        """``(batches[r][w], bounds[r][w])`` of an epoch; ``pruned``: a pruned pass, whose
        batches are planned for the samples every worker keeps (the bounds stay those of
        the samples it receives)."""
        key = (world_size, num_workers, pruned)
        if key not in self._plans:
            assert self.index is not None
            exact = self.index.source != "hf"
            counts = self.index.counts
            batches = batch_counts(counts, world_size, num_workers, self.batch_size, exact=exact)
            bounds = worker_bounds(counts, world_size, num_workers, exact=exact)
            if pruned:
                assert self.prune is not None
                kept = pruned_bounds(bounds, self.window, self.prune.ratio)
                try:
                    batches = plan_batches(kept, self.batch_size)
                except ValueError as err:
                    raise ValueError(
                        f"policy='prune' (ratio={self.prune.ratio}, window={self.window}): a pruned epoch keeps "
                        f"too few samples for equal batches on every rank: {err}"
                    ) from None
            self._plans[key] = (batches, bounds)
        return self._plans[key]

    def _share(self, place: WorkerPlace, pruned: bool = False) -> _Share | None:
        """This worker's batches and samples in an epoch (``None`` without index sizes)."""
        if self.index is None or self.resampled:
            return None
        batches, bounds = self._plan(place.world_size, place.num_workers, pruned)
        low, high = bounds[place.rank][place.worker]
        planned = high
        if pruned:
            assert self.prune is not None
            planned = pruned_bounds([[(low, high)]], self.window, self.prune.ratio)[0][0][1]
        num_shards = len(self.index.shards)
        if self.index.source == "hf":
            shards = None
            count = shard_share(num_shards, place.rank, place.world_size, place.worker, place.num_workers)
        else:
            shards = worker_shards(num_shards, place.rank, place.world_size, place.worker, place.num_workers)
            count = len(shards)
        return _Share(batches[place.rank][place.worker], low, high, shards, count, planned)

    def _arrival(
        self, sample: Any, share: _Share | None, arrivals: dict[int, int], place: WorkerPlace, arrived: int
    ) -> int | None:
        """Count the sample against its shard; refuse more than the index allows. Returns the
        shard's index position (``None`` when the sample names no shard or none is known)."""
        if share is None:
            return None
        position = None
        url = sample.get("__url__") if isinstance(sample, Mapping) else None
        if share.shards is not None and url is not None and self.index is not None:
            try:
                position = self.index.shard_position(str(url))
            except MidasDataError:
                position = None  # named by _identify, with the rest of the sample's problems
            if position is not None:
                arrivals[position] = arrivals.get(position, 0) + 1
                listed = self.index.shards[position].count
                if arrivals[position] > listed:
                    raise excess_error(sample, place, self.index, share.high, share.num_shards, position)
        if arrived > share.high:
            raise excess_error(sample, place, self.index, share.high, share.num_shards, None, share.shards)
        return position

    def _settle(
        self, share: _Share, arrived: int, arrivals: dict[int, int], place: WorkerPlace, row: torch.Tensor
    ) -> list[str]:
        """At the end of a worker's stream: compare what came with the index. Shards that
        gave fewer samples are inspected; returns the damaged ones (what is wrong with each)
        after counting them; raises without a handler."""
        missing = share.low - arrived
        if missing <= 0:
            return []
        damaged, short = inspect_shortfall(self.index, share.shards, arrivals)
        if self.handler is None:
            raise shortfall_error(place, damaged, short, missing, arrived, share.low, share.num_shards)
        row[_DAMAGED] += len(damaged)
        row[_MISSING] += missing
        return damaged

    def _shards_text(self, share: _Share) -> str:
        if share.shards is not None and self.index is not None:
            return f"Shards {[self.index.shards[s].name for s in share.shards]}"
        return f"It reads {share.num_shards} shards"
