"""MidasTrainer resume under torchrun with DataLoader workers, as a script: an uninterrupted
run, a run that checkpoints every ``--resume-step`` steps, and a run resumed from its first
checkpoint, each recording every trained batch on every rank.

    torchrun --nproc_per_node=2 tests/hf_resume.py --out DIR --workers 2 --resume-step 6

Writes ``DIR/{run}-rank{r}.json`` for run in straight and resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, StatsTable
from midas_data.integrations.transformers import MidasTrainer

MODALITIES = ("a", "b")
N, C, EPOCHS = 48, 3, 4


class Recording(MidasTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            value = loss[0] if isinstance(loss, tuple) else loss
            self.seen.append(
                {"epoch": inputs.epoch, "ids": inputs.ids.tolist(), "plan": inputs.plan.tolist(),
                 "loss": float(value), "alpha": self.objective.alpha.tolist()}
            )  # fmt: skip
        return loss


def data():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % C
    a = nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(N, 4, generator=g)
    b = nn.functional.one_hot(labels, 4).float() * 0.5 + torch.randn(N, 4, generator=g)
    return datasets.Dataset.from_dict({"a": a.numpy(), "b": b.numpy(), "label": labels.numpy()}).with_format("torch")


def trainer(out: Path, workers: int, **args) -> Recording:
    torch.manual_seed(0)
    model = LateFusionClassifier({m: nn.Linear(4, 8) for m in MODALITIES}, {m: 8 for m in MODALITIES}, C)
    training = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_train_epochs=EPOCHS,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        ddp_find_unused_parameters=False,
        **{"save_strategy": "no", "logging_steps": 1, **args},
    )
    made = Recording(
        model=model,
        args=training,
        train_dataset=data(),
        objective=MidasObjective(C, MODALITIES, warmup_epochs=1),
        stats=StatsTable(N, MODALITIES),
        midas_loader_kwargs={"policy": "hard"},
    )
    made.seen = []
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--resume-step", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", 0))
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight = trainer(out / "straight", args.workers)
        straight.train()
        runs["straight"] = straight
        head = trainer(out / "head", args.workers, save_strategy="steps", save_steps=args.resume_step)
        head.train()
        keep = out / "head" / f"checkpoint-{args.resume_step}"
        head.accelerator.wait_for_everyone()
        if rank == 0:
            for other in (out / "head").glob("checkpoint-*"):
                if other != keep:
                    shutil.rmtree(other)
        head.accelerator.wait_for_everyone()
        resumed = trainer(out / "head", args.workers)
        resumed.train(resume_from_checkpoint=str(keep))
        runs["resumed"] = resumed
    for name, run in runs.items():
        result = {"steps": run.seen, "alpha": run.objective.alpha.tolist(), "table": run.stats.values.float().tolist()}
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:  # one line from one process (torchrun waits for both before it returns)
        print(json.dumps({"steps": len(straight.seen)}), flush=True)


if __name__ == "__main__":
    main()
