"""MidasCallback with the real PyTorch Lightning: epochs, feedback, logging, checkpoints, two
DDP processes (the example script, launched as a user would)."""

import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from example_runs import ROOT, assert_shared_epochs, run_example  # noqa: E402

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader  # noqa: E402
from midas_data.integrations.lightning import MidasCallback, midas_step  # noqa: E402

MODALITIES = ("a", "b")
N, C = 48, 3


def data(n: int = N, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    a = nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(n, 4, generator=g)
    b = nn.functional.one_hot(labels, 4).float() * 0.5 + torch.randn(n, 4, generator=g)
    return [{"a": a[i], "b": b[i], "label": int(labels[i])} for i in range(n)]


def net() -> LateFusionClassifier:
    torch.manual_seed(0)
    return LateFusionClassifier({m: nn.Linear(4, 8) for m in MODALITIES}, {m: 8 for m in MODALITIES}, C)


class Module(pl.LightningModule):
    def __init__(self, step=None, **loader_kwargs) -> None:
        super().__init__()
        self.loader_kwargs = loader_kwargs
        self.net = net()
        self.objective = MidasObjective(C, MODALITIES, warmup_epochs=1)
        self.table = StatsTable(N, MODALITIES)
        self.dataset = data()
        self.step = step

    def training_step(self, batch, batch_idx):
        if self.step is not None:
            return self.step(self, batch)
        return midas_step(self.objective, self.net, batch)

    def train_dataloader(self):
        return midas_loader(self.dataset, MODALITIES, batch_size=8, stats=self.table, **self.loader_kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Seen(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int], list]] = []
        self.restored: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.restored = {"alpha": pl_module.objective.alpha.clone(), "table": pl_module.table.values.clone()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch.ids.tolist(), batch.plan.tolist()))


class SaveAndStop(pl.Callback):
    """Save a checkpoint after batch ``batch`` of the second epoch (any batch: ``None``), then stop."""

    def __init__(self, path, batch=None) -> None:
        self.path, self.batch = path, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and self.batch in (None, batch_idx):
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def fit(module, epochs: int, *callbacks, ckpt_path=None, root=None, midas_callback=True, **trainer_args) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[MidasCallback(), *callbacks] if midas_callback else list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **trainer_args,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(many workers|LeafSpec).*")
        trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def test_epochs_feedback_and_logging_in_one_process():
    module, seen = Module(), Seen()
    trainer = fit(module, 3, seen)
    epochs = [e for e, _, _ in seen.batches]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1, 2}
    for epoch in range(3):
        ids = [i for e, batch, _ in seen.batches if e == epoch for i in batch]
        assert sorted(ids) == list(range(N))  # every sample once per epoch
    orders = [[i for e, batch, _ in seen.batches if e == epoch for i in batch] for epoch in range(3)]
    assert orders[0] != orders[1] != orders[2]  # epochs advance: new order, new plans
    assert module.objective.epoch == 2
    assert bool((module.table.last_step >= 0).all())  # every sample's statistics written back
    assert not torch.isnan(module.table.similarity).any()  # misaligned rows after warm-up
    metrics = trainer.callback_metrics
    for name in ("midas/alpha_a", "midas/alpha_b", "midas/confidence_a", "midas/share_b", "midas/num_misaligned"):
        assert name in metrics, sorted(metrics)
    assert float(metrics["midas/num_misaligned"]) > 0 and float(metrics["midas/warmup"]) == 0.0
    assert torch.equal(torch.stack([metrics["midas/alpha_a"], metrics["midas/alpha_b"]]), module.objective.alpha)


def test_a_checkpoint_resumes_midas_exactly(tmp_path):
    straight, seen_straight = Module(), Seen()
    fit(straight, 3, seen_straight)

    first = Module()
    trainer = fit(first, 2)
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert {"objective", "stats"} <= set(next(iter(checkpoint["callbacks"].values())))
    # The loader is stateful: Lightning keeps its position with the loop's state.
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["sampler"]["epoch"] == 1

    resumed, seen = Module(), Seen()
    fit(resumed, 3, seen, ckpt_path=str(path))
    assert seen.restored is not None
    assert torch.equal(seen.restored["alpha"], first.objective.alpha)
    assert torch.allclose(seen.restored["table"], first.table.values, rtol=0, atol=0, equal_nan=True)
    assert seen.batches == [b for b in seen_straight.batches if b[0] == 2]  # the third epoch, same ids and plans
    assert torch.equal(resumed.objective.alpha, straight.objective.alpha)
    assert torch.allclose(resumed.table.values, straight.table.values, rtol=0, atol=0, equal_nan=True)


def test_a_mid_epoch_checkpoint_continues_after_the_last_trained_batch(tmp_path):
    straight, seen_straight = Module(), Seen()
    fit(straight, 2, seen_straight)

    fit(Module(), 2, SaveAndStop(tmp_path / "mid.ckpt", batch=2))
    rest = [b for b in seen_straight.batches if b[0] == 1][3:]
    # Resume, train one batch, checkpoint again: that checkpoint counts the batches trained before it.
    once, seen_once = Module(), Seen()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*not resumable.*")
        fit(once, 2, seen_once, SaveAndStop(tmp_path / "mid2.ckpt"), ckpt_path=str(tmp_path / "mid.ckpt"))
        resumed, seen = Module(), Seen()
        fit(resumed, 2, seen, ckpt_path=str(tmp_path / "mid2.ckpt"))
    assert seen_once.batches == rest[:1]
    assert seen.batches == rest[1:]
    assert torch.equal(resumed.objective.alpha, straight.objective.alpha)


def test_input_level_batches_train_through_midas_step():
    module = Module(mode="input")
    fit(module, 2)
    assert not torch.isnan(module.table.misaligned_loss).any()  # the misaligned forward ran after warm-up


def test_a_stateful_loader_is_resumed_by_lightning_and_left_alone_by_the_callback(tmp_path):
    from torchdata.stateful_dataloader import StatefulDataLoader

    straight, seen_straight = Module(loader_class=StatefulDataLoader), Seen()
    fit(straight, 2, seen_straight)

    fit(Module(loader_class=StatefulDataLoader), 2, SaveAndStop(tmp_path / "mid.ckpt", batch=2))
    state = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert "sampler" not in next(iter(state["callbacks"].values()))
    resumed, seen = Module(loader_class=StatefulDataLoader), Seen()
    fit(resumed, 2, seen, ckpt_path=str(tmp_path / "mid.ckpt"))
    assert seen.batches == [b for b in seen_straight.batches if b[0] == 1][3:]


def test_a_skipped_step_is_left_alone():
    def step(self, batch):
        return None if batch.ids.min() < 8 else midas_step(self.objective, self.net, batch)

    module = Module(step=step)
    fit(module, 2)
    assert bool((module.table.last_step >= 0).any())


def test_a_step_that_does_not_return_the_diagnostics_gets_a_clear_error():
    module = Module(step=lambda self, batch: midas_step(self.objective, self.net, batch)["loss"])
    with pytest.raises(TypeError, match="training_step must return \\{'loss': loss, 'midas': diagnostics\\}"):
        fit(module, 1)


class NoFuse(nn.Module):
    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, inputs):
        return self.inner(inputs)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: lambda inputs: m.net(inputs).fusion_logits, "returned a Tensor without \\['features'"),
        (lambda m: lambda inputs: _drop(m.net(inputs), "b"), "unimodal_logits has no entry for modality \\['b'\\]"),
        (lambda m: NoFuse(m.net), "NoFuse has no fuse\\(features\\) method"),
    ],
)
def test_a_model_off_the_protocol_gets_an_error_naming_what_is_missing(make, message):
    def step(self, batch):
        return midas_step(self.objective, make(self), batch)

    with pytest.raises(TypeError, match=message) as info:
        fit(Module(step=step), 2)
    assert "MultimodalOutput(features=" in str(info.value)


def _drop(output, modality):
    output.unimodal_logits.pop(modality)
    return output


def test_two_ddp_processes_share_epochs_once_with_one_alpha(tmp_path):
    # The example script, launched as a user would: Lightning starts the second process.
    script = str(ROOT / "examples" / "lightning_train.py")
    result = run_example([script, "--devices", "2", "--epochs", "3", "--samples", "100", "--batch-size", "8"], tmp_path)
    assert_shared_epochs(result, samples=100, epochs=3)
    assert result["stats_rows_written"] == 100


def test_alpha_takes_one_step_per_optimizer_step_under_accumulate_grad_batches():
    module = Module(num_workers=2, persistent_workers=True)
    rows_per_step = []
    original = module.objective.step_alpha

    def recording_step():
        rows_per_step.append(int(module.objective.controller.pending[-1]))  # misaligned rows gathered
        return original()

    module.objective.step_alpha = recording_step
    trainer = fit(module, 5, accumulate_grad_batches=2)
    # 6 batches of 8 an epoch, 3 optimizer steps: alpha stepped at each optimizer step only,
    # from both micro-batches' misaligned rows (2 x 16) after the warm-up epoch.
    assert trainer.global_step == 15 == len(rows_per_step) == int(module.objective.controller.steps)
    assert rows_per_step == [0, 0, 0] + [32] * 12


def test_a_trainer_without_midas_callback_warns_once():
    from midas_data import MidasDataWarning

    with pytest.warns(MidasDataWarning, match="without MidasCallback") as caught:
        fit(Module(), 2, midas_callback=False)
    assert sum("without MidasCallback" in str(w.message) for w in caught) == 1


def test_a_batch_of_another_epoch_is_refused_before_the_objective():
    from types import SimpleNamespace

    from midas_data import MidasDataError

    batch = next(iter(midas_loader(data(), MODALITIES, batch_size=8)))  # planned for epoch 0
    callback = MidasCallback()
    callback.on_train_batch_start(SimpleNamespace(current_epoch=0), None, batch, 0)  # agrees: nothing
    with pytest.raises(MidasDataError, match="planned for epoch 0 but Lightning trains epoch 2"):
        callback.on_train_batch_start(SimpleNamespace(current_epoch=2), None, batch, 0)
