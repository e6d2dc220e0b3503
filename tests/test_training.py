"""The training toolkit: every method trains on a tiny synthetic problem; selection and
evaluation behave as documented."""

import math

import pytest
import torch
from torch import nn

from midas_data import LateFusionClassifier, set_epoch
from midas_data import experiments as T

NUM_CLASSES = 3


def tiny_splits(n: int = 96, seed: int = 0) -> dict[str, T.InMemoryDataset]:
    """Modality ``a`` is strong (class mean far from noise), ``b`` weak."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, size in (("train", n), ("val", n // 2), ("test", n // 2)):
        labels = torch.arange(size) % NUM_CLASSES
        a = torch.nn.functional.one_hot(labels, 4).float() * 3 + torch.randn(size, 4, generator=g)
        b = torch.nn.functional.one_hot(labels, 6).float() * 0.7 + torch.randn(size, 6, generator=g)
        out[split] = T.InMemoryDataset({"a": a, "b": b}, labels)
    return out


def tiny_model(seed: int = 0) -> LateFusionClassifier:
    torch.manual_seed(seed)
    encoders = {"a": nn.Sequential(nn.Linear(4, 16), nn.ReLU()), "b": nn.Sequential(nn.Linear(6, 16), nn.ReLU())}
    return LateFusionClassifier(encoders, {"a": 16, "b": 16}, NUM_CLASSES)


def step_losses(method: T.Method, steps: int = 40) -> list[float]:
    splits = tiny_splits()
    model = tiny_model()
    config = T.TrainConfig(batch_size=32, lr=0.05, seed=0)
    loader = method.train_loader(splits["train"], ["a", "b"], config)
    optimizer = config.optimizer(model)
    torch.manual_seed(0)
    losses, epoch = [], 0
    while len(losses) < steps:
        set_epoch(loader, epoch)
        method.start_epoch(epoch)
        for batch in loader:
            loss, info = method.loss(model, batch)
            method.update(model, optimizer, batch, loss, info)
            losses.append(float(loss.detach()))
        epoch += 1
    return losses


# midas_disjoint's pairing rule is for label sets: it trains in the multi-label test below.
@pytest.mark.parametrize(
    "name", sorted(n for n in T.METHODS if not n.startswith("unimodal_") and n != "midas_disjoint")
)
def test_every_method_has_a_finite_decreasing_loss(name):
    # No warm-up: the loss must mean the same thing from the first step to the last.
    method = T.make_method(name, NUM_CLASSES, ["a", "b"], {"warmup_epochs": 0})
    losses = step_losses(method)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, f"{name}: loss went from {first:.3f} to {last:.3f}"


def test_joint_trains_its_unimodal_heads_only_as_probes():
    model = tiny_model()
    batch = next(iter(T.JointTraining().train_loader(tiny_splits()["train"], ["a", "b"], T.TrainConfig(batch_size=32))))
    loss, _ = T.JointTraining(heads=False).loss(model, batch)
    encoder_weight = model.encoders["a"][0].weight
    head_only = torch.autograd.grad(
        loss - nn.functional.cross_entropy(model(batch.inputs).fusion_logits, batch.labels),
        encoder_weight,
        allow_unused=True,
    )[0]
    # The probe part of the loss sends no gradient into the encoders.
    assert head_only is None or torch.count_nonzero(head_only) == 0


def test_unimodal_training_moves_its_own_encoder_only():
    method = T.UnimodalTraining("b")
    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = T.TrainConfig(batch_size=32, lr=0.05)
    optimizer = config.optimizer(model)
    for batch in method.train_loader(tiny_splits()["train"], ["a", "b"], config):
        loss, _ = method.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {n for n in before if n.startswith(("encoders.b.", "unimodal_heads.b."))}
    assert method.selection_score({"accuracy": 0.9, "per_modality_accuracy": {"a": 0.2, "b": 0.4}}) == 0.4
    with pytest.raises(KeyError, match="'c'"):
        T.UnimodalTraining("c").loss(model, batch)


def test_precise_batchnorm_is_the_plain_average_over_the_training_split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    data = T.InMemoryDataset({"x": torch.randn(300, 3) * 2 + 1}, torch.zeros(300, dtype=torch.long))
    model.train()
    model(torch.randn(8, 3))  # stale statistics from something else
    assert T.reestimate_batchnorm(model, data, batch_size=100) == 1
    with torch.no_grad():
        hidden = model[0](data.tensors["x"])
    bn = model[1]
    assert torch.allclose(bn.running_mean, hidden.mean(0), atol=1e-5)
    # The cumulative average of the three batches' unbiased variances.
    expected_var = torch.stack([hidden[i : i + 100].var(0) for i in (0, 100, 200)]).mean(0)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-5)
    assert bn.momentum == 0.1 and model.training
    assert T.reestimate_batchnorm(nn.Linear(2, 2), data) == 0


def test_each_batchnorm_protocol_selects_and_tests_its_own_checkpoint():
    splits = {
        k: T.InMemoryDataset({"image": torch.randn(len(v), 1, 8, 8), "audio": torch.randn(len(v), 1, 32, 20)}, v.labels)
        for k, v in tiny_splits(48).items()
    }
    config = T.TrainConfig(epochs=2, batch_size=16, bn_protocols=("precise", "as_trained"))
    result = T.run("joint", splits, NUM_CLASSES, config)
    assert set(result.fit.selected) == set(result.tests) == {"precise", "as_trained"}
    assert result.test is result.tests["precise"]
    assert set(result.fit.history[0]["val_by_bn"]) == {"precise", "as_trained"}
    for protocol, chosen in result.fit.selected.items():
        accs = [r["val_by_bn"][protocol]["accuracy"] for r in result.fit.history]
        assert chosen["epoch"] == accs.index(max(accs))
        # The validation metrics of the selected epoch travel with it (a rule on validation reads them).
        assert chosen["metrics"] == result.fit.history[chosen["epoch"]]["val_by_bn"][protocol]
    with pytest.raises(ValueError, match="bn_protocols"):
        T.fit(T.JointTraining(), tiny_model(), splits["train"], splits["val"], T.TrainConfig(bn_protocols=("x",)))


def test_sampler_variant_options_reach_the_sampler_and_the_loss(monkeypatch):
    method = T.make_method(
        "midas_sampler_hard", NUM_CLASSES, ["a", "b"], {"sampler_floor": 0.5, "sampler_importance_weights": False}
    )
    config = T.TrainConfig(batch_size=32, seed=0)
    loader = method.train_loader(tiny_splits()["train"], ["a", "b"], config)
    assert loader.batch_sampler.floor == 0.5
    seen = []
    real = method.objective.__call__
    monkeypatch.setattr(
        type(method.objective), "__call__", lambda self, *a, **k: seen.append(k["sample_weights"]) or real(*a, **k)
    )
    batch = next(iter(loader))
    method.loss(tiny_model(), batch)
    # Explicit ones: the weights the batch carries must not reach the loss either.
    assert len(seen) == 1 and torch.equal(seen[0], torch.ones(32))
    assert "importance_weights" in batch.extras
    default = T.make_method("midas_sampler_hard", NUM_CLASSES, ["a", "b"], {})
    default_loader = default.train_loader(tiny_splits()["train"], ["a", "b"], config)
    assert default_loader.batch_sampler.floor == 0.2
    seen.clear()
    default.loss(tiny_model(), next(iter(default_loader)))
    assert seen[0] is not None and seen[0].shape == (32,)


def test_ogm_coefficients_by_hand():
    coeff = T.ogm_coefficients(torch.tensor([2.0, 1.0]), alpha=0.5)
    # ratios 2 and 0.5: the dominant modality gets 1 - tanh(0.5 * (2 - 1)), the other 1.
    assert coeff.tolist() == pytest.approx([1 - math.tanh(0.5), 1.0])
    with pytest.raises(ValueError, match="scores"):
        T.ogm_coefficients(torch.tensor([1.0]), 0.5)


def test_mixup_lambda_range_and_error():
    torch.manual_seed(0)
    draws = [T.mixup_lambda(0.4) for _ in range(50)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    with pytest.raises(ValueError, match="concentration"):
        T.mixup_lambda(0.0)


def test_fit_selects_the_best_validation_epoch_and_keeps_its_weights():
    splits = tiny_splits()
    model = tiny_model()
    result = T.fit(T.JointTraining(), model, splits["train"], splits["val"], T.TrainConfig(epochs=4, batch_size=32))
    val_accs = [r["val"]["accuracy"] for r in result.history]
    assert len(result.history) == 4
    assert result.best_epoch == val_accs.index(max(val_accs))
    model.load_state_dict(result.best_state)
    plan = T.misaligned_plan(splits["val"].labels, 2, T.TrainConfig().eval_seed)
    assert T.evaluate(model, splits["val"], plan)["accuracy"] == pytest.approx(result.best_val_accuracy)


def test_midas_records_alpha_every_step_and_history_has_every_metric():
    splits = tiny_splits()
    method = T.make_method("midas", NUM_CLASSES, ["a", "b"], {"warmup_epochs": 1})
    result = T.fit(method, tiny_model(), splits["train"], splits["val"], T.TrainConfig(epochs=2, batch_size=32))
    assert len(result.alpha_steps) == 2 * result.steps_per_epoch
    assert all(len(a) == 2 and min(a) >= 1.0 for a in result.alpha_steps)
    val = result.history[-1]["val"]
    assert set(val) == {"accuracy", "macro_f1", "per_modality_accuracy", "misaligned_accuracy", "modality_confidence"}
    assert set(val["per_modality_accuracy"]) == {"a", "b"}


def test_misaligned_plan_is_fixed_and_pairs_other_classes():
    labels = torch.arange(30) % NUM_CLASSES
    plan = T.misaligned_plan(labels, 2, seed=7)
    assert torch.equal(plan, T.misaligned_plan(labels, 2, seed=7))
    assert plan.shape == (60, 2)
    assert bool((labels[plan[:, 0]] != labels[plan[:, 1]]).all())
    with pytest.raises(ValueError, match="one class"):
        T.misaligned_plan(torch.zeros(5, dtype=torch.long), 2, seed=0)


def test_run_tests_the_selected_checkpoint_once():
    splits = {
        k: T.InMemoryDataset({"image": torch.randn(len(v), 1, 8, 8), "audio": torch.randn(len(v), 1, 32, 20)}, v.labels)
        for k, v in tiny_splits(48).items()
    }
    result = T.run("joint", splits, NUM_CLASSES, T.TrainConfig(epochs=2, batch_size=16))
    assert set(result.test) >= {"accuracy", "macro_f1", "misaligned_accuracy"}
    assert set(result.as_report()) >= {"history", "test", "best_epoch", "alpha_steps", "steps_per_epoch"}


def test_cache_dataset_round_trip_and_errors():
    items = [{"x": torch.full((2,), float(i)), "y": torch.zeros(1), "label": i % 2} for i in range(4)]
    cached = T.cache_dataset(items, ["x", "y"])
    assert len(cached) == 4 and cached[3]["label"] == 1 and cached[3]["x"].tolist() == [3.0, 3.0]
    with pytest.raises(KeyError, match="modality 'z'"):
        T.cache_dataset(items, ["x", "z"])
    with pytest.raises(ValueError, match="rows"):
        T.InMemoryDataset({"x": torch.zeros(3, 2)}, torch.zeros(4, dtype=torch.long))


def test_build_model_picks_encoders_by_shape():
    model = T.build_model({"image": (1, 8, 8), "audio": (1, 32, 65)}, 10, seed=0)
    out = model({"image": torch.randn(5, 1, 8, 8), "audio": torch.randn(5, 1, 32, 65)})
    assert out.fusion_logits.shape == (5, 10)
    assert {m: f.shape[1] for m, f in out.features.items()} == {"image": 64, "audio": 64}
    cnn = T.build_model({"image": (1, 28, 28), "audio": (1, 32, 65)}, 10, seed=0)
    assert any(isinstance(m, nn.Conv2d) for m in cnn.encoders["image"].modules())
    assert cnn({"image": torch.randn(3, 1, 28, 28), "audio": torch.randn(3, 1, 32, 65)}).features["image"].shape == (
        3,
        64,
    )
    with pytest.raises(ValueError, match="input_shapes"):
        T.build_model({"image": (8, 8)}, 10)


def test_unknown_method_is_named():
    with pytest.raises(KeyError, match="nope"):
        T.make_method("nope", 3, ["a", "b"])


# -- multi-label ---------------------------------------------------------------------------------
def multi_hot_splits(n: int = 96) -> dict[str, T.InMemoryDataset]:
    """Label sets of one or two of 4 classes; the image shows them strongly, the audio weakly."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for split, size in (("train", n), ("val", n // 2), ("test", n // 2)):
        labels = torch.zeros(size, 4)
        labels[torch.arange(size), torch.arange(size) % 4] = 1.0
        labels[torch.arange(0, size, 2), (torch.arange(0, size, 2) + 1) % 4] = 1.0
        image = torch.randn(size, 1, 8, 8, generator=g)
        image[:, 0, :4, :] += labels[:, :, None] * 2
        audio = torch.randn(size, 1, 32, 20, generator=g)
        audio[:, 0, :4, :] += labels[:, :, None] * 0.3
        out[split] = T.InMemoryDataset({"image": image, "audio": audio}, labels)
    return out


@pytest.mark.parametrize("name", ["joint", "joint_heads", "mixup", "midas", "midas_disjoint", "unimodal_image"])
def test_methods_train_multi_hot_labels_and_test_at_validation_thresholds(name):
    pytest.importorskip("sklearn")
    splits = multi_hot_splits()
    assert splits["train"].multilabel and splits["train"][1]["label"].tolist() == [0.0, 1.0, 0.0, 0.0]
    options = {"task": "multilabel", "warmup_epochs": 1}
    config = T.TrainConfig(epochs=5, batch_size=16, bn_protocols=("precise", "as_trained"))
    result = T.run(name, splits, 4, config, options=options)
    for protocol, test in result.tests.items():
        chosen = result.fit.selected[protocol]
        assert test["thresholds"] == chosen["metrics"]["thresholds"]  # from validation, not from test
        assert set(test) >= {"micro_f1", "macro_f1", "weighted_f1", "samples_f1", "per_modality_micro_f1"}
        figure = test["per_modality_micro_f1"]["image"] if name == "unimodal_image" else test["micro_f1"]
        assert figure > 0.7, (protocol, figure)  # an all-positive guess scores 0.55 here
    if name.startswith("midas"):
        assert result.fit.alpha_steps and len(result.fit.alpha_steps[-1]) == 2


def test_multi_hot_in_memory_labels_are_checked():
    with pytest.raises(ValueError, match=r"rows \[1\] are not multi-hot"):
        T.InMemoryDataset({"x": torch.zeros(2, 3)}, torch.tensor([[1.0, 0.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="class ids .* or multi-hot rows"):
        T.InMemoryDataset({"x": torch.zeros(2, 3)}, torch.zeros(2, 2, dtype=torch.long))
    cached = T.cache_dataset([{"x": torch.zeros(3), "label": torch.tensor([0.0, 1.0])}] * 3, ["x"])
    assert cached.multilabel and cached.labels.shape == (3, 2)


def test_ogm_ge_names_what_it_needs_on_multi_hot_labels():
    splits = multi_hot_splits(32)
    with pytest.raises(TypeError, match=r"ogm_ge: .*class ids \[B\]; got labels of shape \(16, 4\)"):
        T.run("ogm_ge", splits, 4, T.TrainConfig(epochs=1, batch_size=16))
