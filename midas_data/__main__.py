"""Command line: ``python -m midas_data demo`` (also installed as ``midas-data demo``);
``check`` (will MIDAS help this data?), ``shards`` and ``reproduce`` are described by
``--help``.

Trains joint training and MIDAS on the offline printed + spoken digits (one seed), prints a
comparison table of test metrics beside the multi-seed benchmark's figures on the same data
and, as the last line of standard output, one JSON object::

    {"demo": "glyphs_speech", "joint": {"accuracy": ..., "macro_f1": ...,
     "misaligned_accuracy": ..., "per_modality_accuracy": {...}}, "midas": {...},
     "report": "<dir>"}

Progress bars and notes go to standard error. The report folder holds PNG plots,
``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

DATASET_NAME = "glyphs_speech"
JSON_KEYS = ("accuracy", "macro_f1", "misaligned_accuracy", "per_modality_accuracy")
# The setting of benchmarks/accuracy.py on the glyphs data (protocol v2), fixed in advance:
# the paper's lambda 1 and a warm-up of a seventh of training.
DEMO_EPOCHS = 15
DEMO_MIDAS_OPTIONS = {"warmup_epochs": 2, "lam": 1.0}
QUICK = {"epochs": 3, "warmup_epochs": 1, "train": 240, "val": 80, "test": 80}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midas_data", description="MIDAS for imbalanced multimodal learning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train joint training and MIDAS on the offline digits demo and write a report",
        description="Train joint training and MIDAS on printed digits paired with spoken digits "
        "(offline, shipped with the package), compare them on the test split and write a report folder.",
    )
    demo.add_argument("--out", default="midas_demo_report", help="report folder (default: %(default)s)")
    demo.add_argument(
        "--epochs", type=int, default=DEMO_EPOCHS, help="training epochs per method (default: %(default)s)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the model and the batches (benchmark seed)")
    demo.add_argument("--quick", action="store_true", help="a few epochs on a small subset: a smoke test, not a result")
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default: %(default)s; the models are small and one thread is fastest)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_shards_parser(commands)
    _add_reproduce(commands)
    _add_check(commands)
    return parser


def _add_shards_parser(commands: Any) -> None:
    shards = commands.add_parser(
        "shards",
        help="write a dataset as webdataset tar shards with their index (for midas_data.streaming)",
        description="Write a dataset split as webdataset tar shards (one .npy member per modality, the label as "
        ".cls) plus index.json (shard sizes, key -> stats-table slot). Prints one JSON line.",
    )
    shards.add_argument("--dataset", choices=("demo",), default="demo", help="dataset to write (default: demo)")
    shards.add_argument("--split", choices=("train", "val", "test"), default="train", help="split (default: train)")
    shards.add_argument("--out", required=True, help="output folder")
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: %(default)s)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the demo's data split")
    shards.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_shards(args: argparse.Namespace) -> dict[str, Any]:
    from .experiments.demo import load_demo_splits
    from .streaming import write_shards

    dataset = load_demo_splits(seed=args.seed)[args.split]
    index = write_shards(
        dataset,
        args.out,
        ("image", "audio"),
        "label",
        shard_size=args.shard_size,
        prefix=f"{args.dataset}-{args.split}",
        progress=not args.no_progress,
    )
    return {"shards": str(args.out), "num_shards": len(index.shards), "num_samples": index.num_samples}


def _add_reproduce(commands: Any) -> None:
    from .recipes.reproduce import add_arguments

    reproduce = commands.add_parser(
        "reproduce",
        help="train the paper's setup on a copy of CREMA-D, Kinetics-Sounds, UCF-101, Food-101 or CMU-MOSI",
        description="Train the paper's configuration on your copy of a dataset (layouts in docs/recipes.md); "
        "--dry-run checks that every sample reads, --write-shards writes webdataset shards.",
    )
    add_arguments(reproduce)


def run_reproduce_command(args: argparse.Namespace) -> int:
    from .errors import MidasDataError
    from .recipes.reproduce import main_json, run_reproduce

    try:
        summary = run_reproduce(args)
    except (MidasDataError, FileExistsError, FileNotFoundError) as err:
        print(f"midas_data reproduce: error: {err}", file=sys.stderr)
        return 2
    print(main_json(summary), flush=True)
    return 0


CHECK_DEFAULTS = {"epochs": 5, "seeds": 3}
CHECK_QUICK = {"epochs": 1, "seeds": 2, "train": 200, "val": 100}


def _add_check(commands: Any) -> None:
    from .recipes import RECIPES

    check = commands.add_parser(
        "check",
        help="will MIDAS help? train each modality alone and joint training briefly, and compare",
        description="The imbalance check (docs/imbalance_check.md): joint training with probe heads and each "
        "modality alone, a short budget over a few seeds, validation accuracy; per modality the gap between "
        "alone and its head under joint training, with a 95 % interval, and a verdict. Writes a plot and "
        "report.json to --out; the last line of standard output is one JSON object.",
    )
    check.add_argument(
        "--dataset",
        default="demo",
        choices=("demo", *sorted(RECIPES)),
        help="demo: the bundled printed + spoken digits; a recipe's name: your copy under --root",
    )
    check.add_argument("--root", default=None, help="a recipe's dataset folder (docs/recipes.md)")
    check.add_argument("--image-noise", type=float, default=None, help="demo: pixel noise of the images (0.5)")
    check.add_argument("--audio-snr-db", type=float, default=None, help="demo: SNR of the speech in dB (-6)")
    check.add_argument("--modalities", default=None, help="comma-separated modalities to check (default: all)")
    check.add_argument("--seeds", type=int, default=None, help="seeds, at least 2 (default: 3; --quick: 2)")
    check.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 5; --quick: 1)")
    check.add_argument("--max-samples", type=int, default=None, help="recipes: cap the training split")
    check.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="recipes: config override")
    check.add_argument("--out", default="imbalance_check", help="folder for the plot and report.json")
    check.add_argument("--quick", action="store_true", help="2 seeds x 1 epoch on a small subset: a smoke test")
    check.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, tuple[str, ...], Any, str]:
    from . import experiments as training
    from .errors import MidasDataError

    if args.dataset == "demo":
        if args.root is not None:
            raise MidasDataError("--root: the demo data is bundled; --root is for a recipe's dataset")
        from .experiments.demo.glyphs import load_glyph_splits

        knobs = {
            k: v for k, v in (("image_noise", args.image_noise), ("audio_snr_db", args.audio_snr_db)) if v is not None
        }
        raw = load_glyph_splits(seed=0, **knobs)
        if args.quick:
            raw = {name: _subset(raw[name], CHECK_QUICK[name], 0) for name in ("train", "val")}
        modalities = ("image", "audio")
        train, val = (training.cache_dataset(raw[name], modalities) for name in ("train", "val"))
        shapes = {m: tuple(v.shape[1:]) for m, v in train.tensors.items()}
        budget = training.TrainConfig()

        def factory() -> Any:
            return training.build_model(shapes, 10, image_dropout=budget.image_dropout)

        label = DATASET_NAME + "".join(f" {k}={v}" for k, v in knobs.items())
        return train, val, factory, modalities, budget, label
    if args.root is None:
        raise MidasDataError(f"--root: expected the folder of your copy of {args.dataset} (docs/recipes.md)")
    if args.image_noise is not None or args.audio_snr_db is not None:
        raise MidasDataError("--image-noise, --audio-snr-db: only for --dataset demo")
    from .recipes.imbalance import recipe_check_inputs

    cap = CHECK_QUICK["train"] if args.quick and args.max_samples is None else args.max_samples
    train, val, factory, modalities, budget = recipe_check_inputs(
        args.dataset, args.root, overrides=args.set, max_samples=cap
    )
    return train, val, factory, modalities, budget, args.dataset


def run_check_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .errors import MidasDataError
    from .experiments.imbalance import check_imbalance, plot_imbalance

    torch.set_num_threads(max(1, args.threads))
    defaults = CHECK_QUICK if args.quick else CHECK_DEFAULTS
    seeds = defaults["seeds"] if args.seeds is None else args.seeds
    epochs = defaults["epochs"] if args.epochs is None else args.epochs
    try:
        train, val, factory, modalities, budget, label = _check_inputs(args)
        if args.modalities:
            modalities = tuple(m for m in args.modalities.split(",") if m)
        report = check_imbalance(
            factory, train, val, modalities, seeds=seeds, epochs=epochs, config=budget, progress=not args.no_progress
        )
    except (MidasDataError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"midas_data check: error: {message}", file=sys.stderr)
        return 2
    out = Path(args.out)
    plot = plot_imbalance(report, out / "imbalance_check.png", title=f"{label}: {report.verdict}")
    (out / "report.json").write_text(
        json.dumps({"dataset": label, "quick": bool(args.quick), **report.to_dict()}, indent=1)
    )
    print(f"imbalance check on {label} (train {len(train)}, val {len(val)}):")
    print(report.table())
    if args.quick:
        print("quick mode: a smoke test on a small subset, not a verdict to act on")
    summary = {"check": label, "verdict": report.verdict, "weak": report.weak, "quick": bool(args.quick)}
    summary["modalities"] = {
        r.modality: {"alone": r.alone, "head": r.head, "gap": r.gap["mean"], "gap_low": r.gap["low"],
                     "gap_high": r.gap["high"], "verdict": r.verdict}
        for r in report.rows
    }  # fmt: skip
    summary["plot"] = str(plot)
    print(json.dumps(summary), flush=True)
    return 0


def _subset(dataset: Any, size: int, seed: int) -> Any:
    import torch
    from torch.utils.data import Subset

    if size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:size].tolist())


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {key: metrics[key] for key in JSON_KEYS}
    return json.loads(json.dumps(out, default=float))


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from . import experiments as training
    from .experiments import report
    from .experiments.demo.glyphs import load_glyph_splits

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    log = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, file=sys.stderr, flush=True))
    epochs = QUICK["epochs"] if args.quick else args.epochs
    options = dict(DEMO_MIDAS_OPTIONS)
    if args.quick:
        options["warmup_epochs"] = QUICK["warmup_epochs"]
    if epochs <= options["warmup_epochs"]:
        raise SystemExit(
            f"--epochs: expected more than the {options['warmup_epochs']} warm-up epochs of MIDAS, got {epochs}"
        )

    log("loading the printed + spoken digits and computing log-mel spectrograms ...")
    raw = load_glyph_splits(seed=0)  # the benchmark's data; --seed seeds the model and the batches
    data_note = repr(raw["train"])
    if args.quick:
        raw = {name: _subset(ds, QUICK[name], args.seed) for name, ds in raw.items()}
    modalities = ("image", "audio")
    splits = {name: training.cache_dataset(ds, modalities) for name, ds in raw.items()}
    num_classes = 10
    log(f"train/val/test = {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} samples, {epochs} epochs")

    # Protocol v2: BatchNorm statistics re-estimated on the training split before evaluation.
    config = training.TrainConfig(epochs=epochs, seed=args.seed, bn_protocols=("precise",))
    runs = {}
    for name in ("joint", "midas"):
        runs[name] = training.run(
            name, splits, num_classes, config, options=options, progress=not args.no_progress, desc=f"{name:>5}"
        )

    tests = {name: result.test for name, result in runs.items()}
    print(f"MIDAS demo on {DATASET_NAME}: test split, best-on-validation checkpoint (percent)")
    print(report.comparison_table(tests))
    reference = _benchmark_reference(args, epochs, options)
    for line in reference:
        print(line)
    paths = report.write_report(
        args.out,
        dataset=DATASET_NAME,
        runs={name: result.as_report() for name, result in runs.items()},
        modalities=modalities,
        warmup_epochs=options["warmup_epochs"],
        notes=[
            f"Data: {data_note}.",
            "",
            f"Budget: {epochs} epochs, batch {config.batch_size}, SGD lr {config.lr} momentum {config.momentum}, "
            f"seed {args.seed}. MIDAS: {options}. BatchNorm statistics re-estimated on the training split "
            "before every evaluation." + (" Quick mode: a small subset, not a result." if args.quick else ""),
            "",
            *reference,
        ],
        extra={"config": vars(config), "midas_options": options, "quick": bool(args.quick)},
    )
    log(f"report written to {paths['summary'].parent} in {time.perf_counter() - started:.0f} s")
    return {"demo": DATASET_NAME, **{name: _compact(test) for name, test in tests.items()}, "report": str(args.out)}


def _benchmark_reference(args: argparse.Namespace, epochs: int, options: dict[str, Any]) -> list[str]:
    """Lines that put this one-seed run beside the multi-seed benchmark on the same data."""
    from .experiments.demo.glyphs import BENCHMARK_REFERENCE

    lines = [
        f"This is one seed ({args.seed}); seed-to-seed spread is about as large as the differences. The benchmark's "
        f"seed-{args.seed} runs below used the same seed and code, but floating-point results differ across machines "
        "(BLAS, thread count, CPU features): expect this run within about a point of them, not equal to them."
    ]
    if not BENCHMARK_REFERENCE.is_file():
        return lines + ["(no benchmark reference shipped; run benchmarks/accuracy.py)"]
    ref = json.loads(BENCHMARK_REFERENCE.read_text())
    same = not args.quick and epochs == ref["epochs"] and options == ref["midas_options"]
    if not same:
        lines.append("This run's setting differs from the benchmark's; its figures are not comparable:")
    lines.append(
        f"benchmarks/accuracy.py on the same data, {ref['seeds']} seeds, {ref['epochs']} epochs (test accuracy, %):"
    )
    for method, row in ref["methods"].items():
        seed_figure = row["per_seed"][args.seed] if args.seed < len(row["per_seed"]) else None
        at_seed = f", seed {args.seed}: {100 * seed_figure:.1f}" if seed_figure is not None else ""
        lines.append(f"  {method:<12} {100 * row['mean']:.1f} ± {100 * row['std']:.1f}{at_seed}")
    for name, diff in ref["paired"].items():
        lines.append(
            f"  {name}: {100 * diff['mean']:+.1f} points, 95% interval [{100 * diff['low']:+.1f}, "
            f"{100 * diff['high']:+.1f}] over {ref['seeds']} paired seeds ({diff['verdict']})"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        summary = run_demo(args)
        print(json.dumps(summary), flush=True)
    elif args.command == "shards":
        print(json.dumps(run_shards(args)), flush=True)
    elif args.command == "reproduce":
        return run_reproduce_command(args)
    elif args.command == "check":
        return run_check_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
