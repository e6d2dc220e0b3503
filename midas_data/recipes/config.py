"""The paper's training setup per dataset, as a config a user can print and override.

Values follow the paper and its reference code (ALGORITHM.md sections 6 and 8): SGD with
momentum 0.9 and weight decay 1e-4, batch 64, StepLR stepped only after the warm-up,
MIDAS's lambda, warm-up epochs and alpha clip per dataset. The reference code's config
loader drops some of these fields, so every value is stated here explicitly; ``notes``
says where a value comes from when the paper does not give it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MidasDataError

__all__ = ["RecipeConfig", "CONFIGS", "recipe_config", "apply_overrides"]


@dataclass
class RecipeConfig:
    """Everything ``reproduce`` trains with. Epoch counts are 0-based in checkpoints."""

    dataset: str
    modalities: tuple[str, ...]
    method: str = "midas"  # "midas", or "joint" for the joint-training baseline
    task: str = "multiclass"  # CMU-MOSEI: "binary" or "7class"; MM-IMDB: "multilabel"
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")  # what the report gives, the first selects
    epochs: int = 70
    batch_size: int = 64
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 50  # StepLR period in epochs, counted from the end of the warm-up
    gamma: float = 0.1
    warmup_epochs: int = 10
    lam: float = 1.0
    eta: float = 0.05
    alpha_max: float | None = None  # None: alpha is clipped from below only
    variant: str = "paper"  # or "reference": the authors' code (ALGORITHM.md section 6)
    seed: int = 0  # model initialisation and batch order
    split_seed: int = 0  # the 70/10/20 re-split
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    eval_seed: int = 1234  # pairs of the misaligned validation and test samples
    num_workers: int = 4
    feature_dim: int = 512  # feature size of the text and sequence encoders
    resnet_width: int = 64  # ResNet-18's first width (64 is the standard network; less for smoke tests only)
    # preprocessing
    mel_bins: int = 128
    audio_frames: int = 1024  # fbank frames of 10 ms, cut or zero-padded
    video_frames: int = 3
    image_size: int = 224
    text_length: int = 40  # Food-101 and MM-IMDB: tokens per title or plot
    sequence_length: int = 50  # CMU-MOSI and CMU-MOSEI: time steps per feature stream
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One ``name = value`` line per field, with the note of the field when it has one."""
        lines = []
        for f in dataclasses.fields(self):
            if f.name == "notes":
                continue
            value = getattr(self, f.name)
            note = self.notes.get(f.name)
            lines.append(f"{f.name} = {json.dumps(value)}" + (f"  # {note}" if note else ""))
        return "\n".join(lines)


_PAPER = "ALGORITHM.md section 6/8"

CONFIGS: dict[str, RecipeConfig] = {
    "cremad": RecipeConfig(
        dataset="cremad",
        modalities=("audio", "video"),
        epochs=70,
        lr=1e-3,
        warmup_epochs=10,
        lam=1.0,
        notes={"epochs": "paper: 70 epochs, step decay at 50", "warmup_epochs": "paper: E_w = 10"},
    ),
    "kinetics_sounds": RecipeConfig(
        dataset="kinetics_sounds",
        modalities=("audio", "video"),
        epochs=70,
        lr=1e-3,
        warmup_epochs=10,
        lam=5.0,
        alpha_max=10.0,
        notes={
            "lam": "paper: lambda = 5 on Kinetics-Sounds",
            "alpha_max": "reference code clips alpha to [1, 10] on Kinetics-Sounds",
            "epochs": "reference code's default (70)",
        },
    ),
    "ucf101": RecipeConfig(
        dataset="ucf101",
        modalities=("rgb", "flow"),
        epochs=70,
        lr=1e-2,
        warmup_epochs=0,
        notes={"lr": "reference code: 1e-2 on UCF-101", "warmup_epochs": "paper: no warm-up on UCF-101"},
    ),
    "food101": RecipeConfig(
        dataset="food101",
        modalities=("image", "text"),
        epochs=30,
        lr=1e-3,
        warmup_epochs=2,
        step_size=15,
        notes={
            "epochs": "paper: 30 epochs",
            "step_size": "reference code: StepLR(15) on Food-101",
            "feature_dim": "the paper used a pretrained ResNet-18 and ELECTRA-small; give weights with --pretrained",
        },
    ),
    "mosi": RecipeConfig(
        dataset="mosi",
        modalities=("text", "audio", "vision"),
        epochs=40,
        lr=1e-3,
        warmup_epochs=5,
        step_size=30,
        feature_dim=128,
        notes={
            "epochs": "not given by the paper or its code; chosen here",
            "warmup_epochs": "not given by the paper or its code; chosen here",
            "step_size": "not given by the paper or its code; chosen here",
            "feature_dim": "recurrent encoders of the feature streams; chosen here",
        },
    ),
    "mosei": RecipeConfig(
        dataset="mosei",
        modalities=("text", "audio", "vision"),
        task="binary",
        epochs=40,
        lr=1e-3,
        warmup_epochs=5,
        step_size=30,
        feature_dim=128,
        notes={
            "task": "binary (score >= 0 is positive) or 7class (rounded score); regression is not offered",
            "epochs": "not given by the paper or its code; chosen here, as for CMU-MOSI",
            "warmup_epochs": "not given by the paper or its code; chosen here, as for CMU-MOSI",
            "step_size": "not given by the paper or its code; chosen here, as for CMU-MOSI",
            "split": "unused: the standard train/valid/test folders are the split",
            "feature_dim": "recurrent encoders of the feature streams; chosen here",
        },
    ),
    "mmimdb": RecipeConfig(
        dataset="mmimdb",
        modalities=("image", "text"),
        task="multilabel",
        metrics=("micro_f1", "macro_f1", "weighted_f1", "samples_f1"),
        epochs=30,
        lr=1e-3,
        warmup_epochs=2,
        step_size=15,
        text_length=512,
        notes={
            "task": "23 genres, several per movie: sigmoid outputs, each head's threshold chosen on validation",
            "metrics": "the usual MM-IMDB F1 scores; micro-F1 on validation selects the checkpoint",
            "epochs": "not given by the paper or its code; chosen here, as for Food-101",
            "warmup_epochs": "not given by the paper or its code; chosen here, as for Food-101",
            "step_size": "not given by the paper or its code; chosen here, as for Food-101",
            "split": "unused: split.json's train/dev/test is the split",
            "text_length": "tokens of the plot; 512 as for BERT-sized text encoders",
        },
    ),
}

# The label forms a recipe offers; every other recipe is single-label ("multiclass").
TASKS: dict[str, tuple[str, ...]] = {"mosei": ("binary", "7class"), "mmimdb": ("multilabel",)}


def recipe_config(dataset: str) -> RecipeConfig:
    """A fresh copy of the paper's config for ``dataset``."""
    if dataset not in CONFIGS:
        raise MidasDataError(f"dataset: expected one of {sorted(CONFIGS)}, got {dataset!r}")
    return dataclasses.replace(CONFIGS[dataset], notes=dict(CONFIGS[dataset].notes))


def _parse(name: str, text: str, current: Any, annotation: str) -> Any:
    if text.lower() in ("none", "null") and "None" in annotation:
        return None
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise MidasDataError(f"--set {name}={text}: expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        parts = [p for p in text.replace(",", " ").split() if p]
        kind = type(current[0]) if current else str
        try:
            return tuple(kind(p) for p in parts)
        except ValueError as err:
            raise MidasDataError(f"--set {name}={text}: expected comma-separated {kind.__name__} values") from err
    kind = float if "float" in annotation else int if "int" in annotation else str
    try:
        return kind(text)
    except ValueError as err:
        raise MidasDataError(f"--set {name}={text}: expected a {kind.__name__}") from err


def apply_overrides(config: RecipeConfig, overrides: Sequence[str]) -> RecipeConfig:
    """``config`` with ``name=value`` overrides applied (``--set lr=0.01 --set alpha_max=none``)."""
    fields = {f.name: f for f in dataclasses.fields(config) if f.name not in ("notes", "dataset")}
    changes: dict[str, Any] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise MidasDataError(f"--set {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        changes[name] = _parse(name, text.strip(), getattr(config, name), str(fields[name].type))
    updated = dataclasses.replace(config, **changes)
    tasks = TASKS.get(updated.dataset, ("multiclass",))
    if updated.task not in tasks:
        raise MidasDataError(f"--set task={updated.task}: expected one of {list(tasks)} for {updated.dataset}")
    if updated.method not in ("midas", "joint"):
        raise MidasDataError(f"--set method={updated.method}: expected midas or joint")
    if updated.epochs < 1 or updated.batch_size < 2:
        raise MidasDataError(
            f"epochs and batch_size: expected >= 1 and >= 2, got {updated.epochs}, {updated.batch_size}"
        )
    return updated
