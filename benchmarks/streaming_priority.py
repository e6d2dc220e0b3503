"""Prioritised against uniform MIDAS batches on a stream: the demo data written as shards.

The training split of the offline demo is written as webdataset shards (``write_shards``)
and streamed through ``MidasBatches`` with 2 DataLoader workers. Every run trains the same
model (``build_model``), optimizer and budget as ``benchmarks/accuracy.py`` with MIDAS's
tuned demo options; only the stage's policy differs. The prioritised policies draw each
window of the stream with priority from the ``StatsTable`` (which the training step
updates after every step, and the workers read through shared memory) and weight the loss
by the draws' importance weights. The best-on-validation checkpoint is tested once.

The feedback lag is measured on every batch: the number of table updates made between the
moment the batch's window read the table (``batch.extras["stats_updates"]``) and the step
that trains on the batch.

    python benchmarks/streaming_priority.py [--epochs 20] [--seeds 0,1,2] [--policies uniform,hard,weak_modality]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch

from midas_data import MidasObjective, StatsTable
from midas_data import experiments as training
from midas_data.experiments.demo import load_demo_splits
from midas_data.experiments.evaluation import evaluate, misaligned_plan
from midas_data.streaming import MidasBatches, write_shards

MODALITIES = ("image", "audio")
NUM_CLASSES = 10
OPTIONS = {"warmup_epochs": 2, "lam": 0.3}  # the demo's tuned MIDAS options (benchmarks/results/tuned.json)


def train_one(policy: str, seed: int, index, splits, config: training.TrainConfig, workers: int) -> dict:
    import webdataset as wds

    shapes = {m: tuple(v.shape[1:]) for m, v in splits["val"].tensors.items()}
    model = training.build_model(shapes, NUM_CLASSES, seed=seed, image_dropout=config.image_dropout)
    objective = MidasObjective(NUM_CLASSES, MODALITIES, **OPTIONS)
    optimizer = config.optimizer(model)
    table = StatsTable(index.num_samples, MODALITIES, dtype=torch.float32)
    stage = MidasBatches(
        MODALITIES, batch_size=config.batch_size, index=index, stats=table, policy=policy, seed=seed, window=256
    )
    source = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=stage.split_by_node, empty_check=False)
    loader = wds.WebLoader(source.compose(stage), batch_size=None, num_workers=workers, persistent_workers=True)
    val_plan = misaligned_plan(splits["val"].labels, len(MODALITIES), config.eval_seed)
    best_acc, best_state, lags = -1.0, None, []
    torch.manual_seed(seed)
    for epoch in range(config.epochs):
        stage.set_epoch(epoch)
        objective.set_epoch(epoch)
        model.train()
        for batch in loader:
            output = model(batch.inputs)
            weights = batch.extras["importance_weights"]
            loss, info = objective(output, batch, fuse=model.fuse, sample_weights=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lags.append(table.num_updates - int(batch.extras["stats_updates"]))
            table.update(batch.ids, info["per_sample"])
        accuracy = evaluate(model, splits["val"], val_plan)["accuracy"]
        if accuracy > best_acc:
            best_acc, best_state = accuracy, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = evaluate(model, splits["test"], seed=config.eval_seed)
    steady = lags[len(lags) // config.epochs :] or lags  # after the first epoch
    return {
        "test_accuracy": test["accuracy"],
        "misaligned_accuracy": test["misaligned_accuracy"],
        "image_accuracy": test["per_modality_accuracy"]["image"],
        "val_accuracy": best_acc,
        "lag_mean": statistics.fmean(steady),
        "lag_max": max(steady),
        "steps_per_epoch": len(lags) // config.epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--policies", default="uniform,hard,weak_modality")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    policies = args.policies.split(",")
    raw = load_demo_splits(seed=0)
    splits = {name: training.cache_dataset(raw[name], MODALITIES) for name in ("val", "test")}
    folder = tempfile.TemporaryDirectory()
    index = write_shards(raw["train"], folder.name, MODALITIES, shard_size=args.shard_size, progress=False)
    started = time.perf_counter()
    runs = {p: [] for p in policies}
    for seed in seeds:
        for policy in policies:
            config = training.TrainConfig(epochs=args.epochs, seed=seed)
            runs[policy].append(train_one(policy, seed, index, splits, config, args.workers))

    def summary(values: list[dict], key: str) -> dict:
        xs = [v[key] for v in values]
        return {"mean": round(statistics.fmean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0}

    keys = ("test_accuracy", "misaligned_accuracy", "image_accuracy", "val_accuracy", "lag_mean", "lag_max")
    result = {
        "benchmark": "streaming_priority",
        "dataset": "demo (train split as shards)",
        "samples": index.num_samples,
        "shards": len(index.shards),
        "epochs": args.epochs,
        "seeds": seeds,
        "workers": args.workers,
        "window": 256,
        "steps_per_epoch": runs[policies[0]][0]["steps_per_epoch"],
        **{p: {k: summary(v, k) for k in keys} for p, v in runs.items()},
        "per_seed_test_accuracy": {p: [round(r["test_accuracy"], 4) for r in v] for p, v in runs.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
