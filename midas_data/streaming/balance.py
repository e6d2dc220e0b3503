"""Equal work per rank on sharded data, as pure functions of the shard sizes.

DDP needs every rank to run the same number of steps per epoch; shards of different
sizes would give ranks different numbers of batches, and the rank that finishes first
waits forever in its next collective. Knowing how many samples each shard holds (the
shard index written with the shards), every worker can compute, without talking to
anyone, how many batches its rank yields and its own share of them:

* shards go to ranks and workers the way ``webdataset.split_by_node`` followed by
  ``split_by_worker`` (and Hugging Face ``split_dataset_by_node`` followed by its
  DataLoader worker split) deal them: rank ``r`` of ``R`` takes shards ``r, r + R, ...``
  and worker ``w`` of ``W`` takes every ``W``-th of those, starting at ``w``;
* every rank yields ``K`` batches, ``K`` the largest number any rank needs to keep its
  batches at most ``batch_size`` samples; a rank with fewer samples cuts them into ``K``
  smaller batches (at least 2 samples each), so every sample is used exactly once;
* a rank's ``K`` batches are shared among its workers in proportion to their samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["worker_shards", "batch_counts", "split_sizes"]


def worker_shards(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> list[int]:
    """The shard positions worker ``worker`` of rank ``rank`` reads (node split, then worker split)."""
    return list(range(num_shards))[rank::world_size][worker::num_workers]


def batch_counts(counts: Sequence[int], world_size: int, num_workers: int, batch_size: int) -> list[list[int]]:
    """``k[r][w]``: batches per epoch of worker ``w`` of rank ``r``; every row sums to the same ``K``.

    ``counts`` are the samples per shard, in index order. Raises ``ValueError`` naming the
    rank when a rank has no shards or too few samples for ``K`` batches of two.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size: expected at least 2, got {batch_size}")
    per_worker = [
        [sum(counts[s] for s in worker_shards(len(counts), r, world_size, w, num_workers)) for w in range(num_workers)]
        for r in range(world_size)
    ]
    for r, row in enumerate(per_worker):
        shards = worker_shards(len(counts), r, world_size, 0, 1)
        if not shards or sum(row) == 0:
            raise ValueError(
                f"rank {r} of {world_size}: has no samples (the index lists {len(counts)} shards, rank {r} gets "
                f"shards {shards}); use at most as many ranks as non-empty shards, or write more shards"
            )
        for w, n in enumerate(row):
            if n == 1:
                raise ValueError(
                    f"rank {r}, worker {w}: gets a single sample (shards "
                    f"{worker_shards(len(counts), r, world_size, w, num_workers)}); a MIDAS batch needs two. "
                    "Use fewer workers or write larger shards"
                )
    minimal = [[math.ceil(n / batch_size) for n in row] for row in per_worker]
    target = max(sum(row) for row in minimal)
    result = []
    for r, row in enumerate(per_worker):
        k = list(minimal[r])
        cap = [n // 2 for n in row]
        if sum(cap) < target:
            raise ValueError(
                f"rank {r} of {world_size}: its {sum(row)} samples cannot fill the {target} batches (of at least 2 "
                f"samples) that the largest rank needs at batch_size={batch_size}; balance the shards across ranks "
                "(write more, smaller shards) or use fewer ranks"
            )
        while sum(k) < target:
            # One more batch where batches are largest, so sizes stay as even as possible.
            w = max((i for i in range(num_workers) if k[i] < cap[i]), key=lambda i: (row[i] / max(k[i], 1), -i))
            k[w] += 1
        result.append(k)
    return result


def split_sizes(num_samples: int, num_batches: int) -> list[int]:
    """Sizes of ``num_batches`` batches holding ``num_samples`` samples, as even as possible."""
    if num_batches == 0:
        return []
    base, extra = divmod(num_samples, num_batches)
    return [base + (1 if i < extra else 0) for i in range(num_batches)]
