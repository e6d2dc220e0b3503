"""Multi-label training as users run it: two gloo ranks with persistent workers, bf16 and a
fed-back sampler, and a resume from checkpoints taken in the middle and at the end of an
epoch, in loops that never call ``set_epoch``."""

import io

import pytest
import torch
from many_processes import init_gloo, leave_rank, spawn_ranks, tear_down_after_error
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader, sync_stats
from midas_data import multilabel as ML

MODS = ("a", "v")
C = 5
EPOCHS = 5


class LabelSets(torch.utils.data.Dataset):
    """Label sets of one to three classes; "a" shows them strongly, "v" weakly. Labels are
    lists of class ids (``as_ids``) or float multi-hot rows."""

    def __init__(self, n: int, as_ids: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        self.sets = [sorted(dict.fromkeys([i % C, (i * 3 + 1) % C, (i * 7 + 2) % C]))[: 1 + i % 3] for i in range(n)]
        self.a, self.v = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
        for i, s in enumerate(self.sets):
            self.a[i, s] += 2.0
            self.v[i, [c + 2 for c in s]] += 0.6
        self.as_ids = as_ids

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, i: int) -> dict:
        label = self.sets[i] if self.as_ids else ML.ids_to_multi_hot(self.sets[i], C)
        return {"a": self.a[i], "v": self.v[i], "label": label}


def model() -> LateFusionClassifier:
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(8, 16), nn.ReLU()) for m in MODS}
    return LateFusionClassifier(encoders, {m: 16 for m in MODS}, C)


def step(net, fuse, objective, optimizer, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, info = objective(net(batch.inputs), batch, fuse=fuse)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, info


# -- two gloo ranks -------------------------------------------------------------------------
def _rank_main(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    init_gloo(rank, 2, port)
    try:
        data = LabelSets(203, as_ids=True)  # uneven over 2 ranks x batches of 8
        table = StatsTable(len(data), MODS)
        loader = midas_loader(
            data, MODS, batch_size=8, seed=2, shuffle=True, num_classes=C, stats=table,
            num_replicas=2, rank=rank, num_workers=2, persistent_workers=True,
        )  # fmt: skip
        inner = model()
        net = DDP(inner)
        objective = MidasObjective(C, MODS, task="multilabel", warmup_epochs=1)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
        epochs = []
        for _ in range(EPOCHS):  # no set_epoch
            ids, losses, misaligned = [], [], 0
            for batch in loader:
                assert batch.labels.shape == (len(batch.ids), C) and batch.rule == "different_set"
                loss, info = step(net, inner.fuse, objective, optimizer, batch)
                sync_stats(table, batch.ids, info["per_sample"])
                ids += batch.ids.tolist()
                losses.append(loss.item())
                misaligned += info["num_misaligned"]
            epochs.append({"ids": ids, "losses": losses, "misaligned": misaligned})
        table.flush()
        torch.save(
            {
                "epochs": epochs,
                "alpha": objective.alpha.tolist(),
                "table": table.values.nan_to_num(-1.0).clone(),
                "params": torch.cat([p.detach().flatten() for p in inner.parameters()]),
            },
            f"{out}/rank{rank}.pt",
        )
        del net, inner
        leave_rank()
    finally:
        tear_down_after_error()


def test_two_gloo_ranks_train_multi_label_with_persistent_workers_and_bf16(tmp_path):
    spawn_ranks(_rank_main, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["alpha"] == r1["alpha"] and r0["alpha"] != [1.0, 1.0]  # one alpha, and it moved
    assert torch.equal(r0["table"], r1["table"]) and (r0["table"] >= 0).all()  # every sample reported
    assert torch.equal(r0["params"], r1["params"])
    for epoch, (e0, e1) in enumerate(zip(r0["epochs"], r1["epochs"])):
        assert len(e0["losses"]) == len(e1["losses"])  # lockstep batches
        assert not set(e0["ids"]) & set(e1["ids"]) and sorted(e0["ids"] + e1["ids"]) == list(range(203))
        assert (e0["misaligned"] == 0) == (epoch == 0)
    orders = {tuple(e["ids"]) for e in r0["epochs"]}
    assert len(orders) == EPOCHS  # every epoch its own shuffle without set_epoch
    first, last = r0["epochs"][1]["losses"], r0["epochs"][-1]["losses"]
    assert sum(last) / len(last) < sum(first) / len(first)


# -- resume ---------------------------------------------------------------------------------
def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _run(stop_at=None, state=None):
    """Train EPOCHS epochs with a fed-back "hard" sampler. ``stop_at=(epoch, batch)`` returns
    a checkpoint taken after that batch (``batch=None``: after the epoch's loop ended);
    ``state`` resumes from one. Returns what every trained batch saw."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    data = LabelSets(90)
    table = StatsTable(len(data), MODS)
    loader = midas_loader(
        data, MODS, batch_size=8, seed=5, stats=table, policy="hard", loader_class=StatefulDataLoader,
        num_workers=2, persistent_workers=True,
    )  # fmt: skip
    net = model()
    objective = MidasObjective(C, MODS, task="multilabel", warmup_epochs=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    parts = {"model": net, "optimizer": optimizer, "objective": objective, "table": table}
    start = 0
    if state is not None:
        for part, thing in parts.items():
            thing.load_state_dict(state[part])
        loader.load_state_dict(state["loader"])
        start = state["epoch"]

    def checkpoint(epoch):
        return _round_trip(
            {**{p: t.state_dict() for p, t in parts.items()}, "loader": loader.state_dict(), "epoch": epoch}
        )

    seen = []
    for epoch in range(start, EPOCHS):  # no set_epoch
        for number, batch in enumerate(loader):
            loss, info = step(net, net.fuse, objective, optimizer, batch)
            table.update(batch.ids, info["per_sample"])
            seen.append((epoch, batch.ids.tolist(), batch.plan.tolist(), batch.labels.tolist(), loss.item()))
            if stop_at == (epoch, number):  # the loader's epoch goes on: resume in this one
                return seen, checkpoint(epoch)
        if stop_at == (epoch, None):
            return seen, checkpoint(epoch + 1)
    return seen, torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("stop_at", [(2, 4), (1, 11), (1, None)], ids=["mid-epoch", "last-batch", "epoch-end"])
def test_a_resumed_multi_label_run_trains_exactly_the_batches_of_the_uninterrupted_one(stop_at):
    pytest.importorskip("torchdata.stateful_dataloader")
    full, final = _run()
    assert [e for e, *_ in full].count(1) == 12  # 90 samples in batches of 8: the last batch is 11
    head, state = _run(stop_at=stop_at)
    tail, resumed_final = _run(state=state)
    assert head + tail == full
    assert torch.equal(resumed_final, final)
