"""Statistics across ranks: all-gather of int64 ids and float values, identical tables and plans."""

import datetime
import hashlib
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from many_processes import free_port, leave_rank, tear_down_after_error

from midas_data.feedback.columns import pack_statistics
from midas_data.feedback.sampler import DistributedMidasBatchSampler
from midas_data.feedback.stats import StatsTable
from midas_data.feedback.sync import all_gather_rows, is_distributed, sync_stats

MODALITIES = ("audio", "video")
BIG = 2**24 + 64  # ids above 2**24 do not survive a float32 cast
SMALL = 1000


def rows(ids, seed, has=None):
    g = torch.Generator().manual_seed(seed)
    n = len(ids)
    return torch.tensor(ids, dtype=torch.int64), {
        "confidence": torch.rand(n, 2, generator=g),
        "similarity": torch.rand(n, generator=g) * 2 - 1,
        "misaligned_loss": torch.rand(n, generator=g),
        "has_misaligned": torch.ones(n, dtype=torch.bool) if has is None else torch.tensor(has),
    }


def digest(table: StatsTable) -> str:
    h = hashlib.sha256(table.values.numpy().tobytes())
    h.update(table.last_step.numpy().tobytes())
    return h.hexdigest()


def test_without_a_process_group_everything_is_local():
    assert not is_distributed()
    ids, stats = rows([3, 2**24 + 1], seed=0)
    packed, columns = pack_statistics(stats, 2, rows=2)
    assert packed.shape == (2, 6) and packed.dtype == torch.float32 and columns == (True, True, True, False, True)
    out_ids, out_values, valid = all_gather_rows(ids, packed)
    assert out_ids is not None and torch.equal(out_ids, ids) and out_values is packed and valid is None
    table = StatsTable(2**24 + 2, MODALITIES)
    sync_stats(table, ids, stats, step=4)
    reference = StatsTable(2**24 + 2, MODALITIES)
    reference.update(ids, stats, step=4)
    assert digest(table) == digest(reference)
    with pytest.raises(TypeError, match="int64"):
        all_gather_rows(ids.float(), packed)


def _rank_main(rank: int, port: int, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        out = {}
        big = StatsTable(BIG, MODALITIES)
        # Step 1: different ids and row counts per rank, all above 2**24 but one shared id.
        mine = [2**24 + 1 + 2 * rank, 2**24 + 5 + 2 * rank, 2**24 + 40] + ([7] if rank == 0 else [])
        ids, stats = rows(mine, seed=rank)
        sync_stats(big, ids, stats)
        # Step 2: padded to a fixed capacity (no size exchange).
        ids, stats = rows([2**24 + 20 + rank, 11 + rank], seed=10 + rank, has=[True, rank == 0])
        sync_stats(big, ids, stats, capacity=6)
        before = digest(big)
        # Step 3: rank 1 sends a NaN: every rank rejects the step, every table stays as it was.
        ids, stats = rows([2**24 + 30 + rank], seed=20 + rank)
        if rank == 1:
            stats["similarity"][0] = math.nan
        try:
            sync_stats(big, ids, stats)
            out["nan_error"] = ""
        except ValueError as err:
            out["nan_error"] = str(err)
        out["big_digest"] = digest(big)
        out["unchanged_after_nan"] = out["big_digest"] == before
        probe = [2**24, 2**24 + 1, 2**24 + 2, 2**24 + 3, 2**24 + 5, 2**24 + 7, 2**24 + 40, 2**24 + 20, 2**24 + 21]
        out["probe"] = big.read(probe)

        # A training-like run on a small table: per-rank batches, gathered stats, rank-aware plans.
        small = StatsTable(SMALL, MODALITIES)
        for step in range(5):
            g = torch.Generator().manual_seed(100 * step + rank)
            local = torch.randperm(SMALL, generator=g)[: 30 + 5 * rank]
            sync_stats(small, local, rows(local.tolist(), seed=step * 7 + rank)[1])
        sampler = DistributedMidasBatchSampler(SMALL, 16, policy="hard", stats=small, seed=3)
        sampler.set_epoch(2)
        out["small_digest"] = digest(small)
        out["batches"] = list(sampler)
        out["order"] = sampler.current_plan.order.clone()
        out["policy"] = sampler.current_plan.policy
        torch.save(out, f"{results}/rank{rank}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


def test_two_gloo_ranks_get_identical_tables_and_plans(tmp_path):
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))

    assert r0["big_digest"] == r1["big_digest"] and r0["small_digest"] == r1["small_digest"]
    # Exact ids above 2**24: each rank's rows landed on their own ids, never on a neighbour.
    sim = r0["probe"]["similarity"]
    assert math.isnan(sim[0]) and math.isnan(sim[2])  # 2**24 and 2**24 + 2 were never sent
    expected = {}
    for rank in range(2):
        ids, stats = rows([2**24 + 1 + 2 * rank, 2**24 + 5 + 2 * rank, 2**24 + 40] + ([7] if rank == 0 else []), rank)
        for i, s in zip(ids.tolist(), stats["similarity"].tolist()):
            expected[i] = s  # rank order: rank 1 wins the shared id 2**24 + 40
    for column, i in ((1, 2**24 + 1), (3, 2**24 + 3), (4, 2**24 + 5), (5, 2**24 + 7), (6, 2**24 + 40)):
        assert math.isclose(sim[column].item(), expected[i], abs_tol=1e-3), i
    assert not math.isnan(sim[7]) and not math.isnan(sim[8])  # the padded step arrived too
    assert "similarity" in r0["nan_error"] and r0["nan_error"] == r1["nan_error"]
    assert r0["unchanged_after_nan"] and r1["unchanged_after_nan"]

    assert r0["policy"] == r1["policy"] == "hard"
    assert torch.equal(r0["order"], r1["order"])
    assert len(r0["batches"]) == len(r1["batches"])
    taken = sorted(i for r in (r0, r1) for batch in r["batches"] for i in batch)
    assert taken == sorted(r0["order"].tolist())  # disjoint shares, every slot once
