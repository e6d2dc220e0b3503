"""The shipped printed + spoken digits: file format, splits, pairing, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midas_data.experiments.demo.glyphs import (
    GLYPHS_PATH,
    SPLIT_ROWS,
    GlyphsSpeechDataset,
    load_glyph_splits,
)


@pytest.fixture(scope="module")
def splits() -> dict[str, GlyphsSpeechDataset]:
    return load_glyph_splits(seed=0)


def test_glyph_file_is_small_plain_and_balanced() -> None:
    with np.load(GLYPHS_PATH, allow_pickle=False) as archive:
        images, labels, fonts = archive["images"], archive["labels"], archive["font"]
    assert images.dtype == np.uint8 and images.shape == (9000, 28, 28)
    # Two blocks, each balanced on its own: 7,000 images of seed 0, then 2,000 of seed 1.
    assert np.bincount(labels[:7000], minlength=10).tolist() == [700] * 10
    assert np.bincount(labels[7000:], minlength=10).tolist() == [200] * 10
    assert len(np.unique(fonts[:7000])) == len(np.unique(fonts[7000:])) == 22
    assert GLYPHS_PATH.stat().st_size < 2e6
    # Real ink: every image has a glyph, and no two images are identical.
    assert (images.reshape(len(images), -1).max(1) == 255).all()
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)


def test_split_sizes_classes_and_unseen_speakers(splits: dict[str, GlyphsSpeechDataset]) -> None:
    assert {k: len(v) for k, v in splits.items()} == {"train": 4000, "val": 1000, "test": 2000}
    assert {k: len(v) for k, v in splits.items()} == {k: b - a for k, (a, b) in SPLIT_ROWS.items() if k in splits}
    for ds in splits.values():
        assert (np.bincount(ds.labels, minlength=10) > 0.08 * len(ds)).all()
    with np.load(_clips_path(), allow_pickle=False) as c:
        speaker = c["speaker"]
        clip_labels = c["labels"]
    voices = {k: set(speaker[v.clip_index].tolist()) for k, v in splits.items()}
    assert not voices["train"] & voices["val"] and not voices["train"] & voices["test"]
    assert not voices["val"] & voices["test"]
    for ds in splits.values():  # every image is paired with a clip of its own digit
        assert (clip_labels[ds.clip_index] == ds.labels).all()


def _clips_path() -> str:
    from midas_data.experiments.demo.dataset import DATA_PATH

    return str(DATA_PATH)


def test_items_are_deterministic_with_the_documented_shapes(splits: dict[str, GlyphsSpeechDataset]) -> None:
    ds = splits["val"]
    first, again = ds[3], ds[3]
    assert first["image"].shape == (1, 28, 28) and first["audio"].shape == (1, 32, 65)
    assert first["image"].dtype == torch.float32 and first["label"] == int(ds.labels[3])
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["audio"], again["audio"])
    assert not torch.equal(ds[4]["image"], first["image"])
    clean = GlyphsSpeechDataset("val", image_noise=0.0, audio_snr_db=None)[3]["image"]
    assert float(clean.min()) >= 0.0 and float(clean.max()) <= 1.0
    assert float((first["image"] - clean).std()) == pytest.approx(ds.image_noise, rel=0.15)


def test_the_retired_first_test_split_shares_no_image_or_noise_with_the_test_split(
    splits: dict[str, GlyphsSpeechDataset],
) -> None:
    test, retired = splits["test"], GlyphsSpeechDataset("test_v1")
    assert len(retired) == 2000 and SPLIT_ROWS["test_v1"] == (5000, 7000) and SPLIT_ROWS["test"] == (7000, 9000)
    with np.load(GLYPHS_PATH, allow_pickle=False) as archive:
        images = archive["images"].reshape(9000, -1)
    seen = {row.tobytes() for row in images[:7000]}  # train, val and the retired split
    assert not any(row.tobytes() in seen for row in images[7000:])
    # Same voices (no new speakers could be synthesised), but a new pairing and new noise.
    with np.load(_clips_path(), allow_pickle=False) as c:
        speaker = c["speaker"]
    assert set(speaker[test.clip_index].tolist()) == set(speaker[retired.clip_index].tolist())
    clean = GlyphsSpeechDataset("test", image_noise=0.0)
    clean_retired = GlyphsSpeechDataset("test_v1", image_noise=0.0)
    noise = (test[0]["image"] - clean[0]["image"]).flatten()
    noise_retired = (retired[0]["image"] - clean_retired[0]["image"]).flatten()
    assert abs(float(torch.corrcoef(torch.stack([noise, noise_retired]))[0, 1])) < 0.2
    assert "test_v1" not in splits


def test_bad_arguments_and_missing_file_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="split"):
        GlyphsSpeechDataset("dev")
    with pytest.raises(ValueError, match="image_noise"):
        GlyphsSpeechDataset("val", image_noise=-1.0)
    with pytest.raises(FileNotFoundError, match="make_glyph_data.py"):
        GlyphsSpeechDataset("val", glyphs_path=tmp_path / "none.npz")


# -- the multi-label variant -------------------------------------------------------------------------
def test_glyph_pairs_show_and_say_the_same_two_digits_as_their_multi_hot_label() -> None:
    from midas_data.experiments.demo.glyph_pairs import GlyphPairsDataset, load_glyph_pair_splits

    pairs = load_glyph_pair_splits(seed=0)
    assert {k: len(v) for k, v in pairs.items()} == {"train": 4000, "val": 1000, "test": 2000}
    clean = GlyphPairsDataset("val", image_noise=0.0, audio_snr_db=None)
    rows = clean.rows
    with np.load(_clips_path(), allow_pickle=False) as c:
        clip_labels = c["labels"]
    for k in (0, 5, 999):
        item, partner = clean[k], int(clean.partner[k])
        assert item["image"].shape == (1, 28, 56) and item["audio"].shape == (1, 32, 129)
        ink = np.concatenate([rows._images[k], rows._images[partner]], axis=1).astype(np.float32) / 255
        assert torch.equal(item["image"][0], torch.from_numpy(ink))  # left: its own glyph, right: the partner's
        digits = {int(rows.labels[k]), int(rows.labels[partner])}
        assert {int(clip_labels[rows.clip_index[i]]) for i in (k, partner)} == digits  # the speech says them
        assert item["label"].dtype == torch.float32 and item["label"].nonzero().flatten().tolist() == sorted(digits)
    labels = pairs["train"].labels
    assert labels.shape == (4000, 10) and set(labels.sum(1).tolist()) == {1.0, 2.0}
    assert 0.05 < (labels.sum(1) == 1).mean() < 0.15  # both digits alike about one time in ten
    noisy = pairs["train"]
    assert torch.equal(noisy[7]["image"], noisy[7]["image"]) and torch.equal(noisy[7]["audio"], noisy[7]["audio"])
    assert not torch.equal(noisy[7]["image"], GlyphPairsDataset("train", image_noise=0.0)[7]["image"])
