"""When does MIDAS help? A study on the glyphs demo data along the axes the paper names.

Axes, each changed alone from the protocol-v2 setting of ``benchmarks/accuracy.py``
(same runner, same run log, same BatchNorm protocol and paired statistics):

* ``imbalance``: the image's pixel noise, from a weak-but-learnable image to an
  uninformative one. Each level also trains the image alone (``unimodal_image``), so
  the table shows whether joint training *under-optimises* the image (its head under
  joint training far below the image alone) or the image simply carries little.
* ``length``: training epochs (the warm-up stays a seventh of training).
* ``lambda``: the weight of the misaligned loss.
* ``warmup``: the warm-up epochs.

    python benchmarks/study.py --worker 0/2 & python benchmarks/study.py --worker 1/2
    python benchmarks/study.py --report-only       # -> benchmarks/results/study.md, JSON lines

Prints one JSON line per cell: MIDAS's paired difference against joint training and
against joint training with unimodal heads, and the heads' accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from accuracy import (
    PROTOCOL,
    RESULTS,
    RUN_LOG,
    Job,
    execute,
    interval,
    logged_seeds,
    method_options,
    read_log,
    score,
)

from midas_data.experiments.paired import paired_difference, verdict

SEEDS = 5
EPOCHS = 15
COMPARED = ("joint", "joint_heads")
# axis -> list of (label, data overrides, epochs, option overrides, methods)
Cell = tuple[str, dict[str, Any], int, dict[str, Any], tuple[str, ...]]
AXES: dict[str, list[Cell]] = {
    "imbalance": [
        (f"image_noise={noise}", {"image_noise": noise}, EPOCHS, {}, ("joint_heads", "midas", "unimodal_image"))
        for noise in (1.2, 0.3)
    ],
    "lambda": [(f"lam={lam}", {}, EPOCHS, {"lam": lam}, ("midas",)) for lam in (0.3, 3.0)],
    "warmup": [(f"warmup={w}", {}, EPOCHS, {"warmup_epochs": w}, ("midas",)) for w in (0, 5)],
    "length": [("epochs=30", {}, 30, {}, ("joint_heads", "midas"))],
}
# Seeds per cell: three (the compute budget of two shared cores); the paired intervals say
# how much that leaves undecided.
AXIS_SEEDS = {"lambda": SEEDS, "warmup": SEEDS, "imbalance": SEEDS, "length": SEEDS}


def jobs() -> list[Job]:
    """Seed-major within each cell, in the order of AXES."""
    out: list[Job] = []
    for axis, cells in AXES.items():
        for _, data, epochs, overrides, methods in cells:
            options = method_options("glyphs", epochs, overrides)
            base_options = method_options("glyphs", epochs)
            for seed in range(AXIS_SEEDS[axis]):
                for method in methods:
                    out.append(
                        ("glyphs", data, method, seed, epochs, options if method.startswith("midas") else base_options)
                    )
    return out


def cell_row(runs: dict[str, dict[str, Any]], axis: str, cell: Cell, seeds: int) -> dict[str, Any] | None:
    """The cell's figures over the seeds 0..n-1 that MIDAS and every logged baseline have."""
    label, data, epochs, overrides, _ = cell
    options = method_options("glyphs", epochs, overrides)
    base_options = method_options("glyphs", epochs)
    midas = logged_seeds(runs, "glyphs", data, "midas", seeds, epochs, options)
    others = {
        m: logged_seeds(runs, "glyphs", data, m, seeds, epochs, base_options) for m in (*COMPARED, "unimodal_image")
    }
    n = min([len(midas)] + [len(r) for r in others.values() if r])
    if n < 2:
        return None
    midas = midas[:n]
    head = lambda recs: sum(r["test"][PROTOCOL]["per_modality_accuracy"]["image"] for r in recs) / n  # noqa: E731
    row: dict[str, Any] = {"benchmark": "study", "axis": axis, "cell": label, "seeds": n, "epochs": epochs}
    row["options"] = options
    row["midas_accuracy"] = sum(score(r) for r in midas) / n
    row["midas_image_head"] = head(midas)
    for base in COMPARED:
        recs = others[base][:n]
        if len(recs) < n:
            continue
        diff = paired_difference([score(r) for r in midas], [score(r) for r in recs])
        row[f"{base}_accuracy"] = sum(score(r) for r in recs) / n
        row[f"{base}_image_head"] = head(recs)
        row[f"vs_{base}"] = {**diff, "verdict": verdict(diff)}
    alone = others["unimodal_image"][:n]
    if len(alone) == n:
        row["image_alone"] = sum(score(r) for r in alone) / n
    return row


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "<!-- written by benchmarks/study.py -->",
        "Glyphs demo data, n seeds per cell (column n), BatchNorm statistics re-estimated before evaluation, "
        "best-on-validation checkpoint, test accuracy in percent. MIDAS − baseline: mean paired "
        "per-seed difference with its 95 % t-interval. Image heads: the unimodal image head of each "
        "model; image alone: a model trained on the image only. Baselines of the `lambda` and "
        "`warmup` rows are the runs of the default setting (their options do not change).",
        "",
        "| Axis | Cell | n | MIDAS | joint | joint_heads | MIDAS − joint | MIDAS − joint_heads "
        "| verdict vs joint_heads | image head: joint / joint_heads / MIDAS | image alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vj, vh = r.get("vs_joint"), r.get("vs_joint_heads")
        heads = " / ".join(_pct(r.get(k)) for k in ("joint_image_head", "joint_heads_image_head", "midas_image_head"))
        lines.append(
            f"| {r['axis']} | {r['cell']} | {r['seeds']} | {_pct(r['midas_accuracy'])} "
            f"| {_pct(r.get('joint_accuracy'))} "
            f"| {_pct(r.get('joint_heads_accuracy'))} | {interval(vj) if vj else ''} | {interval(vh) if vh else ''} "
            f"| {vh['verdict'] if vh else ''} | {heads} | {_pct(r.get('image_alone'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="0/1", help="I/N: run every N-th job starting at I")
    parser.add_argument("--log", default=str(RUN_LOG), help="JSON-lines run log shared with accuracy.py")
    parser.add_argument("--out", default=str(RESULTS / "study.md"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    index, count = (int(x) for x in args.worker.split("/"))
    if not args.report_only:
        execute(jobs(), (index, count), Path(args.log), split_pending=False)
    runs = read_log(Path(args.log))
    default: list[Cell] = [("default", {}, EPOCHS, {}, ())]
    # The default level of the imbalance axis also trained the image alone (accuracy.py).
    rows = []
    for axis, cells in {"default": default, **AXES}.items():
        for cell in cells:
            row = cell_row(runs, axis, cell, AXIS_SEEDS.get(axis, SEEDS))
            if row is not None:
                rows.append(row)
                print(json.dumps(row), flush=True)
    if rows and index == 0:
        Path(args.out).write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
