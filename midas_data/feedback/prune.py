"""The ``prune`` sampler policy: skip part of what the model already knows, unbiasedly.

Dynamic data pruning with rescaling (the scheme of InfoBatch, Qin et al., ICLR 2024): at
every epoch but the last ``tail`` fraction, the samples whose score (a column of the stats
table, by default the aligned fusion loss) is below the mean score of the seen samples
are the *low-score* set ``L``; ``round(ratio * |L|)`` of them, drawn at random, are left
out of the epoch, and the kept ones of ``L`` get importance weight ``|L| / (|L| - dropped)``
(about ``1 / (1 - ratio)``); every other sample is kept with weight 1. So for any
per-sample loss ``l_i``, ``E[sum over the epoch of w_i l_i] = sum_i l_i`` exactly: the
weighted epoch is an unbiased estimate of the full one. Never-seen samples (``NaN``
score) are always kept. The plan is a pure function of ``(seed, epoch, score snapshot)``,
identical on every rank and again on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .epochs import EpochCursor, SavedPosition
from .planning import EpochPlan, _generator, index_dtype, stat_moments, stat_values

__all__ = ["PrunePolicy", "PRUNE_SCORES", "prune_plan", "prune_policy_of", "upcoming_epoch"]

PRUNE_SCORES = ("loss", "misaligned_loss", "similarity")


@dataclass(frozen=True)
class PrunePolicy:
    """Options of ``policy="prune"`` (pass an instance as ``policy=`` to ``midas_loader``
    or :class:`~midas_data.feedback.sampler.MidasBatchSampler`).

    Args:
        ratio: share of the low-score samples left out of a pruned epoch, in ``[0, 1)``.
        tail: share of the epochs, at the end, trained on the full data, in ``[0, 1]``:
            the last ``ceil(tail * num_epochs)`` epochs.
        score: the stats-table column that ranks samples (``"loss"``: the aligned fusion
            loss; ``"misaligned_loss"``; ``"similarity"``).
        num_epochs: the training's epochs (needed for the tail; may be ``None`` when
            ``tail == 0``). Epochs at or after ``num_epochs`` are full.

    Defaults: InfoBatch's published ``ratio=0.5`` and a tail of an eighth, fixed before any
    run here; docs/feedback.md has what they gave on the glyphs data.
    """

    ratio: float = 0.5
    tail: float = 0.125
    score: str = "loss"
    num_epochs: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0.0 <= float(self.ratio) < 1.0):
            raise ValueError(f"prune ratio: expected a share in [0, 1), got {self.ratio!r}")
        if not (isinstance(self.tail, (int, float)) and 0.0 <= float(self.tail) <= 1.0):
            raise ValueError(f"prune tail: expected a share of the epochs in [0, 1], got {self.tail!r}")
        if self.score not in PRUNE_SCORES:
            raise ValueError(f"prune score: expected one of {PRUNE_SCORES}, got {self.score!r}")
        if self.num_epochs is not None and (
            isinstance(self.num_epochs, bool) or not isinstance(self.num_epochs, int) or self.num_epochs < 1
        ):
            raise ValueError(f"num_epochs: expected a positive int, got {self.num_epochs!r}")
        if self.num_epochs is None and self.tail > 0:
            raise ValueError(
                "policy='prune' trains the last `tail` share of the epochs on the full data, so it needs the "
                "number of epochs: PrunePolicy(num_epochs=...) (or MidasBatchSampler(num_epochs=...)), or tail=0"
            )

    @property
    def pruned_epochs(self) -> int | None:
        """Epochs ``0 .. pruned_epochs - 1`` may be pruned; ``None``: all of them."""
        if self.num_epochs is None:
            return None
        return self.num_epochs - math.ceil(self.tail * self.num_epochs - 1e-9)

    def prunes(self, epoch: int) -> bool:
        limit = self.pruned_epochs
        return self.ratio > 0 and (limit is None or epoch < limit)

    def as_state(self) -> list[object]:
        """The options as plain values (a checkpoint's layout check)."""
        return [float(self.ratio), float(self.tail), self.score, self.num_epochs]


def prune_plan(
    num_samples: int,
    epoch: int,
    seed: int,
    options: PrunePolicy,
    snapshot: torch.Tensor | None,
    snapshot_updates: int = -1,
) -> EpochPlan:
    """The plan of a ``prune`` epoch (module docstring): kept ids in a random order, with the
    snapshot and the threshold the importance weights need. A full epoch (the tail, nothing
    seen yet, nothing to drop) is the uniform plan: the same permutation as ``uniform``."""
    generator = _generator(seed, epoch)
    permutation = torch.randperm(num_samples, generator=generator, dtype=index_dtype(num_samples))
    uniform = EpochPlan(epoch, "uniform", permutation, snapshot_updates=snapshot_updates)
    if snapshot is None or not options.prunes(epoch):
        return uniform
    seen, total = stat_moments(snapshot)
    if seen == 0:
        return uniform
    threshold = total / seen
    values = stat_values(snapshot.detach().cpu(), snapshot.dtype != torch.float16)
    low = (values < threshold).nonzero().squeeze(1)  # NaN (never seen) compares False: kept
    # At least one low-score sample stays, to carry the set's weight (a tiny set at a high
    # ratio would otherwise be dropped whole, and the weighted epoch lose its share).
    dropped = min(int(options.ratio * low.numel() + 0.5), low.numel() - 1)
    if dropped == 0:
        return uniform
    pick = torch.randperm(low.numel(), generator=generator)[:dropped]
    keep = torch.ones(num_samples, dtype=torch.bool)
    keep[low[pick]] = False
    order = permutation[keep[permutation.long()]]
    plan = EpochPlan(epoch, "prune", order, snapshot, snapshot_updates=snapshot_updates)
    plan.threshold = threshold
    plan.low_keep = (low.numel() - dropped) / low.numel()
    return plan


def upcoming_epoch(cursor: EpochCursor) -> tuple[int, SavedPosition | None]:
    """What the cursor's next ``begin()`` will choose, without moving it: the epoch and
    the saved position it continues (or ``None``); epoch ``-1`` means "the last pass was a
    peek: its plan again"."""
    saved = cursor.saved
    if saved is not None and not (cursor.pinned and cursor.epoch != saved.epoch):
        return saved.epoch, saved
    if cursor.started and not cursor.pinned:
        return (cursor.epoch + 1, None) if cursor.last_pass_counts else (-1, None)
    return cursor.epoch, None


def prune_policy_of(policy: object, num_epochs: int | None) -> PrunePolicy | None:
    """The :class:`PrunePolicy` that ``policy=`` (and ``num_epochs=``) ask for, or ``None``
    when the policy is not ``prune``: a ``PrunePolicy`` instance, or ``"prune"`` with
    ``num_epochs`` (the other options at their defaults); the sampler's and the stream
    stage's ``policy=`` and ``num_epochs=`` read the same way."""
    if isinstance(policy, PrunePolicy):
        if num_epochs is not None and policy.num_epochs != num_epochs:
            raise ValueError(
                f"num_epochs={num_epochs!r} disagrees with PrunePolicy(num_epochs={policy.num_epochs!r}); give it once"
            )
        return policy
    if policy == "prune":
        return PrunePolicy(num_epochs=num_epochs)
    if num_epochs is not None:
        raise ValueError("num_epochs: only for policy='prune' (or give it to PrunePolicy)")
    return None
