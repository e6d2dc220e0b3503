"""Paired per-seed differences with a 95 % t-interval: how two methods are compared.

Runs of two methods with the same seed share the initialisation, the batch order and the
data, so the per-seed difference removes most of the seed-to-seed spread that a
comparison of means would carry.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["t_quantile_975", "paired_difference", "verdict"]

# Two-sided 95 % quantiles of Student's t, degrees of freedom 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError(f"df: expected at least 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` over seeds with its 95 % t-interval.

    Returns ``mean``, ``std`` (of the differences), ``low``, ``high``, ``n``, and ``wins`` /
    ``losses`` (seeds where ``a`` is above / below ``b``). With one seed the interval is
    unbounded (``low = -inf``, ``high = inf``).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: expected two non-empty sequences of one value per seed, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n == 1:
        std, half = 0.0, math.inf
    else:
        std = statistics.stdev(diffs)
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {
        "mean": mean,
        "std": std,
        "low": mean - half,
        "high": mean + half,
        "n": n,
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
    }


def verdict(difference: dict[str, Any]) -> str:
    """``"win"`` if the whole interval is above 0, ``"loss"`` if below, else ``"tie"``."""
    if difference["low"] > 0:
        return "win"
    if difference["high"] < 0:
        return "loss"
    return "tie"
