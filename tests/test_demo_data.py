"""The shipped image + speech digits demo: file format, splits, items, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from midas_data.experiments.demo import DigitsSpeechDataset, load_demo_splits  # noqa: E402
from midas_data.experiments.demo.dataset import DATA_PATH  # noqa: E402

N_DIGITS = 1797


@pytest.fixture(scope="module")
def splits() -> dict[str, DigitsSpeechDataset]:
    return load_demo_splits(seed=0)


def test_data_file_loads_without_pickle() -> None:
    with np.load(DATA_PATH, allow_pickle=False) as archive:
        waves, labels = archive["waveforms"], archive["labels"]
        rate = int(archive["sample_rate"])
        assert all(archive[key].dtype != object for key in archive.files)
    assert waves.dtype == np.int16 and waves.ndim == 2
    assert labels.dtype == np.int64 and labels.shape == (len(waves),)
    assert rate == 8000
    assert set(np.unique(labels)) == set(range(10))
    assert DATA_PATH.stat().st_size < 4.5e6


def test_splits_are_disjoint_stratified_and_cover_everything(splits: dict[str, DigitsSpeechDataset]) -> None:
    assert set(splits) == {"train", "val", "test"}
    index = {name: set(ds.image_index.tolist()) for name, ds in splits.items()}
    assert not index["train"] & index["val"]
    assert not index["train"] & index["test"]
    assert not index["val"] & index["test"]
    assert len(index["train"] | index["val"] | index["test"]) == N_DIGITS

    for name, share in {"train": 0.7, "val": 0.1, "test": 0.2}.items():
        ds = splits[name]
        assert len(ds) == pytest.approx(share * N_DIGITS, abs=2)
        counts = np.bincount(ds.labels, minlength=10)
        assert (counts > 0).all()
        # Stratified: every class holds about the split's share of its images.
        assert np.allclose(counts / counts.sum(), 0.1, atol=0.02)


def test_speakers_do_not_leak_across_splits(splits: dict[str, DigitsSpeechDataset]) -> None:
    speakers = {name: set(ds.speakers.tolist()) for name, ds in splits.items()}
    assert not speakers["train"] & speakers["test"]
    assert not speakers["train"] & speakers["val"]
    assert not speakers["val"] & speakers["test"]


def test_item_shapes_and_types(splits: dict[str, DigitsSpeechDataset]) -> None:
    ds = splits["val"]
    item = ds[0]
    assert set(item) == {"image", "audio", "label"}
    assert item["image"].shape == (1, 8, 8) and item["image"].dtype == torch.float32
    assert item["audio"].shape == (1, 32, 65) and item["audio"].dtype == torch.float32
    assert isinstance(item["label"], int) and 0 <= item["label"] < 10
    assert torch.isfinite(item["audio"]).all()
    assert DigitsSpeechDataset.num_classes == 10
    assert DigitsSpeechDataset.modalities == ("image", "audio")


def test_clean_images_are_in_unit_range() -> None:
    ds = DigitsSpeechDataset("test", image_noise=0.0, audio_snr_db=None)
    image = ds[5]["image"]
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_reading_twice_is_identical(splits: dict[str, DigitsSpeechDataset]) -> None:
    ds = splits["train"]
    for i in (0, 17, len(ds) - 1):
        a, b = ds[i], ds[i]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["audio"], b["audio"])
        assert a["label"] == b["label"]
    # A fresh object with the same seed reproduces the items too.
    again = DigitsSpeechDataset("train", seed=0)
    assert torch.equal(again[17]["audio"], ds[17]["audio"])
    assert torch.equal(again[17]["image"], ds[17]["image"])
    # Different items draw different noise.
    assert not torch.equal(ds[0]["image"], ds[1]["image"])


def test_image_and_audio_labels_agree(splits: dict[str, DigitsSpeechDataset]) -> None:
    from sklearn.datasets import load_digits

    digit_labels = load_digits().target
    with np.load(DATA_PATH, allow_pickle=False) as archive:
        clip_labels = archive["labels"]
    for ds in splits.values():
        assert np.array_equal(digit_labels[ds.image_index], ds.labels)
        assert np.array_equal(clip_labels[ds.clip_index], ds.labels)


def test_every_item_can_be_read(splits: dict[str, DigitsSpeechDataset]) -> None:
    total = 0
    for ds in splits.values():
        for i in range(len(ds)):
            item = ds[i]
            assert item["label"] == ds.labels[i]
            total += 1
    assert total == N_DIGITS


def test_dataloader_batches(splits: dict[str, DigitsSpeechDataset]) -> None:
    loader = torch.utils.data.DataLoader(splits["val"], batch_size=16)
    batch = next(iter(loader))
    assert batch["image"].shape == (16, 1, 8, 8)
    assert batch["audio"].shape == (16, 1, 32, 65)
    assert batch["label"].shape == (16,)


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError) as err:
        DigitsSpeechDataset("train", data_path=missing)
    assert str(missing) in str(err.value)
    assert "scripts/make_demo_data.py" in str(err.value)


def test_bad_split_is_rejected() -> None:
    with pytest.raises(ValueError):
        DigitsSpeechDataset("validation")
