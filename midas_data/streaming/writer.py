"""``write_shards``: any map-style dataset to webdataset tar shards plus their index.

One member per field: each modality as ``<name>.npy`` (numpy's own format, read back with
``allow_pickle=False``), the label as ``<label>.cls`` (decimal text), or for multi-label
data as ``<label>.npy``: a float32 multi-hot row as given, or the int64 class ids of a
list label (the streaming stage turns them into a multi-hot row with its ``num_classes``). Sample ``i`` of the
dataset is stored under ``__key__ = "%09d" % i``, so its stats-table slot is its key, and
``index.json`` next to the shards records every shard's size (for equal work per rank).
Nothing is ever pickled.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.labels import is_label_set
from ..errors import MidasDataError
from .ids import INDEX_NAME, ShardEntry, ShardIndex, slot_key

__all__ = ["write_shards"]


def _npy_bytes(value: Any, index: int, name: str) -> bytes:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise MidasDataError(
            f"sample {index}: modality {name!r} is a {type(value).__name__} that is not a numeric array; "
            "shards store arrays only (.npy without pickles)"
        )
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _label(value: Any, index: int, key: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point:
        value = value.item()
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MidasDataError(f"sample {index}: label {key!r} is {value!r}; expected an integer class id")
    return value


def _label_set(value: Any, index: int, key: Any) -> np.ndarray:
    """A multi-label label as stored: float32 multi-hot, or int64 class ids."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if isinstance(value, (list, tuple)) and array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1:
        raise MidasDataError(f"sample {index}: label {key!r} has shape {array.shape}; expected a vector")
    if np.issubdtype(array.dtype, np.integer):
        if (array < 0).any() or len(np.unique(array)) != len(array):
            raise MidasDataError(
                f"sample {index}: label {key!r} is {array.tolist()}; a list label holds distinct class ids >= 0"
            )
        return array.astype(np.int64)
    if array.dtype == bool:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating) or not ((array == 0) | (array == 1)).all():
        raise MidasDataError(
            f"sample {index}: label {key!r} is {array.tolist()[:8]}; a multi-hot label holds 1 for each class "
            "present and 0 elsewhere"
        )
    return array.astype(np.float32)


def write_shards(
    dataset: Any,
    out: str | os.PathLike[str],
    modalities: Sequence[str] | Mapping[str, Any],
    label_key: Any = "label",
    *,
    shard_size: int = 1000,
    prefix: str = "shard",
    progress: bool = True,
    multilabel: bool | None = None,
) -> ShardIndex:
    """Write ``dataset`` (``__len__`` and ``__getitem__``, dict or tuple items) as tar shards
    of ``shard_size`` samples in ``out`` and return their :class:`ShardIndex` (also saved as
    ``out/index.json``).

    ``modalities``: field names of dict items, or a mapping of names to keys/positions
    (tuple items); ``label_key``: the label's key or position. ``multilabel``: whether
    labels are label sets (multi-hot vectors or lists of class ids); ``None`` reads it from
    the first sample's label, and every other label must be of the same kind. Needs
    ``webdataset``; the progress bar needs ``tqdm``.
    """
    import webdataset as wds

    if not isinstance(shard_size, int) or shard_size < 2:
        raise ValueError(f"shard_size: expected an int >= 2, got {shard_size!r}")
    keys = dict(modalities) if isinstance(modalities, Mapping) else {str(m): m for m in modalities}
    label_name = label_key if isinstance(label_key, str) else "label"
    os.makedirs(out, exist_ok=True)
    total = len(dataset)
    if total == 0:
        raise MidasDataError("dataset: has length 0; nothing to write")
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="shards", unit="sample")
        except ImportError:
            bar = None
    pattern = os.path.join(str(out), f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for i in range(total):
            item = dataset[i]
            sample: dict[str, Any] = {"__key__": slot_key(i)}
            for name, key in keys.items():
                try:
                    value = item[key]
                except (KeyError, IndexError, TypeError):
                    raise MidasDataError(f"sample {i}: has no modality {key!r}") from None
                sample[f"{name}.npy"] = _npy_bytes(value, i, name)
            try:
                label = item[label_key]
            except (KeyError, IndexError, TypeError):
                raise MidasDataError(f"sample {i}: has no label {label_key!r}") from None
            if multilabel is None:
                multilabel = is_label_set(label)
                if multilabel is None:
                    raise MidasDataError(
                        f"sample {i}: label {label_key!r} is a one-entry integer vector, a class id or a list of one "
                        "class id; pass write_shards(..., multilabel=True or False)"
                    )
            if multilabel:
                if is_label_set(label) is False:
                    raise MidasDataError(
                        f"sample {i}: label {label_key!r} is {label!r}, a single class id, but the dataset is "
                        "multi-label; every label must be a multi-hot vector or a list of class ids"
                    )
                sample[f"{label_name}.npy"] = _npy_bytes(_label_set(label, i, label_key), i, label_name)
            else:
                sample[f"{label_name}.cls"] = str(_label(label, i, label_key)).encode("ascii")
            sink.write(sample)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    shards = []
    for number, first in enumerate(range(0, total, shard_size)):
        shards.append(ShardEntry(f"{prefix}-{number:06d}.tar", min(shard_size, total - first), first))
    label_member = f"{label_name}.npy" if multilabel else f"{label_name}.cls"
    fields = {**{name: f"{name}.npy" for name in keys}, label_name: label_member}
    index = ShardIndex(shards, fields, str(out))
    index.save(os.path.join(str(out), INDEX_NAME))
    return index
