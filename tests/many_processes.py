"""What the 2-process tests run in each process: small synthetic data, a late-fusion model,
training loops written the way a user writes them (plain DDP, Accelerate).

Kept out of the test module so that spawned processes import only this file.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import os
import socket
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader, sync_stats

MODALITIES = ("audio", "video")
NUM_CLASSES = 4


class SyntheticPairs(Dataset):
    """``n`` two-modality samples of ``NUM_CLASSES`` classes; audio carries the class more
    clearly than video (an imbalance, so alpha has something to do)."""

    def __init__(self, n: int = 101, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.audio = torch.randn(n, 8, generator=g) + 2.0 * nn.functional.one_hot(self.labels, 8).float()
        self.video = torch.randn(n, 6, generator=g) + 0.5 * nn.functional.one_hot(self.labels, 6).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"audio": self.audio[i], "video": self.video[i], "label": int(self.labels[i])}


def make_model(seed: int = 0) -> LateFusionClassifier:
    torch.manual_seed(seed)
    encoders = {
        "audio": nn.Sequential(nn.Linear(8, 16), nn.ReLU()),
        "video": nn.Sequential(nn.Linear(6, 16), nn.ReLU()),
    }
    return LateFusionClassifier(encoders, {"audio": 16, "video": 16}, NUM_CLASSES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(main: Any, *args: Any, nprocs: int = 2) -> None:
    """``main(rank, port, *args)`` on ``nprocs`` spawned processes; raises if any fails."""
    import torch.multiprocessing as mp

    mp.spawn(main, args=(free_port(), *args), nprocs=nprocs, join=True)


def init_gloo(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))


def shutdown() -> None:
    """Tear the group down while every rank is still here, after what holds it is gone."""
    gc.collect()  # DDP models keep their own reference to the group
    dist.barrier()
    dist.destroy_process_group()


def leave_rank() -> None:
    """End a spawned rank whose results are saved: tear the group down, then exit without
    interpreter teardown, where gloo now and then aborts a process on a loaded machine
    (``example_runs.TEARDOWN_ABORT``). Call it last in the ``try`` block: on an error the
    ``finally`` block tears down and the error reaches the test."""
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def tear_down_after_error() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def digest(table: StatsTable) -> str:
    h = hashlib.sha256(table.values.float().numpy().tobytes())
    h.update(table.last_step.numpy().tobytes())
    return h.hexdigest()


def ddp_run(
    rank: int,
    world: int,
    *,
    epochs: int,
    stop_at: tuple[int, int] | None = None,
    resume_from: dict[str, Any] | None = None,
    loader_class: Any = None,
    **loader_kwargs: Any,
) -> dict[str, Any]:
    """The README's plain loop under DDP, with no set_epoch call anywhere.

    Records every step's ids, plan, loss, epoch and alpha. ``stop_at=(epoch, steps)`` stops
    after that many steps of that epoch and returns the checkpoint; ``resume_from`` starts
    from one.
    """
    dataset = SyntheticPairs()
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    table = StatsTable(len(dataset), MODALITIES)
    kwargs = dict(loader_kwargs) if loader_class is None else {"loader_class": loader_class, **loader_kwargs}
    loader = midas_loader(
        dataset, MODALITIES, batch_size=8, num_replicas=world, rank=rank, stats=table, seed=3, **kwargs
    )
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    if resume_from is not None:
        model.module.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        objective.load_state_dict(resume_from["objective"])
        table.load_state_dict(resume_from["stats"])
        loader.load_state_dict(resume_from["loader"])
    steps: list[dict[str, Any]] = []
    first_epoch = 0 if resume_from is None else resume_from["epoch"]
    for epoch in range(first_epoch, epochs):
        for batch in loader:
            output = model(batch.inputs)
            loss, info = objective(output, batch, model=model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync_stats(table, batch.ids, info["per_sample"])
            steps.append(
                {
                    "epoch": epoch,
                    "batch_epoch": batch.epoch,
                    "ids": batch.ids.tolist(),
                    "plan": batch.plan.tolist(),
                    "loss": loss.item(),
                    "alpha": objective.alpha.tolist(),
                    "num_misaligned": info["num_misaligned"],
                }
            )
            done_in_epoch = sum(1 for s in steps if s["epoch"] == epoch)
            if stop_at is not None and (epoch, done_in_epoch) == stop_at:
                return {
                    "steps": steps,
                    "checkpoint": {
                        "epoch": epoch,
                        "model": model.module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "objective": objective.state_dict(),
                        "stats": table.state_dict(),
                        "loader": loader.state_dict(),
                    },
                }
    return {"steps": steps, "digest": digest(table), "objective_epoch": objective.epoch}
