"""Evaluation metrics for imbalanced multimodal classifiers, as pure functions over tensors.

* :func:`accuracy` and :func:`macro_f1` on aligned samples (scikit-learn underneath);
* :func:`per_modality_accuracy` from the unimodal heads' logits;
* :func:`misaligned_accuracy`: on misaligned samples, a hit when every distinct source
  label is inside the top-``k`` predictions, ``k`` = the number of distinct labels
  (top-2 for two modalities; ALGORITHM.md section 7);
* :func:`modality_confidence`: the fusion head's mean probability on each modality's
  source label over misaligned samples, the paper's picture of which modality the model
  listens to;
* multi-label: :func:`multilabel_f1` (micro, macro, weighted and samples F1 of thresholded
  probabilities) and :func:`select_threshold` (one global threshold chosen on validation).

Predictions may be given as logits or probabilities ``[N, C]`` (argmax is the same) or as
class ids ``[N]``. scikit-learn is imported only when a function needs it, so the core
package keeps importing with torch and numpy alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "accuracy",
    "macro_f1",
    "per_modality_accuracy",
    "misaligned_hits",
    "misaligned_accuracy",
    "modality_confidence",
    "multilabel_f1",
    "select_threshold",
    "MULTILABEL_AVERAGES",
]

MULTILABEL_AVERAGES = ("micro", "macro", "weighted", "samples")


def _sklearn_metrics() -> Any:
    try:
        from sklearn import metrics
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "midas_data.experiments.metrics needs scikit-learn for accuracy and macro-F1: "
            "pip install 'midas-data[metrics]'"
        ) from err
    return metrics


def _class_ids(predictions: torch.Tensor, name: str = "predictions") -> torch.Tensor:
    """Class ids ``[N]`` from ids ``[N]`` or scores ``[N, C]``."""
    if not isinstance(predictions, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(predictions).__name__}")
    if predictions.dim() == 2:
        return predictions.argmax(dim=1)
    if predictions.dim() == 1 and not predictions.dtype.is_floating_point:
        return predictions
    raise ValueError(
        f"{name}: expected scores [N, C] or integer class ids [N], got {predictions.dtype} {tuple(predictions.shape)}"
    )


def _check_targets(targets: torch.Tensor, n: int, name: str = "targets") -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.dtype.is_floating_point:
        raise ValueError(f"{name}: expected an integer tensor [N] of class ids")
    if targets.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries (one per prediction), got {targets.shape[0]}")
    if n == 0:
        raise ValueError(f"{name}: is empty; a metric over no samples is undefined")
    return targets


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose predicted class is the target, in ``[0, 1]``."""
    pred = _class_ids(predictions)
    _check_targets(targets, pred.shape[0])
    return float(_sklearn_metrics().accuracy_score(targets.cpu().numpy(), pred.cpu().numpy()))


def macro_f1(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores, in ``[0, 1]``.

    ``num_classes`` fixes the class set to ``0..C-1`` so that a class that is never
    predicted nor present counts as F1 = 0 rather than silently dropping out; by default
    (``None``) the classes present in targets or predictions are used, scikit-learn's rule.
    With scores ``[N, C]`` the class set is ``0..C-1``.
    """
    pred = _class_ids(predictions)
    _check_targets(targets, pred.shape[0])
    if num_classes is None and predictions.dim() == 2:
        num_classes = predictions.shape[1]
    labels = list(range(num_classes)) if num_classes is not None else None
    return float(
        _sklearn_metrics().f1_score(
            targets.cpu().numpy(), pred.cpu().numpy(), labels=labels, average="macro", zero_division=0
        )
    )


def per_modality_accuracy(unimodal_logits: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, float]:
    """Accuracy of each unimodal head: modality name -> accuracy."""
    if not unimodal_logits:
        raise ValueError("unimodal_logits: expected at least one modality")
    return {m: accuracy(logits, targets) for m, logits in unimodal_logits.items()}


def misaligned_hits(scores: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
    """``[K]`` bool: every distinct label of the row is within the top-``k`` of ``scores``.

    ``scores`` ``[K, C]`` are logits or probabilities on misaligned samples;
    ``source_labels`` ``[K, M]`` the class of each modality's source. ``k`` is the number
    of distinct labels in the row, so a row whose sources share one label asks for top-1.
    Ties in the scores are broken by ``torch.topk``'s order.
    """
    if scores.dim() != 2 or source_labels.dim() != 2 or scores.shape[0] != source_labels.shape[0]:
        raise ValueError(
            f"scores {tuple(scores.shape)} and source_labels {tuple(source_labels.shape)}: expected [K, C] and [K, M]"
        )
    if source_labels.dtype.is_floating_point:
        raise TypeError(f"source_labels: expected integer class ids, got {source_labels.dtype}")
    num_classes = scores.shape[1]
    if source_labels.numel() and (int(source_labels.min()) < 0 or int(source_labels.max()) >= num_classes):
        raise ValueError(f"source_labels: expected class ids in [0, {num_classes})")
    # Rank of every class in each row (0 = top); a label is inside the top-k iff rank < k.
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(num_classes, device=scores.device).expand_as(order))
    label_ranks = ranks.gather(1, source_labels.long())
    # k = number of distinct labels per row: sort the labels and count the changes.
    sorted_labels = source_labels.sort(dim=1).values
    k = 1 + (sorted_labels[:, 1:] != sorted_labels[:, :-1]).sum(dim=1)
    return (label_ranks < k.unsqueeze(1)).all(dim=1)


def misaligned_accuracy(scores: torch.Tensor, source_labels: torch.Tensor) -> float:
    """Fraction of misaligned samples whose distinct source labels are all in the top-``k``
    (see :func:`misaligned_hits`); 0.0 for no samples would hide a bug, so that raises."""
    hits = misaligned_hits(scores, source_labels)
    if hits.numel() == 0:
        raise ValueError("scores: no misaligned samples; misaligned accuracy is undefined")
    return float(hits.float().mean())


def modality_confidence(
    probabilities: torch.Tensor, source_labels: torch.Tensor, modalities: Sequence[str] | None = None
) -> dict[str, float] | list[float]:
    """Mean fusion probability on each modality's source label over misaligned samples.

    ``probabilities`` ``[K, C]`` (softmax of the fusion logits), ``source_labels``
    ``[K, M]``. A model that ignores modality ``m`` puts little probability on the labels
    that ``m`` comes from. Returns a dict keyed by ``modalities`` when given, else a list.
    """
    if probabilities.dim() != 2 or source_labels.shape[:1] != probabilities.shape[:1] or source_labels.dim() != 2:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and source_labels {tuple(source_labels.shape)}: "
            "expected [K, C] and [K, M]"
        )
    if probabilities.shape[0] == 0:
        raise ValueError("probabilities: no misaligned samples; modality confidence is undefined")
    means = probabilities.gather(1, source_labels.long()).float().mean(dim=0).tolist()
    if modalities is None:
        return means
    if len(modalities) != len(means):
        raise ValueError(
            f"modalities: expected {len(means)} names (one per column of source_labels), got {len(modalities)}"
        )
    return dict(zip(modalities, means))


def _check_multilabel(probabilities: torch.Tensor, targets: torch.Tensor) -> None:
    if probabilities.dim() != 2 or probabilities.shape != targets.shape or probabilities.shape[0] == 0:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and targets {tuple(targets.shape)}: expected the same "
            "non-empty shape [N, C]"
        )
    if not probabilities.dtype.is_floating_point:
        raise TypeError(f"probabilities: expected sigmoid outputs in [0, 1], got {probabilities.dtype}")


def multilabel_f1(
    probabilities: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5, average: str = "micro"
) -> float:
    """scikit-learn's F1 of multi-label predictions ``probabilities >= threshold``.

    ``probabilities`` ``[N, C]`` are per-class sigmoid outputs, ``targets`` ``[N, C]``
    multi-hot (values above 0.5 count as present). ``average``: ``"micro"`` (pooled over
    every sample and class), ``"macro"`` (mean of per-class F1), ``"weighted"`` (per-class F1
    weighted by support) or ``"samples"`` (mean of per-sample F1). An undefined F1 (no true
    and no predicted label) counts as 0.
    """
    _check_multilabel(probabilities, targets)
    if average not in MULTILABEL_AVERAGES:
        raise ValueError(f"average: expected one of {MULTILABEL_AVERAGES}, got {average!r}")
    predicted = (probabilities.detach() >= threshold).cpu().numpy().astype("int64")
    truth = (targets.detach() > 0.5).cpu().numpy().astype("int64")
    return float(_sklearn_metrics().f1_score(truth, predicted, average=average, zero_division=0))


def select_threshold(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    candidates: Sequence[float] | None = None,
    average: str = "micro",
) -> tuple[float, float]:
    """One global threshold chosen on validation: ``(threshold, F1)`` maximising
    :func:`multilabel_f1` with ``average`` over ``candidates`` (default 0.05, 0.10, ..., 0.95;
    the smallest threshold wins ties). Apply the threshold unchanged to the test split.
    """
    _check_multilabel(probabilities, targets)
    grid = [round(0.05 * k, 2) for k in range(1, 20)] if candidates is None else list(candidates)
    if not grid:
        raise ValueError("candidates: expected at least one threshold")
    best = max(grid, key=lambda t: (multilabel_f1(probabilities, targets, t, average), -t))
    return float(best), multilabel_f1(probabilities, targets, best, average)
