"""MidasBatchSampler: rank splits, policies, importance weights, exact resume, feedback lag."""

import io
import itertools
import math

import pytest
import torch
from torch.utils.data import Dataset

from midas_data import midas_loader, set_epoch
from midas_data.feedback.planning import (
    affine_coefficients,
    arrange_counts,
    batch_bounds,
    choose_weak_modality,
    resample_irregular,
    stat_moments,
    systematic_counts,
)
from midas_data.feedback.sampler import DistributedMidasBatchSampler, MidasBatchSampler
from midas_data.feedback.stats import StatsTable
from midas_data.functional import pair_importance_weights

MODALITIES = ("audio", "video")
# torchdata's StatefulDataLoader calls a deprecated torch function; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")


class TinyDataset(Dataset):
    """Sample i: audio filled with i, video filled with -i, label i % 4."""

    def __init__(self, n: int = 64) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {"audio": torch.full((3,), float(i)), "video": torch.full((2,), -float(i)), "label": i % 4}


def hard_table(n: int, seen: int | None = None, seed: int = 0) -> StatsTable:
    table = StatsTable(n, MODALITIES)
    seen = n if seen is None else seen
    g = torch.Generator().manual_seed(seed)
    table.update(torch.arange(seen), similarity=torch.rand(seen, generator=g) * 2 - 1)
    return table


def flat(sampler) -> torch.Tensor:
    return torch.tensor(list(itertools.chain.from_iterable(sampler)), dtype=torch.int64)


# -- uniform, rank splits --------------------------------------------------------------------
def test_uniform_order_is_the_seeded_permutation():
    sampler = MidasBatchSampler(100, 8, seed=3)
    sampler.set_epoch(2)
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(3 * 1_000_003 + 2))
    assert torch.equal(flat(sampler), expected)
    assert torch.equal(sampler.epoch_order(), expected) and sampler.epoch_order().dtype == torch.int64
    assert torch.equal(flat(MidasBatchSampler(10, 4, shuffle=False)), torch.arange(10))


def test_batch_bounds_split_every_slot_once_with_equal_batch_counts():
    for n, size, replicas, drop_last in itertools.product(range(1, 60), (2, 3, 8), (1, 2, 3), (False, True)):
        try:
            shares = [batch_bounds(n, size, replicas, r, drop_last) for r in range(replicas)]
        except ValueError:
            assert n < replicas and not drop_last
            continue
        counts = {len(s) for s in shares}
        assert len(counts) == 1, (n, size, replicas, shares)
        slots = sorted(i for s in shares for a, b in s for i in range(a, b))
        assert len(slots) == len(set(slots))
        if drop_last:
            assert all(b - a == size for s in shares for a, b in s)
        else:
            assert slots == list(range(n))
            if n >= 2 * replicas:
                assert all(b - a >= 2 for s in shares for a, b in s)


def test_one_replica_keeps_the_legacy_batches():
    assert batch_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]  # a lone last sample is folded
    assert batch_bounds(11, 3) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert batch_bounds(11, 3, drop_last=True) == [(0, 3), (3, 6), (6, 9)]
    assert batch_bounds(1, 4) == [(0, 1)]


def test_rank_shares_are_disjoint_and_cover_the_global_plan():
    table = hard_table(203)
    for policy in ("uniform", "hard"):
        samplers = [
            MidasBatchSampler(203, 8, seed=1, policy=policy, stats=table, num_replicas=3, rank=r) for r in range(3)
        ]
        batches = [list(s) for s in samplers]
        assert len({len(b) for b in batches}) == 1
        union = sorted(i for b in batches for batch in b for i in batch)
        assert union == sorted(samplers[0].current_plan.order.tolist())
        if policy == "uniform":
            assert union == list(range(203))  # every sample once per epoch across ranks


def test_plans_are_identical_on_every_rank():
    # Two "ranks" in one process: separate tables that received the same updates.
    tables = [hard_table(500, seed=4) for _ in range(2)]
    plans = [
        MidasBatchSampler(500, 8, seed=9, policy="hard", stats=t, num_replicas=2, rank=r).plan_epoch(3)
        for r, t in enumerate(tables)
    ]
    assert torch.equal(plans[0].order, plans[1].order)
    again = MidasBatchSampler(500, 8, seed=9, policy="hard", stats=tables[0]).plan_epoch(3)
    assert torch.equal(again.order, plans[0].order)
    other_epoch = MidasBatchSampler(500, 8, seed=9, policy="hard", stats=tables[0]).plan_epoch(4)
    assert not torch.equal(other_epoch.order, plans[0].order)


# -- prioritised policies -----------------------------------------------------------------------
def test_hard_policy_draws_in_proportion_to_the_hard_sample_weight():
    n = 2000
    table = hard_table(n, seen=1500)
    sampler = MidasBatchSampler(n, 16, policy="hard", stats=table, floor=0.2)
    order = flat(sampler)
    plan = sampler.current_plan
    assert plan.policy == "hard" and order.numel() == n and order.dtype == torch.int64
    counts = torch.bincount(order, minlength=n).double()
    expected = plan.expected_counts(torch.arange(n))
    assert (counts - expected).abs().max() < 1  # systematic resampling
    assert math.isclose(expected.sum().item(), n, rel_tol=1e-9)
    # Expected draws follow the hard-sample weight w = 1 + (s + 1) / 2 of the last similarity s.
    s = table.similarity[:1500].double()
    w = 1 + (s + 1) / 2
    assert torch.allclose(expected[:1500], 0.2 + 0.8 * w / w.mean(), atol=1e-6)
    assert torch.allclose(expected[1500:], torch.ones(500, dtype=torch.float64))  # unseen: the mean
    weights = sampler.importance_weights(torch.arange(n))
    assert weights.dtype == torch.float32
    assert torch.allclose(weights.double(), 1 / expected, rtol=1e-6) and weights.max() <= 1 / 0.2


def test_importance_weights_make_the_prioritised_loss_unbiased():
    n = 40
    table = hard_table(n, seed=2)
    losses = torch.rand(n, generator=torch.Generator().manual_seed(5)).double() + 0.5
    totals = []
    for epoch in range(300):
        sampler = MidasBatchSampler(n, 4, policy="hard", stats=table, floor=0.1, seed=epoch)
        order = flat(sampler)
        totals.append((sampler.importance_weights(order).double() * losses[order]).sum())
    # E[sum over slots of w_i L_i] = sum_i L_i: the uniform epoch's loss.
    assert math.isclose(torch.stack(totals).mean().item(), losses.sum().item(), rel_tol=5e-3)


def test_floor_one_and_missing_statistics_give_the_uniform_plan():
    uniform = MidasBatchSampler(300, 8, seed=2).plan_epoch(1).order
    full = hard_table(300)
    floor_one = MidasBatchSampler(300, 8, seed=2, policy="hard", stats=full, floor=1.0)
    assert torch.equal(floor_one.plan_epoch(1).order, uniform)
    empty = StatsTable(300, MODALITIES)
    plan = MidasBatchSampler(300, 8, seed=2, policy="hard", stats=empty).plan_epoch(1)
    assert plan.policy == "uniform" and torch.equal(plan.order, uniform)
    sampler = MidasBatchSampler(300, 8, seed=2, policy="hard", stats=empty)
    list(sampler)
    assert torch.equal(sampler.importance_weights(torch.arange(3)), torch.ones(3))


def test_weak_modality_policy_favours_low_confidence_of_the_weak_modality():
    n = 1000
    table = StatsTable(n, MODALITIES)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(n, generator=g) * 0.5  # video is the weak modality
    audio = 0.5 + torch.rand(n, generator=g) * 0.5
    table.update(torch.arange(n), confidence=torch.stack([audio, video], dim=1))
    assert choose_weak_modality(table.confidence) == 1
    sampler = MidasBatchSampler(n, 10, policy="weak_modality", stats=table, floor=0.2)
    counts = torch.bincount(flat(sampler), minlength=n).double()
    plan = sampler.current_plan
    assert plan.weak_modality == 1
    expected = plan.expected_counts(torch.arange(n))
    h = 1 - table.confidence[1].double()
    assert torch.allclose(expected, 0.2 + 0.8 * h / h.mean(), atol=1e-6)
    assert (counts - expected).abs().max() < 1
    low, high = video < 0.1, video > 0.4
    assert counts[low].mean() > 1.2 > 0.8 > counts[high].mean()
    named = MidasBatchSampler(n, 10, policy="weak_modality", stats=table, weak_modality="audio").plan_epoch()
    assert named.weak_modality == 0
    with pytest.raises(ValueError, match="'text' is not one of"):
        MidasBatchSampler(n, 10, policy="weak_modality", stats=table, weak_modality="text")


def test_streamed_resampling_matches_the_reference():
    g = torch.Generator().manual_seed(1)
    n = 100_003  # several chunks
    snapshot = (torch.rand(n, generator=g) * 2 - 1).half()
    snapshot[::7] = math.nan
    a, b = affine_coefficients("hard", 0.2, *stat_moments(snapshot))
    expected = snapshot.double().mul(b).add(a).nan_to_num(nan=1.0)
    assert math.isclose(expected.sum().item(), n, rel_tol=1e-12)
    reference = systematic_counts(expected, 0.37)
    ids, counts = resample_irregular(snapshot, a, b, 0.37)
    full = torch.ones(n, dtype=torch.int64)
    full[ids] = counts
    assert torch.equal(full, reference) and int(full.sum()) == n
    order = arrange_counts(ids, counts, torch.randperm(n, generator=g, dtype=torch.int32))
    assert torch.equal(torch.bincount(order.long(), minlength=n), full)


def test_plans_have_no_2_to_the_24_limit():
    n = 2**24 + 8
    table = StatsTable(n, MODALITIES)
    top = torch.tensor([n - 1, n - 3])
    table.update(top, similarity=torch.tensor([1.0, -1.0]))
    plan = MidasBatchSampler(n, 64, policy="hard", stats=table, floor=0.5).plan_epoch()
    assert plan.order.dtype == torch.int32 and plan.order.numel() == n
    counts = torch.bincount(plan.order.long(), minlength=n)
    expected = plan.expected_counts(top)
    assert expected[0] > 1 > expected[1]
    assert (counts[top].double() - expected).abs().max() < 1 and int(counts.sum()) == n


def test_pair_importance_weights_multiply_distinct_sources():
    weights = torch.tensor([1.0, 2.0, 0.5, 4.0])
    plan = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 3]])
    assert pair_importance_weights(weights, plan).tolist() == [2.0, 2.0, 2.0, 4.0]
    three = torch.tensor([[0, 1, 1], [2, 2, 2]])
    assert pair_importance_weights(weights, three).tolist() == [2.0, 0.5]


def test_arguments_are_checked():
    table = StatsTable(10, MODALITIES)
    with pytest.raises(ValueError, match="stats=StatsTable"):
        MidasBatchSampler(10, 2, policy="hard")
    with pytest.raises(ValueError, match="policy"):
        MidasBatchSampler(10, 2, policy="easy", stats=table)
    with pytest.raises(ValueError, match="11 samples"):
        MidasBatchSampler(11, 2, policy="hard", stats=table)
    with pytest.raises(ValueError, match="floor"):
        MidasBatchSampler(10, 2, policy="hard", stats=table, floor=0.0)
    with pytest.raises(ValueError, match="shuffle=True"):
        MidasBatchSampler(10, 2, policy="hard", stats=table, shuffle=False)
    with pytest.raises(ValueError, match="rank"):
        MidasBatchSampler(10, 2, num_replicas=2, rank=2)
    with pytest.raises(TypeError, match="expected the dataset size as an int"):
        MidasBatchSampler(torch.utils.data.SequentialSampler(range(10)), batch_size=2, drop_last=False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedMidasBatchSampler(10, 2)
    sampler = DistributedMidasBatchSampler(10, 2, num_replicas=2, rank=1)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (2, 1, 2)
    with pytest.raises(RuntimeError, match="iterate the loader first"):
        MidasBatchSampler(10, 2, policy="hard", stats=table).importance_weights(torch.arange(2))


def test_midas_loader_passes_the_sampler_options():
    table = hard_table(64)
    loader = midas_loader(
        TinyDataset(), MODALITIES, batch_size=4, stats=table, policy="hard", floor=0.5, num_replicas=2, rank=1
    )
    sampler = loader.batch_sampler
    assert (sampler.policy, sampler.stats, sampler.floor, sampler.num_replicas, sampler.rank) == (
        "hard",
        table,
        0.5,
        2,
        1,
    )
    assert len(loader) == 8
    batch = next(iter(loader))
    assert sampler.importance_weights(batch.ids).shape == (len(batch),)


# -- checkpoints --------------------------------------------------------------------------------
def fake_step(table: StatsTable, batch, epoch: int) -> None:
    """A training step's statistics, a deterministic function of (id, epoch)."""
    ids = batch.ids.double()
    similarity = torch.sin(ids * 0.37 + epoch)
    confidence = torch.stack([torch.sigmoid(torch.cos(ids + epoch)), torch.sigmoid(torch.sin(ids * 1.3))], dim=1)
    table.update(batch.ids, confidence=confidence.float(), similarity=similarity.float())


def resumable_loader(num_workers: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    table = StatsTable(64, MODALITIES)
    loader = midas_loader(
        TinyDataset(),
        MODALITIES,
        batch_size=4,
        seed=11,
        stats=table,
        policy="hard",
        loader_class=StatefulDataLoader,
        num_workers=num_workers,
    )
    return loader, table


def train_epoch(loader, table, epoch, stop_after=None):
    set_epoch(loader, epoch)
    seen = []
    for batch in loader:
        fake_step(table, batch, epoch)
        seen.append((batch.ids.tolist(), batch.plan.tolist()))
        if stop_after is not None and len(seen) == stop_after:
            break
    return seen


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_mid_epoch_exactly(num_workers):
    pytest.importorskip("torchdata.stateful_dataloader")
    reference, ref_table = resumable_loader(num_workers)
    train_epoch(reference, ref_table, 0)
    full = train_epoch(reference, ref_table, 1)
    after = train_epoch(reference, ref_table, 2)
    assert reference.batch_sampler.current_plan.policy == "hard"

    interrupted, table = resumable_loader(num_workers)
    train_epoch(interrupted, table, 0)
    head = train_epoch(interrupted, table, 1, stop_after=5)
    loader_state, table_state = round_trip(interrupted.state_dict()), round_trip(table.state_dict())
    del interrupted

    resumed, new_table = resumable_loader(num_workers)
    new_table.load_state_dict(table_state)
    # The table moved on since the epoch was planned: planning again from it would differ.
    assert not torch.equal(resumed.batch_sampler.plan_epoch(1).order, reference.batch_sampler.plan_epoch(1).order)
    resumed.load_state_dict(loader_state)
    tail = train_epoch(resumed, new_table, 1)
    assert head + tail == full and len(tail) == len(full) - 5
    assert train_epoch(resumed, new_table, 2) == after


def test_state_of_a_finished_epoch_lets_the_next_epoch_start_fresh():
    pytest.importorskip("torchdata.stateful_dataloader")
    loader, table = resumable_loader(0)
    train_epoch(loader, table, 0)
    state = round_trip(loader.state_dict())
    fresh, fresh_table = resumable_loader(0)
    fresh_table.load_state_dict(table.state_dict())
    fresh.load_state_dict(state)
    assert train_epoch(fresh, fresh_table, 1) == train_epoch(loader, table, 1)


def test_sampler_state_is_checked():
    sampler = MidasBatchSampler(64, 4, seed=1)
    iterator = iter(sampler)
    next(iterator)
    state = sampler.state_dict()
    assert state["yielded"] == 1 and state["snapshot"] is None
    for key, value in (("num_samples", 65), ("batch_size", 8), ("drop_last", True), ("seed", 2), ("policy", "hard")):
        with pytest.raises(ValueError, match=f"state\\['{key}'\\]"):
            MidasBatchSampler(64, 4, seed=1).load_state_dict({**state, key: value})
    # Another number of ranks resumes the rest of the epoch (tests/test_elastic_resume.py).
    MidasBatchSampler(64, 4, seed=1).load_state_dict({**state, "num_replicas": 2})
    with pytest.raises(ValueError, match=r"state\['num_shards'\]"):  # Accelerate's processes must match
        MidasBatchSampler(64, 4, seed=1).load_state_dict({**state, "num_shards": 2})
    with pytest.raises(ValueError, match="format"):
        sampler.load_state_dict({"yielded": 3})
    other = MidasBatchSampler(64, 4, seed=1)
    other.load_state_dict(state)
    assert list(other) == list(itertools.islice(iter(MidasBatchSampler(64, 4, seed=1)), 1, None))


# -- feedback lag -------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("update_at", [2, 15])
def test_feedback_lag_is_the_rest_of_the_epoch(num_workers, update_at):
    """A stats update made after batch t of an epoch of L batches shapes the plan from the
    next epoch's first batch on: lag = L - t batches, whatever num_workers * prefetch_factor
    (here 4 > 1 = the lag of an update in the last batch)."""
    n, size = 64, 4
    length = n // size
    table = StatsTable(n, MODALITIES)
    table.update(torch.arange(n), confidence=torch.ones(n, 2))  # nothing to favour yet
    extra = {"prefetch_factor": 2, "persistent_workers": True} if num_workers else {}
    loader = midas_loader(
        TinyDataset(n),
        MODALITIES,
        batch_size=size,
        stats=table,
        policy="weak_modality",
        weak_modality="video",
        floor=0.05,
        num_workers=num_workers,
        **extra,
    )
    target = 17
    flags = []
    for epoch in range(2):
        set_epoch(loader, epoch)
        for t, batch in enumerate(loader):
            flags.append(batch.ids.tolist().count(target) >= 2)  # only a plan that saw the update repeats it
            if epoch == 0 and t == update_at:
                table.update(torch.tensor([target]), confidence=torch.tensor([[1.0, 0.0]]))
    first = flags.index(True)
    assert not any(flags[:length]) and first == length
    assert first - update_at == length - update_at
    assert loader.batch_sampler.current_plan.snapshot_updates == 2


def test_a_trainer_can_recreate_the_sampler_with_its_distributed_sampler():
    # Lightning re-creates a custom batch sampler from its saved arguments plus sampler=.
    from torch.utils.data import DistributedSampler

    table = StatsTable(10, MODALITIES)
    original = MidasBatchSampler(10, 3, seed=4, stats=table)
    args, kwargs = getattr(original, "__pl_saved_args"), dict(getattr(original, "__pl_saved_kwargs"))
    assert "sampler" in getattr(original, "__pl_saved_default_kwargs")
    shares = []
    for rank in range(2):
        kwargs["sampler"] = DistributedSampler(range(10), num_replicas=2, rank=rank)
        again = type(original)(*args, **kwargs)
        assert again.epoch_tensor is original.epoch_tensor and again.stats is table
        assert (again.num_replicas, again.rank) == (2, rank)
        shares.append([i for batch in again for i in batch])
    assert sorted(shares[0] + shares[1]) == list(range(10)) and len(shares[0]) == len(shares[1])
    # A sampler already split by rank is accepted when it agrees, refused when it does not.
    split = MidasBatchSampler(10, 3, num_replicas=2, rank=1, sampler=DistributedSampler(range(10), 2, 1))
    assert (split.num_replicas, split.rank) == (2, 1)
    with pytest.raises(ValueError, match="rank 0 of 2"):
        MidasBatchSampler(10, 3, num_replicas=2, rank=1, sampler=DistributedSampler(range(10), 2, 0))
    with pytest.raises(TypeError, match="num_replicas and rank"):
        MidasBatchSampler(10, 3, sampler=object())


def test_accelerate_reads_the_batch_size_of_the_sharded_layout():
    # BatchSamplerShard reads batch_size once, when it is made. 240 samples in batches of 16
    # are 15 equal batches globally but 8 per rank (7 of 16 and 1 of 8) for two ranks: the
    # wrapper must see None (sizes vary), or it pads the short pair with repeated samples.
    shard_module = pytest.importorskip("accelerate.data_loader")
    shares = []
    for rank in range(2):
        shard = shard_module.BatchSamplerShard(MidasBatchSampler(240, 16, seed=1), num_processes=2, process_index=rank)
        assert shard.batch_size is None
        batches = list(shard)
        assert len(batches) == len(shard) == 8
        shares.append([i for batch in batches for i in batch])
    assert sorted(shares[0] + shares[1]) == list(range(240))
