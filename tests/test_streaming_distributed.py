"""Streaming on two real gloo ranks with two DataLoader workers each: every sample exactly
once per epoch, and the same number of batches on every rank (a collective per batch, as
DDP runs one per step, would otherwise time out). Also: a Hugging Face dataset whose rows
do not divide into its shards, shuffled, over five epochs (datasets deals the shards in a
new order every epoch); loops that never call set_epoch; a forgotten split by rank."""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from many_processes import free_port, leave_rank, tear_down_after_error
from torch.utils.data import DataLoader

from midas_data import MidasDataError
from midas_data.streaming import MidasBatches, MidasIterable, ShardIndex

wds = pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")

MODALITIES = ("a", "b")
SIZES = (23, 9, 17, 15)  # four uneven shards: rank 0 gets 40 samples, rank 1 gets 24


class Toy:
    def __len__(self) -> int:
        return sum(SIZES)

    def __getitem__(self, i: int) -> dict:
        return {"a": torch.full((3,), float(i)), "b": torch.full((2,), -float(i)), "label": i % 3}


def _uneven_shards(root) -> ShardIndex:
    """Shards of the sizes in SIZES, written with webdataset's TarWriter, indexed by a scan."""
    urls, slot = [], 0
    for number, size in enumerate(SIZES):
        urls.append(str(root / f"uneven-{number:06d}.tar"))
        with wds.TarWriter(urls[-1]) as sink:
            for i in range(slot, slot + size):
                item = Toy()[i]
                sink.write(
                    {
                        "__key__": f"sample{i}",
                        "a.npy": item["a"].numpy(),
                        "b.npy": item["b"].numpy(),
                        "label.cls": i % 3,
                    }
                )
        slot += size
    index = ShardIndex.scan(urls)
    index.save(root / "index.json")
    return ShardIndex.load(root)


def _steps(loader, epoch_setter=None, epochs=2):
    """Per epoch: (batches, ids, the epochs the batches carry). ``epoch_setter=None``: no
    set_epoch call anywhere, each pass is the next epoch."""
    seen = []
    for epoch in range(epochs):
        if epoch_setter is not None:
            epoch_setter(epoch)
        ids, batches, tags = [], 0, set()
        for batch in loader:
            ids += batch.ids.tolist()
            batches += 1
            tags.add(batch.epoch)
            dist.all_reduce(torch.ones(1))  # what a DDP step does; uneven counts would time out
        seen.append((batches, ids, sorted(tags)))
    return seen


def _hf_rows(n):
    table = datasets.Dataset.from_dict(
        {"a": [[float(i)] * 3 for i in range(n)], "b": [[0.0] * 2] * n, "label": [i % 3 for i in range(n)]}
    )
    return table.add_column("id", list(range(n))).with_format("torch")


# Workers are forked: processes made by mp.spawn would otherwise spawn their workers too,
# each re-importing torch and datasets (~20 s here); the stages pickle to spawned workers too.
def _rank_main(rank: int, port: int, root: str, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    try:
        from pathlib import Path

        index = ShardIndex.load(Path(root))
        out = {}
        stage = MidasBatches(MODALITIES, batch_size=8, index=index, window=8)
        pipeline = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=stage.split_by_node).compose(stage)
        fork = {"num_workers": 2, "multiprocessing_context": "fork"}
        loader = wds.WebLoader(pipeline, batch_size=None, persistent_workers=True, **fork)
        out["wds"] = _steps(loader, stage.set_epoch)
        out["wds_planned"] = stage.batches_per_epoch(2)

        # The same loop without set_epoch: each pass is the next epoch.
        auto_stage = MidasBatches(MODALITIES, batch_size=8, index=index, window=8)
        auto = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=auto_stage.split_by_node)
        out["wds_auto"] = _steps(wds.WebLoader(auto.compose(auto_stage), batch_size=None, **fork), epochs=3)

        from datasets.distributed import split_dataset_by_node

        # The docs' recipe with 150 rows in 8 shards (uneven), shuffled, five epochs.
        uneven = _hf_rows(150).to_iterable_dataset(num_shards=8).shuffle(seed=0, buffer_size=1000)
        uneven_stage = MidasBatches(MODALITIES, batch_size=16, id_field="id", index=ShardIndex.for_hf(150, 8))
        shuffled = MidasIterable(split_dataset_by_node(uneven, rank, 2), uneven_stage)
        out["hf_uneven"] = _steps(DataLoader(shuffled, batch_size=None, **fork), shuffled.set_epoch, epochs=5)
        out["hf_uneven_planned"] = uneven_stage.batches_per_epoch(2)
        # ... and without set_epoch, with a fresh wrapper: epochs 0, 1, 2 again.
        again = MidasIterable(
            split_dataset_by_node(uneven, rank, 2),
            MidasBatches(MODALITIES, batch_size=16, id_field="id", index=ShardIndex.for_hf(150, 8)),
        )
        out["hf_auto"] = _steps(DataLoader(again, batch_size=None, **fork), epochs=3)

        # split_dataset_by_node forgotten: said when the wrapper is made, on every rank.
        try:
            MidasIterable(
                uneven, MidasBatches(MODALITIES, batch_size=16, id_field="id", index=ShardIndex.for_hf(150, 8))
            )
            out["unsplit"] = None
        except MidasDataError as err:
            out["unsplit"] = str(err)
        torch.save(out, f"{results}/rank{rank}.pt")
        del loader  # its persistent workers end before the process does
        leave_rank()
    finally:
        tear_down_after_error()


def test_two_ranks_two_workers_four_uneven_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _uneven_shards(shards)
    mp.spawn(_rank_main, args=(free_port(), str(shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    runs = (("wds", sum(SIZES)), ("wds_auto", sum(SIZES)), ("hf_uneven", 150), ("hf_auto", 150))
    for path, total in runs:
        assert len(r0[path]) == len(r1[path]) >= 2
        for epoch in range(len(r0[path])):
            (n0, ids0, tags0), (n1, ids1, tags1) = r0[path][epoch], r1[path][epoch]
            assert n0 == n1 > 0  # equal work per rank
            assert sorted(ids0 + ids1) == list(range(total))  # every sample exactly once
            assert tags0 == tags1 == [epoch]  # with set_epoch, and without it: each pass the next epoch
    assert r0["wds"][0][0] == r0["wds_planned"]
    assert r0["wds"][0][1] != r0["wds"][1][1]  # a new epoch, a new order
    assert len(r0["hf_uneven"]) == 5 and r0["hf_uneven"][0][0] == r0["hf_uneven_planned"]
    assert len({tuple(ids) for _, ids, _ in r0["hf_uneven"]}) == 5
    assert r0["hf_auto"] == r0["hf_uneven"][:3] and r1["hf_auto"] == r1["hf_uneven"][:3]  # the same epochs exactly
    for rank, result in enumerate((r0, r1)):
        assert f"rank {rank} of 2: the dataset has all 8 shards" in result["unsplit"]
        assert f"split_dataset_by_node(ds, rank={rank}, world_size=2)" in result["unsplit"]
