"""``MidasDataset``: any paired dataset, with each item tagged by its global sample id.

The wrapper reads each sample from the base dataset exactly once and hands it on as
``(sample_id, item)``. Everything MIDAS-specific happens after, in the collate step
(:class:`~midas_data.data.collate.MidasCollate`), inside the DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from ..errors import MidasDataError

__all__ = ["MidasDataset", "IndexedItem"]

IndexedItem = tuple[int, Any]


class MidasDataset(Dataset):
    """Wraps a map-style dataset so that every item carries its index.

    Works with any object that has ``__len__`` and ``__getitem__``, including Hugging
    Face ``datasets.Dataset`` (plain, ``with_format("torch")`` or with a transform). A base
    dataset that reads batches at once through ``__getitems__`` keeps doing so: the wrapper
    defines ``__getitems__`` itself, because PyTorch's fetcher calls the method of the
    outermost dataset only and would otherwise fall back to one ``__getitem__`` per sample.
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"dataset: expected a map-style dataset with __len__ and __getitem__, got {type(dataset).__name__}"
            )
        if len(dataset) == 0:
            raise MidasDataError("dataset: has length 0; MIDAS needs samples of at least two classes")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> IndexedItem:
        index = int(index)
        try:
            return index, self.dataset[index]
        except Exception as err:
            _name_sample(err, f"sample {index}: reading it from the dataset raised this error")
            raise

    def __getitems__(self, indices: Sequence[int]) -> list[IndexedItem]:
        ids = [int(i) for i in indices]
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None:
            try:
                items = getitems(ids)
            except Exception as err:
                _name_sample(err, self._culprit(ids))
                raise
            if len(items) != len(ids):
                raise MidasDataError(
                    f"dataset.__getitems__: returned {len(items)} items for {len(ids)} indices (first id {ids[0]})"
                )
        else:
            items = [self.__getitem__(i)[1] for i in ids]
        return list(zip(ids, items))

    def _culprit(self, ids: list[int]) -> str:
        """After a batched read failed: which sample fails on its own (read one by one,
        on this failure path only)."""
        for i in ids:
            try:
                self.dataset[i]
            except Exception:
                return f"sample {i}: reading it from the dataset raised this error (in a read of samples {ids[:8]})"
        return f"samples {ids[:8]}: reading them from the dataset with __getitems__ raised this error"


def _name_sample(err: Exception, note: str) -> None:
    """Add a note naming the sample to ``err``, which is then re-raised with its type kept
    (code that catches it still does; a DataLoader worker's report shows the note in the
    main process). Python 3.10 has no notes: the error becomes a MidasDataError."""
    if hasattr(err, "add_note"):
        err.add_note(note)
        return
    raise MidasDataError(f"{note}: {type(err).__name__}: {err}") from err
