"""Streaming: the webdataset stage, the Hugging Face wrapper, the shard writer and index,
equal work per rank, prioritised windows, bad input and epoch-boundary resume."""

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import pytest
import torch

from midas_data import MidasCollate, MidasDataError, MidasDataWarning, StatsTable
from midas_data.streaming import (
    MidasBatches,
    MidasIterable,
    ShardIndex,
    batch_counts,
    draw_window,
    split_sizes,
    worker_shards,
    write_shards,
)

wds = pytest.importorskip("webdataset")

MODALITIES = ("a", "b")


class Toy:
    """``n`` samples; sample ``i`` holds ``i`` in both modalities, label ``i % 3``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"a": torch.full((3,), float(i)), "b": torch.full((2,), -float(i)), "label": i % 3}


def shards(tmp_path, n=50, shard_size=13):
    return write_shards(Toy(n), tmp_path, MODALITIES, shard_size=shard_size, progress=False)


def pipeline(index, stage, **options):
    options.setdefault("shardshuffle", False)
    options.setdefault("nodesplitter", wds.split_by_node)
    return wds.WebDataset(index.urls, empty_check=False, **options).compose(stage)


def run(dataset, workers=2):
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers)
    return list(loader)


# -- writer and index ---------------------------------------------------------------------
def test_writer_stores_one_npy_member_per_modality_and_an_index(tmp_path):
    index = shards(tmp_path)
    assert index.counts == [13, 13, 13, 11] and index.num_samples == 50
    with tarfile.open(index.urls[1]) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000013.a.npy", "000000013.b.npy", "000000013.label.cls"]
        array = np.load(io.BytesIO(tar.extractfile(names[0]).read()), allow_pickle=False)
    assert array.tolist() == [13.0] * 3
    again = ShardIndex.load(tmp_path)
    assert again.counts == index.counts and again.slot("000000020", index.urls[1]) == 20
    with pytest.raises(MidasDataError, match="000000040.*slot number in \\[13, 26\\)"):
        again.slot("000000040", index.urls[1])
    scanned = ShardIndex.scan(index.urls)
    assert scanned.counts == index.counts and scanned.slot("000000049", index.urls[3]) == 49


def test_shards_command_writes_the_demo(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "midas_data", "shards", "--split", "val", "--out", str(tmp_path), "--shard-size", "50"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    index = ShardIndex.load(tmp_path)
    assert summary["num_samples"] == index.num_samples > 100 and summary["num_shards"] == len(index.shards)
    assert "shards" in out.stderr  # the progress bar
    batches = run(pipeline(index, MidasBatches(("image", "audio"), batch_size=32, index=index)))
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(index.num_samples))
    assert batches[0].inputs["image"].shape[1:] == (1, 8, 8)


# -- the stage ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["feature", "input"])
def test_streamed_batches_have_the_map_style_form(tmp_path, mode):
    index = shards(tmp_path)
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, mode=mode, seed=3)
    stage.set_epoch(2)
    batches = list(pipeline(index, stage))  # in this process
    reference = MidasCollate(MODALITIES, mode=mode, seed=3, epoch=torch.tensor(2))
    data = Toy(50)
    for batch in batches:
        expected = reference([(i, data[i]) for i in batch.ids.tolist()])
        assert torch.equal(batch.plan, expected.plan) and torch.equal(batch.labels, expected.labels)
        assert torch.equal(batch.inputs["a"], expected.inputs["a"])
        assert batch.inputs["a"][:, 0].long().tolist() == batch.ids.tolist()
        if mode == "input":
            assert torch.equal(batch.misaligned_inputs["b"], expected.misaligned_inputs["b"])
        assert torch.equal(batch.extras["importance_weights"], torch.ones(len(batch)))
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(50))


def test_two_workers_see_every_sample_once_in_the_planned_number_of_batches(tmp_path):
    index = shards(tmp_path)
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, window=16)
    source = wds.WebDataset(index.urls, shardshuffle=4, nodesplitter=wds.split_by_node, empty_check=False)
    batches = run(source.shuffle(20).compose(stage))  # shard shuffle and a sample shuffle buffer upstream
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(50))
    assert len(batches) == stage.batches_per_epoch(2) == 7
    assert max(len(b) for b in batches) <= 8 and min(len(b) for b in batches) >= 2


def test_epochs_change_order_and_plans_and_replay_exactly(tmp_path):
    index = shards(tmp_path)

    def epoch(e):
        stage = MidasBatches(MODALITIES, batch_size=8, index=index, seed=1)
        stage.set_epoch(e)
        return [(b.ids.tolist(), b.plan.tolist()) for b in run(pipeline(index, stage))]

    first = epoch(1)
    assert epoch(1) == first  # a restart at an epoch boundary replays the epoch
    assert epoch(2) != first


def test_resampled_with_epoch_gives_fixed_batches(tmp_path):
    index = shards(tmp_path)
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, resampled=True)
    dataset = wds.WebDataset(index.urls, resampled=True, shardshuffle=False, nodesplitter=wds.split_by_node)
    loader = wds.WebLoader(dataset.compose(stage), batch_size=None, num_workers=2).with_epoch(5)
    batches = list(loader)
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)


# -- equal work ---------------------------------------------------------------------------
def test_batch_counts_are_equal_per_rank_and_batches_stay_within_size():
    counts = [40, 23, 17, 29, 30]
    k = batch_counts(counts, world_size=2, num_workers=2, batch_size=8)
    assert len({sum(row) for row in k}) == 1
    for r, row in enumerate(k):
        for w, batches in enumerate(row):
            n = sum(counts[s] for s in worker_shards(len(counts), r, 2, w, 2))
            sizes = split_sizes(n, batches)
            assert sum(sizes) == n and all(2 <= s <= 8 for s in sizes)


def test_a_rank_without_shards_is_a_clear_error():
    with pytest.raises(ValueError, match="rank 1 of 2: has no samples"):
        batch_counts([40], world_size=2, num_workers=1, batch_size=8)
    with pytest.raises(ValueError, match="rank 1 of 2.*cannot fill"):
        batch_counts([100, 3], world_size=2, num_workers=1, batch_size=8)


# -- prioritised windows ------------------------------------------------------------------
def test_window_draws_keep_the_window_size_and_weights_unbias_the_loss():
    snapshot = torch.rand(64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    snapshot[::4] = 1.0
    snapshot[1::4] = -1.0
    snapshot[7::8] = float("nan")
    totals = torch.zeros(64, dtype=torch.float64)
    for seed in range(1000):
        positions, weights = draw_window(snapshot, "hard", 0.2, torch.Generator().manual_seed(seed), 64)
        assert positions.numel() == 64
        totals.index_add_(0, positions, weights.double())
    # E[sum of weights of sample i] = 1 for every sample: the weighted loss is unbiased.
    assert torch.allclose(totals / 1000, torch.ones(64, dtype=torch.float64), atol=0.05)
    counts = torch.bincount(positions, minlength=64)
    assert counts[0::4].float().mean() > counts[1::4].float().mean()  # hard samples come more often


def test_hard_policy_reads_the_shared_table_in_running_workers(tmp_path):
    index = shards(tmp_path, n=48, shard_size=12)
    table = StatsTable(48, MODALITIES, dtype=torch.float32)
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy="hard", window=12)
    loader = wds.WebLoader(pipeline(index, stage), batch_size=None, num_workers=2, persistent_workers=True)
    first = list(loader)  # nothing known yet: uniform draws
    assert all(torch.equal(b.extras["importance_weights"], torch.ones(len(b))) for b in first)
    assert all(int(b.extras["stats_updates"]) == 0 for b in first)
    # Updated in this process after the workers started: they see it through shared memory.
    # Hard samples in runs (not alternating, which systematic resampling would treat as
    # one periodic block): the first half of every 12-sample shard.
    hard = torch.arange(48) % 12 < 6
    table.update(torch.arange(48), similarity=torch.where(hard, 1.0, -1.0), misaligned_loss=torch.ones(48), step=0)
    stage.set_epoch(1)
    batches = list(loader)
    ids = torch.cat([b.ids for b in batches])
    weights = torch.cat([b.extras["importance_weights"] for b in batches])
    assert ids.numel() == 48 and len(batches) == len(first) == stage.batches_per_epoch(2)
    drawn_hard = hard[ids]
    assert int(drawn_hard.sum()) >= 4 * 7  # each 12-sample window draws its 6 hard samples 7 or 8 times
    assert torch.all(weights[drawn_hard] < 1) and torch.all(weights[~drawn_hard] > 1)
    assert all(int(b.extras["stats_updates"]) == 1 for b in batches)


# -- bad input ----------------------------------------------------------------------------
def rewrite(url, change):
    """Rewrite a shard through ``change(name, data) -> (name, data) | None``."""
    with tarfile.open(url) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for name, data in members:
            changed = change(name, data)
            if changed is None:
                continue
            info = tarfile.TarInfo(changed[0])
            info.size = len(changed[1])
            tar.addfile(info, io.BytesIO(changed[1]))


def test_a_corrupt_member_names_shard_and_key_or_is_skipped_and_counted(tmp_path):
    index = shards(tmp_path)
    rewrite(index.urls[2], lambda n, d: (n, d[:20]) if n == "000000030.a.npy" else (n, d))
    stage = MidasBatches(MODALITIES, batch_size=8, index=index)
    with pytest.raises(MidasDataError, match="shard-000002.tar.*'000000030'.*a.npy.*npy"):
        run(pipeline(index, stage), workers=0)
    lenient = MidasBatches(MODALITIES, batch_size=8, index=index, handler=wds.warn_and_continue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = run(pipeline(index, lenient))
    assert sorted(i for b in batches for i in b.ids.tolist()) == [i for i in range(50) if i != 30]
    assert len(batches) == lenient.batches_per_epoch(2)  # equal work kept
    assert lenient.skip_counts() == {"skipped": 1, "missing": 0, "source_errors": 0, "damaged_shards": 0}


def test_a_missing_modality_is_named(tmp_path):
    index = shards(tmp_path)
    rewrite(index.urls[0], lambda n, d: None if n == "000000004.b.npy" else (n, d))
    with pytest.raises(MidasDataError, match="'000000004': has no member field 'b'"):
        run(pipeline(index, MidasBatches(MODALITIES, batch_size=8, index=index)), workers=0)


def test_an_unopenable_shard_fails_or_is_counted(tmp_path):
    index = shards(tmp_path)
    os.remove(index.urls[1])
    with pytest.raises(MidasDataError, match="shard-000001.tar.: cannot be read .the file does not exist"):
        run(pipeline(index, MidasBatches(MODALITIES, batch_size=8, index=index)), workers=0)
    # Skipped upstream by webdataset alone: the stage sees the shortfall, looks and says why.
    quiet = pipeline(index, MidasBatches(MODALITIES, batch_size=8, index=index), handler=wds.ignore_and_continue)
    with pytest.raises(
        MidasDataError, match="shard-000001.tar'.*cannot be read .the file does not exist.*none of its 13"
    ):
        run(quiet, workers=0)
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, handler=wds.warn_and_continue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = run(pipeline(index, stage, handler=stage.source_handler))
    assert len(batches) == stage.batches_per_epoch(2)
    counts = stage.skip_counts()
    assert counts["missing"] == 13 and counts["source_errors"] >= 1 and counts["damaged_shards"] == 1


def test_a_truncated_shard_names_the_shard(tmp_path):
    index = shards(tmp_path)
    with open(index.urls[3], "r+b") as f:
        f.truncate(2000)
    with pytest.raises(
        MidasDataError, match="shard-000003.tar.: the tar file is damaged .truncated: the file ends inside"
    ):
        run(pipeline(index, MidasBatches(MODALITIES, batch_size=8, index=index)), workers=0)
    # Here webdataset raises (a member's data is cut): with both handlers the epoch goes on.
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, handler=wds.warn_and_continue)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = run(pipeline(index, stage, handler=stage.source_handler), workers=0)
    reports = [str(w.message) for w in caught if issubclass(w.category, MidasDataWarning)]
    assert len(reports) == 1 and "1 damaged shards" in reports[0] and "the tar file is damaged" in reports[0]
    assert len(batches) == stage.batches_per_epoch(1)
    assert sum(len(b) for b in batches) == 39  # shard 3 lost its 11 samples (1 came incomplete: skipped)
    assert stage.skip_counts() == {"skipped": 1, "missing": 10, "source_errors": 1, "damaged_shards": 1}


def test_duplicate_keys_are_errors(tmp_path):
    index = shards(tmp_path, n=20, shard_size=10)
    # The second shard repeats a key of the first one.
    rewrite(index.urls[1], lambda n, d: (n.replace("000000015", "000000005"), d))
    with pytest.raises(MidasDataError, match="'000000005'.*shard-000000.tar.*shard-000001.tar"):
        ShardIndex.scan(index.urls)
    # A stream that brings one id twice (ids from a field) fails naming the key.
    samples = [
        {"__key__": f"k{i}", "a": torch.zeros(1), "b": torch.zeros(1), "label": i % 2, "id": i % 3} for i in range(4)
    ]
    stage = MidasBatches(MODALITIES, batch_size=2, id_field="id")
    with pytest.raises(MidasDataError, match="key 'k3'.*sample id 0 came twice"):
        list(stage(iter(samples)))


def test_pickles_are_refused_unless_opted_in(tmp_path):
    index = shards(tmp_path, n=20, shard_size=10)

    def to_pickle(name, data):
        if name.endswith(".a.npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            return name.replace(".npy", ".pyd"), pickle.dumps(torch.from_numpy(array))
        return name, data

    for url in index.urls:
        rewrite(url, to_pickle)
    with pytest.raises(MidasDataError, match="a.pyd.*pickle.*refused"):
        run(pipeline(index, MidasBatches(MODALITIES, batch_size=4, index=index)), workers=0)
    batches = run(pipeline(index, MidasBatches(MODALITIES, batch_size=4, index=index, allow_pickle=True)), workers=0)
    assert sum(len(b) for b in batches) == 20


# -- Hugging Face IterableDataset ---------------------------------------------------------
def hf_dataset(n):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {
            "a": [[float(i)] * 3 for i in range(n)],
            "b": [[-float(i)] * 2 for i in range(n)],
            "label": [i % 3 for i in range(n)],
        }
    )
    return data.add_column("id", list(range(n))).with_format("torch")


def test_hf_iterable_dataset_with_workers_and_set_epoch():
    from torch.utils.data import DataLoader

    source = hf_dataset(30).to_iterable_dataset(num_shards=4).shuffle(seed=0, buffer_size=8)
    stage = MidasBatches(MODALITIES, batch_size=4, id_field="id", index=ShardIndex.for_hf(30, 4))
    dataset = MidasIterable(source, stage)
    orders = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        batches = list(DataLoader(dataset, batch_size=None, num_workers=2))
        ids = [i for b in batches for i in b.ids.tolist()]
        assert sorted(ids) == list(range(30)) and len(batches) == stage.batches_per_epoch(2)
        assert all(torch.equal(b.inputs["a"][:, 0].long(), b.ids) for b in batches)
        orders.append(ids)
    assert orders[0] != orders[1]


def test_hf_needs_an_id_field():
    source = hf_dataset(8).to_iterable_dataset()
    with pytest.raises(ValueError, match="id_field"):
        MidasIterable(source, MidasBatches(MODALITIES, batch_size=4, index=ShardIndex.for_hf(8, 1)))


# -- resume at an epoch boundary ----------------------------------------------------------
def test_hf_epoch_replays_exactly_after_a_restart():
    from torch.utils.data import DataLoader

    def epoch(e):
        source = hf_dataset(30).to_iterable_dataset(num_shards=4).shuffle(seed=0, buffer_size=8)
        stage = MidasBatches(MODALITIES, batch_size=4, id_field="id", index=ShardIndex.for_hf(30, 4), seed=5)
        dataset = MidasIterable(source, stage)
        dataset.set_epoch(e)
        return [(b.ids.tolist(), b.plan.tolist()) for b in DataLoader(dataset, batch_size=None, num_workers=2)]

    assert epoch(3) == epoch(3) != epoch(4)


def test_prioritised_epoch_replays_from_a_restored_table(tmp_path):
    index = shards(tmp_path, n=48, shard_size=12)

    def train_epoch(table, e):
        stage = MidasBatches(MODALITIES, batch_size=8, index=index, stats=table, policy="hard", window=16, seed=2)
        stage.set_epoch(e)
        seen = []
        for batch in pipeline(index, stage):  # in this process: reads and updates interleave exactly
            seen.append((batch.ids.tolist(), batch.extras["importance_weights"].tolist()))
            similarity = torch.cos(batch.ids.double() * (e + 1)).float()  # a deterministic "training step"
            table.update(batch.ids, similarity=similarity, misaligned_loss=similarity.abs())
        return seen

    table = StatsTable(48, MODALITIES, dtype=torch.float32)
    train_epoch(table, 0)
    checkpoint = table.state_dict()
    first = train_epoch(table, 1)
    restored = StatsTable(48, MODALITIES, dtype=torch.float32)
    restored.load_state_dict(checkpoint)
    assert train_epoch(restored, 1) == first
    assert any(w != 1.0 for _, weights in first for w in weights)  # the draws were prioritised


def test_hf_split_by_examples_breaks_the_counts_and_says_so():
    from datasets.distributed import split_dataset_by_node

    # 3 shards over 2 ranks: split_dataset_by_node keeps every 2nd example instead of shards.
    source = split_dataset_by_node(hf_dataset(30).to_iterable_dataset(num_shards=3), rank=0, world_size=2)
    stage = MidasBatches(MODALITIES, batch_size=4, id_field="id", index=ShardIndex.for_hf(30, 3), rank=0, world_size=2)
    with pytest.raises(MidasDataError, match="rank 0 of 2: the dataset has all 3 shards.*split it by examples"):
        list(MidasIterable(source, stage))


@pytest.mark.parametrize("n", [2, 9, 17, 18, 19])
def test_without_an_index_every_sample_lands_in_a_batch_of_two_or_more(n):
    samples = [{"a": torch.zeros(1), "b": torch.zeros(1), "label": i % 2, "id": i} for i in range(n)]
    batches = list(MidasBatches(MODALITIES, batch_size=8, id_field="id", window=4)(iter(samples)))
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(n))
    assert all(2 <= len(b) <= 8 for b in batches)
    with pytest.raises(MidasDataError, match="single sample"):
        list(MidasBatches(MODALITIES, batch_size=8, id_field="id")(iter(samples[:1])))


def test_first_batch_waits_for_a_window_only_when_one_is_drawn_from():
    consumed = []

    def source(n=100):
        for i in range(n):
            consumed.append(i)
            yield {"a": torch.zeros(1), "b": torch.zeros(1), "label": i % 2, "id": i}

    def read_before_first_batch(**options) -> int:
        consumed.clear()
        batches = MidasBatches(MODALITIES, batch_size=8, id_field="id", window=32, **options)(source())
        first = next(batches)
        assert len(first) == 8
        return len(consumed)

    assert read_before_first_batch() >= 32  # the shuffle window fills first
    assert read_before_first_batch(shuffle=False) <= 8 + 2 + 1  # in order: as soon as a batch is full
    in_order = list(MidasBatches(MODALITIES, batch_size=8, id_field="id", window=32, shuffle=False)(source()))
    assert [i for b in in_order for i in b.ids.tolist()] == list(range(100))  # stream order, each once


def test_spawned_persistent_worker_follows_set_epoch_and_reports_skips(tmp_path):
    index = shards(tmp_path, n=20, shard_size=10)
    rewrite(index.urls[0], lambda n, d: (n, d[:10]) if n == "000000003.a.npy" else (n, d))

    def make_stage():
        return MidasBatches(MODALITIES, batch_size=4, index=index, handler=wds.ignore_and_continue, seed=1)

    stage = make_stage()
    loader = wds.WebLoader(
        pipeline(index, stage), batch_size=None, num_workers=1, persistent_workers=True, multiprocessing_context="spawn"
    )
    epochs = []
    for epoch in (0, 1):
        stage.set_epoch(epoch)  # after the worker started: reaches it through shared memory
        epochs.append([(b.ids.tolist(), b.plan.tolist()) for b in loader])
        reference = make_stage()
        reference.set_epoch(epoch)
        with pytest.warns(MidasDataWarning, match=f"epoch {epoch}, rank 0, worker 0: 1 skipped"):
            expected = [(b.ids.tolist(), b.plan.tolist()) for b in pipeline(index, reference)]
        assert epochs[-1] == expected
    assert epochs[0] != epochs[1]
    assert stage.skip_counts()["skipped"] == 2  # one bad member per epoch, counted in the worker


def test_a_node_split_that_disagrees_with_the_stage_is_an_error(tmp_path):
    index = shards(tmp_path)
    # The stage is rank 1 of 2, but wds.split_by_node sees no process group: all shards come.
    stage = MidasBatches(MODALITIES, batch_size=8, index=index, rank=1, world_size=2)
    with pytest.raises(MidasDataError, match="shard-000000.tar.*should read shards.*stage.split_by_node"):
        run(pipeline(index, stage), workers=0)
    batches = run(pipeline(index, stage, nodesplitter=stage.split_by_node), workers=0)
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(13, 26)) + list(range(39, 50))
