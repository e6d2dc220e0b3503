"""``MidasBatchSampler``: the epoch plan of index batches for the MIDAS loader.

One global plan per epoch, deterministic from ``(seed, epoch, stats snapshot)`` and so
identical on every rank, cut into batches and, for the rank-aware variant, split by rank.
The epoch lives in a shared ``int64`` tensor that the collate step reads inside the
workers, so that ``set_epoch`` in the main process reaches the pair planning there too.

Policies (``docs/feedback.md`` has the estimators):

* ``uniform`` — the paper's behaviour and the default: a random permutation.
* ``hard`` (experimental) — each sample is drawn in proportion to the hard-sample weight
  ``w = 1 + (s + 1) / 2`` of its last misaligned copies (``s`` from the stats table).
* ``weak_modality`` (experimental) — in proportion to ``1 - c^m^``, the weak modality's
  unimodal confidence on the sample's own label.

A prioritised epoch keeps the epoch length ``N`` and draws sample ``i`` with probability
``p_i = floor / N + (1 - floor) * h_i / sum(h)`` (priority ``h_i``; never-seen samples get
the mean priority), by systematic resampling: sample ``i`` appears ``floor(N p_i)`` or
``ceil(N p_i)`` times, ``N p_i`` on average, in a uniformly random order. The loss stays
unbiased for the uniform-epoch loss when each sample's loss is multiplied by
``importance_weights(ids) = 1 / (N p_i)`` (at most ``1 / floor``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .functional import pair_importance_weights
from .stats import StatsTable

__all__ = [
    "MidasBatchSampler",
    "DistributedMidasBatchSampler",
    "EpochPlan",
    "POLICIES",
    "plan_from_snapshot",
    "shared_epoch",
    "batch_bounds",
    "systematic_counts",
    "resample_irregular",
    "arrange_counts",
    "affine_coefficients",
    "stat_moments",
    "choose_weak_modality",
    "pair_importance_weights",
]

POLICIES = ("uniform", "hard", "weak_modality")
_FORMAT = "midas_data.MidasBatchSampler/1"
# Priorities from float32/bfloat16 snapshots are rounded to this grid so that their sums
# are exact in float64 (order-free, hence identical on every rank). float16 values lie on
# a finer-than-needed grid already.
_GRID = 2.0**-24
# Chunks of at most 2**15 elements: they stay in cache, and below ATen's parallel grain size
# (32768), so small ops never pay for waking threads (costly on a loaded machine).
_CHUNK = 1 << 15


def shared_epoch(epoch: int = 0) -> torch.Tensor:
    """A 0-dim ``int64`` tensor in shared memory, to be created before workers start."""
    return torch.full((), epoch, dtype=torch.int64).share_memory_()


# -- pure planning math -------------------------------------------------------------------
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


# -- the plan -------------------------------------------------------------------------------
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
    """

    epoch: int
    policy: str
    order: torch.Tensor
    snapshot: torch.Tensor | None = None
    weak_modality: int = -1
    a: float = 1.0
    b: float = 0.0
    snapshot_updates: int = -1
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
        return expected_from_values(stat_values(values, self.snapshot.dtype != torch.float16), self.a, self.b)

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


# -- the sampler ----------------------------------------------------------------------------
@dataclass
class _Resume:
    epoch: int
    yielded: int
    snapshot: torch.Tensor | None
    weak_modality: int
    snapshot_updates: int


class MidasBatchSampler(Sampler[list[int]]):
    """Yields lists of sample indices, one list a batch.

    Args:
        num_samples: size of the dataset.
        batch_size: samples per batch (per rank), at least 2 (a misaligned row needs a
            partner).
        shuffle: a new random order every epoch; ``False`` keeps dataset order (uniform
            policy only).
        seed: base seed of the order.
        drop_last: drop a final incomplete batch. When kept, a final batch of one sample
            (which could not be misaligned) is folded into the batch before it, so every
            sample still appears exactly once per epoch (see :func:`batch_bounds`).
        epoch: the shared epoch tensor (see :func:`shared_epoch`); one is made if omitted.
        policy: ``"uniform"`` (default, the paper), ``"hard"`` or ``"weak_modality"``
            (experimental, need ``stats``).
        stats: the :class:`~midas_data.stats.StatsTable` the prioritised policies read.
        floor: share of every prioritised epoch drawn uniformly, in ``(0, 1]``: each sample
            is expected at least ``floor`` times per epoch and importance weights stay at or
            below ``1 / floor``. ``1`` gives the uniform plan.
        weak_modality: for ``"weak_modality"``: the modality (name or index) to favour;
            ``None`` picks the weak one from the table at every epoch.
        num_replicas, rank: split every global plan into ``num_replicas`` disjoint shares
            and yield share ``rank`` (plain DDP loops). Leave at ``1, 0`` (the global
            sampler) when the framework shards batches itself (Accelerate).

    The plan is made when an epoch's iterator is created, from a snapshot of the stats
    table at that moment: updates made during an epoch shape the next epoch's plan.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        epoch: torch.Tensor | None = None,
        policy: str = "uniform",
        stats: StatsTable | None = None,
        floor: float = 0.2,
        weak_modality: str | int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
            raise TypeError(
                f"num_samples: expected the dataset size as an int, got {type(num_samples).__name__}. "
                "(PyTorch Lightning passes a sampler here when it tries to inject a DistributedSampler into a "
                "custom batch sampler: use Trainer(use_distributed_sampler=False) with "
                "DistributedMidasBatchSampler, see docs/feedback.md)"
            )
        if num_samples <= 0:
            raise ValueError(f"num_samples: expected a positive dataset size, got {num_samples}")
        if batch_size < 2:
            raise ValueError(
                f"batch_size: expected at least 2, got {batch_size}; a misaligned sample takes a modality "
                "from another sample of the same batch"
            )
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if policy != "uniform":
            if stats is None:
                raise ValueError(f"policy={policy!r} reads per-sample statistics: pass stats=StatsTable(...)")
            if not shuffle:
                raise ValueError(f"policy={policy!r} draws samples at random; it needs shuffle=True")
        if stats is not None:
            if not isinstance(stats, StatsTable):
                raise TypeError(f"stats: expected a StatsTable, got {type(stats).__name__}")
            if stats.num_samples != num_samples:
                raise ValueError(f"stats: the table has {stats.num_samples} rows but the dataset {num_samples} samples")
        if not (isinstance(floor, (int, float)) and 0.0 < float(floor) <= 1.0):
            raise ValueError(f"floor: expected a share in (0, 1], got {floor!r}")
        if not (isinstance(num_replicas, int) and num_replicas >= 1):
            raise ValueError(f"num_replicas: expected a positive int, got {num_replicas!r}")
        if not (isinstance(rank, int) and 0 <= rank < num_replicas):
            raise ValueError(f"rank: expected an int in [0, {num_replicas}), got {rank!r}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch_tensor = epoch if epoch is not None else shared_epoch()
        self.policy = policy
        self.stats = stats
        self.floor = float(floor)
        self.weak_modality = weak_modality
        if weak_modality is not None and stats is not None:
            stats.modality_index(weak_modality)  # fail early on an unknown name
        self.num_replicas = num_replicas
        self.rank = rank
        self.current_plan: EpochPlan | None = None
        self._yielded = 0
        self._resume: _Resume | None = None
        self._bounds_cache = batch_bounds(self.num_samples, self.batch_size, num_replicas, rank, drop_last)

    # -- epoch -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self.epoch_tensor)

    def set_epoch(self, epoch: int) -> None:
        self.epoch_tensor.fill_(int(epoch))

    # -- planning --------------------------------------------------------------------------
    def plan_epoch(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one) from the table as it is now."""
        epoch = self.epoch if epoch is None else int(epoch)
        snapshot, weak, updates = None, -1, -1
        if self.stats is not None:
            self.stats.flush()
            updates = self.stats.num_updates
        if self.policy == "hard" and self.stats is not None:
            snapshot = self.stats.similarity.clone()
        elif self.policy == "weak_modality" and self.stats is not None:
            if self.weak_modality is not None:
                weak = self.stats.modality_index(self.weak_modality)
            else:
                weak = -1 if (chosen := choose_weak_modality(self.stats.confidence)) is None else chosen
            if weak >= 0:
                snapshot = self.stats.confidence[weak].clone()
        return plan_from_snapshot(
            self.num_samples, epoch, self.seed, self.policy, snapshot, self.floor, weak, self.shuffle, updates
        )

    def epoch_order(self) -> torch.Tensor:
        """The ``int64`` global order of the current epoch (sample id per slot)."""
        return self.plan_epoch().order.long()

    def importance_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """``1 / (N p_i)`` of the epoch being iterated for each id, float32 on ``ids.device``.

        Multiply each aligned sample's loss by it (and each misaligned row's by
        :func:`pair_importance_weights`) to keep the expected loss of a prioritised epoch
        equal to that of a uniform one. All ones under ``uniform``.
        """
        if self.current_plan is None:
            if self.policy == "uniform":
                return torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
            raise RuntimeError("importance_weights: no epoch planned yet; iterate the loader first")
        return self.current_plan.importance_weights(ids)

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        epoch, resume, self._resume = self.epoch, self._resume, None
        start = 0
        if resume is not None and resume.epoch == epoch:
            plan = plan_from_snapshot(
                self.num_samples,
                epoch,
                self.seed,
                self.policy,
                resume.snapshot,
                self.floor,
                resume.weak_modality,
                self.shuffle,
                resume.snapshot_updates,
            )
            start = resume.yielded
        else:
            plan = self.plan_epoch(epoch)
        self.current_plan = plan
        self._yielded = start
        return self._batches(plan.order, start)

    def _batches(self, order: torch.Tensor, start: int) -> Iterator[list[int]]:
        for begin, end in self._bounds_cache[start:]:
            # Count before yielding: StatefulDataLoader snapshots right after each dispatch.
            self._yielded += 1
            yield order[begin:end].tolist()

    def _bounds(self) -> list[tuple[int, int]]:
        return list(self._bounds_cache)

    def __len__(self) -> int:
        return len(self._bounds_cache)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch plus what the plan was drawn from, in ``O(1)``.

        torchdata's ``StatefulDataLoader`` calls this after every dispatched batch; the
        snapshot tensor is shared by reference, never copied, as it never changes.
        """
        plan = self.current_plan
        return {
            "format": _FORMAT,
            "epoch": self.epoch if plan is None else plan.epoch,
            "yielded": self._yielded if plan is not None else 0,
            "planned": plan is not None,
            "snapshot": None if plan is None else plan.snapshot,
            "weak_modality": -1 if plan is None else plan.weak_modality,
            "snapshot_updates": -1 if plan is None else plan.snapshot_updates,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "policy": self.policy,
            "floor": self.floor,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume where :meth:`state_dict` was taken: the next iterator yields exactly the
        batches an uninterrupted run would have yielded after it.

        The epoch is restored too (the pair plans of the collate step depend on it), unless
        the saved epoch had been completed: then nothing is pending and the next epoch is
        whatever :meth:`set_epoch` says. A later ``set_epoch`` to another epoch discards the
        pending position.
        """
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state['format']: expected {_FORMAT!r} (a MidasBatchSampler.state_dict()), got {got!r}")
        for key in ("num_samples", "batch_size", "num_replicas", "drop_last", "shuffle", "seed", "policy", "floor"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"state[{key!r}]: the checkpoint has {state.get(key)!r}, this sampler {getattr(self, key)!r}; "
                    "exact resume needs the same dataset, batch size, world size, seed and policy"
                )
        epoch, yielded = state.get("epoch"), state.get("yielded")
        if not isinstance(epoch, int) or not isinstance(yielded, int) or yielded < 0:
            raise ValueError(f"state['epoch'], state['yielded']: expected ints, got {epoch!r}, {yielded!r}")
        snapshot = state.get("snapshot")
        if snapshot is not None and (
            not isinstance(snapshot, torch.Tensor)
            or tuple(snapshot.shape) != (self.num_samples,)
            or not snapshot.dtype.is_floating_point
        ):
            raise ValueError(f"state['snapshot']: expected None or a float tensor of shape [{self.num_samples}]")
        self._resume = None
        if not state.get("planned") or yielded >= len(self):
            return
        self._resume = _Resume(
            epoch, yielded, snapshot, int(state.get("weak_modality", -1)), int(state.get("snapshot_updates", -1))
        )
        self.set_epoch(epoch)


class DistributedMidasBatchSampler(MidasBatchSampler):
    """The rank-aware sampler for plain DDP loops (``torchrun`` + your own loop).

    The same global plan on every rank, each rank yielding its disjoint share, with the
    same number of batches on every rank. ``num_replicas`` and ``rank`` default to
    ``torch.distributed``'s world size and rank. Do not give it to Lightning or Accelerate,
    which would shard it again (docs/feedback.md says which sampler goes where).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "DistributedMidasBatchSampler: torch.distributed is not initialised; call "
                    "init_process_group first or pass num_replicas= and rank="
                )
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        super().__init__(num_samples, batch_size, num_replicas=num_replicas, rank=rank, **kwargs)
