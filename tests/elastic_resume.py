"""A plain DDP loop checkpointed on one number of ranks and resumed on another, as a script:

    torchrun --standalone --nproc_per_node=N tests/elastic_resume.py head:NAME --out DIR
    torchrun --standalone --nproc_per_node=M tests/elastic_resume.py tail:NAME --out DIR

Several jobs in one launch run one after the other. ``head`` trains epochs 0 and 1 with the
"hard" policy and writes two checkpoints per rank, ``NAME-mid-rank{r}.pt`` (after the second
step of epoch 1) and ``NAME-end-rank{r}.pt`` (after the last step of epoch 1), plus every
trained batch in ``NAME-head-rank{r}.pt``. ``tail`` resumes each of them on its own number of
ranks, rank ``r`` loading old rank ``r % N``'s file as docs/distributed.md says, trains to
the end of epoch 4 and writes its batches and the stats table at the end of every epoch
from 1 on (what the next epoch is planned from) to ``NAME-WHICH-on{M}-rank{r}.pt``, WHICH
being mid or end.
DataLoader workers are on, persistent, as users train.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from many_processes import MODALITIES, NUM_CLASSES, SyntheticPairs, make_model  # noqa: E402

from midas_data import MidasObjective, StatsTable, midas_loader, sync_stats  # noqa: E402

SEED, BATCH, EPOCHS, MID_STEP = 3, 8, 5, 2
WORKERS = {"num_workers": 1, "persistent_workers": True}


def build(rank: int, world: int):
    dataset = SyntheticPairs()
    model = torch.nn.parallel.DistributedDataParallel(make_model())  # one rank too, as torchrun runs it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    table = StatsTable(len(dataset), MODALITIES)
    loader = midas_loader(
        dataset, MODALITIES, batch_size=BATCH, num_replicas=world, rank=rank, stats=table, policy="hard",
        seed=SEED, **WORKERS,
    )  # fmt: skip
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    return model, optimizer, table, loader, objective


def unwrapped(model):
    return getattr(model, "module", model)


def checkpoint(path: Path, epoch, model, optimizer, objective, table, loader) -> None:
    state = {"loader": loader.state_dict(), "objective": objective.state_dict(), "stats": table.state_dict(),
             "model": unwrapped(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}  # fmt: skip
    torch.save(state, path)  # written now: the table's memory keeps changing after this step


def step(model, optimizer, objective, table, batch) -> None:
    output = model(batch.inputs)
    loss, info = objective(output, batch, model=model)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sync_stats(table, batch.ids, info["per_sample"])


def head(out: Path, name: str, rank: int, world: int) -> None:
    model, optimizer, table, loader, objective = build(rank, world)
    batches = []
    for epoch in range(2):
        per_epoch = len(loader)
        for i, batch in enumerate(loader):
            step(model, optimizer, objective, table, batch)
            batches.append({"epoch": epoch, "ids": batch.ids.tolist()})
            if epoch == 1 and i + 1 in (MID_STEP, per_epoch):
                which = "mid" if i + 1 == MID_STEP else "end"
                checkpoint(out / f"{name}-{which}-rank{rank}.pt", epoch, model, optimizer, objective, table, loader)
    torch.save({"batches": batches, "mid_step": MID_STEP, "world": world}, out / f"{name}-head-rank{rank}.pt")


def tail(out: Path, name: str, which: str, rank: int, world: int) -> None:
    old_world = len(list(out.glob(f"{name}-{which}-rank*.pt")))
    state = torch.load(out / f"{name}-{which}-rank{rank % old_world}.pt", weights_only=False)
    model, optimizer, table, loader, objective = build(rank, world)
    unwrapped(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    objective.load_state_dict(state["objective"])
    table.load_state_dict(state["stats"])
    loader.load_state_dict(state["loader"])
    batches, lengths, tables_after = [], [], {}
    for epoch in range(state["epoch"], EPOCHS):
        lengths.append(len(loader))
        for batch in loader:
            step(model, optimizer, objective, table, batch)
            batches.append({"epoch": epoch, "ids": batch.ids.tolist(), "batch_epoch": batch.epoch})
        tables_after[epoch] = table.state_dict()  # flushed copies
    result = {"batches": batches, "lengths": lengths, "tables_after": tables_after, "old_world": old_world}
    torch.save(result, out / f"{name}-{which}-on{world}-rank{rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="+", help="head:NAME or tail:NAME, run in this order")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    for job in args.jobs:
        phase, name = job.split(":")
        if phase == "head":
            head(out, name, rank, world)
        else:
            for which in ("mid", "end"):
                tail(out, name, which, rank, world)
        dist.barrier()  # the files of this job are written before the next one reads them
    dist.destroy_process_group()
    if rank == 0:
        print('{"done": true}', flush=True)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown (tests/many_processes.py: leave_rank)


if __name__ == "__main__":
    main()
