"""MIDAS in a plain DDP loop: ``torchrun --nproc_per_node=2 examples/ddp_train.py``.

Runs unchanged on GPUs (NCCL, one device per process) and on CPUs (gloo). Each rank
reads its own share of every epoch (``num_replicas``/``rank``), the per-sample statistics
are all-gathered into every rank's table, and alpha is one value on every rank. No
``set_epoch`` call is needed: each pass over the loader is the next epoch, and the
objective follows the epoch each batch was planned for.

The last line of standard output (rank 0) is one JSON object: per-rank samples seen per
epoch, alpha per rank, and the test accuracy.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from synthetic import MODALITIES, NUM_CLASSES, accuracy, json_line, make_model, make_splits

from midas_data import MidasObjective, StatsTable, midas_loader, sync_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)

    train, test = make_splits()
    table = StatsTable(len(train), MODALITIES)  # before the loader's workers start
    loader = midas_loader(
        train, MODALITIES, batch_size=args.batch_size, num_replicas=world, rank=rank, stats=table, pin_memory=cuda
    )
    model = torch.nn.parallel.DistributedDataParallel(
        make_model().to(device), device_ids=[local_rank] if cuda else None
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=args.warmup_epochs)

    seen_per_epoch = []
    for _ in range(args.epochs):
        seen = 0
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            loss, info = objective(model(batch.inputs), batch, model=model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync_stats(table, batch.ids, info["per_sample"])
            seen += len(batch)
        seen_per_epoch.append(seen)

    report = {
        "rank": rank,
        "samples_per_epoch": seen_per_epoch,
        "alpha": objective.alpha.tolist(),
        "test_accuracy": accuracy(model.module, test, device),
    }
    everyone: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(everyone, report)
    if rank == 0:
        print(json_line("ddp_train", world, args.epochs, len(train), everyone), flush=True)
    # Release what holds the process group (the DDP model) before tearing it down: a group
    # left alive to interpreter exit can have a gloo thread need the GIL there, which aborts.
    del model, optimizer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
