"""MIDAS with Accelerate: ``accelerate launch --multi_gpu --num_processes 2 examples/accelerate_train.py``
(or ``torchrun --nproc_per_node=2 examples/accelerate_train.py``; on a machine without GPUs
the script asks Accelerate for its multi-CPU mode, gloo).

Give ``accelerator.prepare`` the loader from ``midas_loader`` as it is, with its global
sampler: Accelerate deals its batches out to the processes, and the sampler orders them so
that every process gets an equal, disjoint share of each epoch (no padding, no duplicate
samples, also with ``even_batches=False``). Accelerate sets the epoch itself. The
per-sample statistics are all-gathered into every process's table, and alpha is one value
on every process.

The last line of standard output (main process) is one JSON object: per-process samples
seen per epoch, alpha per process, and the test accuracy.
"""

from __future__ import annotations

import argparse
import gc

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from synthetic import MODALITIES, NUM_CLASSES, accuracy, json_line, make_model, make_splits

from midas_data import MidasObjective, StatsTable, midas_loader, sync_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    # Without CUDA, cpu=True makes Accelerate form a gloo group from the launcher's variables.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.device.type == "cpu":
        torch.set_num_threads(1)
    train, test = make_splits()
    table = StatsTable(len(train), MODALITIES)
    loader = midas_loader(train, MODALITIES, batch_size=args.batch_size, stats=table)  # the global sampler
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=args.warmup_epochs)

    seen_per_epoch = []
    for _ in range(args.epochs):
        seen = 0
        for batch in loader:  # already on accelerator.device
            loss, info = objective(model(batch.inputs), batch, model=model)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            sync_stats(table, batch.ids, info["per_sample"])
            seen += len(batch)
        seen_per_epoch.append(seen)

    report = {
        "samples_per_epoch": seen_per_epoch,
        "alpha": objective.alpha.tolist(),
        "test_accuracy": accuracy(accelerator.unwrap_model(model), test, accelerator.device),
    }
    everyone = gather_object([report])
    if accelerator.is_main_process:
        line = json_line("accelerate_train", accelerator.num_processes, args.epochs, len(train), everyone)
        print(line, flush=True)
    # Release the DDP-wrapped model before the process group goes, so that the group is torn
    # down now and not at interpreter exit (where gloo can abort, seen on a loaded machine).
    del model, optimizer
    gc.collect()
    accelerator.end_training()


if __name__ == "__main__":
    main()
