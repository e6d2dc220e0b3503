"""Per-sample statistics across ranks: every rank's table gets every rank's updates.

Under DDP each rank sees only its own batches, but the sampler's plan must be identical
on every rank, so every rank's :class:`~midas_data.feedback.stats.StatsTable` must receive the
same updates in the same order. :func:`sync_stats` all-gathers one step's statistics and
applies them, in rank order, on every rank.

Ids travel as their own ``int64`` tensor, never concatenated with the float statistics:
``cat([ids, stats])`` would promote ids to float and corrupt every id above ``2**24``.
Without an initialised process group (or with one rank) everything is a local no-op.

Host synchronisations: with a capacity (``capacity=`` or ``table.batch_capacity``) every
rank pads its rows to that many and the step runs two all-gathers and a ``non_blocking``
copy to the host, none of which makes the host wait for the device; the table validates
and applies the rows at its next update or flush, on host tensors. Without one, the ranks
first exchange their row counts, and reading them costs one host synchronisation per step
under NCCL.

On a table shared by the local ranks of a node (``StatsTable(sharing=...)``) every rank
still calls :func:`sync_stats` and receives the same rows; the node writes each step once
(``node_local.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..distributed import collective_device, is_distributed
from .columns import as_id_tensor, pack_statistics
from .stats import StatsTable
from .validation import check_capacity

__all__ = ["is_distributed", "all_gather_rows", "sync_stats", "PADDING_ID", "OVERFLOW_ID"]

# Ids of the rows that pad a rank up to the capacity (ignored) and of the rows a rank over
# its capacity sends instead of its own (outside every table, so every table rejects the step).
PADDING_ID = -1
OVERFLOW_ID = -2


def all_gather_rows(
    ids: torch.Tensor,
    values: torch.Tensor,
    *,
    group: Any = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gather ``ids [B_r]`` (int64) and ``values [B_r, F]`` (float) from every rank.

    Returns the rows of all ranks concatenated in rank order, plus a ``valid`` mask (or
    ``None`` when every row is real). Ranks may have different ``B_r``: pass ``capacity``
    (an upper bound of every ``B_r``, e.g. the batch size plus 2) and rows are padded to
    ``capacity`` with id :data:`PADDING_ID` and marked invalid, with no host
    synchronisation. Without it one small extra all-gather exchanges the sizes, and reading
    them synchronises the host with the device under NCCL.

    A rank with more rows than ``capacity`` raises ``ValueError`` (naming its row count and
    the capacity) after taking part in both gathers, so no rank waits forever; it sends
    rows with id :data:`OVERFLOW_ID` instead of its own, which every table rejects.
    """
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
        raise TypeError(f"ids: expected a 1-D integer tensor (int64), got {getattr(ids, 'dtype', type(ids))}")
    if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[0] != ids.shape[0]:
        raise ValueError(
            f"values: expected shape [{ids.shape[0]}, F] (one row per id), got {list(getattr(values, 'shape', []))}"
        )
    ids = ids.long()
    check_capacity(capacity)
    if not is_distributed(group):
        return ids, values, None
    import torch.distributed as dist

    world = dist.get_world_size(group)
    device = collective_device(group, values)
    ids, values = ids.to(device), values.to(device)
    rows = ids.shape[0]
    sizes: list[int] | None = None
    if capacity is None:
        size = torch.tensor([rows], dtype=torch.int64, device=device)
        gathered_sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(gathered_sizes, size, group=group)
        sizes = [int(s) for s in gathered_sizes]  # the host waits for the device here (NCCL)
        capacity = max(sizes)
    overflow = rows > capacity
    padded_ids = torch.full((capacity,), OVERFLOW_ID if overflow else PADDING_ID, dtype=torch.int64, device=device)
    padded_values = torch.zeros((capacity, values.shape[1]), dtype=values.dtype, device=device)
    if not overflow:
        padded_ids[:rows] = ids
        padded_values[:rows] = values
    all_ids = [torch.empty_like(padded_ids) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    dist.all_gather(all_ids, padded_ids, group=group)
    dist.all_gather(all_values, padded_values, group=group)
    if overflow:
        raise ValueError(
            f"capacity: rank {dist.get_rank(group)} has {rows} rows to send, more than capacity={capacity}; "
            "set the capacity (sync_stats(capacity=...) or table.batch_capacity) to the most rows a rank "
            f"sends in one step. The other ranks' tables reject this step (rows with id {OVERFLOW_ID})"
        )
    if sizes is not None:
        return (
            torch.cat([t[:n] for t, n in zip(all_ids, sizes)]),
            torch.cat([t[:n] for t, n in zip(all_values, sizes)]),
            None,
        )
    gathered_ids = torch.cat(all_ids)
    return gathered_ids, torch.cat(all_values), gathered_ids != PADDING_ID


def sync_stats(
    table: StatsTable,
    ids: torch.Tensor,
    per_sample: Mapping[str, torch.Tensor],
    *,
    step: int | None = None,
    group: Any = None,
    capacity: int | None = None,
) -> None:
    """All-gather one step's per-sample statistics and apply them to ``table`` on every rank.

    Call it on every rank at every step, with this rank's ``batch.ids`` and the objective's
    ``diagnostics["per_sample"]``: all tables then stay identical, so do the sampler's
    plans. Rows are applied in rank order, so for an id present on several ranks in one
    step the highest rank's row wins (see :meth:`StatsTable.update`). A bad row (``NaN``,
    an id outside the table) is rejected on every rank alike. Without a process group this
    is ``table.update`` on the local rows.

    Rows per rank: ranks are padded to ``capacity`` if given, else to
    ``table.batch_capacity`` (which ``midas_loader(..., stats=table)`` sets to
    ``batch_size + 2``), with no host synchronisation: the rows reach the table through a
    ``non_blocking`` copy and are validated and applied at its next update or flush. With
    neither, the ranks exchange their row counts first, one host synchronisation per step
    under NCCL. A rank with more rows than the capacity raises ``ValueError`` naming its row
    count and the capacity (the other ranks' tables reject that step; see
    :func:`all_gather_rows`).
    """
    ids = as_id_tensor(ids)
    packed, columns = pack_statistics(per_sample, table.num_modalities, ids.shape[0])
    if capacity is None:
        capacity = table.batch_capacity
    try:
        gathered_ids, gathered, valid = all_gather_rows(ids, packed, group=group, capacity=capacity)
    except RuntimeError as err:
        if table.sharing != "node":
            raise
        raise RuntimeError(
            f"sync_stats: the all-gather failed ({err}). A rank of the group died or left; this rank's node-shared "
            "table is freed when the last process of the node that maps it exits"
        ) from err
    table.update_packed(gathered_ids, gathered, columns, valid=valid, step=step)
