"""The label-dependent terms of one objective step, single-label (class ids ``[B]``).

``MidasObjective`` reads everything that depends on what a label is through one of these
term sets (this one, or :class:`~midas_data.objective.multilabel.MultilabelTerms`), so the
rest of a step (plans, features, hard-sample weights, alpha) is shared by both tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import functional as MF
from .checks import validate_step

__all__ = ["SingleLabelTerms"]


class SingleLabelTerms:
    """Cross-entropy on class ids; confidence ``p[y]`` (ALGORITHM.md sections 2-5)."""

    task = "single_label"
    validate = staticmethod(validate_step)
    misaligned_loss = staticmethod(MF.misaligned_loss)

    @staticmethod
    def aligned(
        uni_logits: list[torch.Tensor], fusion_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unimodal losses ``[B, M]``, fusion loss ``[B]`` and unimodal confidences ``[B, M]``
        (detached), float32."""
        if labels.dim() != 1:  # checked with or without validate: float [B, C] would pass as soft targets
            raise TypeError(
                f"labels: expected class ids [B], got {labels.dtype} {tuple(labels.shape)}; for multi-hot labels "
                "use MidasObjective(..., task='multilabel')"
            )
        parts = torch.stack([F.cross_entropy(lg.float(), labels, reduction="none") for lg in uni_logits], dim=1)
        loss_align = F.cross_entropy(fusion_logits.float(), labels, reduction="none")
        with torch.no_grad():
            confidences = MF.gather_confidences([lg.detach().float().softmax(dim=1) for lg in uni_logits], labels)
        return parts, loss_align, confidences

    @staticmethod
    def source_confidences(logits: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
        """The fusion head's probability on each component's class, ``[K, M]``, detached."""
        return logits.detach().float().softmax(dim=1).gather(1, source_labels.long())
