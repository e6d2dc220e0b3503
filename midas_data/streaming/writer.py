"""``write_shards``: any map-style dataset to webdataset tar shards plus their index.

One member per field: each modality as ``<name>.npy`` (numpy's own format, read back with
``allow_pickle=False``), the label as ``<label>.cls`` (decimal text). Sample ``i`` of the
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


def write_shards(
    dataset: Any,
    out: str | os.PathLike[str],
    modalities: Sequence[str] | Mapping[str, Any],
    label_key: Any = "label",
    *,
    shard_size: int = 1000,
    prefix: str = "shard",
    progress: bool = True,
) -> ShardIndex:
    """Write ``dataset`` (``__len__`` and ``__getitem__``, dict or tuple items) as tar shards
    of ``shard_size`` samples in ``out`` and return their :class:`ShardIndex` (also saved as
    ``out/index.json``).

    ``modalities``: field names of dict items, or a mapping of names to keys/positions
    (tuple items); ``label_key``: the label's key or position. Needs ``webdataset``;
    the progress bar needs ``tqdm``.
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
            sample[f"{label_name}.cls"] = str(_label(label, i, label_key)).encode("ascii")
            sink.write(sample)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    shards = []
    for number, first in enumerate(range(0, total, shard_size)):
        shards.append(ShardEntry(f"{prefix}-{number:06d}.tar", min(shard_size, total - first), first))
    fields = {**{name: f"{name}.npy" for name in keys}, label_name: f"{label_name}.cls"}
    index = ShardIndex(shards, fields, str(out))
    index.save(os.path.join(str(out), INDEX_NAME))
    return index
