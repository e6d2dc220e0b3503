"""``policy="prune"`` as users train it: DataLoader workers (persistent), six epochs, loops
that pass no weights by hand, under the real Lightning Trainer and the real Hugging Face
Trainer. Pruned epochs are shorter, every sample comes at most once per epoch, the batches
carry the sampler's importance weights into the objective, the full epochs come back at
the tail, and the trainers count the steps really taken (``global_step``, ``max_steps``)."""

import math
import warnings

import pytest
import torch
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader
from midas_data.feedback import PrunePolicy

MODALITIES = ("a", "b")
C, EPOCHS, BATCH = 3, 6, 8


def items(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    a = nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(n, 4, generator=g)
    b = nn.functional.one_hot(labels, 4).float() * 0.5 + torch.randn(n, 4, generator=g)
    return [{"a": a[i], "b": b[i], "label": int(labels[i])} for i in range(n)]


def net() -> LateFusionClassifier:
    torch.manual_seed(0)
    return LateFusionClassifier({m: nn.Linear(4, 8) for m in MODALITIES}, {m: 8 for m in MODALITIES}, C)


def check_epochs(seen: list[tuple[int, list[int], list[float]]], n: int) -> list[int]:
    """Per epoch: no sample twice, the first and last epochs whole, the ones between pruned,
    weights above 1 exactly in the pruned epochs. Returns the batches per epoch."""
    lengths = []
    for epoch in range(EPOCHS):
        rows = [(ids, w) for e, ids, w in seen if e == epoch]
        ids = [i for batch, _ in rows for i in batch]
        weights = [x for _, w in rows for x in w]
        assert len(ids) == len(set(ids)), f"epoch {epoch}: a sample came twice"
        if epoch in (0, EPOCHS - 1):  # nothing seen yet; the full-data tail
            assert sorted(ids) == list(range(n)), epoch
            assert all(x == 1.0 for x in weights), epoch
        else:
            assert len(ids) < n, f"epoch {epoch} was not pruned"
            assert max(weights) > 1.0 and min(weights) == 1.0, epoch
        lengths.append(len(rows))
    return lengths


def test_a_plain_bf16_loop_with_persistent_workers_trains_pruned_epochs_with_the_weights_carried():
    n = 64
    table = StatsTable(n, MODALITIES)
    loader = midas_loader(
        items(n), MODALITIES, batch_size=BATCH, stats=table, policy=PrunePolicy(num_epochs=EPOCHS),
        num_workers=2, persistent_workers=True,
    )  # fmt: skip
    model, objective = net(), MidasObjective(C, MODALITIES, warmup_epochs=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for epoch in range(EPOCHS):  # no set_epoch: each pass is the next epoch
        announced = len(loader)
        count = 0
        for batch in loader:
            weights = batch.extras["importance_weights"]
            assert torch.equal(weights, loader.batch_sampler.importance_weights(batch.ids))
            with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as users train
                output = model(batch.inputs)
            with torch.no_grad():  # the carried weights are the ones used: same loss as passed by hand
                objective.eval()  # (eval: the three calls leave alpha where it is)
                carried, _ = objective(output, batch, fuse=model.fuse)
                by_hand, _ = objective(output, batch, fuse=model.fuse, sample_weights=weights)
                unweighted, _ = objective(output, batch, fuse=model.fuse, sample_weights=torch.ones_like(weights))
                objective.train()
            assert torch.equal(carried, by_hand)
            assert torch.allclose(carried, unweighted) != bool((weights > 1).any())
            loss, info = objective(output, batch, fuse=model.fuse)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            table.update(batch.ids, info["per_sample"])
            seen.append((batch.epoch, batch.ids.tolist(), weights.tolist()))
            count += 1
        assert count == announced, epoch
    lengths = check_epochs(seen, n)
    assert lengths[0] == lengths[-1] == n // BATCH


def test_uniform_batches_carry_no_weights():
    loader = midas_loader(items(16), MODALITIES, batch_size=BATCH)
    assert all("importance_weights" not in batch.extras for batch in loader)


def test_weights_passed_by_hand_win_and_a_foreign_extra_is_named():
    n = 16
    model, objective = net(), MidasObjective(C, MODALITIES, warmup_epochs=0)
    batch = next(iter(midas_loader(items(n), MODALITIES, batch_size=BATCH)))
    output = model(batch.inputs)
    objective.eval()
    with torch.no_grad():
        plain, _ = objective(output, batch, fuse=model.fuse)
        batch.extras["importance_weights"] = torch.full((BATCH,), 2.0)
        carried, _ = objective(output, batch, fuse=model.fuse)
        twos, _ = objective(output, batch, fuse=model.fuse, sample_weights=torch.full((BATCH,), 2.0))
        by_hand, _ = objective(output, batch, fuse=model.fuse, sample_weights=torch.ones(BATCH))
        assert torch.equal(carried, twos) and not torch.allclose(carried, plain)
        assert torch.allclose(by_hand, plain)
        batch.extras["importance_weights"] = [1.0] * BATCH
        with pytest.raises(TypeError, match="importance_weights"):
            objective(output, batch, fuse=model.fuse)


# -- PyTorch Lightning ---------------------------------------------------------------------


def lightning_fit(n: int, *callbacks, ckpt_path=None, **trainer_args):
    pl = pytest.importorskip("lightning.pytorch")
    from midas_data.integrations.lightning import MidasCallback, midas_step

    data = items(n)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net()
            self.objective = MidasObjective(C, MODALITIES, warmup_epochs=1)
            self.table = StatsTable(n, MODALITIES)
            self.seen: list = []
            self.autocast: list[bool] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((batch.epoch, batch.ids.tolist(), batch.extras["importance_weights"].tolist()))
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return midas_step(self.objective, self.net, batch)

        def train_dataloader(self):
            return midas_loader(
                data, MODALITIES, batch_size=BATCH, stats=self.table, policy=PrunePolicy(num_epochs=EPOCHS),
                num_workers=2, persistent_workers=True,
            )  # fmt: skip

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=EPOCHS, callbacks=[MidasCallback(), *callbacks], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **trainer_args,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(many workers|LeafSpec|does not have many).*")
        trainer.fit(module, ckpt_path=ckpt_path)
    return module, trainer


def test_lightning_trains_pruned_epochs_and_counts_the_steps_taken():
    pl = pytest.importorskip("lightning.pytorch")

    class Announced(pl.Callback):
        """What Lightning (and its progress bar) takes as each epoch's batch count."""

        def __init__(self) -> None:
            self.counts: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.counts.append(trainer.num_training_batches)

    n = 64
    announced = Announced()
    module, trainer = lightning_fit(n, announced, precision="bf16-mixed")  # as users train
    assert module.autocast and all(module.autocast)
    lengths = check_epochs(module.seen, n)
    assert announced.counts == lengths
    assert trainer.global_step == sum(lengths) < EPOCHS * math.ceil(n / BATCH)
    assert bool((module.table.last_step >= 0).all())  # the table was fed (the score prune reads)


def test_lightning_max_steps_stops_inside_a_pruned_run():
    n = 64
    full, _ = lightning_fit(n)
    limit = len(full.seen) - 3  # inside the last epoch, after the pruned ones
    module, trainer = lightning_fit(n, max_steps=limit)
    assert trainer.global_step == limit == len(module.seen)
    assert module.seen == full.seen[:limit]  # the same pruned plans, cut where asked


def test_lightning_resumes_a_pruned_epoch_mid_way_exactly(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    n = 64
    straight, _ = lightning_fit(n)
    path = tmp_path / "pruned.ckpt"

    class SaveAndStop(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == 2 and batch_idx == 1:  # inside a pruned epoch
                trainer.save_checkpoint(path)
                trainer.should_stop = True

    head, _ = lightning_fit(n, SaveAndStop())
    resumed, trainer = lightning_fit(n, ckpt_path=str(path))
    assert head.seen + resumed.seen == straight.seen  # the same pruned batches, with the same weights
    assert torch.equal(resumed.objective.alpha, straight.objective.alpha)
    assert trainer.global_step == len(straight.seen)


# -- Hugging Face Trainer (MidasTrainer) ---------------------------------------------------


def hf_train(tmp_path, n: int, resume_from_checkpoint=None, **args):
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    from midas_data.integrations.transformers import MidasTrainer

    rows = items(n)
    columns = {m: torch.stack([r[m] for r in rows]).numpy() for m in MODALITIES}
    columns["label"] = [r["label"] for r in rows]
    dataset = datasets.Dataset.from_dict(columns).with_format("torch")

    class Recording(MidasTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                weights = inputs.extras["importance_weights"].tolist()
                self.seen.append((inputs.epoch, inputs.ids.tolist(), weights))
            return result

    training = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS, learning_rate=0.05,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=2, dataloader_persistent_workers=True, **{"save_strategy": "no", **args},
    )  # fmt: skip
    model = net()
    autocast: list[bool] = []  # inside the forward, where the Trainer applies mixed precision
    model.fusion_head.register_forward_pre_hook(lambda *_: autocast.append(torch.is_autocast_enabled("cpu")))
    trainer = Recording(
        model=model,
        args=training,
        train_dataset=dataset,
        objective=MidasObjective(C, MODALITIES, warmup_epochs=1),
        stats=StatsTable(n, MODALITIES),
        midas_loader_kwargs={"policy": PrunePolicy(num_epochs=EPOCHS)},
    )
    trainer.seen, trainer.autocast = [], autocast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def test_midas_trainer_trains_pruned_epochs_and_counts_the_steps_taken(tmp_path):
    n = 64
    t = hf_train(tmp_path, n, bf16=True)  # mixed precision, as users train
    assert t.autocast and all(t.autocast)
    lengths = check_epochs(t.seen, n)
    assert t.state.global_step == sum(lengths) < EPOCHS * math.ceil(n / BATCH)


def test_midas_trainer_max_steps_is_honoured_on_pruned_epochs(tmp_path):
    n = 64
    limit = 20  # the full count would be 48; the pruned run takes more than 20
    t = hf_train(tmp_path, n, max_steps=limit)
    assert t.state.global_step == limit == len(t.seen)


def test_midas_trainer_resumes_a_pruned_epoch_mid_way_exactly(tmp_path):
    import shutil

    n = 64
    straight = hf_train(tmp_path / "straight", n)
    at = 16  # epochs of 8, 6, 6, ... batches: inside the third epoch, a pruned one
    first = hf_train(tmp_path / "first", n, save_strategy="steps", save_steps=at)
    for later in (tmp_path / "first").glob("checkpoint-*"):
        if later.name != f"checkpoint-{at}":
            shutil.rmtree(later)
    resumed = hf_train(tmp_path / "first", n, resume_from_checkpoint=True)
    assert first.seen[:at] == straight.seen[:at]
    assert resumed.seen == straight.seen[at:]  # the same pruned batches and weights after the checkpoint
    assert resumed.state.global_step == straight.state.global_step == len(straight.seen)
