"""Does the imbalance check's verdict agree with what MIDAS measured? One check per cell.

Runs :func:`midas_data.experiments.imbalance.check_imbalance` (joint training with probe
heads and each modality alone, a short budget, validation split only) on every cell of the
study (``benchmarks/study.py``: glyphs image noise 0.3 / 0.5 / 0.7 / 1.2, speech at 0 dB)
and on the 8x8 datasets (``benchmarks/accuracy.py``: demo, class_split, image_dominant),
and compares the weak modality's verdict with the measured MIDAS - joint_heads difference
of the run log (``benchmarks/results/runs.jsonl``, 5 seeds, paired 95 % t-interval):
``helps`` agrees with a win, ``hurts`` with a loss, ``no_need`` with a tie. Agreement is
judged on the **validation** difference, the split the thresholds were chosen on; the test
difference is shown beside it and chooses nothing.

The thresholds were derived from the glyphs cells alone; the 8x8 cells are held out (no
threshold was set or moved on their figures).

    python benchmarks/imbalance_check.py                 # -> results/imbalance_check.{jsonl,md}
    python benchmarks/imbalance_check.py --report-only   # verdicts again from the stored figures

Prints one JSON line per cell and a summary line. A cell already in the JSON-lines file
with the same budget is not trained again (``--rerun`` to force).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accuracy import RESULTS, load_splits, logged_seeds, method_options, read_log, score

from midas_data.experiments import TrainConfig, build_model
from midas_data.experiments.imbalance import VERDICTS, check_imbalance, decide
from midas_data.experiments.paired import paired_difference, verdict

SEEDS = 3
EPOCHS = 5
OUTCOME_SEEDS = 5
# (label, dataset, data overrides, epochs of the measured runs, role)
CELLS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("glyphs image_noise=0.3", "glyphs", {"image_noise": 0.3}, 15, "chose thresholds"),
    ("glyphs image_noise=0.5 (default)", "glyphs", {}, 15, "chose thresholds"),
    ("glyphs image_noise=0.7", "glyphs", {"image_noise": 0.7}, 15, "chose thresholds"),
    ("glyphs image_noise=1.2", "glyphs", {"image_noise": 1.2}, 15, "chose thresholds"),
    ("glyphs audio_snr_db=0", "glyphs", {"audio_snr_db": 0.0}, 15, "chose thresholds"),
    ("8x8 demo", "demo", {}, 20, "held out"),
    ("8x8 class_split", "class_split", {}, 20, "held out"),
    ("8x8 image_dominant", "image_dominant", {}, 20, "held out"),
]
EXPECTED = {"helps": "win", "hurts": "loss", "no_need": "tie"}


def measured(runs: dict[str, Any], dataset: str, data: dict[str, Any], epochs: int) -> dict[str, Any]:
    """MIDAS - joint_heads from the run log, per split, paired over the seeds both have."""
    options = method_options(dataset, epochs)
    midas = logged_seeds(runs, dataset, data, "midas", OUTCOME_SEEDS, epochs, options)
    heads = logged_seeds(runs, dataset, data, "joint_heads", OUTCOME_SEEDS, epochs, options)
    n = min(len(midas), len(heads))
    if n < 2:
        raise SystemExit(f"{dataset} {data}: the run log holds {n} paired seeds of midas and joint_heads; need 2")
    out = {}
    for split in ("val", "test"):
        diff = paired_difference([score(r, split=split) for r in midas[:n]], [score(r, split=split) for r in heads[:n]])
        out[split] = {**diff, "verdict": verdict(diff)}
    return out


def run_check(dataset: str, data: dict[str, Any], seeds: int, epochs: int) -> dict[str, Any]:
    splits = load_splits(dataset, data)
    shapes = {m: tuple(v.shape[1:]) for m, v in splits["train"].tensors.items()}
    dropout = TrainConfig().image_dropout
    started = time.perf_counter()
    report = check_imbalance(
        lambda: build_model(shapes, 10, image_dropout=dropout),
        splits["train"],
        splits["val"],
        list(shapes),
        seeds=seeds,
        epochs=epochs,
    )
    return {**report.to_dict(), "seconds": time.perf_counter() - started}


def redecide(check: dict[str, Any]) -> dict[str, Any]:
    """The stored figures judged with the current thresholds."""
    rows = []
    for row in check["rows"]:
        key, reason = decide(row["alone"], row["head"], check["chance"], gap_low=row["gap"]["low"])
        rows.append({**row, "verdict": key, "reason": reason})
    weak = min(rows, key=lambda r: r["head"])
    return {**check, "rows": rows, "weak": weak["modality"], "verdict": weak["verdict"]}


def interval(diff: dict[str, Any]) -> str:
    return f"{100 * diff['mean']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"


def markdown(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "<!-- written by benchmarks/imbalance_check.py -->",
        f"The imbalance check (`python -m midas_data check`) on every cell of the study and on the 8x8 "
        f"datasets: {SEEDS} seeds x {EPOCHS} epochs per run (joint training with probe heads, each modality "
        "alone), BatchNorm statistics re-estimated, best epoch on validation, validation accuracy in percent. "
        "Weak: the modality whose head joint training left lowest; its verdict is the cell's. Measured: MIDAS − "
        f"joint_heads from `runs.jsonl` ({OUTCOME_SEEDS} seeds, the study's budget, paired 95 % t-interval). "
        "Agree: `helps` with a win, `hurts` with a loss, `no_need` with a tie, on the **validation** difference; "
        "the test difference is shown beside it and chose nothing. The thresholds were chosen on the glyphs "
        "cells (validation figures); the 8x8 cells are held out.",
        "",
        "| Cell | Role | Weak | alone | head | gap [95 %] | lift | Verdict | Measured (val) | Agree (val) "
        "| Measured (test) | Agree (test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        weak = next(row for row in r["check"]["rows"] if row["modality"] == r["check"]["weak"])
        lines.append(
            f"| {r['cell']} | {r['role']} | {weak['modality']} | {100 * weak['alone']:.1f} | {100 * weak['head']:.1f} "
            f"| {interval(weak['gap'])} | {weak['lift']:.2f} | {r['verdict']} "
            f"| {interval(r['measured']['val'])} {r['measured']['val']['verdict']} "
            f"| {'yes' if r['agree_val'] else 'no'} "
            f"| {interval(r['measured']['test'])} {r['measured']['test']['verdict']} "
            f"| {'yes' if r['agree_test'] else 'no'} |"
        )
    lines += [
        "",
        f"Agreement with the validation outcome: **{summary['agree_val']} of {summary['cells']}** cells "
        f"({summary['agree_val_chose']} of {summary['cells_chose']} glyphs cells that chose the thresholds, "
        f"{summary['agree_val_held_out']} of {summary['cells_held_out']} held-out 8x8 cells); with the test "
        f"outcome: {summary['agree_test']} of {summary['cells']}. Check time: {summary['seconds']:.0f} s in all "
        "on one CPU thread of a machine shared with other jobs.",
        "",
        "What the agreement is worth: on the glyphs cells it is in-sample (the thresholds were set between "
        "them), so only the held-out cells test the rule, and they are few and mostly ties. A constant "
        f"`no_need` would agree with {summary['constant_no_need']} of {summary['cells']} validation outcomes. "
        "A verdict near a threshold (a lift close to one, a gap interval ending near 0) is weak evidence.",
        "",
        "Verdicts: " + "; ".join(f"`{k}`: {v}" for k, v in VERDICTS.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "imbalance_check.md"), help="markdown table")
    parser.add_argument("--jsonl", default=str(RESULTS / "imbalance_check.jsonl"), help="one JSON line per cell")
    parser.add_argument("--report-only", action="store_true", help="no training: verdicts from the stored figures")
    parser.add_argument("--rerun", action="store_true", help="train every cell again")
    parser.add_argument("--cells", default="", help="comma-separated cell labels to run (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    jsonl = Path(args.jsonl)
    stored: dict[str, dict[str, Any]] = {}
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                record = json.loads(line)
                stored[record["cell"]] = record
    runs = read_log()
    wanted = {c for c in args.cells.split(",") if c}
    records = []
    for label, dataset, data, epochs, role in CELLS:
        old = stored.get(label)
        same_budget = old is not None and (old["check"]["seeds"], old["check"]["epochs"]) == (SEEDS, EPOCHS)
        if args.report_only or (same_budget and not args.rerun) or (wanted and label not in wanted):
            if old is None:
                continue
            check = old["check"]
        else:
            print(f"checking {label} ...", file=sys.stderr, flush=True)
            check = run_check(dataset, data, SEEDS, EPOCHS)
        check = redecide(check)
        outcome = measured(runs, dataset, data, epochs)
        record = {
            "benchmark": "imbalance_check",
            "cell": label,
            "dataset": dataset,
            "data": data,
            "role": role,
            "verdict": check["verdict"],
            "measured": outcome,
            "agree_val": EXPECTED[check["verdict"]] == outcome["val"]["verdict"],
            "agree_test": EXPECTED[check["verdict"]] == outcome["test"]["verdict"],
            "check": check,
        }
        records.append(record)
        stored[label] = record
        print(json.dumps(record), flush=True)
        # Written after every cell: an interrupted run keeps what it finished.
        kept = [stored[c[0]] for c in CELLS if c[0] in stored]
        jsonl.write_text("# written by benchmarks/imbalance_check.py\n" + "".join(json.dumps(r) + "\n" for r in kept))
    chose = [r for r in records if r["role"] == "chose thresholds"]
    held = [r for r in records if r["role"] == "held out"]
    summary = {
        "benchmark": "imbalance_check",
        "summary": True,
        "cells": len(records),
        "agree_val": sum(r["agree_val"] for r in records),
        "agree_test": sum(r["agree_test"] for r in records),
        "cells_chose": len(chose),
        "agree_val_chose": sum(r["agree_val"] for r in chose),
        "cells_held_out": len(held),
        "agree_val_held_out": sum(r["agree_val"] for r in held),
        "constant_no_need": sum(r["measured"]["val"]["verdict"] == "tie" for r in records),
        "seconds": sum(r["check"].get("seconds", 0.0) for r in records),
        "seeds": SEEDS,
        "epochs": EPOCHS,
    }
    print(json.dumps(summary), flush=True)
    if records and not wanted:
        Path(args.out).write_text(markdown(records, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
