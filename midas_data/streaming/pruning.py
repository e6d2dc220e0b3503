"""``policy="prune"`` on a stream: InfoBatch-style pruning within each window.

The map-style ``prune`` (``feedback/prune.py``) leaves out ``round(ratio * |L|)`` random
samples of the set ``L`` of samples scored below the mean of the seen ones. On a stream,
ranks and DataLoader workers cannot talk to each other, yet every rank must yield the same
number of batches, decided before the epoch starts. ``|L|`` depends on the scores, which a
worker only sees window by window (and other ranks' windows not at all), so a rule on the
mean would make every rank's batch count unknowable in advance.

So the stream prunes a fixed count per window: a window of ``S`` samples has the low half
``L`` of its ``m = floor(S / 2)`` lowest-score samples (never-seen ``NaN`` scores rank
above every seen one), and ``d(S) = min(round(ratio * m), m - 1)`` of them, drawn uniformly
at random, are left out; the kept ones of ``L`` get importance weight ``m / (m - d)``, every other
sample 1. This is the below-median form of InfoBatch's below-mean rule: ``d`` is a function
of the window's size alone, the window sizes are known from the shard index (every
``window`` accepted samples, then the last partial window), so every worker knows, from the
index alone, how many samples every worker of every rank keeps, and the batch plan of a
pruned epoch is computed without communication, exactly as the plan of a full one.

Unbiasedness holds within each window, exactly: a sample of ``L`` is kept with probability
``(m - d) / m``, so for any per-sample loss ``E[sum over the window's kept samples of
w_i l_i] = sum over the window of l_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["window_drops", "kept_samples", "pruned_bounds", "prune_window"]


def window_drops(size: int, ratio: float) -> int:
    """``d(S)``: samples a pruned window of ``size`` samples leaves out: ``round(ratio * m)``
    (half up), ``m = size // 2``, at most ``m - 1`` so that the low half keeps a sample (and
    its weight ``m / (m - d)`` stays finite)."""
    half = size // 2
    return max(0, min(int(ratio * half + 0.5), half - 1))


def kept_samples(num_samples: int, window: int, ratio: float) -> int:
    """Samples a worker keeps in a pruned pass when ``num_samples`` reach its windows of
    ``window``: every full window drops ``d(window)``, the last partial one ``d(rest)``.
    Never decreases as ``num_samples`` grows (``S - d(S)`` does not, as ``ratio < 1``)."""
    full, rest = divmod(int(num_samples), window)
    return int(num_samples) - full * window_drops(window, ratio) - window_drops(rest, ratio)


def pruned_bounds(
    bounds: Sequence[Sequence[tuple[int, int]]], window: int, ratio: float
) -> list[list[tuple[int, int]]]:
    """Worker bounds ``(low, high)`` on samples received, as bounds on samples kept in a
    pruned pass (``kept_samples`` is monotone, so they stay bounds)."""
    return [[(kept_samples(lo, window, ratio), kept_samples(hi, window, ratio)) for lo, hi in row] for row in bounds]


def prune_window(
    scores: torch.Tensor, ratio: float, generator: torch.Generator, shuffle: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, weights)``: the kept samples of one window as positions into it (in a
    random order, or in window order with ``shuffle=False``) and their importance weights
    (float32: ``m / (m - d)`` on the kept samples of the low half, 1 elsewhere).

    ``scores`` holds the window's score per sample (``NaN`` = never seen). Exactly
    ``window_drops(len(scores), ratio)`` samples are left out.
    """
    size = scores.numel()
    half = size // 2
    dropped = window_drops(size, ratio)
    weights = torch.ones(size, dtype=torch.float32)
    keep = torch.ones(size, dtype=torch.bool)
    if dropped > 0:
        values = scores.detach().to("cpu", torch.float64)
        # NaN (never seen) ranks above every seen score; a stable sort breaks ties by
        # window position, so the low half is a function of the scores and the order.
        values = torch.where(torch.isnan(values), torch.full_like(values, float("inf")), values)
        low = torch.sort(values, stable=True).indices[:half]
        pick = torch.randperm(half, generator=generator)[:dropped]
        keep[low[pick]] = False
        weights[low] = half / (half - dropped)
    order = torch.randperm(size, generator=generator) if shuffle else torch.arange(size)
    positions = order[keep[order]]
    return positions, weights[positions]
