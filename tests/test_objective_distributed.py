"""The objective on two gloo ranks: the reference variant weights the same modality on every
rank, chosen from the statistic summed over the ranks, not from each rank's own batch."""

import torch
import torch.multiprocessing as mp
from many_processes import free_port, init_gloo, leave_rank, spawn_ranks, tear_down_after_error

from midas_data import MidasObjective, MultimodalOutput
from midas_data import functional as MF

MODS = ("a", "v")


def _batch(rank: int):
    """Rank 0: modality 'a' confident (by a wide margin); rank 1: 'v' slightly more confident.
    Summed over both ranks, 'a' is the confident one, so 'v' is weak everywhere."""
    labels = torch.arange(8) % 2
    strong, weak = (6.0, -1.0) if rank == 0 else (0.2, 0.6)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    logits = {"a": onehot * strong, "v": onehot * weak}
    features = {m: torch.randn(8, 4, generator=torch.Generator().manual_seed(rank)) for m in MODS}
    plan = MF.plan_pairs(labels, 2, torch.Generator().manual_seed(rank)).sources
    return MultimodalOutput(features, logits, onehot), labels, plan


def _main(rank: int, port: int, out: str) -> None:
    init_gloo(rank, 2, port)
    try:
        objective = MidasObjective(2, MODS, variant="reference")
        objective.controller.weights.fill_(2.0)
        output, labels, plan = _batch(rank)
        head = torch.nn.Linear(8, 2)
        fuse = lambda f: head(torch.cat([f["a"], f["v"]], dim=1))  # noqa: E731
        _, info = objective(output, labels=labels, plan=plan, fuse=fuse)
        local = objective.controller.loss_weights(info["per_sample"]["confidence"])
        torch.save({"alpha": info["alpha"], "local": local, "after": objective.alpha}, f"{out}/rank{rank}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


def test_reference_variant_weights_one_modality_on_every_rank(tmp_path):
    mp.spawn(_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Each rank alone would have chosen differently ...
    assert not torch.equal(results[0]["local"], results[1]["local"])
    # ... but both weighted the modality that is weak over both ranks' rows: 'v'.
    for result in results:
        assert torch.equal(result["alpha"], torch.tensor([1.0, 2.0]))
    assert torch.equal(results[0]["after"], results[1]["after"])


def _one_rank_ddp(rank: int, port: int, out: str) -> None:
    """DDP on a single rank (a one-GPU torchrun job): warm-up steps train the unimodal heads
    only, and DDP still needs a gradient for the fusion head's parameters."""
    from many_processes import make_model
    from torch.nn.parallel import DistributedDataParallel as DDP

    init_gloo(rank, 1, port)
    try:
        inner = make_model()
        net = DDP(inner)
        objective = MidasObjective(inner.num_classes, inner.modalities, warmup_epochs=1)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(0)
        for epoch in range(2):  # a warm-up epoch, then MIDAS
            objective.set_epoch(epoch)
            for _ in range(3):
                inputs = {"audio": torch.randn(8, 8, generator=g), "video": torch.randn(8, 6, generator=g)}
                labels = torch.randint(0, inner.num_classes, (8,), generator=g)
                plan = MF.plan_pairs(labels, 2, g).sources
                loss, _ = objective(net(inputs), labels=labels, plan=plan, fuse=inner.fuse)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        torch.save({"loss": float(loss)}, f"{out}/rank{rank}.pt")
        del net, inner
        leave_rank()
    finally:
        tear_down_after_error()


def test_one_rank_under_ddp_trains_through_the_warm_up(tmp_path):
    spawn_ranks(_one_rank_ddp, str(tmp_path), nprocs=1)
    assert torch.isfinite(torch.tensor(torch.load(tmp_path / "rank0.pt")["loss"]))
