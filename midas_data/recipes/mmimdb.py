"""MM-IMDB: a movie's genres (several of 23) from its poster and its plot, on its split.

Layout (``ROOT``), as the dataset is distributed (the ``mmimdb/`` folder of its archive)::

    split.json                {"train": [id, ...], "dev": [...], "test": [...]}
    dataset/<id>.json         the movie's IMDb record: "plot" (a list of plot texts, or
                              one string) and "genres" (a list of genre names)
    dataset/<id>.jpeg         its poster (.jpg or .png accepted too)

Labels: multi-hot over :data:`GENRES` (fixed order, most to least frequent). A movie
with a genre of :data:`LEFT_OUT` (News, Adult, Talk-Show, Reality-TV: too rare to learn)
is left out, as the usual preprocessing does; any other genre outside the list is an
error naming the file. Text: the longest plot text, as token ids from a tokenizer the
user supplies (``--tokenizer``; without one, UTF-8 bytes), padded to ``text_length``;
image: 224 x 224 RGB. Encoders as Food-101's. Training is the recipes' run
(``train.py``, checkpoints and ``--resume``) with the objective's multi-label form
(``MidasObjective(..., task="multilabel")`` on multi-hot float labels ``[B, C]``); it
reports scikit-learn's micro-, macro-, weighted- and samples-F1, every head at the global
threshold that maximises its micro-F1 on validation (chosen again at every epoch, and the
selected epoch's thresholds score the test split).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..errors import MidasDataError
from . import food101
from .common import Reader, Recipe, RecipeDataset, Sample, Scan, check_class, finish_scan, require_dirs
from .config import RecipeConfig
from .readers import ByteTokenizer, FramesReader, TextReader
from .reproduce import SplitScan

__all__ = ["GENRES", "LEFT_OUT", "RECIPE", "scan", "multi_hot", "MultiHotDataset"]

GENRES = (
    "Drama",
    "Comedy",
    "Romance",
    "Thriller",
    "Crime",
    "Action",
    "Adventure",
    "Horror",
    "Documentary",
    "Mystery",
    "Sci-Fi",
    "Fantasy",
    "Family",
    "Biography",
    "War",
    "History",
    "Music",
    "Animation",
    "Musical",
    "Western",
    "Sport",
    "Short",
    "Film-Noir",
)
LEFT_OUT = ("News", "Adult", "Talk-Show", "Reality-TV")
SPLIT_KEYS = {"train": ("train",), "val": ("dev", "val"), "test": ("test",)}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
LAYOUT = "split.json (train/dev/test ids) + dataset/<id>.json (plot, genres) + dataset/<id>.jpeg"


def multi_hot(class_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """``[num_classes]`` float32 with ones at ``class_ids``."""
    out = torch.zeros(num_classes, dtype=torch.float32)
    out[list(class_ids)] = 1.0
    return out


class MultiHotDataset(RecipeDataset):
    """:class:`RecipeDataset` whose label (a tuple of class ids) comes out multi-hot ``[C]``."""

    def __init__(
        self, samples: Sequence[Sample], readers: Mapping[str, Reader], train: bool, *, num_classes: int
    ) -> None:
        super().__init__(samples, readers, train)
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item[self.label_key] = multi_hot(item[self.label_key], self.num_classes)
        return item

    def labels(self) -> torch.Tensor:
        return torch.stack([multi_hot(s.label, self.num_classes) for s in self.samples])


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise MidasDataError(f"{path}: missing; expected {what} (MM-IMDB layout {LAYOUT})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MidasDataError(f"{path}: cannot read as JSON ({err}); expected {what}") from err


def plot_text(record: Any, path: Path) -> str:
    """The movie's plot: the longest of its plot texts (or the one string)."""
    plot = record.get("plot") if isinstance(record, dict) else None
    texts = [plot] if isinstance(plot, str) else plot
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise MidasDataError(f"{path}: 'plot' is {plot!r:.60}; expected a non-empty list of strings or a string")
    text = max(texts, key=len).strip()
    if not text:
        raise MidasDataError(f"{path}: 'plot' is empty; expected the movie's plot text")
    return text


def _genres(record: Any, path: Path) -> tuple[int, ...] | None:
    """Sorted genre ids, or ``None`` for a movie left out (a genre of :data:`LEFT_OUT`)."""
    names = record.get("genres") if isinstance(record, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise MidasDataError(f"{path}: 'genres' is {names!r:.60}; expected a non-empty list of genre names")
    if any(name in LEFT_OUT for name in names):
        return None
    return tuple(sorted({check_class(name, GENRES, path) for name in names}))


def _read_split(path: Path) -> dict[str, list[str]]:
    table = _load_json(path, 'the split: {"train": [ids], "dev": [ids], "test": [ids]}')
    out: dict[str, list[str]] = {}
    for split, keys in SPLIT_KEYS.items():
        found = [k for k in keys if isinstance(table, dict) and k in table]
        ids = table[found[0]] if found else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, (str, int)) for i in ids):
            raise MidasDataError(f"{path}: {keys[0]!r} is missing or not a non-empty list of movie ids")
        out[split] = [str(i) for i in ids]
    seen: dict[str, str] = {}
    for split, ids in out.items():
        for key in ids:
            if seen.setdefault(key, split) != split:
                raise MidasDataError(f"{path}: movie {key!r} is in both {seen[key]} and {split}; expected one split")
    return out


def _sample(key: str, record: Path, folder: Path, genres: tuple[int, ...]) -> Sample:
    for suffix in IMAGE_SUFFIXES:
        if (folder / (key + suffix)).is_file():
            return Sample(key, genres, {"image": (folder / (key + suffix),), "text": (record,)})  # type: ignore[arg-type]
    raise MidasDataError(f"{folder / (key + '.jpeg')}: missing poster of movie {key!r}; expected a JPEG file")


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    """Every movie of split.json. Its JSON (the labels) must be there and well formed; a
    missing or unreadable poster stops the scan or, with ``skip_unreadable``, is skipped."""
    root = Path(root)
    folder = require_dirs(root, ["dataset"], "MM-IMDB", LAYOUT)["dataset"]
    ids = _read_split(root / "split.json")
    candidates: list[Callable[[], Sample]] = []
    split_of: dict[str, str] = {}
    left_out = 0
    for split, keys in ids.items():
        for key in keys:
            record = folder / f"{key}.json"
            content = _load_json(record, "the movie's record with 'plot' and 'genres'")
            genres = _genres(content, record)
            if genres is None:
                left_out += 1
                continue
            plot_text(content, record)
            split_of[key] = split
            candidates.append(partial(_sample, key, record, folder, genres))
    found = finish_scan(candidates, list(GENRES), skip_unreadable, check_media)
    splits: dict[str, list[int]] = {split: [] for split in SPLIT_KEYS}
    for index, sample in enumerate(found.samples):
        splits[split_of[sample.key]].append(index)
    empty = [split for split, rows in splits.items() if not rows]
    if empty:
        raise MidasDataError(f"{root / 'split.json'}: no usable movie in {empty}; expected movies in every split")
    per_movie = sum(len(s.label) for s in found.samples) / len(found.samples)
    notes = [
        f"genres per movie: {per_movie:.2f} on average",
        f"left out {left_out} movies with a genre of {', '.join(LEFT_OUT)} (the usual preprocessing)",
    ]
    dataset = partial(MultiHotDataset, num_classes=len(GENRES))
    return SplitScan(
        found.samples, found.classes, found.skipped, splits=splits, dataset=dataset, multilabel=True, notes=notes
    )


class PlotReader(TextReader):
    """A movie's JSON record -> token ids ``[length]`` (int64, 0-padded) of its plot (see
    :func:`plot_text`), through the tokenizer as :class:`TextReader` takes it."""

    def __call__(self, files: Sequence[Path], train: bool) -> torch.Tensor:
        record = _load_json(files[0], "the movie's record with 'plot' and 'genres'")
        return self.encode(plot_text(record, files[0]), files[0])


def readers(config: RecipeConfig, tokenizer: Any = None) -> dict[str, Reader]:
    return {
        "image": FramesReader(1, config.image_size),
        "text": PlotReader(tokenizer or ByteTokenizer(), config.text_length),
    }


RECIPE = Recipe("mmimdb", "MM-IMDB", LAYOUT, scan, readers, food101.encoders)
