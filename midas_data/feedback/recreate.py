"""How a trainer re-creates a :class:`~midas_data.feedback.sampler.MidasBatchSampler` to shard it.

PyTorch Lightning (``use_distributed_sampler=True``) builds a new batch sampler from the
arguments of the user's one plus ``sampler=`` its ``DistributedSampler``. The MIDAS sampler
keeps its arguments where Lightning looks for them and takes the world size and rank from
that sampler, so the global plan is split once, by rank, with nothing else changed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["replicas_of", "record_init_arguments"]


def replicas_of(sampler: Any, num_replicas: int, rank: int) -> tuple[int, int]:
    """``(num_replicas, rank)`` of a trainer's distributed sampler, checked against ours."""
    replicas, its_rank = getattr(sampler, "num_replicas", None), getattr(sampler, "rank", None)
    if not (isinstance(replicas, int) and isinstance(its_rank, int)):
        raise TypeError(
            f"sampler: expected a distributed sampler with int num_replicas and rank (a trainer passes one to "
            f"shard this batch sampler), got {type(sampler).__name__}"
        )
    if num_replicas == 1:
        return replicas, its_rank
    if (num_replicas, rank) != (replicas, its_rank):
        raise ValueError(
            f"sampler: this batch sampler is split for rank {rank} of {num_replicas}, but the trainer shards for "
            f"rank {its_rank} of {replicas}; build the loader without num_replicas/rank and let the trainer shard it"
        )
    return num_replicas, rank


def record_init_arguments(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Keep the arguments ``obj`` was made with where PyTorch Lightning looks for them.

    Lightning re-creates a custom batch sampler with the same arguments plus ``sampler=`` (its
    ``DistributedSampler``) to shard it. Passing the same ``epoch`` tensor and stats table
    keeps the new sampler tied to the loader's collate step and to the feedback loop.
    """
    # Lightning reads these exact attribute names (set by name: no class-private mangling).
    setattr(obj, "__pl_saved_args", args)
    setattr(obj, "__pl_saved_kwargs", kwargs)
    setattr(obj, "__pl_saved_default_kwargs", {"sampler": None})
    setattr(obj, "__pl_saved_arg_names", ("num_samples", "batch_size"))
