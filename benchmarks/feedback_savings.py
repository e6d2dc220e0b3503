"""Does the feedback loop pay for itself? Pruning (``policy="prune"``) against full epochs.

Protocol v2 (docs/benchmarks.md): the glyphs demo data, the CNN late-fusion model, 15
epochs, batch 64, SGD, best-on-validation checkpoint, BatchNorm statistics re-estimated
before every evaluation (``precise``), seeds 0..4, paired per seed. Two comparisons, with
the same number of epochs:

* ``midas_prune`` (MIDAS on pruned epochs, importance weights in the loss) against
  ``midas`` (uniform MIDAS);
* ``joint_prune`` (joint training on pruned epochs: the pruning alone) against ``joint``.

The pruning options are :class:`~midas_data.feedback.prune.PrunePolicy`'s defaults
(InfoBatch's published ratio 0.5 and a full-data tail of an eighth, score = the aligned
fusion loss), fixed before any run; nothing here reads a test figure to choose anything.
One alternative was considered, by a rule written down before its runs: ``--prune-ratio
0.7`` replaces 0.5 for a comparison if, on seeds 0 and 1, its sample steps are at most 0.70
of the full run's and its mean validation accuracy (``precise``, the selected checkpoint)
is no more than 0.3 points below the full run's; only then are its seeds 2-4 run and its
test figures printed (``--first-seed``).

A second alternative for MIDAS, written down before its runs: ratio 0.7 failed on
validation with misaligned rows weighted up to 11 (the product of two sources' weights of
about 3.3). ``--pair-weighting mean`` (``MidasObjective(pair_weighting="mean")``: the mean
of the sources' weights) with ``--prune-ratio 0.65`` and with ``0.7`` are run on seeds 0
and 1 (validation only); the one of them that meets the rule above replaces the defaults
for the MIDAS comparison (the larger sample-steps saving if both do), and only then are its
seeds 2-4 run. Neither: the MIDAS comparison stays at the defaults.

For each seed the pruned and the full run are trained one after the other in the same
process (the order alternates with the seed), so their wall times are measured side by
side on the same machine. Every run is appended to ``results/feedback_savings.jsonl`` and
skipped when met again (``--worker I/N`` splits the runs over processes).

Prints one JSON line per comparison: ``sample_steps_ratio`` (aligned rows forwarded and
backpropagated, pruned / full), ``wall_ratio`` (the whole fit, per-epoch validation
included, pruned / full, mean of the per-seed ratios), ``train_wall_ratio`` (the training
steps alone), the paired accuracy difference in points with its 95 % interval, and the
seeds it rests on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accuracy import PROTOCOLS, RESULTS, load_splits, method_options

from midas_data import experiments as training
from midas_data.experiments.paired import paired_difference, verdict

LOG = RESULTS / "feedback_savings.jsonl"
NUM_CLASSES = 10
EPOCHS = 15
COMPARISONS = (("midas_prune", "midas"), ("joint_prune", "joint"))
GOAL = {"sample_steps_ratio": 0.70, "wall_ratio": 0.80, "mean_points": -0.3, "low_points": -1.0}


def train_and_test(
    method_name: str,
    seed: int,
    splits: dict[str, Any],
    options: dict[str, Any],
    train: Any = None,
    on_epoch: Any = None,
) -> tuple[dict[str, Any], Any]:
    """One protocol-v2 run with the rows and the time of its training steps counted.
    Returns the record and the method (its stats table, for the bad-pair benchmark).
    ``on_epoch(method, epoch)``, if given, is called as each epoch starts."""
    train = splits["train"] if train is None else train
    config = training.TrainConfig(epochs=EPOCHS, seed=seed, bn_protocols=PROTOCOLS)
    modalities = list(train.tensors)
    shapes = {m: tuple(v.shape[1:]) for m, v in train.tensors.items()}
    model = training.build_model(shapes, NUM_CLASSES, seed=seed, image_dropout=config.image_dropout)
    method = training.make_method(method_name, NUM_CLASSES, modalities, options)
    counted = {"rows": 0, "seconds": 0.0}
    loss, update = method.loss, method.update

    def timed_loss(model: Any, batch: Any) -> Any:
        counted["started"] = time.perf_counter()
        return loss(model, batch)

    def timed_update(model: Any, optimizer: Any, batch: Any, value: Any, info: Any) -> None:
        update(model, optimizer, batch, value, info)
        counted["rows"] += int(batch.labels.shape[0])
        counted["seconds"] += time.perf_counter() - counted["started"]

    method.loss, method.update = timed_loss, timed_update  # type: ignore[method-assign]
    if on_epoch is not None:
        start_epoch = method.start_epoch

        def hooked_start(epoch: int) -> None:
            on_epoch(method, epoch)
            start_epoch(epoch)

        method.start_epoch = hooked_start  # type: ignore[method-assign]
    result = training.fit(method, model, train, splits["val"], config)
    tests = {}
    for protocol, chosen in result.selected.items():
        model.load_state_dict(chosen["state"])
        tests[protocol] = training.evaluate(model, splits["test"], seed=config.eval_seed)["accuracy"]
    record = {
        "method": method_name,
        "seed": seed,
        "epochs": EPOCHS,
        "options": options,
        "test_accuracy": tests,
        "val_accuracy": {p: s["val_accuracy"] for p, s in result.selected.items()},
        "best_epoch": {p: s["epoch"] for p, s in result.selected.items()},
        "sample_steps": counted["rows"],
        "train_seconds": counted["seconds"],
        "fit_seconds": result.seconds,
    }
    return record, method


def _key(method: str, seed: int, options: dict[str, Any]) -> str:
    return json.dumps({"method": method, "seed": seed, "epochs": EPOCHS, "options": options}, sort_keys=True)


def read_log(path: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[_key(record["method"], record["seed"], record["options"])] = record
    return runs


def summary(
    runs: dict[str, dict[str, Any]], pruned: str, full: str, seeds: int, options: dict[str, Any], prune: dict[str, Any]
) -> dict:
    pairs = []
    for seed in range(seeds):
        a, b = runs.get(_key(pruned, seed, {**options, **prune})), runs.get(_key(full, seed, options))
        if a is None or b is None:
            break
        pairs.append((a, b))
    row: dict[str, Any] = {"benchmark": "feedback_savings", "pruned": pruned, "full": full, "seeds": len(pairs)}
    if len(pairs) < 1:
        return row
    acc_a = [a["test_accuracy"]["precise"] for a, _ in pairs]
    acc_b = [b["test_accuracy"]["precise"] for _, b in pairs]
    row["sample_steps_ratio"] = round(
        sum(a["sample_steps"] for a, _ in pairs) / sum(b["sample_steps"] for _, b in pairs), 4
    )
    row["wall_ratio"] = round(statistics.mean(a["fit_seconds"] / b["fit_seconds"] for a, b in pairs), 4)
    row["train_wall_ratio"] = round(statistics.mean(a["train_seconds"] / b["train_seconds"] for a, b in pairs), 4)
    row["accuracy_pruned_mean"] = round(100 * statistics.mean(acc_a), 2)
    row["accuracy_full_mean"] = round(100 * statistics.mean(acc_b), 2)
    if len(pairs) >= 2:
        diff = paired_difference(acc_a, acc_b)
        row["accuracy_difference_points"] = {
            "mean": round(100 * diff["mean"], 2),
            "low": round(100 * diff["low"], 2),
            "high": round(100 * diff["high"], 2),
            "verdict": verdict(diff),
        }
        row["goal_met"] = (
            row["sample_steps_ratio"] <= GOAL["sample_steps_ratio"]
            and row["wall_ratio"] <= GOAL["wall_ratio"]
            and 100 * diff["mean"] >= GOAL["mean_points"]
            and 100 * diff["low"] >= GOAL["low_points"]
        )
    row["per_seed_difference_points"] = [round(100 * (x - y), 2) for x, y in zip(acc_a, acc_b)]
    row["bn_protocol"] = "precise"
    row["epochs"] = EPOCHS
    row["prune"] = prune or "PrunePolicy defaults (ratio 0.5, tail 0.125, score loss)"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--worker", default="0/1", help="I/N: run every N-th seed pair starting at I")
    parser.add_argument("--log", default=str(LOG))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--comparisons", default="midas,joint", help="which comparisons: midas, joint")
    parser.add_argument("--prune-ratio", type=float, default=None, help="PrunePolicy ratio (default: its own)")
    parser.add_argument(
        "--pair-weighting", choices=("product", "mean"), default=None, help="MIDAS's pair_weighting (default: its own)"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds from this one (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    log = Path(args.log)
    options = method_options("glyphs", EPOCHS)
    prune = {} if args.prune_ratio is None else {"prune_ratio": args.prune_ratio}
    if args.pair_weighting is not None:
        prune["pair_weighting"] = args.pair_weighting
    wanted = [c for c in COMPARISONS if c[1] in args.comparisons.split(",")]
    index, count = (int(x) for x in args.worker.split("/"))
    if not args.report_only:
        splits = load_splits("glyphs")
        jobs = [(seed, pair) for seed in range(args.first_seed, args.seeds) for pair in wanted]
        for seed, pair in jobs[index::count]:
            order = pair if seed % 2 == 0 else pair[::-1]  # alternate which one runs first
            for method in order:
                run_options = {**options, **prune} if method.endswith("_prune") else options
                if _key(method, seed, run_options) in read_log(log):
                    continue
                record, _ = train_and_test(method, seed, splits, run_options)
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"[{index}/{count}] {method} seed {seed}: val {100 * record['val_accuracy']['precise']:.1f}, "
                    f"{record['sample_steps']} rows, {record['fit_seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    runs = read_log(log)
    for pruned, full in wanted:
        print(json.dumps(summary(runs, pruned, full, args.seeds, options, prune)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
