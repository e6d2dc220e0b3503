"""midas_data.experiments.metrics against values computed by hand."""

import math

import pytest
import torch

from midas_data.experiments import metrics


def test_accuracy_from_logits_and_from_class_ids():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert metrics.accuracy(logits, labels) == pytest.approx(2 / 3)
    assert metrics.accuracy(torch.tensor([0, 1, 0]), labels) == pytest.approx(2 / 3)


def test_macro_f1_by_hand():
    # class 0: P = 1, R = 1/2, F1 = 2/3; class 1: P = 2/3, R = 1, F1 = 4/5
    y_true = torch.tensor([0, 0, 1, 1])
    y_pred = torch.tensor([0, 1, 1, 1])
    assert metrics.macro_f1(y_pred, y_true) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # A third class that never occurs counts as F1 = 0 when the class set is fixed.
    assert metrics.macro_f1(y_pred, y_true, num_classes=3) == pytest.approx((2 / 3 + 4 / 5) / 3)


def test_macro_f1_with_scores_uses_all_score_columns():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    assert metrics.macro_f1(scores, torch.tensor([0, 1])) == pytest.approx(2 / 3)


def test_per_modality_accuracy():
    labels = torch.tensor([0, 1])
    heads = {"image": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "audio": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    assert metrics.per_modality_accuracy(heads, labels) == {"image": 0.5, "audio": 1.0}


def test_misaligned_hits_needs_every_distinct_label_in_the_top_k():
    scores = torch.tensor([[0.5, 0.3, 0.2]]).repeat(4, 1)
    sources = torch.tensor([[0, 1], [0, 2], [1, 1], [0, 0]])
    # (0, 1): top-2 = {0, 1} hit; (0, 2): 2 is third, miss; (1, 1): k = 1, top-1 is 0, miss; (0, 0): hit.
    assert metrics.misaligned_hits(scores, sources).tolist() == [True, False, False, True]
    assert metrics.misaligned_accuracy(scores, sources) == pytest.approx(0.5)


def test_misaligned_hits_with_three_modalities():
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]])
    sources = torch.tensor([[0, 1, 2], [0, 1, 3]])  # k = 3: top-3 is {0, 1, 2}
    assert metrics.misaligned_hits(scores, sources).tolist() == [True, False]


def test_modality_confidence_by_hand():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    sources = torch.tensor([[0, 1], [2, 0]])
    got = metrics.modality_confidence(probs, sources, ("image", "audio"))
    assert got["image"] == pytest.approx(0.6)
    assert got["audio"] == pytest.approx(0.25)
    assert metrics.modality_confidence(probs, sources) == pytest.approx([0.6, 0.25])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="targets"):
        metrics.accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="predictions"):
        metrics.accuracy(torch.tensor([0.5, 0.2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="source_labels"):
        metrics.misaligned_hits(torch.rand(2, 3), torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(ValueError, match="no misaligned samples"):
        metrics.misaligned_accuracy(torch.rand(0, 3), torch.zeros(0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="modalities"):
        metrics.modality_confidence(torch.rand(2, 3), torch.tensor([[0, 1], [1, 2]]), ("only_one",))


def test_metrics_are_plain_floats():
    value = metrics.accuracy(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert isinstance(value, float) and not math.isnan(value)
