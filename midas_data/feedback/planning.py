"""Epoch plans: which samples an epoch visits, in which order, as pure functions.

A plan is a pure function of ``(num_samples, seed, epoch, policy, stats snapshot)``, so
it is identical on every rank and again on resume. ``uniform`` is a random permutation.
A prioritised epoch keeps the epoch length ``N`` and draws sample ``i`` with probability
``p_i = floor / N + (1 - floor) * h_i / sum(h)`` (priority ``h_i``; never-seen samples get
the mean priority), by systematic resampling: sample ``i`` appears ``floor(N p_i)`` or
``ceil(N p_i)`` times, ``N p_i`` on average, in a uniformly random order. The loss stays
unbiased for the uniform-epoch loss when each sample's loss is multiplied by
``1 / (N p_i)`` (at most ``1 / floor``): :meth:`EpochPlan.importance_weights`.

Every reduction runs in fixed chunks with order-free (exact) sums, so no thread count or
platform changes a plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "POLICIES",
    "EpochPlan",
    "plan_from_snapshot",
    "batch_bounds",
    "systematic_counts",
    "resample_irregular",
    "arrange_counts",
    "affine_coefficients",
    "stat_moments",
    "stat_values",
    "expected_from_values",
    "choose_weak_modality",
    "index_dtype",
]

POLICIES = ("uniform", "hard", "weak_modality")
# Priorities from float32/bfloat16 snapshots are rounded to this grid so that their sums
# are exact in float64 (order-free, hence identical on every rank). float16 values lie on
# a finer-than-needed grid already.
_GRID = 2.0**-24
# Chunks of at most 2**15 elements: they stay in cache, and below ATen's parallel grain size
# (32768), so small ops never pay for waking threads (costly on a loaded machine).
_CHUNK = 1 << 15


def index_dtype(num_samples: int) -> torch.dtype:
    """``int32`` while it holds every id (half the memory of ``int64``), else ``int64``."""
    return torch.int32 if num_samples <= 2**31 - 1 else torch.int64


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    # A fixed chunk size (never the thread count) keeps every rounding identical on all ranks.
    for start in range(0, n, _CHUNK):
        yield start, min(start + _CHUNK, n)


def stat_values(snapshot: torch.Tensor, quantize: bool) -> torch.Tensor:
    """A float64 copy of statistics; ``quantize`` rounds them to the ``2**-24`` grid so that
    sums are exact (float16 values lie on it already)."""
    x = snapshot.to(torch.float64)
    if quantize:
        x.div_(_GRID).round_().mul_(_GRID)
    return x


def _chunk_values(snapshot: torch.Tensor, start: int, stop: int, quantize: bool) -> np.ndarray:
    """:func:`stat_values` of one chunk as a numpy array (the same IEEE operations). The
    chunk is below ATen's parallel grain size, so the conversion runs on this thread."""
    x = snapshot[start:stop].to(torch.float64).numpy()
    if quantize:
        np.multiply(np.rint(np.divide(x, _GRID, out=x), out=x), _GRID, out=x)
    return x


def stat_moments(snapshot: torch.Tensor) -> tuple[int, float]:
    """``(number of seen samples, sum of their statistic)``, exact (order-free) for up to
    ``2**28`` samples, so the same on every rank."""
    snapshot = snapshot.detach().cpu()
    quantize = snapshot.dtype != torch.float16
    seen, total = 0, 0.0
    for start, stop in _chunks(snapshot.numel()):
        x = _chunk_values(snapshot, start, stop, quantize)
        nan = np.isnan(x)
        seen += stop - start - int(np.count_nonzero(nan))
        total += float(np.sum(x, where=~nan))
    return seen, total


# Priority h = P + Q x of statistic x: hard-sample weight 1 + (s + 1) / 2, or 1 - c.
_PRIORITY = {"hard": (1.5, 0.5), "weak_modality": (1.0, -1.0)}


def affine_coefficients(policy: str, floor: float, seen: int, total: float) -> tuple[float, float] | None:
    """``(a, b)`` with expected draws ``e = a + b x`` for a seen sample with statistic ``x``.

    ``e = floor + (1 - floor) h / mean(h)``, the mean over seen samples; never-seen
    samples get the mean priority, hence ``e = 1``. So ``sum(e) = N``. ``None`` when nothing
    is known (no sample seen, or all priorities 0): the epoch is then uniform.
    """
    if policy not in _PRIORITY:
        raise ValueError(f"policy: no priorities for {policy!r}")
    if seen == 0:
        return None
    p, q = _PRIORITY[policy]
    mean_h = p + q * total / seen
    if not mean_h > 0:
        return None
    scale = (1.0 - floor) / mean_h
    return floor + scale * p, scale * q


def expected_from_values(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``e = a + b x`` in place on float64 ``x``; ``NaN`` (never seen) becomes 1."""
    return x.mul_(b).add_(a).nan_to_num_(nan=1.0)


def resample_irregular(snapshot: torch.Tensor, a: float, b: float, u: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Systematic resampling of the expected draws ``a + b x`` (``x`` the snapshot),
    streamed in chunks: returns the ids whose count is not 1 and their counts (int64).

    The ``N`` draws are the points ``k + 1 - u`` (``k = 0 .. N-1``) on the cumulated
    expected counts, ``u`` uniform in ``[0, 1)``: each count is ``floor(e_i)`` or
    ``ceil(e_i)`` with mean ``e_i``, and the counts sum to ``N`` exactly. No ``2**24``
    limit: cumulated counts are float64, exact to ``1e-6`` up to ``N = 10**9``.
    """
    snapshot = snapshot.detach().cpu()
    quantize = snapshot.dtype != torch.float16
    n = snapshot.numel()
    offset = 1.0 - u  # in (0, 1]: cumulated values stay positive, so truncation is floor
    carry, previous = offset, math.floor(offset)
    ids, counts = [], []
    for start, stop in _chunks(n):
        x = _chunk_values(snapshot, start, stop, quantize)
        # e = a + b x (NaN: never seen, e = 1), the operations of expected_from_values.
        np.add(np.multiply(x, b, out=x), a, out=x)
        np.nan_to_num(x, copy=False, nan=1.0)
        cumulated = np.cumsum(x, out=x)
        cumulated += carry
        if stop == n:
            if abs(float(cumulated[-1]) - (n + offset)) > 1e-6 * n:
                raise ValueError(f"expected counts: sum to {float(cumulated[-1]) - offset}, not N = {n}")
            cumulated[-1] = n + offset  # absorb rounding: the counts sum to N exactly
        carry = float(cumulated[-1])
        floors = cumulated.astype(np.int64)
        count = np.diff(floors, prepend=previous)
        previous = int(floors[-1])
        irregular = np.flatnonzero(count != 1)
        ids.append(irregular + start)
        counts.append(count[irregular])
    return torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(counts))


def systematic_counts(expected: torch.Tensor, u: float) -> torch.Tensor:
    """All counts of a systematic resampling of ``expected`` (float, summing to ``N``):
    ``E[k_i] = expected_i``, ``|k_i - expected_i| < 1``, ``sum(k) = N``. The reference
    form of :func:`resample_irregular` (which streams and keeps only counts != 1)."""
    n = expected.numel()
    cumulated = expected.to(torch.float64).cumsum(0).add_(1.0 - u)
    cumulated[-1] = n + 1.0 - u
    floors = cumulated.to(torch.int64)
    return torch.diff(floors, prepend=floors.new_full((1,), math.floor(1.0 - u)))


def arrange_counts(ids: torch.Tensor, counts: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """The epoch order of the multiset "sample ``i`` ``k_i`` times" (``sum(k) = N``, only
    the ``k_i != 1`` given as ``ids``, ``counts``), uniformly shuffled by ``permutation``.

    Every extra copy takes the place of a sample drawn zero times in ``0 .. N-1``, and the
    permutation picks slots: one gather, no sort. The bookkeeping runs in numpy, on this
    thread (small ops, no thread wake-ups); only the gather is a full-size torch op.
    """
    n = permutation.numel()
    ids_np, counts_np = ids.numpy(), counts.numpy()
    dropped = ids_np[counts_np == 0]
    several = counts_np > 1
    extras = np.repeat(ids_np[several], counts_np[several] - 1)
    if extras.shape[0] != dropped.shape[0]:
        raise ValueError(f"counts: expected a sum of {n}, got {n + extras.shape[0] - dropped.shape[0]}")
    multiset = torch.arange(n, dtype=permutation.dtype)
    multiset.numpy()[dropped] = extras
    return multiset.index_select(0, permutation)


def choose_weak_modality(confidence: torch.Tensor) -> int | None:
    """The weak modality ``argmin_m mean_i c~_i^m`` over samples seen in every modality
    (``c~`` = confidences normalised over modalities, paper 3.4); ``None`` if none seen.

    Streamed in fixed chunks with numpy's (single-threaded, fixed-order) sums, so the
    choice is the same on every rank.
    """
    m, n = confidence.shape
    rows = [confidence[i].detach().cpu() for i in range(m)]
    sums = np.zeros(m, dtype=np.float64)
    any_seen = False
    for start, stop in _chunks(n):
        c = [row[start:stop].to(torch.float32).numpy() for row in rows]
        total = np.add.reduce(c)
        seen = ~np.isnan(total)  # NaN anywhere in a column: not seen in every modality
        if not seen.any():
            continue
        any_seen = True
        usable = seen & (total > 0)
        for i in range(m):
            share = np.divide(c[i], total, out=np.zeros_like(total), where=usable)
            share[seen & ~usable] = 1.0 / m
            sums[i] += float(share.sum(dtype=np.float64))
    return int(np.argmin(sums)) if any_seen else None


def batch_bounds(
    num_slots: int, batch_size: int, num_replicas: int = 1, rank: int = 0, drop_last: bool = False
) -> list[tuple[int, int]]:
    """``(start, stop)`` slot ranges of the batches of ``rank`` in a global epoch order.

    The order is cut into global steps of ``num_replicas * batch_size`` slots; rank ``r``
    takes the ``r``-th ``batch_size`` slots of each step, so shares are disjoint and every
    rank has the same number of batches (DDP needs that). The tail: dropped with
    ``drop_last``; otherwise split as evenly as possible into one more batch per rank when
    every rank gets at least two slots, else folded into the last step's batches (which
    grow by at most two). So every slot is used exactly once across ranks. With one
    replica this is "full batches, a smaller last one, a last single sample folded into the
    batch before it".
    """
    step = batch_size * num_replicas
    full, rest = divmod(num_slots, step)
    bounds = [(s * step + rank * batch_size, s * step + (rank + 1) * batch_size) for s in range(full)]
    if rest == 0 or drop_last:
        return bounds
    if rest >= 2 * num_replicas or full == 0:
        if rest < num_replicas:
            raise ValueError(
                f"num_samples: {num_slots} samples cannot give each of {num_replicas} ranks a batch; use fewer "
                "ranks or drop_last=True"
            )
        start = full * step
    else:
        start = (full - 1) * step
        rest += step
        bounds.pop()
    base, extra = divmod(rest, num_replicas)
    offset = start + rank * base + min(rank, extra)
    bounds.append((offset, offset + base + (1 if rank < extra else 0)))
    return bounds


@dataclass
class EpochPlan:
    """The global plan of one epoch and what it was drawn from.

    Attributes:
        epoch: the epoch.
        policy: the policy that shaped it (``"uniform"`` also when a prioritised policy had
            no statistics yet).
        order: ``[N]`` sample id of every global slot (``int32`` below ``2**31`` samples).
        snapshot: the stats column the plan was drawn from (``None`` for uniform plans);
            kept for exact resume and the importance weights; never modified.
        weak_modality: the modality index a ``weak_modality`` plan favoured, else ``-1``.
        a, b: expected draws this epoch are ``a + b x`` for a sample with statistic ``x``
            in the snapshot, 1 for a never-seen one.
        snapshot_updates: ``StatsTable.num_updates`` when the snapshot was taken (``-1``
            without a table): the plan reflects exactly the updates before it.
        threshold, low_keep: ``prune`` plans (``prune.py``): samples whose snapshot value is
            below ``threshold`` are expected ``low_keep`` times this epoch, others once.
            ``order`` then holds fewer than ``N`` slots.
    """

    epoch: int
    policy: str
    order: torch.Tensor
    snapshot: torch.Tensor | None = None
    weak_modality: int = -1
    a: float = 1.0
    b: float = 0.0
    snapshot_updates: int = -1
    threshold: float = math.nan
    low_keep: float = 1.0
    _device_snapshots: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def expected_counts(self, ids: torch.Tensor) -> torch.Tensor:
        """``N p_i``: expected draws of each id this epoch (float64; 1 for uniform plans)."""
        if self.snapshot is None:
            return torch.ones(ids.shape, dtype=torch.float64, device=ids.device)
        key = str(ids.device)
        if key not in self._device_snapshots:
            # One copy per device per epoch, so that device ids never wait for the host.
            self._device_snapshots[key] = self.snapshot.to(ids.device)
        values = self._device_snapshots[key][ids.long()]
        # The very operations the planner used, so the weights match the draws exactly.
        x = stat_values(values, self.snapshot.dtype != torch.float16)
        if self.policy == "prune":
            return torch.where(x < self.threshold, self.low_keep, 1.0).to(torch.float64)
        return expected_from_values(x, self.a, self.b)

    def importance_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """``1 / (N p_i)`` per id, float32 on ``ids.device`` (all 1 for uniform plans)."""
        return self.expected_counts(ids).reciprocal_().float()


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)


def plan_from_snapshot(
    num_samples: int,
    epoch: int,
    seed: int,
    policy: str,
    snapshot: torch.Tensor | None,
    floor: float,
    weak_modality: int = -1,
    shuffle: bool = True,
    snapshot_updates: int = -1,
) -> EpochPlan:
    """The plan of an epoch: a pure function of its arguments (so of seed, epoch and the
    stats snapshot), the same on every rank and again on resume."""
    if not shuffle:
        return EpochPlan(epoch, "uniform", torch.arange(num_samples, dtype=index_dtype(num_samples)))
    generator = _generator(seed, epoch)
    permutation = torch.randperm(num_samples, generator=generator, dtype=index_dtype(num_samples))
    if policy == "uniform" or snapshot is None:
        return EpochPlan(epoch, "uniform", permutation, snapshot_updates=snapshot_updates)
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    coefficients = affine_coefficients(policy, floor, *stat_moments(snapshot))
    if coefficients is None:
        return EpochPlan(epoch, "uniform", permutation, snapshot_updates=snapshot_updates)
    a, b = coefficients
    order = arrange_counts(*resample_irregular(snapshot, a, b, u), permutation)
    return EpochPlan(epoch, policy, order, snapshot, weak_modality, a, b, snapshot_updates)
