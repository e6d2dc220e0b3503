"""Checks of :class:`~midas_data.feedback.sampler.MidasBatchSampler` kept out of its
module: the framework wrapper it is iterated under, and a checkpoint it loads."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..distributed import world_size
from ..errors import MidasDataError
from .sharding import sharding_wrapper

__all__ = ["FORMAT", "check_wrapper", "checked_state"]

FORMAT = "midas_data.MidasBatchSampler/1"


def check_wrapper(self: Any) -> None:
    """Fit the batches to an Accelerate wrapper, or refuse one that cannot work."""
    wrapper = sharding_wrapper()
    if wrapper is not None and wrapper[0] == "dispatch":
        raise MidasDataError(
            "Accelerate dispatch_batches=True: process 0 would concatenate the MidasBatch objects of several "
            "batches and slice them across ranks, which breaks their pair plans. Use "
            "Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=False)) (the default for "
            "map-style datasets): every rank then builds its own batches"
        )
    if wrapper is not None:
        shard = wrapper[1]
        if self.num_replicas > 1:
            raise MidasDataError(
                f"{type(self).__name__} with num_replicas={self.num_replicas} is already split by rank, and "
                "Accelerate's prepare() splits its batches again (each rank would see 1/N of its share). Give "
                "Accelerate the global sampler: midas_loader(...) without num_replicas/rank"
            )
        if getattr(shard, "split_batches", False):
            raise MidasDataError(
                "Accelerate split_batches=True cuts each MidasBatch's index list across ranks after it was "
                "planned; use split_batches=False (the default): each rank then gets whole batches"
            )
        self._deal_to(shard)
        return
    num_shards = self.fixed_num_shards or 1
    if self.num_replicas == 1 and world_size() > 1 and self.fixed_num_shards is None:
        # A global sampler iterated directly on several ranks: each rank sees every
        # sample, unless something else shards the batches. Order for the world anyway.
        num_shards = world_size()
        if not self._warned_unsharded:
            self._warned_unsharded = True
            warnings.warn(
                "MidasBatchSampler: the global sampler (num_replicas=1) is iterated directly on "
                f"{num_shards} ranks, so every rank sees every sample. In a plain DDP loop pass "
                "num_replicas= and rank= to midas_loader (or use DistributedMidasBatchSampler); under "
                "Accelerate, prepare() the loader",
                stacklevel=4,
            )
    if num_shards != self.num_shards:
        self._set_bounds(num_shards)


def checked_state(state: Any, mine: Mapping[str, Any], num_samples: int) -> tuple[int, int, torch.Tensor | None]:
    """A sampler checkpoint checked against this sampler's layout ``mine``: returns its
    epoch, batches yielded and snapshot, or raises ``ValueError`` naming the key."""
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"state['format']: expected {FORMAT!r} (a MidasBatchSampler.state_dict()), got {got!r}")
    for key, value in mine.items():
        if state.get(key, 1 if key == "num_shards" else None) != value:
            raise ValueError(
                f"state[{key!r}]: the checkpoint has {state.get(key)!r}, this sampler {value!r}; "
                "exact resume needs the same dataset, batch size, world size, seed and policy (for another "
                "world size, restore the stats table and objective only and set_epoch(saved_epoch + 1))"
            )
    epoch, yielded = state.get("epoch"), state.get("yielded")
    if not isinstance(epoch, int) or not isinstance(yielded, int) or yielded < 0:
        raise ValueError(f"state['epoch'], state['yielded']: expected ints, got {epoch!r}, {yielded!r}")
    snapshot = state.get("snapshot")
    if snapshot is not None and (
        not isinstance(snapshot, torch.Tensor)
        or tuple(snapshot.shape) != (num_samples,)
        or not snapshot.dtype.is_floating_point
    ):
        raise ValueError(f"state['snapshot']: expected None or a float tensor of shape [{num_samples}]")
    return epoch, yielded, snapshot
