"""The MM-IMDB and CMU-MOSEI recipes on tiny fixtures written in the layouts of
docs/recipes.md (JSON records and JPEG posters; per-split .npy arrays), so that the real
scanning, decoding and preprocessing run; both recipes train a few epochs on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from midas_data.__main__ import main  # noqa: E402
from midas_data.errors import MidasDataError  # noqa: E402
from midas_data.recipes import RECIPES, apply_overrides, recipe_config  # noqa: E402
from midas_data.recipes.mmimdb import GENRES, MultiHotDataset  # noqa: E402
from midas_data.recipes.mosei import RowDataset, sentiment_class  # noqa: E402

SMALL = ["image_size=32", "num_workers=0", "batch_size=4", "text_length=12", "sequence_length=6", "feature_dim=16"]
SETS = [x for s in SMALL for x in ("--set", s)]
DIMS = {"text": 7, "audio": 5, "vision": 4}
# Scores per split: hand-picked around the class boundaries (0, halves, the ends).
SCORES = {
    "train": [-3.0, -2.6, -1.5, -0.5, -0.2, 0.0, 0.0, 0.4, 0.5, 1.5, 2.5, 3.0],
    "valid": [-1.0, -0.4, 0.0, 0.6, 1.2, 2.0],
    "test": [-2.0, -0.8, 0.2, 0.3, 1.4, 2.8],
}
RNG = np.random.default_rng(0)


def make_mosei(root: Path) -> Path:
    """Train labels as [N, 1], valid as [N], test as [N, 7] (score, then six emotions)."""
    for split, scores in SCORES.items():
        folder = root / split
        folder.mkdir(parents=True)
        n = len(scores)
        for stream, dim in DIMS.items():
            np.save(folder / f"{stream}.npy", RNG.standard_normal((n, 8, dim)).astype(np.float32))
        labels = np.asarray(scores, dtype=np.float32)
        if split == "train":
            labels = labels[:, None]
        elif split == "test":
            labels = np.concatenate([labels[:, None], RNG.uniform(0, 3, (n, 6)).astype(np.float32)], axis=1)
        np.save(folder / "labels.npy", labels)
    return root


# id -> (split, genres); 0007 and 0011 have a genre of the left-out list.
MOVIES = {
    "0001": ("train", ["Drama"]),
    "0002": ("train", ["Comedy", "Romance"]),
    "0003": ("train", ["Drama", "Film-Noir", "Crime"]),
    "0004": ("train", ["Action", "Sci-Fi"]),
    "0005": ("train", ["Horror"]),
    "0006": ("train", ["Comedy"]),
    "0007": ("train", ["Drama", "News"]),
    "0008": ("dev", ["Drama", "Romance"]),
    "0009": ("dev", ["Documentary"]),
    "0010": ("test", ["Comedy", "Drama"]),
    "0011": ("test", ["Reality-TV"]),
    "0012": ("test", ["Western", "Action"]),
}


def make_mmimdb(root: Path) -> Path:
    (root / "dataset").mkdir(parents=True)
    split: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for key, (name, genres) in MOVIES.items():
        split[name].append(key)
        plot = [f"A short plot of movie {key}.", f"A much longer plot of movie {key}, with more words in it."]
        record = {"title": f"Movie {key}", "genres": genres, "plot": plot if int(key) % 2 else plot[1]}
        (root / "dataset" / f"{key}.json").write_text(json.dumps(record))
        pixels = RNG.integers(0, 255, (20, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "dataset" / f"{key}.jpeg")
    (root / "split.json").write_text(json.dumps(split))
    return root


def small(name: str, *more: str):
    return apply_overrides(recipe_config(name), [*SMALL, *more])


# -- CMU-MOSEI -------------------------------------------------------------------------------
def test_sentiment_classes_by_hand():
    binary = [sentiment_class(s, "binary") for s in (-3.0, -0.01, 0.0, 0.4, 3.0)]
    assert binary == [0, 0, 1, 1, 1]  # 0 is positive (non-negative), as in the MOSI recipe
    # Rounded to the nearest integer, halves to even, then -3..3 -> ids 0..6.
    seven = {s: sentiment_class(s, "7class") for s in (-3.0, -2.6, -1.5, -0.5, -0.2, 0.0, 0.5, 1.5, 2.5, 3.0)}
    assert seven == {-3.0: 0, -2.6: 0, -1.5: 1, -0.5: 3, -0.2: 3, 0.0: 3, 0.5: 3, 1.5: 5, 2.5: 5, 3.0: 6}
    with pytest.raises(MidasDataError, match="task: expected one of"):
        sentiment_class(1.0, "regression")


@pytest.mark.parametrize(
    "task, train_labels",
    [
        ("binary", [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
        ("7class", [0, 0, 1, 3, 3, 3, 3, 3, 3, 5, 5, 6]),
    ],
)
def test_mosei_reads_the_standard_split_and_maps_scores(tmp_path, task, train_labels):
    root = make_mosei(tmp_path / "mosei")
    recipe, config = RECIPES["mosei"], small("mosei", f"task={task}")
    scan = recipe.scan(root, config, check_media=True)
    assert scan.classes == (["negative", "positive"] if task == "binary" else ["-3", "-2", "-1", "0", "1", "2", "3"])
    assert {name: len(rows) for name, rows in scan.splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert [scan.samples[i].label for i in scan.splits["train"]] == train_labels
    test_scores = [scan.samples[i].label for i in scan.splits["test"]]  # column 0 of [N, 7]
    assert test_scores == ([0, 0, 1, 1, 1, 1] if task == "binary" else [1, 2, 3, 3, 4, 6])
    rows = [scan.samples[i] for i in scan.splits["val"]]
    dataset = RowDataset(rows, recipe.readers(config, None), train=False)
    item = dataset[4]
    expected = np.load(root / "valid" / "audio.npy")[4][:6]
    torch.testing.assert_close(item["audio"], torch.from_numpy(expected))  # row 4, cut to 6 steps
    assert {m: tuple(item[m].shape) for m in DIMS} == {"text": (6, 7), "audio": (6, 5), "vision": (6, 4)}
    encoders = recipe.encoders(config, item, None)
    batch = {m: torch.stack([dataset[i][m] for i in range(2)]) for m in DIMS}
    assert all(encoders[m](batch[m]).shape == (2, 16) for m in DIMS)
    padded = recipe.readers(small("mosei", "sequence_length=10"), None)["text"]
    assert padded(rows[0].files["text"], False, 0)[8:].abs().sum() == 0  # 8 steps, zero-padded to 10


def _expect(tmp_path: Path, change, match: str) -> None:
    root = make_mosei(tmp_path / "m")
    change(root)
    with pytest.raises(MidasDataError, match=match):
        RECIPES["mosei"].scan(root, small("mosei"))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r: (r / "test" / "vision.npy").unlink(), r"test/vision.npy: missing"),
        (lambda r: (r / "valid").rename(r / "dev"), r"valid: missing folder"),
        (
            lambda r: np.save(r / "train" / "text.npy", np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True),
            r"train/text.npy: cannot read as a .npy array",
        ),
        (
            lambda r: np.save(r / "train" / "audio.npy", np.ones((12, 8, 5), dtype=np.int64)),
            r"train/audio.npy: expected float features \[N, T, D\] or \[N, D\], got int64 \(12, 8, 5\)",
        ),
        (
            lambda r: np.save(r / "train" / "audio.npy", np.ones((12, 2, 8, 5), dtype=np.float32)),
            r"train/audio.npy: expected float features .* got float32 \(12, 2, 8, 5\)",
        ),
        (
            lambda r: np.save(r / "valid" / "vision.npy", np.ones((5, 8, 4), dtype=np.float32)),
            r"valid/vision.npy: 5 rows; expected one per score of .*valid/labels.npy \(6\)",
        ),
        (
            lambda r: np.save(r / "valid" / "labels.npy", np.array([0.0, 1.0, 3.5, 0, 0, 0])),
            r"valid/labels.npy: row 2: score 3.5; expected a sentiment score in \[-3, 3\]",
        ),
        (
            lambda r: np.save(r / "valid" / "labels.npy", np.zeros((6, 3))),
            r"valid/labels.npy: expected \[N\], \[N, 1\] or \[N, 7\]",
        ),
        (lambda r: np.save(r / "valid" / "labels.npy", np.array(["a"] * 6)), r"valid/labels.npy: expected sentiment"),
        (lambda r: np.save(r / "valid" / "labels.npy", np.float32(1.0)), r"valid/labels.npy: expected sentiment"),
        (lambda r: (r / "test" / "labels.npy").write_bytes(b"junk"), r"test/labels.npy: cannot read as a .npy"),
    ],
    ids=["missing", "folder", "object", "int", "ndim", "rows", "range", "columns", "strings", "scalar", "junk"],
)
def test_mosei_malformed_files_are_errors_naming_the_path(tmp_path, change, match):
    _expect(tmp_path, change, match)


def test_mosei_pickles_are_refused_with_the_layout_to_convert_to(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mosei_senti_data.pkl").write_bytes(b"not read")
    config = small("mosei")
    with pytest.raises(MidasDataError, match=r"mosei_senti_data.pkl: pickle files are never loaded.*convert it"):
        RECIPES["mosei"].scan(tmp_path / "p", config)
    with pytest.raises(MidasDataError, match=r"data.pkl: pickle files are never loaded"):
        RECIPES["mosei"].scan(tmp_path / "data.pkl", config)
    root = make_mosei(tmp_path / "m")
    (root / "test" / "text.npy").rename(root / "test" / "text.pkl")
    with pytest.raises(MidasDataError, match=r"test/text.pkl: pickle files are never loaded.*\{train,valid,test\}"):
        RECIPES["mosei"].scan(root, config)


def test_mosei_nan_row_is_found_when_read_with_its_path_and_row(tmp_path, capsys):
    root = make_mosei(tmp_path / "m")
    features = np.load(root / "test" / "vision.npy")
    features[3, 2, 1] = np.nan
    np.save(root / "test" / "vision.npy", features)
    args = ["reproduce", "--dataset", "mosei", "--root", str(root), "--dry-run", "--no-progress", *SETS]
    assert main(args) == 2
    assert "test/vision.npy: row 3 contains NaN or inf" in capsys.readouterr().err


def test_mosei_dry_run_prints_the_split_counts_and_first_batch(tmp_path, capsys):
    root = make_mosei(tmp_path / "m")
    args = ["reproduce", "--dataset", "mosei", "--root", str(root), "--dry-run", "--no-progress", *SETS]
    assert main([*args, "--set", "task=7class"]) == 0
    out = capsys.readouterr().out
    assert "CMU-MOSEI config (--set NAME=VALUE overrides a field):" in out and '  task = "7class"' in out
    assert "CMU-MOSEI under" in out and "(the dataset's own split)" in out
    assert "class   train     val    test" in out
    assert "-3          2       0       0" in out and "0           6       2       2" in out
    assert "total      12       6       6" in out
    assert "first training batch: text [4, 6, 7], audio [4, 6, 5], vision [4, 6, 4], label [4]" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["samples"] == {"train": 12, "val": 6, "test": 6} and len(summary["classes"]) == 7


def test_mosei_trains_on_its_split_single_label(tmp_path, capsys):
    root = make_mosei(tmp_path / "m")
    out = tmp_path / "run"
    args = ["reproduce", "--dataset", "mosei", "--root", str(root), "--out", str(out), "--epochs", "5"]
    sets = [*SETS, "--set", "warmup_epochs=1", "--set", "num_workers=2"]  # workers, as users train
    assert main([*args, "--no-progress", *sets]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["midas"]["per_modality_accuracy"]) == {"text", "audio", "vision"}
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == {"train": 12, "val": 6, "test": 6}
    assert "the dataset's standard split" in (out / "summary.md").read_text()


# -- MM-IMDB ---------------------------------------------------------------------------------
def test_mmimdb_reads_the_distributed_layout_with_multi_hot_labels(tmp_path):
    root = make_mmimdb(tmp_path / "mmimdb")
    recipe, config = RECIPES["mmimdb"], small("mmimdb")
    scan = recipe.scan(root, config, check_media=True)
    assert scan.classes == list(GENRES) and len(GENRES) == 23 and scan.multilabel
    keys = {name: [scan.samples[i].key for i in rows] for name, rows in scan.splits.items()}
    assert keys == {
        "train": ["0001", "0002", "0003", "0004", "0005", "0006"],
        "val": ["0008", "0009"],
        "test": ["0010", "0012"],
    }  # 0007 (News) and 0011 (Reality-TV) left out
    assert "left out 2 movies" in " ".join(scan.notes)
    third = scan.samples[2]
    assert third.label == (GENRES.index("Drama"), GENRES.index("Crime"), GENRES.index("Film-Noir"))
    dataset = scan.dataset([scan.samples[i] for i in scan.splits["train"]], recipe.readers(config, None), train=False)
    assert isinstance(dataset, MultiHotDataset)
    item = dataset[2]
    assert item["label"].dtype == torch.float32 and item["label"].shape == (23,)
    assert item["label"].nonzero().flatten().tolist() == [0, 4, 22]
    assert tuple(item["image"].shape) == (3, 1, 32, 32) and tuple(item["text"].shape) == (12,)
    # The longest plot, as UTF-8 bytes + 1 (no tokenizer given), cut to 12 tokens.
    assert bytes((item["text"] - 1).tolist()).decode() == "A much longe"
    assert dataset.labels().sum(0)[GENRES.index("Comedy")] == 2
    encoders = recipe.encoders(config, item, None)
    batch = {m: torch.stack([dataset[i][m] for i in range(2)]) for m in ("image", "text")}
    for modality, encoder in encoders.items():
        encoder.eval()
        assert encoder(batch[modality]).shape == (2, encoder.out_features)


def _broken(root: Path, name: str) -> None:
    data = root / "dataset"
    if name == "split":
        (root / "split.json").unlink()
    elif name == "json":
        (data / "0004.json").write_text('{"genres": ["Action"], "plot": ')
    elif name == "record":
        (data / "0009.json").unlink()
    elif name == "genre":
        (data / "0005.json").write_text(json.dumps({"genres": ["Horror", "Slapstick"], "plot": "x"}))
    elif name == "plot":
        (data / "0005.json").write_text(json.dumps({"genres": ["Horror"], "plot": [1, 2]}))
    elif name == "genres":
        (data / "0005.json").write_text(json.dumps({"genres": "Horror", "plot": "x"}))
    elif name == "twice":
        (root / "split.json").write_text(json.dumps({"train": ["0001", "0002"], "dev": ["0002"], "test": ["0010"]}))
    elif name == "dev":
        (root / "split.json").write_text(json.dumps({"train": ["0001"], "test": ["0010"]}))
    elif name == "poster":
        (data / "0006.jpeg").unlink()


@pytest.mark.parametrize(
    "name, match",
    [
        ("split", r"split.json: missing; expected the split"),
        ("json", r"dataset/0004.json: cannot read as JSON"),
        ("record", r"dataset/0009.json: missing; expected the movie's record"),
        ("genre", r"dataset/0005.json: class 'Slapstick' is not in the class list"),
        ("plot", r"dataset/0005.json: 'plot' is \[1, 2\]; expected a non-empty list of strings"),
        ("genres", r"dataset/0005.json: 'genres' is 'Horror'; expected a non-empty list of genre names"),
        ("twice", r"split.json: movie '0002' is in both train and val"),
        ("dev", r"split.json: 'dev' is missing"),
        ("poster", r"dataset/0006.jpeg: missing poster of movie '0006'"),
    ],
)
def test_mmimdb_malformed_files_are_errors_naming_the_path(tmp_path, name, match):
    root = make_mmimdb(tmp_path / "mmimdb")
    _broken(root, name)
    with pytest.raises(MidasDataError, match=match):
        RECIPES["mmimdb"].scan(root, small("mmimdb"))


def test_mmimdb_undecodable_poster_fails_the_dry_run_or_is_skipped(tmp_path, capsys):
    root = make_mmimdb(tmp_path / "mmimdb")
    (root / "dataset" / "0003.jpeg").write_bytes(b"not a jpeg")
    args = ["reproduce", "--dataset", "mmimdb", "--root", str(root), "--dry-run", "--no-progress", *SETS]
    assert main(args) == 2
    assert "dataset/0003.jpeg: cannot read as an image" in capsys.readouterr().err
    assert main([*args, "--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable samples" in captured.err and "0003.jpeg" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["samples"] == {"train": 5, "val": 2, "test": 2}


def test_mmimdb_dry_run_prints_genre_balance_and_the_first_batch(tmp_path, capsys):
    root = make_mmimdb(tmp_path / "mmimdb")
    args = ["reproduce", "--dataset", "mmimdb", "--root", str(root), "--dry-run", "--no-progress", *SETS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "MM-IMDB under" in out and "(the dataset's own split)" in out
    assert "Drama             2       1       1" in out and "Film-Noir         1       0       0" in out
    assert "total             6       2       2" in out
    assert "genres per movie: 1.70 on average" in out
    assert "first training batch: image [4, 3, 1, 32, 32], text [4, 12], label [4, 23]" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["classes"] == list(GENRES) and summary["samples"] == {"train": 6, "val": 2, "test": 2}


def test_multilabel_metrics_by_hand_and_as_scikit_learn_at_thresholds_from_validation():
    pytest.importorskip("sklearn")
    from midas_data.experiments.evaluation import Predictions, multilabel_metrics

    probabilities = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6], [0.1, 0.2, 0.3]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logits = torch.logit(probabilities)
    preds = Predictions(targets, logits, {"image": logits, "text": logits.flip(1)}, {})
    scores = multilabel_metrics(preds, {"fusion": 0.5, "image": 0.5, "text": 0.5})
    # class 0: tp 1 fn 1 -> 2/3; class 1: tp 1 fp 1 -> 2/3; class 2: tp 1 -> 1. Micro: tp 3, fp 1, fn 1.
    assert scores["micro_f1"] == pytest.approx(6 / 8)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert scores["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1 * 2 / 3 + 1 * 1) / 4)
    assert scores["samples_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores["per_modality_micro_f1"]["image"] == pytest.approx(6 / 8)
    # Chosen on this split (validation): every threshold in (0.3, 0.6] gives tp 3, fp 1, fn 1
    # (6/8); 0.3 lets row 2's 0.3 in (a false positive), above 0.6 row 1's 0.6 drops out
    # (4/7); the smallest of the equal grid thresholds wins: 0.35.
    chosen = multilabel_metrics(preds)
    assert chosen["thresholds"]["fusion"] == pytest.approx(0.35) and chosen["micro_f1"] == pytest.approx(6 / 8)
    with pytest.raises(KeyError, match=r"no threshold for heads \['text'\]"):
        multilabel_metrics(preds, {"fusion": 0.5, "image": 0.5})


def test_mmimdb_trains_with_workers_scores_at_validation_thresholds_and_resumes(tmp_path, capsys):
    pytest.importorskip("sklearn")
    root = make_mmimdb(tmp_path / "mmimdb")
    out = tmp_path / "run"
    args = ["reproduce", "--dataset", "mmimdb", "--root", str(root), "--out", str(out), "--epochs", "3"]
    sets = [*SETS, "--set", "num_workers=2", "--set", "warmup_epochs=1"]
    assert main([*args, "--no-progress", *sets]) == 0
    printed = capsys.readouterr().out
    assert "MM-IMDB (midas): test split, best-on-validation checkpoint (percent)" in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    run = results["midas"]
    assert results["samples"] == {"train": 6, "val": 2, "test": 2} and len(run["history"]) == 3
    best = run["history"][run["best_epoch"]]["val"]
    assert run["test"]["thresholds"] == best["thresholds"]  # chosen on validation, applied to test
    for key in ("micro_f1", "macro_f1", "weighted_f1", "samples_f1"):
        assert 0.0 <= run["test"][key] <= 1.0 and summary["midas"][key] == run["test"][key]
    assert set(run["test"]["per_modality_micro_f1"]) == {"image", "text"}
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    # Resumed from the epoch-end checkpoint to five epochs, as the single-label recipes resume.
    args[-1] = "5"
    assert main([*args, "--no-progress", *sets]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--no-progress", *sets]) == 0
    run = json.loads((out / "results.json").read_text())["midas"]
    assert [r["epoch"] for r in run["history"]] == [0, 1, 2, 3, 4]
    assert run["test"]["thresholds"] == run["history"][run["best_epoch"]]["val"]["thresholds"]
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 4 and saved["objective"]["_extra_state"]["epoch"] == 4


# -- the configs -------------------------------------------------------------------------------
def test_configs_print_and_override(capsys):
    mosei, mmimdb = recipe_config("mosei"), recipe_config("mmimdb")
    assert (mosei.task, mosei.modalities, mosei.sequence_length) == ("binary", ("text", "audio", "vision"), 50)
    assert (mmimdb.task, mmimdb.modalities, mmimdb.text_length) == ("multilabel", ("image", "text"), 512)
    assert mmimdb.metrics == ("micro_f1", "macro_f1", "weighted_f1", "samples_f1")
    assert apply_overrides(mosei, ["task=7class"]).task == "7class"
    with pytest.raises(MidasDataError, match=r"task=regression: expected one of \['binary', '7class'\] for mosei"):
        apply_overrides(mosei, ["task=regression"])
    with pytest.raises(MidasDataError, match=r"task=multilabel: expected one of \['multiclass'\] for cremad"):
        apply_overrides(recipe_config("cremad"), ["task=multilabel"])
    assert main(["reproduce", "--dataset", "mmimdb", "--root", "x", "--print-config", "--set", "lr=0.05"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.05" in out and 'task = "multilabel"' in out
    assert 'metrics = ["micro_f1", "macro_f1", "weighted_f1", "samples_f1"]  # the usual MM-IMDB F1' in out
    assert main(["reproduce", "--dataset", "mosei", "--root", "x", "--print-config", "--set", "task=7class"]) == 0
    assert 'task = "7class"  # binary (score >= 0 is positive)' in capsys.readouterr().out


def test_write_shards_per_standard_split_for_mosei_and_mmimdb_with_multi_hot_labels(tmp_path, capsys):
    pytest.importorskip("midas_data.streaming.writer")
    mosei, shards = make_mosei(tmp_path / "m"), tmp_path / "shards"
    args = ["reproduce", "--dataset", "mosei", "--root", str(mosei), "--write-shards", str(shards), "--no-progress"]
    assert main([*args, *SETS]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["shards"]) == {"train", "val", "test"}
    assert all(list((shards / split).glob("*.tar")) for split in ("train", "val", "test"))
    mmimdb, shards = make_mmimdb(tmp_path / "mm"), tmp_path / "s2"
    args = ["reproduce", "--dataset", "mmimdb", "--root", str(mmimdb), "--write-shards", str(shards)]
    assert main([*args, "--no-progress", *SETS]) == 0
    wds = pytest.importorskip("webdataset")
    from midas_data.streaming import MidasBatches, ShardIndex

    index = ShardIndex.load(shards / "train")
    assert index.fields["label"] == "label.npy"
    stage = MidasBatches(("image", "text"), "label", batch_size=6, index=index, num_classes=23, shuffle=False)
    batches = list(wds.WebDataset(index.urls, shardshuffle=False, empty_check=False).compose(stage))
    labels = torch.cat([b.labels for b in batches])
    assert labels.shape == (6, 23) and labels[2].nonzero().flatten().tolist() == [0, 4, 22]  # movie 0003


def test_the_imbalance_check_reads_mosei_on_its_split_and_refuses_multi_label(tmp_path, capsys):
    import json

    from midas_data.__main__ import main

    root = make_mosei(tmp_path / "mosei")
    sets = [x for s in SMALL for x in ("--set", s)]
    argv = ["check", "--dataset", "mosei", "--root", str(root), "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main(argv + sets) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["check"] == "mosei" and set(summary["modalities"]) == {"text", "audio", "vision"}
    movies = make_mmimdb(tmp_path / "mmimdb")
    argv = ["check", "--dataset", "mmimdb", "--root", str(movies), "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main(argv + sets) == 2
    assert "multi-label" in capsys.readouterr().err
