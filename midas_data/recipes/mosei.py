"""CMU-MOSEI: sentiment from three aligned feature streams (M = 3), on its standard split.

Layout (``ROOT``)::

    train/text.npy       [N, T, D_text] float features, one row per segment ([N, D] accepted)
    train/audio.npy      [N, T, D_audio]
    train/vision.npy     [N, T, D_vision]
    train/labels.npy     [N], [N, 1] or [N, 1, 1]: the sentiment score in [-3, 3]; [N, 7] or
                         [N, 1, 7] (the score, then six emotion intensities) uses column 0
    valid/...            the same four arrays (a folder named val/ is accepted too)
    test/...

The arrays are the aligned features as commonly distributed, one ``.npy`` per stream and
split, read with ``allow_pickle=False``: a ``.pkl`` is never loaded; convert it once to
this layout (docs/recipes.md). ``task`` (``--set task=...``) turns the score into classes:

* ``binary``: ``negative`` (score < 0) and ``positive`` (score >= 0; a score of exactly 0
  is positive, as in the CMU-MOSI recipe);
* ``7class``: the score rounded to the nearest integer (halves to even, as numpy rounds),
  clipped to [-3, 3]; class ids 0..6 for -3..3.

Each stream is cut or zero-padded to ``sequence_length`` steps and encoded by a small
recurrent encoder, as for CMU-MOSI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MidasDataError
from .common import Reader, Recipe, RecipeDataset, Sample, Scan
from .config import RecipeConfig
from .encoders import SequenceEncoder
from .reproduce import SplitScan

__all__ = ["TASKS", "RECIPE", "scan", "sentiment_class", "RowSample", "RowReader", "RowDataset"]

STREAMS = ("text", "audio", "vision")
SPLIT_DIRS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
TASKS = {"binary": ("negative", "positive"), "7class": ("-3", "-2", "-1", "0", "1", "2", "3")}
LAYOUT = "{train,valid,test}/{text,audio,vision,labels}.npy (one row per segment)"


def sentiment_class(score: float, task: str) -> int:
    """The class id of a sentiment score under ``task`` (see the module's docstring)."""
    if task == "binary":
        return int(score >= 0)
    if task == "7class":
        return int(np.clip(np.round(score), -3, 3)) + 3
    raise MidasDataError(f"task: expected one of {sorted(TASKS)} for CMU-MOSEI, got {task!r}")


@dataclass(frozen=True)
class RowSample(Sample):
    """A segment that is one row of its split's arrays."""

    row: int = 0


class RowReader:
    """Row ``row`` of a feature array ``[N, T, D]`` (or ``[N, D]``) -> ``[length, D]`` float32.

    The arrays are memory-mapped once per process; the maps are not pickled (each
    DataLoader worker opens its own)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._arrays: dict[Path, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"length": self.length, "_arrays": {}}

    def __call__(self, files: Sequence[Path], train: bool, row: int | None = None) -> torch.Tensor:
        path = files[0]
        if row is None:
            raise MidasDataError(
                f"{path}: holds every segment of its split; read CMU-MOSEI through RowDataset (as reproduce "
                "does); the check command does not read it yet"
            )
        if path not in self._arrays:
            self._arrays[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        tensor = torch.from_numpy(np.array(self._arrays[path][row], dtype=np.float32))
        if tensor.dim() == 1:
            tensor = tensor.unsqueeze(0)
        if not bool(torch.isfinite(tensor).all()):
            raise MidasDataError(f"{path}: row {row} contains NaN or inf; expected finite features")
        if tensor.shape[0] >= self.length:
            return tensor[: self.length]
        return torch.cat([tensor, tensor.new_zeros(self.length - tensor.shape[0], tensor.shape[1])])


class RowDataset(RecipeDataset):
    """:class:`RecipeDataset` over :class:`RowSample`: each reader gets the sample's row."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item: dict[str, Any] = {m: read(sample.files[m], self.train, sample.row) for m, read in self.readers.items()}
        item[self.label_key] = sample.label
        return item


def _refuse_pickle(path: Path) -> None:
    raise MidasDataError(
        f"{path}: pickle files are never loaded (unpickling can run code); convert it once to the layout "
        f"{LAYOUT} with allow_pickle=False-readable .npy arrays (see docs/recipes.md)"
    )


def _split_dir(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    pickles = sorted(root.glob("*.pkl"))
    if pickles:
        _refuse_pickle(pickles[0])
    raise MidasDataError(f"{root / names[0]}: missing folder; expected the CMU-MOSEI layout {LAYOUT}")


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        if path.with_suffix(".pkl").is_file():
            _refuse_pickle(path.with_suffix(".pkl"))
        raise MidasDataError(f"{path}: missing; expected the CMU-MOSEI layout {LAYOUT}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # numpy raises several types for bad files
        raise MidasDataError(f"{path}: cannot read as a .npy array ({err}); expected a numeric array") from err


def _features(path: Path) -> np.ndarray:
    array = _open(path)
    if array.dtype.kind != "f" or array.ndim not in (2, 3) or 0 in array.shape:
        raise MidasDataError(f"{path}: expected float features [N, T, D] or [N, D], got {array.dtype} {array.shape}")
    return array


def _scores(path: Path) -> np.ndarray:
    array = _open(path)
    table = array.reshape(array.shape[0], -1) if array.ndim in (1, 2, 3) else array
    if array.dtype.kind not in "fiu" or array.ndim not in (1, 2, 3) or table.shape[0] == 0:
        raise MidasDataError(
            f"{path}: expected sentiment scores [N] (or [N, 1], [N, 7]), got {array.dtype} {array.shape}"
        )
    if table.ndim == 2 and table.shape[1] not in (1, 7):
        raise MidasDataError(f"{path}: expected [N], [N, 1] or [N, 7] (score first), got {array.dtype} {array.shape}")
    scores = np.asarray(table[:, 0] if table.ndim == 2 else table, dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(scores) & (scores >= -3.0) & (scores <= 3.0)))
    if bad.size:
        row = int(bad[0])
        raise MidasDataError(f"{path}: row {row}: score {scores[row]}; expected a sentiment score in [-3, 3]")
    return scores


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    """Every segment of the three splits; array problems (a missing, pickled, mis-shaped or
    non-float array, a score outside [-3, 3]) are errors naming the file. Every array's
    header is read here, so ``check_media`` adds nothing and ``skip_unreadable`` cannot
    skip a segment of a bad array; a NaN row is found when read (the dry run)."""
    root = Path(root)
    if root.suffix == ".pkl":
        _refuse_pickle(root)
    if not root.is_dir():
        raise MidasDataError(f"{root}: does not exist or is not a folder; expected the CMU-MOSEI root ({LAYOUT})")
    task = config.task
    classes = TASKS.get(task)
    if classes is None:
        raise MidasDataError(f"task: expected one of {sorted(TASKS)} for CMU-MOSEI, got {task!r}")
    samples: list[Sample] = []
    splits: dict[str, list[int]] = {}
    for split, names in SPLIT_DIRS.items():
        folder = _split_dir(root, names)
        files = {stream: folder / f"{stream}.npy" for stream in STREAMS}
        arrays = {stream: _features(path) for stream, path in files.items()}
        scores = _scores(folder / "labels.npy")
        for stream, array in arrays.items():
            if array.shape[0] != len(scores):
                raise MidasDataError(
                    f"{files[stream]}: {array.shape[0]} rows; expected one per score of {folder / 'labels.npy'} "
                    f"({len(scores)})"
                )
        start = len(samples)
        paths = {stream: (path,) for stream, path in files.items()}
        samples += [
            RowSample(f"{split}/{row}", sentiment_class(float(score), task), paths, row=row)
            for row, score in enumerate(scores)
        ]
        splits[split] = list(range(start, len(samples)))
    return SplitScan(samples, list(classes), splits=splits, dataset=RowDataset)


def readers(config: RecipeConfig, tokenizer: Any = None) -> dict[str, Reader]:
    return {stream: RowReader(config.sequence_length) for stream in STREAMS}


def encoders(config: RecipeConfig, item: Mapping[str, Any], tokenizer: Any = None) -> dict[str, nn.Module]:
    return {stream: SequenceEncoder(int(item[stream].shape[-1]), config.feature_dim) for stream in STREAMS}


RECIPE = Recipe("mosei", "CMU-MOSEI", LAYOUT, scan, readers, encoders)
