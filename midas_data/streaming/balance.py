"""Equal work per rank on sharded data, as pure functions of the shard sizes.

DDP needs every rank to run the same number of steps per epoch; shards of different
sizes would give ranks different numbers of batches, and the rank that finishes first
waits forever in its next collective. Knowing how many samples each shard holds (the
shard index written with the shards), every worker can compute, without talking to
anyone, how many batches its rank yields and its own share of them.

Shards reach ranks and workers in one of two ways:

* **by position** (webdataset, ``exact=True``): ``stage.split_by_node`` then webdataset's
  ``split_by_worker`` give rank ``r`` of ``R`` the shards ``r, r + R, ...`` and worker ``w``
  of ``W`` every ``W``-th of those, starting at ``w``. Each worker knows its shards, hence
  its exact number of samples;
* **by count** (Hugging Face ``IterableDataset``, ``exact=False``): ``datasets`` shuffles
  the shard order (every epoch after the first, and the first too after ``.shuffle()``)
  before ``split_dataset_by_node`` and the DataLoader worker split deal them, so a worker
  knows only *how many* shards it reads: rank ``r`` reads ``len(range(r, S, R))`` of the
  ``S`` shards and its worker ``w`` ``len(range(w, m_r, W))`` of those (an even split, the
  first ones one more: the same count however the shards are ordered). Its number of
  samples lies between the sum of that many smallest shards and that many largest.

Every worker gets ``(low, high)`` bounds on its samples (``low == high`` by position) and
a number of batches ``k``; every rank's ``k`` sum to the same ``K``, the most any rank
needs to keep its batches at most ``batch_size`` samples. A worker cuts its samples into
``k`` batches as they come: sizes planned for ``high`` samples, the last batches taking
what is left, so ``k`` is kept small enough that they still get two samples each when
only ``low`` come (``k <= high // (high - low + 2)``). So every sample is used exactly once
and no rank waits for another in a collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["worker_shards", "shard_share", "worker_bounds", "batch_counts", "plan_batches", "split_sizes"]


def worker_shards(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> list[int]:
    """The shard positions worker ``worker`` of rank ``rank`` reads (node split, then worker split)."""
    return list(range(num_shards))[rank::world_size][worker::num_workers]


def shard_share(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> int:
    """How many shards that worker reads, whichever they are (dealt by count)."""
    return len(range(worker, len(range(rank, num_shards, world_size)), num_workers))


def worker_bounds(
    counts: Sequence[int], world_size: int, num_workers: int, *, exact: bool = True
) -> list[list[tuple[int, int]]]:
    """``b[r][w] = (low, high)``: the fewest and most samples worker ``w`` of rank ``r``
    reads per epoch; equal when shards are dealt by position (``exact``)."""
    num_shards = len(counts)
    if exact:
        result = []
        for r in range(world_size):
            row = []
            for w in range(num_workers):
                n = sum(counts[s] for s in worker_shards(num_shards, r, world_size, w, num_workers))
                row.append((n, n))
            result.append(row)
        return result
    ordered = sorted(int(c) for c in counts)
    result = []
    for r in range(world_size):
        row = []
        for w in range(num_workers):
            m = shard_share(num_shards, r, world_size, w, num_workers)
            row.append((sum(ordered[:m]), sum(ordered[num_shards - m :]) if m else 0))
        result.append(row)
    return result


def plan_batches(
    bounds: Sequence[Sequence[tuple[int, int]]],
    batch_size: int,
    shards_of: Callable[[int, int], str] | None = None,
) -> list[list[int]]:
    """``k[r][w]``: batches per epoch of every worker, from its ``(low, high)`` bounds; every
    row sums to the same ``K``. Raises ``ValueError`` naming the rank or worker that cannot
    take its share (no samples, a single one, or bounds too far apart); ``shards_of(r, w)``
    describes a worker's shards in those messages."""
    if batch_size < 2:
        raise ValueError(f"batch_size: expected at least 2, got {batch_size}")
    minimal, caps = [], []
    for r, row in enumerate(bounds):
        if all(high == 0 for _, high in row):
            raise ValueError(f"rank {r} of {len(bounds)}: has no samples")
        mins, cap_row = [], []
        for w, (low, high) in enumerate(row):
            k = math.ceil(high / batch_size)
            cap = high // (high - low + 2) if high else 0
            if k > cap:
                if low == high:
                    which = f" ({shards_of(r, w)})" if shards_of is not None else ""
                    raise ValueError(
                        f"rank {r}, worker {w}: gets a single sample{which}; a MIDAS batch needs two. Use fewer "
                        "workers or write larger shards"
                    )
                raise ValueError(
                    f"rank {r}, worker {w}: its shards hold between {low} and {high} samples, too far apart to plan "
                    f"its {k} batches of at least 2 samples each; use shards of more equal sizes, fewer workers or "
                    "a larger batch_size"
                )
            mins.append(k)
            cap_row.append(cap)
        minimal.append(mins)
        caps.append(cap_row)
    target = max(sum(row) for row in minimal)
    result = []
    for r, row in enumerate(bounds):
        k, cap = list(minimal[r]), caps[r]
        if sum(cap) < target:
            raise ValueError(
                f"rank {r} of {len(bounds)}: its {sum(low for low, _ in row)} samples cannot fill the {target} "
                f"batches (of at least 2 samples) that the largest rank needs at batch_size={batch_size}; balance "
                "the shards across ranks (write more, smaller shards) or use fewer ranks"
            )
        while sum(k) < target:
            # One more batch where batches are largest, so sizes stay as even as possible.
            w = max((i for i in range(len(row)) if k[i] < cap[i]), key=lambda i: (row[i][1] / max(k[i], 1), -i))
            k[w] += 1
        result.append(k)
    return result


def batch_counts(
    counts: Sequence[int], world_size: int, num_workers: int, batch_size: int, *, exact: bool = True
) -> list[list[int]]:
    """``k[r][w]``: batches per epoch of worker ``w`` of rank ``r``; every row sums to the same ``K``.

    ``counts`` are the samples per shard, in index order; ``exact=False`` when shards are
    dealt by count (Hugging Face). Raises ``ValueError`` naming the rank when a rank has no
    shards or too few samples for ``K`` batches of two.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size: expected at least 2, got {batch_size}")
    num_shards = len(counts)
    for r in range(world_size):
        shards = worker_shards(num_shards, r, world_size, 0, 1)
        if not shards or sum(counts[s] for s in shards) == 0:
            raise ValueError(
                f"rank {r} of {world_size}: has no samples (the index lists {num_shards} shards, rank {r} gets "
                f"{'shards ' + str(shards) if exact else str(len(shards)) + ' shards'}); use at most as many ranks "
                "as non-empty shards, or write more shards"
            )
    bounds = worker_bounds(counts, world_size, num_workers, exact=exact)

    def shards_of(r: int, w: int) -> str:
        if exact:
            return f"shards {worker_shards(num_shards, r, world_size, w, num_workers)}"
        return f"{shard_share(num_shards, r, world_size, w, num_workers)} shards"

    return plan_batches(bounds, batch_size, shards_of)


def split_sizes(num_samples: int, num_batches: int) -> list[int]:
    """Sizes of ``num_batches`` batches holding ``num_samples`` samples, as even as possible."""
    if num_batches == 0:
        return []
    base, extra = divmod(num_samples, num_batches)
    return [base + (1 if i < extra else 0) for i in range(num_batches)]
