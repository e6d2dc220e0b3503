"""``StatsTable``: per-sample training statistics in shared memory, for the sampler.

The training step writes what MIDAS learns about each sample (the ``per_sample``
diagnostics of :class:`~midas_data.objective.MidasObjective`); the sampler reads it when
it plans an epoch, and DataLoader workers may read it too. One row per dataset index:

=====================  ==================  =====================================================
column                 dtype               meaning
=====================  ==================  =====================================================
``confidence[m]``      ``dtype``           last unimodal confidence of modality ``m`` on the
                                           sample's own label, ``c^m``
``similarity``         ``dtype``           last hard-sample similarity ``s`` of its misaligned
                                           copies (mean cosine over replaced modalities)
``misaligned_loss``    ``dtype``           last misaligned loss of its copies
``loss``               ``dtype``           last aligned fusion loss (cross-entropy of the
                                           fusion head on the own label, unweighted)
``last_step``          ``int32``           step of the last update that named it; ``-1`` = never
=====================  ==================  =====================================================

A value never written is ``NaN`` (updates refuse ``NaN``, so it is unambiguous).

Memory: ``bytes_per_sample = (M + 3) * itemsize(dtype) + 4``, so 14 B for two modalities
in ``float16`` (the default) and 24 B in ``float32``; plus a few bytes per table.

Sharing: every column lives in one buffer created in ``__init__``, before any worker
starts: in shared memory (``share_memory_()``, i.e. ``/dev/shm``) or, when shared
memory is unusable, in a file mapped with ``MAP_SHARED`` (a warning says so). A table
passed to DataLoader workers (fork or spawn, persistent or not) maps the same memory, so
workers see every update the main process makes; plain Python attributes are never
used to carry state to them. Under a process group the local ranks of a node share one
table (``sharing=``; ``node_local.py`` says how), so memory per node does not grow with
the number of local ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import readout
from .columns import as_id_tensor, pack_statistics
from .node_local import SHARINGS, NodeBuffer, fingerprint, node_buffer
from .storage import STORAGES, SharedBuffer, StatsStorageWarning
from .validation import (
    MAX_STEP,
    STATE_FORMAT,
    STATS_DTYPES,
    check_capacity,
    check_ids,
    check_packed,
    check_state,
    check_statistics,
    check_step,
)

__all__ = [
    "StatsTable",
    "StatsStorageWarning",
    "bytes_per_sample",
    "STATS_DTYPES",
]

_ALIGN = 8


def bytes_per_sample(num_modalities: int, dtype: torch.dtype = torch.float16) -> int:
    """Bytes one sample takes in a :class:`StatsTable`: ``(M + 3) * itemsize + 4``."""
    return (num_modalities + 3) * _itemsize(dtype) + 4


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True)
class _Layout:
    """Byte offsets of the columns inside the one shared buffer."""

    num_samples: int
    num_columns: int
    dtype: torch.dtype

    @property
    def values_bytes(self) -> int:
        return self.num_columns * self.num_samples * _itemsize(self.dtype)

    @property
    def step_offset(self) -> int:
        return _aligned(self.values_bytes)

    @property
    def counter_offset(self) -> int:
        return _aligned(self.step_offset + 4 * self.num_samples)

    @property
    def total_bytes(self) -> int:
        return self.counter_offset + 8


@dataclass
class _Pending:
    """An update whose values are still being copied from the device (see ``flush``)."""

    ids: torch.Tensor
    values: torch.Tensor
    columns: tuple[bool, ...]
    valid: torch.Tensor | None
    step: int | None
    event: Any


class StatsTable(readout.TableReadout):
    """Preallocated per-sample statistics, shared with DataLoader workers.

    Args:
        num_samples: dataset size; valid ids are ``0 .. num_samples - 1`` (int64, any size).
        modalities: modality names in the objective's order, or their number.
        dtype: storage dtype of the statistics: ``torch.float16`` (default, 14 B/sample for
            two modalities), ``torch.bfloat16`` or ``torch.float32`` (24 B/sample).
        storage: ``"auto"`` (shared memory, else a file-backed mapping with a
            :class:`StatsStorageWarning`), ``"shm"`` (shared memory or a clear error) or
            ``"file"`` (a file-backed mapping in ``directory``).
        directory: where a file-backed table puts its file; the system temp directory by
            default. The file is deleted when the table that created it is collected.
        batch_capacity: the most rows one rank passes to
            :func:`~midas_data.feedback.sync.sync_stats` in one step (for the MIDAS sampler,
            ``batch_size + 2``; ``midas_loader(..., stats=table)`` sets that when it is
            ``None``). With it, ``sync_stats`` pads every rank's rows to this many and needs
            no size exchange, a host synchronisation under NCCL; ``None`` (default) exchanges
            sizes. Host-side configuration, also settable as an attribute: it is neither in
            shared memory nor in :meth:`state_dict`.
        sharing: ``"auto"`` (default: one table per node where every rank knows its node,
            i.e. ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` are set and a node has several local
            ranks; per-rank tables otherwise), ``"node"`` (one table per node or a clear
            error) or ``"rank"`` (a table per process, as without a process group). Under an
            initialised process group of several ranks, ``"auto"`` and ``"node"`` make the
            constructor collective over ``group``: every rank constructs the table, in the
            same order. Without one the table is per process whatever ``sharing`` says.
        group: the process group of the ranks that share (default: the default group).

    Updates (:meth:`update`) validate everything before writing anything: a rejected update
    leaves the table unchanged. Reads in another process are not atomic snapshots of a
    concurrent update; the sampler reads in the main process, in step with the updates.
    """

    def __init__(
        self,
        num_samples: int,
        modalities: Sequence[str] | int,
        *,
        dtype: torch.dtype = torch.float16,
        storage: str = "auto",
        directory: str | os.PathLike[str] | None = None,
        batch_capacity: int | None = None,
        sharing: str = "auto",
        group: Any = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
        if isinstance(modalities, int):
            names = tuple(f"modality{m}" for m in range(modalities))
        else:
            names = tuple(str(m) for m in modalities)
        if len(names) < 1 or len(set(names)) != len(names):
            raise ValueError(f"modalities: expected distinct names (or a positive count), got {modalities!r}")
        if dtype not in STATS_DTYPES:
            raise ValueError(f"dtype: expected one of {STATS_DTYPES}, got {dtype}")
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
        if sharing not in SHARINGS:
            raise ValueError(f"sharing: expected one of {SHARINGS}, got {sharing!r}")
        self._modalities = names
        self._layout = _Layout(int(num_samples), len(names) + 3, dtype)
        self._pending: _Pending | None = None
        self.batch_capacity = batch_capacity
        self._operations = 0  # operations this process made (node-shared tables count them)
        node = node_buffer(self._layout.total_bytes, sharing, storage, directory, group)
        self._shared: SharedBuffer | NodeBuffer = (
            node if node is not None else SharedBuffer(self._layout.total_bytes, storage, directory, owner="StatsTable")
        )
        self._bind_views()
        self.reset()

    def _bind_views(self) -> None:
        lay, buf = self._layout, self._shared.tensor
        self._values = buf[: lay.values_bytes].view(lay.dtype).view(lay.num_columns, lay.num_samples)
        self._last_step = buf[lay.step_offset : lay.step_offset + 4 * lay.num_samples].view(torch.int32)
        self._counter = buf[lay.counter_offset : lay.counter_offset + 8].view(torch.int64)

    def __getstate__(self) -> dict[str, Any]:
        self.flush()
        return {
            "modalities": self._modalities,
            "layout": self._layout,
            "shared": self._shared,
            "batch_capacity": self._batch_capacity,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._modalities = state["modalities"]
        self._layout = state["layout"]
        self._shared = state["shared"]
        self._batch_capacity = state.get("batch_capacity")
        self._pending = None
        self._operations = 0  # a copy in a worker reads; it never writes
        self._bind_views()

    def _commit(self, write: Any, *inputs: torch.Tensor | None, kind: int = 0) -> None:
        """Run ``write()``; on a node-shared table, once per node (``node_local.py``)."""
        if not isinstance(self._shared, NodeBuffer):
            write()
            return
        self._operations += 1
        self._shared.commit(self._operations, fingerprint(*inputs, kind=kind), write)

    # -- description -----------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self._layout.num_samples

    def __len__(self) -> int:
        return self._layout.num_samples

    @property
    def modalities(self) -> tuple[str, ...]:
        return self._modalities

    @property
    def num_modalities(self) -> int:
        return len(self._modalities)

    @property
    def dtype(self) -> torch.dtype:
        return self._layout.dtype

    @property
    def storage(self) -> str:
        """``"shm"`` (shared memory) or ``"file"`` (file-backed mapping)."""
        return self._shared.storage

    @property
    def sharing(self) -> str:
        """``"node"`` (the local ranks of a node map this table) or ``"rank"``."""
        return "node" if isinstance(self._shared, NodeBuffer) else "rank"

    @property
    def path(self) -> str | None:
        """The backing file of a file-backed table, else ``None``."""
        return self._shared.path

    @property
    def batch_capacity(self) -> int | None:
        """The most rows one rank sends to ``sync_stats`` per step, or ``None`` (sizes are
        exchanged instead, one host synchronisation per step under NCCL)."""
        return self._batch_capacity

    @batch_capacity.setter
    def batch_capacity(self, value: int | None) -> None:
        self._batch_capacity = check_capacity(value, "batch_capacity")

    @property
    def bytes_per_sample(self) -> int:
        return bytes_per_sample(self.num_modalities, self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole table (all columns plus the counter)."""
        return self._layout.total_bytes

    def __repr__(self) -> str:
        return (
            f"StatsTable(num_samples={self.num_samples}, modalities={self.modalities}, dtype={self.dtype}, "
            f"storage={self.storage!r}, updates={self.num_updates})"
        )

    # -- columns (shared tensors; read them, write through update) ---------------------------
    @property
    def values(self) -> torch.Tensor:
        """All statistics columns, ``[M + 3, N]``: confidences, similarity, misaligned loss,
        aligned loss."""
        return self._values

    @property
    def confidence(self) -> torch.Tensor:
        """``[M, N]`` last unimodal confidences, ``NaN`` where never written."""
        return self._values[: self.num_modalities]

    @property
    def similarity(self) -> torch.Tensor:
        """``[N]`` last hard-sample similarities, ``NaN`` where never written."""
        return self._values[self.num_modalities]

    @property
    def misaligned_loss(self) -> torch.Tensor:
        """``[N]`` last misaligned losses, ``NaN`` where never written."""
        return self._values[self.num_modalities + 1]

    @property
    def loss(self) -> torch.Tensor:
        """``[N]`` last aligned fusion losses (unweighted), ``NaN`` where never written."""
        return self._values[self.num_modalities + 2]

    @property
    def last_step(self) -> torch.Tensor:
        """``[N]`` int32 step of the last update naming each sample, ``-1`` if never."""
        return self._last_step

    @property
    def num_updates(self) -> int:
        """How many updates were applied (pending device copies not included)."""
        return int(self._counter[0])

    def modality_index(self, modality: str | int) -> int:
        """The column of ``modality`` (a name or an index)."""
        if isinstance(modality, int) and not isinstance(modality, bool):
            if not 0 <= modality < self.num_modalities:
                raise ValueError(f"modality: index {modality} out of range [0, {self.num_modalities})")
            return modality
        if modality not in self._modalities:
            raise ValueError(f"modality: {modality!r} is not one of {list(self._modalities)}")
        return self._modalities.index(modality)

    def read(self, ids: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """The statistics of ``ids`` as float32 copies (``NaN`` = never written):
        ``confidence [B, M]``, ``similarity [B]``, ``misaligned_loss [B]``, ``loss [B]``,
        ``last_step [B]``."""
        self.flush()
        index = check_ids(torch.as_tensor(ids).cpu(), self.num_samples, None, "")
        picked = self._values.index_select(1, index).float()
        m = self.num_modalities
        return {
            "confidence": picked[:m].t().contiguous(),
            "similarity": picked[m],
            "misaligned_loss": picked[m + 1],
            "loss": picked[m + 2],
            "last_step": self._last_step.index_select(0, index).long(),
        }

    def reset(self) -> None:
        """Forget everything: all statistics ``NaN``, all steps ``-1``, no updates."""
        self._pending = None

        def write() -> None:
            self._values.fill_(math.nan)
            self._last_step.fill_(-1)
            self._counter.zero_()

        self._commit(write, kind=1)

    # -- updates ---------------------------------------------------------------------------
    def update(
        self,
        ids: torch.Tensor,
        per_sample: Mapping[str, torch.Tensor] | None = None,
        *,
        confidence: torch.Tensor | None = None,
        similarity: torch.Tensor | None = None,
        misaligned_loss: torch.Tensor | None = None,
        loss: torch.Tensor | None = None,
        has_misaligned: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        step: int | None = None,
    ) -> None:
        """Write the statistics of a batch.

        Args:
            ids: ``[B]`` integer sample ids (``batch.ids``; int64, never float: floats lose
                ids above ``2**24``).
            per_sample: ``diagnostics["per_sample"]`` of :class:`MidasObjective`: keys
                ``confidence [B, M]``, ``similarity [B]``, ``misaligned_loss [B]``,
                ``loss [B]`` (aligned fusion loss), ``has_misaligned [B]``. Or pass the
                tensors by keyword instead; a column not given is left as it is.
            has_misaligned: ``[B]`` bool: rows whose similarity and loss mean something
                (an anchor without misaligned copies has none); default all.
            valid: ``[B]`` bool: rows to apply at all; others (padding) are ignored.
            step: the step to record as ``last_step``; default the number of updates so far.

        Semantics: an id named twice in one update takes, per column, the value of its
        *last* row that carries that column (rows without ``has_misaligned`` carry no
        similarity or loss). Ids must lie in ``[0, num_samples)``; every statistic must be
        finite (``NaN`` is rejected, with the id named); confidences must lie in ``[0, 1]``
        and similarities in ``[-1, 1]`` (within ``1e-3``, then clipped); losses above the
        dtype's largest finite value are clipped to it. A rejected update raises
        ``ValueError`` and changes nothing.

        Device tensors: the values are packed into one tensor on the device and copied to
        the host with ``non_blocking=True``; that update is applied (and validated) at the
        next :meth:`update`, :meth:`flush` or read, so the training step never waits for
        the device here. An error in it surfaces there, naming its step.
        """
        statistics: Mapping[str, torch.Tensor | None]
        if per_sample is not None:
            if not isinstance(per_sample, Mapping):
                raise TypeError(f"per_sample: expected a mapping of tensors, got {type(per_sample).__name__}")
            if any(v is not None for v in (confidence, similarity, misaligned_loss, loss, has_misaligned)):
                raise ValueError("pass either per_sample or the statistics by keyword, not both")
            statistics = per_sample
        else:
            statistics = {
                "confidence": confidence,
                "similarity": similarity,
                "misaligned_loss": misaligned_loss,
                "loss": loss,
                "has_misaligned": has_misaligned,
            }
        ids = as_id_tensor(ids)
        values, columns = pack_statistics(statistics, self.num_modalities, ids.shape[0])
        self.update_packed(ids, values, columns, valid=valid, step=step)

    def update_packed(
        self,
        ids: torch.Tensor,
        values: torch.Tensor,
        columns: tuple[bool, ...],
        *,
        valid: torch.Tensor | None = None,
        step: int | None = None,
    ) -> None:
        """:meth:`update` with statistics already packed by :func:`pack_statistics`
        (``values [B, M + 4]``, ``columns`` the flags it returned); ``sync_stats`` applies
        the gathered rows of every rank this way."""
        self.flush()
        ids = as_id_tensor(ids)
        check_step(step)
        check_packed(values, valid, ids.shape[0], self.num_modalities + 4)
        ids, values = ids.detach(), values.detach()
        valid = None if valid is None else valid.detach()
        if not any(t is not None and t.device.type == "cuda" for t in (ids, values, valid)):
            self._apply(ids.cpu(), values.cpu(), columns, None if valid is None else valid.cpu(), step)
            return
        # CUDA: one packed copy into pinned host memory, applied later; no sync now.
        host = [None if t is None else t.to("cpu", non_blocking=True) for t in (ids, values, valid)]
        event = torch.cuda.Event()
        event.record()
        self._pending = _Pending(host[0], host[1], columns, host[2], step, event)  # type: ignore[arg-type]

    def flush(self) -> None:
        """Apply an update still in flight from the device (waits for its copy)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.event is not None:
            pending.event.synchronize()
        try:
            self._apply(pending.ids, pending.values, pending.columns, pending.valid, pending.step)
        except ValueError as err:
            raise ValueError(f"{err} (from a deferred device update; its step: {pending.step})") from None

    def _apply(
        self,
        ids: torch.Tensor,
        values: torch.Tensor,
        columns: tuple[bool, ...],
        valid: torch.Tensor | None,
        step: int | None,
    ) -> None:
        m = self.num_modalities
        has_misaligned = values[:, m + 3] > 0.5 if columns[4] else None
        rows = torch.arange(ids.shape[0])
        if valid is not None:
            ids, values, rows = ids[valid], values[valid], rows[valid]
            has_misaligned = None if has_misaligned is None else has_misaligned[valid]
        ids = check_ids(ids, self.num_samples, rows)
        with_mis = has_misaligned if has_misaligned is not None else torch.ones(ids.shape[0], dtype=torch.bool)
        # Validate every column before writing any: a rejected update changes nothing.
        values = check_statistics(ids, rows, values, columns, with_mis, m, self.dtype)
        order = torch.tensor([-1 if step is None else step, *columns])
        self._commit(lambda: self._write(ids, values, columns, with_mis, step), ids, values, with_mis, order, kind=2)

    def _write(
        self, ids: torch.Tensor, values: torch.Tensor, columns: tuple[bool, ...], with_mis: torch.Tensor, step: Any
    ) -> None:
        m = self.num_modalities
        record = step if step is not None else min(int(self._counter[0]), MAX_STEP)
        if ids.numel():
            if columns[0]:
                keep = _last_occurrence(ids)
                self._values[:m].index_copy_(1, ids[keep], values[keep, :m].t().to(self.dtype))
            if columns[1] or columns[2]:
                sel = with_mis.nonzero().squeeze(1)
                keep = sel[_last_occurrence(ids[sel])]
                for col, given in ((m, columns[1]), (m + 1, columns[2])):
                    if given:
                        self._values[col].index_copy_(0, ids[keep], values[keep, col].to(self.dtype))
            if columns[3]:
                keep = _last_occurrence(ids)
                self._values[m + 2].index_copy_(0, ids[keep], values[keep, m + 2].to(self.dtype))
            self._last_step.index_fill_(0, ids.unique(), record)
        self._counter[0] += 1

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the table: copies of the columns plus a description, made of
        tensors, ints and strings only (``torch.load(..., weights_only=True)`` reads it)."""
        self.flush()
        return {
            "format": STATE_FORMAT,
            "num_samples": self.num_samples,
            "modalities": list(self._modalities),
            "dtype": str(self.dtype).replace("torch.", ""),
            "values": self._values.clone(),
            "last_step": self._last_step.clone(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint from :meth:`state_dict` into this (shared) table in place.

        The checkpoint must come from a table of the same size and modalities; a different
        storage dtype is converted, and so is a format-1 checkpoint (from before the
        ``loss`` column, which then starts as ``NaN``: never written). Any update still in flight is discarded.
        """
        values, last_step, updates = check_state(state, self.num_samples, self._modalities, self._layout.num_columns)
        self._pending = None

        def write() -> None:  # in place: workers map this very memory
            self._values.copy_(values.clamp(-torch.finfo(self.dtype).max, torch.finfo(self.dtype).max))
            self._last_step.copy_(last_step)
            self._counter[0] = updates

        self._commit(write, values, last_step, torch.tensor([updates]), kind=3)


def _last_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """Row positions that keep, for each distinct id, its last row (in update order)."""
    if ids.numel() < 2:
        return torch.arange(ids.numel())
    unique, inverse = torch.unique(ids, return_inverse=True)
    if unique.numel() == ids.numel():
        return torch.arange(ids.numel())
    positions = torch.arange(ids.numel())
    last = torch.full((unique.numel(),), -1, dtype=torch.long)
    return last.scatter_reduce_(0, inverse, positions, reduce="amax")
