"""Reading a :class:`~midas_data.feedback.stats.StatsTable` as a person would: scores per
sample, the most suspicious samples, CSV and pandas exports.

Scores (``by=``), each a ``[N]`` float32 tensor with ``NaN`` where a statistic is unknown:

* ``"mismatch"`` (the default of :meth:`StatsTable.suspicious`): the ``"surprise"`` score
  below, chosen on validation (``benchmarks/bad_pairs.py``, the selection split of its
  injected mismatched pairs; docs/feedback.md has the figures).
* ``"surprise"``: ``max_m S^m_i / mean_j S^m_j`` with ``S^m_i = -log c^m_i``, the surprise
  of modality ``m``'s unimodal head at sample ``i``'s label, relative to that head's mean
  surprise over the table. A pair whose modalities do not belong together has one head
  (the one facing the foreign modality) far more surprised than it usually is; a sample
  that is merely hard for a weak modality is surprising to a head that is surprised often,
  which the division discounts.
* ``"disagreement"``: ``max_m c^m - min_m c^m``, one head sure of the label, another not.
* any column: ``"loss"`` (the aligned fusion loss), ``"misaligned_loss"``,
  ``"similarity"``, ``"confidence:<modality>"`` (higher = more suspicious; for a
  confidence use ``"doubt:<modality>"``, ``1 - c^m``).
"""

from __future__ import annotations

import csv
import math
import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .stats import StatsTable

__all__ = [
    "SCORES",
    "TableReadout",
    "column",
    "relative_surprise",
    "score",
    "suspicious",
    "to_csv",
    "to_dataframe",
    "top_k",
]

SCORES = ("mismatch", "surprise", "disagreement", "loss", "misaligned_loss", "similarity")
_TINY = 1e-6


def column(table: StatsTable, name: str) -> torch.Tensor:
    """The ``[N]`` column ``name`` of ``table`` (a view of the shared memory)."""
    if name in ("similarity", "misaligned_loss", "loss"):
        return getattr(table, name)
    if name.startswith("confidence:"):
        return table.confidence[table.modality_index(_modality(name))]
    raise ValueError(
        f"column: unknown {name!r}; expected similarity, misaligned_loss, loss or confidence:<modality> "
        f"(modalities {list(table.modalities)})"
    )


def _modality(name: str) -> str | int:
    part = name.split(":", 1)[1]
    return int(part) if part.isdigit() else part


def score(table: StatsTable, by: str = "mismatch") -> torch.Tensor:
    """``[N]`` float32 score ``by`` (module docstring); ``NaN`` where unknown."""
    table.flush()
    if by == "mismatch":
        by = "surprise"
    if by in ("surprise", "disagreement"):
        c = table.confidence.float()
        if by == "disagreement":
            return c.max(dim=0).values - c.min(dim=0).values  # NaN anywhere gives NaN
        return relative_surprise(c)
    if by.startswith("doubt:"):
        return 1.0 - table.confidence[table.modality_index(_modality(by))].float()
    return column(table, by).float()


def relative_surprise(confidence: torch.Tensor) -> torch.Tensor:
    """The ``"surprise"`` score of ``[M, N]`` unimodal confidences (``NaN`` = unknown):
    ``max_m S^m_i / mean_j S^m_j`` with ``S^m_i = -log c^m_i``; ``[N]`` float32."""
    surprise = -confidence.float().clamp_min(_TINY).log()
    seen = ~surprise.isnan()
    mean = surprise.nan_to_num(0.0).sum(dim=1) / seen.sum(dim=1).clamp_min(1)
    return (surprise / mean.clamp_min(_TINY).unsqueeze(1)).max(dim=0).values


def top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Ids of the ``k`` highest known (non-``NaN``) ``values``, highest first; equal values
    keep the smaller id first. Fewer than ``k`` when fewer are known."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k: expected a non-negative int, got {k!r}")
    known = (~values.isnan()).nonzero().squeeze(1)
    order = torch.sort(values[known], descending=True, stable=True).indices[: min(k, int(known.numel()))]
    return known[order]


def suspicious(table: StatsTable, k: int, by: str = "mismatch") -> dict[str, Any]:
    """The ``k`` samples with the highest ``by`` score, highest first (unknown scores never
    count): ``{"ids" [k] int64, "score" [k], "by", **table.read(ids)}``. Ties keep the
    smaller id first."""
    values = score(table, by)
    ids = top_k(values, k)
    return {"ids": ids, "score": values[ids], "by": by, **table.read(ids)}


def _rows(table: StatsTable, ids: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if ids is None:
        ids = torch.arange(table.num_samples)
    ids = torch.as_tensor(ids).long().reshape(-1)
    stats = table.read(ids)
    columns: dict[str, torch.Tensor] = {}
    for m, name in enumerate(table.modalities):
        columns[f"confidence_{name}"] = stats["confidence"][:, m]
    for name in ("similarity", "misaligned_loss", "loss"):
        columns[name] = stats[name]
    columns["last_step"] = stats["last_step"]
    columns["mismatch"] = score(table, "mismatch")[ids]
    return ids, columns


def to_csv(table: StatsTable, path: str | os.PathLike[str], ids: Any = None) -> None:
    """One header line (``id``, ``confidence_<m>``..., ``similarity``, ``misaligned_loss``,
    ``loss``, ``last_step``, ``mismatch``) and one line per sample; unknown values empty."""
    ids, columns = _rows(table, ids)
    names = list(columns)
    lists = [columns[n].tolist() for n in names]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *names])
        for row, i in enumerate(ids.tolist()):
            writer.writerow([i, *("" if _missing(v[row]) else _cell(v[row]) for v in lists)])


def _missing(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def to_dataframe(table: StatsTable, ids: Any = None) -> Any:
    """The rows of :func:`to_csv` as a pandas DataFrame indexed by ``id`` (``NaN`` where
    unknown). Raises ``ImportError`` saying how to get pandas when it is not installed."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            "StatsTable.to_dataframe needs pandas: pip install pandas (or use to_csv(path), which needs nothing)"
        ) from err
    ids, columns = _rows(table, ids)
    frame = pd.DataFrame({name: value.numpy() for name, value in columns.items()}, index=ids.numpy())
    frame.index.name = "id"
    return frame


class TableReadout:
    """The read-out for people as methods of :class:`~midas_data.feedback.stats.StatsTable`
    (kept here, beside the functions they call, so the table's module stays about storage)."""

    def column(self, name: str) -> torch.Tensor:
        """A ``[N]`` column by name: ``similarity``, ``misaligned_loss``, ``loss`` or
        ``confidence:<modality>`` (a shared view; read it, write through :meth:`update`)."""
        return column(self, name)

    def suspicious(self, k: int, by: str = "mismatch") -> dict[str, Any]:
        """The ``k`` samples with the highest score ``by``, most suspicious first, as ids with
        their statistics (see :func:`suspicious`; ``by``:
        ``"mismatch"`` (default), ``"loss"`` or any column name)."""
        return suspicious(self, k, by)

    def scores(self: StatsTable, by: str = "mismatch") -> torch.Tensor:
        """``[N]`` float32 score ``by`` of every sample, ``NaN`` where unknown."""
        return score(self, by)

    def to_csv(self, path: str | os.PathLike[str], ids: Any = None) -> None:
        """Write every row (or ``ids``) with its statistics and mismatch score as CSV."""
        to_csv(self, path, ids)

    def to_dataframe(self, ids: Any = None) -> Any:
        """Every row (or ``ids``) as a pandas DataFrame indexed by sample id (needs pandas)."""
        return to_dataframe(self, ids)
