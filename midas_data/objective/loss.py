"""``MidasObjective``: the complete MIDAS training loss (paper section 3.6), as a torch module.

    L_align = CE(p_i, y_i)                              aligned rows, fusion head
    L_uni   = sum_m CE(p_i^m, y_i)                      aligned rows, unimodal heads
    L_mis   = w * (-sum_m alpha_m c~^m log p~[y_k(m)])  misaligned rows
    L_total = mean_B(L_align + L_uni) + lambda * mean_K(L_mis)

During the first ``warmup_epochs`` only ``L_uni`` is trained so that the unimodal
confidences mean something before they label anything. The epoch is the one the batch was
planned for (``MidasBatch.epoch``), so a loop that never calls ``set_epoch`` still leaves
warm-up on time. Confidences, soft-label shares, similarities and ``q`` are constants;
``L_mis`` trains the fusion head and, through the recombined features, the encoders.

Precision: every cross-entropy, softmax, cosine and reduction runs in float32 whatever
dtype the model returned, and the fusion head runs on recombined features under the same
autocast as the forward that made them (re-entered when the caller left it, as Accelerate
and the Hugging Face Trainer do), so bf16/fp16 training needs nothing extra.

State (alpha, what alpha's next step is gathered from, the epoch) changes only in training
mode with gradients enabled: a validation loss under ``torch.no_grad()`` or ``eval()``
changes nothing.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import functional as MF
from ..controller import VARIANTS, WeakModalityController
from ..data.batch import MidasBatch
from ..distributed import has_process_group
from ..models import MultimodalOutput
from .checks import MisalignedTally, check_feature_dtypes, check_state_modalities, fusion_head, unpack_batch
from .multilabel import MultilabelTerms
from .terms import SingleLabelTerms

__all__ = ["MidasObjective"]

Fuse = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
_FORMAT = "midas_data.MidasObjective/2"
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# The pairing rule each variant is defined with (paper: partners of another class).
_RULE_OF_VARIANT = {"paper": "different_label", "reference": "any"}
_TERMS = {"single_label": SingleLabelTerms, "multilabel": MultilabelTerms}
# Multi-label batches are planned with their own rules; "any" stays the reference form.
_MULTILABEL_RULES_OF_VARIANT = {"paper": ("different_set", "disjoint"), "reference": ("any",)}


@dataclass
class _Aligned:
    """The aligned rows' terms: per-row losses (float32) and the unimodal confidences."""

    loss_uni: torch.Tensor
    loss_align: torch.Tensor
    confidences: torch.Tensor
    # The fusion cross-entropy per row before any sample weight, detached: the stats
    # table's ``loss`` column (what a pruning sampler scores samples by).
    raw_loss_align: torch.Tensor | None = None


@dataclass
class _Misaligned:
    """The misaligned rows' inputs to the loss and to alpha's statistic (all float32)."""

    logits: torch.Tensor
    source_labels: torch.Tensor
    row_confidences: torch.Tensor
    similarity: torch.Tensor
    weights: torch.Tensor
    anchors: torch.Tensor


class MidasObjective(nn.Module):
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
            (see :class:`~midas_data.controller.WeakModalityController`). Each variant
            goes with its pairing rule (``midas_loader(rule=...)``: ``"different_label"``
            for the paper, ``"any"`` for the reference); a batch planned with the other
            rule is refused.
        weak_modality_weighting: ablation switch; ``False`` keeps alpha at 1.
        hard_sample_weighting: ablation switch; ``False`` sets every hard weight to 1 (the
            similarity is still measured and reported for the stats table).
        validate: check shapes, label and plan range and finiteness of the logits every
            step, all in one combined check: one device synchronisation per step. Turn it
            off once a pipeline is known good; then the step has none.
        follow_batch_epoch: take the epoch from each :class:`MidasBatch` (the epoch its
            plans were drawn for) rather than from :meth:`set_epoch`. ``set_epoch`` still
            sets the epoch for calls without a batch (``labels=``/``plan=``); a set epoch
            that disagrees with the batch's is warned about once.
        sync_alpha: sum the alpha controller's per-step statistic over the ranks of
            ``torch.distributed`` (one all-reduce per step, no host synchronisation; a no-op
            without a process group), so alpha is one value on every rank.
        process_group: the group to sync alpha over; ``None`` is the default group.
        pair_weighting: the importance weight of a misaligned row from its sources' weights:
            ``"product"`` (default; exact when sources are drawn independently, as by the
            prioritised policies) or ``"mean"`` (each source's share of the row weighted by
            its own weight; bounded by the largest weight, for pruning with large weights),
            see :func:`~midas_data.functional.pair_importance_weights`.
        task: ``"single_label"`` (default; integer class ids ``[B]``, cross-entropy) or
            ``"multilabel"`` (multi-hot float labels ``[B, C]``, binary cross-entropy per class,
            confidence ``exp(-BCE)`` on the label set; see ``docs/concepts.md``). The paper
            variant accepts batches planned with ``rule="different_set"`` or ``"disjoint"``.

    Call it with the model's output on the aligned batch and either a :class:`MidasBatch`
    or ``labels`` and ``plan``; pass ``model`` (feature level: its ``fuse`` runs the fusion
    head on the recombined features; DDP, DataParallel and ``torch.compile`` wrappers are
    unwrapped), ``fuse`` (the fusion head itself) or ``misaligned_logits`` (input level:
    the fusion logits of the model run on the materialised misaligned inputs). It returns
    ``(loss, diagnostics)``; the loss is float32, diagnostics are detached tensors (no host
    synchronisation) plus Python ints known on the host.

    Alpha takes one step per batch: a second call with the same batch object (an optimizer
    closure, sharpness-aware minimisation) replaces that batch's step instead of adding one.
    After :meth:`attach` (the trainer adapters do it), alpha steps once per optimizer step
    instead, from the statistics of every call since the last one (gradient accumulation).
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
        pair_weighting: str = "product",
        task: str = "single_label",
    ) -> None:
        super().__init__()
        if task == "regression":
            raise ValueError(
                "task: 'regression' is not offered: MIDAS's confidence, pairing rule and soft target have no form "
                "on a continuous target without a new free parameter (docs/concepts.md, 'Regression targets'); "
                "bin the target into classes (the MOSEI recipe's binary and 7class tasks)"
            )
        if task not in _TERMS:
            raise ValueError(f"task: expected one of {tuple(_TERMS)}, got {task!r}")
        self.task = task
        self._terms = _TERMS[task]
        if pair_weighting not in MF.PAIR_WEIGHTINGS:
            raise ValueError(f"pair_weighting: expected one of {MF.PAIR_WEIGHTINGS}, got {pair_weighting!r}")
        self.pair_weighting = pair_weighting
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
        # The epoch decides warm-up on the host, so it is a host int (saved as extra state).
        self.epoch = 0
        self._misaligned_tally = MisalignedTally()
        self._set_epoch: int | None = None  # the last epoch given to set_epoch
        self._warned_epoch = False
        self._last_batch: weakref.ref[Any] | None = None  # the batch of alpha's last step
        self._before_step: tuple[torch.Tensor, ...] | None = None  # controller buffers before it
        self._attached: list[Any] = []  # hook handles of attached optimizers

    # -- state -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch for calls without a :class:`MidasBatch`; batches carry their own."""
        self.epoch = self._set_epoch = int(epoch)

    @property
    def learning(self) -> bool:
        """Whether a call may change state: training mode with gradients enabled."""
        return self.training and torch.is_grad_enabled()

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    @property
    def alpha(self) -> torch.Tensor:
        return self.controller.alpha

    def attach(self, optimizer: Any) -> Any:
        """Step alpha once per step of ``optimizer`` (from every call's statistic since the
        last step) instead of once per batch; returns the hook handle (``.remove()`` undoes
        it). Wrappers (Accelerate, Lightning) are looked through to the torch optimizer."""
        inner = optimizer
        for _ in range(4):
            nested = getattr(inner, "optimizer", None) or getattr(inner, "_optimizer", None)
            if nested is None or nested is inner:
                break
            inner = nested
        if not hasattr(inner, "register_step_post_hook"):
            raise TypeError(f"optimizer: {type(optimizer).__name__} is not a torch.optim.Optimizer")
        handle = inner.register_step_post_hook(lambda *_: self.step_alpha())
        self._attached.append(handle)
        return handle

    def detach(self, handle: Any) -> None:
        """Undo :meth:`attach` (with no optimizer left, alpha steps once per batch again)."""
        handle.remove()
        self._attached = [attached for attached in self._attached if attached is not handle]

    def step_alpha(self) -> torch.Tensor:
        """Move alpha once from the statistics gathered since the last step (called by an
        attached optimizer's step); returns alpha."""
        return self.controller.step()

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "epoch": self.epoch, "modalities": list(self.modalities)}

    def set_extra_state(self, state: Any) -> None:
        check_state_modalities(state, self.modalities)
        self.epoch = int(state["epoch"])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a ``state_dict()``. A checkpoint of the earlier, non-module format
        (``{"epoch", "controller", "modalities"}``) is converted."""
        if "controller" in state_dict and isinstance(state_dict["controller"], Mapping):
            check_state_modalities(state_dict, self.modalities)
            self.controller.load_state_dict(state_dict["controller"])
            self.epoch = int(state_dict["epoch"])
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        # Inside a model's state_dict (the objective is an attribute of a LightningModule),
        # a checkpoint written before the objective was a module has none of its keys: leave
        # it as it is; the trainer adapters restore it from their own checkpoint entry.
        if not any(key.startswith(prefix) for key in state_dict):
            return
        super()._load_from_state_dict(state_dict, prefix, *args)

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
                stacklevel=4,
            )
        self.epoch = planned

    # -- the loss ----------------------------------------------------------------------
    def forward(
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
        sampling. ``None``: the batch's ``extras["importance_weights"]`` when it carries them
        (``midas_loader`` under a policy other than ``uniform``, the streaming stage), else
        uniform sampling. ``update_alpha=False`` leaves alpha alone.
        """
        rule, planned = _RULE_OF_VARIANT[self.variant], getattr(batch, "rule", "")
        if self.task == "multilabel":
            allowed = _MULTILABEL_RULES_OF_VARIANT[self.variant]
            rule = planned if planned in allowed else allowed[0]
        elif planned in ("different_set", "disjoint"):
            raise TypeError("labels: the batch holds multi-hot labels; use MidasObjective(..., task='multilabel')")
        labels, plan, num_unpaired, sample_weights = unpack_batch(
            batch, labels, plan, num_unpaired, sample_weights, self.modalities, self.variant, rule
        )
        learning = self.learning
        if learning and batch is not None:
            self._follow(batch)
        if model is not None:
            if fuse is not None:
                raise ValueError("pass either model= or fuse=, not both")
            if misaligned_logits is None:
                fuse = fusion_head(model)
        features = [output.features[m] for m in self._require(output.features, "output.features")]
        uni_logits = [
            output.unimodal_logits[m] for m in self._require(output.unimodal_logits, "output.unimodal_logits")
        ]
        check_feature_dtypes(features, self.modalities)
        warmup = self.in_warmup
        if not warmup:
            if plan is None:
                raise ValueError("plan: required after warm-up (or pass a MidasBatch)")
            MF.check_plan_shape(plan)
            if plan.shape[1] != len(self.modalities):
                raise ValueError(f"plan: expected {len(self.modalities)} columns, got {plan.shape[1]}")
            if (fuse is None) == (misaligned_logits is None):
                raise ValueError(
                    "pass exactly one of fuse= (feature-level: the model's fusion head) or "
                    "misaligned_logits= (input-level: fusion logits of the materialised misaligned inputs)"
                )
            if misaligned_logits is not None and misaligned_logits.shape != (plan.shape[0], self.num_classes):
                raise ValueError(
                    f"misaligned_logits: expected shape [{plan.shape[0]}, {self.num_classes}] (one row per "
                    f"plan row), got {tuple(misaligned_logits.shape)}"
                )
        if self.validate:
            self._terms.validate(
                self.num_classes, self.modalities, features, uni_logits, output.fusion_logits, labels, batch,
                None if warmup else plan, None if warmup else misaligned_logits,
            )  # fmt: skip
        aligned = self._aligned_terms(uni_logits, output.fusion_logits, labels, sample_weights)
        diagnostics: dict[str, Any] = {
            "loss_align": aligned.loss_align.detach().mean(),
            "loss_uni": aligned.loss_uni.detach().mean(),
            "confidence": aligned.confidences.mean(dim=0),
            "warmup": warmup,
            "num_unpaired": int(num_unpaired),
            "per_sample": {"confidence": aligned.confidences, "loss": aligned.raw_loss_align},
        }
        if warmup:
            return self._warmup_loss(aligned, labels, diagnostics), diagnostics
        assert plan is not None
        loss = (aligned.loss_align + aligned.loss_uni).mean()
        if learning:
            self._misaligned_tally.count(self.epoch, int(plan.shape[0]), diagnostics)
        stepping = learning and update_alpha and self.weak_modality_weighting
        step_key = batch if batch is not None else labels  # what "the same batch again" means
        if stepping:
            self._rewind_if_repeated(step_key)
        if plan.shape[0] == 0:
            self._no_misaligned(labels, diagnostics)
            diagnostics["loss_mis"] = loss.new_zeros(())
            if stepping:
                # Other ranks may have misaligned rows: take part in alpha's step all the same.
                empty = aligned.confidences.new_zeros((0, len(self.modalities)))
                totals = self.controller.statistic(
                    empty, empty, aligned_confidences=aligned.confidences, fusion_source_probs=empty
                )
                self._controller_step(totals, step_key)
            return loss, diagnostics

        mis = self._misaligned_terms(features, plan, anchors, labels, aligned.confidences, fuse, misaligned_logits)
        with torch.no_grad():
            shares = MF.normalized_confidences(mis.row_confidences)
            fusion_source = self._terms.source_confidences(mis.logits, mis.source_labels)
            q = MF.normalized_confidences(fusion_source)
            totals = None
            if stepping:
                totals = self.controller.statistic(
                    shares,
                    q,
                    aligned_confidences=aligned.confidences,
                    fusion_source_probs=fusion_source,
                )
        alpha = self._batch_alpha(totals, aligned.confidences, mis.row_confidences.device)
        loss_rows = self._terms.misaligned_loss(mis.logits, mis.row_confidences, mis.source_labels, alpha, mis.weights)
        if sample_weights is not None:
            loss_mis = (loss_rows * MF.pair_importance_weights(sample_weights, plan, self.pair_weighting)).mean()
        else:
            loss_mis = loss_rows.mean()
        loss = loss + self.lam * loss_mis
        if totals is not None:
            self._controller_step(totals, step_key)
        diagnostics.update(
            {
                "loss_mis": loss_mis.detach(),
                "alpha": alpha.detach().clone(),
                "confidence_share": shares.mean(dim=0),
                "fusion_share": q.mean(dim=0),
                "weak_modality": shares.mean(dim=0).argmin(),
                "hard_weight": mis.weights.mean(),
                "num_misaligned": int(plan.shape[0]),
            }
        )
        diagnostics["per_sample"].update(self._per_sample_statistics(mis, loss_rows, labels.shape[0]))
        return loss, diagnostics

    # -- the named parts of a step -------------------------------------------------------
    def _aligned_terms(
        self,
        uni_logits: list[torch.Tensor],
        fusion_logits: torch.Tensor,
        labels: torch.Tensor,
        sample_weights: torch.Tensor | None,
    ) -> _Aligned:
        """``L_uni`` and ``L_align`` per aligned row, the unimodal confidences and the
        unweighted ``L_align`` (the table's ``loss`` column), float32."""
        parts, loss_align, confidences = self._terms.aligned(uni_logits, fusion_logits, labels)
        loss_uni = parts.sum(dim=1) if self.variant == "paper" else parts.mean(dim=1)
        raw_loss_align = loss_align.detach()
        if sample_weights is not None:
            if sample_weights.shape != labels.shape[:1]:
                raise ValueError(
                    f"sample_weights: expected shape {list(labels.shape[:1])} (one per aligned row), "
                    f"got {list(sample_weights.shape)}"
                )
            sample_weights = sample_weights.detach().to(labels.device, torch.float32, non_blocking=True)
            loss_uni, loss_align = loss_uni * sample_weights, loss_align * sample_weights
        return _Aligned(loss_uni, loss_align, confidences, raw_loss_align)

    def _warmup_loss(self, aligned: _Aligned, labels: torch.Tensor, diagnostics: dict[str, Any]) -> torch.Tensor:
        self._no_misaligned(labels, diagnostics)
        loss = aligned.loss_uni.mean()
        if has_process_group():
            # DDP (find_unused_parameters=False) needs a gradient for every parameter,
            # the fusion head's too: a zero one, which leaves warm-up training unchanged.
            # One rank under DDP needs it as well, so any process group counts.
            loss = loss + 0.0 * aligned.loss_align.sum()
        return loss

    def _misaligned_terms(
        self,
        features: list[torch.Tensor],
        plan: torch.Tensor,
        anchors: torch.Tensor | None,
        labels: torch.Tensor,
        confidences: torch.Tensor,
        fuse: Fuse | None,
        misaligned_logits: torch.Tensor | None,
    ) -> _Misaligned:
        """The misaligned rows' fusion logits, source labels and confidences, similarity and
        hard-sample weights."""
        if anchors is None:
            anchors = MF.plan_anchors(plan)
        # The recombined features serve both the fusion head (feature level) and the
        # hard-sample similarity: gather them once.
        swapped = MF.swap_features(features, plan)
        if misaligned_logits is None:
            assert fuse is not None
            with _fusion_autocast(features):
                misaligned_logits = fuse(dict(zip(self.modalities, swapped)))
        originals = [f.index_select(0, anchors) for f in features]
        similarity = MF.feature_similarity(originals, swapped, MF.replaced_mask(plan, anchors))
        if self.hard_sample_weighting:
            weights = MF.hard_weights_from_similarity(similarity)
        else:
            weights = torch.ones_like(similarity)
        # c^m of row k: the unimodal confidence of its modality-m source on that source's label.
        return _Misaligned(misaligned_logits, labels[plan], confidences.gather(0, plan), similarity, weights, anchors)

    def _batch_alpha(
        self, totals: torch.Tensor | None, confidences: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """The alpha this batch's misaligned loss uses: alpha before this batch's step; the
        reference variant's scalar on the modality weak in this batch (over all ranks)."""
        if not self.weak_modality_weighting:
            return torch.ones(len(self.modalities), device=device)
        if self.variant == "reference":
            sums = totals if totals is not None else confidences.float().sum(dim=0)
            return self.controller.alpha_for(self.controller.weak_from(sums)).to(device)
        return self.controller.alpha.to(device)

    def _repeats_last_batch(self, key: Any) -> bool:
        """Whether ``key`` is the batch of alpha's last step (alive, so not a reused id)."""
        return self._last_batch is not None and self._last_batch() is key and self._before_step is not None

    def _rewind_if_repeated(self, key: Any) -> None:
        """A second call with the last step's batch (a closure) undoes that step: one per batch."""
        if not self._attached and self._repeats_last_batch(key):
            for buffer, saved in zip(self._controller_buffers(), self._before_step):  # type: ignore[arg-type]
                buffer.copy_(saved)

    def _controller_step(self, totals: torch.Tensor, key: Any) -> None:
        """Gather this call's statistic; step alpha now unless an attached optimizer will."""
        self.controller.accumulate(totals)
        if self._attached:
            return
        if not self._repeats_last_batch(key):
            self._before_step = tuple(b.clone() for b in self._controller_buffers())
        self.controller.step()
        self._last_batch = weakref.ref(key)

    def _controller_buffers(self) -> tuple[torch.Tensor, ...]:
        c = self.controller
        return c.weights, c.weak, c.steps

    def _per_sample_statistics(self, mis: _Misaligned, loss_rows: torch.Tensor, batch_size: int) -> dict[str, Any]:
        """Per aligned row: mean similarity and misaligned loss of its copies, and whether
        it had any (the stats table's columns)."""
        similarity, loss, has = MF.per_anchor_means(mis.anchors, batch_size, [mis.similarity, loss_rows.detach()])
        return {"similarity": similarity, "misaligned_loss": loss, "has_misaligned": has}

    # -- helpers -----------------------------------------------------------------------
    def _require(self, mapping: Mapping[str, Any], name: str) -> tuple[str, ...]:
        missing = [m for m in self.modalities if m not in mapping]
        if missing:
            raise KeyError(f"{name}: missing modality {missing}; expected keys {list(self.modalities)}")
        return self.modalities

    def _no_misaligned(self, labels: torch.Tensor, diagnostics: dict[str, Any]) -> None:
        """Fill the diagnostics of a step without misaligned rows (warm-up, one class)."""
        zeros = torch.zeros(labels.shape[0], device=labels.device)
        diagnostics.update({"alpha": self.controller.alpha.detach().clone(), "num_misaligned": 0})
        diagnostics["per_sample"].update(
            {"similarity": zeros, "misaligned_loss": zeros, "has_misaligned": zeros.bool()}
        )


def _fusion_autocast(features: list[torch.Tensor]) -> contextlib.AbstractContextManager[Any]:
    """The autocast that made low-precision features, re-entered for the fusion head when the
    caller left it (Accelerate and the HF Trainer autocast ``model.forward`` only)."""
    low = [f.dtype for f in features if f.dtype in _LOW_PRECISION]
    if not low:
        return contextlib.nullcontext()
    device_type = features[0].device.type
    if not torch.amp.is_autocast_available(device_type) or torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=low[0])
