"""How a global sampler meets the frameworks that deal its batches out to ranks.

Accelerate's ``prepare()`` wraps any batch sampler in a ``BatchSamplerShard`` that hands
batch ``i`` to rank ``i % N``, padding with repeated samples when the last round is short.
:func:`shard_bounds` lays a global epoch out so that round-robin gives every rank exactly
the share the rank-aware sampler would (no padding), and :func:`sharding_wrapper` tells
whether such a wrapper is iterating the sampler, since Accelerate gives no other sign.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from .planning import batch_bounds

__all__ = ["shard_bounds", "sharding_wrapper"]


def shard_bounds(num_slots: int, batch_size: int, num_shards: int, drop_last: bool = False) -> list[tuple[int, int]]:
    """The batches of a global sampler that a framework will deal out round-robin to
    ``num_shards`` ranks (Accelerate's batch-sampler shard gives batch ``i`` to rank
    ``i % num_shards``): the batches of every rank under :func:`batch_bounds`, interleaved.

    So every rank gets the same number of batches, every slot is used exactly once, and
    no framework padding is needed.
    """
    per_rank = [batch_bounds(num_slots, batch_size, num_shards, r, drop_last) for r in range(num_shards)]
    return [bounds for step in zip(*per_rank) for bounds in step]


def sharding_wrapper() -> tuple[str, Any] | None:
    """The Accelerate wrapper iterating this sampler, if any: ``("shard", obj)`` for a
    ``BatchSamplerShard``, ``("dispatch", obj)`` for a ``DataLoaderDispatcher``.

    Accelerate gives no other sign that it wraps a batch sampler; a look at the few
    callers above the sampler (once per epoch, or when it is wrapped) tells.
    """
    frame: FrameType | None = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if owner is not None and type(owner).__module__.startswith("accelerate"):
            name = type(owner).__name__
            if name == "BatchSamplerShard":
                return "shard", owner
            if name == "DataLoaderDispatcher":
                return "dispatch", owner
        frame = frame.f_back
    return None
