"""Offline demo data: handwritten digits paired with spoken digit names.

The audio is strong and the image weak by construction, so the imbalance that
MIDAS targets shows up without downloading anything.  See
:mod:`midas_data.experiments.demo.dataset` for the calibration.
"""

from .dataset import (
    DEFAULT_AUDIO_SNR_DB,
    DEFAULT_IMAGE_NOISE,
    DigitsSpeechDataset,
    load_demo_splits,
)

__all__ = [
    "DEFAULT_AUDIO_SNR_DB",
    "DEFAULT_IMAGE_NOISE",
    "DigitsSpeechDataset",
    "load_demo_splits",
]
