"""The label-dependent terms of one objective step, multi-label (multi-hot ``[B, C]``).

Binary cross-entropy per class (mean over classes) in place of cross-entropy, and the
confidence of a head on a label set ``exp(-BCE)`` in place of ``p[y]``; the derivation is
in ``docs/concepts.md`` and the math in :mod:`midas_data.multilabel`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import multilabel as ML
from ..data.batch import MidasBatch
from ..errors import MidasDataError
from .checks import validate_outputs

__all__ = ["MultilabelTerms", "validate_multilabel_step"]


def validate_multilabel_step(
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
    """Shapes on the host, then every value check (finite logits, multi-hot values in
    ``[0, 1]``, plan in range) in one device synchronisation, as :func:`validate_step`."""
    if labels.dim() == 1 and not labels.dtype.is_floating_point:
        raise TypeError(
            "labels: MidasObjective(task='multilabel') got class ids [B]; expected multi-hot float labels [B, C] "
            "(midas_loader gives them for items whose label is a vector or a list of class ids)"
        )
    ML.check_multi_hot(labels)
    batch = labels.shape[0]
    if batch and list(labels.shape) != [batch, num_classes]:
        raise ValueError(
            f"labels: expected shape {[batch, num_classes]} (one multi-hot row per sample), got {list(labels.shape)}"
        )
    validate_outputs(
        num_classes, modalities, features, uni_logits, fusion_logits, batch, source, plan, misaligned_logits,
        lambda: ((labels >= 0) & (labels <= 1)).all(), lambda: MidasDataError(_range_message(labels, source)),
    )  # fmt: skip


def _range_message(labels: torch.Tensor, batch: MidasBatch | None) -> str:
    bad = (~((labels >= 0) & (labels <= 1)).all(dim=1)).nonzero().flatten().tolist()
    where = f"rows {bad[:5]}" if batch is None else f"samples {[batch.ids.tolist()[r] for r in bad[:5]]}"
    return f"labels: {where} hold values outside [0, 1] (or NaN); multi-hot labels must lie in [0, 1]"


class MultilabelTerms:
    """Binary cross-entropy on multi-hot labels; confidence ``exp(-BCE)`` on the label set."""

    task = "multilabel"
    validate = staticmethod(validate_multilabel_step)
    misaligned_loss = staticmethod(ML.misaligned_bce)

    @staticmethod
    def aligned(
        uni_logits: list[torch.Tensor], fusion_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unimodal BCEs ``[B, M]``, fusion BCE ``[B]`` (means over classes) and unimodal
        confidences ``[B, M]`` (detached), float32."""
        if labels.dim() != 2:
            raise TypeError(
                f"labels: MidasObjective(task='multilabel') expects multi-hot labels [B, C], got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        targets = labels.float()
        parts = torch.stack([_row_bce(lg, targets) for lg in uni_logits], dim=1)
        loss_align = _row_bce(fusion_logits, targets)
        with torch.no_grad():
            confidences = ML.label_set_confidences(uni_logits, targets)
        return parts, loss_align, confidences

    @staticmethod
    def source_confidences(logits: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
        """The fusion head's confidence on each component's label set, ``[K, M]``, detached."""
        return ML.label_set_confidence(logits.unsqueeze(1).expand_as(source_labels), source_labels)


def _row_bce(logits: torch.Tensor, targets: torch.Tensor) -> Any:
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(dim=1)
