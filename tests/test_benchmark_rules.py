"""The rules of the accuracy benchmarks, on hand-made run logs (no training).

These are the parts of ``benchmarks/`` that decide something: which data regime is chosen
(``regime.py``), which run stands for which setting (``accuracy.run_key``), and when a
sampler variant's test figure may be shown (``study.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import accuracy  # noqa: E402
import regime  # noqa: E402
import study  # noqa: E402


def _record(
    method: str, seed: int, data: dict[str, Any], options: dict[str, Any], *, val: dict[str, Any], test: float = 0.5
) -> dict[str, Any]:
    key = accuracy.run_key("glyphs", data, method, seed, regime.EPOCHS, options)
    per_modality = {"image": test, "audio": test}
    test_metrics = {"accuracy": test, "per_modality_accuracy": per_modality}
    score = val["per_modality_accuracy"][method.removeprefix("unimodal_")] if "unimodal" in method else val["accuracy"]
    return {
        "key": key,
        "method": method,
        "seed": seed,
        "val": {"precise": val},
        "val_score": {"precise": score},
        "test": {"precise": test_metrics},
    }


def _val(accuracy_: float = 0.5, image: float = 0.5, audio: float = 0.5) -> dict[str, Any]:
    return {"accuracy": accuracy_, "per_modality_accuracy": {"image": image, "audio": audio}}


def _regime_log(speech: dict[float, float], image: dict[float, float], probe: dict[tuple[float, float], float]) -> dict:
    """Every run the regime rule reads, with the given validation figures (same on both seeds)."""
    options = accuracy.method_options("glyphs", regime.EPOCHS)
    runs = {}
    for seed in range(regime.SEEDS):
        for snr, value in speech.items():
            data = regime._data(regime.IMAGE_NOISE[0], snr)
            r = _record("unimodal_audio", seed, data, options, val=_val(audio=value))
            runs[r["key"]] = r
        for noise, value in image.items():
            data = regime._data(noise, regime.AUDIO_SNR_DB[0])
            r = _record("unimodal_image", seed, data, options, val=_val(image=value))
            runs[r["key"]] = r
        for (noise, snr), value in probe.items():
            r = _record("joint", seed, regime._data(noise, snr), options, val=_val(0.9, image=value))
            runs[r["key"]] = r
    return runs


def test_regime_rule_picks_the_largest_gap_among_qualifying_cells() -> None:
    speech = {-6.0: 0.83, 0.0: 0.95}
    image = {0.3: 0.80, 0.5: 0.53, 0.7: 0.32}
    probe = {(n, s): 0.2 for n in regime.IMAGE_NOISE for s in regime.AUDIO_SNR_DB}
    rows = [regime.cell_figures(_regime_log(speech, image, probe), n, s) for (n, s) in probe]
    by_cell = {(r["image_noise"], r["audio_snr_db"]): r for r in rows}
    # 0.3/-6: the image is as strong as the speech; x/0 dB: speech leaves no room; 0.7: image too weak.
    assert [cell for cell, r in by_cell.items() if r["qualifies"]] == [(0.5, -6.0)]
    assert by_cell[(0.3, -6.0)]["checks"]["speech_dominates"] is False
    assert by_cell[(0.5, 0.0)]["checks"]["speech_leaves_room"] is False
    assert by_cell[(0.7, -6.0)]["checks"]["image_learnable"] is False
    assert by_cell[(0.5, -6.0)]["gap"] == pytest.approx(0.33)
    choice = regime.choose(rows)
    assert choice["chosen"] == {"image_noise": 0.5, "audio_snr_db": -6.0}


def test_regime_rule_reads_validation_only_and_refuses_without_a_qualifying_cell() -> None:
    speech = {-6.0: 0.83, 0.0: 0.95}
    image = {0.3: 0.80, 0.5: 0.53, 0.7: 0.32}
    probe = {(n, s): 0.2 for n in regime.IMAGE_NOISE for s in regime.AUDIO_SNR_DB}
    runs = _regime_log(speech, image, probe)
    for r in runs.values():  # test figures that would change every decision if they were read
        r["test"]["precise"] = {"accuracy": 0.0, "per_modality_accuracy": {"image": 0.99, "audio": 0.0}}
    rows = [regime.cell_figures(runs, n, s) for (n, s) in probe]
    assert regime.choose(rows)["chosen"] == {"image_noise": 0.5, "audio_snr_db": -6.0}
    # Make the image too weak everywhere: nothing qualifies and nothing is chosen.
    weak = _regime_log(speech, {n: 0.2 for n in image}, probe)
    refused = regime.choose([regime.cell_figures(weak, n, s) for (n, s) in probe])
    assert refused["chosen"] is None and "no cell" in refused["reason"]
    missing = regime.choose([regime.cell_figures({}, n, s) for (n, s) in probe])
    assert missing["chosen"] is None and "missing" in missing["reason"]


def test_run_keys_name_the_data_version_and_every_data_setting() -> None:
    options = accuracy.method_options("glyphs", 15)
    implicit = accuracy.run_key("glyphs", {}, "midas", 0, 15, options)
    explicit = accuracy.run_key("glyphs", {"image_noise": 0.5, "audio_snr_db": -6.0}, "midas", 0, 15, options)
    assert implicit == explicit and '"data_version": 2' in implicit
    assert accuracy.run_key("glyphs", {"image_noise": 0.3}, "midas", 0, 15, options) != implicit
    assert "data_version" not in accuracy.run_key("demo", {}, "midas", 0, 15, options)


def _study_log(val_diff: float) -> tuple[dict[str, Any], study.Cell]:
    """A sampler cell and the default MIDAS runs it is judged against, 5 seeds each."""
    cell = next(c for c in study.AXES["sampler"] if c[0] == "hard floor=0.5")
    label, data, epochs, overrides, methods = cell
    runs = {}
    for seed in range(study.SEEDS):
        base_val = 0.88 + 0.004 * seed
        for method, options, val in (
            ("midas_sampler_hard", accuracy.method_options("glyphs", epochs, overrides), base_val + val_diff),
            ("midas", accuracy.method_options("glyphs", epochs), base_val),
        ):
            key = accuracy.run_key("glyphs", data, method, seed, epochs, options)
            runs[key] = {
                "key": key,
                "method": method,
                "val_score": {"precise": val + 0.001 * (seed % 2)},
                "test": {"precise": {"accuracy": 0.9, "per_modality_accuracy": {"image": 0.5, "audio": 0.8}}},
            }
    return runs, cell


def test_a_sampler_variant_shows_its_test_figure_only_after_winning_on_validation() -> None:
    runs, cell = _study_log(val_diff=0.0)
    row = study.cell_row(runs, "sampler", cell, study.SEEDS)
    assert row is not None and row["val_vs_midas"]["verdict"] == "tie"
    assert "vs_midas" not in row and "subject_accuracy" not in row and "midas_accuracy" not in row
    assert "not looked at" in study.markdown([row])
    runs, cell = _study_log(val_diff=0.02)
    row = study.cell_row(runs, "sampler", cell, study.SEEDS)
    assert row is not None and row["val_vs_midas"]["verdict"] == "win"
    assert row["vs_midas"]["mean"] == pytest.approx(0.0)


def test_a_variant_cell_keeps_its_own_figures_apart_from_the_midas_reference() -> None:
    cell = next(c for c in study.AXES["weak_weight"] if c[0] == "no_weak")
    label, data, epochs, overrides, methods = cell
    options = accuracy.method_options("glyphs", epochs)
    runs = {}
    for seed in range(study.SEEDS):
        for method, test in (("midas_no_weak", 0.80 + 0.01 * seed), ("midas", 0.90 + 0.01 * seed)):
            key = accuracy.run_key("glyphs", data, method, seed, epochs, options)
            metrics = {"accuracy": test, "per_modality_accuracy": {"image": test / 2, "audio": test}}
            runs[key] = {"key": key, "method": method, "val_score": {"precise": test}, "test": {"precise": metrics}}
    row = study.cell_row(runs, "weak_weight", cell, study.SEEDS)
    assert row is not None and row["method"] == "midas_no_weak"
    assert row["subject_accuracy"] == pytest.approx(0.82) and row["midas_accuracy"] == pytest.approx(0.92)
    assert row["subject_image_head"] == pytest.approx(0.41) and row["vs_midas"]["mean"] == pytest.approx(-0.10)
    assert "| midas_no_weak | 5 | 82.0 |" in study.markdown([row])
