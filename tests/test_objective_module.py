"""MidasObjective as a torch module: buffers, no side effects outside training, one alpha
step per batch (closures) or per optimizer step (attach), old checkpoints, compile."""

import io

import pytest
import torch
from test_objective import MODS, make_batch, make_model
from torch import nn

from midas_data import MidasObjective, WeakModalityController, midas_loader
from midas_data import functional as MF
from midas_data.controller import alpha_step


def trained_objective(steps: int = 3, **kwargs) -> MidasObjective:
    objective = MidasObjective(3, MODS, **kwargs)
    model = make_model()
    for seed in range(steps):
        batch = make_batch(seed=seed)
        objective(model(batch.inputs), batch, model=model)
    return objective


def test_state_lives_in_buffers_and_extra_state():
    objective = trained_objective()
    state = objective.state_dict()
    assert {"controller.weights", "controller.weak", "controller.pending", "controller.steps"} <= set(state)
    assert state["_extra_state"]["epoch"] == 0 and state["_extra_state"]["modalities"] == list(MODS)
    assert int(state["controller.steps"]) == 3
    # A checkpoint written with torch.save reads back with weights_only=True.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = MidasObjective(3, MODS)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.alpha, objective.alpha) and int(restored.controller.steps) == 3


def test_a_model_holding_the_objective_saves_it_and_half_keeps_alpha_float32():
    holder = nn.Module()
    holder.net = make_model()
    holder.objective = trained_objective(steps=6)
    assert "objective.controller.weights" in holder.state_dict()
    alpha = holder.objective.alpha.clone()
    holder.to(torch.bfloat16)
    assert holder.objective.controller.weights.dtype == torch.float32
    assert torch.equal(holder.objective.alpha, alpha)


def test_old_checkpoint_format_is_converted():
    old = {
        "epoch": 4,
        "controller": {"alpha": torch.tensor([1.0, 1.15]), "weak": torch.tensor(0), "variant": "paper",
                       "num_modalities": 2},
        "modalities": list(MODS),
    }  # fmt: skip
    objective = MidasObjective(3, MODS)
    objective.load_state_dict(old)
    assert objective.epoch == 4 and torch.allclose(objective.alpha, torch.tensor([1.0, 1.15]))
    with pytest.raises(ValueError, match="modalities"):
        MidasObjective(3, ("x", "y")).load_state_dict(old)


@pytest.mark.parametrize("quiet", ["no_grad", "eval"])
def test_a_validation_loss_changes_nothing(quiet):
    objective = trained_objective(warmup_epochs=0)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in objective.state_dict().items()}
    model = make_model()
    batch = make_batch(seed=9)
    batch.epoch = 7  # a validation loader's own epoch must not move the objective's
    if quiet == "eval":
        objective.eval()
    with torch.no_grad() if quiet == "no_grad" else torch.enable_grad():
        losses = [objective(model(batch.inputs), batch, model=model)[0] for _ in range(5)]
    objective.train()
    after = objective.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else value == after[key], key
    assert all(torch.isfinite(loss) and loss == losses[0] for loss in losses)
    # The validation loss is the training loss of the same batch with the same alpha.
    train_loss, _ = objective(model(batch.inputs), batch, model=model)
    assert torch.allclose(train_loss, losses[0])


def test_a_closure_calling_twice_moves_alpha_once():
    model = make_model()
    once, twice = MidasObjective(3, MODS), MidasObjective(3, MODS)
    for seed in range(4):
        batch = make_batch(seed=seed)
        once(model(batch.inputs), batch, model=model)
        first, _ = twice(model(batch.inputs), batch, model=model)
        second, _ = twice(model(batch.inputs), batch, model=model)
        assert torch.equal(first, second)  # the second evaluation sees the same alpha
    assert int(twice.controller.steps) == int(once.controller.steps) == 4
    assert torch.equal(twice.alpha, once.alpha) and twice.alpha.max() > 1


def test_attach_steps_alpha_once_per_optimizer_step_from_the_summed_statistic():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    objective = MidasObjective(3, MODS)
    handle = objective.attach(optimizer)
    manual = WeakModalityController(2)
    for step in range(3):
        totals = []
        for micro in range(2):
            batch = make_batch(seed=10 * step + micro)
            output = model(batch.inputs)
            loss, info = objective(output, batch, model=model)
            loss.backward()
            # The statistic the objective gathered, recomputed by hand.
            conf = info["per_sample"]["confidence"]
            rows = conf.gather(0, batch.plan)
            with torch.no_grad():
                logits = model.fuse(dict(zip(MODS, MF.swap_features([output.features[m] for m in MODS], batch.plan))))
            q = MF.fusion_confidence_ratio(logits.softmax(1), batch.labels[batch.plan])
            totals.append(manual.statistic(MF.normalized_confidences(rows), q))
        assert int(objective.controller.steps) == step  # nothing moved inside the step
        optimizer.step()
        expected, _ = alpha_step(manual.weights, manual.weak, sum(totals), eta=0.05, alpha_max=10.0)
        manual.weights.copy_(expected)
        assert int(objective.controller.steps) == step + 1
        assert torch.allclose(objective.alpha, expected)
    # Detached, alpha steps at every call again and the optimizer's step no longer moves it.
    objective.detach(handle)
    batch = make_batch(seed=99)
    objective(model(batch.inputs), batch, model=model)
    assert int(objective.controller.steps) == 4
    optimizer.step()
    assert int(objective.controller.steps) == 4


@pytest.mark.parametrize("variant, rule", [("reference", "different_label"), ("paper", "any")])
def test_a_variant_refuses_batches_planned_with_the_other_rule(variant, rule):
    data = [{"a": torch.randn(4), "v": torch.randn(6), "label": i % 3} for i in range(24)]
    batch = next(iter(midas_loader(data, MODS, batch_size=12, rule=rule)))
    model = make_model()
    with pytest.raises(ValueError, match="rule="):
        MidasObjective(3, MODS, variant=variant)(model(batch.inputs), batch, model=model)
    matching = "any" if variant == "reference" else "different_label"
    batch = next(iter(midas_loader(data, MODS, batch_size=12, rule=matching)))
    loss, _ = MidasObjective(3, MODS, variant=variant)(model(batch.inputs), batch, model=model)
    assert torch.isfinite(loss)


def test_similarity_is_recorded_without_hard_sample_weighting():
    model = make_model()
    batch = make_batch()
    output = model(batch.inputs)
    _, with_weights = MidasObjective(3, MODS)(output, batch, model=model)
    _, without = MidasObjective(3, MODS, hard_sample_weighting=False)(output, batch, model=model)
    assert torch.allclose(without["per_sample"]["similarity"], with_weights["per_sample"]["similarity"])
    assert without["per_sample"]["similarity"].abs().sum() > 0
    assert torch.equal(without["hard_weight"], torch.tensor(1.0))


def test_reference_variant_uses_the_weak_modality_of_the_summed_statistic():
    objective = MidasObjective(3, MODS, variant="reference")
    objective.controller.weights.fill_(1.5)
    # Rank-summed statistic in which modality 0 is the confident one: the scalar goes to 1,
    # whatever this rank's own batch says.
    totals = torch.tensor([9.0, 1.0, 0.5, 0.5, 4.0])
    this_rank = torch.tensor([[0.1, 0.9]])  # locally, modality 1 looks strong
    alpha = objective._batch_alpha(totals, this_rank, torch.device("cpu"))
    assert torch.equal(alpha, torch.tensor([1.0, 1.5]))


@pytest.mark.parametrize("mode", ["feature", "input"])
def test_a_compiled_model_trains_with_the_objective(mode):
    torch._dynamo.reset()
    data = [{"a": torch.randn(4), "v": torch.randn(6), "label": i % 3} for i in range(48)]
    loader = midas_loader(data, MODS, batch_size=16, mode=mode, drop_last=True)
    model = make_model()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    objective = MidasObjective(3, MODS, warmup_epochs=1)
    for _ in range(3):
        for batch in loader:
            output = compiled(batch.inputs)
            if mode == "feature":
                loss, info = objective(output, batch, model=compiled)
            else:
                misaligned = compiled(batch.misaligned_inputs).fusion_logits
                loss, info = objective(output, batch, misaligned_logits=misaligned)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss)
    assert info["num_misaligned"] > 0 and objective.epoch == 2


def test_the_objective_math_compiles_without_graph_breaks():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    replaced = torch.ones(8, 1, dtype=torch.bool)
    similarity = torch.compile(MF.feature_similarity, fullgraph=True)([a], [b], replaced)
    assert torch.allclose(similarity, MF.feature_similarity([a], [b], replaced))
    logits, conf = torch.randn(8, 3, generator=g), torch.rand(8, 2, generator=g)
    src = torch.randint(3, (8, 2), generator=g)
    args = (logits, conf, src, torch.tensor([1.0, 1.2]), torch.ones(8))
    assert torch.allclose(torch.compile(MF.misaligned_loss, fullgraph=True)(*args), MF.misaligned_loss(*args))
    totals = torch.tensor([3.0, 1.0, -0.5, 0.2, 4.0])
    step = torch.compile(alpha_step, fullgraph=True)
    got = step(torch.ones(2), torch.zeros((), dtype=torch.long), totals, eta=0.05, alpha_max=10.0)
    assert torch.allclose(got[0], alpha_step(torch.ones(2), torch.zeros((), dtype=torch.long), totals,
                                             eta=0.05, alpha_max=10.0)[0])  # fmt: skip


@pytest.mark.parametrize("mode", ["feature", "input"])
@pytest.mark.parametrize("validate, allowed", [(False, 0), (True, 1)])
def test_a_training_step_syncs_the_host_at_most_once(mode, validate, allowed):
    from midas_data.debug import count_host_syncs

    data = [{"a": torch.randn(4), "v": torch.randn(6), "label": i % 3} for i in range(32)]
    batch = next(iter(midas_loader(data, MODS, batch_size=16, mode=mode)))
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    objective = MidasObjective(3, MODS, validate=validate)
    for _ in range(2):  # the second step runs with momentum buffers and a step to rewind
        with count_host_syncs() as syncs:
            output = model(batch.inputs)
            if mode == "feature":
                loss, info = objective(output, batch, model=model)
            else:
                misaligned = model(batch.misaligned_inputs).fusion_logits
                loss, info = objective(output, batch, misaligned_logits=misaligned)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert syncs.count == allowed, syncs.ops
        assert info["num_misaligned"] > 0
