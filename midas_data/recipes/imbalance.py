"""The imbalance check on a recipe's dataset: its scan, split, readers and encoders.

``python -m midas_data check --dataset cremad --root PATH`` reads the training and
validation splits of the recipe's 70/10/20 re-split (or the dataset's own split, for
CMU-MOSEI; deterministic preprocessing, no augmentation) into memory and builds the recipe's model for
:func:`midas_data.experiments.imbalance.check_imbalance`. ``max_samples`` caps the
training split (a seeded random subset) so that a check on a large dataset stays short.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import MidasDataError
from ..experiments.config import TrainConfig
from ..experiments.datasets import InMemoryDataset, cache_dataset
from ..models import LateFusionClassifier
from .config import apply_overrides, recipe_config
from .reproduce import SplitScan, dataset_maker, scan_splits

__all__ = ["recipe_check_inputs"]


def recipe_check_inputs(
    name: str, root: str | Path, *, overrides: Sequence[str] = (), max_samples: int | None = None
) -> tuple[InMemoryDataset, InMemoryDataset, Callable[[], LateFusionClassifier], tuple[str, ...], TrainConfig]:
    """``(train, val, model_factory, modalities, budget)`` for the check on recipe ``name``.

    The budget takes the recipe's batch size, learning rate, momentum and weight decay.
    Text is read with the recipe's default tokenisation (no ``--tokenizer`` here).
    """
    from . import RECIPES

    if name not in RECIPES:
        raise MidasDataError(f"dataset: unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    config = apply_overrides(recipe_config(name), list(overrides))
    root = Path(root)
    scan = recipe.scan(root, config, skip_unreadable=False, check_media=False)
    if isinstance(scan, SplitScan) and scan.multilabel:
        raise MidasDataError(
            f"dataset {name!r} is multi-label; the imbalance check compares single-label accuracies "
            "(alone against the head under joint training) and does not read multi-label data yet"
        )
    splits, make = scan_splits(scan, config), dataset_maker(scan)
    readers = recipe.readers(config, None)
    train_rows = list(splits["train"])
    if max_samples is not None and max_samples < len(train_rows):
        train_rows = sorted(random.Random(0).sample(train_rows, max_samples))  # a seeded random subset
    if not train_rows or not splits["val"]:
        raise MidasDataError(
            f"{root}: expected samples in the training and validation splits, got {len(train_rows)} and "
            f"{len(splits['val'])}; the check needs a few samples per class"
        )
    modalities = tuple(config.modalities)
    data = {
        split: cache_dataset(make([scan.samples[i] for i in rows], readers, train=False), modalities)
        for split, rows in (("train", train_rows), ("val", splits["val"]))
    }
    example: dict[str, Any] = data["train"][0]
    num_classes = len(scan.classes)

    def factory() -> LateFusionClassifier:
        encoders = recipe.encoders(config, example, None)
        return LateFusionClassifier(encoders, {m: int(e.out_features) for m, e in encoders.items()}, num_classes)

    budget = TrainConfig(
        batch_size=config.batch_size, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    return data["train"], data["val"], factory, modalities, budget
