"""Accuracy of MIDAS against baselines on the offline demo data and its variants.

Every method gets the same model, optimizer, learning rate, batch size, epochs and batch
order; each seed changes the model initialisation and the batch order (the data split is
fixed). The checkpoint with the best validation accuracy is tested once. Method
hyper-parameters come from ``--tune``, which looks at validation accuracy only.

    python benchmarks/accuracy.py --tune                 # validation sweep -> benchmarks/results/tuned.json
    python benchmarks/accuracy.py                        # all methods, 3 seeds -> benchmarks/results/accuracy.md
    python benchmarks/accuracy.py --datasets demo --methods joint,midas --seeds 1 --epochs 5

Prints one JSON line per dataset and method (means and standard deviations over seeds).
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

from midas_data import experiments as training
from midas_data.experiments.demo.variants import DESCRIPTIONS, load_variant_splits

MODALITIES = ("image", "audio")
NUM_CLASSES = 10
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_METHODS = (
    "joint",
    "joint_heads",
    "mixup",
    "ogm_ge",
    "midas",
    "midas_no_warmup",
    "midas_no_weak",
    "midas_no_hard",
    "midas_sampler_hard",
    "midas_sampler_weak",
)
# Used when no tuned.json exists: the paper's MIDAS defaults scaled to a short budget.
FALLBACK_OPTIONS = {"warmup_epochs": 2, "lam": 1.0, "mixup_concentration": 1.0, "ogm_alpha": 0.5}
# The validation sweep of --tune: method -> option name -> candidates (full grid per method).
TUNING_GRID: dict[str, dict[str, list[Any]]] = {
    "midas": {"warmup_epochs": [2, 5], "lam": [0.3, 1.0]},
    "mixup": {"mixup_concentration": [0.4, 1.0]},
    "ogm_ge": {"ogm_alpha": [0.3, 0.8]},
}
TUNING_SEEDS = (0, 1)


DATA_SETTINGS: dict[str, str] = {}  # dataset -> repr of its training split, for the table


def load_splits(name: str) -> dict[str, training.InMemoryDataset]:
    raw = load_variant_splits(name, seed=0)
    DATA_SETTINGS[name] = repr(raw["train"])
    return {split: training.cache_dataset(ds, MODALITIES) for split, ds in raw.items()}


def _grid(options: dict[str, list[Any]]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in options.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def tune(datasets: list[str], epochs: int, out: Path) -> dict[str, dict[str, Any]]:
    """Pick each method's options by mean best validation accuracy over TUNING_SEEDS."""
    chosen: dict[str, dict[str, Any]] = {}
    log: dict[str, list[dict[str, Any]]] = {}
    for dataset in datasets:
        splits = load_splits(dataset)
        options = dict(FALLBACK_OPTIONS)
        for method, grid in TUNING_GRID.items():
            scored = []
            for combo in _grid(grid):
                vals = []
                for seed in TUNING_SEEDS:
                    config = training.TrainConfig(epochs=epochs, seed=seed)
                    model = training.build_model(
                        {m: splits["train"].tensors[m].shape[1:] for m in MODALITIES},
                        NUM_CLASSES,
                        seed=seed,
                        image_dropout=config.image_dropout,
                    )
                    method_obj = training.make_method(method, NUM_CLASSES, MODALITIES, {**options, **combo})
                    result = training.fit(method_obj, model, splits["train"], splits["val"], config)
                    vals.append(result.best_val_accuracy)
                score = statistics.mean(vals)
                scored.append((score, combo))
                entry = {"dataset": dataset, "method": method, "options": combo, "val_accuracy_mean": score}
                log.setdefault(dataset, []).append(entry)
                print(json.dumps({"benchmark": "accuracy_tuning", **entry}), flush=True)
            # Highest validation accuracy; the first candidate wins ties (grid order).
            best = max(scored, key=lambda sc: sc[0])[1]
            options.update(best)
        chosen[dataset] = options
    # Merge with the datasets tuned before, so that one dataset can be (re)tuned alone.
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if previous and previous.get("epochs") != epochs:
        previous = {}
    merged = {
        "epochs": epochs,
        "seeds": list(TUNING_SEEDS),
        "chosen": {**previous.get("chosen", {}), **chosen},
        "log": {**previous.get("log", {}), **log},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1) + "\n")
    return chosen


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def benchmark(
    datasets: list[str], methods: list[str], seeds: int, epochs: int, options: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for dataset in datasets:
        splits = load_splits(dataset)
        opts = options.get(dataset, FALLBACK_OPTIONS)
        for method in methods:
            tests, vals, seconds = [], [], []
            for seed in range(seeds):
                config = training.TrainConfig(epochs=epochs, seed=seed)
                result = training.run(method, splits, NUM_CLASSES, config, options=opts)
                tests.append(result.test)
                vals.append(result.fit.best_val_accuracy)
                seconds.append(result.fit.seconds)
            row: dict[str, Any] = {"benchmark": "accuracy", "dataset": dataset, "method": method}
            for key in ("accuracy", "macro_f1", "misaligned_accuracy"):
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([t[key] for t in tests])
            row["per_modality_accuracy_mean"] = {
                m: statistics.mean(t["per_modality_accuracy"][m] for t in tests) for m in MODALITIES
            }
            row["modality_confidence_mean"] = {
                m: statistics.mean(t["modality_confidence"][m] for t in tests) for m in MODALITIES
            }
            row["val_accuracy_mean"] = statistics.mean(vals)
            row["seconds_per_run"] = statistics.mean(seconds)
            row["seeds"] = seeds
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], epochs: int, options: dict[str, dict[str, Any]]) -> str:
    """One table per dataset, percent, mean ± std over seeds, plus the gap to joint training."""
    lines = [
        "<!-- written by benchmarks/accuracy.py -->",
        f"Test split, best-on-validation checkpoint, {rows[0]['seeds'] if rows else 0} seeds, {epochs} epochs. "
        "Percent; mean ± std over seeds. Δ joint: accuracy minus joint training's.",
        "",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        part = [r for r in rows if r["dataset"] == dataset]
        base = next((r["accuracy_mean"] for r in part if r["method"] == "joint"), None)
        lines += [
            f"### {dataset}: {DESCRIPTIONS.get(dataset, '')}",
            "",
            f"Data: `{DATA_SETTINGS.get(dataset, '?')}`",
            "",
            f"Options (chosen on validation): `{json.dumps(options.get(dataset, FALLBACK_OPTIONS))}`",
            "",
            "| Method | Accuracy | Δ joint | Macro-F1 | Misaligned acc. | image head | audio head | Val acc. |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in part:
            delta = "" if base is None or r["method"] == "joint" else f"{100 * (r['accuracy_mean'] - base):+.1f}"
            lines.append(
                f"| {r['method']} | {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} | {delta} "
                f"| {100 * r['macro_f1_mean']:.1f} ± {100 * r['macro_f1_std']:.1f} "
                f"| {100 * r['misaligned_accuracy_mean']:.1f} ± {100 * r['misaligned_accuracy_std']:.1f} "
                f"| {100 * r['per_modality_accuracy_mean']['image']:.1f} "
                f"| {100 * r['per_modality_accuracy_mean']['audio']:.1f} "
                f"| {100 * r['val_accuracy_mean']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets", default="demo,class_split,image_dominant", help="comma-separated variants (default: %(default)s)"
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per run, the same for every method")
    parser.add_argument("--out", default=str(RESULTS / "accuracy.md"), help="markdown table file")
    parser.add_argument("--options", default=str(RESULTS / "tuned.json"), help="tuned options (from --tune)")
    parser.add_argument("--tune", action="store_true", help="run the validation sweep and write --options")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in training.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; expected some of {sorted(training.METHODS)}")
    options_path = Path(args.options)
    started = time.perf_counter()
    if args.tune:
        tune(datasets, args.epochs, options_path)
        print(f"tuned options written to {options_path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 0
    options: dict[str, dict[str, Any]] = {}
    if options_path.is_file():
        options = json.loads(options_path.read_text())["chosen"]
    else:
        print(f"no {options_path}; using the fallback options {FALLBACK_OPTIONS}", file=sys.stderr)
    rows = benchmark(datasets, methods, args.seeds, args.epochs, options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, args.epochs, options))
    print(f"table written to {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
