"""The imbalance check: the verdict rule at its thresholds, the function on a tiny budget,
the ``check`` command, bad input, and the example of docs/imbalance_check.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from midas_data.__main__ import main
from midas_data.experiments import InMemoryDataset, build_model
from midas_data.experiments.imbalance import (
    INFORMATIVE_LIFT,
    LITTLE_LIFT,
    UNDERUSED_GAP,
    VERDICTS,
    ImbalanceReport,
    check_imbalance,
    decide,
    plot_imbalance,
)

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-3


# -- the rule on hand-made numbers (chance 0: the lift is the accuracy itself) ---------------
def test_a_lift_just_below_the_little_threshold_hurts_and_at_it_does_not():
    assert decide(LITTLE_LIFT - EPS, 0.0, 0.0)[0] == "hurts"
    assert decide(LITTLE_LIFT, 0.0, 0.0)[0] != "hurts"
    # Even a large gap does not rescue a modality that carries little.
    assert decide(LITTLE_LIFT - EPS, 0.0, 0.0, gap_low=0.2)[0] == "hurts"


def test_an_informative_modality_is_judged_by_its_gap():
    alone = 0.9
    assert decide(alone, alone - UNDERUSED_GAP - EPS, 0.0)[0] == "helps"
    assert decide(alone, alone - UNDERUSED_GAP + EPS, 0.0)[0] == "no_need"
    assert decide(alone, alone, 0.0)[0] == "no_need"
    assert "balanced" in decide(alone, alone, 0.0)[1]
    # A large mean gap whose interval reaches 0 is not evidence of under-use.
    assert decide(alone, 0.5, 0.0, gap_low=-0.01)[0] == "no_need"
    assert decide(alone, 0.5, 0.0, gap_low=0.01)[0] == "helps"


def test_the_informative_threshold_separates_helps_from_in_between():
    assert decide(INFORMATIVE_LIFT, 0.2, 0.0)[0] == "helps"
    below = decide(INFORMATIVE_LIFT - EPS, 0.2, 0.0)
    assert below[0] == "no_need" and "moderately" in below[1]


def test_the_lift_is_measured_from_chance():
    # The same accuracy carries less when chance is higher: just under the little threshold
    # above a chance of 0.2, well over it above a chance of 0.
    weak = 0.2 + 0.8 * (LITTLE_LIFT - EPS)
    assert decide(weak, 0.0, 0.2)[0] == "hurts"
    assert decide(weak, 0.0, 0.0)[0] != "hurts"
    assert decide(0.2 + 0.8 * (INFORMATIVE_LIFT + EPS), 0.1, 0.2)[0] == "helps"


@pytest.mark.parametrize(
    "args, words",
    [((1.5, 0.2, 0.1), "alone"), ((0.5, math.nan, 0.1), "head"), ((0.5, 0.2, 1.0), "chance")],
)
def test_decide_rejects_figures_outside_an_accuracy(args, words):
    with pytest.raises(ValueError, match=words):
        decide(*args)


# -- the function on a tiny budget ------------------------------------------------------------
def _splits(n_train: int = 150, n_val: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prototypes = 2.0 * torch.randn(3, 1, 4, 4, generator=g)

    def split(n):
        labels = torch.arange(n) % 3
        signal = prototypes[labels] + 0.3 * torch.randn(n, 1, 4, 4, generator=g)
        noise = torch.randn(n, 1, 4, 4, generator=g)
        return InMemoryDataset({"signal": signal, "noise": noise}, labels)

    return split(n_train), split(n_val)


SHAPES = {"signal": (1, 4, 4), "noise": (1, 4, 4)}


def factory():
    return build_model(SHAPES, 3, feature_dim=16)


@pytest.fixture(scope="module")
def tiny_report() -> ImbalanceReport:
    train, val = _splits()
    return check_imbalance(factory, train, val, ["signal", "noise"], seeds=2, epochs=3, progress=False)


def test_the_report_has_a_row_per_modality_with_per_seed_figures(tiny_report):
    report = tiny_report
    assert [r.modality for r in report.rows] == ["signal", "noise"]
    assert set(report.verdicts) == {"signal", "noise"} and set(report.verdicts.values()) <= set(VERDICTS)
    for row in report.rows:
        assert len(row.alone_per_seed) == len(row.head_per_seed) == 2
        assert row.alone == pytest.approx(sum(row.alone_per_seed) / 2)
        assert row.gap["n"] == 2 and row.gap["low"] <= row.gap["mean"] <= row.gap["high"]
        assert row.gap["mean"] == pytest.approx(row.alone - row.head)
    assert report.chance == pytest.approx(1 / 3)
    assert (report.seeds, report.epochs) == (2, 3)
    assert report.thresholds == {
        "informative_lift": INFORMATIVE_LIFT,
        "little_lift": LITTLE_LIFT,
        "underused_gap": UNDERUSED_GAP,
    }


def test_the_check_tells_the_informative_modality_from_noise(tiny_report):
    signal, noise = tiny_report.row("signal"), tiny_report.row("noise")
    assert signal.alone > 0.9 and noise.alone < 0.6
    assert noise.verdict == "hurts" and tiny_report.weak == "noise" and tiny_report.verdict == "hurts"


def test_the_report_is_one_json_line_and_a_plot(tiny_report, tmp_path):
    line = tiny_report.to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert data["verdict"] == tiny_report.verdict and data["summary"] == VERDICTS[tiny_report.verdict]
    assert [r["modality"] for r in data["rows"]] == ["signal", "noise"]
    path = plot_imbalance(tiny_report, tmp_path / "sub" / "check.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "weak modality: noise" in tiny_report.table()


def test_a_subset_of_modalities_is_checked_alone():
    train, val = _splits(60, 30)
    report = check_imbalance(factory, train, val, ["noise"], seeds=2, epochs=1, progress=False)
    assert [r.modality for r in report.rows] == ["noise"] and report.weak == "noise"


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    train, val = _splits(30, 15)
    with pytest.raises(KeyError, match=r"unknown \['video'\].*the model has \['signal', 'noise'\]"):
        check_imbalance(factory, train, val, ["video"], progress=False)
    with pytest.raises(ValueError, match="seeds: expected at least 2"):
        check_imbalance(factory, train, val, ["signal"], seeds=1, progress=False)
    with pytest.raises(ValueError, match="modalities: expected at least one"):
        check_imbalance(factory, train, val, [], progress=False)
    empty = train.subset(torch.arange(0))
    with pytest.raises(ValueError, match="val: expected a non-empty split"):
        check_imbalance(factory, train, empty, ["signal"], progress=False)
    with pytest.raises(ValueError, match="train: expected a non-empty split"):
        check_imbalance(factory, [], val, ["signal"], progress=False)
    with pytest.raises(TypeError, match="LateFusionClassifier"):
        check_imbalance(lambda: torch.nn.Linear(2, 2), train, val, ["signal"], progress=False)
    with pytest.raises(KeyError, match="has no modality"):
        only_signal = InMemoryDataset({"signal": train.tensors["signal"]}, train.labels)
        check_imbalance(factory, only_signal, val, ["signal"], progress=False)


# -- the command --------------------------------------------------------------------------------
def test_check_quick_prints_a_json_line_last_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["check", "--quick", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["check"] == "glyphs_speech" and summary["quick"] is True
    assert summary["verdict"] in VERDICTS and summary["weak"] in ("image", "audio")
    assert set(summary["modalities"]) == {"image", "audio"}
    assert Path(summary["plot"]) == out / "imbalance_check.png" and Path(summary["plot"]).is_file()
    assert json.loads((out / "report.json").read_text())["seeds"] == 2
    assert any("weak modality:" in line for line in lines[:-1])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--seeds", "1"], "seeds: expected at least 2"),
        (["--modalities", "video"], "unknown ['video']"),
        (["--dataset", "cremad"], "--root: expected the folder"),
        (["--root", "somewhere"], "--root: the demo data is bundled"),
    ],
)
def test_check_bad_input_exits_2_naming_what_was_expected(argv, words, tmp_path, capsys):
    assert main(["check", "--quick", "--no-progress", "--out", str(tmp_path), *argv]) == 2
    captured = capsys.readouterr()
    assert words in captured.err and captured.out == ""


# -- as a new user would, from the docs -----------------------------------------------------
def _doc_example() -> str:
    text = (ROOT / "docs" / "imbalance_check.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/imbalance_check.md: expected one Python example"
    return blocks[0]


def test_the_docs_example_runs_and_finds_the_noise(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_doc_example(), "docs/imbalance_check.md", "exec"), scope)
    report = scope["report"]
    assert report.verdicts["noise"] == "hurts" and report.weak == "noise"
    assert json.loads(scope["line"])["weak"] == "noise"
    assert (tmp_path / "check.png").is_file()
    assert "weak modality: noise" in capsys.readouterr().out


def test_the_docs_quote_the_thresholds_of_the_code():
    text = " ".join((ROOT / "docs" / "imbalance_check.md").read_text().split())
    assert f"lift below {LITTLE_LIFT:.2f} (`LITTLE_LIFT`)" in text
    assert f"lift at least {INFORMATIVE_LIFT:.2f} (`INFORMATIVE_LIFT`)" in text
    assert f"gap below {100 * UNDERUSED_GAP:.0f} points (`UNDERUSED_GAP`)" in text


def test_check_runs_on_a_recipe_fixture(tmp_path, capsys):
    for module in ("soundfile", "PIL", "torchaudio"):
        pytest.importorskip(module)
    from test_recipes import SMALL, make_cremad

    root = make_cremad(tmp_path / "cremad", per_class=4)
    sets = [x for s in SMALL for x in ("--set", s)]
    argv = ["check", "--dataset", "cremad", "--root", str(root), "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main(argv + sets) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["check"] == "cremad" and set(summary["modalities"]) == {"audio", "video"}
    assert main(argv + ["--image-noise", "0.3"]) == 2
    assert "only for --dataset demo" in capsys.readouterr().err
