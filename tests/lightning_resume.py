"""One cell of the Lightning resume matrix, run as a script (Lightning starts the second
process itself with --devices 2): an uninterrupted run, a run stopped at a checkpoint, and a
run resumed from it, each recording every trained step on every rank.

    python tests/lightning_resume.py --out DIR --devices 1 --workers 2 --persistent \\
        --loader default --stop mid

Writes ``DIR/{run}-rank{r}.json`` for run in straight, head, resumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader
from midas_data.integrations.lightning import MidasCallback, midas_step

MODALITIES = ("a", "b")
N, C, BATCH, EPOCHS = 48, 3, 8, 5
# mid: after the second trained batch of epoch 2; last: after the last batch of epoch 1, from
# the batch hook (Lightning then resumes the rest of that epoch, empty); end: at epoch 1's end.
STOP_EPOCH = {"mid": 2, "last": 1, "end": 1}


def data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % C
    a = nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(N, 4, generator=g)
    b = nn.functional.one_hot(labels, 4).float() * 0.5 + torch.randn(N, 4, generator=g)
    return [{"a": a[i], "b": b[i], "label": int(labels[i])} for i in range(N)]


class Module(pl.LightningModule):
    def __init__(self, loader_kwargs: dict) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = LateFusionClassifier({m: nn.Linear(4, 8) for m in MODALITIES}, {m: 8 for m in MODALITIES}, C)
        self.objective = MidasObjective(C, MODALITIES, warmup_epochs=1)
        self.table = StatsTable(N, MODALITIES)
        self.loader_kwargs = loader_kwargs
        self.dataset = data()

    def training_step(self, batch, batch_idx):
        return midas_step(self.objective, self.net, batch)

    def train_dataloader(self):
        return midas_loader(
            self.dataset, MODALITIES, batch_size=BATCH, stats=self.table, policy="hard", **self.loader_kwargs
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Record(pl.Callback):
    """Every trained step: epoch, ids, plan, loss, alpha after it."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "batch_epoch": batch.epoch,
                "ids": batch.ids.tolist(),
                "plan": batch.plan.tolist(),
                "loss": float(outputs["loss"]),
                "alpha": pl_module.objective.alpha.tolist(),
            }
        )


class StopAt(pl.Callback):
    """Save a checkpoint at the stop point, then stop training."""

    def __init__(self, path: Path, where: str) -> None:
        self.path, self.where = path, where

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.where == "mid" and trainer.current_epoch == STOP_EPOCH["mid"] and batch_idx == 1:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True
        last = trainer.num_training_batches - 1
        if self.where == "last" and trainer.current_epoch == STOP_EPOCH["last"] and batch_idx == last:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.where == "end" and trainer.current_epoch == STOP_EPOCH["end"]:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def weights_digest(module: Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(module.net.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    h.update(module.table.values.float().numpy().tobytes())
    return h.hexdigest()


def fit(args, loader_kwargs: dict, callbacks: list, ckpt_path: str | None = None) -> tuple[Module, Record]:
    module, record = Module(loader_kwargs), Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=EPOCHS,
        callbacks=[MidasCallback(), record, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, ckpt_path=ckpt_path)
    return module, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--persistent", action="store_true")
    parser.add_argument("--loader", choices=["default", "stateful"], default="default")
    parser.add_argument("--stop", choices=["mid", "last", "end"], default="mid")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loader_kwargs: dict = {"num_workers": args.workers}
    if args.workers:
        loader_kwargs["persistent_workers"] = args.persistent
    if args.loader == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        loader_kwargs["loader_class"] = StatefulDataLoader
    out = Path(args.out)
    ckpt = out / "stop.ckpt"
    runs = {}
    runs["straight"] = fit(args, loader_kwargs, [])
    runs["head"] = fit(args, loader_kwargs, [StopAt(ckpt, args.stop)])
    runs["resumed"] = fit(args, loader_kwargs, [], ckpt_path=str(ckpt))
    rank = int(os.environ.get("LOCAL_RANK", 0))
    for name, (module, record) in runs.items():
        result = {"steps": record.steps, "digest": weights_digest(module), "alpha": module.objective.alpha.tolist()}
        partial = out / f"{name}-rank{rank}.json.part"
        partial.write_text(json.dumps(result))
        partial.replace(out / f"{name}-rank{rank}.json")
    if rank == 0:
        # Lightning's second process writes its own files; report once they are all there
        # (one line, from one process: two processes' lines could interleave).
        expected = [out / f"{name}-rank{r}.json" for name in runs for r in range(args.devices)]
        deadline = time.monotonic() + 120
        while not all(path.is_file() for path in expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(json.dumps({"ranks": args.devices, "runs": sorted(runs)}), flush=True)


if __name__ == "__main__":
    main()
