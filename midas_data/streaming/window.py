"""Prioritised draws within a bounded window of a stream, as a pure function.

A stream cannot plan a whole epoch ahead the way ``MidasBatchSampler`` does: it only holds
the samples of a bounded window. Each window of ``S`` samples is resampled the way the
map-style planner resamples an epoch (``feedback/planning.py``): sample ``i`` of the
window is drawn ``floor(e_i)`` or ``ceil(e_i)`` times, ``e_i = S p_i`` with
``p_i = floor / S + (1 - floor) h_i / sum(h)`` over the window (never-seen samples get
the window's mean priority), the draws in a uniformly random order, ``S`` draws in all.
So a window yields as many slots as it holds samples (epoch lengths, and equal work per
rank, are unchanged), and weighting each drawn sample's loss by ``1 / e_i`` keeps the
window's expected loss equal to its uniform loss.
"""

from __future__ import annotations

import torch

from ..feedback.planning import (
    affine_coefficients,
    arrange_counts,
    expected_from_values,
    resample_irregular,
    stat_moments,
    stat_values,
)

__all__ = ["draw_window"]


def draw_window(
    snapshot: torch.Tensor | None, policy: str, floor: float, generator: torch.Generator, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, weights)``: the window's draws as positions into it, in draw order, and
    the importance weight ``1 / e_i`` of each draw (float32; all 1 for a uniform draw).

    ``snapshot`` holds the window's statistic per sample (``NaN`` = never seen); ``None``
    or ``policy="uniform"`` gives a random permutation of the window.
    """
    permutation = torch.randperm(size, generator=generator)
    if policy == "uniform" or snapshot is None:
        return permutation, torch.ones(size, dtype=torch.float32)
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    coefficients = affine_coefficients(policy, floor, *stat_moments(snapshot))
    if coefficients is None:
        return permutation, torch.ones(size, dtype=torch.float32)
    a, b = coefficients
    positions = arrange_counts(*resample_irregular(snapshot, a, b, u), permutation)
    quantize = snapshot.dtype != torch.float16
    expected = expected_from_values(stat_values(snapshot[positions], quantize), a, b)
    return positions, expected.reciprocal_().float()
