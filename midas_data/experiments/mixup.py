"""Feature-level Mixup (Zhang et al., ICLR 2018) as a baseline beside MIDAS's misaligned term."""

from __future__ import annotations

from typing import Any

import torch

from ..data.batch import MidasBatch
from ..models import LateFusionClassifier
from .method import Method, heads_loss, label_loss

__all__ = ["FeatureMixup", "mixup_lambda"]


def mixup_lambda(concentration: float) -> float:
    """``lambda ~ Beta(a, a)`` from torch's global generator (seeded by :func:`fit`)."""
    if concentration <= 0:
        raise ValueError(f"concentration: expected a > 0, got {concentration}")
    a = torch.tensor(float(concentration))
    return float(torch.distributions.Beta(a, a).sample())


class FeatureMixup(Method):
    """``joint_heads`` plus Mixup of the encoder features (the same lambda for every modality).

    The mixed row ``lambda * f_i + (1 - lambda) * f_j`` (``j`` a random permutation of the
    batch) is fused and trained against ``lambda * y_i + (1 - lambda) * y_j``, as an extra
    term beside the aligned losses, the way MIDAS adds its misaligned term. Multi-hot labels
    mix the same way (binary cross-entropy per class against the mixed label vector).
    """

    name = "mixup"

    def __init__(self, concentration: float = 1.0, weight: float = 1.0) -> None:
        self.concentration = concentration
        self.weight = weight

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        labels = batch.labels
        aligned = label_loss(output.fusion_logits, labels) + heads_loss(output, labels)
        lam = mixup_lambda(self.concentration)
        perm = torch.randperm(labels.shape[0], device=labels.device)
        mixed = {m: lam * f + (1.0 - lam) * f[perm] for m, f in output.features.items()}
        logits = model.fuse(mixed)
        # On multi-hot labels this is the binary cross-entropy of the mixed label vector.
        mix_loss = lam * label_loss(logits, labels) + (1.0 - lam) * label_loss(logits, labels[perm])
        return aligned + self.weight * mix_loss, {"mixup_lambda": lam}
