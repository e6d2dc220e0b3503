"""Process-group helpers that are no-ops without one, so the same code runs on 1 or N ranks.

Used by the weak-modality controller (one all-reduce per step keeps alpha identical on
every rank) and by the feedback loop's statistics sync. Nothing here synchronises the
host with the device; under NCCL the collectives run on the current CUDA device.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_distributed", "world_size", "collective_device", "all_reduce_sum"]


def is_distributed(group: Any = None) -> bool:
    """Whether a process group with more than one rank is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def has_process_group() -> bool:
    """Whether a default process group is initialised, of any size (DDP may wrap the model)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """The number of ranks of ``group``; 1 without an initialised process group."""
    import torch.distributed as dist

    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def collective_device(group: Any, like: torch.Tensor) -> torch.device:
    """Where a collective over ``group`` must run for a tensor that lives like ``like``."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        # NCCL moves CUDA tensors only.
        return torch.device("cuda", torch.cuda.current_device())
    return like.device


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks of ``group`` (``tensor`` itself without a group).

    One collective, asynchronous with respect to the host on CUDA; the result is on
    ``tensor``'s device and bit-identical on every rank.
    """
    if not is_distributed(group):
        return tensor
    import torch.distributed as dist

    device = collective_device(group, tensor)
    reduced = tensor.to(device, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    return reduced.to(tensor.device)
