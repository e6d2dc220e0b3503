"""Choose the glyphs data's noise levels on the validation split, by a rule fixed in advance.

The demo data must be in the regime MIDAS is for: one modality dominant, the other
learnable but under-optimised by joint training. Its two noise levels (the image's pixel
noise, the speech's SNR) are chosen here, and only here, from validation figures of
methods that are *not* MIDAS, by the rule below. The rule and the grid were written and
committed before any of these runs; the test split is not read (``run_one`` tests every
run and logs it, but this script reads and prints only validation figures).

Grid: image noise {0.3, 0.5, 0.7} x speech SNR {-6, 0} dB; seeds 0 and 1; protocol v2's
budget (15 epochs) and BatchNorm protocol (``precise``). Runs per cell: ``joint``; the
image alone (``unimodal_image``) per image noise; the speech alone (``unimodal_audio``)
per SNR. Figures are validation accuracies of the best-on-validation checkpoint, averaged
over the two seeds:

* ``speech_alone`` S, ``image_alone`` I: the modality's head when trained alone;
* ``image_probe`` P: the image probe of the jointly trained model (a linear head on the
  image encoder's detached features), i.e. what joint training left in the image encoder;
* ``gap`` = I - P: how far joint training under-optimises the image.

Rule: a cell qualifies when (1) the speech dominates, S >= I + 15 points; (2) the image is
learnable, I >= 40 % (four times chance); (3) the speech leaves room to the image,
S <= 90 %. Among qualifying cells the one with the largest gap is chosen. If none
qualifies, the script says so and chooses nothing.

    python benchmarks/regime.py --worker 0/2 & python benchmarks/regime.py --worker 1/2
    python benchmarks/regime.py --report-only      # -> benchmarks/results/regime.md

Prints one JSON line per cell and one with the choice.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from accuracy import (
    PROTOCOL,
    RESULTS,
    Job,
    execute,
    logged_seeds,
    method_options,
    percent,
    read_log,
    run_log_parser,
    worker_share,
)

IMAGE_NOISE = (0.3, 0.5, 0.7)
AUDIO_SNR_DB = (-6.0, 0.0)
SEEDS = 2
EPOCHS = 15
# The rule, in fractions of accuracy (see the module docstring).
MIN_DOMINANCE = 0.15
MIN_IMAGE_ALONE = 0.40
MAX_SPEECH_ALONE = 0.90


def _data(image_noise: float, audio_snr_db: float) -> dict[str, Any]:
    return {"image_noise": image_noise, "audio_snr_db": audio_snr_db}


def jobs() -> list[Job]:
    """Seed-major: every cell's runs for seed 0, then for seed 1."""
    options = method_options("glyphs", EPOCHS)
    out: list[Job] = []
    for seed in range(SEEDS):
        for noise in IMAGE_NOISE:
            # The image alone does not read the speech: one SNR serves every cell.
            out.append(("glyphs", _data(noise, AUDIO_SNR_DB[0]), "unimodal_image", seed, EPOCHS, options))
        for snr in AUDIO_SNR_DB:
            out.append(("glyphs", _data(IMAGE_NOISE[0], snr), "unimodal_audio", seed, EPOCHS, options))
        for noise in IMAGE_NOISE:
            for snr in AUDIO_SNR_DB:
                out.append(("glyphs", _data(noise, snr), "joint", seed, EPOCHS, options))
    return out


def _val_mean(records: list[dict[str, Any]], read: Any) -> float | None:
    if len(records) < SEEDS:
        return None
    return statistics.mean(read(r["val"][PROTOCOL]) for r in records)


def cell_figures(runs: dict[str, dict[str, Any]], noise: float, snr: float) -> dict[str, Any]:
    """The rule's figures for one cell (None where a run is missing)."""
    options = method_options("glyphs", EPOCHS)

    def seeds(data: dict[str, Any], method: str) -> list[dict[str, Any]]:
        return logged_seeds(runs, "glyphs", data, method, SEEDS, EPOCHS, options)

    speech = _val_mean(
        seeds(_data(IMAGE_NOISE[0], snr), "unimodal_audio"), lambda v: v["per_modality_accuracy"]["audio"]
    )
    image = _val_mean(
        seeds(_data(noise, AUDIO_SNR_DB[0]), "unimodal_image"), lambda v: v["per_modality_accuracy"]["image"]
    )
    joint = seeds(_data(noise, snr), "joint")
    probe = _val_mean(joint, lambda v: v["per_modality_accuracy"]["image"])
    row: dict[str, Any] = {
        "benchmark": "regime",
        "image_noise": noise,
        "audio_snr_db": snr,
        "seeds": SEEDS,
        "split": "val",
        "speech_alone": speech,
        "image_alone": image,
        "joint": _val_mean(joint, lambda v: v["accuracy"]),
        "joint_speech_probe": _val_mean(joint, lambda v: v["per_modality_accuracy"]["audio"]),
        "image_probe": probe,
    }
    if speech is None or image is None or probe is None:
        row["gap"] = None
        return row
    row["gap"] = image - probe
    row["checks"] = {
        "speech_dominates": speech - image >= MIN_DOMINANCE,
        "image_learnable": image >= MIN_IMAGE_ALONE,
        "speech_leaves_room": speech <= MAX_SPEECH_ALONE,
    }
    row["qualifies"] = all(row["checks"].values())
    return row


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The qualifying cell with the largest gap, or a refusal saying why."""
    if any(r["gap"] is None for r in rows):
        return {"benchmark": "regime_choice", "chosen": None, "reason": "runs missing"}
    qualifying = [r for r in rows if r["qualifies"]]
    if not qualifying:
        return {"benchmark": "regime_choice", "chosen": None, "reason": "no cell meets the rule"}
    best = max(qualifying, key=lambda r: r["gap"])
    return {
        "benchmark": "regime_choice",
        "chosen": {"image_noise": best["image_noise"], "audio_snr_db": best["audio_snr_db"]},
        "gap": best["gap"],
        "qualifying": [(r["image_noise"], r["audio_snr_db"]) for r in qualifying],
    }


def markdown(rows: list[dict[str, Any]], choice: dict[str, Any]) -> str:
    lines = [
        "<!-- written by benchmarks/regime.py -->",
        f"Validation split, {SEEDS} seeds, {EPOCHS} epochs, BatchNorm statistics re-estimated (`precise`), "
        "best-on-validation checkpoint; percent. Rule (fixed before the runs): speech alone >= image "
        f"alone + {100 * MIN_DOMINANCE:.0f}, image alone >= {100 * MIN_IMAGE_ALONE:.0f}, speech alone <= "
        f"{100 * MAX_SPEECH_ALONE:.0f}; the largest gap (image alone - image probe of joint training) wins.",
        "",
        "| image noise | speech SNR (dB) | speech alone | image alone | joint | joint's speech probe "
        "| joint's image probe | gap | qualifies |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        figures = " | ".join(
            percent(r[k]) for k in ("speech_alone", "image_alone", "joint", "joint_speech_probe", "image_probe", "gap")
        )
        qualifies = "yes" if r.get("qualifies") else "no" if "qualifies" in r else ""
        lines.append(f"| {r['image_noise']} | {r['audio_snr_db']:+.0f} | {figures} | {qualifies} |")
    chosen = choice["chosen"]
    lines += [
        "",
        f"Chosen: image noise {chosen['image_noise']}, speech SNR {chosen['audio_snr_db']:+.0f} dB."
        if chosen
        else f"Nothing chosen: {choice['reason']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = run_log_parser(__doc__, RESULTS / "regime.md").parse_args(argv)
    torch.set_num_threads(1)
    index, count = worker_share(args.worker)
    if not args.report_only:
        execute(jobs(), (index, count), Path(args.log), split_pending=False, show="val")
    runs = read_log(Path(args.log))
    rows = [cell_figures(runs, noise, snr) for noise in IMAGE_NOISE for snr in AUDIO_SNR_DB]
    choice = choose(rows)
    for row in (*rows, choice):
        print(json.dumps(row), flush=True)
    if index == 0:
        Path(args.out).write_text(markdown(rows, choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
