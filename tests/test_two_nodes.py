"""Two nodes on one machine: two ``torchrun --nnodes=2 --nproc_per_node=2`` launches side by
side (gloo, CPU), node ranks 0 and 1. Plain DDP with a prioritised policy: every planned
draw once per epoch across the four ranks, identical alpha and tables, one table per node.
The streaming stage split by node over shards, over a node-shared table its workers read:
every sample once per epoch while the table is empty, equal work on every rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from many_processes import free_port

wds = pytest.importorskip("webdataset")

MODALITIES = ("audio", "video")
SIZES = (7, 5, 9, 6, 8, 4, 7, 6)  # eight uneven shards, two per rank
TIMEOUT = 240  # seconds for the whole run; a hang fails here instead of blocking CI


def _shards(root: Path) -> None:
    from midas_data.streaming import ShardIndex

    urls, slot = [], 0
    for number, size in enumerate(SIZES):
        urls.append(str(root / f"part-{number:06d}.tar"))
        with wds.TarWriter(urls[-1]) as sink:
            for i in range(slot, slot + size):
                sink.write(
                    {
                        "__key__": f"sample{i}",
                        "audio.npy": torch.full((8,), float(i)).numpy(),
                        "video.npy": torch.full((6,), -float(i)).numpy(),
                        "label.cls": i % 4,
                    }
                )
        slot += size
    ShardIndex.scan(urls).save(root / "index.json")


def _launch(node: int, port: int, out: Path, shards: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=2",
        f"--node_rank={node}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(Path(__file__).with_name("two_nodes.py")),
        str(out),
        str(shards),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_nodes")
    shards = root / "shards"
    shards.mkdir()
    _shards(shards)
    port = free_port()
    launches = [_launch(node, port, root, shards) for node in (0, 1)]
    logs = []
    try:
        for launch in launches:
            logs.append(launch.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for launch in launches:
            os.killpg(launch.pid, signal.SIGKILL)
        pytest.fail(f"two torchrun launches did not finish within {TIMEOUT} s")
    for launch, log in zip(launches, logs):
        assert launch.returncode == 0, log[-3000:]
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(4)]


def test_ranks_know_their_node_and_local_rank(records):
    assert [(r["rank"], r["node"], r["local_rank"]) for r in records] == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]


def test_one_table_per_node_identical_everywhere(records):
    ddp = [r["ddp"] for r in records]
    assert {d["sharing"] for d in ddp} == {"node"}
    assert ddp[0]["inode"] == ddp[1]["inode"] != ddp[2]["inode"] == ddp[3]["inode"]  # local ranks map one block
    assert {d["links"] for d in ddp} == {0}  # and the block has no name left in /dev/shm
    assert ddp[0]["writes"] + ddp[1]["writes"] == ddp[2]["writes"] + ddp[3]["writes"] == ddp[0]["num_updates"] + 1
    assert len({d["digest"] for d in ddp}) == 1 and ddp[0]["num_updates"] > 0
    assert len({tuple(d["alpha"]) for d in ddp}) == 1


def test_every_planned_draw_once_per_epoch_across_four_ranks(records):
    ddp = [r["ddp"] for r in records]
    for epoch in range(len(ddp[0]["epochs"])):
        plans = [d["epochs"][epoch] for d in ddp]
        assert all(p["order"] == plans[0]["order"] for p in plans)  # one global plan
        assert sorted(i for p in plans for i in p["ids"]) == sorted(plans[0]["order"])
        if epoch == 0:  # an empty table plans as uniform: every sample once
            assert plans[0]["policy"] == "uniform"
            assert sorted(plans[0]["order"]) == list(range(len(plans[0]["order"])))
    last = ddp[0]["epochs"][-1]
    assert last["policy"] == "hard" and sorted(last["order"]) != sorted(ddp[0]["epochs"][0]["order"])  # it steers


def test_streaming_split_by_node_every_sample_once(records):
    streams = [r["streaming"] for r in records]
    assert {s["sharing"] for s in streams} == {"node"} and len({s["digest"] for s in streams}) == 1
    assert streams[0]["inode"] == streams[1]["inode"] != streams[2]["inode"] == streams[3]["inode"]
    for epoch in range(2):
        counts = [s["epochs"][epoch][0] for s in streams]
        assert len(set(counts)) == 1 and counts[0] > 0  # equal work per rank
        drawn = sorted(i for s in streams for i in s["epochs"][epoch][1])
        if epoch == 0:  # an empty table: every sample once
            assert drawn == list(range(sum(SIZES)))
        else:  # prioritised windows: as many draws as samples, some drawn twice, some left out
            assert len(drawn) == sum(SIZES) and set(drawn) < set(range(sum(SIZES)))
    assert streams[0]["epochs"][0][1] != streams[0]["epochs"][1][1]  # a new epoch, a new order
