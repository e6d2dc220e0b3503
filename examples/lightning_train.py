"""MIDAS under PyTorch Lightning, on generated two-modality data, on CPU.

    python examples/lightning_train.py                 # one process
    python examples/lightning_train.py --devices 2     # DDP, two CPU processes (gloo)

The MIDAS lines are marked ``# MIDAS``; the rest is a plain joint-training LightningModule.
Prints one JSON line at the end: epochs run, distinct epoch plans, samples per rank per
epoch (and whether every sample came exactly once per epoch across ranks), alpha per rank
and the final test accuracy.
"""

from __future__ import annotations

import argparse
import json
import warnings

import lightning.pytorch as pl
import torch
from run_summary import EpochRecord, summary
from torch import nn
from torch.utils.data import Dataset

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader
from midas_data.integrations.lightning import MidasCallback, midas_step

MODALITIES = ("audio", "video")
NUM_CLASSES = 4


class TwoModalities(Dataset):
    """Items ``{"audio", "video", "label"}``: a strong audio signal, a weak video one."""

    def __init__(self, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % NUM_CLASSES
        self.audio = nn.functional.one_hot(self.labels, 8).float() * 2.0 + torch.randn(size, 8, generator=g)
        self.video = nn.functional.one_hot(self.labels, 8).float() * 0.8 + torch.randn(size, 8, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"audio": self.audio[i], "video": self.video[i], "label": int(self.labels[i])}


def make_net() -> LateFusionClassifier:
    encoders = {m: nn.Sequential(nn.Linear(8, 16), nn.ReLU()) for m in MODALITIES}
    return LateFusionClassifier(encoders, {m: 16 for m in MODALITIES}, NUM_CLASSES)


class Classifier(pl.LightningModule):
    def __init__(self, train_set: Dataset, batch_size: int, warmup_epochs: int) -> None:
        super().__init__()
        self.net = make_net()
        self.train_set, self.batch_size = train_set, batch_size
        self.objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=warmup_epochs)  # MIDAS
        self.table = StatsTable(len(train_set), MODALITIES)  # MIDAS (feedback, optional)

    def training_step(self, batch, batch_idx):
        return midas_step(self.objective, self.net, batch)  # MIDAS: was cross_entropy(self.net(x), y)

    def train_dataloader(self):
        return midas_loader(self.train_set, MODALITIES, batch_size=self.batch_size, stats=self.table)  # MIDAS

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Record(pl.Callback):
    """For the JSON line only: what this rank trained on."""

    def __init__(self) -> None:
        self.record = EpochRecord()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record.add(batch)


def accuracy(net: nn.Module, data: TwoModalities) -> float:
    net.eval()
    with torch.no_grad():
        logits = net({"audio": data.audio, "video": data.video}).fusion_logits
    return float((logits.argmax(1) == data.labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)

    model = Classifier(TwoModalities(args.samples, seed=0), args.batch_size, args.warmup_epochs)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        callbacks=[MidasCallback(), record],  # MIDAS: the callback
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)

    result = summary(record.record, model.objective.alpha, args.samples)
    if trainer.global_rank != 0:
        return
    result = {"integration": "lightning", **result}
    result["stats_rows_written"] = int((model.table.last_step >= 0).sum())
    result["final_accuracy"] = round(accuracy(model.net, TwoModalities(400, seed=1)), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
