"""``MidasBatch``: what one MIDAS training step consumes.

A batch carries the aligned inputs once and a pair plan that says how the misaligned
rows recombine them. In feature-level mode that is all (the objective swaps features).
In input-level mode the misaligned inputs are materialised by indexing the inputs
already in memory, never by reading samples again: by default on first access, wherever
the batch is then (after ``.to(device)`` that is a gather on the device, so the host
sends each sample once instead of three times); optionally inside the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..functional import plan_anchors
from .buffers import host_buffers

__all__ = ["MidasBatch", "take_rows", "move_to"]


def take_rows(value: Any, rows: torch.Tensor, key: str = "input") -> Any:
    """Rows ``rows`` of a collated modality value, on the value's own device.

    Handles tensors, numpy arrays, mappings of those (tokenizer output), lists and tuples
    with one entry per sample; anything else raises a ``TypeError`` naming ``key``.
    """
    if isinstance(value, torch.Tensor):
        rows = rows.to(value.device)
        if value.device.type == "cpu" and get_worker_info() is None:
            out = host_buffers.empty((rows.numel(), *value.shape[1:]), value.dtype)
            return torch.index_select(value, 0, rows, out=out)
        return value.index_select(0, rows)
    if isinstance(value, np.ndarray):
        return value[rows.cpu().numpy()]
    if isinstance(value, Mapping):
        return type(value)({k: take_rows(v, rows, f"{key}.{k}") for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, (list, tuple)):
        picked = [value[i] for i in rows.tolist()]
        return picked if isinstance(value, list) else tuple(picked)
    raise TypeError(
        f"{key}: cannot select rows of a {type(value).__name__}; collate this modality to a tensor, "
        "an array, a mapping of tensors or a list with one entry per sample"
    )


def move_to(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``value`` with every tensor inside moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return type(value)({k: move_to(v, device, non_blocking) for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return type(value)(v.to(device, non_blocking=non_blocking) for v in value)
    return value


def _pin(value: Any) -> Any:
    """``value`` with every tensor inside in pinned memory: the same structures as
    :func:`move_to` walks, so that everything a ``non_blocking`` copy moves is pinned."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, Mapping):
        return type(value)({k: _pin(v) for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return type(value)(v.pin_memory() for v in value)
    return value


# Trainers that treat a batch as a dict of columns ('labels' in batch, model(**batch)) meet this.
_NOT_A_MAPPING = (
    "MidasBatch is not a mapping of columns: read batch.inputs, batch.labels, batch.ids, batch.plan. A trainer that "
    "inspects batches as dicts needs its MIDAS adapter: midas_data.integrations.transformers.MidasTrainer for the "
    "Hugging Face Trainer, MidasCallback for Lightning (docs/integrations.md)"
)


@dataclass
class MidasBatch:
    """One MIDAS batch.

    Attributes:
        inputs: modality name -> collated aligned input (``B`` rows).
        labels: ``LongTensor [B]`` class ids, or float32 ``[B, C]`` multi-hot rows for
            multi-label items.
        ids: ``LongTensor [B]`` global sample ids (dataset indices), int64 always.
        plan: ``LongTensor [K, M]``, for each misaligned row the batch row of each
            modality, columns in the order of ``modalities``.
        modalities: modality names, the order of the plan's columns.
        input_level: the batch is for input-level misalignment: ``misaligned_inputs``
            gives the ``K`` recombined rows per modality (feature level: ``None``).
        num_unpaired: misaligned rows asked for but not formed (no other-class partner).
        extras: other collated keys of the items, passed through untouched.
        epoch: the epoch the plan was drawn for (the loader's epoch when the batch was
            built); ``-1`` when unknown. The objective follows it, so warm-up ends on time
            even in a loop that never calls ``set_epoch``.
        rule: the partner rule the plan was drawn with (``"different_label"`` or
            ``"any"``; ``""`` when unknown); the objective checks it against its variant.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor
    ids: torch.Tensor
    plan: torch.Tensor
    modalities: tuple[str, ...]
    input_level: bool = False
    num_unpaired: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1
    rule: str = ""
    # Misaligned inputs built so far (in the worker or on first access).
    _misaligned: dict[str, Any] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __contains__(self, key: object) -> bool:
        raise TypeError(_NOT_A_MAPPING)

    def keys(self) -> Any:
        raise TypeError(_NOT_A_MAPPING)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A batch from a worker arrives with labels, ids and plan as views of the buffer
        # that also holds its inputs (one shared-memory segment per batch). Keeping a
        # batch's labels or ids for later, as metric code does, must not keep megabytes of
        # inputs alive: the small fields get memory of their own (a few microseconds).
        self.__dict__.update(state)
        for name in ("labels", "ids", "plan"):
            value = self.__dict__[name]
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.untyped_storage().is_shared():
                self.__dict__[name] = value.clone()

    @property
    def num_misaligned(self) -> int:
        return int(self.plan.shape[0])

    @property
    def anchors(self) -> torch.Tensor:
        """``[K]``: the aligned row each misaligned row was built for."""
        return plan_anchors(self.plan)

    @property
    def source_labels(self) -> torch.Tensor:
        """``[K, M]``: the class of each component of each misaligned row."""
        return self.labels[self.plan]

    @property
    def misaligned_inputs(self) -> dict[str, Any] | None:
        """Input-level mode: modality name -> the ``K`` misaligned rows (built once, cached)."""
        if not self.input_level:
            return None
        if self._misaligned is None:
            self._misaligned = self.materialize()
        return self._misaligned

    def materialize(self) -> dict[str, Any]:
        """Build the misaligned inputs from ``inputs`` by the plan, on the inputs' device."""
        if self._misaligned is not None:
            return self._misaligned
        return {m: take_rows(self.inputs[m], self.plan[:, i], m) for i, m in enumerate(self.modalities)}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MidasBatch:
        return self._map(lambda value: move_to(value, device, non_blocking))

    def pin_memory(self) -> MidasBatch:
        """Called by ``DataLoader(pin_memory=True)`` in its pinning thread."""
        return self._map(_pin)

    def _map(self, fn: Callable[[Any], Any]) -> MidasBatch:
        """A copy with ``fn`` applied to every field that holds tensors."""
        return replace(
            self,
            inputs=fn(self.inputs),
            labels=fn(self.labels),
            ids=fn(self.ids),
            plan=fn(self.plan),
            extras=fn(self.extras),
            _misaligned=None if self._misaligned is None else fn(self._misaligned),
        )
