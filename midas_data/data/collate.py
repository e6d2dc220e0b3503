"""``MidasCollate``: a batch transform that turns loaded samples into a ``MidasBatch``.

It runs where ``collate_fn`` runs, inside the DataLoader workers: it validates the
items, collates each modality once and plans the misaligned rows. Inside a worker the
stackable modalities, labels, ids and plan are packed into one buffer, so the batch
crosses to the main process as one shared-memory segment (``packing.py``). Input-level
rows are built later by indexing the collated inputs (``MidasBatch.misaligned_inputs``),
or here with ``materialize_in_worker=True``; no sample is read twice.

The plan of a batch is drawn from a generator seeded by ``(seed, epoch, sample ids of the
batch)``, so the same batch gets the same plan whichever worker builds it and however many
workers there are, and a new epoch gets new plans.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from ..errors import MidasDataError
from ..functional import PARTNER_RULES, PairPlan, plan_pairs
from ..multilabel import MULTILABEL_RULES, plan_pairs_multilabel
from .batch import MidasBatch
from .diagnose import (
    describe,
    first_mismatch,
    is_number_list,
    missing_key_hint,
    shared_memory_exhausted,
    shared_memory_message,
)
from .labels import as_multi_hot, check_label_kinds, is_label_set, majority_kind
from .packing import pack_tensors, stackable

__all__ = ["MidasCollate", "ModalityKeys", "as_label", "plan_seed", "MODES"]

MODES = ("feature", "input")
_U64 = 2**64 - 1
Key = str | int
ModalityKeys = Sequence[str] | Mapping[str, Key]
CollateFn = Callable[[list[Any]], Any]


def plan_seed(seed: int, epoch: int, ids: Sequence[int]) -> int:
    """A 63-bit generator seed from the loader seed, the epoch and the batch's sample ids.

    A keyed hash of the ordered ids (BLAKE2b), the same in every process and on every
    platform, and cheap: a few microseconds for a batch of 64.
    """
    digest = hashlib.blake2b(struct.pack("<QQ", seed & _U64, epoch & _U64), digest_size=8)
    digest.update(np.asarray(ids, dtype="<i8").tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def as_label(value: Any, sample_id: int, key: Key) -> int:
    """``value`` as an integer class id, or a :class:`MidasDataError` naming the sample and
    key (a string, float, bool or vector is never silently converted). Shared with the
    stream stage's per-sample reader."""
    if type(value) is int:  # the common case, checked first: this runs once per sample
        return value
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise MidasDataError(f"sample {sample_id}: label {key!r} is a bool; expected an integer class id")
    if isinstance(value, numbers.Integral):
        return int(value)
    integer_tensor = (
        isinstance(value, torch.Tensor) and not value.dtype.is_floating_point and not value.dtype.is_complex
    )
    if integer_tensor and value.numel() == 1 and value.dtype != torch.bool:
        return int(value.item())
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.integer):
        return int(value.item())
    hint = ""
    if isinstance(value, str):
        hint = "; map class names to ids in the dataset, e.g. {name: i for i, name in enumerate(sorted(names))}"
    elif (isinstance(value, torch.Tensor) and value.numel() > 1) or (isinstance(value, np.ndarray) and value.size > 1):
        hint = (
            "; a one-hot or multi-label vector is not a class id (for one-hot, take its argmax in the dataset; "
            "a multi-label dataset gives every sample a vector or a list of class ids)"
        )
    raise MidasDataError(
        f"sample {sample_id}: label {key!r} is {value!r} ({type(value).__name__}); expected an integer class id{hint}"
    )


def check_label_range(ids: Sequence[int], labels: Sequence[int], num_classes: int | None) -> None:
    """Raise, naming the samples, unless every label lies in ``[0, num_classes)`` (``>= 0``
    when the number of classes is not known)."""
    low, high = min(labels), max(labels)
    if low >= 0 and (num_classes is None or high < num_classes):
        return
    upper = math.inf if num_classes is None else num_classes
    bad = [(sid, y) for sid, y in zip(ids, labels) if not 0 <= y < upper]
    named = ", ".join(f"sample {sid} has label {y}" for sid, y in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    expected = "class ids >= 0"
    if num_classes is not None:
        expected = f"class ids in [0, {num_classes}) (num_classes={num_classes})"
    raise MidasDataError(f"labels: {named}{more}; expected {expected}")


class MidasCollate:
    """Collate ``(sample_id, item)`` pairs from :class:`~midas_data.data.dataset.MidasDataset`.

    Args:
        modalities: the modality keys of an item, in plan-column order. For dict items a
            sequence of keys (``("audio", "video")``); for tuple items a mapping of names
            to positions (``{"audio": 0, "video": 1}``).
        label_key: the label's key (dict items) or position (tuple items).
        mode: ``"feature"`` — the batch carries the pair plan only and the objective swaps
            features; ``"input"`` — the batch also gives the misaligned inputs, for models
            that fuse modalities before or inside their encoders.
        materialize_in_worker: input level only. ``False`` (default): the misaligned
            inputs are built on first access of ``batch.misaligned_inputs``, after the batch
            reached its device, so that the worker ships each sample once. ``True``: they
            are built here in the worker and shipped with the batch (three times the bytes
            for two modalities; measured in ``benchmarks/loader_overhead.py``).
        seed: base seed of the plans.
        rule: partner rule, ``"different_label"`` (paper) or ``"any"`` (reference code). For
            multi-label items (a label that is a vector or a list of class ids, converted to a
            multi-hot row ``[C]``) ``"different_label"`` reads as ``"different_set"`` (the
            partner's label set differs); ``"disjoint"`` asks for no shared class.
        modality_collate: per-modality collate functions, e.g. a tokenizer's padding
            collator for text; the default is ``torch.utils.data.default_collate``.
        epoch: a shared ``int64`` tensor holding the current epoch, written by the sampler
            in the main process and read here in the workers.
        num_classes: ``C``, when known: a label outside ``[0, C)`` is reported with its
            sample id as the batch is built, instead of at the loss. Negative labels are
            refused in any case.

    Keys of dict items (positions of tuple items) that are neither a modality nor the
    label pass through to ``batch.extras``, each collated by ``default_collate`` or, where
    that fails (strings of different shapes, ``None``...), kept as a list with one entry
    per sample. Every item must have the same keys.
    """

    def __init__(
        self,
        modalities: ModalityKeys,
        label_key: Key = "label",
        *,
        mode: str = "feature",
        seed: int = 0,
        rule: str = "different_label",
        modality_collate: Mapping[str, CollateFn] | None = None,
        epoch: torch.Tensor | None = None,
        materialize_in_worker: bool = False,
        num_classes: int | None = None,
    ) -> None:
        if isinstance(modalities, Mapping):
            self.keys: dict[str, Key] = dict(modalities)
        else:
            self.keys = {str(k): k for k in modalities}
        if len(self.keys) < 2:
            raise ValueError(f"modalities: MIDAS needs at least two modality keys, got {list(self.keys)}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if rule not in PARTNER_RULES + MULTILABEL_RULES:
            raise ValueError(f"rule: expected one of {PARTNER_RULES + MULTILABEL_RULES}, got {rule!r}")
        unknown = set(modality_collate or {}) - set(self.keys)
        if unknown:
            raise ValueError(f"modality_collate: names {sorted(unknown)} are not modalities {list(self.keys)}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise TypeError(f"num_classes: expected an int or None, got {num_classes!r}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes: expected at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.modalities = tuple(self.keys)
        self.label_key = label_key
        self.mode = mode
        self.seed = int(seed)
        self.rule = rule
        self.modality_collate = dict(modality_collate or {})
        self.materialize_in_worker = materialize_in_worker
        # Without a shared epoch the batches do not know their epoch (-1): the objective
        # then keeps the epoch it was given.
        self._epoch_shared = epoch is not None
        self.epoch = epoch if epoch is not None else torch.zeros((), dtype=torch.int64)
        self._multilabel: bool | None = None  # the label kind of the first batch built here

    def __call__(self, samples: list[tuple[int, Any]]) -> MidasBatch:
        if not samples:
            raise MidasDataError("batch: is empty")
        if not (isinstance(samples[0], tuple) and len(samples[0]) == 2 and isinstance(samples[0][0], int)):
            raise MidasDataError(
                "batch: expected (sample_id, item) pairs from MidasDataset; wrap the dataset with "
                "MidasDataset or use midas_loader"
            )
        ids = [sid for sid, _ in samples]
        raw = [self._field(sid, item, self.label_key, "label") for sid, item in samples]
        kinds = [is_label_set(v) for v in raw]
        if not (majority_kind(kinds) if self._multilabel is None else self._multilabel):
            for sid, value, kind in zip(ids, raw, kinds):
                if kind:  # a vector among class ids: as_label says why it is not one
                    as_label(value, sid, self.label_key)
        self._multilabel = check_label_kinds(ids, kinds, self._multilabel)
        rule = self._batch_rule()
        epoch = int(self.epoch)
        generator = torch.Generator().manual_seed(plan_seed(self.seed, epoch, ids))
        if self._multilabel:
            labels = self._multi_hot(ids, raw)
            plan = PairPlan(*plan_pairs_multilabel(labels, len(self.modalities), generator, rule))
        else:
            label_list = [as_label(v, sid, self.label_key) for sid, v in zip(ids, raw)]
            check_label_range(ids, label_list, self.num_classes)
            labels = torch.tensor(label_list, dtype=torch.int64)
            plan = plan_pairs(labels, len(self.modalities), generator, rule)
        # In a worker, the tensor modalities that default_collate would stack go into one
        # buffer with labels, ids and plan, so that the batch crosses to the main process as
        # one shared-memory segment. In the main process there is nothing to send and each
        # modality is collated on its own, as default_collate would.
        values = {
            name: [self._field(sid, item, key, "modality") for sid, item in samples] for name, key in self.keys.items()
        }
        for name, v in values.items():
            self._check_modality(name, samples, v)
        in_worker = get_worker_info() is not None
        separate = {
            name for name, v in values.items() if not in_worker or name in self.modality_collate or not stackable(v)
        }
        entries: dict[Any, Any] = {("input", name): v for name, v in values.items() if name not in separate}
        small = {"labels": labels, "ids": torch.tensor(ids, dtype=torch.int64), "plan": plan.sources}
        packed: dict[Any, torch.Tensor] = small
        if in_worker:
            try:
                packed = pack_tensors({**entries, **small})
            except (RuntimeError, TypeError, ValueError) as err:
                if shared_memory_exhausted(err):
                    raise MidasDataError(shared_memory_message(ids, err)) from err
                # Values that would not stack (shapes differ, a later item is not a tensor)
                # or that packing cannot hold: each modality goes to its own collate, which
                # either handles it or raises the error that names the sample.
                separate = set(values)
                packed = pack_tensors(small)
        inputs = {
            name: self._collate_modality(name, samples, v) if name in separate else packed["input", name]
            for name, v in values.items()
        }
        batch = MidasBatch(
            inputs=inputs,
            labels=packed["labels"],
            ids=packed["ids"],
            plan=packed["plan"],
            modalities=self.modalities,
            input_level=self.mode == "input",
            num_unpaired=plan.num_unpaired,
            extras=self._extras(samples),
            epoch=epoch if self._epoch_shared else -1,
            rule=rule,
        )
        if batch.input_level and self.materialize_in_worker:
            batch._misaligned = batch.materialize()
        return batch

    # -- per-item checks -----------------------------------------------------------------
    def _field(self, sample_id: int, item: Any, key: Key, what: str) -> Any:
        try:
            return item[key]
        except (KeyError, IndexError, TypeError):
            hint = missing_key_hint(item, key, what)
            raise MidasDataError(f"sample {sample_id}: has no {what} {key!r}; {hint}") from None

    def _check_modality(self, name: str, samples: list[tuple[int, Any]], values: list[Any]) -> None:
        """Checks that default_collate would not make: one dtype per modality (it would
        silently promote a batch with one float64 sample, and packing would cast it), and no
        Python lists of numbers (it would transpose them into one tensor per position)."""
        first = values[0]
        if isinstance(first, (torch.Tensor, np.ndarray)):
            dtype = first.dtype
            for value in values:
                if getattr(value, "dtype", None) != dtype:
                    raise MidasDataError(self._mismatch_message(name, samples, values))
        elif name not in self.modality_collate and is_number_list(first):
            raise MidasDataError(
                f"sample {samples[0][0]}: modality {name!r} is {describe(first)}, not a tensor or array; "
                "default_collate would turn it into one tensor per position. Return tensors from the dataset "
                "(a Hugging Face datasets.Dataset: dataset.with_format('torch')) or pass "
                f"modality_collate={{{name!r}: fn}}"
            )

    def _extras(self, samples: list[tuple[int, Any]]) -> dict[Any, Any]:
        """The items' other keys (positions), collated; see the class docstring."""
        first = samples[0][1]
        used = set(self.keys.values()) | {self.label_key}
        if isinstance(first, Mapping):
            keys = [k for k in first if k not in used]
        elif isinstance(first, (tuple, list)):
            keys = [k for k in range(len(first)) if k not in used]
        else:
            return {}
        size = len(first)
        for sid, item in samples:
            if len(item) != size:
                have = sorted(map(str, item)) if isinstance(item, Mapping) else f"length {len(item)}"
                want = sorted(map(str, first)) if isinstance(first, Mapping) else f"length {size}"
                raise MidasDataError(
                    f"sample {sid}: has {have} but sample {samples[0][0]} has {want}; every item needs the same "
                    "keys (those that are neither a modality nor the label pass through to batch.extras)"
                )
        extras = {}
        for key in keys:
            column = [self._field(sid, item, key, "key") for sid, item in samples]
            try:
                extras[key] = default_collate(column)
            except (RuntimeError, TypeError, ValueError) as err:
                if shared_memory_exhausted(err):
                    raise MidasDataError(shared_memory_message([sid for sid, _ in samples], err)) from err
                extras[key] = column
        return extras

    def _batch_rule(self) -> str:
        """The pairing rule for this batch's kind of label."""
        if not self._multilabel:
            if self.rule not in PARTNER_RULES:
                raise MidasDataError(
                    f"rule={self.rule!r} is a multi-label rule, but the items have single class ids; use one of "
                    f"{PARTNER_RULES}"
                )
            return self.rule
        return "different_set" if self.rule == "different_label" else self.rule

    def _multi_hot(self, ids: list[int], raw: list[Any]) -> torch.Tensor:
        rows = [as_multi_hot(v, sid, self.label_key, self.num_classes) for sid, v in zip(ids, raw)]
        for sid, row in zip(ids, rows):
            if row.shape != rows[0].shape:
                raise MidasDataError(
                    f"sample {sid}: label has {row.numel()} classes but sample {ids[0]} has {rows[0].numel()}; "
                    "every multi-hot label needs one entry per class"
                )
        return torch.stack(rows)

    def _collate_modality(self, name: str, samples: list[tuple[int, Any]], values: list[Any]) -> Any:
        collate = self.modality_collate.get(name, default_collate)
        try:
            return collate(values)
        except (RuntimeError, TypeError, ValueError) as err:
            if shared_memory_exhausted(err):
                raise MidasDataError(shared_memory_message([sid for sid, _ in samples], err)) from err
            if name in self.modality_collate:
                raise MidasDataError(
                    f"modality {name!r}: modality_collate[{name!r}] failed on samples "
                    f"{[sid for sid, _ in samples][:8]}: {err}"
                ) from err
            raise MidasDataError(self._mismatch_message(name, samples, values, err)) from err

    @staticmethod
    def _mismatch_message(
        name: str, samples: list[tuple[int, Any]], values: list[Any], err: Exception | None = None
    ) -> str:
        ids = [sid for sid, _ in samples]
        at = first_mismatch(values)
        if at is None:
            return (
                f"modality {name!r}: could not collate samples {ids[:8]}: {err}. Pass "
                f"modality_collate={{{name!r}: fn}} to collate it your way"
            )
        first, other, sid, ref = values[0], values[at], ids[at], ids[0]
        pads = (
            f"resize or pad in the dataset's transform, or pass modality_collate={{{name!r}: fn}} that pads "
            "(e.g. torch.nn.utils.rnn.pad_sequence)"
        )
        if type(other) is type(first) and isinstance(first, (torch.Tensor, np.ndarray)):
            if first.dtype != other.dtype:
                return (
                    f"sample {sid}: modality {name!r} has dtype {other.dtype} but sample {ref} has {first.dtype}; "
                    "convert it in the dataset: every sample of a modality needs the same dtype"
                )
            return f"sample {sid}: modality {name!r} has shape {tuple(other.shape)} but sample {ref} has " + (
                f"{tuple(first.shape)}; {pads}"
            )
        if type(other) is type(first) and isinstance(first, (list, tuple)):
            return (
                f"sample {sid}: modality {name!r} is {describe(other)} but sample {ref} has length {len(first)}; {pads}"
            )
        return (
            f"sample {sid}: modality {name!r} is {describe(other)} but sample {ref} gives {describe(first)}; "
            "every sample must give the same kind of value"
        )
