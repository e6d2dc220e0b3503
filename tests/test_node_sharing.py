"""One stats table per node: local ranks map one block, write each update once, and stay
identical to per-rank tables; two jobs on one host never share; bad environments and a
dead rank give clear errors. Processes are spawned with gloo on CPU."""

from __future__ import annotations

import datetime
import os
import pickle
import signal
import time
import warnings
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from many_processes import digest, free_port, leave_rank, tear_down_after_error

from midas_data.feedback.node_local import PREFIX
from midas_data.feedback.sampler import DistributedMidasBatchSampler
from midas_data.feedback.stats import StatsStorageWarning, StatsTable
from midas_data.feedback.sync import sync_stats

MODALITIES = ("audio", "video")
N = 500


def _env(rank: int, world: int, port: int, local_rank: int | None, local_world: int | None) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    for name, value in (("LOCAL_RANK", local_rank), ("LOCAL_WORLD_SIZE", local_world)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    os.environ.pop("GROUP_RANK", None)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))


def _rows(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randperm(N, generator=g)[: 20 + 7 * rank + step % 5]
    n = ids.numel()
    return ids, {
        "confidence": torch.rand(n, 2, generator=g),
        "similarity": torch.rand(n, generator=g) * 2 - 1,
        "misaligned_loss": torch.rand(n, generator=g),
        "loss": torch.rand(n, generator=g),
        "has_misaligned": torch.rand(n, generator=g) > 0.3,
    }


def _read_in_worker(table: StatsTable, queue) -> None:
    queue.put((digest(table), table.sharing))


def _die_while_writing(table: StatsTable) -> None:
    own = pickle.loads(ForkingPickler.dumps(table))  # its own descriptor, as a spawned worker has
    half = torch.cat([_rows(50, 0)[0], _rows(50, 1)[0]])[::2]  # half of what the next update writes

    def write() -> None:
        own.confidence[0].index_fill_(0, half, 0.0)
        os.kill(os.getpid(), signal.SIGKILL)

    own._shared.commit(table._operations + 1, 0, write)


def _one_node_main(rank: int, port: int, out: str) -> None:
    _env(rank, 2, port, rank, 2)
    try:
        res = {}
        node = StatsTable(N, MODALITIES)  # auto: LOCAL_RANK and LOCAL_WORLD_SIZE are known
        per_rank = StatsTable(N, MODALITIES, sharing="rank")
        res["sharing"] = (node.sharing, per_rank.sharing)
        dist.barrier()  # local rank 0 unlinks the name right after the others attached
        res["inode"], res["links"] = node._shared.inode, node._shared.links
        first = node._shared.writes  # the reset in the constructor: written by one of the two
        for step in range(40):
            ids, stats = _rows(step, rank)
            sync_stats(node, ids, stats)
            sync_stats(per_rank, ids, stats)
        wrote = node._shared.writes - first
        # A NaN on one rank: every rank rejects the step and neither table changes.
        ids, stats = _rows(99, rank)
        if rank == 1:
            stats["loss"][0] = float("nan")
        try:
            sync_stats(node, ids, stats)
            res["nan"] = ""
        except ValueError as err:
            res["nan"] = str(err)
        res["node_digest"], res["rank_digest"] = digest(node), digest(per_rank)
        res["num_updates"] = (node.num_updates, per_rank.num_updates)
        res["operations"], res["sequence"], res["wrote"] = node._operations, node._shared.sequence, wrote
        sampler = DistributedMidasBatchSampler(N, 16, policy="hard", stats=node, seed=5)
        sampler.set_epoch(1)
        res["batches"] = list(sampler)
        res["order"] = sampler.current_plan.order.clone()
        # Into a worker: pickled (as a DataLoader pickles for spawned workers) and forked.
        copy = pickle.loads(ForkingPickler.dumps(node))
        res["copy_same_block"] = copy._shared.inode == node._shared.inode and digest(copy) == res["node_digest"]
        res["worker"] = []
        for method in ("fork", "spawn"):  # a spawned worker reopens the block through its parent
            ctx = mp.get_context(method)
            queue = ctx.Queue()
            worker = ctx.Process(target=_read_in_worker, args=(node, queue))
            worker.start()
            res["worker"].append(queue.get(timeout=60))
            worker.join(60)
        # A checkpoint loads into a node table on every rank, then reset: still one write each.
        state = per_rank.state_dict()
        node.reset()
        dist.barrier()  # operations with no collective between them may be seen early by a slower rank
        res["after_reset"] = bool(torch.isnan(node.values.float()).all()) and node.num_updates == 0
        dist.barrier()
        node.load_state_dict(state)
        res["loaded_digest"] = digest(node)
        dist.barrier()
        # A process that dies while it writes (the lock held, half an update written): the
        # lock is freed with it and the next local rank writes that update again, in full.
        if rank == 1:
            ctx = mp.get_context("fork")
            child = ctx.Process(target=_die_while_writing, args=(node,))
            child.start()
            child.join(60)
            res["writer_exit"] = child.exitcode
        dist.barrier()
        ids, stats = _rows(50, rank)
        sync_stats(node, ids, stats)
        sync_stats(per_rank, ids, stats)
        res["recovered"] = digest(node) == digest(per_rank) and node._shared.sequence == node._operations
        dist.barrier()
        # One rank updating alone breaks the rule that every rank makes the same updates.
        if rank == 1:
            node.update(*_rows(7, 1))
        dist.barrier()
        ids, stats = _rows(8, rank)
        try:
            sync_stats(node, ids, stats)
            res["alone"] = ""
        except RuntimeError as err:
            res["alone"] = str(err)
        dist.barrier()
        # The environment without LOCAL_RANK: auto falls back quietly, node refuses on every rank.
        saved = os.environ.pop("LOCAL_RANK")
        res["no_local_auto"] = StatsTable(N, MODALITIES).sharing
        try:
            StatsTable(N, MODALITIES, sharing="node")
            res["no_local_node"] = ""
        except ValueError as err:
            res["no_local_node"] = str(err)
        # Two processes that both claim local rank 0 (two launches on a host, no GROUP_RANK).
        os.environ["LOCAL_RANK"] = "0"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res["dup_auto"] = StatsTable(N, MODALITIES).sharing
        res["dup_warning"] = [str(w.message) for w in caught if issubclass(w.category, StatsStorageWarning)]
        try:
            StatsTable(N, MODALITIES, sharing="node")
            res["dup_node"] = ""
        except ValueError as err:
            res["dup_node"] = str(err)
        os.environ["LOCAL_RANK"] = saved
        torch.save(res, f"{out}/r{rank}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


def test_local_ranks_share_one_table_identical_to_per_rank_tables(tmp_path):
    mp.spawn(_one_node_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=False) for r in range(2))
    for r in (r0, r1):
        assert r["sharing"] == ("node", "rank")
        assert r["links"] == 0  # the name is gone from /dev/shm once both ranks map the block
        assert r["node_digest"] == r["rank_digest"]  # the same bytes as a per-rank table
        assert r["num_updates"] == (40, 40)
        assert "not finite" in r["nan"]
        assert r["operations"] == r["sequence"] == 41  # reset + 40 updates, each applied once
        assert r["recovered"]
        assert r["copy_same_block"] and r["worker"] == [(r["node_digest"], "node")] * 2
        assert r["after_reset"] and r["loaded_digest"] == r["rank_digest"]
        assert r["no_local_auto"] == "rank" and "LOCAL_RANK" in r["no_local_node"]
        assert r["dup_auto"] == "rank" and "claim LOCAL_RANK [0, 0]" in r["dup_node"]
        assert r["dup_warning"] and "GROUP_RANK" in r["dup_warning"][0]
    assert r0["inode"] == r1["inode"]  # one block for the node
    assert r0["node_digest"] == r1["node_digest"] and torch.equal(r0["order"], r1["order"])  # one plan
    # The ranks split that one plan: every planned draw (hard draws repeat samples) exactly once.
    assert sorted(i for b in r0["batches"] + r1["batches"] for i in b) == sorted(r0["order"].tolist())
    assert sorted(r0["order"].tolist()) != list(range(N))  # the table shaped the plan
    assert r0["wrote"] + r1["wrote"] == 40  # every update written by exactly one rank
    assert r1["writer_exit"] == -signal.SIGKILL
    # Rank 1's lone update took operation 45 of the node; rank 0's 45th (a synced step) is refused.
    assert "operation 45 of local rank 0 differs from the one another local rank applied" in r0["alone"]


# -- two jobs on one host at once --------------------------------------------------------
def _two_jobs_main(proc: int, ports: tuple[int, int], out: str) -> None:
    job, rank = divmod(proc, 2)
    _env(rank, 2, ports[job], rank, 2)
    try:
        # Job 1 keeps its node's block in a directory of its own choosing (storage="file").
        table = StatsTable(N, MODALITIES) if job == 0 else StatsTable(N, MODALITIES, storage="file", directory=out)
        for step in range(10):
            ids, stats = _rows(step + 100 * job, rank)
            sync_stats(table, ids, stats)
        dist.barrier()
        record = {"inode": table._shared.inode, "digest": digest(table), "sharing": table.sharing}
        record.update(storage=table.storage, left=[f for f in os.listdir(out) if f.startswith(PREFIX)])
        torch.save(record, f"{out}/p{proc}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


def test_two_jobs_on_one_host_never_share_a_table(tmp_path):
    mp.spawn(_two_jobs_main, args=((free_port(), free_port()), str(tmp_path)), nprocs=4, join=True)
    a0, a1, b0, b1 = (torch.load(tmp_path / f"p{p}.pt", weights_only=False) for p in range(4))
    assert {r["sharing"] for r in (a0, a1, b0, b1)} == {"node"}
    assert a0["inode"] == a1["inode"] != b0["inode"] == b1["inode"]
    assert a0["digest"] == a1["digest"] != b0["digest"] == b1["digest"]
    assert (a0["storage"], b0["storage"]) == ("shm", "file") and b0["left"] == b1["left"] == []


# -- a rank that dies while it holds the table -------------------------------------------
def _dying_main(rank: int, port: int, out: str, when: str) -> None:
    _env(rank, 2, port, rank, 2)
    with open(f"{out}/pid{rank}", "w") as f:
        f.write(str(os.getpid()))
    if when == "during" and rank == 0:  # local rank 0 dies between creating the block and sharing it
        from midas_data.feedback import node_local

        create = node_local._create

        def create_and_die(*args):
            fd, path = create(*args)
            with open(f"{out}/leaked", "w") as f:
                f.write(path)
            os.kill(os.getpid(), signal.SIGKILL)

        node_local._create = create_and_die
    table = None
    try:
        table = StatsTable(N, MODALITIES)
        sync_stats(table, *_rows(0, rank))
        dist.barrier()
        if rank == 0:  # the creator dies without any clean-up
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.5)
        sync_stats(table, *_rows(1, rank))
        error = ""
    except RuntimeError as err:
        error = str(err)
    links = None if table is None else table._shared.links
    creator = open(f"{out}/pid0").read()
    names = [f for f in os.listdir("/dev/shm") if f.startswith(f"{PREFIX}{creator}_")]
    torch.save({"error": error, "links": links, "names": names}, f"{out}/survivor.pt")
    os._exit(0)


@pytest.mark.parametrize("when", ["after", "during"])
def test_a_rank_that_dies_leaves_a_clear_error(tmp_path, when):
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_dying_main, args=(r, port, str(tmp_path), when)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert procs[0].exitcode == -signal.SIGKILL and procs[1].exitcode == 0
    survivor = torch.load(tmp_path / "survivor.pt", weights_only=False)
    if when == "after":  # the block had lost its name: nothing is left in /dev/shm
        assert "sync_stats: the all-gather failed" in survivor["error"] and "died" in survivor["error"]
        assert survivor["links"] == 0 and survivor["names"] == []
    else:  # killed inside the constructor: the one window that leaves the file (docs/distributed.md)
        assert "publishing the node's table failed" in survivor["error"] and "died" in survivor["error"]
        leaked = (tmp_path / "leaked").read_text()
        assert survivor["names"] == [os.path.basename(leaked)]
        os.unlink(leaked)


def test_sharing_option_is_checked_and_per_process_without_a_group():
    with pytest.raises(ValueError, match="sharing: expected one of"):
        StatsTable(4, MODALITIES, sharing="host")
    assert StatsTable(4, MODALITIES, sharing="node").sharing == "rank"  # one process is its own node


def test_the_memory_figures_in_the_docs_are_the_measured_ones():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = " ".join((root / "docs/distributed.md").read_text().split())
    rows = {}
    for line in (root / "benchmarks/results/node_memory.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows[(int(cells[0]), cells[1].split()[0])] = (float(cells[2]), float(cells[4]))
    shm = [rows[(n, "rank")][1] for n in (1, 2, 4)]
    node_pss = [int(rows[(n, "node")][0] + 0.5) for n in (1, 2, 4)]  # rounded half up, as quoted
    rank_pss = [int(rows[(n, "rank")][0] + 0.5) for n in (1, 2, 4)]
    assert {rows[(n, "node")][1] for n in (1, 2, 4)} == {133.5}  # /dev/shm: one table per node
    assert "against {:.1f}, {:.1f} and {:.1f} MiB with a table per rank".format(*shm) in docs
    assert "grows by {}, {} and {} MiB against {}, {} and {} MiB".format(*node_pss, *rank_pss) in docs
