"""``MidasObjective``: the complete MIDAS training loss (paper section 3.6).

    L_align = CE(p_i, y_i)                              aligned rows, fusion head
    L_uni   = sum_m CE(p_i^m, y_i)                      aligned rows, unimodal heads
    L_mis   = w * (-sum_m alpha_m c~^m log p~[y_k(m)])  misaligned rows
    L_total = mean_B(L_align + L_uni) + lambda * mean_K(L_mis)

During the first ``warmup_epochs`` only ``L_uni`` is trained so that the unimodal
confidences mean something before they label anything. The epoch is the one the batch was
planned for (``MidasBatch.epoch``), so a loop that never calls ``set_epoch`` still leaves
warm-up on time. Confidences, soft-label shares,
similarities and ``q`` are constants; ``L_mis`` trains the fusion head and, through the
recombined features, the encoders.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from . import functional as MF
from .controller import VARIANTS, WeakModalityController
from .data.batch import MidasBatch
from .data.diagnose import nonfinite_inputs
from .distributed import is_distributed
from .errors import MidasDataError, MidasDataWarning
from .models import MultimodalOutput, unwrap_model

__all__ = ["MidasObjective"]

Fuse = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


class MidasObjective:
    """The MIDAS loss with its weak-modality controller.

    Args:
        num_classes: ``C``.
        modalities: modality names, in the order of the pair plan's columns.
        warmup_epochs: epochs ``E_w`` of unimodal-only training.
        lam: weight ``lambda`` of the misaligned loss (1 in the paper, 5 on Kinetics-Sounds).
        eta: alpha step size.
        alpha_max: upper clip of alpha; ``None`` for none.
        variant: ``"paper"`` (default) or ``"reference"``, the authors' code: mean instead of
            sum over the unimodal losses, and the scalar-alpha controller
            (see :class:`~midas_data.controller.WeakModalityController`).
        weak_modality_weighting: ablation switch; ``False`` keeps alpha at 1.
        hard_sample_weighting: ablation switch; ``False`` sets every hard weight to 1.
        validate: check shapes, label range and finiteness of the logits every step. Costs
            one device synchronisation per step; turn off once a pipeline is known good.
        follow_batch_epoch: take the epoch from each :class:`MidasBatch` (the epoch its
            plans were drawn for) rather than from :meth:`set_epoch`. ``set_epoch`` still
            sets the epoch for calls without a batch (``labels=``/``plan=``); a set epoch
            that disagrees with the batch's is warned about once.
        sync_alpha: sum the alpha controller's per-step statistic over the ranks of
            ``torch.distributed`` (one all-reduce per step, no host synchronisation; a no-op
            without a process group), so alpha is one value on every rank.
        process_group: the group to sync alpha over; ``None`` is the default group.

    Call it with the model's output on the aligned batch and either a :class:`MidasBatch`
    or ``labels`` and ``plan``; pass ``model`` (feature level: its ``fuse`` runs the fusion
    head on the recombined features; DDP, DataParallel and ``torch.compile`` wrappers are
    unwrapped), ``fuse`` (the fusion head itself) or ``misaligned_logits`` (input level:
    the fusion logits of the model run on the materialised misaligned inputs). It returns
    ``(loss, diagnostics)``; diagnostics are detached tensors (no host synchronisation)
    plus Python ints known on the host.
    """

    def __init__(
        self,
        num_classes: int,
        modalities: tuple[str, ...] | list[str],
        *,
        warmup_epochs: int = 0,
        lam: float = 1.0,
        eta: float = 0.05,
        alpha_max: float | None = 10.0,
        variant: str = "paper",
        weak_modality_weighting: bool = True,
        hard_sample_weighting: bool = True,
        validate: bool = True,
        follow_batch_epoch: bool = True,
        sync_alpha: bool = True,
        process_group: Any = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes: expected at least 2, got {num_classes}")
        modalities = tuple(modalities)
        if len(modalities) < 2 or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: expected at least two distinct names, got {modalities}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if warmup_epochs < 0 or lam < 0:
            raise ValueError(f"warmup_epochs and lam must be >= 0, got {warmup_epochs} and {lam}")
        self.num_classes = num_classes
        self.modalities = modalities
        self.warmup_epochs = warmup_epochs
        self.lam = float(lam)
        self.variant = variant
        self.weak_modality_weighting = weak_modality_weighting
        self.hard_sample_weighting = hard_sample_weighting
        self.validate = validate
        self.follow_batch_epoch = follow_batch_epoch
        self.controller = WeakModalityController(
            len(modalities), eta=eta, alpha_max=alpha_max, variant=variant, sync=sync_alpha, process_group=process_group
        )
        self.epoch = 0
        self._misaligned_tally = _MisalignedTally()
        self._set_epoch: int | None = None  # the last epoch given to set_epoch
        self._warned_epoch = False

    # -- state -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch for calls without a :class:`MidasBatch`; batches carry their own."""
        self.epoch = self._set_epoch = int(epoch)

    def _follow(self, batch: MidasBatch) -> None:
        planned = getattr(batch, "epoch", -1)
        if not self.follow_batch_epoch or planned < 0:
            return
        if self._set_epoch is not None and self._set_epoch != planned and not self._warned_epoch:
            self._warned_epoch = True
            warnings.warn(
                f"MidasObjective: set_epoch({self._set_epoch}) but the batch was planned for epoch {planned}; "
                "the objective follows the batch (the loader's epoch). Pass follow_batch_epoch=False to use "
                "set_epoch alone",
                stacklevel=3,
            )
        self.epoch = planned

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    @property
    def alpha(self) -> torch.Tensor:
        return self.controller.alpha

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "controller": self.controller.state_dict(), "modalities": list(self.modalities)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state_modalities(state, self.modalities)
        self.controller.load_state_dict(state["controller"])
        self.epoch = int(state["epoch"])

    # -- the loss ----------------------------------------------------------------------
    def __call__(
        self,
        output: MultimodalOutput,
        batch: MidasBatch | None = None,
        *,
        labels: torch.Tensor | None = None,
        plan: torch.Tensor | None = None,
        anchors: torch.Tensor | None = None,
        num_unpaired: int = 0,
        model: torch.nn.Module | None = None,
        fuse: Fuse | None = None,
        misaligned_logits: torch.Tensor | None = None,
        sample_weights: torch.Tensor | None = None,
        update_alpha: bool = True,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of one step and its diagnostics.

        ``sample_weights`` ``[B]`` are importance weights ``1 / (N p_i)`` from a prioritised
        sampler (``loader.batch_sampler.importance_weights(batch.ids)``): each aligned
        row's loss is multiplied by its weight and each misaligned row's by the product of
        its distinct sources' weights, which keeps the expected loss that of uniform
        sampling. ``None`` means uniform sampling.
        """
        if batch is not None:
            if labels is not None or plan is not None:
                raise ValueError("pass either batch or labels/plan, not both")
            labels, plan, num_unpaired = batch.labels, batch.plan, batch.num_unpaired
            if tuple(batch.modalities) != self.modalities:
                raise ValueError(
                    f"batch.modalities {tuple(batch.modalities)} differ from the objective's {self.modalities}; "
                    "the plan's columns follow the loader's order: give midas_loader and MidasObjective the same "
                    "modality order"
                )
            self._follow(batch)
        if model is not None:
            if fuse is not None:
                raise ValueError("pass either model= or fuse=, not both")
            if misaligned_logits is None:
                fuse = _fusion_head(model)
        if labels is None:
            raise ValueError("labels: required (or pass a MidasBatch)")
        features = [output.features[m] for m in self._require(output.features, "output.features")]
        uni_logits = [
            output.unimodal_logits[m] for m in self._require(output.unimodal_logits, "output.unimodal_logits")
        ]
        fusion_logits = output.fusion_logits
        if self.validate:
            self._validate_aligned(features, uni_logits, fusion_logits, labels, batch)

        loss_uni_parts = torch.stack([F.cross_entropy(lg, labels, reduction="none") for lg in uni_logits], dim=1)
        loss_uni = loss_uni_parts.sum(dim=1) if self.variant == "paper" else loss_uni_parts.mean(dim=1)
        loss_align = F.cross_entropy(fusion_logits, labels, reduction="none")
        if sample_weights is not None:
            if sample_weights.shape != labels.shape:
                raise ValueError(
                    f"sample_weights: expected shape {list(labels.shape)} (one per aligned row), "
                    f"got {list(sample_weights.shape)}"
                )
            sample_weights = sample_weights.detach().to(loss_align.dtype)
            loss_uni, loss_align = loss_uni * sample_weights, loss_align * sample_weights
        with torch.no_grad():
            confidences = MF.gather_confidences([lg.float().softmax(dim=1) for lg in uni_logits], labels)

        diagnostics: dict[str, Any] = {
            "loss_align": loss_align.detach().mean(),
            "loss_uni": loss_uni.detach().mean(),
            "confidence": confidences.mean(dim=0),
            "warmup": self.in_warmup,
            "num_unpaired": int(num_unpaired),
            "per_sample": {"confidence": confidences},
        }
        if self.in_warmup:
            self._no_misaligned(labels, diagnostics)
            loss = loss_uni.mean()
            if is_distributed():
                # DDP (find_unused_parameters=False) needs a gradient for every parameter,
                # the fusion head's too: a zero one, which leaves warm-up training unchanged.
                loss = loss + 0.0 * loss_align.sum()
            return loss, diagnostics
        if plan is None:
            raise ValueError("plan: required after warm-up (or pass a MidasBatch)")
        batch_size = labels.shape[0]
        if self.validate:
            MF.check_plan(plan, batch_size)
            if plan.shape[1] != len(self.modalities):
                raise ValueError(f"plan: expected {len(self.modalities)} columns, got {plan.shape[1]}")
        loss = (loss_align + loss_uni).mean()
        self._misaligned_tally.count(self.epoch, int(plan.shape[0]), diagnostics)
        if plan.shape[0] == 0:
            self._no_misaligned(labels, diagnostics)
            diagnostics["loss_mis"] = loss.new_zeros(())
            if update_alpha and self.weak_modality_weighting:
                # Other ranks may have misaligned rows: take part in alpha's step all the same.
                empty = confidences.new_zeros((0, len(self.modalities)))
                self.controller.update(empty, empty, aligned_confidences=confidences, fusion_source_probs=empty)
            return loss, diagnostics

        if anchors is None:
            anchors = MF.plan_anchors(plan)
        # The recombined features serve both the fusion head (feature level) and the
        # hard-sample similarity: gather them once.
        swapped = MF.swap_features(features, plan) if fuse is not None or self.hard_sample_weighting else None
        mis_logits = self._misaligned_logits(swapped, plan, fuse, misaligned_logits)
        src_labels = labels[plan]
        # c^m of row k: the unimodal confidence of its modality-m source on that source's label.
        row_conf = confidences.gather(0, plan)
        replaced = MF.replaced_mask(plan, anchors)
        if self.hard_sample_weighting:
            originals = [f.index_select(0, anchors) for f in features]
            assert swapped is not None
            weights = MF.hard_sample_weights(originals, swapped, replaced)
        else:
            weights = torch.ones(plan.shape[0], dtype=row_conf.dtype, device=row_conf.device)
        if self.weak_modality_weighting:
            alpha = self.controller.loss_weights(confidences)
        else:
            alpha = torch.ones(len(self.modalities), device=row_conf.device)
        loss_rows = MF.misaligned_loss(mis_logits, row_conf, src_labels, alpha.to(row_conf.device), weights)
        if sample_weights is not None:
            loss_mis = (loss_rows * MF.pair_importance_weights(sample_weights, plan)).mean()
        else:
            loss_mis = loss_rows.mean()
        loss = loss + self.lam * loss_mis

        with torch.no_grad():
            shares = MF.normalized_confidences(row_conf)
            mis_probs = mis_logits.detach().float().softmax(dim=1)
            q = MF.fusion_confidence_ratio(mis_probs, src_labels)
            if update_alpha and self.weak_modality_weighting:
                self.controller.update(
                    shares,
                    q,
                    aligned_confidences=confidences,
                    fusion_source_probs=mis_probs.gather(1, src_labels),
                )
            per_anchor = _per_anchor_means(anchors, batch_size, [2.0 * weights - 3.0, loss_rows.detach()])
        diagnostics.update(
            {
                "loss_mis": loss_mis.detach(),
                "alpha": alpha.detach().clone(),
                "confidence_share": shares.mean(dim=0),
                "fusion_share": q.mean(dim=0),
                "weak_modality": shares.mean(dim=0).argmin(),
                "hard_weight": weights.mean(),
                "num_misaligned": int(plan.shape[0]),
            }
        )
        diagnostics["per_sample"].update(
            {"similarity": per_anchor[0], "misaligned_loss": per_anchor[1], "has_misaligned": per_anchor[2]}
        )
        return loss, diagnostics

    # -- helpers -----------------------------------------------------------------------
    def _require(self, mapping: Mapping[str, Any], name: str) -> tuple[str, ...]:
        missing = [m for m in self.modalities if m not in mapping]
        if missing:
            raise KeyError(f"{name}: missing modality {missing}; expected keys {list(self.modalities)}")
        return self.modalities

    def _misaligned_logits(
        self,
        swapped: list[torch.Tensor] | None,
        plan: torch.Tensor,
        fuse: Fuse | None,
        misaligned_logits: torch.Tensor | None,
    ) -> torch.Tensor:
        if (fuse is None) == (misaligned_logits is None):
            raise ValueError(
                "pass exactly one of fuse= (feature-level: the model's fusion head) or "
                "misaligned_logits= (input-level: fusion logits of the materialised misaligned inputs)"
            )
        if misaligned_logits is not None:
            if misaligned_logits.shape != (plan.shape[0], self.num_classes):
                raise ValueError(
                    f"misaligned_logits: expected shape [{plan.shape[0]}, {self.num_classes}] (one row per "
                    f"plan row), got {tuple(misaligned_logits.shape)}"
                )
            if self.validate and not bool(torch.isfinite(misaligned_logits).all()):
                raise ValueError("misaligned_logits: contains NaN or inf")
            return misaligned_logits
        assert fuse is not None and swapped is not None
        return fuse(dict(zip(self.modalities, swapped)))

    def _no_misaligned(self, labels: torch.Tensor, diagnostics: dict[str, Any]) -> None:
        """Fill the diagnostics of a step without misaligned rows (warm-up, one class)."""
        zeros = torch.zeros(labels.shape[0], device=labels.device)
        diagnostics.update({"alpha": self.controller.alpha.detach().clone(), "num_misaligned": 0})
        diagnostics["per_sample"].update(
            {"similarity": zeros, "misaligned_loss": zeros, "has_misaligned": zeros.bool()}
        )

    def _validate_aligned(
        self,
        features: list[torch.Tensor],
        uni_logits: list[torch.Tensor],
        fusion_logits: torch.Tensor,
        labels: torch.Tensor,
        source: MidasBatch | None = None,
    ) -> None:
        if labels.dim() != 1 or labels.dtype.is_floating_point:
            raise TypeError(f"labels: expected an integer tensor [B], got {labels.dtype} {tuple(labels.shape)}")
        batch = labels.shape[0]
        if batch == 0:
            raise ValueError("labels: the batch is empty")
        expected = (batch, self.num_classes)
        for name, lg in [("output.fusion_logits", fusion_logits)] + [
            (f"output.unimodal_logits[{m!r}]", lg) for m, lg in zip(self.modalities, uni_logits)
        ]:
            if tuple(lg.shape) != expected:
                raise ValueError(f"{name}: expected shape {list(expected)}, got {list(lg.shape)}")
        for m, f in zip(self.modalities, features):
            if f.shape[0] != batch:
                raise ValueError(f"output.features[{m!r}]: expected {batch} rows (the batch size), got {f.shape[0]}")
        # One synchronisation for all value checks; details only on failure.
        finite = [torch.isfinite(lg).all() for lg in [fusion_logits, *uni_logits]]
        ok = torch.stack(finite + [labels.min() >= 0, labels.max() < self.num_classes]).all()
        if bool(ok):
            return
        # Only now, with a step already failed, look for the culprit samples.
        names = ["output.fusion_logits"] + [f"output.unimodal_logits[{m!r}]" for m in self.modalities]
        for name, good, lg in zip(names, finite, [fusion_logits, *uni_logits]):
            if not bool(good):
                raise _nonfinite_error(name, lg, source)
        raise MidasDataError(_label_range_message(labels, self.num_classes, source))


def _nonfinite_error(name: str, logits: torch.Tensor, batch: MidasBatch | None) -> ValueError:
    """Which samples' logits are not finite and whether their inputs already were: a
    MidasDataError when the data is to blame, else a ValueError about the model."""
    rows = (~torch.isfinite(logits.detach()).all(dim=1)).nonzero().flatten().tolist()
    if batch is None:
        return ValueError(f"{name}: contains NaN or inf in rows {rows[:8]}")
    ids = batch.ids.tolist()
    where = f"{name}: contains NaN or inf in the rows of samples {[ids[r] for r in rows[:8]]}"
    bad_inputs = nonfinite_inputs(batch.inputs, batch.ids)
    if bad_inputs:
        found = "; ".join(f"batch.inputs[{m!r}] of samples {sids[:8]}" for m, sids in bad_inputs.items())
        return MidasDataError(
            f"{where}: the input data is not finite ({found} hold NaN or inf); clean or drop them in the dataset"
        )
    return ValueError(f"{where}; their inputs are finite, so the model produced it (a diverged step? lower the lr)")


def _label_range_message(labels: torch.Tensor, num_classes: int, batch: MidasBatch | None) -> str:
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten().tolist()
    values = labels.tolist()
    if batch is None:
        return f"labels: expected class ids in [0, {num_classes}), got {[values[r] for r in bad[:5]]} in rows {bad[:5]}"
    ids = batch.ids.tolist()
    named = ", ".join(f"sample {ids[r]} has label {values[r]}" for r in bad[:5])
    return (
        f"labels: {named}; expected class ids in [0, {num_classes}). Pass num_classes={num_classes} to "
        "midas_loader to catch this when the batch is built"
    )


def _check_state_modalities(state: Mapping[str, Any], modalities: tuple[str, ...]) -> None:
    saved = state.get("modalities") if isinstance(state, Mapping) else None
    if saved is not None and tuple(saved) != modalities:
        raise ValueError(
            f"state['modalities']: the checkpoint is for modalities {tuple(saved)}, this objective {modalities}; "
            "alpha is per modality, so it only loads into an objective with the same modalities in the same order"
        )


class _MisalignedTally:
    """Counts batches without misaligned rows (all samples of one class) and warns once.

    The warning comes when an epoch with such batches is over (the objective's epoch
    moved on), or at once when the first 20 batches of an epoch all had none: a dataset
    or split with one class. The counts are host ints (the plan's shape): no device sync.
    """

    SINGLE_CLASS_AFTER = 20

    def __init__(self) -> None:
        self.total = 0
        self.epoch: int | None = None
        self.batches = 0
        self.empty = 0
        self.warned = False

    def count(self, epoch: int, rows: int, diagnostics: dict[str, Any]) -> None:
        if epoch != self.epoch:
            self._report()
            self.epoch, self.batches, self.empty = epoch, 0, 0
        self.batches += 1
        if rows == 0:
            self.empty += 1
            self.total += 1
            if self.empty == self.batches == self.SINGLE_CLASS_AFTER:
                self._report()
        diagnostics["batches_without_misaligned"] = self.total

    def _report(self) -> None:
        if self.warned or not self.empty:
            return
        self.warned = True
        so_far = "so far " if self.batches == self.SINGLE_CLASS_AFTER == self.empty else ""
        warnings.warn(
            f"MidasObjective: {self.empty} of {self.batches} batches of epoch {self.epoch} {so_far}had no misaligned "
            "rows: all their samples were of one class, so MIDAS added nothing for them. A dataset or split with a "
            "single class gets nothing from MIDAS; with several classes, larger batches (or shuffle=True) help. "
            "diagnostics['batches_without_misaligned'] keeps counting; this warning is shown once",
            MidasDataWarning,
            stacklevel=4,
        )


def _fusion_head(model: torch.nn.Module) -> Fuse:
    """``model.fuse`` through DDP / DataParallel / ``torch.compile`` wrappers, or a clear error."""
    inner = unwrap_model(model)
    fuse = getattr(inner, "fuse", None)
    if not callable(fuse):
        raise TypeError(
            f"model: {type(inner).__name__} has no fuse(features) -> logits method; feature-level MIDAS runs the "
            "fusion head alone on recombined features. Give the model a fuse method (see MidasModel), pass "
            "fuse=..., or use input-level batches and misaligned_logits=..."
        )
    return fuse


def _per_anchor_means(anchors: torch.Tensor, batch_size: int, values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean of each ``[K]`` value over the rows of each anchor, ``[B]`` (0 where none), plus
    a ``[B]`` bool of which anchors had rows."""
    counts = torch.zeros(batch_size, device=anchors.device).index_add_(
        0, anchors, torch.ones_like(anchors, dtype=torch.float32)
    )
    means = [
        torch.zeros(batch_size, device=anchors.device).index_add_(0, anchors, v.float()) / counts.clamp_min(1.0)
        for v in values
    ]
    return means + [counts > 0]
