"""Offline demo data: digits paired with spoken digit names, nothing downloaded.

* :mod:`~midas_data.experiments.demo.glyphs` — the demo's data: 7,000 printed digits
  rendered from matplotlib's fonts (28x28, deformed) with the spoken digits; the speech
  dominates and joint training under-uses the learnable image.
* :mod:`~midas_data.experiments.demo.dataset` — the earlier, smaller data: scikit-learn's
  8x8 digits with the same spoken digits (and :mod:`.variants` of it).
"""

from .dataset import (
    DEFAULT_AUDIO_SNR_DB,
    DEFAULT_IMAGE_NOISE,
    DigitsSpeechDataset,
    load_demo_splits,
)
from .glyphs import GlyphsSpeechDataset, load_glyph_splits

__all__ = [
    "DEFAULT_AUDIO_SNR_DB",
    "DEFAULT_IMAGE_NOISE",
    "DigitsSpeechDataset",
    "load_demo_splits",
    "GlyphsSpeechDataset",
    "load_glyph_splits",
]
