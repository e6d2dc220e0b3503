"""StatsTable: layout, updates and their bad input, sharing with workers, checkpoints."""

import datetime
import gc
import io
import math
import os
import pickle
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from many_processes import free_port, leave_rank, tear_down_after_error
from torch.utils.data import DataLoader, Dataset

from midas_data import LateFusionClassifier, MidasObjective
from midas_data.debug import count_host_syncs
from midas_data.feedback.columns import as_id_tensor, pack_statistics
from midas_data.feedback.stats import StatsStorageWarning, StatsTable, bytes_per_sample
from midas_data.feedback.sync import all_gather_rows, sync_stats
from midas_data.feedback.validation import check_packed, check_step

MODALITIES = ("audio", "video")


def per_sample(rows: int, seed: int = 0, has=None):
    g = torch.Generator().manual_seed(seed)
    return {
        "confidence": torch.rand(rows, 2, generator=g),
        "similarity": torch.rand(rows, generator=g) * 2 - 1,
        "misaligned_loss": torch.rand(rows, generator=g) * 3,
        "has_misaligned": torch.ones(rows, dtype=torch.bool) if has is None else torch.tensor(has),
    }


def snapshot(table: StatsTable):
    return table.values.clone(), table.last_step.clone(), table.num_updates


def assert_unchanged(table: StatsTable, before) -> None:
    values, steps, updates = before
    assert torch.equal(table.values.isnan(), values.isnan())
    assert torch.equal(table.values.nan_to_num(), values.nan_to_num())
    assert torch.equal(table.last_step, steps) and table.num_updates == updates


# -- layout -------------------------------------------------------------------------------
def test_bytes_per_sample_formula():
    assert bytes_per_sample(2, torch.float16) == 14
    assert bytes_per_sample(2, torch.bfloat16) == 14
    assert bytes_per_sample(2, torch.float32) == 24 <= 32
    table = StatsTable(1000, MODALITIES)
    assert table.bytes_per_sample == 14
    assert 14 * 1000 <= table.nbytes <= 14 * 1000 + 32
    assert table.storage == "shm" and table.values.is_shared()


def test_fresh_table_is_unseen():
    table = StatsTable(5, MODALITIES)
    assert table.values.isnan().all() and (table.last_step == -1).all() and table.num_updates == 0
    assert table.confidence.shape == (2, 5) and table.similarity.shape == (5,)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_samples"):
        StatsTable(0, MODALITIES)
    with pytest.raises(ValueError, match="distinct"):
        StatsTable(3, ("a", "a"))
    with pytest.raises(ValueError, match="dtype"):
        StatsTable(3, MODALITIES, dtype=torch.int32)
    with pytest.raises(ValueError, match="storage"):
        StatsTable(3, MODALITIES, storage="gpu")


# -- updates --------------------------------------------------------------------------------
def test_update_from_the_objective_diagnostics():
    torch.manual_seed(0)
    encoders = {"audio": torch.nn.Linear(3, 4), "video": torch.nn.Linear(5, 4)}
    model = LateFusionClassifier(encoders, {"audio": 4, "video": 4}, num_classes=3)
    objective = MidasObjective(3, MODALITIES)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    from midas_data.functional import plan_partners

    plan = plan_partners(labels, 2, torch.Generator().manual_seed(1))
    output = model({"audio": torch.randn(6, 3), "video": torch.randn(6, 5)})
    _, info = objective(output, labels=labels, plan=plan, fuse=model.fuse)
    ids = torch.tensor([10, 11, 12, 13, 14, 15])
    table = StatsTable(20, MODALITIES)
    table.update(ids, info["per_sample"], step=7)
    got = table.read(ids)
    expected = info["per_sample"]
    assert torch.allclose(got["confidence"], expected["confidence"], atol=1e-3)
    assert torch.allclose(got["similarity"], expected["similarity"], atol=1e-3)
    assert torch.allclose(got["misaligned_loss"], expected["misaligned_loss"], rtol=1e-3)
    assert got["last_step"].tolist() == [7] * 6
    assert table.read([0])["similarity"].isnan().all()


def test_has_misaligned_masks_similarity_and_loss_only():
    table = StatsTable(4, MODALITIES)
    stats = per_sample(3, has=[True, False, True])
    table.update(torch.tensor([0, 1, 2]), stats)
    got = table.read([0, 1, 2])
    assert not got["confidence"].isnan().any()
    assert got["similarity"].isnan().tolist() == [False, True, False]
    assert got["misaligned_loss"].isnan().tolist() == [False, True, False]
    assert got["last_step"].tolist() == [0, 0, 0]


def test_partial_updates_leave_other_columns_alone():
    table = StatsTable(3, MODALITIES)
    table.update(torch.tensor([1]), similarity=torch.tensor([0.5]))
    table.update(torch.tensor([1]), confidence=torch.tensor([[0.25, 0.75]]))
    got = table.read([1])
    assert got["similarity"].item() == 0.5 and got["confidence"].tolist() == [[0.25, 0.75]]
    assert got["misaligned_loss"].isnan().all()


def test_steps_default_to_the_update_count():
    table = StatsTable(3, MODALITIES)
    for _ in range(3):
        table.update(torch.tensor([0]), similarity=torch.tensor([0.0]))
    table.update(torch.tensor([1]), similarity=torch.tensor([0.0]), step=100)
    assert table.last_step.tolist() == [2, 100, -1] and table.num_updates == 4
    with pytest.raises(ValueError, match="step"):
        table.update(torch.tensor([1]), similarity=torch.tensor([0.0]), step=2**31)


def test_duplicate_ids_last_row_wins_per_column():
    table = StatsTable(5, MODALITIES)
    ids = torch.tensor([3, 1, 3, 3])
    conf = torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]])
    sim = torch.tensor([0.1, 0.2, 0.3, 0.4])
    # The last row of id 3 has no misaligned copy: its similarity comes from the row before.
    has = torch.tensor([True, True, True, False])
    table.update(ids, confidence=conf, similarity=sim, misaligned_loss=sim, has_misaligned=has)
    got = table.read([3, 1])
    assert torch.allclose(got["confidence"][0], torch.tensor([0.4, 0.4]), atol=1e-3)
    assert math.isclose(got["similarity"][0].item(), 0.3, abs_tol=1e-3)
    assert math.isclose(got["similarity"][1].item(), 0.2, abs_tol=1e-3)


def test_ids_beyond_2_to_the_24_are_exact():
    n = 2**24 + 8
    table = StatsTable(n, MODALITIES)
    ids = torch.tensor([2**24 + 1, 2**24 + 3, 2**24 + 7], dtype=torch.int64)
    table.update(ids, similarity=torch.tensor([0.25, 0.5, 0.75]))
    assert table.read(ids)["similarity"].tolist() == [0.25, 0.5, 0.75]
    # Their float32 neighbours (where a float cast would have put them) stay untouched.
    assert table.read([2**24, 2**24 + 2, 2**24 + 4])["similarity"].isnan().all()
    with pytest.raises(TypeError, match="2\\*\\*24"):
        table.update(ids.float(), similarity=torch.zeros(3))


# -- bad input ------------------------------------------------------------------------------
def test_ids_outside_the_table_are_rejected_and_nothing_changes():
    table = StatsTable(10, MODALITIES)
    table.update(torch.tensor([1]), per_sample(1))
    before = snapshot(table)
    for bad in (10, -1, 2**40):
        with pytest.raises(ValueError, match=f"sample id {bad} .*outside the table \\[0, 10\\)"):
            table.update(torch.tensor([2, bad]), per_sample(2, seed=1))
        assert_unchanged(table, before)


@pytest.mark.parametrize("key", ["confidence", "similarity", "misaligned_loss"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_statistics_are_rejected_and_nothing_changes(key, bad):
    table = StatsTable(10, MODALITIES)
    table.update(torch.tensor([4, 5]), per_sample(2))
    before = snapshot(table)
    stats = per_sample(3, seed=2)
    stats[key] = stats[key].clone()
    stats[key][1] = bad
    with pytest.raises(ValueError, match=f"{key}: .* sample id 5 \\(row 1\\) is not finite.*unchanged"):
        table.update(torch.tensor([4, 5, 6]), stats)
    assert_unchanged(table, before)


def test_nan_where_there_is_no_misaligned_copy_is_ignored():
    table = StatsTable(3, MODALITIES)
    stats = per_sample(2, has=[True, False])
    stats["similarity"][1] = math.nan
    table.update(torch.tensor([0, 1]), stats)
    assert table.read([1])["similarity"].isnan().all() and not table.read([0])["similarity"].isnan().any()


def test_out_of_range_statistics_are_rejected_or_clipped():
    table = StatsTable(3, MODALITIES)
    with pytest.raises(ValueError, match="confidence: .*outside \\[0.0, 1.0\\]"):
        table.update(torch.tensor([0]), confidence=torch.tensor([[1.5, 0.5]]))
    with pytest.raises(ValueError, match="misaligned_loss"):
        table.update(torch.tensor([0]), misaligned_loss=torch.tensor([-1.0]))
    table.update(torch.tensor([0]), similarity=torch.tensor([1.0004]), misaligned_loss=torch.tensor([1e6]))
    got = table.read([0])
    assert got["similarity"].item() == 1.0
    assert got["misaligned_loss"].item() == torch.finfo(torch.float16).max


def test_shapes_and_types_are_checked():
    table = StatsTable(3, MODALITIES)
    with pytest.raises(ValueError, match="confidence: expected shape \\[2, 2\\]"):
        table.update(torch.tensor([0, 1]), confidence=torch.rand(2, 3))
    with pytest.raises(KeyError, match="unknown keys"):
        table.update(torch.tensor([0]), {"confidence": torch.rand(1, 2), "alpha": torch.ones(1)})
    with pytest.raises(ValueError, match="no statistics"):
        table.update(torch.tensor([0]))
    with pytest.raises(ValueError, match="has_misaligned"):
        table.update(torch.tensor([0]), similarity=torch.zeros(1), has_misaligned=torch.ones(1))


def test_padding_rows_marked_invalid_are_ignored():
    table = StatsTable(3, MODALITIES)
    table.update(torch.tensor([2, -1]), similarity=torch.tensor([0.5, math.nan]), valid=torch.tensor([True, False]))
    assert table.read([2])["similarity"].item() == 0.5 and table.num_updates == 1


# -- checkpoints --------------------------------------------------------------------------------
def test_state_dict_round_trip_without_pickle():
    table = StatsTable(50, MODALITIES)
    table.update(torch.arange(0, 50, 3), per_sample(17, seed=3))
    state = table.state_dict()
    assert all(isinstance(v, (torch.Tensor, int, str, list)) for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    other = StatsTable(50, MODALITIES)
    shared_view = other.values
    other.load_state_dict(loaded)
    assert torch.equal(other.values.nan_to_num(7.0), table.values.nan_to_num(7.0))
    assert torch.equal(other.last_step, table.last_step) and other.num_updates == table.num_updates
    assert other.values.data_ptr() == shared_view.data_ptr()  # loaded in place, still shared


def test_state_dict_converts_dtype():
    wide = StatsTable(4, MODALITIES, dtype=torch.float32)
    wide.update(torch.tensor([1]), similarity=torch.tensor([0.5]))
    narrow = StatsTable(4, MODALITIES)
    narrow.load_state_dict(wide.state_dict())
    assert narrow.read([1])["similarity"].item() == 0.5


def test_checkpoint_of_another_table_is_rejected():
    table = StatsTable(10, MODALITIES)
    with pytest.raises(ValueError, match="num_samples.*11 samples, this table 10"):
        table.load_state_dict(StatsTable(11, MODALITIES).state_dict())
    with pytest.raises(ValueError, match="modalities"):
        table.load_state_dict(StatsTable(10, ("audio", "text")).state_dict())
    with pytest.raises(ValueError, match="modalities"):
        table.load_state_dict(StatsTable(10, ("audio", "video", "text")).state_dict())
    with pytest.raises(ValueError, match="format"):
        table.load_state_dict({"values": torch.zeros(4, 10)})
    state = StatsTable(10, MODALITIES).state_dict()
    state["values"] = state["values"][:, :5]
    with pytest.raises(ValueError, match="values.*shape \\[5, 10\\]"):
        table.load_state_dict(state)


# -- sharing ----------------------------------------------------------------------------------
class TableReader(Dataset):
    """Item i: what the worker sees of sample i in each table."""

    def __init__(self, tables):
        self.tables = tables

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.stack([t.read([i])["similarity"][0] for t in self.tables])


def _fail_share_memory(self):
    raise RuntimeError("unable to open shared memory object </torch_test> in read-write mode")


def test_spawned_persistent_workers_see_main_process_updates(monkeypatch):
    shm = StatsTable(4, MODALITIES)
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "share_memory_", _fail_share_memory)
        with pytest.warns(StatsStorageWarning, match="file-backed"):
            filed = StatsTable(4, MODALITIES)
    assert shm.storage == "shm" and filed.storage == "file"
    loader = DataLoader(
        TableReader([shm, filed]),
        batch_size=2,  # two batches an epoch: one for each worker
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="spawn",
    )
    assert torch.cat(list(loader)).isnan().all()
    for value in (0.25, -0.5):
        for table in (shm, filed):
            table.update(torch.arange(4), similarity=torch.full((4,), value))
        assert (torch.cat(list(loader)) == value).all()  # the same worker processes, new values


def test_shared_memory_unusable(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.Tensor, "share_memory_", _fail_share_memory)
    with pytest.raises(RuntimeError, match="/dev/shm.*storage='file'"):
        StatsTable(4, MODALITIES, storage="shm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = StatsTable(4, MODALITIES, storage="file", directory=tmp_path)  # asked for: no warning
    path = table.path
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    table.update(torch.tensor([3]), similarity=torch.tensor([0.5]))
    # A pickled copy maps the same file (how spawned workers get it).
    clone = pickle.loads(pickle.dumps(table))
    assert clone.read([3])["similarity"].item() == 0.5
    table.update(torch.tensor([3]), similarity=torch.tensor([-0.5]))
    assert clone.read([3])["similarity"].item() == -0.5
    del table, clone
    gc.collect()
    assert not os.path.exists(path)  # the creating table removes its file


def test_file_backed_table_in_an_unwritable_directory_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.Tensor, "share_memory_", _fail_share_memory)
    missing = tmp_path / "does-not-exist"
    with pytest.raises(RuntimeError, match="directory= a writable local directory"):
        StatsTable(4, MODALITIES, storage="file", directory=missing)


# -- batch capacity and sync_stats ------------------------------------------------------------
def test_batch_capacity_is_host_side_configuration():
    table = StatsTable(10, MODALITIES)
    assert table.batch_capacity is None
    table.batch_capacity = 6
    assert StatsTable(10, MODALITIES, batch_capacity=4).batch_capacity == 4
    for bad in (0, -1, 2.5, True, "6"):
        with pytest.raises(ValueError, match="batch_capacity"):
            StatsTable(10, MODALITIES, batch_capacity=bad)
        with pytest.raises(ValueError, match="batch_capacity"):
            table.batch_capacity = bad
    assert table.batch_capacity == 6
    assert "batch_capacity" not in table.state_dict()  # not part of a checkpoint
    assert pickle.loads(pickle.dumps(table)).batch_capacity == 6  # a copy keeps its configuration
    # Without a process group sync_stats is the local update, whatever the capacity.
    ids = torch.tensor([1, 4])
    sync_stats(table, ids, per_sample(2, seed=1), step=3)
    reference = StatsTable(10, MODALITIES)
    reference.update(ids, per_sample(2, seed=1), step=3)
    assert_unchanged(table, snapshot(reference))
    with pytest.raises(ValueError, match="capacity"):
        sync_stats(table, ids, per_sample(2), capacity=0)


RANK_IDS = ([3, 7, 9], [9, 20])  # unequal row counts per rank, one shared id


def _capacity_rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        gathered_shapes = []
        real_all_gather = dist.all_gather

        def counting_all_gather(tensors, tensor, *args, **kwargs):
            gathered_shapes.append(tuple(tensor.shape))
            return real_all_gather(tensors, tensor, *args, **kwargs)

        dist.all_gather = counting_all_gather
        result = {}
        table = StatsTable(50, MODALITIES)
        table.batch_capacity = 5
        ids = RANK_IDS[rank]
        sync_stats(table, torch.tensor(ids), per_sample(len(ids), seed=rank), step=1)
        result["capacity_gathers"] = list(gathered_shapes)
        # Without a capacity the ranks exchange sizes first; reading them is the host sync.
        gathered_shapes.clear()
        packed, _ = pack_statistics(per_sample(len(ids), seed=rank), 2, len(ids))
        for capacity in (5, None):
            with count_host_syncs() as syncs:
                all_gather_rows(torch.tensor(ids), packed, capacity=capacity)
            result[f"syncs_{capacity}"] = syncs.ops
        result["exchange_gathers"] = list(gathered_shapes)
        # A rank over its capacity: it raises, the other rank's table rejects the step.
        before = snapshot(table)
        too_many = list(range(30, 36)) if rank == 1 else [30]
        try:
            sync_stats(table, torch.tensor(too_many), per_sample(len(too_many), seed=5), step=2)
            result["overflow"] = ""
        except ValueError as err:
            result["overflow"] = str(err)
        assert_unchanged(table, before)
        result["values"], result["last_step"], result["updates"] = snapshot(table)
        torch.save(result, f"{out}/rank{rank}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


def test_sync_stats_with_a_batch_capacity_needs_no_size_exchange(tmp_path):
    mp.spawn(_capacity_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for r in (r0, r1):
        # Two gathers of capacity-long tensors (ids, then values); no size all-gather.
        assert r["capacity_gathers"] == [(5,), (5, 6)]
        assert r["exchange_gathers"] == [(5,), (5, 6), (1,), (3,), (3, 6)]
        assert r["syncs_5"] == []
        assert r["syncs_None"] == ["aten._local_scalar_dense.default"] * 2  # int() of each rank's size
    # Identical tables, equal to one update with every rank's rows in rank order.
    reference = StatsTable(50, MODALITIES)
    stats = [per_sample(len(ids), seed=rank) for rank, ids in enumerate(RANK_IDS)]
    reference.update(
        torch.tensor(RANK_IDS[0] + RANK_IDS[1]), {k: torch.cat([s[k] for s in stats]) for k in stats[0]}, step=1
    )
    for r in (r0, r1):
        assert torch.equal(r["values"].isnan(), reference.values.isnan())
        assert torch.equal(r["values"].nan_to_num(), reference.values.nan_to_num())
        assert torch.equal(r["last_step"], reference.last_step) and r["updates"] == 1
    assert "rank 1 has 6 rows to send, more than capacity=5" in r1["overflow"]
    assert "sample id -2" in r0["overflow"] and "the table is unchanged" in r0["overflow"]


# -- host synchronisations ------------------------------------------------------------------
def test_count_host_syncs_flags_what_makes_the_host_wait():
    t = torch.tensor([1.0, -2.0, 3.0, 0.0])
    flagged = {
        "item": lambda: t.sum().item(),
        "bool": lambda: bool(t.any()),
        "mask index": lambda: t[t > 0],
        "mask assignment": lambda: t.clone().__setitem__(t < 0, 0.0),
        "nonzero": lambda: t.nonzero(),
        "where(mask)": lambda: torch.where(t > 0),
        "unique": lambda: torch.unique(t),
        "masked_select": lambda: t.masked_select(t > 0),
        "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
    }
    for name, op in flagged.items():
        with count_host_syncs() as syncs:
            op()
        assert syncs.count == 1 == len(syncs.ops), (name, syncs.ops)
    with count_host_syncs() as syncs:
        t.nonzero()
        t[t > 0]
    assert syncs.ops == ["aten.nonzero.default", "aten.index.Tensor"]
    with count_host_syncs() as syncs:
        t.sum()
        t.index_select(0, torch.tensor([2, 0]))
        t[torch.tensor([2, 0])]
        torch.where(t > 0, t, 0.0)
        t.masked_fill(t < 0, 0.0)
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        t.to("cpu", non_blocking=True)
    assert syncs.count == 0, syncs.ops


def test_packing_statistics_in_the_step_never_waits_for_the_device():
    objective_like = per_sample(6, seed=4, has=[True, False, True, True, False, True])
    valid = torch.tensor([True] * 5 + [False])
    with count_host_syncs() as syncs:
        # What a step runs before the values leave the device: sync_stats and update pack
        # them, update_packed checks host-known facts, then copies with non_blocking=True.
        ids = as_id_tensor(torch.arange(6) * 7)
        packed, columns = pack_statistics(objective_like, 2, ids.shape[0])
        check_step(5)
        check_packed(packed, valid, ids.shape[0], 2 + 4)
        packed, _ = pack_statistics({"similarity": objective_like["similarity"]}, 2, 6)
    assert syncs.count == 0, syncs.ops
    assert columns == (True, True, True, False, True) and packed.shape == (6, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_update_is_deferred_without_a_host_sync():
    table = StatsTable(20, MODALITIES, batch_capacity=8)
    ids = torch.arange(0, 12, 2, device="cuda")
    stats = {k: v.cuda() for k, v in per_sample(6, seed=2).items()}
    torch.cuda.synchronize()
    with count_host_syncs() as syncs:
        table.update(ids, stats, step=1)  # packed, checked, copied with non_blocking=True
    assert syncs.count == 0, syncs.ops
    table.flush()  # the next flush validates and applies it, on host tensors
    assert table.read(ids.cpu())["last_step"].tolist() == [1] * 6
    with count_host_syncs() as syncs:
        sync_stats(table, ids, stats, step=2)  # no process group: the same deferred update
    assert syncs.count == 0, syncs.ops
    table.flush()
    reference = StatsTable(20, MODALITIES)
    reference.update(ids.cpu(), {k: v.cpu() for k, v in stats.items()}, step=2)
    assert torch.equal(table.values.nan_to_num(), reference.values.nan_to_num())
    assert torch.equal(table.last_step, reference.last_step) and table.num_updates == 2


def test_midas_loader_gives_its_table_a_batch_capacity():
    from midas_data import midas_loader

    table = StatsTable(20, ("a", "b"))
    items = [{"a": torch.randn(2), "b": torch.randn(2), "label": i % 2} for i in range(20)]
    loader = midas_loader(items, ("a", "b"), batch_size=6, stats=table)
    assert table.batch_capacity == 8
    assert max(len(batch) for batch in loader) <= table.batch_capacity
    kept = StatsTable(20, ("a", "b"), batch_capacity=32)
    midas_loader(items, ("a", "b"), batch_size=6, stats=kept)
    assert kept.batch_capacity == 32  # a capacity the user chose stays
