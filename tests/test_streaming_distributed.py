"""Streaming on two real gloo ranks with two DataLoader workers each: every sample exactly
once per epoch, and the same number of batches on every rank (a collective per batch, as
DDP runs one per step, would otherwise time out)."""

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from many_processes import leave_rank, tear_down_after_error
from torch.utils.data import DataLoader

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _steps(loader, epoch_setter, epochs=2):
    seen = []
    for epoch in range(epochs):
        epoch_setter(epoch)
        ids, batches = [], 0
        for batch in loader:
            ids += batch.ids.tolist()
            batches += 1
            dist.all_reduce(torch.ones(1))  # what a DDP step does; uneven counts would time out
        seen.append((batches, ids))
    return seen


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

        table = datasets.Dataset.from_dict(
            {"a": [[float(i)] * 3 for i in range(64)], "b": [[0.0] * 2] * 64, "label": [i % 3 for i in range(64)]}
        )
        table = table.add_column("id", list(range(64))).with_format("torch")
        from datasets.distributed import split_dataset_by_node

        source = split_dataset_by_node(table.to_iterable_dataset(num_shards=4), rank, 2)
        hf_stage = MidasBatches(MODALITIES, batch_size=8, id_field="id", index=ShardIndex.for_hf(64, 4))
        hf = MidasIterable(source, hf_stage)
        out["hf"] = _steps(DataLoader(hf, batch_size=None, **fork), hf.set_epoch)
        torch.save(out, f"{results}/rank{rank}.pt")
        del loader, hf  # their persistent workers end before the process does
        leave_rank()
    finally:
        tear_down_after_error()


def test_two_ranks_two_workers_four_uneven_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _uneven_shards(shards)
    mp.spawn(_rank_main, args=(_free_port(), str(shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for path, total in (("wds", sum(SIZES)), ("hf", 64)):
        for epoch in range(2):
            (n0, ids0), (n1, ids1) = r0[path][epoch], r1[path][epoch]
            assert n0 == n1 > 0  # equal work per rank
            assert sorted(ids0 + ids1) == list(range(total))  # every sample exactly once
    assert r0["wds"][0][0] == r0["wds_planned"]
    assert r0["wds"][0][1] != r0["wds"][1][1]  # a new epoch, a new order
