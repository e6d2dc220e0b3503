"""Planning an epoch at scale: the MIDAS sampler's policies against ``torch.randperm``.

For each dataset size N a :class:`StatsTable` is filled as after a full epoch (every
sample seen: random confidences in [0, 1], similarities in [-1, 1]) and one epoch is
planned with each policy (``MidasBatchSampler.plan_epoch``: snapshot, priorities,
systematic resampling, shuffled order). Each plan time is divided by the time of
``torch.randperm(N)`` measured in the same run, alternating with the plans; the best of
``--repeats`` runs of each is kept. ``WeightedRandomSampler`` (the stock weighted
sampler, with replacement) is timed once for N <= 2**24 and reported as ``null`` above,
where ``torch.multinomial`` refuses the number of categories.

``bytes_per_sample`` counts what stays in memory for the ``hard`` policy: the stats table
plus the plan (the order of N slots and the snapshot it was drawn from). Prints one JSON
line per N.

    python benchmarks/sampler_scale.py [--n 1000000 10000000 100000000] [--repeats 3] [--dtype float16]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from torch.utils.data import WeightedRandomSampler

from midas_data.feedback.sampler import MidasBatchSampler
from midas_data.feedback.stats import StatsTable

POLICIES = ("uniform", "hard", "weak_modality")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MULTINOMIAL_LIMIT = 2**24


def filled_table(n: int, dtype: torch.dtype, seed: int = 0) -> StatsTable:
    """A table as after one epoch: every sample seen. Filled in slices to bound memory."""
    table = StatsTable(n, ("audio", "video"), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    step = 1 << 22
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = stop - start
        table.confidence[0, start:stop] = 0.4 + 0.6 * torch.rand(rows, generator=g)  # the strong modality
        table.confidence[1, start:stop] = torch.rand(rows, generator=g)  # the weak one
        table.similarity[start:stop] = torch.rand(rows, generator=g) * 2 - 1
        table.misaligned_loss[start:stop] = torch.rand(rows, generator=g)
    table.last_step.zero_()
    return table


def timed(fn) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(n: int, repeats: int, dtype: torch.dtype, batch_size: int) -> dict:
    table = filled_table(n, dtype)
    samplers = {p: MidasBatchSampler(n, batch_size, policy=p, stats=table, seed=1) for p in POLICIES}
    best = {name: float("inf") for name in ("randperm", *POLICIES)}
    plan_bytes = 0
    for repeat in range(repeats):
        seconds, perm = timed(lambda: torch.randperm(n))
        best["randperm"] = min(best["randperm"], seconds)
        del perm
        for policy, sampler in samplers.items():
            seconds, plan = timed(lambda s=sampler, e=repeat: s.plan_epoch(e))
            best[policy] = min(best[policy], seconds)
            if policy == "hard":
                assert plan.policy == "hard" and plan.order.numel() == n
                plan_bytes = plan.order.numel() * plan.order.element_size()
                plan_bytes += plan.snapshot.numel() * plan.snapshot.element_size()
            del plan
    wrs_seconds = None
    if n <= MULTINOMIAL_LIMIT:
        weights = table.similarity.double().add_(1.0).div_(2.0).add_(1.0)  # the hard-sample weight
        wrs = WeightedRandomSampler(weights, n, replacement=True, generator=torch.Generator().manual_seed(1))
        wrs_seconds, drawn = timed(lambda: list(wrs))
        assert len(drawn) == n
        del drawn, weights
    ratio = {p: round(best[p] / best["randperm"], 3) for p in POLICIES}
    return {
        "benchmark": "sampler_scale",
        "n": n,
        "randperm_s": round(best["randperm"], 4),
        "uniform_ratio": ratio["uniform"],
        "hard_ratio": ratio["hard"],
        "weak_modality_ratio": ratio["weak_modality"],
        "weighted_random_sampler_ratio": None if wrs_seconds is None else round(wrs_seconds / best["randperm"], 3),
        "bytes_per_sample": round((table.nbytes + plan_bytes) / n, 2),
        "stats_dtype": str(dtype).replace("torch.", ""),
        "table_bytes_per_sample": table.bytes_per_sample,
        "plan_s": {p: round(best[p], 4) for p in POLICIES},
        "weighted_random_sampler_s": None if wrs_seconds is None else round(wrs_seconds, 3),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10**6, 10**7, 10**8], help="dataset sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each plan; the best is kept")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="stats table dtype")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    for n in args.n:
        print(json.dumps(measure(n, args.repeats, DTYPES[args.dtype], args.batch_size)), flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
