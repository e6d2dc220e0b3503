"""What is wrong with a batch's data, in words that name the sample and the key.

These run on the failure path (or are a few attribute reads per sample), so a good batch
pays next to nothing for them. ``collate.py`` uses them to explain why a modality would
not collate; the objective uses :func:`nonfinite_inputs` to tell bad data from a model
that diverged.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "describe",
    "first_mismatch",
    "is_number_list",
    "shared_memory_exhausted",
    "shared_memory_message",
    "missing_key_hint",
    "nonfinite_inputs",
    "nonfinite_rows",
]

Key = str | int


def describe(value: Any) -> str:
    """A short description of a sample's value: type, dtype and shape or length."""
    if value is None:
        return "None"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"a {type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        inner = type(value[0]).__name__ if value else "nothing"
        return f"a {type(value).__name__} of length {len(value)} (of {inner})"
    return f"a {type(value).__name__}"


def _signature(value: Any) -> tuple[Any, ...]:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return (type(value), value.dtype, tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return (type(value), len(value))
    return (type(value),)


def first_mismatch(values: Sequence[Any]) -> int | None:
    """The position of the first value whose type, dtype, shape or length differs from
    the first value's, or ``None`` when all agree."""
    reference = _signature(values[0])
    for position, value in enumerate(values):
        if _signature(value) != reference:
            return position
    return None


def is_number_list(value: Any) -> bool:
    """A Python list or tuple of numbers or of such lists: what a Hugging Face dataset
    without a format returns for an array column."""
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
        if isinstance(value, (bool, int, float, np.number)):
            return True
    return False


def shared_memory_exhausted(err: BaseException) -> bool:
    """Whether ``err`` says a worker could not allocate shared memory (``/dev/shm`` full)."""
    text = str(err)
    return any(sign in text for sign in ("No space left on device", "</torch_", "shared memory", "/dev/shm"))


def shared_memory_message(ids: Sequence[int], err: BaseException) -> str:
    return (
        f"batch of samples {list(ids)[:8]}: the DataLoader worker could not allocate shared memory for it ({err}). "
        "/dev/shm is full or too small: enlarge it (docker: --shm-size=8g or --ipc=host), or lower batch_size, "
        "num_workers or prefetch_factor; num_workers=0 needs no shared memory"
    )


def missing_key_hint(item: Any, key: Key, what: str) -> str:
    """The last part of a "has no key" message: what the item has, and what to pass."""
    if isinstance(item, Mapping):
        keys = sorted(map(str, item))
        close = difflib.get_close_matches(str(key), keys, n=1)
        return f"the item is a dict with keys {keys}" + (f"; did you mean {close[0]!r}?" if close else "")
    if isinstance(item, Sequence) and not isinstance(item, str):
        have = f"the item is a {type(item).__name__} of length {len(item)}"
        if isinstance(key, str):
            if what == "label":
                return (
                    f"{have}; for tuple items pass the label's position, e.g. midas_loader(dataset, "
                    f"{{'audio': 0, 'video': 1}}, label_key={len(item) - 1}, ...)"
                )
            return f"{have}; for tuple items name each modality's position, e.g. modalities={{{key!r}: 0, ...}}"
        return f"{have}; positions run from 0 to {len(item) - 1}"
    return f"the item is a {type(item).__name__}"


def nonfinite_rows(value: Any, rows: int) -> torch.Tensor | None:
    """``[rows]`` bool: which rows of a collated value hold NaN or inf (``None`` when the
    value holds no floating-point tensor or array with one row per sample)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        if not (value.dtype.is_floating_point or value.dtype.is_complex) or value.dim() == 0 or value.shape[0] != rows:
            return None
        return ~torch.isfinite(value.detach().reshape(rows, -1)).all(dim=1).cpu()
    if isinstance(value, Mapping):
        found = [nonfinite_rows(v, rows) for v in value.values()]
        masks = [m for m in found if m is not None]
        return torch.stack(masks).any(dim=0) if masks else None
    return None


def nonfinite_inputs(inputs: Mapping[str, Any], ids: torch.Tensor) -> dict[str, list[int]]:
    """Modality -> the sample ids whose input holds NaN or inf (modalities without any
    left out). Synchronises with the device: call it only once something failed."""
    found = {}
    id_list = ids.tolist()
    for name, value in inputs.items():
        mask = nonfinite_rows(value, len(id_list))
        if mask is not None and bool(mask.any()):
            found[name] = [id_list[i] for i in mask.nonzero().flatten().tolist()]
    return found
