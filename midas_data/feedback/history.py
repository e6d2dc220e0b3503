"""``ScoreHistory``: a per-sample score of the stats table, averaged over epochs.

The table keeps the latest statistics of each sample, taken at the step that last trained
it, so a score read from it is one noisy draw per sample, and late in training the heads
have fitted part of what was wrong with a bad pair. Averaging the score over epochs
(recorded once per epoch, e.g. at its end) keeps the early, telling epochs in view and
smooths the draw; ``docs/feedback.md`` has what it gave at finding mismatched pairs.

    history = ScoreHistory(table, by="surprise")
    for epoch in range(epochs):
        ...train one epoch, feeding the table...
        history.record()
    worst = history.suspicious(k=100)  # ids, averaged score and the table's statistics

Memory: two float32 numbers per sample (sum and count), in the process that records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .readout import score, top_k

if TYPE_CHECKING:
    from .stats import StatsTable

__all__ = ["ScoreHistory"]


class ScoreHistory:
    """The running mean over recorded epochs of ``table.scores(by)`` per sample.

    Args:
        table: the :class:`~midas_data.feedback.stats.StatsTable` the training feeds.
        by: a score of :meth:`StatsTable.scores` (``"surprise"``, ``"mismatch"``,
            ``"loss"``, a column name, ``"doubt:<modality>"``...).

    A sample whose score is unknown at a recording (never trained yet) does not count
    in that recording; :meth:`scores` is ``NaN`` for a sample never known.
    """

    def __init__(self, table: StatsTable, by: str = "surprise") -> None:
        score(table, by)  # an unknown score fails here, not at the first record()
        self.table = table
        self.by = by
        self._sum = torch.zeros(table.num_samples, dtype=torch.float64)
        self._count = torch.zeros(table.num_samples, dtype=torch.int32)
        self.records = 0

    def record(self) -> None:
        """Add the table's current score of every sample (call once per epoch)."""
        values = score(self.table, self.by).double()
        known = ~values.isnan()
        self._sum += values.nan_to_num(0.0)
        self._count += known.int()
        self.records += 1

    def scores(self) -> torch.Tensor:
        """``[N]`` float32 mean recorded score, ``NaN`` where never known."""
        mean = self._sum / self._count.clamp_min(1)
        return torch.where(self._count > 0, mean, torch.nan).float()

    def suspicious(self, k: int) -> dict[str, Any]:
        """The ``k`` samples of highest mean score, highest first (ties: smaller id first):
        ``{"ids", "score" (the mean), "by", **table.read(ids)}`` (the latest statistics)."""
        values = self.scores()
        ids = top_k(values, k)
        return {"ids": ids, "score": values[ids], "by": f"mean {self.by}", **self.table.read(ids)}

    def state_dict(self) -> dict[str, Any]:
        return {"by": self.by, "sum": self._sum.clone(), "count": self._count.clone(), "records": self.records}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("by") != self.by:
            raise ValueError(
                f"ScoreHistory.load_state_dict: the checkpoint averages {state.get('by')!r}, not {self.by!r}"
            )
        total = torch.as_tensor(state["sum"], dtype=torch.float64)
        count = torch.as_tensor(state["count"], dtype=torch.int32)
        if total.shape != self._sum.shape or count.shape != self._count.shape:
            raise ValueError(
                f"ScoreHistory.load_state_dict: the checkpoint holds {tuple(total.shape)[0]} samples, "
                f"the table {self.table.num_samples}"
            )
        self._sum, self._count, self.records = total.clone(), count.clone(), int(state["records"])
