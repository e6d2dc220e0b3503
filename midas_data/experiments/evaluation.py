"""Evaluation on aligned and on misaligned samples of a whole split.

Multi-label splits (multi-hot labels ``[N, C]``) are scored by F1 at thresholds chosen on
validation (:func:`evaluate_multilabel`); their misaligned figures are not computed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import functional as MF
from ..models import LateFusionClassifier, MultimodalOutput
from . import metrics
from .datasets import InMemoryDataset

__all__ = [
    "Predictions",
    "predict",
    "predict_batches",
    "misaligned_plan",
    "misaligned_logits",
    "evaluate",
    "evaluate_multilabel",
    "multilabel_metrics",
    "headline",
    "split_metrics",
    "BN_PROTOCOLS",
    "reestimate_batchnorm",
    "with_bn_protocol",
]

# How BatchNorm statistics are set before an evaluation:
# "as_trained": the running averages left by training (momentum 0.1 over the last steps);
# "precise": re-estimated for the weights being evaluated, one pass over the training split.
BN_PROTOCOLS = ("as_trained", "precise")


@dataclass
class Predictions:
    """Model outputs over a whole split (CPU tensors)."""

    labels: torch.Tensor
    fusion_logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


@torch.no_grad()
def predict_batches(
    model: LateFusionClassifier, batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]
) -> Predictions:
    """Run ``model`` in eval mode over ``(inputs, labels)`` batches and concatenate the
    outputs (left where the model put them); restores the training mode."""
    was_training = model.training
    model.eval()
    try:
        outs: list[MultimodalOutput] = []
        labels: list[torch.Tensor] = []
        for inputs, batch_labels in batches:
            outs.append(model(inputs))
            labels.append(batch_labels)
    finally:
        model.train(was_training)
    mods = list(outs[0].features)
    return Predictions(
        labels=_as_labels(torch.cat(labels)),
        fusion_logits=torch.cat([o.fusion_logits for o in outs]),
        unimodal_logits={m: torch.cat([o.unimodal_logits[m] for o in outs]) for m in mods},
        features={m: torch.cat([o.features[m] for o in outs]) for m in mods},
    )


def _as_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class ids as int64; multi-hot rows ``[N, C]`` as float32."""
    return labels.float() if labels.dim() == 2 else labels.long()


def headline(metrics: Mapping[str, Any], modality: str | None = None) -> float:
    """The one figure a split's metrics are summarised by: the fused accuracy, or micro-F1
    for multi-label; with ``modality``, that unimodal head's."""
    if modality is None:
        return float(metrics["accuracy"] if "accuracy" in metrics else metrics["micro_f1"])
    if "per_modality_accuracy" in metrics:
        return float(metrics["per_modality_accuracy"][modality])
    return float(metrics["per_modality_micro_f1"][modality])


def predict(model: LateFusionClassifier, data: InMemoryDataset, batch_size: int = 512) -> Predictions:
    """Run ``model`` in eval mode over ``data`` in chunks; restores the training mode."""
    chunks = (
        ({m: v[start : start + batch_size] for m, v in data.tensors.items()}, data.labels[start : start + batch_size])
        for start in range(0, len(data), batch_size)
    )
    return predict_batches(model, chunks)


def misaligned_plan(labels: torch.Tensor, num_modalities: int, seed: int) -> torch.Tensor:
    """A fixed pair plan over a whole split: every sample with a partner of another class.

    The same ``seed`` gives the same misaligned evaluation set for every method and epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    plan = MF.plan_pairs(labels.cpu(), num_modalities, generator)
    if plan.num_unpaired:
        raise ValueError(f"labels: {plan.num_unpaired} misaligned rows could not be paired; the split has one class")
    return plan.sources


@torch.no_grad()
def misaligned_logits(
    model: LateFusionClassifier, preds: Predictions, data: InMemoryDataset, plan: torch.Tensor
) -> torch.Tensor:
    """Fusion logits on the misaligned rows: feature-level through ``model.fuse`` when the
    model has it, else by running the model on recombined inputs."""
    modalities = list(preds.features)
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "fuse"):
            return model.fuse(dict(zip(modalities, MF.swap_features([preds.features[m] for m in modalities], plan))))
        inputs = {m: data.tensors[m][plan[:, i]] for i, m in enumerate(modalities)}
        return model(inputs).fusion_logits
    finally:
        model.train(was_training)


def evaluate(
    model: LateFusionClassifier,
    data: InMemoryDataset,
    plan: torch.Tensor | None = None,
    seed: int = 1234,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Aligned and misaligned metrics of ``model`` on ``data``.

    Returns ``accuracy``, ``macro_f1``, ``per_modality_accuracy`` (unimodal heads),
    ``misaligned_accuracy`` and ``modality_confidence`` (fusion probability on each
    modality's source label over the misaligned samples). ``plan`` defaults to
    :func:`misaligned_plan` with ``seed``.

    On multi-label data this is :func:`evaluate_multilabel` (``plan`` and ``seed`` unused):
    without ``thresholds`` they are chosen on ``data`` (do that on validation), and the
    test split is scored with the validation metrics' ``thresholds``.
    """
    preds = predict(model, data)
    if preds.labels.dim() == 2:
        return multilabel_metrics(preds, thresholds)
    if thresholds is not None:
        raise ValueError("thresholds: only multi-label data (multi-hot labels [N, C]) is scored at thresholds")
    if plan is None:
        plan = misaligned_plan(preds.labels, len(preds.features), seed)
    return split_metrics(preds, misaligned_logits(model, preds, data, plan), plan)


def evaluate_multilabel(
    model: LateFusionClassifier, data: InMemoryDataset, thresholds: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Multi-label metrics of ``model`` on ``data`` (multi-hot labels ``[N, C]``); see
    :func:`multilabel_metrics`."""
    preds = predict(model, data)
    if preds.labels.dim() != 2:
        raise ValueError(f"data: expected multi-hot labels [N, C], got {tuple(preds.labels.shape)}")
    return multilabel_metrics(preds, thresholds)


def multilabel_metrics(preds: Predictions, thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """F1 of every head at a global threshold per head.

    ``thresholds`` (``{"fusion": t, modality: t, ...}``) come from validation; when ``None``
    each head's threshold is chosen here to maximise its micro-F1
    (:func:`~midas_data.experiments.metrics.select_threshold`), so pass ``None`` on
    validation only. Returns ``micro_f1``, ``macro_f1``, ``weighted_f1``, ``samples_f1`` (the
    fusion head), ``per_modality_micro_f1``, ``per_modality_macro_f1`` and ``thresholds``.
    """
    heads = {"fusion": preds.fusion_logits, **preds.unimodal_logits}
    probabilities = {name: logits.float().sigmoid().cpu() for name, logits in heads.items()}
    targets = preds.labels.cpu()
    if thresholds is None:
        thresholds = {name: metrics.select_threshold(p, targets)[0] for name, p in probabilities.items()}
    missing = sorted(set(heads) - set(thresholds))
    if missing:
        raise KeyError(f"thresholds: no threshold for heads {missing}; expected {sorted(heads)}")
    f1 = {
        (name, average): metrics.multilabel_f1(p, targets, thresholds[name], average)
        for name, p in probabilities.items()
        for average in (metrics.MULTILABEL_AVERAGES if name == "fusion" else ("micro", "macro"))
    }
    modalities = list(preds.unimodal_logits)
    return {
        **{f"{average}_f1": f1[("fusion", average)] for average in metrics.MULTILABEL_AVERAGES},
        "per_modality_micro_f1": {m: f1[(m, "micro")] for m in modalities},
        "per_modality_macro_f1": {m: f1[(m, "macro")] for m in modalities},
        "thresholds": {name: float(thresholds[name]) for name in heads},
    }


def split_metrics(preds: Predictions, mis_logits: torch.Tensor, plan: torch.Tensor) -> dict[str, Any]:
    """The figures of :func:`evaluate` from a split's predictions and the fusion logits of
    its misaligned rows ``plan`` (tensors on the CPU)."""
    modalities = list(preds.features)
    sources = preds.labels[plan]
    num_classes = preds.fusion_logits.shape[1]
    return {
        "accuracy": metrics.accuracy(preds.fusion_logits, preds.labels),
        "macro_f1": metrics.macro_f1(preds.fusion_logits, preds.labels, num_classes),
        "per_modality_accuracy": metrics.per_modality_accuracy(preds.unimodal_logits, preds.labels),
        "misaligned_accuracy": metrics.misaligned_accuracy(mis_logits, sources),
        "modality_confidence": metrics.modality_confidence(mis_logits.softmax(dim=1), sources, modalities),
    }


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, data: InMemoryDataset, batch_size: int = 200) -> int:
    """Precise BatchNorm: replace every BatchNorm layer's running statistics by their plain
    average over ``data`` (the training split), computed with the current weights.

    Running averages collected during training mix statistics of many past weights; after a
    fast-moving training run they can be far from those of the weights being evaluated. Only
    BatchNorm layers run in training mode during the pass (dropout stays off). Returns the
    number of BatchNorm layers; the model's mode is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
        bn.train()
    try:
        for start in range(0, len(data), batch_size):
            chunk = {m: v[start : start + batch_size] for m, v in data.tensors.items()}
            if hasattr(model, "encode"):  # a multimodal model: the heads have no BatchNorm
                model.encode(chunk)
            elif len(chunk) == 1:
                model(next(iter(chunk.values())))
            else:
                raise TypeError(f"model: {type(model).__name__} has no encode(); cannot feed modalities {list(chunk)}")
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return len(norms)


def with_bn_protocol(
    model: LateFusionClassifier, protocol: str, train: InMemoryDataset, samples: int | None = None
) -> LateFusionClassifier:
    """``model`` ready for evaluation under ``protocol`` (see :data:`BN_PROTOCOLS`):
    itself for ``"as_trained"``, a copy with statistics re-estimated on the first ``samples``
    training rows (all if ``None``) for ``"precise"``."""
    if protocol == "as_trained":
        return model
    if protocol == "precise":
        copied = copy.deepcopy(model)
        if samples is not None and samples < len(train):
            train = train.subset(torch.arange(samples))
        reestimate_batchnorm(copied, train)
        return copied
    raise ValueError(f"protocol: expected one of {BN_PROTOCOLS}, got {protocol!r}")
