"""What each of the four processes of ``test_two_nodes.py`` runs under ``torchrun``: the
plain DDP loop of docs/distributed.md with a prioritised policy and a node-shared stats
table, then the streaming stage over shards split by node. Saves its record to
``<out>/rank<RANK>.pt``.

Usage: ``torchrun --nnodes=2 --nproc_per_node=2 --node_rank=N ... two_nodes.py OUT SHARDS``
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from many_processes import MODALITIES, NUM_CLASSES, SyntheticPairs, digest, leave_rank, make_model

from midas_data import MidasObjective, StatsTable, midas_loader, sync_stats

EPOCHS = 3


def ddp_part(rank: int, world: int) -> dict:
    dataset = SyntheticPairs()
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    table = StatsTable(len(dataset), MODALITIES)  # sharing="auto": one table per node here
    loader = midas_loader(
        dataset, MODALITIES, batch_size=8, num_replicas=world, rank=rank, stats=table, policy="hard", seed=3
    )
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    epochs = []
    for _ in range(EPOCHS):
        ids = []
        for batch in loader:
            output = model(batch.inputs)
            loss, info = objective(output, batch, model=model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync_stats(table, batch.ids, info["per_sample"])
            ids += batch.ids.tolist()
        plan = loader.batch_sampler.current_plan
        epochs.append({"ids": ids, "order": plan.order.tolist(), "policy": plan.policy})
    shared = table._shared
    return {
        "epochs": epochs,
        "alpha": objective.alpha.tolist(),
        "digest": digest(table),
        "num_updates": table.num_updates,
        "sharing": table.sharing,
        "inode": shared.inode if table.sharing == "node" else None,
        "links": shared.links if table.sharing == "node" else None,
        "writes": shared.writes if table.sharing == "node" else None,
    }


def streaming_part(shards: Path) -> dict:
    """The stage with a prioritised policy over a node-shared table that the stream workers
    read; the steps feed it made-up statistics (a function of the id) through sync_stats."""
    import webdataset as wds

    from midas_data.streaming import MidasBatches, ShardIndex

    index = ShardIndex.load(shards)
    table = StatsTable(index.num_samples, MODALITIES)
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, window=8, stats=table, policy="hard")
    pipeline = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=stage.split_by_node).compose(stage)
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=1, multiprocessing_context="fork")
    seen = []
    for epoch in range(2):
        stage.set_epoch(epoch)
        ids, batches = [], 0
        for batch in loader:
            ids += batch.ids.tolist()
            batches += 1
            x = batch.ids.double()
            rows = {"similarity": torch.cos(x).float(), "confidence": torch.stack([x.sin().abs(), x.cos().abs()], 1)}
            sync_stats(table, batch.ids, rows)  # a collective each step, as DDP has: unequal counts would hang
        seen.append((batches, ids))
    return {"epochs": seen, "digest": digest(table), "sharing": table.sharing, "inode": table._shared.inode}


def main() -> None:
    out, shards = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    record = {
        "rank": rank,
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "node": int(os.environ["GROUP_RANK"]),
        "ddp": ddp_part(rank, world),
        "streaming": streaming_part(shards),
    }
    torch.save(record, out / f"rank{rank}.pt")
    leave_rank()


if __name__ == "__main__":
    main()
