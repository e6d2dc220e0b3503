"""Multi-label items: a label that is a multi-hot vector or a list of class ids.

What a label is, by its type:

* a Python list or tuple, or an integer tensor / array with one dimension: class ids,
  converted to a multi-hot row (needs the number of classes). A Hugging Face column of
  lists in torch format gives such tensors. An id may appear once: an integer multi-hot
  row such as ``[0, 1, 1, 0]`` repeats ids and is refused, not misread (give multi-hot
  rows as float or bool);
* a float or bool tensor / array ``[C]`` with more than one entry: a multi-hot row, values
  in ``[0, 1]`` (soft values allowed);
* anything else: a single class id (:func:`~midas_data.data.collate.as_label`).

A one-dimensional integer tensor with one entry is either (``torch.tensor([3])``): it
follows the other labels of its batch, and is a class id when all of them are alike
(single-label datasets that wrap their ids keep working). An all-zero row (a sample with no
class, common in multi-label datasets) is allowed: its label set is empty and its
confidence is the heads' confidence that no class applies.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import MidasDataError
from ..multilabel import ids_to_multi_hot

__all__ = ["is_label_set", "as_multi_hot", "check_label_kinds", "majority_kind"]

Key = str | int


def is_label_set(value: Any) -> bool | None:
    """Whether ``value`` is a multi-label label; ``None`` where either reading holds (a
    one-entry integer vector). See the module docstring."""
    if isinstance(value, (list, tuple)):
        return True
    if isinstance(value, torch.Tensor):
        ndim, size, integer = value.dim(), value.numel(), _integer_dtype(value.dtype)
    elif isinstance(value, np.ndarray):
        ndim, size, integer = value.ndim, value.size, np.issubdtype(value.dtype, np.integer)
    else:
        return False
    if integer and ndim == 1 and size == 1:
        return None
    return ndim >= 1 and (integer or size != 1)


def as_multi_hot(value: Any, sample_id: int, key: Key, num_classes: int | None) -> torch.Tensor:
    """A float32 multi-hot row ``[C]`` from a list of class ids or a vector, or a
    :class:`MidasDataError` naming the sample."""
    if _holds_ids(value):
        value = value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value
        if num_classes is None:
            raise MidasDataError(
                f"sample {sample_id}: label {key!r} is a list of class ids; pass num_classes to midas_loader "
                "to turn it into a multi-hot row (or give the label as a multi-hot vector)"
            )
        for class_id in value:
            if isinstance(class_id, (bool, np.bool_)) or not isinstance(class_id, numbers.Integral):
                raise MidasDataError(
                    f"sample {sample_id}: label {key!r} is {value!r}; a list label holds integer class ids, "
                    f"got {class_id!r} ({type(class_id).__name__})"
                )
            if not 0 <= class_id < num_classes:
                raise MidasDataError(
                    f"sample {sample_id}: label {key!r} holds class id {int(class_id)}; expected class ids in "
                    f"[0, {num_classes}) (num_classes={num_classes})"
                )
        ids = [int(c) for c in value]
        if len(set(ids)) != len(ids):
            raise MidasDataError(
                f"sample {sample_id}: label {key!r} is {value!r}, class ids with repeats; a list label holds each "
                "class id once (a multi-hot row must be a float or bool vector)"
            )
        return ids_to_multi_hot(ids, num_classes)
    row = torch.as_tensor(value)
    if row.dim() != 1 or row.dtype.is_complex:
        raise MidasDataError(
            f"sample {sample_id}: label {key!r} has shape {tuple(row.shape)} ({row.dtype}); a multi-hot label is "
            "one real vector [C]"
        )
    row = row.to(torch.float32)
    if num_classes is not None and row.numel() != num_classes:
        raise MidasDataError(
            f"sample {sample_id}: label {key!r} is a vector of {row.numel()} entries; expected num_classes="
            f"{num_classes} (one per class)"
        )
    if not bool(((row >= 0) & (row <= 1)).all()):
        raise MidasDataError(
            f"sample {sample_id}: label {key!r} holds values outside [0, 1] (or NaN): {row.tolist()[:8]}; "
            "a multi-hot label holds 1 for each class present and 0 elsewhere"
        )
    return row


def _holds_ids(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 1 and _integer_dtype(value.dtype)
    return isinstance(value, np.ndarray) and value.ndim == 1 and np.issubdtype(value.dtype, np.integer)


def _integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def check_label_kinds(ids: Sequence[int], kinds: Sequence[bool | None], expected: bool | None) -> bool:
    """Every label of the batch is of one kind (single class id or label set), and of the
    kind seen before in this process (``expected``; else the batch's majority kind, so the
    odd sample out is the one named); returns the kind."""
    kind = majority_kind(kinds) if expected is None else expected
    for sid, k in zip(ids, kinds):
        if k is not None and k != kind:
            found, want = ("a label set", "class ids") if k else ("a class id", "label sets")
            raise MidasDataError(
                f"sample {sid}: label is {found} but the dataset's other samples have {want}; a dataset must be "
                "all single-label (integer class ids) or all multi-label (multi-hot vectors or lists of class ids)"
            )
    return kind


def majority_kind(kinds: Sequence[bool | None]) -> bool:
    """The kind of most labels of a batch that have one (the first such label's on a tie;
    single-label when none has)."""
    known = [k for k in kinds if k is not None]
    sets = sum(known)
    return bool(known) and (known[0] if 2 * sets == len(known) else 2 * sets > len(known))
