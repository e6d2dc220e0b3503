"""MidasObjective, the alpha controller and the reference model."""

import pytest
import torch
from torch import nn

from midas_data import LateFusionClassifier, MidasBatch, MidasObjective, MultimodalOutput, WeakModalityController
from midas_data import functional as MF

MODS = ("a", "v")


def make_model(num_classes: int = 3, seed: int = 0, modalities=MODS) -> LateFusionClassifier:
    torch.manual_seed(seed)
    dims = {"a": 4, "v": 6, "t": 5}
    encoders = {m: nn.Sequential(nn.Linear(dims[m], 8), nn.ReLU()) for m in modalities}
    return LateFusionClassifier(encoders, {m: 8 for m in modalities}, num_classes)


def make_batch(batch_size: int = 12, num_classes: int = 3, seed: int = 0, modalities=MODS) -> MidasBatch:
    g = torch.Generator().manual_seed(seed)
    dims = {"a": 4, "v": 6, "t": 5}
    inputs = {m: torch.randn(batch_size, dims[m], generator=g) for m in modalities}
    labels = torch.arange(batch_size) % num_classes
    plan = MF.plan_pairs(labels, len(modalities), g)
    return MidasBatch(
        inputs, labels, torch.arange(batch_size), plan.sources, tuple(modalities), num_unpaired=plan.num_unpaired
    )


# -- controller --------------------------------------------------------------------------
def test_paper_worked_example_alpha_grows_on_the_weak_modality():
    ctl = WeakModalityController(2, eta=0.05)
    shares = torch.tensor([[0.75, 0.25]])
    q = torch.tensor([[0.90, 0.10]])  # the fusion head under-uses modality 1
    alpha = ctl.update(shares, q)
    assert torch.allclose(alpha, torch.tensor([1.0, 1.05]))
    alpha = ctl.update(shares, q)
    assert torch.allclose(alpha, torch.tensor([1.0, 1.10]))


def test_alpha_moves_down_but_never_below_one_nor_above_max():
    ctl = WeakModalityController(2, eta=0.5, alpha_max=2.0)
    under = (torch.tensor([[0.7, 0.3]]), torch.tensor([[0.9, 0.1]]))
    over = (torch.tensor([[0.7, 0.3]]), torch.tensor([[0.4, 0.6]]))
    for _ in range(10):
        ctl.update(*under)
    assert torch.allclose(ctl.alpha, torch.tensor([1.0, 2.0]))
    ctl.update(*over)
    assert torch.allclose(ctl.alpha, torch.tensor([1.0, 1.5]))
    for _ in range(10):
        ctl.update(*over)
    assert torch.allclose(ctl.alpha, torch.tensor([1.0, 1.0]))


def test_controller_state_round_trip_and_mismatch():
    ctl = WeakModalityController(3)
    ctl.update(torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([[0.1, 0.5, 0.4]]))
    other = WeakModalityController(3)
    other.load_state_dict(ctl.state_dict())
    assert torch.equal(other.alpha, ctl.alpha) and ctl.alpha[0] > 1
    with pytest.raises(ValueError, match="modalities"):
        WeakModalityController(2).load_state_dict(ctl.state_dict())


def test_empty_update_leaves_alpha():
    ctl = WeakModalityController(2)
    assert torch.equal(ctl.update(torch.zeros(0, 2), torch.zeros(0, 2)), torch.ones(2))


def test_reference_controller_by_hand():
    ctl = WeakModalityController(2, eta=0.05, variant="reference")
    aligned = torch.tensor([[0.8, 0.2], [0.6, 0.4]])  # modality 0 stronger: uni ratio 1.4/0.6
    assert torch.equal(ctl.loss_weights(aligned), torch.tensor([1.0, 1.0]))
    # Fusion ratio 0.9/0.1 = 9 > 2.33: the fusion head leans to the strong side, alpha grows.
    fusion = torch.tensor([[0.9, 0.1]])
    ctl.update(
        torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]]), aligned_confidences=aligned, fusion_source_probs=fusion
    )
    assert torch.allclose(ctl.alpha, torch.tensor([1.0, 1.05]))
    # Now modality 1 is the stronger one: the scalar alpha moves to modality 0.
    flipped = aligned.flip(1)
    assert torch.allclose(ctl.loss_weights(flipped), torch.tensor([1.05, 1.0]))


def test_reference_controller_needs_two_modalities():
    with pytest.raises(ValueError, match="two modalities"):
        WeakModalityController(3, variant="reference")


# -- objective ---------------------------------------------------------------------------
def test_feature_and_input_level_give_the_same_loss_on_late_fusion():
    model, batch = make_model(), make_batch()
    out = model(batch.inputs)
    loss_f, diag_f = MidasObjective(3, MODS)(out, batch, fuse=model.fuse)
    mis = model(batch.materialize())
    loss_i, diag_i = MidasObjective(3, MODS)(out, batch, misaligned_logits=mis.fusion_logits)
    assert torch.allclose(loss_f, loss_i, atol=1e-6)
    assert torch.allclose(diag_f["alpha"], diag_i["alpha"])
    assert diag_f["num_misaligned"] == 24


def test_total_loss_by_hand_paper_form():
    model, batch = make_model(), make_batch()
    out = model(batch.inputs)
    obj = MidasObjective(3, MODS, lam=0.7)
    loss, diag = obj(out, batch, fuse=model.fuse)
    y, plan, anchors = batch.labels, batch.plan, batch.anchors
    ce = nn.functional.cross_entropy
    align = ce(out.fusion_logits, y, reduction="none")
    uni = sum(ce(out.unimodal_logits[m], y, reduction="none") for m in MODS)
    conf = torch.stack([out.unimodal_logits[m].softmax(1)[torch.arange(12), y] for m in MODS], 1).detach()
    mis_logits = model.fuse({m: out.features[m][plan[:, i]] for i, m in enumerate(MODS)})
    rows, hard = [], []
    for k in range(plan.shape[0]):
        i = anchors[k]
        c = torch.stack([conf[plan[k, 0], 0], conf[plan[k, 1], 1]])
        c = c / c.sum()
        logp = mis_logits[k].log_softmax(0)
        sims = [
            nn.functional.cosine_similarity(out.features[m][i], out.features[m][plan[k, j]], dim=0)
            for j, m in enumerate(MODS)
            if plan[k, j] != i
        ]
        w = 1 + (torch.stack(sims).mean() + 1) / 2
        hard.append(w)
        rows.append(w * -(c[0] * logp[y[plan[k, 0]]] + c[1] * logp[y[plan[k, 1]]]))
    expected = (align + uni).mean() + 0.7 * torch.stack(rows).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(diag["hard_weight"], torch.stack(hard).mean(), atol=1e-6)


def test_reference_variant_uses_mean_unimodal_loss():
    model, batch = make_model(), make_batch()
    out = model(batch.inputs)
    paper = MidasObjective(3, MODS, warmup_epochs=1)
    ref = MidasObjective(3, MODS, warmup_epochs=1, variant="reference")
    lp, _ = paper(out, batch, fuse=model.fuse)
    lr, _ = ref(out, batch, fuse=model.fuse)
    assert torch.allclose(lp, 2 * lr)


def test_warmup_trains_only_unimodal_heads():
    model, batch = make_model(), make_batch()
    obj = MidasObjective(3, MODS, warmup_epochs=2)
    obj.set_epoch(1)
    loss, diag = obj(model(batch.inputs), batch, fuse=model.fuse)
    loss.backward()
    assert diag["warmup"] and diag["num_misaligned"] == 0
    assert model.fusion_head.weight.grad is None
    assert model.unimodal_heads["a"].weight.grad.abs().sum() > 0
    assert torch.equal(obj.alpha, torch.ones(2))
    obj.set_epoch(2)
    _, diag = obj(model(batch.inputs), batch, fuse=model.fuse)
    assert not diag["warmup"] and diag["num_misaligned"] == 24


def _grads(model, batch, lam):
    model.zero_grad()
    loss, _ = MidasObjective(3, MODS, lam=lam)(model(batch.inputs), batch, fuse=model.fuse)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_misaligned_loss_reaches_encoders_and_fusion_head_not_through_confidences():
    model, batch = make_model(), make_batch()
    # The gradient of lambda * L_mis is the difference between lambda = 1 and lambda = 0.
    with_mis, without = _grads(model, batch, 1.0), _grads(model, batch, 0.0)
    delta = {name: (with_mis[name] - without[name]).abs().sum() for name in with_mis}
    assert delta["fusion_head.weight"] > 0
    assert delta["encoders.a.0.weight"] > 0 and delta["encoders.v.0.weight"] > 0
    # Confidences are constants: L_mis sends nothing into the unimodal heads.
    assert delta["unimodal_heads.a.weight"] == 0 and delta["unimodal_heads.v.weight"] == 0


def test_three_modalities():
    mods = ("a", "v", "t")
    model, batch = make_model(4, modalities=mods), make_batch(16, 4, modalities=mods)
    obj = MidasObjective(4, mods)
    loss, diag = obj(model(batch.inputs), batch, fuse=model.fuse)
    assert torch.isfinite(loss) and diag["num_misaligned"] == 48
    assert diag["confidence_share"].shape == (3,)
    assert torch.allclose(diag["confidence_share"].sum(), torch.tensor(1.0))


def test_single_class_batch_trains_aligned_loss_only():
    model = make_model()
    labels = torch.zeros(6, dtype=torch.long)
    plan = MF.plan_pairs(labels)
    batch = MidasBatch(
        {"a": torch.randn(6, 4), "v": torch.randn(6, 6)},
        labels,
        torch.arange(6),
        plan.sources,
        MODS,
        num_unpaired=plan.num_unpaired,
    )
    out = model(batch.inputs)
    loss, diag = MidasObjective(3, MODS)(out, batch, fuse=model.fuse)
    ce = nn.functional.cross_entropy
    expected = ce(out.fusion_logits, labels) + sum(ce(out.unimodal_logits[m], labels) for m in MODS)
    assert torch.allclose(loss, expected)
    assert diag["num_misaligned"] == 0 and diag["num_unpaired"] == 12


def test_ablation_switches():
    model, batch = make_model(), make_batch()
    out = model(batch.inputs)
    obj = MidasObjective(3, MODS, hard_sample_weighting=False, weak_modality_weighting=False)
    for _ in range(3):
        _, diag = obj(out, batch, fuse=model.fuse)
    assert torch.equal(diag["hard_weight"], torch.tensor(1.0))
    assert torch.equal(obj.alpha, torch.ones(2))


def test_per_sample_statistics_for_the_feedback_loop():
    model, batch = make_model(), make_batch()
    out = model(batch.inputs)
    _, diag = MidasObjective(3, MODS)(out, batch, fuse=model.fuse)
    stats = diag["per_sample"]
    assert stats["confidence"].shape == (12, 2)
    assert stats["similarity"].shape == (12,) and stats["has_misaligned"].all()
    assert ((stats["similarity"] >= -1) & (stats["similarity"] <= 1)).all()
    assert not any(v.requires_grad for v in stats.values())


def test_tiny_training_run_loss_decreases():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, classes = 256, 4
    labels = torch.randint(0, classes, (n,), generator=g)
    centers_a, centers_v = torch.randn(classes, 4, generator=g) * 2, torch.randn(classes, 6, generator=g)
    xa = centers_a[labels] + torch.randn(n, 4, generator=g) * 0.5
    xv = centers_v[labels] + torch.randn(n, 6, generator=g)
    model = make_model(classes)
    obj = MidasObjective(classes, MODS, warmup_epochs=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for epoch in range(8):
        obj.set_epoch(epoch)
        total = 0.0
        for start in range(0, n, 32):
            sl = slice(start, start + 32)
            plan = MF.plan_pairs(labels[sl], 2, g)
            batch = MidasBatch({"a": xa[sl], "v": xv[sl]}, labels[sl], torch.arange(n)[sl], plan.sources, MODS)
            loss, _ = obj(model(batch.inputs), batch, fuse=model.fuse)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total)
    # Epoch 0 is warm-up (unimodal loss only); from epoch 1 the full loss must fall.
    assert losses[-1] < 0.7 * losses[1]
    accuracy = (model({"a": xa, "v": xv}).fusion_logits.argmax(1) == labels).float().mean()
    assert accuracy > 0.9


# -- bad input ---------------------------------------------------------------------------
def _out(batch_size=4, classes=3, nan=False, shape_a=None):
    fusion = torch.randn(batch_size, classes)
    if nan:
        fusion[0, 0] = float("nan")
    return MultimodalOutput(
        {"a": torch.randn(shape_a or batch_size, 8), "v": torch.randn(batch_size, 8)},
        {"a": torch.randn(batch_size, classes), "v": torch.randn(batch_size, classes)},
        fusion,
    )


def test_bad_inputs_name_the_argument():
    obj = MidasObjective(3, MODS)
    labels = torch.tensor([0, 1, 2, 0])
    plan = MF.plan_partners(labels)
    fuse = lambda f: torch.randn(f["a"].shape[0], 3)  # noqa: E731
    with pytest.raises(ValueError, match="fusion_logits: contains NaN"):
        obj(_out(nan=True), labels=labels, plan=plan, fuse=fuse)
    with pytest.raises(ValueError, match=r"labels: expected class ids in \[0, 3\)"):
        obj(_out(), labels=torch.tensor([0, 1, 5, 0]), plan=plan, fuse=fuse)
    with pytest.raises(ValueError, match=r"output.features\['a'\]: expected 4 rows"):
        obj(_out(shape_a=3), labels=labels, plan=plan, fuse=fuse)
    with pytest.raises(ValueError, match="empty"):
        obj(_out(0), labels=torch.zeros(0, dtype=torch.long), plan=plan[:0], fuse=fuse)
    with pytest.raises(IndexError, match="plan: entries must be batch rows"):
        obj(_out(), labels=labels, plan=plan + 4, fuse=fuse)
    with pytest.raises(ValueError, match="exactly one of fuse"):
        obj(_out(), labels=labels, plan=plan)
    with pytest.raises(ValueError, match="misaligned_logits: expected shape"):
        obj(_out(), labels=labels, plan=plan, misaligned_logits=torch.randn(3, 3))
    with pytest.raises(KeyError, match="missing modality"):
        MidasObjective(3, ("a", "x"))(_out(), labels=labels, plan=plan, fuse=fuse)


def test_one_modality_is_rejected():
    with pytest.raises(ValueError, match="at least two"):
        MidasObjective(3, ("a",))
    with pytest.raises(ValueError, match="at least two"):
        LateFusionClassifier({"a": nn.Identity()}, {"a": 3}, 3)


def test_objective_state_round_trip():
    model, batch = make_model(), make_batch()
    obj = MidasObjective(3, MODS)
    obj.set_epoch(4)
    for _ in range(5):
        obj(model(batch.inputs), batch, fuse=model.fuse)
    restored = MidasObjective(3, MODS)
    restored.load_state_dict(obj.state_dict())
    assert restored.epoch == 4 and torch.equal(restored.alpha, obj.alpha)


def test_importance_weights_scale_aligned_and_misaligned_rows():
    model, batch = make_model(), make_batch()
    out = model(batch.inputs)
    base, _ = MidasObjective(3, MODS)(out, batch, fuse=model.fuse)
    ones, _ = MidasObjective(3, MODS)(out, batch, fuse=model.fuse, sample_weights=torch.ones(12))
    assert torch.allclose(base, ones)
    doubled, _ = MidasObjective(3, MODS)(out, batch, fuse=model.fuse, sample_weights=torch.full((12,), 2.0))
    # Aligned rows scale by 2, misaligned rows by 2 * 2 (two distinct sources each).
    _, parts = MidasObjective(3, MODS)(out, batch, fuse=model.fuse)
    aligned = parts["loss_align"] + parts["loss_uni"]
    assert torch.allclose(doubled, 2 * aligned + 4 * parts["loss_mis"], atol=1e-5)
    with pytest.raises(ValueError, match="sample_weights: expected shape"):
        MidasObjective(3, MODS)(out, batch, fuse=model.fuse, sample_weights=torch.ones(5))


def test_pair_importance_weights_count_each_distinct_source_once():
    weights = torch.tensor([1.0, 2.0, 3.0])
    plan = torch.tensor([[0, 1], [2, 2], [1, 2]])
    assert torch.allclose(MF.pair_importance_weights(weights, plan), torch.tensor([2.0, 3.0, 6.0]))


def test_mean_pair_weighting_shares_a_row_among_its_distinct_sources():
    weights = torch.tensor([1.0, 2.0, 3.0])
    plan = torch.tensor([[0, 1], [2, 2], [1, 2]])
    assert torch.allclose(MF.pair_importance_weights(weights, plan, "mean"), torch.tensor([1.5, 3.0, 2.5]))
    with pytest.raises(ValueError, match="how: expected one of"):
        MF.pair_importance_weights(weights, plan, "max")
    with pytest.raises(ValueError, match="pair_weighting: expected one of"):
        MidasObjective(3, MODS, pair_weighting="sum")
