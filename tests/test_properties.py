"""Invariants of the MIDAS math and the epoch plans, over generated inputs (hypothesis)."""

import math

import pytest
import torch

from midas_data import functional as MF
from midas_data.controller import WeakModalityController
from midas_data.feedback.planning import POLICIES, batch_bounds, plan_from_snapshot

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=60, deadline=None)
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def labelled_batches(draw):
    """Labels of a batch (sizes 1-40, 1-5 classes, often skewed), modalities, a seed."""
    size = draw(st.integers(1, 40))
    classes = draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=size, max_size=size))
    return torch.tensor(labels), draw(st.integers(2, 4)), draw(st.integers(0, 2**31))


@FAST
@given(labelled_batches())
def test_paper_rule_plans_pair_only_rows_of_different_labels(case):
    labels, modalities, seed = case
    plan = MF.plan_pairs(labels, modalities, torch.Generator().manual_seed(seed), "different_label")
    rows, batch = plan.sources.shape[0], labels.numel()
    sources = labels[plan.sources]
    # Every misaligned row mixes at least two classes; two modalities: exactly the anchor's
    # and its partner's.
    assert (sources != labels[plan.anchors].unsqueeze(1)).any(dim=1).all()
    if modalities == 2:
        assert (sources[:, 0] != sources[:, 1]).all()
    # Row k keeps its own modality from its anchor, and the plan says so by itself.
    assert torch.equal(MF.plan_anchors(plan.sources), plan.anchors)
    # A row is missing exactly when its anchor's class fills the batch.
    single_class = bool((labels == labels[0]).all())
    assert plan.num_unpaired == (modalities * batch if single_class else 0)
    assert rows + plan.num_unpaired == modalities * batch


@st.composite
def confidences_and_sources(draw):
    rows = draw(st.integers(1, 12))
    modalities = draw(st.integers(2, 4))
    classes = draw(st.integers(2, 6))
    conf = draw(st.lists(unit, min_size=rows * modalities, max_size=rows * modalities))
    src = draw(st.lists(st.integers(0, classes - 1), min_size=rows * modalities, max_size=rows * modalities))
    return (
        torch.tensor(conf, dtype=torch.float32).reshape(rows, modalities),
        torch.tensor(src).reshape(rows, modalities),
        classes,
    )


@FAST
@given(confidences_and_sources())
def test_soft_labels_sum_to_one_with_mass_only_on_source_labels(case):
    confidences, sources, classes = case
    target = MF.soft_labels(confidences, sources, classes)
    assert torch.allclose(target.sum(dim=1), torch.ones(target.shape[0]), atol=1e-5)
    assert (target >= 0).all()
    on_source = torch.zeros_like(target, dtype=torch.bool).scatter_(1, sources, True)
    assert (target[~on_source] == 0).all()


@st.composite
def feature_pairs(draw):
    rows = draw(st.integers(1, 8))
    width = draw(st.integers(1, 6))
    modalities = draw(st.integers(1, 3))
    scale = st.one_of(st.just(0.0), st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False))

    def block():
        values = draw(st.lists(scale, min_size=rows * width, max_size=rows * width))
        return torch.tensor(values, dtype=torch.float32).reshape(rows, width)

    originals = [block() for _ in range(modalities)]
    swapped = [block() for _ in range(modalities)]
    replaced = draw(st.lists(st.booleans(), min_size=rows * modalities, max_size=rows * modalities))
    return originals, swapped, torch.tensor(replaced).reshape(rows, modalities)


@FAST
@given(feature_pairs(), st.booleans())
def test_hard_weights_lie_in_one_to_two(case, with_mask):
    originals, swapped, replaced = case
    weights = MF.hard_sample_weights(originals, swapped, replaced if with_mask else None)
    assert torch.isfinite(weights).all()
    assert ((weights >= 1.0) & (weights <= 2.0)).all()


@st.composite
def controller_runs(draw):
    variant = draw(st.sampled_from(["paper", "reference"]))
    modalities = 2 if variant == "reference" else draw(st.integers(2, 4))
    eta = draw(st.floats(0.0, 2.0, allow_nan=False))
    alpha_max = draw(st.one_of(st.floats(1.0, 5.0, allow_nan=False), st.none()))
    steps = draw(st.integers(1, 30))
    rows = draw(st.integers(0, 6))
    return variant, modalities, eta, alpha_max, steps, rows, draw(st.integers(0, 2**31))


@FAST
@given(controller_runs())
def test_alpha_stays_in_one_to_alpha_max(case):
    variant, modalities, eta, alpha_max, steps, rows, seed = case
    generator = torch.Generator().manual_seed(seed)
    controller = WeakModalityController(modalities, eta=eta, alpha_max=alpha_max, variant=variant)
    upper = math.inf if alpha_max is None else alpha_max
    for _ in range(steps):
        shares = MF.normalized_confidences(torch.rand(rows, modalities, generator=generator))
        ratio = MF.normalized_confidences(torch.rand(rows, modalities, generator=generator))
        alpha = controller.update(
            shares,
            ratio,
            aligned_confidences=torch.rand(max(rows, 1), modalities, generator=generator),
            fusion_source_probs=torch.rand(rows, modalities, generator=generator),
        )
        assert ((alpha >= 1.0) & (alpha <= upper + 1e-6)).all()


@FAST
@given(
    st.integers(2, 300),
    st.integers(2, 17),
    st.integers(1, 4),
    st.integers(0, 50),
    st.integers(0, 2**31),
    st.booleans(),
)
def test_uniform_epochs_cover_each_sample_once(n, batch_size, replicas, epoch, seed, shuffle):
    if n < 2 * replicas:
        replicas = 1
    order = plan_from_snapshot(n, epoch, seed, "uniform", None, 0.2, shuffle=shuffle).order
    assert sorted(order.tolist()) == list(range(n))
    # Cut into batches for every rank, the epoch still visits every sample exactly once.
    slots = []
    for rank in range(replicas):
        bounds = batch_bounds(n, batch_size, replicas, rank)
        slots += [i for begin, end in bounds for i in order[begin:end].tolist()]
        assert all(end - begin >= 2 for begin, end in bounds) or n < 2
    assert sorted(slots) == list(range(n))


@st.composite
def snapshots(draw):
    policy = draw(st.sampled_from(POLICIES))
    n = draw(st.integers(1, 200))
    low = -1.0 if policy == "hard" else 0.0
    value = st.one_of(st.floats(low, 1.0, allow_nan=False), st.just(math.nan))
    values = draw(st.lists(value, min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    floor = draw(st.floats(0.01, 1.0, allow_nan=False))
    return policy, torch.tensor(values).to(dtype), floor, draw(st.integers(0, 2**31)), draw(st.integers(0, 9))


@FAST
@given(snapshots())
def test_importance_weights_average_to_one_under_every_policy(case):
    policy, snapshot, floor, seed, epoch = case
    n = snapshot.numel()
    plan = plan_from_snapshot(n, epoch, seed, policy, None if policy == "uniform" else snapshot, floor)
    ids = torch.arange(n)
    expected = plan.expected_counts(ids)
    weights = plan.importance_weights(ids).double()
    # E_p[w] = sum_i p_i / (N p_i) = 1, with p_i = expected_i / N a distribution.
    assert expected.sum().item() == pytest.approx(n, rel=1e-9)
    assert (expected * weights / n).sum().item() == pytest.approx(1.0, rel=1e-6)
    # Weights are float32: allow its rounding, relative to the bound (1/floor reaches 100).
    assert ((weights > 0) & (weights <= (1.0 / floor) * (1 + 1e-6))).all()
    # The realised epoch draws each sample floor(N p_i) or ceil(N p_i) times.
    counts = torch.bincount(plan.order.long(), minlength=n).double()
    assert ((counts - expected).abs() < 1.0 + 1e-9).all() and counts.sum().item() == n
