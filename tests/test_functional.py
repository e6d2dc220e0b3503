"""The functional layer against ALGORITHM.md: worked numbers, invariants, bad input."""

import math

import pytest
import torch

from midas_data import functional as MF


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- pair plans --------------------------------------------------------------------------
def test_two_modalities_give_both_directions_with_other_class_partners():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    plan = MF.plan_pairs(labels, 2, gen())
    b = labels.numel()
    assert plan.sources.shape == (2 * b, 2)
    assert plan.num_unpaired == 0
    first, second = plan.sources[:b], plan.sources[b:]
    # Direction 0 keeps modality 0 of the anchor, direction 1 keeps modality 1, same partner.
    assert torch.equal(first[:, 0], torch.arange(b))
    assert torch.equal(second[:, 1], torch.arange(b))
    assert torch.equal(first[:, 1], second[:, 0])
    assert (labels[first[:, 0]] != labels[first[:, 1]]).all()
    assert torch.equal(plan.anchors, torch.arange(b).repeat(2))
    assert torch.equal(MF.plan_anchors(plan.sources), plan.anchors)


def test_partner_is_uniform_among_other_class_members():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    g = gen(1)
    counts = torch.zeros(6)
    trials = 6000
    for _ in range(trials):
        counts[MF.plan_partners(labels, 2, g)[0, 1]] += 1
    # Anchor 0 (class 0) must pick each of rows 1..5 with probability 1/5 and never itself.
    assert counts[0] == 0
    freq = counts[1:] / trials
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.03)


def test_partner_is_uniform_for_every_class_position():
    # A class in the middle of the sorted order and unsorted rows: anchor 2 (class 1) must
    # pick the four rows of classes 0 and 2 equally often, never a row of its own class.
    labels = torch.tensor([2, 0, 1, 1, 2, 0, 1])
    g = gen(2)
    counts = torch.zeros(7)
    trials = 8000
    for _ in range(trials):
        counts[MF.plan_partners(labels, 2, g)[2, 1]] += 1
    assert counts[[2, 3, 6]].sum() == 0
    assert torch.allclose(counts[[0, 1, 4, 5]] / trials, torch.full((4,), 0.25), atol=0.03)


def test_single_class_batch_yields_no_rows_and_counts_them():
    plan = MF.plan_pairs(torch.tensor([3, 3, 3, 3]), 2, gen())
    assert plan.sources.shape == (0, 2)
    assert plan.num_unpaired == 8


def test_a_lone_other_class_member_is_every_anchors_partner():
    # As soon as two classes are present every anchor has a partner: rows are never absent.
    labels = torch.tensor([0, 0, 0, 1])
    plan = MF.plan_pairs(labels, 2, gen())
    assert plan.num_unpaired == 0 and plan.sources.shape == (8, 2)
    assert plan.sources[:3, 1].tolist() == [3, 3, 3]
    assert plan.sources[3, 1] in (0, 1, 2)


def test_three_modalities_keep_one_modality_and_mix_two_labels():
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    plan = MF.plan_pairs(labels, 3, gen(4))
    b = labels.numel()
    assert plan.sources.shape == (3 * b, 3)
    for k in range(3 * b):
        kept = k // b
        anchor = plan.anchors[k]
        assert plan.sources[k, kept] == anchor
        assert labels[plan.sources[k]].unique().numel() >= 2
    assert torch.equal(MF.plan_anchors(plan.sources), plan.anchors)


def test_reference_rule_is_a_permutation_and_may_share_labels():
    labels = torch.zeros(16, dtype=torch.long)
    plan = MF.plan_pairs(labels, 2, gen(), rule="any")
    assert plan.sources.shape == (32, 2) and plan.num_unpaired == 0
    assert torch.equal(plan.sources[:16, 1].sort().values, torch.arange(16))


def test_plans_are_deterministic_per_generator_seed():
    labels = torch.randint(0, 4, (32,), generator=gen(9))
    assert torch.equal(MF.plan_partners(labels, 2, gen(5)), MF.plan_partners(labels, 2, gen(5)))
    assert not torch.equal(MF.plan_partners(labels, 2, gen(5)), MF.plan_partners(labels, 2, gen(6)))


@pytest.mark.parametrize(
    "labels, error",
    [
        (torch.tensor([[0, 1]]), ValueError),
        (torch.tensor([0.0, 1.0]), TypeError),
        ([0, 1], TypeError),
    ],
)
def test_plan_rejects_bad_labels(labels, error):
    with pytest.raises(error, match="labels"):
        MF.plan_pairs(labels)


def test_plan_rejects_one_modality_and_unknown_rule():
    with pytest.raises(ValueError, match="num_modalities"):
        MF.plan_pairs(torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match="rule"):
        MF.plan_pairs(torch.tensor([0, 1]), 2, rule="confusing")


# -- soft labels ---------------------------------------------------------------------------
def test_paper_worked_example_soft_label():
    target = MF.soft_labels(torch.tensor([[0.9, 0.3]]), torch.tensor([[2, 0]]), num_classes=4)
    assert torch.allclose(target, torch.tensor([[0.25, 0.0, 0.75, 0.0]]))
    assert torch.allclose(MF.normalized_confidences(torch.tensor([[0.9, 0.3]])), torch.tensor([[0.75, 0.25]]))


def test_soft_labels_sum_to_one_and_live_on_source_labels():
    conf = torch.rand(50, 3, generator=gen(2)) + 1e-3
    src = torch.randint(0, 7, (50, 3), generator=gen(3))
    target = MF.soft_labels(conf, src, 7)
    assert torch.allclose(target.sum(1), torch.ones(50))
    outside = torch.ones(50, 7, dtype=torch.bool).scatter(1, src, False)
    assert (target[outside] == 0).all()


def test_soft_labels_with_zero_confidences_split_equally():
    target = MF.soft_labels(torch.zeros(1, 2), torch.tensor([[0, 1]]), 2)
    assert torch.allclose(target, torch.tensor([[0.5, 0.5]]))


def test_soft_labels_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        MF.soft_labels(torch.rand(3, 2), torch.zeros(3, 3, dtype=torch.long), 4)


# -- hard-sample weights -------------------------------------------------------------------
def test_hard_weights_match_formula_and_range():
    a, b = torch.randn(40, 5, generator=gen(1)), torch.randn(40, 5, generator=gen(2))
    w = MF.hard_sample_weights([a], [b])
    expected = 1 + (torch.nn.functional.cosine_similarity(a, b) + 1) / 2
    assert torch.allclose(w, expected, atol=1e-6)
    assert ((w >= 1) & (w <= 2)).all()
    assert torch.allclose(MF.hard_sample_weights([a], [a]), torch.full((40,), 2.0))
    assert torch.allclose(MF.hard_sample_weights([a], [-a]), torch.full((40,), 1.0))


def test_hard_weights_zero_norm_is_finite():
    w = MF.hard_sample_weights([torch.zeros(3, 4)], [torch.randn(3, 4)])
    assert torch.isfinite(w).all() and torch.allclose(w, torch.full((3,), 1.5))


def test_hard_weights_average_only_replaced_modalities():
    same = torch.ones(2, 3)
    opposite = -torch.ones(2, 3)
    replaced = torch.tensor([[True, False], [True, True]])
    w = MF.hard_sample_weights([same, same], [same, opposite], replaced)
    # Row 0 sees only modality 0 (cos 1 -> w 2); row 1 averages cos 1 and -1 (s 0 -> w 1.5).
    assert torch.allclose(w, torch.tensor([2.0, 1.5]))


def test_hard_weights_are_detached():
    a = torch.randn(4, 3, requires_grad=True)
    assert not MF.hard_sample_weights([a], [a.flip(0)]).requires_grad


# -- misaligned loss ------------------------------------------------------------------------
def test_misaligned_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    conf = torch.tensor([[0.9, 0.3]])
    src = torch.tensor([[0, 1]])
    alpha = torch.tensor([1.0, 1.4])
    w = torch.tensor([1.6])
    logp = torch.log_softmax(logits, 1)[0]
    expected = 1.6 * -(1.0 * 0.75 * logp[0] + 1.4 * 0.25 * logp[1])
    got = MF.misaligned_loss(logits, conf, src, alpha, w)
    assert torch.allclose(got, expected.view(1))


def test_misaligned_loss_equals_weighted_soft_label_cross_entropy_when_alpha_is_one():
    logits = torch.randn(6, 5, generator=gen(3))
    conf = torch.rand(6, 2, generator=gen(4))
    src = torch.randint(0, 5, (6, 2), generator=gen(5))
    ce = -(MF.soft_labels(conf, src, 5) * torch.log_softmax(logits, 1)).sum(1)
    got = MF.misaligned_loss(logits, conf, src, torch.ones(2), torch.ones(6))
    assert torch.allclose(got, ce, atol=1e-6)


def test_misaligned_loss_gradient_reaches_logits_only():
    logits = torch.randn(3, 4, requires_grad=True)
    conf = torch.rand(3, 2, requires_grad=True)
    MF.misaligned_loss(logits, conf, torch.randint(0, 4, (3, 2)), torch.ones(2), torch.ones(3)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert conf.grad is None


def test_misaligned_loss_shape_errors():
    with pytest.raises(ValueError, match="alpha"):
        MF.misaligned_loss(
            torch.randn(2, 3), torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.long), torch.ones(3), torch.ones(2)
        )
    with pytest.raises(ValueError, match="weights"):
        MF.misaligned_loss(
            torch.randn(2, 3), torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.long), torch.ones(2), torch.ones(3)
        )
    with pytest.raises(ValueError, match="fusion_logits"):
        MF.misaligned_loss(
            torch.randn(3, 3), torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.long), torch.ones(2), torch.ones(2)
        )


def test_fusion_confidence_ratio():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    q = MF.fusion_confidence_ratio(probs, torch.tensor([[0, 2]]))
    assert torch.allclose(q, torch.tensor([[6 / 7, 1 / 7]]))


def test_swap_features_follows_the_plan():
    f0, f1 = torch.arange(4.0).view(4, 1), 10 + torch.arange(4.0).view(4, 1)
    plan = torch.tensor([[0, 3], [2, 1]])
    s0, s1 = MF.swap_features([f0, f1], plan)
    assert s0.flatten().tolist() == [0.0, 2.0] and s1.flatten().tolist() == [13.0, 11.0]
    assert math.isclose(float(s0.sum()), 2.0)


def test_soft_labels_of_subnormal_confidences_still_sum_to_one():
    target = MF.soft_labels(torch.tensor([[0.0, 1.4013e-45]]), torch.tensor([[0, 1]]), 2)
    assert torch.allclose(target.sum(dim=1), torch.ones(1)) and torch.equal(target, torch.tensor([[0.5, 0.5]]))
