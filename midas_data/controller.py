"""Weak-modality weighting: the alpha controller of MIDAS (paper section 3.4).

``alpha`` holds one loss weight per modality, all starting at 1. After every batch of
misaligned rows the controller finds the weak modality ``m^`` (lowest mean normalized
unimodal confidence) and nudges ``alpha[m^]`` by ``eta`` in the direction that closes the
gap between how much the unimodal heads trust that modality (``c~``) and how much the
fusion head does (``q``). Nothing else changes and alpha is never reset between epochs.

All updates are tensor operations on the device of the statistics, so a training step on
a GPU never waits for the host. Under ``torch.distributed`` the per-step statistic is summed
over the ranks with one all-reduce before the update, so every rank takes the same step and
holds the same alpha (a no-op without a process group).
"""

from __future__ import annotations

from typing import Any

import torch

from .distributed import all_reduce_sum

__all__ = ["WeakModalityController", "VARIANTS"]

VARIANTS = ("paper", "reference")


class WeakModalityController:
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
            of raw unimodal confidences), moved by comparing that ratio with the fusion
            head's ratio of mean probabilities on the two source classes.
        sync: sum the per-step statistic over the ranks of ``process_group`` (default: the
            whole world) when ``torch.distributed`` is initialised, so alpha is one value
            across ranks. Every rank must then call :meth:`update` at every step (with
            zero rows where it has none), as the objective does.
        process_group: the group to reduce over; ``None`` is the default group.
    """

    def __init__(
        self,
        num_modalities: int,
        eta: float = 0.05,
        alpha_max: float | None = 10.0,
        variant: str = "paper",
        *,
        sync: bool = True,
        process_group: object | None = None,
    ) -> None:
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
        # Paper: one weight per modality. Reference: one scalar, kept in slot 0.
        self._alpha = torch.ones(num_modalities if variant == "paper" else 1)
        # The modality the scalar alpha currently applies to (reference variant).
        self._weak = torch.zeros((), dtype=torch.long)

    # -- state -------------------------------------------------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        """Per-modality weights ``[M]`` as applied to the misaligned loss."""
        if self.variant == "paper":
            return self._alpha
        weights = torch.ones(self.num_modalities, dtype=self._alpha.dtype, device=self._alpha.device)
        return weights.scatter(0, self._weak.view(1), self._alpha)

    def loss_weights(self, aligned_confidences: torch.Tensor | None = None) -> torch.Tensor:
        """The ``alpha [M]`` to apply to this batch's misaligned loss.

        The paper variant uses its per-modality weights as they are. The reference variant
        first decides from this batch's raw unimodal confidences ``[B, M]`` which modality
        is weak and applies its scalar alpha there.
        """
        if self.variant == "reference" and aligned_confidences is not None and aligned_confidences.numel():
            if self._alpha.device != aligned_confidences.device:
                self.to(aligned_confidences.device)
            means = aligned_confidences.mean(dim=0)
            # Modality 1 is weak exactly when modality 0's mean confidence is higher.
            self._weak = (means[0] > means[1]).long()
        return self.alpha

    def to(self, device: torch.device | str) -> WeakModalityController:
        self._alpha = self._alpha.to(device)
        self._weak = self._weak.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self._alpha.detach().cpu().clone(),
            "weak": self._weak.detach().cpu().clone(),
            "variant": self.variant,
            "num_modalities": self.num_modalities,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("variant") != self.variant or state.get("num_modalities") != self.num_modalities:
            raise ValueError(
                f"controller state is for variant={state.get('variant')!r} with "
                f"{state.get('num_modalities')} modalities; this controller is variant="
                f"{self.variant!r} with {self.num_modalities}"
            )
        alpha = torch.as_tensor(state["alpha"], dtype=torch.float32)
        if alpha.shape != self._alpha.shape:
            raise ValueError(f"alpha: expected shape {tuple(self._alpha.shape)}, got {tuple(alpha.shape)}")
        self._alpha = alpha.to(self._alpha.device)
        self._weak = torch.as_tensor(state["weak"], dtype=torch.long).to(self._weak.device)

    # -- update ------------------------------------------------------------------------
    def weak_modality(self, shares: torch.Tensor) -> torch.Tensor:
        """``m^ = argmin_m mean_K(c~^m)`` as a 0-dim tensor (paper variant)."""
        return shares.mean(dim=0).argmin()

    @torch.no_grad()
    def update(
        self,
        shares: torch.Tensor,
        fusion_ratio: torch.Tensor,
        *,
        aligned_confidences: torch.Tensor | None = None,
        fusion_source_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step after a batch of ``K`` misaligned rows; returns the new ``alpha [M]``.

        Args:
            shares: normalized unimodal confidences ``c~`` ``[K, M]``.
            fusion_ratio: the fusion head's normalized confidences ``q`` ``[K, M]``.
            aligned_confidences: raw unimodal confidences of the aligned batch on the own
                label ``[B, M]`` (reference variant only).
            fusion_source_probs: fusion probabilities of the misaligned rows on each
                component's source class ``[K, M]`` (reference variant only).
        A batch with no misaligned rows leaves alpha unchanged (on every rank: the step
        follows the rows of all ranks together).
        """
        if shares.shape != fusion_ratio.shape or shares.dim() != 2 or shares.shape[1] != self.num_modalities:
            raise ValueError(
                f"shares {tuple(shares.shape)} and fusion_ratio {tuple(fusion_ratio.shape)}: expected "
                f"the same shape [K, {self.num_modalities}]"
            )
        if self._alpha.device != shares.device:
            self.to(shares.device)
        if self.variant == "paper":
            # Sums over the misaligned rows; the means' argmin and sign are the sums'.
            totals = self._reduce(
                torch.cat([shares.sum(dim=0), (shares - fusion_ratio).sum(dim=0), shares.new_full((1,), len(shares))])
            )
            m = self.num_modalities
            weak = totals[:m].argmin()
            direction = torch.sign(totals[m : 2 * m][weak]) * (totals[-1] > 0)
            step = torch.zeros_like(self._alpha).scatter(0, weak.view(1), (self.eta * direction).view(1))
            self._alpha = self._clip(self._alpha + step)
            return self.alpha
        if aligned_confidences is None or fusion_source_probs is None:
            raise ValueError("variant='reference' needs aligned_confidences and fusion_source_probs")
        # Ratios of batch means, modality 0 over modality 1, as in the authors' code (the
        # counts cancel, so sums serve).
        totals = self._reduce(
            torch.cat(
                [
                    aligned_confidences.sum(dim=0).to(shares.dtype),
                    fusion_source_probs.sum(dim=0).to(shares.dtype),
                    shares.new_full((1,), len(shares)),
                ]
            )
        )
        uni_ratio = totals[0] / totals[1].clamp_min(1e-12)
        fused_ratio = totals[2] / totals[3].clamp_min(1e-12)
        first_strong = uni_ratio > 1
        # Alpha grows when the fusion head leans further towards the strong modality than
        # the unimodal heads do.
        leans_strong = torch.where(first_strong, fused_ratio > uni_ratio, fused_ratio < uni_ratio)
        step = torch.where(leans_strong, self.eta, -self.eta) * (totals[-1] > 0)
        self._weak = torch.where(totals[-1] > 0, first_strong.long(), self._weak)
        self._alpha = self._clip(self._alpha + step)
        return self.alpha

    def _reduce(self, totals: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(totals, self.process_group) if self.sync else totals

    def _clip(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha.clamp(min=1.0, max=self.alpha_max)
