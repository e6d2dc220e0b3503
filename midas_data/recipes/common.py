"""What every recipe shares: a sample record, the scan result, the dataset that reads
samples through per-modality readers, and the helpers for folder layouts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import MidasDataError
from .config import RecipeConfig
from .media import probe_all

__all__ = [
    "Sample",
    "Scan",
    "Reader",
    "RecipeDataset",
    "require_dirs",
    "read_class_list",
    "check_class",
    "list_frames",
    "finish_scan",
    "class_items",
    "Recipe",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Sample:
    """One sample: its key (the clip or item name), class id and files per modality."""

    key: str
    label: int
    files: Mapping[str, tuple[Path, ...]]

    def all_files(self) -> list[Path]:
        return [path for paths in self.files.values() for path in paths]


@dataclass
class Scan:
    """The samples found under a root, the class names, and what was skipped and why."""

    samples: list[Sample]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # "path: reason", in scan order

    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def skipped_summary(self, first: int = 10) -> str:
        if not self.skipped:
            return "skipped 0 unreadable samples"
        head = "\n  ".join(self.skipped[:first])
        more = f"\n  ... and {len(self.skipped) - first} more" if len(self.skipped) > first else ""
        return (
            f"skipped {len(self.skipped)} unreadable samples (first {min(first, len(self.skipped))}):\n  {head}{more}"
        )


# A reader turns one sample's files of a modality into a tensor; ``train`` turns on the
# random choices of training (frame positions, flips).
Reader = Callable[[Sequence[Path], bool], Any]


class RecipeDataset(Dataset):
    """Items ``{modality: tensor, "label": int}`` read from a list of :class:`Sample`."""

    def __init__(
        self, samples: Sequence[Sample], readers: Mapping[str, Reader], train: bool, label_key: str = "label"
    ) -> None:
        self.samples = list(samples)
        self.readers = dict(readers)
        self.train = train
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item: dict[str, Any] = {m: read(sample.files[m], self.train) for m, read in self.readers.items()}
        item[self.label_key] = sample.label
        return item

    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples], dtype=torch.long)


def require_dirs(root: Path, names: Sequence[str], dataset: str, layout: str) -> dict[str, Path]:
    """``root / name`` for every name, or an error naming the root, the missing folder and
    the expected layout."""
    if not root.is_dir():
        raise MidasDataError(f"{root}: does not exist or is not a folder; expected the {dataset} root ({layout})")
    found = {}
    for name in names:
        path = root / name
        if not path.is_dir():
            raise MidasDataError(
                f"{path}: missing folder; expected the {dataset} layout {layout} (see docs/recipes.md)"
            )
        found[name] = path
    return found


def read_class_list(root: Path, folder: Path) -> list[str]:
    """The class names: ``root/classes.txt`` when present (one name a line, or the last
    word of each line, as in UCF-101's ``classInd.txt``), else the sub-folders of
    ``folder``, sorted."""
    listing = root / "classes.txt"
    if listing.is_file():
        names = [line.split()[-1] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(set(names)) != len(names):
            raise MidasDataError(f"{listing}: lists a class twice; expected one name a line")
    else:
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(names) < 2:
        raise MidasDataError(f"{folder}: found classes {names}; expected at least two class folders")
    return names


def check_class(name: str, classes: Sequence[str], path: Path) -> int:
    if name not in classes:
        raise MidasDataError(f"{path}: class {name!r} is not in the class list; expected one of {list(classes)}")
    return list(classes).index(name)


def list_frames(folder: Path) -> tuple[Path, ...]:
    """The image files of a frame folder, sorted by name; an error when none."""
    if not folder.is_dir():
        raise MidasDataError(f"{folder}: missing frame folder; expected a folder of .jpg frames")
    frames = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not frames:
        raise MidasDataError(f"{folder}: no frames; expected at least one .jpg file")
    return frames


def finish_scan(
    candidates: Sequence[Callable[[], Sample]], classes: list[str], skip_unreadable: bool, check_media: bool
) -> Scan:
    """Build every sample; with ``skip_unreadable`` a sample whose files are missing or
    unreadable is skipped and recorded, otherwise the first problem raises.

    ``candidates`` are thunks so that a layout error of one sample (a missing frame
    folder) is caught per sample; ``check_media`` opens every file (headers only)."""
    samples: list[Sample] = []
    skipped: list[str] = []
    for make in candidates:
        try:
            sample = make()
            problem = probe_all(sample.all_files()) if check_media else None
            if problem is not None:
                raise MidasDataError(f"{problem}; expected a readable media file")
        except MidasDataError as err:
            if not skip_unreadable:
                raise
            skipped.append(str(err).split("; expected")[0])
            continue
        samples.append(sample)
    if not samples:
        raise MidasDataError(f"found no usable samples ({len(skipped)} skipped); check the layout in docs/recipes.md")
    return Scan(samples, classes, skipped)


def class_items(folder: Path, classes: Sequence[str], suffix: str | None) -> list[tuple[int, Path]]:
    """``(class id, path)`` of every item in ``folder/<class>/``: files ending in ``suffix``,
    or sub-folders when ``suffix`` is ``None``. A class folder outside ``classes`` or a
    stray entry is an error naming it; hidden entries (``.name``) are ignored."""
    items: list[tuple[int, Path]] = []
    for class_dir in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not class_dir.is_dir():
            raise MidasDataError(f"{class_dir}: expected only class folders in {folder}")
        label = check_class(class_dir.name, classes, class_dir)
        for entry in sorted(p for p in class_dir.iterdir() if not p.name.startswith(".")):
            wanted = entry.is_dir() if suffix is None else entry.is_file() and entry.suffix.lower() == suffix
            if not wanted:
                kind = "folders (one per clip)" if suffix is None else f"{suffix} files"
                raise MidasDataError(f"{entry}: unexpected entry; expected only {kind} in {class_dir}")
            items.append((label, entry))
    if not items:
        raise MidasDataError(f"{folder}: no samples found; expected {folder.name}/<class>/<item> (see docs/recipes.md)")
    return items


@dataclass(frozen=True)
class Recipe:
    """One dataset's recipe: how to find its samples, read them and encode them."""

    name: str
    title: str
    layout: str  # the expected tree, one line
    scan: Callable[..., Scan]  # (root, config, *, skip_unreadable, check_media) -> Scan
    readers: Callable[[RecipeConfig, Any], dict[str, Reader]]  # (config, tokenizer) -> readers
    encoders: Callable[[RecipeConfig, Mapping[str, Any], Any], dict[str, nn.Module]]  # (config, item, tokenizer)
