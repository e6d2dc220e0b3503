"""Two printed digits paired with two spoken digits: a multi-label variant of the glyphs data.

Item ``k`` of a split joins two items of :class:`~.glyphs.GlyphsSpeechDataset`'s split, its
own row ``k`` and a partner row ``partner[k]`` (a seeded permutation of the split's rows):

* **image** ``[1, 28, 56]``: the two glyphs side by side (ink in [0, 1]), then Gaussian
  pixel noise of standard deviation ``image_noise``;
* **audio** ``[1, n_mels, 129]``: the two clips one after the other (1.6 s), coloured
  noise at ``audio_snr_db`` over both words' speech, log-mel, standardised per item;
* **label**: a multi-hot row ``float32 [10]`` of the digits present (one class when both
  digits are equal, about one item in ten).

The defaults (image noise 0.3, speech at 0 dB) are the regime chosen on validation by
``benchmarks/multilabel_glyphs.py --stage regime`` (a rule fixed before its runs): speech
alone reaches 85.5 validation micro-F1, the image alone 63.8, and joint training leaves
the image encoder at 45.4 (its probe).

The image and the speech name the same digits in the same order. The glyph and clip rows,
speakers and splits are those of the glyphs data (train 4000, val 1000, test 2000 items;
each glyph and clip is used twice as often). Noise is drawn from generators seeded by
``(seed, split, index)`` on streams of their own, so item ``k`` is the same on every read
and no draw repeats one of the single-digit data's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset import SPLITS, noisy_image, noisy_log_mel
from .glyphs import GlyphsSpeechDataset

__all__ = ["GlyphPairsDataset", "load_glyph_pair_splits", "DEFAULT_IMAGE_NOISE", "DEFAULT_AUDIO_SNR_DB"]

DEFAULT_IMAGE_NOISE = 0.3
DEFAULT_AUDIO_SNR_DB = 0.0

# Offsets the noise streams away from the single-digit data's (which use 0 and 1).
_STREAM = 17


class GlyphPairsDataset(Dataset):
    """One split of the two-digit images + two-digit speech (see the module docstring).

    Items are ``{"image": float32 [1, 28, 56], "audio": float32 [1, n_mels, 129],
    "label": float32 [10]}``, the label multi-hot.
    """

    num_classes: int = 10
    modalities: tuple[str, ...] = ("image", "audio")

    def __init__(
        self,
        split: str = "train",
        *,
        seed: int = 0,
        image_noise: float = DEFAULT_IMAGE_NOISE,
        audio_snr_db: float | None = DEFAULT_AUDIO_SNR_DB,
        n_mels: int = 32,
        glyphs_path: str | Path | None = None,
        clips_path: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.rows = GlyphsSpeechDataset(
            split,
            seed=seed,
            image_noise=image_noise,
            audio_snr_db=audio_snr_db,
            n_mels=n_mels,
            glyphs_path=glyphs_path,
            clips_path=clips_path,
        )
        self.split, self.seed = split, seed
        self.image_noise, self.audio_snr_db = self.rows.image_noise, self.rows.audio_snr_db
        n = len(self.rows)
        self.partner = np.random.default_rng([seed, self.rows._split_code, 65537]).permutation(n)
        self.digits = np.stack([self.rows.labels, self.rows.labels[self.partner]], axis=1)  # [N, 2]

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot ``float32 [N, 10]``."""
        hot = np.zeros((len(self), self.num_classes), dtype=np.float32)
        hot[np.arange(len(self))[:, None], self.digits] = 1.0
        return hot

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        pair = (index, int(self.partner[index]))
        key = [self.seed, self.rows._split_code, index, _STREAM]
        ink = np.concatenate([self.rows._images[i].astype(np.float32) / 255.0 for i in pair], axis=1)
        clips = [int(self.rows.clip_index[i]) for i in pair]
        wave = np.concatenate([self.rows._waveforms[c] for c in clips])
        speech = int(sum(self.rows._speech_length[c] for c in clips))
        label = torch.zeros(self.num_classes)
        label[torch.as_tensor(self.digits[index])] = 1.0
        return {
            "image": noisy_image(ink, self.image_noise, np.random.default_rng(key + [0])),
            "audio": noisy_log_mel(
                wave,
                speech,
                self.audio_snr_db,
                np.random.default_rng(key + [1]),
                self.rows._window,
                self.rows._mel_fb,
                self.rows.normalize_audio,
            ),
            "label": label,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, seed={self.seed}, "
            f"image_noise={self.image_noise}, audio_snr_db={self.audio_snr_db})"
        )


def load_glyph_pair_splits(
    seed: int = 0,
    image_noise: float = DEFAULT_IMAGE_NOISE,
    audio_snr_db: float | None = DEFAULT_AUDIO_SNR_DB,
    **kwargs: Any,
) -> dict[str, GlyphPairsDataset]:
    """The train/val/test splits (4000/1000/2000); extra keywords go to the dataset."""
    return {
        split: GlyphPairsDataset(split, seed=seed, image_noise=image_noise, audio_snr_db=audio_snr_db, **kwargs)
        for split in SPLITS
    }
