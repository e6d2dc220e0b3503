"""Weak-modality weighting: the alpha controller of MIDAS (paper section 3.4).

``alpha`` holds one loss weight per modality, all starting at 1. After every batch of
misaligned rows the controller finds the weak modality ``m^`` (lowest mean normalized
unimodal confidence) and nudges ``alpha[m^]`` by ``eta`` in the direction that closes the
gap between how much the unimodal heads trust that modality (``c~``) and how much the
fusion head does (``q``). Nothing else changes and alpha is never reset between epochs.

The controller is an ``nn.Module`` whose state is buffers (alpha, the statistic gathered
since the last step, the step count): it moves with ``.to(device)``, is saved by
``state_dict()``, and all its updates are tensor operations on the statistics' device, so a
training step on a GPU never waits for the host. Under ``torch.distributed`` each call's
statistic is summed over the ranks with one all-reduce, so every rank takes the same step
and holds the same alpha (a no-op without a process group).

A step has two halves: :meth:`accumulate` adds a batch's statistic (sums of ``c~`` and
``c~ - q`` over misaligned rows, and their count), :meth:`step` turns what was gathered into
one move of alpha. :meth:`update` does both. Summing before stepping is what makes one step
per optimizer step possible under gradient accumulation: the sign of a summed statistic is
the sign of the mean over all the micro-batches' rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .distributed import all_reduce_sum

__all__ = ["WeakModalityController", "VARIANTS", "alpha_step"]

VARIANTS = ("paper", "reference")
_FORMAT = "midas_data.WeakModalityController/2"


def alpha_step(
    weights: torch.Tensor,
    weak: torch.Tensor,
    totals: torch.Tensor,
    *,
    eta: float,
    alpha_max: float | None,
    variant: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One controller step from summed statistics: the new ``(weights, weak)``.

    ``totals`` is ``[2M + 1]``. Paper: ``sum_K c~`` ``[M]``, ``sum_K (c~ - q)`` ``[M]``, ``K``;
    only ``weights[m^]`` moves, ``m^ = argmin sum c~`` (the means' argmin), by
    ``eta * sign(sum (c~ - q)[m^])``. Reference (two modalities): sums of the raw aligned
    unimodal confidences ``[2]``, of the fusion probabilities on each component's source
    class ``[2]``, and ``K``; the scalar weight grows when the fusion head leans further
    towards the strong modality than the unimodal heads do. ``K = 0`` leaves everything as
    it is. Pure: no state, no host synchronisation.
    """
    m = (totals.shape[0] - 1) // 2
    any_rows = totals[-1] > 0
    if variant == "paper":
        chosen = totals[:m].argmin()
        direction = torch.sign(totals[m : 2 * m].gather(0, chosen.view(1))) * any_rows
        step = torch.zeros_like(weights).scatter(0, chosen.view(1), (eta * direction).to(weights.dtype))
        return (weights + step).clamp(min=1.0, max=alpha_max), weak
    uni_ratio = totals[0] / totals[1].clamp_min(1e-12)
    fused_ratio = totals[2] / totals[3].clamp_min(1e-12)
    first_strong = uni_ratio > 1
    leans_strong = torch.where(first_strong, fused_ratio > uni_ratio, fused_ratio < uni_ratio)
    step = torch.where(leans_strong, eta, -eta) * any_rows
    new_weak = torch.where(any_rows, first_strong.long(), weak)
    return (weights + step.to(weights.dtype)).clamp(min=1.0, max=alpha_max), new_weak


class WeakModalityController(nn.Module):
    """Keeps and updates the weak-modality weights ``alpha``.

    Args:
        num_modalities: ``M``.
        eta: step size (0.05 in every experiment of the paper).
        alpha_max: upper clip of alpha (the reference code uses 10 on Kinetics-Sounds);
            ``None`` means no upper clip.
        variant: ``"paper"`` — one alpha per modality, only ``alpha[m^]`` moves by
            ``eta * sign(mean(c~^m^ - q^m^))``, clipped to ``[1, alpha_max]``.
            ``"reference"`` — the authors' code for two modalities: one scalar alpha applied
            to whichever modality is weak in the current batch (by the ratio of batch means
            of raw unimodal confidences, summed over the ranks), moved by comparing that
            ratio with the fusion head's ratio of mean probabilities on the two source classes.
        sync: sum each call's statistic over the ranks of ``process_group`` (default: the
            whole world) when ``torch.distributed`` is initialised, so alpha is one value
            across ranks. Every rank must then call :meth:`accumulate` (or :meth:`update`)
            at every step (with zero rows where it has none), as the objective does.
        process_group: the group to reduce over; ``None`` is the default group.

    Buffers (in ``state_dict()``, moved by ``.to()``): ``weights`` (alpha as stored: ``[M]``,
    or ``[1]`` for the reference variant's scalar), ``weak`` (the modality the scalar applies
    to), ``pending`` (the statistic gathered since the last step) and ``steps``.
    """

    weights: torch.Tensor
    weak: torch.Tensor
    pending: torch.Tensor
    steps: torch.Tensor

    def __init__(
        self,
        num_modalities: int,
        eta: float = 0.05,
        alpha_max: float | None = 10.0,
        variant: str = "paper",
        *,
        sync: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        if num_modalities < 2:
            raise ValueError(f"num_modalities: expected at least 2, got {num_modalities}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if variant == "reference" and num_modalities != 2:
            raise ValueError("variant='reference' is defined for two modalities only")
        if eta < 0:
            raise ValueError(f"eta: expected a non-negative step, got {eta}")
        if alpha_max is not None and alpha_max < 1:
            raise ValueError(f"alpha_max: expected a value >= 1 (alpha starts at 1), got {alpha_max}")
        self.num_modalities = num_modalities
        self.eta = float(eta)
        self.alpha_max = None if alpha_max is None else float(alpha_max)
        self.variant = variant
        self.sync = sync
        self.process_group = process_group
        self.register_buffer("weights", torch.ones(num_modalities if variant == "paper" else 1))
        self.register_buffer("weak", torch.zeros((), dtype=torch.long))
        self.register_buffer("pending", torch.zeros(2 * num_modalities + 1))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    # -- state -------------------------------------------------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        """Per-modality weights ``[M]`` as applied to the misaligned loss."""
        return self.alpha_for(self.weak)

    def alpha_for(self, weak: torch.Tensor) -> torch.Tensor:
        """``[M]`` weights with the reference variant's scalar placed on modality ``weak``."""
        if self.variant == "paper":
            return self.weights
        ones = torch.ones(self.num_modalities, dtype=self.weights.dtype, device=self.weights.device)
        return ones.scatter(0, weak.to(self.weights.device).view(1), self.weights)

    def loss_weights(self, aligned_confidences: torch.Tensor | None = None) -> torch.Tensor:
        """The ``alpha [M]`` for a batch: the reference variant's scalar goes to the modality
        that is weak in ``aligned_confidences`` ``[B, M]`` (this rank's batch only; the
        objective uses the rank-summed statistic instead). Changes nothing."""
        if self.variant == "reference" and aligned_confidences is not None and aligned_confidences.numel():
            sums = aligned_confidences.float().sum(dim=0)
            return self.alpha_for(self.weak_from(sums))
        return self.alpha

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "variant": self.variant, "num_modalities": self.num_modalities}

    def set_extra_state(self, state: Any) -> None:
        self._check_kind(state)

    def _check_kind(self, state: Any) -> None:
        got = (state.get("variant"), state.get("num_modalities")) if isinstance(state, Mapping) else (None, None)
        if got != (self.variant, self.num_modalities):
            raise ValueError(
                f"controller state is for variant={got[0]!r} with {got[1]} modalities; this controller is "
                f"variant={self.variant!r} with {self.num_modalities}"
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a ``state_dict()``; a checkpoint of the earlier format (``alpha``, ``weak``,
        ``variant``, ``num_modalities``) is converted (nothing was pending then)."""
        if "alpha" in state_dict and "weights" not in state_dict:
            self._check_kind(state_dict)
            alpha = torch.as_tensor(state_dict["alpha"], dtype=torch.float32)
            if alpha.shape != self.weights.shape:
                raise ValueError(f"alpha: expected shape {tuple(self.weights.shape)}, got {tuple(alpha.shape)}")
            state_dict = {
                "weights": alpha,
                "weak": torch.as_tensor(state_dict["weak"], dtype=torch.long),
                "pending": torch.zeros_like(self.pending),
                "steps": torch.zeros_like(self.steps),
                "_extra_state": self.get_extra_state(),
            }
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- update ------------------------------------------------------------------------
    def weak_modality(self, shares: torch.Tensor) -> torch.Tensor:
        """``m^ = argmin_m mean_K(c~^m)`` as a 0-dim tensor (paper variant)."""
        return shares.mean(dim=0).argmin()

    @torch.no_grad()
    def statistic(
        self,
        shares: torch.Tensor,
        fusion_ratio: torch.Tensor,
        *,
        aligned_confidences: torch.Tensor | None = None,
        fusion_source_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One batch's statistic ``[2M + 1]`` (see :func:`alpha_step`), summed over the ranks
        when syncing: the only collective of a step, asynchronous on CUDA.

        Args:
            shares: normalized unimodal confidences ``c~`` ``[K, M]``.
            fusion_ratio: the fusion head's normalized confidences ``q`` ``[K, M]``.
            aligned_confidences: raw unimodal confidences of the aligned batch on the own
                label ``[B, M]`` (reference variant only).
            fusion_source_probs: fusion probabilities of the misaligned rows on each
                component's source class ``[K, M]`` (reference variant only).
        """
        if shares.shape != fusion_ratio.shape or shares.dim() != 2 or shares.shape[1] != self.num_modalities:
            raise ValueError(
                f"shares {tuple(shares.shape)} and fusion_ratio {tuple(fusion_ratio.shape)}: expected "
                f"the same shape [K, {self.num_modalities}]"
            )
        shares, fusion_ratio = shares.float(), fusion_ratio.float()
        count = shares.new_full((1,), len(shares))
        if self.variant == "paper":
            local = torch.cat([shares.sum(dim=0), (shares - fusion_ratio).sum(dim=0), count])
        else:
            if aligned_confidences is None or fusion_source_probs is None:
                raise ValueError("variant='reference' needs aligned_confidences and fusion_source_probs")
            # Ratios of batch means, modality 0 over modality 1, as in the authors' code (the
            # counts cancel, so sums serve, and sums add up across ranks and micro-batches).
            local = torch.cat([aligned_confidences.float().sum(dim=0), fusion_source_probs.float().sum(dim=0), count])
        return all_reduce_sum(local, self.process_group) if self.sync else local

    def weak_from(self, totals: torch.Tensor) -> torch.Tensor:
        """The modality the reference variant's scalar applies to for a batch with these
        (rank-summed) statistics: modality 1 when modality 0's mean confidence is higher."""
        return (totals[0] > totals[1]).long()

    @torch.no_grad()
    def accumulate(self, totals: torch.Tensor) -> None:
        """Add a statistic from :meth:`statistic` to what the next :meth:`step` uses."""
        self._follow(totals.device)
        self.pending.add_(totals.to(self.pending.dtype))

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Move alpha once from everything accumulated since the last step; returns alpha."""
        weights, weak = alpha_step(
            self.weights, self.weak, self.pending, eta=self.eta, alpha_max=self.alpha_max, variant=self.variant
        )
        self.weights.copy_(weights)
        self.weak.copy_(weak)
        self.pending.zero_()
        self.steps.add_(1)
        return self.alpha

    def update(
        self,
        shares: torch.Tensor,
        fusion_ratio: torch.Tensor,
        *,
        aligned_confidences: torch.Tensor | None = None,
        fusion_source_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`statistic`, :meth:`accumulate` and :meth:`step` after one batch of ``K``
        misaligned rows; returns the new ``alpha [M]``. A batch with no misaligned rows (on
        any rank) leaves alpha unchanged."""
        totals = self.statistic(
            shares, fusion_ratio, aligned_confidences=aligned_confidences, fusion_source_probs=fusion_source_probs
        )
        self.accumulate(totals)
        return self.step()

    def _apply(self, fn: Any, recurse: bool = True) -> WeakModalityController:
        # .half() / .to(bfloat16) on a model holding the objective (Lightning's "bf16-true")
        # must not round alpha to 8 bits: the buffers follow a move, never a dtype change.
        kept = {name: getattr(self, name) for name in ("weights", "pending")}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after.dtype != before.dtype:
                setattr(self, name, before.to(after.device))
        return self

    def _follow(self, device: torch.device) -> None:
        """Buffers go where the statistics are (a trainer may move the model only)."""
        if self.weights.device != device:
            self.to(device)
