"""``python -m midas_data reproduce``: the paper's setup on a user's copy of a dataset.

Scans the root in the recipe's layout, re-splits 70/10/20 per class with a fixed seed (or,
for a dataset that ships its split, MM-IMDB and CMU-MOSEI, takes that split), and then
either prints the counts and the first batch's shapes after reading every sample
(``--dry-run``), writes webdataset shards (``--write-shards``), or trains the paper's
configuration with checkpoints and writes the demo's report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MidasDataError
from .common import RecipeDataset, Scan
from .config import RecipeConfig, apply_overrides, recipe_config

__all__ = [
    "add_arguments",
    "run_reproduce",
    "load_tokenizer",
    "count_table",
    "SplitScan",
    "scan_splits",
    "dataset_maker",
]


@dataclass
class SplitScan(Scan):
    """The scan of a dataset that ships its own split (MM-IMDB, CMU-MOSEI): the sample
    indices per split (``train``, ``val``, ``test``), how to build a split's dataset
    (``dataset(samples, readers, train=...)``), whether a label is a tuple of class ids
    (multi-label), and lines for the dry run (e.g. what the scan left out)."""

    splits: dict[str, list[int]] = field(default_factory=dict)
    dataset: Callable[..., RecipeDataset] = RecipeDataset
    multilabel: bool = False
    notes: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import RECIPES

    parser.add_argument("--dataset", required=True, choices=sorted(RECIPES), help="which recipe")
    parser.add_argument("--root", required=True, help="the dataset's folder, in the layout of docs/recipes.md")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s), e.g. cuda or cuda:1")
    parser.add_argument("--epochs", type=int, default=None, help="override the paper's epoch count")
    parser.add_argument("--out", default=None, help="run folder: checkpoints and report (default: reproduce_DATASET)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="read every sample, print counts and shapes, exit")
    parser.add_argument("--write-shards", metavar="DIR", default=None, help="write webdataset shards per split, exit")
    parser.add_argument("--skip-unreadable", action="store_true", help="skip samples with missing or unreadable files")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a config field")
    parser.add_argument("--print-config", action="store_true", help="print the config (after overrides) and exit")
    parser.add_argument(
        "--tokenizer", default=None, help="Food-101, MM-IMDB: module:callable returning a tokenizer or one"
    )
    parser.add_argument(
        "--pretrained", action="append", default=[], metavar="MODALITY=PATH", help="local encoder weights"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_tokenizer(spec: str | None) -> Any:
    """``module:name`` -> that object: a callable ``text -> ids`` (a Hugging Face tokenizer
    loaded from a local folder works); a class is instantiated with no arguments."""
    if spec is None:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise MidasDataError(f"--tokenizer {spec!r}: expected module:callable, e.g. mypkg.tok:make_tokenizer")
    target = getattr(importlib.import_module(module_name), attr)
    if isinstance(target, type):
        target = target()
    return target


def _has(label: object, class_id: int) -> bool:
    return class_id in label if isinstance(label, tuple) else label == class_id


def count_table(scan: Scan, splits: dict[str, list[int]]) -> str:
    """Samples per class and split, as aligned text columns (multi-label: the samples
    that carry the class; ``total`` counts each sample once)."""
    labels = scan.labels()
    width = max(len(c) for c in scan.classes + ["total"])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
    for label, name in enumerate(scan.classes):
        counts = [sum(1 for i in idx if _has(labels[i], label)) for idx in splits.values()]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>6}" for c in counts))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{len(idx):>6}" for idx in splits.values()))
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> RecipeConfig:
    config = apply_overrides(recipe_config(args.dataset), args.set)
    if args.epochs is not None:
        config = apply_overrides(config, [f"epochs={args.epochs}"])
    return config


def _multilabel(scan: Scan) -> bool:
    return isinstance(scan, SplitScan) and scan.multilabel


def scan_splits(scan: Scan, config: RecipeConfig) -> dict[str, list[int]]:
    """Sample indices per split: the dataset's own split, else the 70/10/20 re-split."""
    from .split import stratified_split

    if isinstance(scan, SplitScan):
        return scan.splits
    return stratified_split(scan.labels(), config.split, config.split_seed)


def dataset_maker(scan: Scan) -> Callable[..., RecipeDataset]:
    """How a split's dataset is built: ``maker(samples, readers, train=...)``."""
    return scan.dataset if isinstance(scan, SplitScan) else RecipeDataset


def _split_words(scan: Scan, config: RecipeConfig) -> str:
    if isinstance(scan, SplitScan):
        return "the dataset's own split"
    return f"70/10/20 re-split, seed {config.split_seed}"


def _datasets(
    scan: Scan, splits: dict[str, list[int]], readers: dict[str, Any], train: bool = True
) -> dict[str, RecipeDataset]:
    """One dataset per split; ``train=False`` reads the training split as evaluation does."""
    make = dataset_maker(scan)
    return {
        name: make([scan.samples[i] for i in idx], readers, train=train and name == "train")
        for name, idx in splits.items()
    }


def _first_batch(scan: Scan, dataset: RecipeDataset, config: RecipeConfig) -> dict[str, list[int]]:
    """Shapes of the first training batch, through the MIDAS loader."""
    from ..loader import midas_loader
    from .train import shapes_of

    num_classes = len(scan.classes) if _multilabel(scan) else None
    loader = midas_loader(
        dataset, config.modalities, "label", batch_size=config.batch_size, seed=0, num_classes=num_classes
    )
    return shapes_of(next(iter(loader)), config.modalities)


def _read_all(datasets: dict[str, RecipeDataset], config: RecipeConfig, progress: bool) -> None:
    """Decode every sample once (the dry run's check), through workers like training."""
    from torch.utils.data import DataLoader

    for name, dataset in datasets.items():
        loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers)
        iterator: Any = loader
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc=f"reading {name}", unit="batch", file=sys.stderr)
        for _ in iterator:
            pass


def run_reproduce(args: argparse.Namespace) -> dict[str, Any]:
    from . import RECIPES

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    recipe = RECIPES[args.dataset]
    config = _config(args)
    if args.print_config:
        print(config.describe())
        return {"dataset": args.dataset, "config": config.to_dict()}
    progress = not args.no_progress
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    root = Path(args.root)
    scan = recipe.scan(root, config, skip_unreadable=args.skip_unreadable, check_media=args.skip_unreadable)
    if args.skip_unreadable:
        log(scan.skipped_summary())
    splits = scan_splits(scan, config)
    tokenizer = load_tokenizer(args.tokenizer)
    datasets = _datasets(scan, splits, recipe.readers(config, tokenizer))
    summary: dict[str, Any] = {
        "dataset": args.dataset,
        "samples": {name: len(idx) for name, idx in splits.items()},
        "classes": scan.classes,
        "skipped": {"count": len(scan.skipped), "first": scan.skipped[:10]},
    }
    log(f"{recipe.title}: {len(scan.samples)} samples, {len(scan.classes)} classes under {root}")

    if args.dry_run:
        print(f"{recipe.title} config (--set NAME=VALUE overrides a field):")
        print("  " + config.describe().replace("\n", "\n  "))
        print(f"{recipe.title} under {root}: samples per class and split ({_split_words(scan, config)})")
        print(count_table(scan, splits))
        for line in scan.notes if isinstance(scan, SplitScan) else []:
            print(line)
        _read_all(datasets, config, progress)
        shapes = _first_batch(scan, datasets["train"], config)
        print("first training batch: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        print(f"read every sample of {len(scan.samples)} in {time.perf_counter() - started:.1f} s")
        return {**summary, "first_batch": shapes}

    if args.write_shards:
        from midas_data.streaming.writer import write_shards  # another part of the package; imported when used

        written = {}
        # Deterministic preprocessing for every split: middle frames, no flips.
        for name, plain in _datasets(scan, splits, recipe.readers(config, tokenizer), train=False).items():
            target = Path(args.write_shards) / name
            index = write_shards(
                plain, target, list(config.modalities), "label", progress=progress, multilabel=_multilabel(scan)
            )
            written[name] = {"folder": str(target), "index": repr(index)}
        log(f"shards written under {args.write_shards}")
        return {**summary, "shards": written}

    return _train(args, config, recipe, scan, datasets, tokenizer, summary, log, progress)


def _train(
    args: argparse.Namespace,
    config: RecipeConfig,
    recipe: Any,
    scan: Scan,
    datasets: dict[str, RecipeDataset],
    tokenizer: Any,
    summary: dict[str, Any],
    log: Any,
    progress: bool,
) -> dict[str, Any]:
    from ..experiments import report
    from ..models import LateFusionClassifier
    from .encoders import load_weights
    from .train import train_run

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MidasDataError(f"--device {args.device}: CUDA is not available on this machine")
    out = Path(args.out or f"reproduce_{args.dataset}")
    torch.manual_seed(config.seed)
    example = datasets["train"][0]
    encoders = recipe.encoders(config, example, tokenizer)
    for item in args.pretrained:
        modality, sep, path = item.partition("=")
        if not sep or modality not in encoders:
            raise MidasDataError(f"--pretrained {item!r}: expected MODALITY=PATH with MODALITY in {list(encoders)}")
        load_weights(encoders[modality], path, modality)
    dims = {m: int(e.out_features) for m, e in encoders.items()}
    model = LateFusionClassifier(encoders, dims, len(scan.classes))
    log(f"training {config.method} on {args.device} for {config.epochs} epochs; run folder {out}")
    if _multilabel(scan):
        return _train_multilabel(args, config, recipe, model, datasets, summary, out, device, log, progress)
    run = train_run(model, datasets, config, device=device, out=out, resume=args.resume, progress=progress, log=log)
    name = config.method
    print(f"{recipe.title} ({name}): test split, best-on-validation checkpoint (percent)")
    print(report.comparison_table({name: run["test"]}))
    report.write_report(
        out,
        dataset=args.dataset,
        runs={name: run},
        modalities=config.modalities,
        warmup_epochs=config.warmup_epochs if name == "midas" else None,
        notes=[
            f"Data: {summary['samples']} samples per split ("
            + (
                "the dataset's standard split"
                if isinstance(scan, SplitScan)
                else f"70/10/20 stratified re-split with seed {config.split_seed}, not the official split"
            )
            + f"); {len(scan.skipped)} unreadable samples skipped.",
            "",
            "Config:",
            "",
            "```",
            config.describe(),
            "```",
        ],
        extra={"config": config.to_dict(), "skipped": summary["skipped"], "samples": summary["samples"]},
    )
    keys = ("accuracy", "macro_f1", "misaligned_accuracy", "per_modality_accuracy")
    return {**summary, name: {k: run["test"][k] for k in keys}, "best_epoch": run["best_epoch"], "report": str(out)}


def _train_multilabel(
    args: argparse.Namespace,
    config: RecipeConfig,
    recipe: Any,
    model: Any,
    datasets: dict[str, RecipeDataset],
    summary: dict[str, Any],
    out: Path,
    device: torch.device,
    log: Any,
    progress: bool,
) -> dict[str, Any]:
    """A multi-label run (MM-IMDB): the same training run (F1 metrics, thresholds chosen on
    validation), results.json in ``out`` (the report's plots read single-label metrics)."""
    from .train import train_run

    run = train_run(model, datasets, config, device=device, out=out, resume=args.resume, progress=progress, log=log)
    print(f"{recipe.title} ({config.method}): test split, best-on-validation checkpoint (percent)")
    print("  ".join(f"{k} {100 * run['test'][k]:.2f}" for k in config.metrics))
    extra = {"config": config.to_dict(), "samples": summary["samples"], "skipped": summary["skipped"]}
    (out / "results.json").write_text(json.dumps({**extra, config.method: run}, indent=2, default=float))
    return {**summary, config.method: run["test"], "best_epoch": run["best_epoch"], "report": str(out)}


def main_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, default=float)
