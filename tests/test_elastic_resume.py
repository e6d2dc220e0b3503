"""Resuming an epoch on another number of ranks (docs/distributed.md, "Resuming on another
number of ranks"): a state saved mid-epoch on N ranks, loaded on M ranks with rank r taking
old rank r % N's state, finishes the epoch with every remaining slot of its plan exactly once
and then plans the epochs an M-rank run draws from the same table.

The first tests drive the samplers of every rank in one process (fast, many layouts); the
last ones launch real gloo runs with torchrun, DDP and persistent DataLoader workers
(tests/elastic_resume.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from midas_data import StatsTable
from midas_data.feedback.planning import plan_from_snapshot
from midas_data.feedback.prune import PrunePolicy
from midas_data.feedback.sampler import MidasBatchSampler

MODALITIES = ("audio", "video")


def hard_table(n: int, seed: int = 0) -> StatsTable:
    g = torch.Generator().manual_seed(seed)
    table = StatsTable(n, MODALITIES, dtype=torch.float32)
    table.update(torch.arange(n), similarity=torch.rand(n, generator=g) * 2 - 1, loss=torch.rand(n, generator=g) ** 2)
    return table


def samplers(world: int, n: int, batch: int, **kwargs) -> list[MidasBatchSampler]:
    return [MidasBatchSampler(n, batch, num_replicas=world, rank=r, seed=7, **kwargs) for r in range(world)]


def interrupted(world: int, steps: int, n: int, batch: int, **kwargs):
    """Every rank of a ``world``-rank run takes ``steps`` batches of epoch 0 (planned from
    the table as given); returns the trained ids, each rank's state and the epoch's plan."""
    ranks = samplers(world, n, batch, **kwargs)
    trained, states = [], []
    for sampler in ranks:
        batches = iter(sampler)
        for _ in range(steps):
            trained += next(batches)
        states.append(sampler.state_dict())
    return trained, states, ranks[0].current_plan or ranks[0].plan_epoch(0)


def resumed(world: int, states: list[dict], n: int, batch: int, **kwargs) -> list[MidasBatchSampler]:
    ranks = samplers(world, n, batch, **kwargs)
    for rank, sampler in enumerate(ranks):
        sampler.load_state_dict(states[rank % len(states)])  # the documented rule
    return ranks


CELLS = [(4, 2, 2), (2, 4, 3), (2, 1, 1), (1, 2, 5), (3, 2, 1), (2, 3, 0), (4, 1, 3), (1, 4, 11)]


@pytest.mark.parametrize("policy", ["uniform", "hard", "prune"])
@pytest.mark.parametrize(("old", "new", "steps"), CELLS)
def test_the_rest_of_the_epoch_is_trained_once_and_the_next_epoch_is_the_new_worlds(old, new, steps, policy):
    n, batch = 97, 4
    kwargs: dict = {}
    if policy != "uniform":
        kwargs = {"stats": hard_table(n), "policy": PrunePolicy(ratio=0.5, tail=0.0) if policy == "prune" else policy}
    trained, states, plan = interrupted(old, steps, n, batch, **kwargs)
    ranks = resumed(new, states, n, batch, **kwargs)
    lengths = [len(s) for s in ranks]
    rest = [list(s) for s in ranks]
    # DDP needs the same number of batches on every rank; len() counts from the epoch's start.
    assert len({len(r) for r in rest}) == 1 and lengths == [steps + len(r) for r in rest]
    assert all(1 <= len(b) <= batch + 2 for r in rest for b in r)
    # Every slot of the epoch's plan exactly once across both runs (a sample drawn twice by
    # a prioritised plan is trained twice, as in an uninterrupted run).
    assert Counter(trained + [i for r in rest for b in r for i in b]) == Counter(plan.order.tolist())
    # The next epoch is the one an uninterrupted new-world run draws from the same table.
    reference = samplers(new, n, batch, **kwargs)
    for sampler in reference:
        sampler.set_epoch(1)
    assert [list(s) for s in ranks] == [list(s) for s in reference]


def test_a_resumed_rest_can_be_interrupted_and_resumed_again_on_any_number_of_ranks():
    n, batch = 101, 4
    trained, states, plan = interrupted(4, 2, n, batch)
    middle = resumed(3, states, n, batch)
    passes = [iter(s) for s in middle]
    for batches in passes:
        for _ in range(2):
            trained += next(batches)
    states = [s.state_dict() for s in middle]
    assert states[0]["yielded"] == 4 and states[0]["elastic_from"] == 2
    # On the same three ranks: exactly the batches the interrupted middle run had left.
    same = resumed(3, states, n, batch)
    left = [list(batches) for batches in passes]
    assert [list(s) for s in same] == left
    # On two ranks: the rest of the rest, once.
    last = resumed(2, states, n, batch)
    rest = [i for s in last for b in s for i in b]
    assert Counter(trained + rest) == Counter(plan.order.tolist())


def test_drop_last_keeps_the_epochs_samples_and_trains_the_rest_without_dropping():
    n, batch = 50, 4  # 2 ranks drop the last 2 slots of every epoch
    trained, states, plan = interrupted(2, 3, n, batch, drop_last=True)
    kept = plan.order[: n - n % (2 * batch)].tolist()
    ranks = resumed(3, states, n, batch, drop_last=True)
    rest = [i for s in ranks for b in s for i in b]
    assert Counter(trained + rest) == Counter(kept)


def test_a_checkpoint_at_the_epochs_last_batch_resumes_with_an_empty_pass_then_the_next_epoch():
    n, batch = 64, 4
    trained, states, plan = interrupted(2, 8, n, batch)  # all 8 batches of each rank
    assert sorted(trained) == list(range(n))
    ranks = resumed(4, states, n, batch)
    assert [len(s) for s in ranks] == [8] * 4  # the old epoch's count: nothing left
    assert [list(s) for s in ranks] == [[]] * 4
    assert [len(s) for s in ranks] == [4] * 4  # the next epoch on four ranks
    reference = samplers(4, n, batch)
    for sampler in reference:
        sampler.set_epoch(1)
    expected = [list(s) for s in reference]
    assert [list(s) for s in ranks] == expected
    # A state taken after the caller saw the end: straight to the next epoch.
    ended = samplers(2, n, batch)
    for sampler in ended:
        list(sampler)
    ranks = resumed(4, [s.state_dict() for s in ended], n, batch)
    assert [list(s) for s in ranks] == expected


def test_the_same_number_of_ranks_resumes_exactly_as_before():
    n, batch = 97, 4
    _, states, _ = interrupted(2, 3, n, batch)
    assert states[0]["elastic_slots"] is None and states[0]["elastic_from"] == 0
    uninterrupted = samplers(2, n, batch)
    expected = []
    for sampler in uninterrupted:
        batches = list(sampler)
        expected.append(batches[3:])
    old_format = [{k: v for k, v in s.items() if not k.startswith("elastic_")} for s in states]
    for given in (states, old_format):  # a state saved before this layout resumes the same way
        assert [list(s) for s in resumed(2, given, n, batch)] == expected


def test_too_few_samples_left_for_the_new_ranks_is_a_clear_error():
    trained, states, _ = interrupted(1, 2, 10, 4)  # batches of 4, 4, 2: two samples left
    with pytest.raises(ValueError, match=r"has 2 sample\(s\) left, fewer than the 4 ranks resuming it"):
        MidasBatchSampler(10, 4, num_replicas=4, rank=0, seed=7).load_state_dict(states[0])
    ranks = resumed(2, states, 10, 4)  # two ranks: one sample each
    assert sorted(trained + [i for s in ranks for b in s for i in b]) == list(range(10))


@pytest.mark.parametrize(
    ("field", "saved", "mine", "changed"),
    [
        ("num_samples", 97, 96, {"num_samples": 96}),
        ("batch_size", 4, 5, {"batch_size": 5}),
        ("seed", 7, 8, {"seed": 8}),
        ("drop_last", False, True, {"drop_last": True}),
    ],
)
def test_a_checkpoint_of_another_dataset_batch_size_or_seed_names_the_field_and_both_values(
    field, saved, mine, changed
):
    _, states, _ = interrupted(2, 1, 97, 4)
    args = {"num_samples": 97, "batch_size": 4, "seed": 7, "num_replicas": 4, "rank": 1, **changed}
    sampler = MidasBatchSampler(args.pop("num_samples"), args.pop("batch_size"), **args)
    with pytest.raises(ValueError, match=rf"state\['{field}'\]: the checkpoint has {saved}, this sampler {mine}"):
        sampler.load_state_dict(states[1])


# -- real processes -----------------------------------------------------------------------
SCRIPT = "tests/elastic_resume.py"
TAILS = [(4, 2), (2, 4), (2, 1), (1, 2)]
# Four launches cover the four cells: a head must run before the tails that resume it.
LAUNCHES = [(2, ["head:from2"]), (4, ["head:from4", "tail:from2"]), (1, ["head:from1", "tail:from2"]),
            (2, ["tail:from4", "tail:from1"])]  # fmt: skip


def launch(root, world: int, jobs: list[str], out) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    command += [SCRIPT, *jobs, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from example_runs import ROOT

    out = tmp_path_factory.mktemp("elastic")
    for world, jobs in LAUNCHES:
        launch(ROOT, world, jobs, out)
    return out


def load(path):
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("which", ["mid", "end"])
@pytest.mark.parametrize(("old", "new"), TAILS, ids=[f"{a}to{b}" for a, b in TAILS])
def test_ddp_resume_on_another_number_of_ranks(runs, old, new, which):
    from elastic_resume import BATCH, EPOCHS, SEED

    heads = [load(runs / f"from{old}-head-rank{r}.pt") for r in range(old)]
    tails = [load(runs / f"from{old}-{which}-on{new}-rank{r}.pt") for r in range(new)]
    state = load(runs / f"from{old}-{which}-rank0.pt")["loader"]["sampler"]
    n = state["num_samples"]
    assert all(t["old_world"] == old for t in tails)
    # Epoch 1's plan, from the snapshot the checkpoint recorded: every slot exactly once
    # across the old ranks' batches before the checkpoint and the new ranks' after it.
    plan = plan_from_snapshot(
        n, 1, SEED, "hard", state["snapshot"], 0.2, state["weak_modality"], True, state["snapshot_updates"]
    )
    steps = state["yielded"]
    before = [i for h in heads for b in [b for b in h["batches"] if b["epoch"] == 1][:steps] for i in b["ids"]]
    after = [[b["ids"] for b in t["batches"] if b["epoch"] == 1] for t in tails]
    assert Counter(before + [i for rank in after for b in rank for i in b]) == Counter(plan.order.tolist())
    assert len({len(rank) for rank in after}) == 1  # the same number of steps on every new rank
    if which == "end":
        assert after[0] == [] and len(before) == n
    else:
        assert len(after[0]) > 0
    assert all(b["batch_epoch"] == b["epoch"] for t in tails for b in t["batches"])
    # Epochs 2-4: each the plan a new-world run draws from the table as the epoch before left it.
    same = lambda a, b: a["values"].nan_to_num(-1.0).equal(b["values"].nan_to_num(-1.0))  # noqa: E731
    assert all(same(t["tables_after"][e], tails[0]["tables_after"][e]) for t in tails for e in (1, EPOCHS - 1))
    for epoch in range(2, EPOCHS):
        table = StatsTable(n, MODALITIES)
        table.load_state_dict(tails[0]["tables_after"][epoch - 1])
        reference = [
            MidasBatchSampler(n, BATCH, num_replicas=new, rank=r, seed=SEED, policy="hard", stats=table)
            for r in range(new)
        ]
        for sampler in reference:
            sampler.set_epoch(epoch)
        trained = [[b["ids"] for b in t["batches"] if b["epoch"] == epoch] for t in tails]
        assert trained == [list(s) for s in reference], epoch
        assert [t["lengths"][epoch - 1] for t in tails] == [len(s) for s in reference]


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"audio": torch.full((2,), float(i)), "video": torch.full((3,), float(i)), "label": i % 3}


@pytest.mark.parametrize("loader", ["own-with-a-worker", "stateful"])
def test_loader_states_resume_on_another_number_of_ranks(loader):
    """The loaders' own states (what users save), ranks simulated in one process: the
    position saved is the caller's, not what a worker fetched ahead."""
    from midas_data import midas_loader

    kwargs: dict = {"num_workers": 1, "persistent_workers": True}
    if loader == "stateful":
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        kwargs = {"loader_class": stateful.StatefulDataLoader}
    n = 45

    def loaders(world):
        return [midas_loader(Items(n), MODALITIES, batch_size=4, num_replicas=world, rank=r, seed=2, **kwargs)
                for r in range(world)]  # fmt: skip

    trained, states = [], []
    for old in loaders(3):
        batches = iter(old)
        for _ in range(2):
            trained += next(batches).ids.tolist()
        states.append(old.state_dict())
        del batches
    new = loaders(2)
    for rank, resumed_loader in enumerate(new):
        resumed_loader.load_state_dict(states[rank % 3])
    rest = [[b.ids.tolist() for b in resumed_loader] for resumed_loader in new]
    assert len(rest[0]) == len(rest[1]) > 0
    assert sorted(trained + [i for r in rest for b in r for i in b]) == list(range(n))
    reference = [midas_loader(Items(n), MODALITIES, batch_size=4, num_replicas=2, rank=r, seed=2) for r in range(2)]
    for ref in reference:
        ref.batch_sampler.set_epoch(1)
    assert [[b.ids.tolist() for b in x] for x in new] == [[b.ids.tolist() for b in x] for x in reference]
