"""Lightning, checkpointed on one number of devices and resumed on another, as a script:

    python tests/lightning_elastic.py --out DIR --devices 2 --phase head
    python tests/lightning_elastic.py --out DIR --devices 1 --phase resume

``head`` fits the module of tests/lightning_resume.py (policy "hard", one persistent worker)
and stops after the second batch of epoch 2 with ``DIR/stop.ckpt``; ``resume`` fits from it
to the end of epoch 5. Each writes ``DIR/{phase}-rank{r}.json``: every trained batch, the
plan of epoch 2 and the stats table after the last batch of every epoch from 2 on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightning_resume import Module, StopAt  # noqa: E402

from midas_data.integrations.lightning import MidasCallback  # noqa: E402

EPOCHS = 6


class Watch(pl.Callback):
    """Every trained batch, the plan of epoch 2, and the table once each epoch's last batch is in."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.plan: list[int] = []
        self.tables: dict[int, dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({"epoch": trainer.current_epoch, "batch_idx": batch_idx, "ids": batch.ids.tolist()})
        sampler = trainer.train_dataloader.batch_sampler
        if trainer.current_epoch == 2:
            self.plan = sampler.current_plan.order.tolist()
        if trainer.current_epoch >= 2 and batch_idx == trainer.num_training_batches - 1:
            state = pl_module.table.state_dict()
            table = {"values": state["values"].tolist(), "last_step": state["last_step"].tolist()}
            self.tables[trainer.current_epoch] = table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--phase", choices=("head", "resume"), required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    ckpt = out / "stop.ckpt"
    module, watch = Module({"num_workers": 1, "persistent_workers": True}), Watch()
    callbacks = [MidasCallback(), watch] + ([StopAt(ckpt, "mid")] if args.phase == "head" else [])
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=EPOCHS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, ckpt_path=None if args.phase == "head" else str(ckpt))
    rank = int(os.environ.get("LOCAL_RANK", 0))
    result = {"steps": watch.steps, "plan": watch.plan, "tables": watch.tables, "num_updates": module.table.num_updates}
    partial = out / f"{args.phase}-rank{rank}.json.part"
    partial.write_text(json.dumps(result))
    partial.replace(out / f"{args.phase}-rank{rank}.json")
    if rank == 0:
        expected = [out / f"{args.phase}-rank{r}.json" for r in range(args.devices)]
        deadline = time.monotonic() + 120
        while not all(path.is_file() for path in expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(json.dumps({"ranks": args.devices}), flush=True)


if __name__ == "__main__":
    main()
