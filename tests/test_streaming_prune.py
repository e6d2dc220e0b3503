"""``policy="prune"`` on the streaming stage: a fixed count left out of every window's
low-score half, so that every rank's batch count is known in advance. Trained as users
train: webdataset shards of uneven sizes, two persistent DataLoader workers, the stage's
window shuffle, a loop that never calls ``set_epoch``, the table updated as it goes; and on
two real gloo ranks."""

from __future__ import annotations

import datetime
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from many_processes import free_port, leave_rank, tear_down_after_error

from midas_data import StatsTable
from midas_data.feedback.prune import PrunePolicy
from midas_data.streaming import MidasBatches, ShardIndex, worker_shards
from midas_data.streaming.pruning import kept_samples, prune_window, window_drops

wds = pytest.importorskip("webdataset")

MODALITIES = ("a", "b")
SIZES = (23, 9, 17, 15, 12, 6)  # two ranks: 52 and 30 samples; workers 35 + 17 and 15 + 15
TOTAL = sum(SIZES)
WINDOW, BATCH = 8, 8
# Six epochs: epoch 0 is full (nothing seen yet), 1-3 pruned, 4-5 the full-data tail.
POLICY = PrunePolicy(ratio=0.5, tail=1 / 3, num_epochs=6)


def write_shards(root) -> ShardIndex:
    import numpy as np

    urls, slot = [], 0
    for number, size in enumerate(SIZES):
        urls.append(str(root / f"uneven-{number:06d}.tar"))
        with wds.TarWriter(urls[-1]) as sink:
            for i in range(slot, slot + size):
                sink.write(
                    {
                        "__key__": f"clip{i}",
                        "a.npy": np.full(3, i, np.float32),
                        "b.npy": np.full(2, -i, np.float32),
                        "label.cls": i % 3,
                    }
                )
        slot += size
    ShardIndex.scan(urls).save(root / "index.json")
    return ShardIndex.load(root)


def make_loader(index, stage, workers=2):
    source = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=stage.split_by_node, empty_check=False)
    return wds.WebLoader(source.compose(stage), batch_size=None, num_workers=workers, persistent_workers=True)


def scores_of(epoch: int) -> torch.Tensor:
    """The "loss" a training epoch writes for every sample: distinct values, a new order
    every epoch."""
    return torch.randperm(TOTAL, generator=torch.Generator().manual_seed(100 + epoch)).float() + 1.0


def worker_streams(index, rank, world_size, workers):
    """The ids each worker of ``rank`` receives, in stream order."""
    streams = []
    for w in range(workers):
        ids = []
        for s in worker_shards(len(index.shards), rank, world_size, w, workers):
            entry = index.shards[s]
            ids += range(entry.first_slot, entry.first_slot + entry.count)
        streams.append(ids)
    return streams


# -- the window rule ----------------------------------------------------------------------
def test_window_drops_a_fixed_count_from_the_low_half_and_weighs_the_rest():
    scores = torch.tensor([5.0, float("nan"), 1.0, 7.0, 2.0, float("nan"), 3.0, 0.5, 9.0, 4.0])
    low = {7, 2, 4, 6, 9}  # the 5 lowest seen scores; NaN ranks above every seen one
    for seed in range(20):
        positions, weights = prune_window(scores, 0.5, torch.Generator().manual_seed(seed))
        kept = set(positions.tolist())
        assert len(kept) == positions.numel() == 10 - window_drops(10, 0.5) == 7
        assert set(range(10)) - kept <= low  # only the low half loses samples
        for p, w in zip(positions.tolist(), weights.tolist()):
            assert w == (5 / 2 if p in low else 1.0)  # m / (m - d) = 5 / (5 - 3)
    # NaN fills the low half only when fewer than half of the window are seen.
    # (its low half: the 2 seen, then the first unseen by window position).
    unseen = torch.tensor([float("nan")] * 6 + [1.0, 2.0])
    for seed in range(20):
        positions, _ = prune_window(unseen, 0.5, torch.Generator().manual_seed(seed))
        assert positions.numel() == 6 and set(range(8)) - set(positions.tolist()) <= {0, 1, 6, 7}
    # d(S) = min(round(ratio * floor(S / 2)), floor(S / 2) - 1): the low half keeps a sample.
    assert [window_drops(s, 0.5) for s in range(9)] == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    assert [window_drops(s, 0.9) for s in (2, 8, 20)] == [0, 3, 9]
    # What a worker keeps never decreases with what it receives (a skip never adds samples).
    for ratio in (0.3, 0.5, 0.9):
        kept = [kept_samples(n, 8, ratio) for n in range(200)]
        assert all(b - a in (0, 1) for a, b in zip(kept, kept[1:]))
    assert kept_samples(35, 8, 0.5) == 35 - 4 * 2 - 0 and kept_samples(15, 8, 0.5) == 15 - 2 - 2


def test_weighted_window_loss_is_unbiased_over_many_draws():
    size, ratio, draws = 64, 0.5, 4000
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(size, generator=g, dtype=torch.float64)
    scores[::9] = float("nan")
    losses = torch.empty(size, dtype=torch.float64).exponential_(1.0, generator=g) * 3
    totals = torch.empty(draws, dtype=torch.float64)
    for seed in range(draws):
        positions, weights = prune_window(scores, ratio, torch.Generator().manual_seed(seed))
        totals[seed] = (weights.double() * losses[positions]).sum()
    # The estimate's exact spread: the kept k = m - d of the low half's m losses are a
    # uniform draw without replacement, weighted c = m / k.
    m, d = size // 2, window_drops(size, ratio)
    k, c = m - d, m / (m - d)
    low = torch.sort(torch.nan_to_num(scores, nan=math.inf), stable=True).indices[:m]
    variance = c**2 * k * losses[low].var(unbiased=False) * (m - k) / (m - 1)
    tolerance = 5 * math.sqrt(float(variance) / draws)
    full = float(losses.sum())
    assert float(totals.std()) > 0.2 * math.sqrt(float(variance))  # the draws do vary
    assert abs(float(totals.mean()) - full) < tolerance, (float(totals.mean()), full, tolerance)


# -- as users train -----------------------------------------------------------------------
def train(index, tables, epochs, *, workers=2):
    """Two ranks as two stages in this process, each with its own table kept equal (as
    ``sync_stats`` keeps them): per epoch and rank, the batches and the batch count
    planned before the pass. Every epoch ends by writing ``scores_of(epoch)``."""
    stages = [
        MidasBatches(
            MODALITIES,
            batch_size=BATCH,
            index=index,
            window=WINDOW,
            stats=tables[r],
            policy=POLICY,
            rank=r,
            world_size=2,
            seed=3,
        )
        for r in range(2)
    ]
    loaders = [make_loader(index, stage, workers) for stage in stages]
    runs = []
    for epoch in range(epochs):  # never calls set_epoch
        planned = [stage.batches_per_epoch(workers, epoch) for stage in stages]
        batches = [list(loader) for loader in loaders]
        runs.append((planned, batches, [stage.prunes(epoch) for stage in stages]))
        for table in tables:
            table.update(torch.arange(TOTAL), loss=scores_of(epoch))
    del loaders
    return stages, runs


def test_pruned_epochs_drop_exactly_the_planned_count_on_every_rank(tmp_path):
    index = write_shards(tmp_path)
    tables = [StatsTable(TOTAL, MODALITIES, dtype=torch.float32) for _ in range(2)]
    stages, runs = train(index, tables, 6)
    full = stages[0].batches_per_epoch(2)
    for epoch, (planned, batches, pruning) in enumerate(runs):
        assert pruning == [POLICY.prunes(epoch) and epoch > 0] * 2  # first epoch and tail full
        assert [len(b) for b in batches] == planned and planned[0] == planned[1]  # equal batches per rank
        assert all(b.epoch == epoch for bs in batches for b in bs)
        assert (planned[0] < full) == pruning[0]
        for rank in range(2):
            ids = [i for b in batches[rank] for i in b.ids.tolist()]
            weights = [w for b in batches[rank] for w in b.extras["importance_weights"].tolist()]
            assert len(ids) == len(set(ids))  # every sample at most once
            assert all(2 <= len(b) <= BATCH for b in batches[rank])
            streams = worker_streams(index, rank, 2, 2)
            if not pruning[rank]:
                assert sorted(ids) == sorted(i for s in streams for i in s) and set(weights) == {1.0}
                continue
            scores = scores_of(epoch - 1)  # what the table held during the pass
            kept = set(ids)
            weight_of = dict(zip(ids, weights))
            dropped = set()
            assert len(ids) == sum(kept_samples(len(s), WINDOW, POLICY.ratio) for s in streams)
            for stream in streams:
                for start in range(0, len(stream), WINDOW):
                    window = stream[start : start + WINDOW]
                    half = len(window) // 2
                    low = set(torch.tensor(window)[scores[window].argsort()[:half]].tolist())
                    gone = set(window) - kept
                    assert len(gone) == window_drops(len(window), POLICY.ratio) and gone <= low
                    dropped |= gone
                    for i in set(window) & kept:
                        expected = half / (half - len(gone)) if i in low and gone else 1.0
                        assert weight_of[i] == pytest.approx(expected)
            assert kept | dropped == {i for s in streams for i in s} and not kept & dropped


def test_a_pruned_epoch_replays_from_the_same_table_and_seed(tmp_path):
    index = write_shards(tmp_path)
    tables = [StatsTable(TOTAL, MODALITIES, dtype=torch.float32) for _ in range(2)]
    _, runs = train(index, tables, 3)
    # Resume at the start of epoch 2: the table as it was then, a fresh stage, set_epoch.
    restored = StatsTable(TOTAL, MODALITIES, dtype=torch.float32)
    restored.update(torch.arange(TOTAL), loss=scores_of(0))
    restored.update(torch.arange(TOTAL), loss=scores_of(1))
    stage = MidasBatches(
        MODALITIES,
        batch_size=BATCH,
        index=index,
        window=WINDOW,
        stats=restored,
        policy=POLICY,
        rank=1,
        world_size=2,
        seed=3,
    )
    stage.set_epoch(2)
    replay = list(make_loader(index, stage))
    first = runs[2][1][1]
    assert runs[2][2] == [True, True]
    assert [(b.ids.tolist(), b.extras["importance_weights"].tolist(), b.plan.tolist()) for b in replay] == [
        (b.ids.tolist(), b.extras["importance_weights"].tolist(), b.plan.tolist()) for b in first
    ]


def test_a_skipped_sample_shifts_the_windows_but_keeps_the_batch_count(tmp_path):
    import io
    import tarfile
    import warnings

    index = write_shards(tmp_path)
    url = index.urls[2]  # slots 32-48: worker 1 of rank 0 of 2, alone
    with tarfile.open(url) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for name, data in members:
            data = data[:20] if name == "clip40.a.npy" else data  # a member cut short: does not decode
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = StatsTable(TOTAL, MODALITIES, dtype=torch.float32)
    table.update(torch.arange(TOTAL), loss=scores_of(0))
    stage = MidasBatches(
        MODALITIES,
        batch_size=BATCH,
        index=index,
        window=WINDOW,
        stats=table,
        policy=PrunePolicy(ratio=0.5, tail=0),
        rank=0,
        world_size=2,
        handler=wds.warn_and_continue,
    )
    planned = stage.batches_per_epoch(2, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(make_loader(index, stage))
    ids = [i for b in batches for i in b.ids.tolist()]
    assert len(batches) == planned and 40 not in ids and stage.skip_counts()["skipped"] == 1
    # Worker 1 accepts 16 of its 17 samples: two windows of 8 (planned: 8, 8 and 1).
    assert len(ids) == kept_samples(35, WINDOW, 0.5) + kept_samples(16, WINDOW, 0.5)
    assert kept_samples(16, WINDOW, 0.5) == kept_samples(17, WINDOW, 0.5) - 1


def test_hugging_face_shuffled_uneven_shards_keep_equal_batches_when_pruned():
    # datasets deals the shards after shuffling their order: a worker knows only how many
    # it reads, so its kept samples lie between bounds, and the plan holds for any order.
    datasets = pytest.importorskip("datasets")
    from datasets.distributed import split_dataset_by_node
    from torch.utils.data import DataLoader

    from midas_data.streaming import MidasIterable

    rows, shards = 150, 8
    data = datasets.Dataset.from_dict(
        {"a": [[float(i)] * 3 for i in range(rows)], "b": [[0.0] * 2] * rows, "label": [i % 3 for i in range(rows)]}
    )
    data = data.add_column("id", list(range(rows))).with_format("torch")
    tables = [StatsTable(rows, MODALITIES, dtype=torch.float32) for _ in range(2)]
    stages, loaders = [], []
    for rank in range(2):
        stream = data.to_iterable_dataset(num_shards=shards).shuffle(seed=0, buffer_size=1000)
        stages.append(
            MidasBatches(
                MODALITIES,
                batch_size=BATCH,
                id_field="id",
                index=ShardIndex.for_hf(rows, shards),
                window=WINDOW,
                stats=tables[rank],
                policy=POLICY,
                rank=rank,
                world_size=2,
            )
        )
        dataset = MidasIterable(split_dataset_by_node(stream, rank=rank, world_size=2), stages[rank])
        loaders.append(DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True))
    full = stages[0].batches_per_epoch(2)
    for epoch in range(3):  # never calls set_epoch
        planned = [stage.batches_per_epoch(2, epoch) for stage in stages]
        batches = [list(loader) for loader in loaders]
        ids = [i for each in batches for b in each for i in b.ids.tolist()]
        assert [len(b) for b in batches] == planned and planned[0] == planned[1]
        assert len(ids) == len(set(ids))
        assert (len(ids) < rows) == (epoch > 0) and (planned[0] < full) == (epoch > 0)
        losses = torch.randperm(rows, generator=torch.Generator().manual_seed(epoch)) + 1.0
        for table in tables:
            table.update(torch.arange(rows), loss=losses)
    del loaders


def test_prune_options_and_errors(tmp_path):
    index = write_shards(tmp_path)
    table = StatsTable(TOTAL, MODALITIES)
    with pytest.raises(ValueError, match="policy='prune' reads per-sample statistics: pass stats="):
        MidasBatches(MODALITIES, batch_size=8, index=index, policy=POLICY)
    with pytest.raises(ValueError, match="needs the number of epochs"):
        MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy="prune")
    with pytest.raises(ValueError, match=r"prune ratio: expected a share in \[0, 1\)"):
        MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy=PrunePolicy(ratio=1.0, tail=0))
    with pytest.raises(ValueError, match="num_epochs: only for policy='prune'"):
        MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy="hard", num_epochs=5)
    with pytest.raises(ValueError, match="disagrees with PrunePolicy"):
        MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy=POLICY, num_epochs=7)
    with pytest.raises(ValueError, match=r"policy: expected one of \(.*'prune'\) or a PrunePolicy, got 'pruned'"):
        MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy="pruned")
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy="prune", num_epochs=8)
    assert stage.prune == PrunePolicy(num_epochs=8) and stage.policy == "prune"
    assert not stage.prunes(0)  # nothing seen yet
    table.update(torch.arange(TOTAL), loss=scores_of(0))
    assert stage.prunes(0) and not stage.prunes(7)  # the last eighth of 8 epochs is full
    assert stage.batches_per_epoch(2, 0) < stage.batches_per_epoch(2) == stage.batches_per_epoch(2, 7)


# -- two real ranks -----------------------------------------------------------------------
def _rank_main(rank: int, port: int, root: str, results: str) -> None:
    from pathlib import Path

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    try:
        index = ShardIndex.load(Path(root))
        table = StatsTable(TOTAL, MODALITIES, dtype=torch.float32)
        stage = MidasBatches(
            MODALITIES,
            batch_size=BATCH,
            index=index,
            window=WINDOW,
            stats=table,
            policy=PrunePolicy(ratio=0.5, tail=0.25, num_epochs=4),
        )
        source = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=stage.split_by_node)
        loader = wds.WebLoader(
            source.compose(stage),
            batch_size=None,
            num_workers=2,
            persistent_workers=True,
            multiprocessing_context="fork",
        )
        out = []
        for epoch in range(4):  # never calls set_epoch
            planned = stage.batches_per_epoch(2, epoch)
            ids, count = [], 0
            for batch in loader:
                count += 1
                ids += batch.ids.tolist()
                # A DDP step: a collective, then both ranks write every rank's samples.
                every = [None, None]
                dist.all_gather_object(every, batch.ids.tolist())
                step_ids = torch.tensor(every[0] + every[1])
                table.update(step_ids, loss=(step_ids * 7919 % 97).float() + 1)
            out.append((planned, count, ids))
        torch.save(out, f"{results}/rank{rank}.pt")
        del loader
        leave_rank()
    finally:
        tear_down_after_error()


def test_two_gloo_ranks_yield_equal_batches_in_pruned_epochs(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    index = write_shards(shards)
    mp.spawn(_rank_main, args=(free_port(), str(shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    full = MidasBatches(MODALITIES, batch_size=BATCH, index=index, window=WINDOW, rank=0, world_size=2)
    for epoch, ((p0, n0, ids0), (p1, n1, ids1)) in enumerate(zip(r0, r1)):
        assert n0 == n1 == p0 == p1  # the same number of batches on both ranks, as planned
        assert len(set(ids0 + ids1)) == len(ids0 + ids1)  # at most once
        pruned = epoch in (1, 2)  # epoch 0: nothing seen yet; epoch 3: the tail
        assert (n0 < full.batches_per_epoch(2)) == pruned
        kept = sum(
            kept_samples(len(s), WINDOW, 0.5) if pruned else len(s)
            for rank in range(2)
            for s in worker_streams(index, rank, 2, 2)
        )
        assert len(ids0 + ids1) == kept
