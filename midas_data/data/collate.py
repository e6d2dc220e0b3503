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
import numbers
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from ..errors import MidasDataError
from ..functional import PARTNER_RULES, plan_pairs
from .batch import MidasBatch
from .packing import pack_tensors, stackable

__all__ = ["MidasCollate", "ModalityKeys", "plan_seed", "MODES"]

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


def _as_label(value: Any, sample_id: int, key: Key) -> int:
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
    raise MidasDataError(
        f"sample {sample_id}: label {key!r} is {value!r} ({type(value).__name__}); expected an integer class id"
    )


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
        rule: partner rule, ``"different_label"`` (paper) or ``"any"`` (reference code).
        modality_collate: per-modality collate functions, e.g. a tokenizer's padding
            collator for text; the default is ``torch.utils.data.default_collate``.
        epoch: a shared ``int64`` tensor holding the current epoch, written by the sampler
            in the main process and read here in the workers.
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
    ) -> None:
        if isinstance(modalities, Mapping):
            self.keys: dict[str, Key] = dict(modalities)
        else:
            self.keys = {str(k): k for k in modalities}
        if len(self.keys) < 2:
            raise ValueError(f"modalities: MIDAS needs at least two modality keys, got {list(self.keys)}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if rule not in PARTNER_RULES:
            raise ValueError(f"rule: expected one of {PARTNER_RULES}, got {rule!r}")
        unknown = set(modality_collate or {}) - set(self.keys)
        if unknown:
            raise ValueError(f"modality_collate: names {sorted(unknown)} are not modalities {list(self.keys)}")
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

    def __call__(self, samples: list[tuple[int, Any]]) -> MidasBatch:
        if not samples:
            raise MidasDataError("batch: is empty")
        if not (isinstance(samples[0], tuple) and len(samples[0]) == 2 and isinstance(samples[0][0], int)):
            raise MidasDataError(
                "batch: expected (sample_id, item) pairs from MidasDataset; wrap the dataset with "
                "MidasDataset or use midas_loader"
            )
        ids = [sid for sid, _ in samples]
        labels = torch.tensor([self._label(sid, item) for sid, item in samples], dtype=torch.int64)
        epoch = int(self.epoch)
        generator = torch.Generator().manual_seed(plan_seed(self.seed, epoch, ids))
        plan = plan_pairs(labels, len(self.modalities), generator, self.rule)
        # In a worker, the tensor modalities that default_collate would stack go into one
        # buffer with labels, ids and plan, so that the batch crosses to the main process as
        # one shared-memory segment. In the main process there is nothing to send and each
        # modality is collated on its own, as default_collate would.
        values = {
            name: [self._field(sid, item, key, "modality") for sid, item in samples] for name, key in self.keys.items()
        }
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
            except (RuntimeError, TypeError, ValueError):
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
            epoch=epoch if self._epoch_shared else -1,
        )
        if batch.input_level and self.materialize_in_worker:
            batch._misaligned = batch.materialize()
        return batch

    # -- per-item checks -----------------------------------------------------------------
    def _field(self, sample_id: int, item: Any, key: Key, what: str) -> Any:
        try:
            return item[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(item, Mapping):
                have = f"keys {sorted(map(str, item))}"
            elif isinstance(item, Sequence):
                have = f"a {type(item).__name__} of length {len(item)}"
            else:
                have = f"a {type(item).__name__}"
            raise MidasDataError(f"sample {sample_id}: has no {what} {key!r}; the item is {have}") from None

    def _label(self, sample_id: int, item: Any) -> int:
        return _as_label(self._field(sample_id, item, self.label_key, "label"), sample_id, self.label_key)

    def _collate_modality(self, name: str, samples: list[tuple[int, Any]], values: list[Any]) -> Any:
        collate = self.modality_collate.get(name, default_collate)
        try:
            return collate(values)
        except (RuntimeError, TypeError, ValueError) as err:
            raise MidasDataError(self._collate_failure(name, samples, values, err)) from err

    @staticmethod
    def _collate_failure(name: str, samples: list[tuple[int, Any]], values: list[Any], err: Exception) -> str:
        shapes = [tuple(getattr(v, "shape", ())) for v in values]
        for (sid, _), shape in zip(samples, shapes):
            if shape != shapes[0]:
                return (
                    f"sample {sid}: modality {name!r} has shape {shape} but sample {samples[0][0]} has "
                    f"{shapes[0]}; resize in the dataset's transform or pass modality_collate={{{name!r}: ...}} "
                    "that pads"
                )
        return f"modality {name!r}: could not collate samples {[sid for sid, _ in samples][:8]}: {err}"
