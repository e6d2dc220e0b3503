"""``policy="prune"``: unbiased importance weights, the full-data tail, the epoch length
``len()`` reports, exact replay after a checkpoint, and equal shares on 2 gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch
from many_processes import spawn_ranks
from torch.utils.data import Dataset

from midas_data import StatsTable, midas_loader
from midas_data.feedback.prune import PrunePolicy, prune_plan
from midas_data.feedback.sampler import MidasBatchSampler

MODALITIES = ("audio", "video")


def table_with_losses(n: int, seed: int = 0, unseen: int = 0) -> tuple[StatsTable, torch.Tensor]:
    """A float32 table whose ``loss`` column holds skewed random losses; the last
    ``unseen`` samples are never written."""
    g = torch.Generator().manual_seed(seed)
    losses = torch.empty(n).exponential_(1.0, generator=g) ** 2
    table = StatsTable(n, MODALITIES, dtype=torch.float32)
    table.update(torch.arange(n - unseen), loss=losses[: n - unseen])
    return table, losses


def test_weighted_epoch_loss_is_unbiased_over_many_epochs():
    n, epochs = 300, 2000
    table, losses = table_with_losses(n, seed=3)
    sampler = MidasBatchSampler(n, 16, seed=11, policy=PrunePolicy(ratio=0.5, tail=0.0), stats=table)
    full = float(losses.sum())
    totals, per_sample = [], torch.zeros(n, dtype=torch.float64)
    for epoch in range(epochs):
        plan = sampler.plan_epoch(epoch)
        ids = plan.order.long()
        weights = plan.importance_weights(ids).double()
        totals.append(float((weights * losses[ids].double()).sum()))
        per_sample.index_add_(0, ids, weights)
    totals_t = torch.tensor(totals, dtype=torch.float64)
    mean, std = float(totals_t.mean()), float(totals_t.std())
    # The weighted epoch loss varies from epoch to epoch (it is an estimate) ...
    assert std > 0.01 * full
    # ... and its mean over the draws is the full-data loss: within 4 standard errors.
    assert abs(mean - full) < 4 * std / math.sqrt(epochs), (mean, full, std)
    assert abs(mean - full) / full < 0.01
    # Per sample: E[count * weight] = 1 (never above 1 / (1 - r) per epoch).
    assert torch.allclose(per_sample / epochs, torch.ones(n, dtype=torch.float64), atol=0.1)


def test_pruned_epochs_drop_half_of_the_low_scores_and_weigh_the_rest():
    n = 400
    table, losses = table_with_losses(n, seed=1, unseen=40)
    plan = prune_plan(n, 2, 0, PrunePolicy(ratio=0.5, tail=0.0), table.loss.clone())
    seen = losses[:360]
    low = (torch.arange(n) < 360) & (losses < seen.mean())
    kept = torch.zeros(n, dtype=torch.bool)
    kept[plan.order.long()] = True
    assert plan.policy == "prune" and plan.order.unique().numel() == plan.order.numel()
    assert int((low & ~kept).sum()) == round(0.5 * int(low.sum()))  # half the low ones dropped
    assert kept[~low].all()  # every high-score and every never-seen sample kept
    assert kept[360:].all()
    weights = plan.importance_weights(torch.arange(n))
    assert torch.allclose(weights[low & kept], torch.full_like(weights[low & kept], low.sum() / (low & kept).sum()))
    assert torch.equal(weights[~low], torch.ones_like(weights[~low]))


def test_first_epoch_and_the_tail_are_full_and_uniform():
    n = 200
    table, _ = table_with_losses(n)
    options = PrunePolicy(ratio=0.5, tail=0.125, num_epochs=15)  # last ceil(1.875) = 2 epochs full
    assert options.pruned_epochs == 13
    sampler = MidasBatchSampler(n, 8, policy=options, stats=table)
    for epoch, pruned in ((0, True), (12, True), (13, False), (14, False), (20, False)):
        plan = sampler.plan_epoch(epoch)
        assert (plan.order.numel() < n) == pruned, epoch
        if not pruned:
            assert plan.policy == "uniform" and torch.equal(plan.importance_weights(torch.arange(n)), torch.ones(n))
    empty = MidasBatchSampler(n, 8, policy=options, stats=StatsTable(n, MODALITIES))
    assert empty.plan_epoch(0).order.numel() == n  # nothing seen yet: the full data


def test_a_low_score_set_is_never_dropped_whole():
    snapshot = torch.tensor([0.1, 5.0, 5.0, 5.0])  # one sample below the mean
    plan = prune_plan(4, 1, 0, PrunePolicy(ratio=0.9, tail=0.0), snapshot)
    assert sorted(plan.order.tolist()) == [0, 1, 2, 3]  # nothing to drop without losing the set
    snapshot = torch.tensor([0.1, 0.2, 5.0, 5.0])  # two below: one dropped, one kept at weight 2
    plan = prune_plan(4, 1, 0, PrunePolicy(ratio=0.9, tail=0.0), snapshot)
    kept = [i for i in plan.order.tolist() if i < 2]
    assert len(kept) == 1 and plan.importance_weights(torch.tensor(kept)).tolist() == [2.0]


def test_options_are_checked():
    with pytest.raises(ValueError, match="needs the number of epochs"):
        PrunePolicy()
    with pytest.raises(ValueError, match="ratio"):
        PrunePolicy(ratio=1.0, num_epochs=3)
    with pytest.raises(ValueError, match="score"):
        PrunePolicy(score="confidence", num_epochs=3)
    with pytest.raises(ValueError, match="stats"):
        MidasBatchSampler(10, 2, policy="prune", num_epochs=3)
    sampler = MidasBatchSampler(10, 2, policy="prune", num_epochs=8, stats=StatsTable(10, MODALITIES))
    assert sampler.prune == PrunePolicy(num_epochs=8)
    with pytest.raises(ValueError, match="num_epochs: only for"):
        MidasBatchSampler(10, 2, num_epochs=8)


class Items(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"audio": torch.full((2,), float(i)), "video": torch.zeros(3), "label": i % 3}


def test_len_is_the_pruned_epochs_length_when_asked():
    n, batch = 203, 8
    table = StatsTable(n, MODALITIES)
    loader = midas_loader(Items(n), MODALITIES, batch_size=batch, stats=table, policy=PrunePolicy(num_epochs=6))
    sampler = loader.batch_sampler
    g = torch.Generator().manual_seed(0)
    lengths = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        announced = len(loader)
        seen = 0
        for b in loader:
            assert len(loader) == announced  # stable during the epoch
            table.update(b.ids, loss=torch.rand(len(b.ids), generator=g) * 3)
            seen += 1
        assert seen == announced, epoch
        lengths.append(seen)
    full = math.ceil(n / batch) - (1 if n % batch == 1 else 0)
    assert lengths[0] == full and lengths[-1] == full  # nothing seen yet; the tail
    assert all(length < full for length in lengths[1:5])
    # The epochs advance by themselves too: len() then plans the next epoch.
    again = midas_loader(Items(n), MODALITIES, batch_size=batch, stats=table, policy=PrunePolicy(num_epochs=6))
    first = len(again)
    assert sum(1 for _ in again) == first
    assert len(again) == sum(1 for _ in again)


def test_resume_replays_a_pruned_epoch_exactly():
    n, batch = 150, 8
    options = PrunePolicy(ratio=0.5, tail=0.0)
    table, _ = table_with_losses(n, seed=5)
    sampler = MidasBatchSampler(n, batch, seed=2, policy=options, stats=table)
    sampler.set_epoch(3)
    run = iter(sampler)
    head = [next(run) for _ in range(4)]
    state = sampler.state_dict()
    weights = [sampler.importance_weights(torch.tensor(b)) for b in head]
    rest = list(run)
    expected_weights = [sampler.importance_weights(torch.tensor(b)) for b in rest]
    # The table moves on after the checkpoint; the replay must not see that.
    table.update(torch.arange(n), loss=torch.rand(n))
    saved_table = table.state_dict()
    fresh_table = StatsTable(n, MODALITIES, dtype=torch.float32)
    fresh_table.load_state_dict(saved_table)
    resumed = MidasBatchSampler(n, batch, seed=2, policy=options, stats=fresh_table)
    resumed.load_state_dict(state)
    assert len(resumed) == len(head) + len(rest)
    replay = list(resumed)
    assert replay == rest
    assert all(torch.equal(a, resumed.importance_weights(torch.tensor(b))) for a, b in zip(expected_weights, rest))
    assert weights  # the weights of the first batches were computable before the checkpoint
    bad = {**state, "prune": [0.3, 0.0, "loss", None]}
    with pytest.raises(ValueError, match="prune"):
        MidasBatchSampler(n, batch, seed=2, policy=options, stats=fresh_table).load_state_dict(bad)


def test_old_table_checkpoints_are_converted():
    table = StatsTable(6, MODALITIES)
    table.update(torch.arange(3), similarity=torch.tensor([0.1, 0.2, 0.3]), loss=torch.ones(3))
    state = table.state_dict()
    old = {**state, "format": "midas_data.StatsTable/1", "values": state["values"][:4]}
    fresh = StatsTable(6, MODALITIES)
    fresh.load_state_dict(old)
    assert torch.allclose(fresh.similarity[:3].float(), torch.tensor([0.1, 0.2, 0.3]), atol=1e-3)
    assert fresh.loss.isnan().all()  # the column did not exist: never written
    with pytest.raises(ValueError, match="StatsTable/1.*shape"):
        fresh.load_state_dict({**old, "values": state["values"][:3]})


# -- 2 gloo ranks ------------------------------------------------------------------------------
RANK_EPOCHS = 6


def _rank_main(rank: int, port: int, out: str) -> None:
    """The rank-aware loader as users run it: 2 persistent workers per rank, 6 epochs, no
    set_epoch, an uneven dataset (203 samples, batches of 8), statistics synced every step."""
    import datetime
    import os

    import torch.distributed as dist

    from midas_data import sync_stats

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        n, batch = 203, 8
        table = StatsTable(n, MODALITIES)
        loader = midas_loader(
            Items(n), MODALITIES, batch_size=batch, seed=4, stats=table, policy=PrunePolicy(num_epochs=RANK_EPOCHS),
            num_replicas=2, rank=rank, num_workers=2, persistent_workers=True,
        )  # fmt: skip
        g = torch.Generator().manual_seed(100 + rank)  # every rank reports other losses
        result = {}
        for epoch in range(RANK_EPOCHS):
            announced = len(loader)
            batches = []
            for b in loader:
                batches.append((b.ids.tolist(), b.extras["importance_weights"].tolist()))
                sync_stats(table, b.ids, {"loss": torch.rand(len(b.ids), generator=g) * 2})
            result[epoch] = {"announced": announced, "batches": batches}
        table.flush()
        result["digest"] = table.values.nan_to_num(-1.0).sum().item()
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_pruned_epochs_on_two_gloo_ranks_with_persistent_workers(tmp_path):
    spawn_ranks(_rank_main, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["digest"] == r1["digest"]  # identical tables, hence identical plans
    for epoch in range(RANK_EPOCHS):
        b0, b1 = r0[epoch]["batches"], r1[epoch]["batches"]
        assert len(b0) == len(b1) == r0[epoch]["announced"] == r1[epoch]["announced"], epoch
        ids0 = {i for b, _ in b0 for i in b}
        ids1 = {i for b, _ in b1 for i in b}
        assert not ids0 & ids1
        count = sum(len(b) for b, _ in b0 + b1)
        assert count == len(ids0 | ids1)  # every planned sample once
        weights = {w for _, ws in b0 + b1 for w in ws}
        if epoch in (0, RANK_EPOCHS - 1):  # nothing seen yet; the full-data tail
            assert count == 203 and weights == {1.0}
        else:
            assert count < 203 and max(weights) > 1.0  # pruned, the kept low scores weighted up
