"""A training method: the loss of one step plus hooks; joint training, the plainest one.

* ``joint`` — fusion cross-entropy only. Its unimodal heads are trained as *probes* on
  detached features, so per-modality accuracy measures what each encoder learned without
  changing the training of the encoders.
* ``joint_heads`` — fusion cross-entropy plus every unimodal head's cross-entropy.

On multi-hot labels ``[B, C]`` every cross-entropy is the per-class binary cross-entropy
(mean over classes, the scale of ``MidasObjective(task="multilabel")``'s terms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.batch import MidasBatch
from ..loader import midas_loader
from ..models import LateFusionClassifier, MultimodalOutput
from .config import TrainConfig
from .evaluation import headline

__all__ = ["Method", "JointTraining", "UnimodalTraining", "label_loss", "probe_loss", "heads_loss"]


def label_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on class ids ``[B]``; on multi-hot rows ``[B, C]`` binary cross-entropy
    per class, averaged over classes (and over the batch for ``reduction="mean"``)."""
    if labels.dim() == 2:
        rows = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(dim=1)
        return rows.mean() if reduction == "mean" else rows
    return F.cross_entropy(logits, labels, reduction=reduction)


def probe_loss(model: LateFusionClassifier, output: MultimodalOutput, labels: torch.Tensor) -> torch.Tensor:
    """Unimodal heads on *detached* features: they measure the encoders without training them."""
    return sum(label_loss(model.unimodal_heads[m](output.features[m].detach()), labels) for m in model.modalities)


def heads_loss(output: MultimodalOutput, labels: torch.Tensor) -> torch.Tensor:
    return sum(label_loss(logits, labels) for logits in output.unimodal_logits.values())


class Method:
    """One training method. Subclasses define :meth:`loss`; the hooks default to no-ops."""

    name = "method"

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        """The batches of every method: MIDAS batches with the same order for all."""
        return midas_loader(dataset, tuple(modalities), "label", batch_size=config.batch_size, seed=config.seed)

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def after_backward(self, model: LateFusionClassifier) -> None:
        """Called between ``backward()`` and ``optimizer.step()``."""

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        """Called after ``optimizer.step()`` with the diagnostics of :meth:`loss`."""

    def update(
        self,
        model: LateFusionClassifier,
        optimizer: torch.optim.Optimizer,
        batch: MidasBatch,
        loss: torch.Tensor,
        info: Mapping[str, Any],
    ) -> None:
        """The rest of a step after :meth:`loss`: backward, the hooks and the optimiser step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward(model)
        optimizer.step()
        self.after_step(batch, info)

    def selection_score(self, metrics: Mapping[str, Any]) -> float:
        """What best-on-validation selection maximises: the fused accuracy (micro-F1 for
        multi-label)."""
        return headline(metrics)


class JointTraining(Method):
    """Fusion cross-entropy; ``heads=True`` adds the unimodal heads' cross-entropy."""

    def __init__(self, heads: bool = False) -> None:
        self.heads = heads
        self.name = "joint_heads" if heads else "joint"

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        loss = label_loss(output.fusion_logits, batch.labels)
        extra = heads_loss(output, batch.labels) if self.heads else probe_loss(model, output, batch.labels)
        return loss + extra, {}


class UnimodalTraining(Method):
    """One modality alone: its encoder and unimodal head, nothing else trained.

    The reference for *under-optimisation*: what a modality's encoder reaches when no other
    modality competes for the fit. Selection and the reported figure are that modality's
    head accuracy (``per_modality_accuracy``); the fused accuracy means nothing here.
    """

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.name = f"unimodal_{modality}"

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.modality not in model.modalities:
            raise KeyError(f"{self.name}: the model has no modality {self.modality!r}; it has {model.modalities}")
        features = model.encoders[self.modality](batch.inputs[self.modality]).flatten(1)
        return label_loss(model.unimodal_heads[self.modality](features), batch.labels), {}

    def selection_score(self, metrics: Mapping[str, Any]) -> float:
        return headline(metrics, self.modality)
