"""When does MIDAS help? A study on the glyphs demo data along the axes the paper names.

Axes, each changed alone from the protocol-v2 setting of ``benchmarks/accuracy.py``
(same runner, same run log, same BatchNorm protocol and paired statistics):

* ``imbalance``: the image's pixel noise, from a weak-but-learnable image to an
  uninformative one. Each level also trains the image alone (``unimodal_image``), so
  the table shows whether joint training *under-optimises* the image (its head under
  joint training far below the image alone) or the image simply carries little.
* ``speech``: the dominant modality made stronger (clean enough to be right ~95 % alone).
* ``lambda``: the weight of the misaligned loss.
* ``warmup``: the warm-up epochs.
* ``weak_weight``: MIDAS without its weak-modality weight, paired with MIDAS.
* ``sampler``: prioritised-sampler variants (another floor, no importance weights), judged
  against uniform MIDAS on validation; a variant's test figure is reported only if it
  helps there.
* ``length``: training epochs: 30 (warm-up a seventh) and the paper's 70 with warm-up 10.

    python benchmarks/study.py --worker 0/2 & python benchmarks/study.py --worker 1/2
    python benchmarks/study.py --report-only       # -> benchmarks/results/study.md, JSON lines

Prints one JSON line per cell: the subject's paired differences against joint training,
joint training with unimodal heads and (for variants) MIDAS, and the heads' accuracies.
While running it prints validation figures only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from accuracy import (
    PROTOCOL,
    RESULTS,
    Job,
    execute,
    interval,
    logged_seeds,
    method_options,
    percent,
    read_log,
    run_log_parser,
    score,
    worker_share,
)

from midas_data.experiments.paired import paired_difference, verdict

SEEDS = 5
EPOCHS = 15
COMPARED = ("joint", "joint_heads")
# axis -> list of (label, data overrides, epochs, option overrides, methods). The first
# method whose name starts with "midas" is the cell's subject; the others are its
# references, trained with the default options on the cell's data and budget.
Cell = tuple[str, dict[str, Any], int, dict[str, Any], tuple[str, ...]]
AXES: dict[str, list[Cell]] = {
    "imbalance": [
        (
            f"image_noise={noise}",
            {"image_noise": noise},
            EPOCHS,
            {},
            ("midas", "joint", "joint_heads", "unimodal_image"),
        )
        for noise in (0.3, 0.7, 1.2)
    ],
    "speech": [
        ("audio_snr_db=0", {"audio_snr_db": 0.0}, EPOCHS, {}, ("midas", "joint", "joint_heads", "unimodal_audio"))
    ],
    "lambda": [(f"lam={lam}", {}, EPOCHS, {"lam": lam}, ("midas",)) for lam in (0.3, 3.0)],
    "warmup": [(f"warmup={w}", {}, EPOCHS, {"warmup_epochs": w}, ("midas",)) for w in (0, 5)],
    # The weak-modality weight's share: MIDAS without it, where the image is uninformative
    # and at the default, each paired with MIDAS on the same data.
    "weak_weight": [
        ("no_weak image_noise=1.2", {"image_noise": 1.2}, EPOCHS, {}, ("midas_no_weak", "midas")),
        ("no_weak", {}, EPOCHS, {}, ("midas_no_weak", "midas")),
    ],
    # Sampler variants: judged against uniform MIDAS on *validation*; their test
    # difference is reported only for a variant whose validation interval is above zero.
    "sampler": [
        ("hard floor=0.5", {}, EPOCHS, {"sampler_floor": 0.5}, ("midas_sampler_hard", "midas")),
        ("weak floor=0.5", {}, EPOCHS, {"sampler_floor": 0.5}, ("midas_sampler_weak", "midas")),
        (
            "hard, no importance weights",
            {},
            EPOCHS,
            {"sampler_importance_weights": False},
            ("midas_sampler_hard", "midas"),
        ),
    ],
    # The paper's budget last: 70 epochs with a 10-epoch warm-up is the costliest cell.
    "length": [
        ("epochs=30", {}, 30, {}, ("midas", "joint_heads")),
        ("epochs=70", {}, 70, {"warmup_epochs": 10}, ("midas", "joint_heads")),
    ],
}
VALIDATION_AXES = ("sampler",)


def _subject(methods: tuple[str, ...]) -> str:
    return next((m for m in methods if m.startswith("midas")), "midas")


def jobs() -> list[Job]:
    """Seed-major within each cell, in the order of AXES."""
    out: list[Job] = []
    for cells in AXES.values():
        for _, data, epochs, overrides, methods in cells:
            subject = _subject(methods)
            options = method_options("glyphs", epochs, overrides)
            base_options = method_options("glyphs", epochs)
            for seed in range(SEEDS):
                for method in methods:
                    out.append(("glyphs", data, method, seed, epochs, options if method == subject else base_options))
    return out


def cell_row(runs: dict[str, dict[str, Any]], axis: str, cell: Cell, seeds: int) -> dict[str, Any] | None:
    """The cell's figures over the seeds 0..n-1 that its subject and every logged reference have."""
    label, data, epochs, overrides, methods = cell
    subject = _subject(methods)
    options = method_options("glyphs", epochs, overrides)
    base_options = method_options("glyphs", epochs)
    mine = logged_seeds(runs, "glyphs", data, subject, seeds, epochs, options)
    references = [m for m in (*COMPARED, "midas", "unimodal_image", "unimodal_audio") if m != subject]
    others = {m: logged_seeds(runs, "glyphs", data, m, seeds, epochs, base_options) for m in references}
    # The cell's own methods and the two baselines decide n; other references (runs logged
    # by other scripts on the same data, e.g. regime.py's two seeds) join only if they have n.
    limiting = [m for m in references if m in methods or m in COMPARED]
    n = min([len(mine)] + [len(others[m]) for m in limiting if others[m]])
    if n < 2:
        return None
    mine = mine[:n]
    head = lambda recs: mean(r["test"][PROTOCOL]["per_modality_accuracy"]["image"] for r in recs)  # noqa: E731
    row: dict[str, Any] = {"benchmark": "study", "axis": axis, "cell": label, "method": subject, "seeds": n}
    row["epochs"], row["options"] = epochs, options
    validation_only = axis in VALIDATION_AXES
    row["subject_val_accuracy"] = mean(score(r, split="val") for r in mine)
    if not validation_only:
        row["subject_accuracy"] = mean(score(r) for r in mine)
        row["subject_image_head"] = head(mine)
    for base in (*COMPARED, "midas"):
        recs = others.get(base, [])[:n]
        if len(recs) < n:
            continue
        val_diff = paired_difference([score(r, split="val") for r in mine], [score(r, split="val") for r in recs])
        row[f"val_vs_{base}"] = {**val_diff, "verdict": verdict(val_diff)}
        if validation_only and val_diff["low"] <= 0:
            continue  # not better on validation: its test figure is not looked at
        diff = paired_difference([score(r) for r in mine], [score(r) for r in recs])
        row[f"{base}_accuracy"] = mean(score(r) for r in recs)
        row[f"{base}_image_head"] = head(recs)
        row[f"vs_{base}"] = {**diff, "verdict": verdict(diff)}
    for modality in ("image", "audio"):
        alone = others[f"unimodal_{modality}"][:n]
        if len(alone) == n:
            row[f"{modality}_alone"] = mean(score(r) for r in alone)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "<!-- written by benchmarks/study.py -->",
        "Glyphs demo data, n seeds per cell (column n), BatchNorm statistics re-estimated before evaluation, "
        "best-on-validation checkpoint, test accuracy in percent. Method: the cell's subject (MIDAS or a "
        "variant); its difference to a reference is the mean paired per-seed difference with its 95 % "
        "t-interval. Image heads: the unimodal image head of each model (a probe for joint training); "
        "alone: a model trained on that modality only. References of the `lambda`, `warmup` and "
        "`weak_weight` rows without data changes are the runs of the default setting.",
        "",
        "| Axis | Cell | Method | n | Accuracy | joint | joint_heads | − joint | − joint_heads "
        "| − midas | verdict vs joint_heads | image head: joint / joint_heads / method | image alone "
        "| speech alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["axis"] not in VALIDATION_AXES):
        vj, vh, vm = r.get("vs_joint"), r.get("vs_joint_heads"), r.get("vs_midas")
        heads = " / ".join(
            percent(r.get(k)) for k in ("joint_image_head", "joint_heads_image_head", "subject_image_head")
        )
        lines.append(
            f"| {r['axis']} | {r['cell']} | {r['method']} | {r['seeds']} | {percent(r['subject_accuracy'])} "
            f"| {percent(r.get('joint_accuracy'))} | {percent(r.get('joint_heads_accuracy'))} "
            f"| {interval(vj) if vj else ''} | {interval(vh) if vh else ''} | {interval(vm) if vm else ''} "
            f"| {vh['verdict'] if vh else ''} | {heads} | {percent(r.get('image_alone'))} "
            f"| {percent(r.get('audio_alone'))} |"
        )
    sampler = [r for r in rows if r["axis"] in VALIDATION_AXES]
    if sampler:
        lines += [
            "",
            "Sampler variants against uniform MIDAS, judged on the **validation** split (paired, 95 % "
            "t-interval); the test difference is shown only for a variant whose validation interval is "
            "above zero.",
            "",
            "| Cell | Method | n | validation accuracy | validation − midas | verdict | test − midas |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sampler:
            val, test = r.get("val_vs_midas"), r.get("vs_midas")
            lines.append(
                f"| {r['cell']} | {r['method']} | {r['seeds']} | {percent(r['subject_val_accuracy'])} "
                f"| {interval(val) if val else ''} | {val['verdict'] if val else ''} "
                f"| {interval(test) if test else 'not looked at'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = run_log_parser(__doc__, RESULTS / "study.md").parse_args(argv)
    torch.set_num_threads(1)
    index, count = worker_share(args.worker)
    if not args.report_only:
        # Validation figures while running: the sampler variants' test figures stay unseen.
        execute(jobs(), (index, count), Path(args.log), split_pending=False, show="val")
    runs = read_log(Path(args.log))
    default: list[Cell] = [
        ("default", {}, EPOCHS, {}, ("midas", "joint", "joint_heads", "unimodal_image", "unimodal_audio"))
    ]
    rows = []
    for axis, cells in {"default": default, **AXES}.items():
        for cell in cells:
            row = cell_row(runs, axis, cell, SEEDS)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), flush=True)
    if rows and index == 0:
        Path(args.out).write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
