"""The per-sample statistics a training step reports, packed for the table and the wire.

The objective's ``diagnostics["per_sample"]`` holds, per aligned row, the unimodal
confidences ``[B, M]``, the hard-sample similarity and misaligned loss ``[B]``, the
aligned fusion loss ``[B]`` (unweighted) and whether the row had misaligned copies at
all. :func:`pack_statistics` turns them into one float32 ``[B, M + 4]`` tensor: the
local :meth:`StatsTable.update` applies it, and
:func:`~midas_data.feedback.sync.sync_stats` all-gathers it across ranks, so both paths
check and lay out the columns the same way. Ids never join the float tensor (a float32
id is wrong above ``2**24``); they travel as int64 beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["STATISTICS", "VALUE_STATISTICS", "pack_statistics", "as_id_tensor"]

STATISTICS = ("confidence", "similarity", "misaligned_loss", "loss", "has_misaligned")
# The statistics that are columns of the table (``has_misaligned`` only masks two of them).
VALUE_STATISTICS = STATISTICS[:4]


def pack_statistics(
    per_sample: Mapping[str, torch.Tensor | None], num_modalities: int, rows: int
) -> tuple[torch.Tensor, tuple[bool, ...]]:
    """One step's per-sample statistics of ``rows`` samples as one ``[rows, M + 4]`` float32
    tensor on their device.

    Columns: ``confidence [M]``, ``similarity``, ``misaligned_loss``, ``loss`` (the aligned
    fusion loss), ``has_misaligned`` (0/1). A statistic not given (or ``None``) is ``NaN``
    (``has_misaligned``: 1), and the returned flags say which were given, in
    :data:`STATISTICS` order. Shapes and dtypes are checked here (host-known, no device
    synchronisation); values are checked when the table applies them. The local update
    and the cross-rank all-gather both send this.
    """
    unknown = set(per_sample) - set(STATISTICS)
    if unknown:
        raise KeyError(
            f"per_sample: unknown keys {sorted(unknown)}; expected confidence, similarity, "
            "misaligned_loss, loss, has_misaligned"
        )
    given = {k: v for k, v in per_sample.items() if v is not None}
    if not any(k in given for k in VALUE_STATISTICS):
        raise ValueError("update: no statistics given (confidence, similarity, misaligned_loss or loss)")
    device = next((v.device for v in given.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    parts = []
    for name, width in (("confidence", num_modalities), ("similarity", 0), ("misaligned_loss", 0), ("loss", 0)):
        value = given.get(name)
        shape = (rows, width) if width else (rows,)
        if value is None:
            parts.append(torch.full((rows, max(width, 1)), math.nan, device=device))
            continue
        if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got {getattr(value, 'dtype', type(value))}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)} (one row per id), got {list(value.shape)}")
        parts.append(value.detach().float().reshape(rows, -1))
    has = given.get("has_misaligned")
    if has is None:
        parts.append(torch.ones(rows, 1, device=device))
    else:
        if not isinstance(has, torch.Tensor) or has.dtype != torch.bool or tuple(has.shape) != (rows,):
            raise ValueError(
                f"has_misaligned: expected a bool tensor of shape [{rows}], got "
                f"{getattr(has, 'dtype', type(has))} {list(getattr(has, 'shape', []))}"
            )
        parts.append(has.detach().float().reshape(rows, 1))
    columns = tuple(name in given for name in STATISTICS)
    return torch.cat([p.to(device) for p in parts], dim=1), columns  # type: ignore[return-value]


def as_id_tensor(ids: Any) -> torch.Tensor:
    """``ids`` as a 1-D int64 tensor, or a clear error (float ids lose precision above 2**24)."""
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(
            f"ids: expected an integer tensor (int64), got {ids.dtype}; float ids lose precision above 2**24"
        )
    if ids.dim() != 1:
        raise ValueError(f"ids: expected shape [B], got {tuple(ids.shape)}")
    return ids.long()
