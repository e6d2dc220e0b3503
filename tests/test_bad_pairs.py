"""The stats table's read-out for people (suspicious samples, CSV, pandas) and the pieces
of ``benchmarks/bad_pairs.py`` (injection, precision and recall)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

from midas_data import StatsTable
from midas_data.experiments.datasets import InMemoryDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

MODALITIES = ("image", "audio")


def small_table() -> StatsTable:
    """Six samples: 0-3 ordinary, 4 a bad pair (the audio head sure of another class), 5
    merely hard for the weak image head; 6 never seen."""
    table = StatsTable(7, MODALITIES, dtype=torch.float32)
    confidence = torch.tensor([[0.6, 0.9], [0.5, 0.95], [0.7, 0.9], [0.4, 0.92], [0.6, 0.01], [0.05, 0.9]])
    loss = torch.tensor([0.2, 0.3, 0.1, 0.4, 2.5, 1.0])
    table.update(torch.arange(6), confidence=confidence, loss=loss)
    return table


def test_suspicious_ranks_the_bad_pair_first_with_its_statistics():
    table = small_table()
    top = table.suspicious(2)
    assert top["by"] == "mismatch" and top["ids"].tolist()[0] == 4
    assert top["score"].shape == (2,) and top["score"][0] >= top["score"][1]
    assert torch.allclose(top["confidence"][0], torch.tensor([0.6, 0.01]))
    assert math.isclose(float(top["loss"][0]), 2.5, rel_tol=1e-6)
    assert set(top) >= {"ids", "score", "confidence", "similarity", "misaligned_loss", "loss", "last_step"}
    # The mismatch score discounts the weak head's usual doubt; "disagreement" does not.
    assert table.scores("mismatch")[4] > table.scores("mismatch")[5]
    assert table.scores("mismatch")[6].isnan()  # never seen: no score, never listed
    assert 6 not in table.suspicious(10)["ids"].tolist() and table.suspicious(10)["ids"].numel() == 6
    # Any column, and the doubt of one modality.
    assert table.suspicious(1, by="loss")["ids"].tolist() == [4]
    assert table.suspicious(1, by="doubt:image")["ids"].tolist() == [5]
    assert table.suspicious(1, by="confidence:audio")["ids"].tolist() == [1]
    with pytest.raises(ValueError, match="unknown"):
        table.suspicious(3, by="nonsense")
    with pytest.raises(ValueError, match="k"):
        table.suspicious(-1)


def test_csv_has_one_line_per_sample_and_empty_cells_for_unknowns(tmp_path):
    table = small_table()
    path = tmp_path / "stats.csv"
    table.to_csv(path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 7
    assert list(rows[0]) == [
        "id", "confidence_image", "confidence_audio", "similarity", "misaligned_loss", "loss", "last_step", "mismatch"
    ]  # fmt: skip
    assert rows[4]["id"] == "4" and float(rows[4]["confidence_audio"]) == pytest.approx(0.01)
    assert rows[4]["similarity"] == "" and rows[6]["loss"] == "" and rows[6]["last_step"] == "-1"
    picked = tmp_path / "picked.csv"
    table.to_csv(picked, ids=table.suspicious(2)["ids"])
    assert [r["id"] for r in csv.DictReader(picked.open())] == [str(i) for i in table.suspicious(2)["ids"].tolist()]


def test_dataframe_or_a_clear_import_error(monkeypatch):
    table = small_table()
    pd = pytest.importorskip("pandas")
    frame = table.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and frame.index.name == "id" and len(frame) == 7
    assert frame.loc[4, "loss"] == pytest.approx(2.5) and math.isnan(frame.loc[6, "loss"])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        table.to_dataframe()


def test_score_histogram_in_the_report(tmp_path):
    pytest.importorskip("matplotlib")
    from midas_data.experiments.report import plot_score_histogram

    table = small_table()
    path = plot_score_histogram(table.scores(), tmp_path / "hist.png", marked=[4])
    assert path.is_file() and path.stat().st_size > 1000


def test_injection_swaps_audio_across_classes_and_keeps_labels():
    from bad_pairs import inject, precision_recall, top_share

    n = 200
    labels = torch.arange(n) % 10
    audio = labels.float()[:, None].repeat(1, 3)  # the audio names its class
    train = InMemoryDataset({"image": torch.zeros(n, 2), "audio": audio}, labels)
    corrupted, injected = inject(train, seed=3)
    assert injected.numel() == 10 and torch.equal(corrupted.labels, labels)
    changed = (corrupted.tensors["audio"] != audio).any(dim=1)
    assert torch.equal(changed.nonzero().squeeze(1), injected)
    assert (corrupted.tensors["audio"][injected, 0] != labels[injected].float()).all()  # another class
    scores = torch.zeros(n)
    scores[injected[:8]] = 1.0
    flagged = top_share(scores, 0.05)
    assert precision_recall(flagged, injected) == (0.8, 0.8)


def test_score_history_averages_each_sample_over_the_epochs_it_was_known():
    from midas_data.feedback import ScoreHistory

    table = StatsTable(3, MODALITIES, dtype=torch.float32)
    history = ScoreHistory(table, by="loss")
    table.update(torch.tensor([0, 1]), loss=torch.tensor([1.0, 4.0]))
    history.record()
    table.update(torch.tensor([0, 1]), loss=torch.tensor([3.0, 0.0]))
    history.record()
    assert history.records == 2
    mean = history.scores()
    assert mean[:2].tolist() == [2.0, 2.0] and math.isnan(float(mean[2]))  # sample 2 never known
    table.update(torch.tensor([2]), loss=torch.tensor([9.0]))
    history.record()
    # 0 and 1 keep their last loss (3 and 0) in the third record; 2 counts once.
    assert history.scores().tolist() == [pytest.approx(7 / 3), pytest.approx(4 / 3), 9.0]
    top = history.suspicious(2)
    assert top["ids"].tolist() == [2, 0] and top["by"] == "mean loss"
    assert float(top["loss"][0]) == 9.0  # the table's latest statistics beside the mean


def test_score_history_finds_a_pair_that_the_last_epoch_forgot():
    """A bad pair the heads have fitted by the last epoch still stands out on average."""
    from midas_data.feedback import ScoreHistory

    table = small_table()
    history = ScoreHistory(table, by="surprise")
    history.record()  # sample 4: the audio head at 0.01 on its label
    table.update(torch.tensor([4]), confidence=torch.tensor([[0.6, 0.9]]))  # fitted at last
    history.record()
    assert table.suspicious(1)["ids"].tolist() != [4]
    assert history.suspicious(1)["ids"].tolist() == [4]


def test_score_history_checkpoints_and_checks_what_it_loads():
    from midas_data.feedback import ScoreHistory

    table = small_table()
    history = ScoreHistory(table, by="surprise")
    history.record()
    again = ScoreHistory(table, by="surprise")
    again.load_state_dict(history.state_dict())
    assert torch.allclose(again.scores(), history.scores(), rtol=0, atol=0, equal_nan=True) and again.records == 1
    with pytest.raises(ValueError, match="'loss', not 'surprise'"):
        again.load_state_dict({**history.state_dict(), "by": "loss"})
    with pytest.raises(ValueError, match="3 samples, the table 7"):
        again.load_state_dict({**history.state_dict(), "sum": torch.zeros(3), "count": torch.zeros(3)})
    with pytest.raises(ValueError, match="unknown"):
        ScoreHistory(table, by="no such score")
