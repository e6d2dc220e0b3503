"""A training method: the loss of one step plus hooks; joint training, the plainest one.

* ``joint`` — fusion cross-entropy only. Its unimodal heads are trained as *probes* on
  detached features, so per-modality accuracy measures what each encoder learned without
  changing the training of the encoders.
* ``joint_heads`` — fusion cross-entropy plus every unimodal head's cross-entropy.
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

__all__ = ["Method", "JointTraining", "UnimodalTraining", "probe_loss", "heads_loss"]


def probe_loss(model: LateFusionClassifier, output: MultimodalOutput, labels: torch.Tensor) -> torch.Tensor:
    """Unimodal heads on *detached* features: they measure the encoders without training them."""
    return sum(F.cross_entropy(model.unimodal_heads[m](output.features[m].detach()), labels) for m in model.modalities)


def heads_loss(output: MultimodalOutput, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(logits, labels) for logits in output.unimodal_logits.values())


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
        """What best-on-validation selection maximises: the fused accuracy."""
        return float(metrics["accuracy"])


class JointTraining(Method):
    """Fusion cross-entropy; ``heads=True`` adds the unimodal heads' cross-entropy."""

    def __init__(self, heads: bool = False) -> None:
        self.heads = heads
        self.name = "joint_heads" if heads else "joint"

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        loss = F.cross_entropy(output.fusion_logits, batch.labels)
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
        return F.cross_entropy(model.unimodal_heads[self.modality](features), batch.labels), {}

    def selection_score(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics["per_modality_accuracy"][self.modality])
