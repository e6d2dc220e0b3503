"""In-memory datasets: every item read once, each epoch then costs the model's compute only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["InMemoryDataset", "cache_dataset"]


class InMemoryDataset(Dataset):
    """A dataset held as stacked tensors: ``{modality: [N, ...]}`` and ``labels [N]``.

    Items are dicts ``{modality: tensor, label_key: int}``, the layout that
    :func:`~midas_data.midas_loader` expects. Reading every item of a decoding dataset
    once into memory makes each epoch cost the model's compute only; it is exact for any
    dataset whose item ``i`` is the same on every read.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor, label_key: str = "label") -> None:
        if labels.dim() != 1 or labels.dtype.is_floating_point:
            raise ValueError(f"labels: expected an integer tensor [N], got {labels.dtype} {tuple(labels.shape)}")
        for name, value in tensors.items():
            if value.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"tensors[{name!r}]: expected {labels.shape[0]} rows (one per label), got {value.shape[0]}"
                )
        if label_key in tensors:
            raise ValueError(f"label_key {label_key!r} is also a modality name")
        self.tensors = dict(tensors)
        self.labels = labels.long()
        self.label_key = label_key

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {name: value[index] for name, value in self.tensors.items()}
        item[self.label_key] = int(self.labels[index])
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def subset(self, indices: torch.Tensor) -> InMemoryDataset:
        """The rows ``indices`` as a new dataset."""
        return InMemoryDataset({k: v[indices] for k, v in self.tensors.items()}, self.labels[indices], self.label_key)


def cache_dataset(dataset: Any, modalities: Sequence[str], label_key: str = "label") -> InMemoryDataset:
    """Read every item of ``dataset`` once and stack it into an :class:`InMemoryDataset`."""
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    columns: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    labels: list[int] = []
    for i in range(len(dataset)):
        item = dataset[i]
        for m in modalities:
            if m not in item:
                raise KeyError(f"dataset[{i}]: has no modality {m!r}; keys are {sorted(item)}")
            columns[m].append(torch.as_tensor(item[m]))
        labels.append(int(item[label_key]))
    return InMemoryDataset({m: torch.stack(v) for m, v in columns.items()}, torch.tensor(labels), label_key)
