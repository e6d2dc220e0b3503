"""CMU-MOSI: sentiment from three pre-extracted feature streams (M = 3).

Layout (``ROOT``)::

    labels.csv                 header "id,label"; label = sentiment score in [-3, 3]
    text/<id>.npy              [T, D_text] float features
    audio/<id>.npy             [T, D_audio]
    vision/<id>.npy            [T, D_vision]

Classes: ``negative`` (score < 0) and ``positive`` (score >= 0), the binary accuracy of
the paper's MOSI table. Each stream is cut or zero-padded to ``sequence_length`` steps
and encoded by a small recurrent encoder.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MidasDataError
from .common import Reader, Recipe, Sample, Scan, finish_scan, require_dirs
from .config import RecipeConfig
from .encoders import SequenceEncoder
from .readers import ArrayReader

__all__ = ["CLASSES", "RECIPE", "scan"]

CLASSES = ("negative", "positive")
STREAMS = ("text", "audio", "vision")
LAYOUT = "labels.csv (id,label) + text/<id>.npy + audio/<id>.npy + vision/<id>.npy"


def _sample(key: str, files: dict[str, Path], label: int) -> Sample:
    for stream, path in files.items():
        if not path.is_file():
            raise MidasDataError(f"{path}: missing {stream} features of {key!r}; expected a .npy array [T, D]")
    return Sample(key, label, {stream: (path,) for stream, path in files.items()})


def _label(text: str, where: str) -> int:
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score) or not -3.0 <= score <= 3.0:
        raise MidasDataError(f"{where}: label {text!r}; expected a sentiment score in [-3, 3]")
    return int(score >= 0)


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    root = Path(root)
    dirs = require_dirs(root, list(STREAMS), "CMU-MOSI", LAYOUT)
    table = root / "labels.csv"
    if not table.is_file():
        raise MidasDataError(f"{table}: missing; expected the CMU-MOSI layout {LAYOUT}")
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0][:2]] != ["id", "label"]:
        raise MidasDataError(f"{table}: expected the header 'id,label'")
    candidates = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip():
            raise MidasDataError(f"{table}:{line}: expected 'id,label', got {row}")
        key = row[0].strip()
        label = _label(row[1].strip(), f"{table}:{line}")
        files = {stream: dirs[stream] / f"{key}.npy" for stream in STREAMS}
        candidates.append(partial(_sample, key, files, label))
    if not candidates:
        raise MidasDataError(f"{table}: no rows; expected one 'id,label' row per segment")
    return finish_scan(candidates, list(CLASSES), skip_unreadable, check_media)


def readers(config: RecipeConfig, tokenizer: Any = None) -> dict[str, Reader]:
    return {stream: ArrayReader(config.sequence_length) for stream in STREAMS}


def encoders(config: RecipeConfig, item: Mapping[str, Any], tokenizer: Any = None) -> dict[str, nn.Module]:
    return {stream: SequenceEncoder(int(item[stream].shape[-1]), config.feature_dim) for stream in STREAMS}


RECIPE = Recipe("mosi", "CMU-MOSI", LAYOUT, scan, readers, encoders)
