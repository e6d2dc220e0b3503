"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

The encoder of the modality whose share of the fusion head's confidence is larger gets its
gradient scaled by ``1 - tanh(alpha * (ratio - 1))``, and Gaussian noise with the
gradient's own standard deviation is added to the encoders' gradients. Unimodal heads are
probes, as for ``joint``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import MidasBatch
from ..models import LateFusionClassifier
from .method import Method, probe_loss

__all__ = ["OGMGE", "ogm_coefficients"]


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM modulation coefficients ``[M]`` from per-modality confidence sums ``[M]``.

    ``ratio_m = s_m / mean_{m' != m} s_m'``; a modality with ``ratio > 1`` dominates and
    gets ``1 - tanh(alpha * (ratio - 1))``, the others 1.
    """
    if scores.dim() != 1 or scores.numel() < 2:
        raise ValueError(f"scores: expected one confidence sum per modality [M >= 2], got {tuple(scores.shape)}")
    others = (scores.sum() - scores) / (scores.numel() - 1)
    ratio = scores / others.clamp_min(1e-12)
    return 1.0 - torch.tanh(alpha * (ratio - 1.0).clamp_min(0.0))


class OGMGE(Method):
    """OGM-GE for concat fusion with a linear head (Peng et al., CVPR 2022).

    The fusion head's logits split into one part per modality: ``W_m f_m + b / M``. The
    confidence of part ``m`` on the true labels, summed over the batch, gives ``s_m``;
    :func:`ogm_coefficients` turns the ratios into gradient scales for the encoders, and
    ``noise=True`` adds ``N(0, std(grad)^2)`` to each encoder gradient (generalisation
    enhancement). ``alpha`` sets the modulation strength.
    """

    name = "ogm_ge"

    def __init__(self, alpha: float = 0.5, noise: bool = True) -> None:
        self.alpha = alpha
        self.noise = noise
        self._coeff: torch.Tensor | None = None

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        head = getattr(model, "fusion_head", None)
        if not isinstance(head, nn.Linear):
            raise TypeError("ogm_ge: needs a model with a linear fusion_head over concatenated features")
        labels = batch.labels
        if labels.dim() != 1:
            raise TypeError(
                f"ogm_ge: scores each modality by its softmax probability of the class and needs class ids [B]; "
                f"got labels of shape {tuple(labels.shape)} (multi-hot labels: use joint, joint_heads, mixup or midas)"
            )
        output = model(batch.inputs)
        with torch.no_grad():
            scores, start = [], 0
            for m in model.modalities:
                f = output.features[m].flatten(1)
                part = f @ head.weight[:, start : start + f.shape[1]].T + head.bias / len(model.modalities)
                start += f.shape[1]
                scores.append(part.softmax(dim=1).gather(1, labels.unsqueeze(1)).sum())
            self._coeff = ogm_coefficients(torch.stack(scores), self.alpha)
        loss = F.cross_entropy(output.fusion_logits, labels) + probe_loss(model, output, labels)
        return loss, {"ogm_coefficients": self._coeff}

    def after_backward(self, model: LateFusionClassifier) -> None:
        if self._coeff is None:
            return
        for m, coeff in zip(model.modalities, self._coeff.tolist()):
            for p in model.encoders[m].parameters():
                if p.grad is None:
                    continue
                p.grad.mul_(coeff)
                if self.noise and p.grad.numel() > 1:
                    p.grad.add_(torch.randn_like(p.grad) * p.grad.std())
