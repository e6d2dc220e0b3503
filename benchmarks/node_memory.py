"""Memory per node of the stats table: one table per node against one per rank.

For each number of local ranks (default 1, 2 and 4) and each ``sharing`` (``"node"``,
``"rank"``) it spawns that many gloo processes on this machine (one node), each with
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set as torchrun sets them, and in each:

1. measures the process before the table exists (``torch`` imported, group initialised);
2. builds a two-modality ``float16`` ``StatsTable`` over ``--samples`` samples, applies 20
   synced steps of 256 rows (``sync_stats``), plans an epoch with the ``hard`` policy (its
   snapshot of the similarity column is per rank, by design) and reads every column once,
   as a worst case for the pages a rank touches;
3. measures again, while every rank is still alive.

Per node it reports the sum over the processes of RSS and of PSS (from
``/proc/<pid>/smaps_rollup``) and the growth of ``/dev/shm`` use (``statvfs``). RSS counts a
shared page in every process that touched it, so its sum overstates a shared table; PSS
divides each shared page among the processes that map it, so its sum counts the node's
memory once. ``/dev/shm`` use is machine-wide: other jobs running at the same time show up
in it. One JSON line per configuration goes to ``--jsonl``, the table to ``--md``.

    python benchmarks/node_memory.py --samples 10000000 --ranks 1 2 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> dict[str, int]:
    """RSS and PSS of ``pid`` in bytes, from ``smaps_rollup``."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Shmem", "Shared_Clean", "Shared_Dirty"):
                found[key.lower()] = int(rest.split()[0]) * 1024
    return found


def _shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _rank(rank: int, world: int, port: int, samples: int, sharing: str, out: str) -> None:
    from midas_data.feedback.sampler import DistributedMidasBatchSampler
    from midas_data.feedback.stats import StatsTable
    from midas_data.feedback.sync import sync_stats

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    pids: list = [None] * world
    dist.all_gather_object(pids, os.getpid())
    dist.barrier()
    before = [_memory(p) for p in pids] if rank == 0 else None
    shm_before = _shm_used()
    dist.barrier()
    table = StatsTable(samples, ("audio", "video"), sharing=sharing, batch_capacity=256)
    g = torch.Generator().manual_seed(rank)
    for _ in range(20):
        ids = torch.randint(0, samples, (256,), generator=g)
        rows = {
            "confidence": torch.rand(256, 2, generator=g),
            "similarity": torch.rand(256, generator=g) * 2 - 1,
            "misaligned_loss": torch.rand(256, generator=g),
            "loss": torch.rand(256, generator=g),
        }
        sync_stats(table, ids, rows)
    plan = DistributedMidasBatchSampler(samples, 256, policy="hard", stats=table, seed=0).plan_epoch(1)
    touched = [float(column.max()) for column in table.values] + [int(table.last_step.max())]
    dist.barrier()
    if rank == 0:
        after = [_memory(p) for p in pids]
        record = {
            "script": "benchmarks/node_memory.py",
            "samples": samples,
            "local_ranks": world,
            "sharing_requested": sharing,
            "sharing": table.sharing,
            "table_mb": round(table.nbytes / MB, 1),
            "plan_length": int(plan.order.numel()),
            "rss_sum_mb": round(sum(a["rss"] for a in after) / MB, 1),
            "pss_sum_mb": round(sum(a["pss"] for a in after) / MB, 1),
            "rss_growth_sum_mb": round(sum(a["rss"] - b["rss"] for a, b in zip(after, before)) / MB, 1),
            "pss_growth_sum_mb": round(sum(a["pss"] - b["pss"] for a, b in zip(after, before)) / MB, 1),
            "dev_shm_growth_mb": round((_shm_used() - shm_before) / MB, 1),
            "pss_growth_per_rank_mb": [round((a["pss"] - b["pss"]) / MB, 1) for a, b in zip(after, before)],
            "touched": len(touched),
        }
        Path(out).write_text(json.dumps(record))
    dist.barrier()
    del table, plan
    dist.destroy_process_group()


def _table(records: list[dict]) -> str:
    samples = records[0]["samples"]
    lines = [
        "<!-- written by benchmarks/node_memory.py (run log: node_memory.jsonl) -->",
        f"# Stats table memory per node, {samples:,} samples, two modalities, float16",
        "",
        f"One machine ({platform.machine()}, {os.cpu_count()} cores), gloo, one process per local rank.",
        f"Table: {records[0]['table_mb']} MiB. Growth = after building the table, 20 synced steps and a",
        "`hard` plan (each rank keeps its own snapshot of one column and its plan), minus before the",
        "table. Sums over the node's processes. PSS divides shared pages among the processes that map",
        "them (counts the node's memory once); RSS counts them in every process that touched them.",
        "",
        "| local ranks | sharing asked (got) | PSS growth, node (MiB) | RSS growth, node (MiB) |"
        " /dev/shm growth (MiB) | PSS growth per rank (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        per_rank = " / ".join(str(x) for x in r["pss_growth_per_rank_mb"])
        lines.append(
            f"| {r['local_ranks']} | {r['sharing_requested']} ({r['sharing']}) | {r['pss_growth_sum_mb']} | "
            f"{r['rss_growth_sum_mb']} | {r['dev_shm_growth_mb']} | {per_rank} |"
        )
    lines += [
        "",
        "With one local rank the two settings are the same thing (a per-rank table is the node's table):",
        '`sharing="node"` gets a per-rank table there. Beyond the table, each rank holds its own plan',
        "and snapshot (about 70 MiB per rank here), so that part still grows with the local ranks.",
        "`/dev/shm` use is machine-wide, so other jobs running at the same time move that column.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    here = Path(__file__).resolve().parent / "results"
    parser.add_argument("--jsonl", type=Path, default=here / "node_memory.jsonl")
    parser.add_argument("--md", type=Path, default=here / "node_memory.md")
    parser.add_argument("--redraw", action="store_true", help="rewrite --md from --jsonl, measuring nothing")
    args = parser.parse_args()
    if args.redraw:
        args.md.write_text(_table([json.loads(line) for line in args.jsonl.read_text().splitlines() if line]))
        return
    records = []
    for ranks in args.ranks:
        for sharing in ("node", "rank"):
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "record.json")
                mp.spawn(_rank, args=(ranks, _free_port(), args.samples, sharing, out), nprocs=ranks, join=True)
                record = json.loads(Path(out).read_text())
            print(json.dumps(record), flush=True)
            records.append(record)
    args.jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    args.md.write_text(_table(records))
    print(_table(records), file=sys.stderr)


if __name__ == "__main__":
    main()
