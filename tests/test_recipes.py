"""Recipes on tiny fixtures built in exactly the layouts of docs/recipes.md: generated
WAV, JPEG, text and .npy files, so that the real scanning, decoding and preprocessing run.
Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchaudio")

import soundfile  # noqa: E402
from PIL import Image  # noqa: E402

from midas_data.__main__ import main  # noqa: E402
from midas_data.errors import MidasDataError  # noqa: E402
from midas_data.recipes import RECIPES, RecipeDataset, apply_overrides, recipe_config, stratified_split  # noqa: E402
from midas_data.recipes.encoders import FrameEncoder, ResNet18, SpectrogramEncoder  # noqa: E402

# Small preprocessing so the fixtures run in seconds; the code paths are the paper's.
SMALL = [
    "audio_frames=48",
    "image_size=32",
    "num_workers=0",
    "batch_size=4",
    "text_length=12",
    "sequence_length=6",
    "resnet_width=8",
    "feature_dim=16",
]
RNG = np.random.default_rng(0)


def wav(path: Path, seconds: float = 0.3, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * RNG.uniform(200, 800) * t) + 0.01 * RNG.standard_normal(t.size)
    soundfile.write(str(path), tone.astype(np.float32), rate)


def jpg(path: Path, mode: str = "RGB", size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = RNG.integers(0, 255, (size, size, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


def frames(folder: Path, count: int = 4, mode: str = "RGB", prefix: str = "frame") -> None:
    for i in range(count):
        jpg(folder / f"{prefix}_{i:05d}.jpg", mode)


def make_cremad(root: Path, per_class: int = 4, emotions=("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")) -> Path:
    for e_i, emotion in enumerate(emotions):
        for k in range(per_class):
            name = f"10{e_i:02d}_{['DFA', 'IEO', 'TIE', 'MTI'][k % 4]}_{emotion}_X{'ABCD'[k % 4]}"
            wav(root / "AudioWAV" / f"{name}.wav")
            frames(root / "Image-01-FPS" / name, count=2 + k % 3)
    return root


def make_kinetics(root: Path, classes=("playing drums", "singing", "dog barking"), per_class: int = 4) -> Path:
    for c in classes:
        for k in range(per_class):
            wav(root / "audio" / c / f"clip{k}.wav")
            frames(root / "visual" / c / f"clip{k}", count=5)
    return root


def make_ucf(root: Path, classes=("ApplyEyeMakeup", "Archery", "Basketball"), per_class: int = 4) -> Path:
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    for c in classes:
        for k in range(per_class):
            video = f"v_{c}_g01_c0{k}"
            frames(root / "rgb" / c / video, count=6, prefix="img")
            frames(root / "flow_u" / c / video, count=5, mode="L")
            frames(root / "flow_v" / c / video, count=5, mode="L")
    return root


def make_food(root: Path, classes=("apple_pie", "ramen", "sushi"), per_class: int = 4) -> Path:
    for c in classes:
        for k in range(per_class):
            jpg(root / "images" / c / f"{c}_{k}.jpg")
            text = root / "texts" / c / f"{c}_{k}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text(f"The best {c.replace('_', ' ')} recipe number {k}")
    return root


def make_mosi(root: Path, count: int = 12) -> Path:
    dims = {"text": 7, "audio": 5, "vision": 4}
    rows = ["id,label"]
    for i in range(count):
        key = f"seg{i:03d}"
        rows.append(f"{key},{(-2.0 if i % 2 else 1.5) + 0.1 * i / count}")
        for stream, dim in dims.items():
            (root / stream).mkdir(parents=True, exist_ok=True)
            np.save(root / stream / f"{key}.npy", RNG.standard_normal((3 + i % 5, dim)).astype(np.float32))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


MAKERS = {
    "cremad": make_cremad,
    "kinetics_sounds": make_kinetics,
    "ucf101": make_ucf,
    "food101": make_food,
    "mosi": make_mosi,
}
SHAPES = {
    "cremad": {"audio": (1, 48, 128), "video": (3, 3, 32, 32)},
    "kinetics_sounds": {"audio": (1, 48, 128), "video": (3, 3, 32, 32)},
    "ucf101": {"rgb": (3, 3, 32, 32), "flow": (2, 3, 32, 32)},
    "food101": {"image": (3, 1, 32, 32), "text": (12,)},
    "mosi": {"text": (6, 7), "audio": (6, 5), "vision": (6, 4)},
}


def small_config(name: str):
    return apply_overrides(recipe_config(name), SMALL)


# -- the split and the config ---------------------------------------------------------------
def test_stratified_split_is_70_10_20_per_class_disjoint_and_seeded():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    splits = stratified_split(labels, seed=3)
    every = sorted(splits["train"] + splits["val"] + splits["test"])
    assert every == list(range(100))
    counts = {name: [sum(labels[i] == c for i in idx) for c in range(3)] for name, idx in splits.items()}
    assert counts == {"train": [35, 21, 14], "val": [5, 3, 2], "test": [10, 6, 4]}
    assert stratified_split(labels, seed=3) == splits
    assert stratified_split(labels, seed=4) != splits
    tiny = stratified_split([0, 0, 0, 1, 1, 1])
    assert all(len(idx) == 2 for idx in tiny.values())  # every class in every split


def test_configs_hold_the_papers_values_and_overrides_parse():
    cremad, ks, ucf, food = (recipe_config(n) for n in ("cremad", "kinetics_sounds", "ucf101", "food101"))
    assert (cremad.lr, cremad.epochs, cremad.warmup_epochs, cremad.lam, cremad.step_size) == (1e-3, 70, 10, 1.0, 50)
    assert (cremad.mel_bins, cremad.audio_frames, cremad.video_frames, cremad.alpha_max) == (128, 1024, 3, None)
    assert (ks.lam, ks.alpha_max, ks.warmup_epochs) == (5.0, 10.0, 10)
    assert (ucf.lr, ucf.warmup_epochs) == (1e-2, 0)
    assert (food.epochs, food.warmup_epochs, food.step_size) == (30, 2, 15)
    assert (cremad.batch_size, cremad.momentum, cremad.weight_decay) == (64, 0.9, 1e-4)
    changed = apply_overrides(cremad, ["lr=0.01", "alpha_max=none", "split=0.8,0.1,0.1", "method=joint"])
    assert (changed.lr, changed.alpha_max, changed.split, changed.method) == (0.01, None, (0.8, 0.1, 0.1), "joint")
    assert "lam = 1.0" in cremad.describe() and "warmup_epochs = 10  # paper" in cremad.describe()
    with pytest.raises(MidasDataError, match="NAME one of"):
        apply_overrides(cremad, ["learning_rate=1"])
    with pytest.raises(MidasDataError, match="expected a float"):
        apply_overrides(cremad, ["lr=fast"])


def test_print_config_prints_the_overridden_config(capsys):
    assert (
        main(["reproduce", "--dataset", "kinetics_sounds", "--root", "nowhere", "--print-config", "--set", "lr=0.5"])
        == 0
    )
    out = capsys.readouterr().out
    assert "lam = 5.0" in out and "lr = 0.5" in out and "alpha_max = 10.0" in out


# -- every recipe reads its fixture ---------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_recipe_reads_its_documented_layout(tmp_path, name):
    root = MAKERS[name](tmp_path / name)
    recipe, config = RECIPES[name], small_config(name)
    scan = recipe.scan(root, config, check_media=True)
    assert len(scan.samples) == 12 if name != "cremad" else 24
    assert scan.skipped == []
    dataset = RecipeDataset(scan.samples, recipe.readers(config, None), train=True)
    item = dataset[0]
    for modality, shape in SHAPES[name].items():
        assert tuple(item[modality].shape) == shape, modality
        assert torch.isfinite(item[modality].float()).all()
    assert item["label"] == scan.samples[0].label
    encoders = recipe.encoders(config, item, None)
    batch = {m: torch.stack([dataset[i][m] for i in range(2)]) for m in encoders}
    for modality, encoder in encoders.items():
        encoder.eval()
        assert encoder(batch[modality]).shape == (2, encoder.out_features)


def test_cremad_labels_come_from_the_file_name(tmp_path):
    scan = RECIPES["cremad"].scan(make_cremad(tmp_path / "c", per_class=1), small_config("cremad"))
    assert {s.key.split("_")[2]: s.label for s in scan.samples} == {
        "ANG": 0,
        "DIS": 1,
        "FEA": 2,
        "HAP": 3,
        "NEU": 4,
        "SAD": 5,
    }


def test_fbank_is_the_papers_normalised_kaldi_fbank(tmp_path):
    from torchaudio.compliance import kaldi

    from midas_data.recipes.media import FBANK_MEAN, FBANK_STD, read_wav
    from midas_data.recipes.readers import FbankReader

    wav(tmp_path / "a.wav", seconds=0.5)
    waveform, rate = read_wav(tmp_path / "a.wav")
    direct = kaldi.fbank(
        (waveform - waveform.mean()).unsqueeze(0),
        htk_compat=True,
        sample_frequency=rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    out = FbankReader(128, 1024)([tmp_path / "a.wav"], False)
    assert out.shape == (1, 1024, 128)
    n = direct.shape[0]  # 48 frames of a 0.5 s clip, then padding
    torch.testing.assert_close(out[0, :n], (direct - FBANK_MEAN) / (2 * FBANK_STD))
    # Zero-padded before the normalisation, as the paper's code does.
    torch.testing.assert_close(out[0, n:], torch.full((1024 - n, 128), -FBANK_MEAN / (2 * FBANK_STD)))


def test_resnet18_has_the_standard_size():
    assert sum(p.numel() for p in ResNet18(3).parameters()) == 11_176_512  # ResNet-18 without its classifier
    assert SpectrogramEncoder()(torch.randn(2, 1, 64, 128)).shape == (2, 512)
    assert FrameEncoder(2)(torch.randn(2, 2, 3, 32, 32)).shape == (2, 512)


# -- bad input -------------------------------------------------------------------------------
def test_bad_roots_and_names_are_errors_naming_the_path(tmp_path):
    config = small_config("cremad")
    scan = RECIPES["cremad"].scan
    with pytest.raises(MidasDataError, match="does not exist"):
        scan(tmp_path / "missing", config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MidasDataError, match="AudioWAV: missing folder"):
        scan(tmp_path / "empty", config)
    root = make_cremad(tmp_path / "c", per_class=1)
    wav(root / "AudioWAV" / "not-a-clip.wav")
    with pytest.raises(MidasDataError, match="not-a-clip.wav: the file name does not parse"):
        scan(root, config)
    (root / "AudioWAV" / "not-a-clip.wav").unlink()
    wav(root / "AudioWAV" / "1001_DFA_XYZ_XX.wav")
    with pytest.raises(MidasDataError, match="1001_DFA_XYZ_XX.wav: emotion 'XYZ' is not in the class list"):
        scan(root, config)


def test_class_outside_the_class_list_is_an_error(tmp_path):
    root = make_kinetics(tmp_path / "k")
    (root / "classes.txt").write_text("playing drums\nsinging\n")
    with pytest.raises(MidasDataError, match="dog barking'? is not in the class list"):
        RECIPES["kinetics_sounds"].scan(root, small_config("kinetics_sounds"))


def test_mosi_label_outside_the_range_names_the_row(tmp_path):
    root = make_mosi(tmp_path / "m")
    table = root / "labels.csv"
    table.write_text(table.read_text().replace("seg003,", "seg003,7"))
    with pytest.raises(MidasDataError, match=r"labels.csv:5: label .*expected a sentiment score in \[-3, 3\]"):
        RECIPES["mosi"].scan(root, small_config("mosi"))


def broken_cremad(tmp_path: Path) -> Path:
    root = make_cremad(tmp_path / "c", per_class=4)
    (root / "AudioWAV" / "1000_DFA_ANG_XA.wav").write_bytes(b"not a wav at all")
    missing = root / "Image-01-FPS" / "1001_IEO_DIS_XB"
    for f in missing.iterdir():
        f.unlink()
    missing.rmdir()
    return root


def test_unreadable_and_missing_media_fail_with_the_path_or_are_skipped_and_listed(tmp_path, capsys):
    root = broken_cremad(tmp_path)
    args = ["reproduce", "--dataset", "cremad", "--root", str(root), "--dry-run", "--no-progress"]
    sets = [x for s in SMALL for x in ("--set", s)]
    assert main(args + sets) == 2
    assert "1001_IEO_DIS_XB: missing frame folder" in capsys.readouterr().err
    # The frame folder present again, the bad WAV is found when read.
    frames(root / "Image-01-FPS" / "1001_IEO_DIS_XB")
    assert main(args + sets) == 2
    assert "1000_DFA_ANG_XA.wav: cannot read as audio" in capsys.readouterr().err
    for f in (root / "Image-01-FPS" / "1001_IEO_DIS_XB").iterdir():
        f.unlink()
    assert main(args + sets + ["--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 unreadable samples" in captured.err
    assert "1000_DFA_ANG_XA.wav" in captured.err and "1001_IEO_DIS_XB" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["skipped"]["count"] == 2 and sum(summary["samples"].values()) == 22


# -- the command -----------------------------------------------------------------------------
def test_dry_run_prints_counts_per_class_and_split_and_the_first_batch(tmp_path, capsys):
    root = make_cremad(tmp_path / "c", per_class=4)
    sets = [x for s in SMALL + ["num_workers=2"] for x in ("--set", s)]  # readers go to worker processes
    assert main(["reproduce", "--dataset", "cremad", "--root", str(root), "--dry-run", "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    assert "class   train     val    test" in out
    assert "ANG         2       1       1" in out and "total      12       6       6" in out
    assert "first training batch: audio [4, 1, 48, 128], video [4, 3, 3, 32, 32], label [4]" in out
    assert not (Path.cwd() / "reproduce_cremad").exists()


def test_reproduce_trains_two_epochs_writes_the_report_and_resumes(tmp_path, capsys):
    root = make_cremad(tmp_path / "c", per_class=4)
    out = tmp_path / "run"
    sets = [x for s in SMALL + ["warmup_epochs=1"] for x in ("--set", s)]
    base = ["reproduce", "--dataset", "cremad", "--root", str(root), "--out", str(out), "--no-progress", *sets]
    torch.set_num_threads(2)
    assert main(base + ["--epochs", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["midas"]) == {"accuracy", "macro_f1", "misaligned_accuracy", "per_modality_accuracy"}
    for name in (
        "summary.md",
        "results.json",
        "accuracy_curves.png",
        "alpha.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [r["epoch"] for r in results["history"]["midas"]] == [0, 1]
    assert results["config"]["warmup_epochs"] == 1 and results["samples"] == {"train": 12, "val": 6, "test": 6}
    # StepLR waits for the warm-up: lr unchanged after epoch 1 with step_size 50.
    assert results["history"]["midas"][1]["lr"] == [1e-3]
    # Same folder without --resume: refused; with it, one more epoch from the checkpoint.
    assert main(base + ["--epochs", "3"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(base + ["--epochs", "3", "--resume"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["epoch"] for r in results["history"]["midas"]] == [0, 1, 2]
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 2 and saved["objective"]["_extra_state"]["epoch"] == 2


def test_reproduce_trains_three_modalities_on_mosi(tmp_path, capsys):
    root = make_mosi(tmp_path / "m")
    sets = [x for s in SMALL + ["warmup_epochs=1"] for x in ("--set", s)]
    out = tmp_path / "run"
    args = ["reproduce", "--dataset", "mosi", "--root", str(root), "--out", str(out), "--epochs", "2", "--no-progress"]
    assert main(args + sets) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["midas"]["per_modality_accuracy"]) == {"text", "audio", "vision"}
    results = json.loads((out / "results.json").read_text())
    assert len(results["alpha_steps"]["midas"][-1]) == 3  # one alpha per modality, after the warm-up too


def test_write_shards_goes_through_the_streaming_writer(tmp_path, capsys):
    pytest.importorskip("midas_data.streaming.writer")
    root = make_cremad(tmp_path / "c", per_class=4)
    sets = [x for s in SMALL for x in ("--set", s)]
    shards = tmp_path / "shards"
    args = ["reproduce", "--dataset", "cremad", "--root", str(root), "--write-shards", str(shards), "--no-progress"]
    assert main(args + sets) == 0
    for split in ("train", "val", "test"):
        assert list((shards / split).glob("*.tar")), split
