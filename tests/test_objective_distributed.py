"""The objective on two gloo ranks: the reference variant weights the same modality on every
rank, chosen from the statistic summed over the ranks, not from each rank's own batch."""

import torch
import torch.multiprocessing as mp
from many_processes import free_port, init_gloo, leave_rank, tear_down_after_error

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
