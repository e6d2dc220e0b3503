"""What the example scripts report: the epochs every rank trained, in one JSON-ready dict."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist

from midas_data import MidasBatch


class EpochRecord:
    """The ids and pair plans this rank trained on, per epoch (the batch's own epoch)."""

    def __init__(self) -> None:
        self.ids: dict[int, list[int]] = {}
        self.plans: dict[int, Any] = {}

    def add(self, batch: MidasBatch) -> None:
        self.ids.setdefault(batch.epoch, []).extend(batch.ids.tolist())
        digest = self.plans.setdefault(batch.epoch, hashlib.sha256())
        digest.update(batch.ids.cpu().numpy().tobytes() + batch.plan.cpu().numpy().tobytes())


def gather(value: object) -> list:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def summary(record: EpochRecord, alpha: torch.Tensor, num_samples: int) -> dict[str, Any]:
    """Epochs run, distinct epoch plans, samples per rank per epoch, whether every sample came
    exactly once per epoch across ranks, alpha per rank. Call it on every rank."""
    ids = gather(record.ids)
    plans = gather({e: h.hexdigest() for e, h in record.plans.items()})
    alphas = gather(alpha.tolist())
    epochs = sorted(ids[0])
    return {
        "processes": len(ids),
        "epochs_run": len(epochs),
        "distinct_epoch_plans": len({tuple(rank[e] for rank in plans) for e in epochs}),
        "samples_per_rank_per_epoch": [[len(rank[e]) for rank in ids] for e in epochs],
        "each_sample_once_per_epoch": all(
            sorted(i for rank in ids for i in rank[e]) == list(range(num_samples)) for e in epochs
        ),
        "alpha_per_rank": alphas,
    }
