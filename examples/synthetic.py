"""Generated two-modality data and a small late-fusion model for the examples.

No download: ``audio`` carries the class clearly, ``video`` only faintly (the imbalance
MIDAS is for). Replace ``make_splits`` with your own dataset and ``make_model`` with your
model; the training scripts do not change.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from midas_data import LateFusionClassifier

MODALITIES = ("audio", "video")
NUM_CLASSES = 6


class GeneratedPairs(Dataset):
    """``n`` samples: ``{"audio": [32], "video": [24], "label": int}``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        centres = torch.Generator().manual_seed(1234)  # the same classes in every split
        audio_means = torch.randn(NUM_CLASSES, 32, generator=centres)
        video_means = torch.randn(NUM_CLASSES, 24, generator=centres)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        self.audio = audio_means[self.labels] * 1.0 + torch.randn(n, 32, generator=g) * 1.5
        self.video = video_means[self.labels] * 0.4 + torch.randn(n, 24, generator=g) * 1.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"audio": self.audio[i], "video": self.video[i], "label": int(self.labels[i])}


def make_splits(train: int = 1000, test: int = 400) -> tuple[GeneratedPairs, GeneratedPairs]:
    return GeneratedPairs(train, seed=0), GeneratedPairs(test, seed=1)


def make_model(seed: int = 0) -> LateFusionClassifier:
    torch.manual_seed(seed)
    encoders = {
        "audio": nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU()),
        "video": nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU()),
    }
    return LateFusionClassifier(encoders, {"audio": 32, "video": 32}, NUM_CLASSES)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: GeneratedPairs, device: torch.device) -> float:
    model.eval()
    logits = model({"audio": dataset.audio.to(device), "video": dataset.video.to(device)}).fusion_logits
    model.train()
    return float((logits.argmax(dim=1).cpu() == dataset.labels).float().mean())


def json_line(example: str, world_size: int, epochs: int, dataset_size: int, reports: list[dict[str, Any]]) -> str:
    """The examples' last line: every rank's samples per epoch and alpha, the test accuracy."""
    return json.dumps(
        {
            "example": example,
            "world_size": world_size,
            "epochs": epochs,
            "dataset_size": dataset_size,
            "samples_per_rank_per_epoch": [r["samples_per_epoch"] for r in reports],
            "alpha_per_rank": [r["alpha"] for r in reports],
            "test_accuracy": reports[0]["test_accuracy"],
        }
    )
