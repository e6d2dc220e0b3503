"""In-memory datasets: every item read once, each epoch then costs the model's compute only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["InMemoryDataset", "cache_dataset"]


class InMemoryDataset(Dataset):
    """A dataset held as stacked tensors: ``{modality: [N, ...]}`` and ``labels``, class ids
    ``[N]`` or multi-hot rows ``float [N, C]`` (multi-label).

    Items are dicts ``{modality: tensor, label_key: int}`` (a ``float [C]`` row for
    multi-label), the layout that :func:`~midas_data.midas_loader` expects. Reading every item of a decoding dataset
    once into memory makes each epoch cost the model's compute only; it is exact for any
    dataset whose item ``i`` is the same on every read.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor, label_key: str = "label") -> None:
        single = labels.dim() == 1 and not labels.dtype.is_floating_point
        multi_hot = labels.dim() == 2 and labels.dtype.is_floating_point
        if not (single or multi_hot):
            raise ValueError(
                f"labels: expected class ids (an integer tensor [N]) or multi-hot rows (a float tensor [N, C]), "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        if multi_hot and not bool(((labels == 0) | (labels == 1)).all()):
            bad = (~((labels == 0) | (labels == 1)).all(dim=1)).nonzero().flatten()[:5].tolist()
            raise ValueError(f"labels: rows {bad} are not multi-hot (every value 0 or 1)")
        for name, value in tensors.items():
            if value.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"tensors[{name!r}]: expected {labels.shape[0]} rows (one per label), got {value.shape[0]}"
                )
        if label_key in tensors:
            raise ValueError(f"label_key {label_key!r} is also a modality name")
        self.tensors = dict(tensors)
        self.labels = labels.float() if multi_hot else labels.long()
        self.label_key = label_key

    @property
    def multilabel(self) -> bool:
        """Whether the labels are multi-hot rows ``[N, C]``."""
        return self.labels.dim() == 2

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {name: value[index] for name, value in self.tensors.items()}
        item[self.label_key] = self.labels[index] if self.multilabel else int(self.labels[index])
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def subset(self, indices: torch.Tensor) -> InMemoryDataset:
        """The rows ``indices`` as a new dataset."""
        return InMemoryDataset({k: v[indices] for k, v in self.tensors.items()}, self.labels[indices], self.label_key)


def cache_dataset(dataset: Any, modalities: Sequence[str], label_key: str = "label") -> InMemoryDataset:
    """Read every item of ``dataset`` once and stack it into an :class:`InMemoryDataset`.

    Labels are class ids, or multi-hot rows when the items' labels are vectors."""
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    columns: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    labels: list[torch.Tensor] = []
    for i in range(len(dataset)):
        item = dataset[i]
        for m in modalities:
            if m not in item:
                raise KeyError(f"dataset[{i}]: has no modality {m!r}; keys are {sorted(item)}")
            columns[m].append(torch.as_tensor(item[m]))
        label = torch.as_tensor(item[label_key])
        labels.append(label if label.dim() else label.long())
    return InMemoryDataset({m: torch.stack(v) for m, v in columns.items()}, torch.stack(labels), label_key)
