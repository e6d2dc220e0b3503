"""Printed digits paired with spoken digits: the demo data in the regime MIDAS addresses.

Each item pairs a 28x28 image of a digit, rendered from one of 22 fonts that ship with
matplotlib and deformed at random (``data/digit_glyphs.npz``, rebuilt by
``scripts/make_glyph_data.py``), with a spoken clip of the same digit
(``data/spoken_digits.npz``, espeak-ng voices, ``scripts/make_demo_data.py``).

* **audio (dominant)**: noise at ``audio_snr_db`` (default -6 dB), 32-band log-mel,
  standardised per item, as in :mod:`~midas_data.experiments.demo.dataset`. The clips are
  few (42 train speakers x 10 words, each reused about ten times with fresh noise), so
  joint training fits the training set through the audio within a few epochs.
* **image (weak but learnable)**: ink in [0, 1] plus Gaussian pixel noise of standard
  deviation ``image_noise`` (default 0.5, not clipped). A CNN trained on the image alone
  learns it far better than the image head of a jointly trained model does; the
  calibration is in ``docs/benchmarks.md``.

Splits: images 0-3999 train, 4000-4999 val, 7000-8999 test (the file's order is a
seeded shuffle, classes are balanced); clips by speaker (42/6/12 speakers), so val and
test voices are never heard in training. Noise is drawn from generators seeded by
``(seed, split, index)``: item ``i`` is the same on every read.

``test_v1`` (images 5000-6999, the test speakers) is the first test split. Its figures
were seen while the data's noise levels were being set, so it is retired: the benchmark
tests on ``test``, drawn afterwards (new images from another seed, a new pairing and new
noise; the 12 test speakers' clean clips are the same, for lack of a synthesizer here).
``test_v1`` stays loadable so that the archived figures measured on it can be reproduced.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import DATA_PATH as CLIPS_PATH
from .dataset import (
    SPLITS,
    DigitsSpeechDataset,
    _load_clips,
    noisy_image,
)

__all__ = ["GlyphsSpeechDataset", "load_glyph_splits", "GLYPHS_PATH", "SPLIT_ROWS", "BENCHMARK_REFERENCE"]

GLYPHS_PATH = Path(__file__).parent / "data" / "digit_glyphs.npz"
# The multi-seed figures the demo prints beside its one seed; written by benchmarks/accuracy.py.
BENCHMARK_REFERENCE = Path(__file__).parent / "data" / "benchmark_reference.json"
SPLIT_ROWS: dict[str, tuple[int, int]] = {
    "train": (0, 4000),
    "val": (4000, 5000),
    "test": (7000, 9000),
    "test_v1": (5000, 7000),
}
GLYPH_SPLITS: tuple[str, ...] = tuple(SPLIT_ROWS)
# Seeds the noise and the pairing: test_v1 keeps the code it had as "test", the new
# test split gets its own, so none of its draws repeats one of test_v1's.
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test_v1": 2, "test": 3}
SPEAKER_SHARES: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}

DEFAULT_IMAGE_NOISE = 0.5
DEFAULT_AUDIO_SNR_DB = -6.0


@functools.lru_cache(maxsize=2)
def _load_glyphs(path: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"digit glyphs not found at {file}; rebuild them with `python scripts/make_glyph_data.py`"
        )
    with np.load(file, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key, dtype in (("images", np.uint8), ("labels", np.int64), ("font", np.int64)):
        if key not in arrays or arrays[key].dtype != dtype:
            raise ValueError(f"{file}: expected array {key!r} of dtype {np.dtype(dtype)}; rebuild the file")
    rows = max(end for _, end in SPLIT_ROWS.values())
    if arrays["images"].shape[0] < rows:
        raise ValueError(
            f"{file}: expected at least {rows} images, got {arrays['images'].shape[0]}; "
            "rebuild it with `python scripts/make_glyph_data.py`"
        )
    return arrays


@functools.lru_cache(maxsize=8)
def _pairing(seed: int, split: str, glyphs_path: str, clips_path: str) -> np.ndarray:
    """Clip index paired with each image of ``split``: same digit, speakers of that split."""
    labels = _load_glyphs(glyphs_path)["labels"][slice(*SPLIT_ROWS[split])]
    clips = _load_clips(clips_path)
    speakers = np.random.default_rng([seed, 7919]).permutation(np.unique(clips["speaker"]))
    n_test = round(SPEAKER_SHARES["test"] * len(speakers))
    n_val = round(SPEAKER_SHARES["val"] * len(speakers))
    chosen = {"test": speakers[:n_test], "val": speakers[n_test : n_test + n_val], "train": speakers[n_test + n_val :]}
    chosen["test_v1"] = chosen["test"]
    pool = np.flatnonzero(np.isin(clips["speaker"], chosen[split]))
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 104729])
    paired = np.empty(len(labels), dtype=np.int64)
    for digit in range(10):
        slots = np.flatnonzero(labels == digit)
        candidates = pool[clips["labels"][pool] == digit]
        if len(candidates) == 0:
            raise ValueError(f"no clip of digit {digit} among the speakers of split {split!r}")
        reps = -(-len(slots) // len(candidates))  # balanced reuse in a seeded order
        paired[slots] = np.concatenate([rng.permutation(candidates) for _ in range(reps)])[: len(slots)]
    return paired


class GlyphsSpeechDataset(DigitsSpeechDataset):
    """One split of the printed + spoken digits (see the module docstring).

    Items are read as in :class:`DigitsSpeechDataset` (same seeded noise streams and audio
    front end); only the images and the pairing differ.

    Items are ``{"image": float32 [1, 28, 28], "audio": float32 [1, n_mels, 65], "label": int}``.
    ``image_noise`` and ``audio_snr_db`` set the strength of each modality; ``audio_snr_db=None``
    gives clean speech.
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
        if split not in GLYPH_SPLITS:
            raise ValueError(f"split: expected one of {GLYPH_SPLITS}, got {split!r}")
        gpath, cpath = str(glyphs_path or GLYPHS_PATH), str(clips_path or CLIPS_PATH)
        glyphs, clips = _load_glyphs(gpath), _load_clips(cpath)
        self._set_noise_and_audio(clips, image_noise, audio_snr_db, n_mels, normalize_audio=True)
        rows = slice(*SPLIT_ROWS[split])
        self.split, self.seed = split, seed
        self.labels = glyphs["labels"][rows]
        self.fonts = glyphs["font"][rows]
        self._images = glyphs["images"][rows]
        self.image_index = np.arange(len(self.labels))  # rows of this split's images
        self.clip_index = _pairing(seed, split, gpath, cpath)
        self._split_code = SPLIT_CODES[split]

    def _image(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        return noisy_image(self._images[index].astype(np.float32) / 255.0, self.image_noise, rng)


def load_glyph_splits(
    seed: int = 0,
    image_noise: float = DEFAULT_IMAGE_NOISE,
    audio_snr_db: float | None = DEFAULT_AUDIO_SNR_DB,
    **kwargs: Any,
) -> dict[str, GlyphsSpeechDataset]:
    """The train/val/test splits (4000/1000/2000); extra keywords go to the dataset.

    ``test`` is the test split of record; the retired ``test_v1`` is not included (build it
    with ``GlyphsSpeechDataset("test_v1")``)."""
    return {
        split: GlyphsSpeechDataset(split, seed=seed, image_noise=image_noise, audio_snr_db=audio_snr_db, **kwargs)
        for split in SPLITS
    }
