"""Accuracy of MIDAS against baselines, protocol v2: paired per-seed differences.

Protocol v2 (see docs/benchmarks.md):

* every method gets the same model (CNN encoders on the ``glyphs`` demo data), optimizer,
  learning rate, batch size, epochs and batch order; seed ``s`` fixes the initialisation
  and the batch order for every method alike, the data split is fixed;
* every run is evaluated under both BatchNorm protocols (``as_trained`` running statistics,
  ``precise``: re-estimated on the training split for the weights being evaluated), each
  with its own best-on-validation checkpoint; ``precise`` is the protocol of record;
* methods are compared by the paired per-seed difference of test accuracy with a 95 %
  t-interval; a *win* is an interval above zero, a *loss* one below, else a *tie*;
* method options are fixed in advance (the paper's lambda 1 and a warm-up of about a
  seventh of training) on the new data, and come from ``tuned.json`` (a validation sweep)
  on the older 8x8 variants. Nothing is chosen on the test split.

Every finished run is appended to a JSON-lines log (default
``benchmarks/results/runs.jsonl``) and skipped when met again, so the benchmark can be
split over processes (``--worker 0/2`` and ``--worker 1/2``) and resumed.

    python benchmarks/accuracy.py                                  # glyphs, all methods, 5 seeds
    python benchmarks/accuracy.py --worker 0/2 & python benchmarks/accuracy.py --worker 1/2
    python benchmarks/accuracy.py --report-only                    # tables from the log
    python benchmarks/accuracy.py --datasets demo,class_split,image_dominant --epochs 20

Prints one JSON line per dataset and method (means over seeds and paired differences).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from midas_data import experiments as training
from midas_data.experiments.demo import glyph_pairs, glyphs
from midas_data.experiments.evaluation import headline
from midas_data.experiments.paired import paired_difference, verdict

MODALITIES = ("image", "audio")
NUM_CLASSES = 10
RESULTS = Path(__file__).resolve().parent / "results"
RUN_LOG = RESULTS / "runs.jsonl"
PROTOCOL = "precise"  # BatchNorm protocol of record (see the module docstring)
PROTOCOLS = ("precise", "as_trained")
DEFAULT_METHODS = (
    "joint",
    "joint_heads",
    "mixup",
    "ogm_ge",
    "midas",
    "midas_input",
    "midas_sampler_hard",
    "midas_sampler_weak",
    "unimodal_image",
    "unimodal_audio",
)
BASELINES = ("joint", "joint_heads", "mixup", "ogm_ge")
# Fixed before any run on the glyphs data: the paper's lambda 1 and warm-up 10 of 70 epochs
# scaled to the budget; the baselines' usual defaults.
FIXED_OPTIONS = {"lam": 1.0, "warmup_fraction": 1 / 7, "mixup_concentration": 1.0, "ogm_alpha": 0.5}
# A run of an older version of a dataset never stands in for one of the current version.
# glyphs 2: the test split drawn after the regime was chosen on validation (benchmarks/regime.py).
DATA_VERSIONS = {"glyphs": 2}
DESCRIPTIONS = {
    "glyphs": "printed digits (22 fonts, deformed, pixel noise) + spoken digits; speech dominant",
    "demo": "8x8 digits + spoken digits: global imbalance, the noisy image is weak for all",
    "class_split": "8x8 variant: the image names digits 0-4 only, the speech digits 5-9 only",
    "image_dominant": "8x8 variant: clean images dominate, speech at -12 dB SNR is weak",
}


def data_label(dataset: str, data: dict[str, Any]) -> str:
    return dataset + "".join(f" {k}={v}" for k, v in sorted(data.items()))


@functools.lru_cache(maxsize=4)
def _load(dataset: str, data_json: str) -> dict[str, training.InMemoryDataset]:
    data = json.loads(data_json)
    if dataset == "glyphs":
        raw = glyphs.load_glyph_splits(seed=0, **data)
    elif dataset == "glyph_pairs":  # multi-label (benchmarks/multilabel_glyphs.py)
        raw = glyph_pairs.load_glyph_pair_splits(seed=0, **data)
    else:
        from midas_data.experiments.demo.variants import load_variant_splits

        raw = load_variant_splits(dataset, seed=0, **data)
    return {split: training.cache_dataset(ds, MODALITIES) for split, ds in raw.items()}


def load_splits(dataset: str, data: dict[str, Any] | None = None) -> dict[str, training.InMemoryDataset]:
    return _load(dataset, json.dumps(data or {}, sort_keys=True))


def method_options(dataset: str, epochs: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options every method of a comparison gets (MIDAS reads lam / warm-up, the
    baselines theirs); ``warmup_fraction`` becomes ``warmup_epochs``."""
    options: dict[str, Any]
    tuned = RESULTS / "tuned.json"
    if dataset != "glyphs" and tuned.is_file():
        options = dict(json.loads(tuned.read_text())["chosen"].get(dataset, {}))
    else:
        options = dict(FIXED_OPTIONS)
    options.update(overrides or {})
    fraction = options.pop("warmup_fraction", None)
    if "warmup_epochs" not in options:
        options["warmup_epochs"] = max(1, round(epochs * (fraction if fraction is not None else 1 / 7)))
    return options


def run_key(dataset: str, data: dict[str, Any], method: str, seed: int, epochs: int, options: dict[str, Any]) -> str:
    defaults = {"glyphs": glyphs, "glyph_pairs": glyph_pairs}.get(dataset)
    if defaults is not None:  # explicit settings: a run keeps its key if the defaults change
        data = {"image_noise": defaults.DEFAULT_IMAGE_NOISE, "audio_snr_db": defaults.DEFAULT_AUDIO_SNR_DB, **data}
    key = {"dataset": dataset, "data": data, "method": method, "seed": seed, "epochs": epochs, "options": options}
    if dataset in DATA_VERSIONS:
        key["data_version"] = DATA_VERSIONS[dataset]
    return json.dumps(key, sort_keys=True)


def read_log(path: Path = RUN_LOG) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[record["key"]] = record
    return runs


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "macro_f1", "misaligned_accuracy", "per_modality_accuracy", "modality_confidence")
    if "micro_f1" in metrics:  # multi-label
        keys = ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "per_modality_micro_f1", "thresholds")
    return json.loads(json.dumps({k: metrics[k] for k in keys}, default=float))


def run_one(
    dataset: str, data: dict[str, Any], method: str, seed: int, epochs: int, options: dict[str, Any]
) -> dict[str, Any]:
    """Train and test one method at one seed; the record the run log stores."""
    splits = load_splits(dataset, data)
    config = training.TrainConfig(epochs=epochs, seed=seed, bn_protocols=PROTOCOLS)
    result = training.run(method, splits, NUM_CLASSES, config, options=options)
    return {
        "key": run_key(dataset, data, method, seed, epochs, options),
        "dataset": dataset,
        "data": data,
        "method": method,
        "seed": seed,
        "epochs": epochs,
        "options": options,
        "test": {p: _compact(t) for p, t in result.tests.items()},
        "val_accuracy": {p: s["val_accuracy"] for p, s in result.fit.selected.items()},
        "val": {p: _compact(s["metrics"]) if s["metrics"] else {} for p, s in result.fit.selected.items()},
        "val_score": {p: s["score"] for p, s in result.fit.selected.items()},
        "best_epoch": {p: s["epoch"] for p, s in result.fit.selected.items()},
        "seconds": result.fit.seconds,
    }


Job = tuple[str, dict[str, Any], str, int, int, dict[str, Any]]


def execute(
    jobs: Iterable[Job],
    worker: tuple[int, int] = (0, 1),
    log: Path = RUN_LOG,
    split_pending: bool = True,
    show: str = "test",
) -> None:
    """Run this worker's share of the jobs: every ``count``-th job from ``index``, counted
    among the jobs not yet logged (``split_pending``: workers started together split the
    remaining work evenly) or among all jobs (workers started at different times still
    split the same way). The log is read again before each job, so a job another process
    finished meanwhile is skipped. Each finished run prints its ``show`` figure ("test" or
    "val"): a script that chooses on validation never shows a test figure."""
    index, count = worker
    log.parent.mkdir(parents=True, exist_ok=True)
    jobs = list(jobs)
    if split_pending:
        logged = read_log(log)
        jobs = [job for job in jobs if run_key(*job) not in logged]
    for job in jobs[index::count]:
        if run_key(*job) in read_log(log):
            continue
        started = time.perf_counter()
        record = run_one(*job)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        figure = score(record, split=show)
        print(
            f"[{index}/{count}] {data_label(job[0], job[1])} {job[2]} seed {job[3]} epochs {job[4]}: "
            f"{show} {100 * figure:.1f} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )


def logged_seeds(
    runs: dict[str, dict[str, Any]],
    dataset: str,
    data: dict[str, Any],
    method: str,
    seeds: int,
    epochs: int,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """The logged records of seeds 0, 1, ... up to ``seeds`` - 1, stopping at the first missing one."""
    found = []
    for seed in range(seeds):
        record = runs.get(run_key(dataset, data, method, seed, epochs, options))
        if record is None:
            break
        found.append(record)
    return found


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def score(record: dict[str, Any], protocol: str = PROTOCOL, split: str = "test") -> float:
    """The figure a method is judged by: fused accuracy (micro-F1 on multi-label data), or
    the head's for a unimodal run;
    on ``split="val"``, the same figure of the checkpoint selected on validation."""
    if split == "val":
        return record["val_score"][protocol]  # fit's selection score: the same figure
    test = record["test"][protocol]
    if record["method"].startswith("unimodal_"):
        return headline(test, record["method"].removeprefix("unimodal_"))
    return headline(test)


def summarise(
    runs: dict[str, dict[str, Any]],
    dataset: str,
    data: dict[str, Any],
    methods: list[str],
    seeds: int,
    epochs: int,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per method with every seed logged: means, the other protocol, paired differences."""
    options = method_options(dataset, epochs, overrides)
    # Each method with the seeds it has (0..n-1); pairs use the seeds both methods have.
    records = {m: logged_seeds(runs, dataset, data, m, seeds, epochs, options) for m in methods}
    rows = []
    for method, recs in records.items():
        if len(recs) < 2:
            continue
        tests = [r["test"][PROTOCOL] for r in recs]
        row: dict[str, Any] = {"benchmark": "accuracy", "dataset": dataset, "data": data, "method": method}
        row["accuracy_mean"], row["accuracy_std"] = _mean_std([score(r) for r in recs])
        for key in ("macro_f1", "misaligned_accuracy"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([t[key] for t in tests])
        row["per_modality_accuracy_mean"] = {
            m: statistics.mean(t["per_modality_accuracy"][m] for t in tests) for m in MODALITIES
        }
        row["modality_confidence_mean"] = {
            m: statistics.mean(t["modality_confidence"][m] for t in tests) for m in MODALITIES
        }
        row["val_accuracy_mean"] = statistics.mean(score(r, split="val") for r in recs)
        row["accuracy_as_trained_mean"], row["accuracy_as_trained_std"] = _mean_std(
            [score(r, "as_trained") for r in recs]
        )
        row["precise_minus_as_trained"] = paired_difference(
            [score(r) for r in recs], [score(r, "as_trained") for r in recs]
        )
        row["paired"] = {}
        if not method.startswith("unimodal_"):
            # MIDAS variants (input level, sampler policies) are also paired with plain MIDAS.
            compared = BASELINES + (("midas",) if method.startswith("midas_") else ())
            for base in compared:
                n = min(len(recs), len(records.get(base) or []))
                if base != method and n >= 2:
                    diff = paired_difference([score(r) for r in recs[:n]], [score(r) for r in records[base][:n]])
                    row["paired"][base] = {**diff, "verdict": verdict(diff)}
        row["per_seed_accuracy"] = [score(r) for r in recs]
        row["seconds_per_run"] = statistics.mean(r["seconds"] for r in recs)
        row["seeds"] = len(recs)
        row["epochs"] = epochs
        row["bn_protocol"] = PROTOCOL
        row["options"] = options
        rows.append(row)
    return rows


def interval(diff: dict[str, Any]) -> str:
    """``+1.2 [-0.3, +2.7]`` in points, from fractions."""
    return f"{100 * diff['mean']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"


def percent(value: float | None) -> str:
    """A fraction as a table cell in percent; empty for a missing figure."""
    return "" if value is None else f"{100 * value:.1f}"


def run_log_parser(doc: str | None, out: Path) -> argparse.ArgumentParser:
    """The command line of every script that trains into the run log: worker share, log,
    table, report only. Each script adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="0/1", help="I/N: run every N-th job starting at I (default: %(default)s)")
    parser.add_argument("--log", default=str(RUN_LOG), help="JSON-lines run log (default: %(default)s)")
    parser.add_argument("--out", default=str(out), help="markdown tables (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="no training: tables from the run log")
    return parser


def worker_share(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``."""
    index, count = (int(x) for x in text.split("/"))
    return index, count


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "<!-- written by benchmarks/accuracy.py (protocol v2) -->",
        "Test split, best-on-validation checkpoint, BatchNorm statistics re-estimated on the training "
        "split before every evaluation (`precise`). Percent. Accuracy: mean ± std over seeds "
        "(for `unimodal_*`: that modality's head alone). Paired columns: mean per-seed difference "
        "against the baseline with its 95 % t-interval; **bold** when the interval excludes 0. "
        "As trained: the same runs evaluated with the running statistics left by training.",
        "",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(data_label(r["dataset"], r["data"]), []).append(r)
    for label, part in groups.items():
        first = part[0]
        lines += [
            f"### {label}: {DESCRIPTIONS.get(first['dataset'], '')}",
            "",
            f"{first['epochs']} epochs, options `{json.dumps(first['options'])}`; n: seeds of the row "
            "(a paired interval uses the seeds both methods have)",
            "",
            "| Method | n | Accuracy | vs joint | vs joint_heads | vs mixup | vs ogm_ge | vs midas | image head "
            "| audio head | Misaligned acc. | As trained | precise − as trained |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in part:
            cells = []
            for base in (*BASELINES, "midas"):
                diff = r["paired"].get(base)
                if diff is None:
                    cells.append("")
                else:
                    text = interval(diff)
                    cells.append(f"**{text}**" if diff["verdict"] != "tie" else text)
            lines.append(
                f"| {r['method']} | {r['seeds']} | {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} | "
                + " | ".join(cells)
                + f" | {100 * r['per_modality_accuracy_mean']['image']:.1f}"
                f" | {100 * r['per_modality_accuracy_mean']['audio']:.1f}"
                f" | {100 * r['misaligned_accuracy_mean']:.1f}"
                f" | {100 * r['accuracy_as_trained_mean']:.1f} ± {100 * r['accuracy_as_trained_std']:.1f}"
                f" | {interval(r['precise_minus_as_trained'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_demo_reference(rows: list[dict[str, Any]], path: Path) -> None:
    """The figures ``python -m midas_data demo`` prints beside its one seed."""
    by_method = {r["method"]: r for r in rows if r["dataset"] == "glyphs" and not r["data"]}
    if not {"joint", "joint_heads", "midas"} <= set(by_method) or by_method["midas"]["seeds"] < 5:
        return
    midas = by_method["midas"]
    reference = {
        "seeds": midas["seeds"],
        "epochs": midas["epochs"],
        "bn_protocol": PROTOCOL,
        "midas_options": {k: midas["options"][k] for k in ("warmup_epochs", "lam")},
        "methods": {
            m: {
                "mean": by_method[m]["accuracy_mean"],
                "std": by_method[m]["accuracy_std"],
                "per_seed": by_method[m]["per_seed_accuracy"],
            }
            for m in ("joint", "joint_heads", "midas")
        },
        "paired": {f"midas - {b}": midas["paired"][b] for b in ("joint", "joint_heads")},
    }
    path.write_text(json.dumps(reference, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = run_log_parser(__doc__, RESULTS / "accuracy.md")
    parser.add_argument(
        "--datasets", default="glyphs", help="comma-separated (glyphs, demo, class_split, image_dominant)"
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run, the same for every method")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in training.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; expected some of {sorted(training.METHODS)}")
    index, count = worker_share(args.worker)
    log = Path(args.log)
    started = time.perf_counter()
    if not args.report_only:
        # Seed-major order: an interrupted benchmark leaves whole seeds, usable as pairs.
        jobs: list[Job] = [
            (d, {}, m, s, args.epochs, method_options(d, args.epochs))
            for d in datasets
            for s in range(args.seeds)
            for m in methods
        ]
        execute(jobs, (index, count), log)
    runs = read_log(log)
    rows = [r for d in datasets for r in summarise(runs, d, {}, methods, args.seeds, args.epochs)]
    for row in rows:
        print(json.dumps(row), flush=True)
    if rows and index == 0:
        out = Path(args.out)
        out.write_text(markdown(rows))
        if args.epochs == 15:
            write_demo_reference(rows, glyphs.BENCHMARK_REFERENCE)
        print(f"table written to {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
