"""Multi-label MIDAS through the trainer adapters: Lightning (MidasCallback, midas_step) and
the Hugging Face MidasTrainer, on multi-hot labels, with the stats table fed back; as users
train: 2 persistent DataLoader workers, bf16 mixed precision, five epochs."""

import warnings

import pytest
import torch
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader

MODALITIES = ("a", "b")
N, C = 32, 4


def label_sets(n: int = N) -> list[list[int]]:
    return [sorted({i % C, (i // C) % C}) if i % 4 else [] for i in range(n)]


def features(sets: list[list[int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    multi_hot = torch.zeros(len(sets), C)
    for i, s in enumerate(sets):
        multi_hot[i, s] = 1.0
    a = multi_hot * 2 + torch.randn(len(sets), C, generator=g)
    b = multi_hot * 0.5 + torch.randn(len(sets), C, generator=g)
    return a, b, multi_hot


def net(autocast: list[bool] | None = None) -> LateFusionClassifier:
    """The model; ``autocast`` records, at each fusion-head call, whether bf16 autocast is on
    (inside the forward, where the trainers apply mixed precision)."""
    torch.manual_seed(0)
    model = LateFusionClassifier({m: nn.Linear(C, 8) for m in MODALITIES}, {m: 8 for m in MODALITIES}, C)
    if autocast is not None:
        model.fusion_head.register_forward_pre_hook(lambda *_: autocast.append(torch.is_autocast_enabled("cpu")))
    return model


def test_lightning_trains_on_lists_of_class_ids():
    pl = pytest.importorskip("lightning.pytorch")
    from midas_data.integrations.lightning import MidasCallback, midas_step

    sets = label_sets()
    a, b, _ = features(sets)
    autocast: list[bool] = []

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net(autocast)
            self.objective = MidasObjective(C, MODALITIES, task="multilabel")
            self.table = StatsTable(N, MODALITIES)

        def training_step(self, batch, batch_idx):
            assert batch.labels.shape == (len(batch), C)
            return midas_step(self.objective, self.net, batch)

        def train_dataloader(self):
            items = [{"a": a[i], "b": b[i], "label": sets[i]} for i in range(N)]
            return midas_loader(
                items, MODALITIES, batch_size=8, num_classes=C, stats=self.table, num_workers=2,
                persistent_workers=True,
            )  # fmt: skip

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=5,
        precision="bf16-mixed",
        callbacks=[MidasCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(many workers|LeafSpec).*")
        trainer.fit(module)
    assert autocast and all(autocast) and trainer.current_epoch == 5
    assert bool((module.table.last_step >= 0).all())
    assert not module.table.confidence.isnan().any() and not module.table.similarity.isnan().any()
    assert float(trainer.callback_metrics["midas/num_misaligned"]) > 0


@pytest.mark.parametrize("as_users_train", [False, True], ids=["fp32-no-workers", "bf16-2-persistent-workers"])
def test_hf_trainer_trains_and_evaluates_on_multi_hot_labels(tmp_path, as_users_train):
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    from midas_data.integrations.transformers import MidasTrainer

    def dataset(n: int, seed: int):
        a, b, multi_hot = features(label_sets(n), seed)
        return datasets.Dataset.from_dict({"a": a.numpy(), "b": b.numpy(), "labels": multi_hot.numpy()}).with_format(
            "torch"
        )

    users = {"bf16": True, "dataloader_num_workers": 2, "dataloader_persistent_workers": True}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=5 if as_users_train else 2,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        **(users if as_users_train else {}),
    )
    autocast: list[bool] = []
    trainer = MidasTrainer(
        model=net(autocast),
        args=args,
        train_dataset=dataset(N, 0),
        eval_dataset=dataset(16, 1),
        objective=MidasObjective(C, MODALITIES, task="multilabel"),
        label_key="labels",  # the default collator of evaluation stacks a vector column named "labels" only
        stats=StatsTable(N, MODALITIES),
        midas_loader_kwargs={"num_classes": C},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert all(autocast) if as_users_train else not any(autocast)
    assert trainer.state.epoch == args.num_train_epochs
    assert bool((trainer.stats.last_step >= 0).all()) and not trainer.stats.confidence.isnan().any()
    logged = [entry for entry in trainer.state.log_history if "midas/num_misaligned" in entry]
    assert logged and logged[-1]["midas/num_misaligned"] > 0
    metrics = trainer.evaluate()  # the Trainer's own path: BCE on the fusion head
    a, b, multi_hot = features(label_sets(16), 1)
    # Evaluation runs under the same mixed precision as training: the BCE of bf16 logits.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=as_users_train):
        logits = trainer.model({"a": a, "b": b}).fusion_logits
    expected = nn.functional.binary_cross_entropy_with_logits(logits.float(), multi_hot).item()
    # Two equal batches: the mean of means. bf16 logits of a batch of 8 and of 16 may round apart.
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-2 if as_users_train else 1e-4)
