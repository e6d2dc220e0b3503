"""Variants of the demo data with other kinds of modality imbalance, made from the same
shipped content (scikit-learn's 8x8 digits and the spoken-digit clips).

``demo`` (the base, :func:`~midas_data.experiments.demo.dataset.load_demo_splits`)
    *Global* imbalance: the speech names most digits, the noisy image is weak for every
    class.

``class_split``
    *Class-dependent* informativeness: each modality names the digit for one half of the
    classes only. For a sample of a digit in 5-9 the image is replaced by the image of a
    random other sample of 5-9 (drawn from the same split, own digit included), so the
    image still tells which half the digit is in but not which digit; for a digit in 0-4
    the speech is replaced the same way from 0-4. Each modality alone can be right for
    about half of the digits only, so the stronger one (speech) cannot make the weaker one
    redundant. Images are less
    noisy than in the base (``image_noise=0.5``) so that they carry their half.

``image_dominant``
    The base imbalance reversed: clean images (``image_noise=0``) and speech buried in
    noise (``audio_snr_db=-12``), so the image is the dominant modality.

Donors for the replaced modality are drawn from the same split with a generator seeded
by ``(seed, split)``, so a variant is as deterministic as the base data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .dataset import SPLITS, DigitsSpeechDataset, load_demo_splits

__all__ = ["ClassSplitDataset", "load_variant_splits", "VARIANTS", "DESCRIPTIONS"]

FIRST_HALF = (0, 1, 2, 3, 4)


class ClassSplitDataset(Dataset):
    """A split of the demo data in which each modality identifies half of the classes.

    Args:
        base: one split of :class:`DigitsSpeechDataset`.
        seed: seeds the choice of donors.
        image_classes: the classes whose image is kept; for the other classes the image
            comes from a random sample of another class among those others. The speech is
            kept for the other classes and replaced the same way for ``image_classes``.
    """

    num_classes = DigitsSpeechDataset.num_classes
    modalities = DigitsSpeechDataset.modalities

    def __init__(self, base: DigitsSpeechDataset, seed: int = 0, image_classes: tuple[int, ...] = FIRST_HALF) -> None:
        labels = np.asarray(base.labels)
        image_group = np.isin(labels, image_classes)
        if image_group.all() or not image_group.any():
            raise ValueError(f"image_classes {image_classes}: must hold some but not all classes of the split")
        rng = np.random.default_rng([seed, SPLITS.index(base.split), 52361])
        self.base = base
        self.labels = labels
        self.split = base.split
        # Index of the item each modality is read from; the own index where it is kept.
        self.image_source = np.arange(len(labels))
        self.audio_source = np.arange(len(labels))
        for group, replaced in ((~image_group, self.image_source), (image_group, self.audio_source)):
            members = np.flatnonzero(group)
            for i in members:
                # Any other member of the group, own class included: the replaced modality
                # must say nothing about which digit of the group it is.
                replaced[i] = rng.choice(members[members != i])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        image_from, audio_from = int(self.image_source[index]), int(self.audio_source[index])
        own = self.base[index]
        image = own["image"] if image_from == index else self.base[image_from]["image"]
        audio = own["audio"] if audio_from == index else self.base[audio_from]["audio"]
        return {"image": image, "audio": audio, "label": int(self.labels[index])}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, base={self.base!r})"


def _class_split(seed: int, **kwargs: Any) -> dict[str, Dataset]:
    kwargs.setdefault("image_noise", 0.5)
    return {name: ClassSplitDataset(split, seed) for name, split in load_demo_splits(seed, **kwargs).items()}


def _image_dominant(seed: int, **kwargs: Any) -> dict[str, Dataset]:
    kwargs.setdefault("image_noise", 0.0)
    kwargs.setdefault("audio_snr_db", -12.0)
    return dict(load_demo_splits(seed, **kwargs))


VARIANTS: dict[str, Callable[..., dict[str, Dataset]]] = {
    "demo": lambda seed, **kw: dict(load_demo_splits(seed, **kw)),
    "class_split": _class_split,
    "image_dominant": _image_dominant,
}

DESCRIPTIONS: dict[str, str] = {
    "demo": "global imbalance: the speech names most digits, the noisy image is weak for all",
    "class_split": "class-dependent: the image names digits 0-4 only, the speech digits 5-9 only",
    "image_dominant": "reversed: clean images dominate, speech at -12 dB SNR is weak",
}


def load_variant_splits(name: str, seed: int = 0, **kwargs: Any) -> dict[str, Dataset]:
    """The train/val/test splits of a variant (see the module docstring); keywords go to
    :func:`~midas_data.experiments.demo.dataset.load_demo_splits`."""
    if name not in VARIANTS:
        raise KeyError(f"name: unknown demo variant {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name](seed, **kwargs)
