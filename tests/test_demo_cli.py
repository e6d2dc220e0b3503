"""``python -m midas_data demo --quick``: the final JSON line and the report folder."""

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torchaudio")
pytest.importorskip("matplotlib")

from midas_data.__main__ import main  # noqa: E402

METRIC_KEYS = {"accuracy", "macro_f1", "misaligned_accuracy", "per_modality_accuracy"}


def test_quick_demo_prints_the_json_line_last_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"demo", "joint", "midas", "report"}
    assert summary["demo"] == "glyphs_speech" and summary["report"] == str(out)
    for method in ("joint", "midas"):
        assert set(summary[method]) == METRIC_KEYS
        assert set(summary[method]["per_modality_accuracy"]) == {"image", "audio"}
        assert 0.0 <= summary[method]["accuracy"] <= 1.0
    assert any(line.startswith("| joint |") for line in lines)
    # One seed, said so; a quick run is never passed off as comparable with the benchmark.
    assert any("This is one seed (0)" in line for line in lines)
    if any("benchmarks/accuracy.py on the same data" in line for line in lines):
        assert any("not comparable" in line for line in lines)
    for name in ("accuracy_curves.png", "modality_confidence.png", "alpha.png", "results.json", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert set(results["test"]) == {"joint", "midas"}
    assert "![" in (out / "summary.md").read_text()


def test_demo_rejects_too_few_epochs(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "1", "--out", str(tmp_path)])


def test_class_split_variant_replaces_one_modality_within_its_half():
    from midas_data.experiments.demo.variants import ClassSplitDataset, load_variant_splits

    base = load_variant_splits("demo", seed=0)["val"]
    split = ClassSplitDataset(base, seed=0)
    labels = split.labels
    first_half = labels < 5
    # Images are kept for digits 0-4, speech for 5-9; every replacement stays in its half.
    assert (split.image_source[first_half] == first_half.nonzero()[0]).all()
    assert (split.audio_source[~first_half] == (~first_half).nonzero()[0]).all()
    assert (labels[split.image_source[~first_half]] >= 5).all()
    assert (labels[split.audio_source[first_half]] < 5).all()
    assert (split.audio_source[first_half] != first_half.nonzero()[0]).all()
    i = int((~first_half).nonzero()[0][0])
    item, donor = split[i], base[int(split.image_source[i])]
    assert item["label"] == int(labels[i]) and bool((item["image"] == donor["image"]).all())
    again = ClassSplitDataset(base, seed=0)
    assert (again.image_source == split.image_source).all()


def test_unknown_variant_is_named():
    from midas_data.experiments.demo.variants import load_variant_splits

    with pytest.raises(KeyError, match="nope"):
        load_variant_splits("nope")
