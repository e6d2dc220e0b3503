"""The checks of one objective call and the messages they raise.

Shapes are host facts and checked first; every value check (finite logits, labels and plan
in range) is folded into one 0-dim tensor and read once, so a validated step costs one
device synchronisation; only a failed check looks further (more synchronisations, with
the step already lost) to name the culprit samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import functional as MF
from ..data.batch import MidasBatch
from ..data.diagnose import nonfinite_inputs
from ..errors import MidasDataError, MidasDataWarning
from ..models import unwrap_model

__all__ = [
    "validate_step",
    "validate_outputs",
    "check_feature_dtypes",
    "check_state_modalities",
    "fusion_head",
    "unpack_batch",
    "MisalignedTally",
]

Fuse = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def validate_step(
    num_classes: int,
    modalities: tuple[str, ...],
    features: list[torch.Tensor],
    uni_logits: list[torch.Tensor],
    fusion_logits: torch.Tensor,
    labels: torch.Tensor,
    source: MidasBatch | None,
    plan: torch.Tensor | None,
    misaligned_logits: torch.Tensor | None,
) -> None:
    """Shapes on the host, then every value check in one device synchronisation;
    details (more synchronisations) only once a check has failed."""
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        hint = "; for multi-hot labels use MidasObjective(..., task='multilabel')" if labels.dim() == 2 else ""
        raise TypeError(f"labels: expected an integer tensor [B], got {labels.dtype} {tuple(labels.shape)}{hint}")
    validate_outputs(
        num_classes, modalities, features, uni_logits, fusion_logits, labels.shape[0], source, plan,
        misaligned_logits, lambda: (labels.min() >= 0) & (labels.max() < num_classes),
        lambda: MidasDataError(_label_range_message(labels, num_classes, source)),
    )  # fmt: skip


def validate_outputs(
    num_classes: int,
    modalities: tuple[str, ...],
    features: list[torch.Tensor],
    uni_logits: list[torch.Tensor],
    fusion_logits: torch.Tensor,
    batch: int,
    source: MidasBatch | None,
    plan: torch.Tensor | None,
    misaligned_logits: torch.Tensor | None,
    labels_ok: Callable[[], torch.Tensor],
    labels_error: Callable[[], Exception],
) -> None:
    """The checks of a step that do not depend on what a label is: shapes on the host, then
    every value check (finite logits, the task's label check ``labels_ok()``, a 0-dim bool
    tensor made once the batch is known not to be empty, plan in range) folded into one
    device synchronisation; details only once a check has failed."""
    if batch == 0:
        raise ValueError("labels: the batch is empty")
    expected = (batch, num_classes)
    for name, lg in [("output.fusion_logits", fusion_logits)] + [
        (f"output.unimodal_logits[{m!r}]", lg) for m, lg in zip(modalities, uni_logits)
    ]:
        if tuple(lg.shape) != expected:
            raise ValueError(f"{name}: expected shape {list(expected)}, got {list(lg.shape)}")
    for m, f in zip(modalities, features):
        if f.shape[0] != batch:
            raise ValueError(f"output.features[{m!r}]: expected {batch} rows (the batch size), got {f.shape[0]}")
    logits = [fusion_logits, *uni_logits]
    finite = [torch.isfinite(lg).all() for lg in logits]
    label_check = labels_ok()
    checks = finite + [label_check]
    if plan is not None:
        checks.append(MF.plan_in_range(plan, batch))
    if misaligned_logits is not None:
        checks.append(torch.isfinite(misaligned_logits).all())
    if bool(torch.stack(checks).all()):
        return
    names = ["output.fusion_logits"] + [f"output.unimodal_logits[{m!r}]" for m in modalities]
    for name, good, lg in zip(names, finite, logits):
        if not bool(good):
            raise _nonfinite_error(name, lg, source)
    if not bool(label_check):
        raise labels_error()
    if plan is not None:
        MF.check_plan(plan, batch)
    raise ValueError("misaligned_logits: contains NaN or inf")


def check_feature_dtypes(features: list[torch.Tensor], modalities: tuple[str, ...]) -> None:
    for m, f in zip(modalities, features):
        if not f.dtype.is_floating_point:
            raise TypeError(
                f"output.features[{m!r}]: expected floating-point features, got {f.dtype}; the encoder output "
                "feeds the fusion head and the cosine similarity (cast the inputs to float in the model)"
            )


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


def check_state_modalities(state: Mapping[str, Any], modalities: tuple[str, ...]) -> None:
    saved = state.get("modalities") if isinstance(state, Mapping) else None
    if saved is not None and tuple(saved) != modalities:
        raise ValueError(
            f"state['modalities']: the checkpoint is for modalities {tuple(saved)}, this objective {modalities}; "
            "alpha is per modality, so it only loads into an objective with the same modalities in the same order"
        )


class MisalignedTally:
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


def fusion_head(model: torch.nn.Module) -> Fuse:
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


def unpack_batch(
    batch: MidasBatch | None,
    labels: torch.Tensor | None,
    plan: torch.Tensor | None,
    num_unpaired: int,
    sample_weights: torch.Tensor | None,
    modalities: tuple[str, ...],
    variant: str,
    rule: str,
) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor | None]:
    """Labels, plan, unpaired count and importance weights from a batch (checked against
    the objective's ``modalities`` and its ``variant``'s pairing ``rule``) or as given. Weights passed
    explicitly win over the batch's ``extras["importance_weights"]``."""
    if batch is not None:
        if labels is not None or plan is not None:
            raise ValueError("pass either batch or labels/plan, not both")
        labels, plan, num_unpaired = batch.labels, batch.plan, batch.num_unpaired
        if tuple(batch.modalities) != modalities:
            raise ValueError(
                f"batch.modalities {tuple(batch.modalities)} differ from the objective's {modalities}; the plan's "
                "columns follow the loader's order: give midas_loader and MidasObjective the same modality order"
            )
        planned = getattr(batch, "rule", "")
        if planned and planned != rule:
            raise ValueError(
                f"MidasObjective(variant={variant!r}) pairs with rule={rule!r}, but this batch was planned with "
                f"rule={planned!r}: pass midas_loader(..., rule={rule!r}) or the other variant"
            )
        if sample_weights is None:
            carried = batch.extras.get("importance_weights") if isinstance(batch.extras, Mapping) else None
            if carried is not None and not isinstance(carried, torch.Tensor):
                raise TypeError(
                    f"batch.extras['importance_weights']: expected a float tensor [B] of importance weights, "
                    f"got {type(carried).__name__} (an item key named 'importance_weights' collides with it)"
                )
            sample_weights = carried
    if labels is None:
        raise ValueError("labels: required (or pass a MidasBatch)")
    return labels, plan, num_unpaired, sample_weights
