"""The checks behind :class:`~midas_data.feedback.stats.StatsTable`, as pure functions.

An update is checked in two places: its shapes and dtypes when it is handed over (host
facts, so this never waits for a device), and its values when the table applies it, on
host tensors (on CUDA that is at the next flush, not in the training step). A checkpoint is
checked whole before anything is written. Every check raises a ``ValueError`` naming what
is wrong (the key or column, the sample id and its row) and touches no table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "STATS_DTYPES",
    "STATE_FORMAT",
    "OLD_STATE_FORMATS",
    "MAX_STEP",
    "RANGE_TOL",
    "check_step",
    "check_capacity",
    "check_packed",
    "check_ids",
    "check_statistics",
    "check_state",
]

STATS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STATE_FORMAT = "midas_data.StatsTable/2"
# Format 1 had no ``loss`` column (M + 2 value rows); it is converted on load (loss: NaN).
OLD_STATE_FORMATS = ("midas_data.StatsTable/1",)
MAX_STEP = 2**31 - 1
# Tolerance for statistics a hair outside their range through rounding (softmax, cosine).
RANGE_TOL = 1e-3
_REJECTED = "The update was rejected; the table is unchanged"


def check_step(step: Any) -> None:
    """``step`` is ``None`` or an int that fits ``last_step`` (int32, non-negative)."""
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP):
        raise ValueError(f"step: expected an int in [0, {MAX_STEP}], got {step!r}")


def check_capacity(capacity: Any, name: str = "capacity") -> int | None:
    """``capacity`` (rows one rank sends per step) is ``None`` or a positive int."""
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
        raise ValueError(f"{name}: expected None or a positive int (rows one rank sends per step), got {capacity!r}")
    return capacity


def check_packed(values: Any, valid: Any, rows: int, width: int) -> None:
    """Shapes and dtypes of a packed update of ``rows`` ids: ``values [rows, width]`` and
    ``valid`` (``None`` or bool ``[rows]``). Host facts only: no device synchronisation."""
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (rows, width):
        raise ValueError(
            f"values: expected packed statistics of shape {[rows, width]}, got {list(getattr(values, 'shape', []))}"
        )
    if valid is not None:
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (rows,):
            raise ValueError(
                f"valid: expected a bool tensor of shape [{rows}], got "
                f"{getattr(valid, 'dtype', type(valid))} {list(getattr(valid, 'shape', []))}"
            )


def check_ids(
    ids: torch.Tensor,
    num_samples: int,
    rows: torch.Tensor | None = None,
    consequence: str = "; the table is unchanged",
) -> torch.Tensor:
    """``ids`` (host) as a flat int64 tensor, each in ``[0, num_samples)``; the error names the
    first bad id and its row (``rows[k]`` when the ids were filtered, else ``k``)."""
    ids = ids.long().reshape(-1)
    if ids.numel() == 0:
        return ids
    bad = (ids < 0) | (ids >= num_samples)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"ids: sample id {int(ids[first])} (row {first if rows is None else int(rows[first])}) is outside "
            f"the table [0, {num_samples}){consequence}"
        )
    return ids


def check_statistics(
    ids: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    columns: Sequence[bool],
    with_misaligned: torch.Tensor,
    num_modalities: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The packed ``values [B, M + 4]`` (host) of an update, checked and clipped to their ranges.

    Per column given (``columns``, in ``STATISTICS`` order): every value is finite;
    confidences lie in ``[0, 1]`` and similarities in ``[-1, 1]`` (within :data:`RANGE_TOL`,
    then clipped); losses (misaligned and aligned) are non-negative, and clipped to
    ``dtype``'s largest finite value.
    Similarity and loss are checked only on rows ``with_misaligned``. Returns a clipped copy;
    ``values`` itself is left alone, so a rejected update changes nothing.
    """
    m = num_modalities
    values = values.clone()
    limit = torch.finfo(dtype).max
    checks = (
        ("confidence", slice(0, m), columns[0], None, 0.0, 1.0),
        ("similarity", slice(m, m + 1), columns[1], with_misaligned, -1.0, 1.0),
        ("misaligned_loss", slice(m + 1, m + 2), columns[2], with_misaligned, 0.0, limit),
        ("loss", slice(m + 2, m + 3), columns[3], None, 0.0, limit),
    )
    for name, cols, given, mask, low, high in checks:
        if not given:
            continue
        block = values[:, cols] if mask is None else values[mask][:, cols]
        block_rows = rows if mask is None else rows[mask]
        block_ids = ids if mask is None else ids[mask]
        finite = torch.isfinite(block).all(dim=1)
        hi_tol = high + RANGE_TOL if high != limit else math.inf
        outside = ((block < low - RANGE_TOL) | (block > hi_tol)).any(dim=1)
        problems = (
            (~finite, "is not finite; statistics must be finite numbers."),
            (outside, f"is outside [{low}, {high}]."),
        )
        for bad, what in problems:
            if bool(bad.any()):
                at = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"{name}: {block[at].tolist()} for sample id {int(block_ids[at])} (row {int(block_rows[at])}) "
                    f"{what} {_REJECTED}"
                )
        values[:, cols] = values[:, cols].clamp(low, high)
    return values


def check_state(
    state: Any, num_samples: int, modalities: Sequence[str], num_columns: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A ``StatsTable.state_dict()`` for a table of ``num_samples`` rows and ``modalities``:
    returns its ``values``, ``last_step`` and ``num_updates``, or raises naming the bad key."""
    if isinstance(state, Mapping) and state.get("format") in OLD_STATE_FORMATS:
        state = convert_old_state(state, num_samples, num_columns)
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"state['format']: expected {STATE_FORMAT!r} (a StatsTable.state_dict(); "
            f"{', '.join(map(repr, OLD_STATE_FORMATS))} is converted), got {got!r}"
        )
    if state.get("num_samples") != num_samples:
        raise ValueError(
            f"state['num_samples']: the checkpoint has {state.get('num_samples')} samples, this table "
            f"{num_samples}; a stats checkpoint only loads into a table of the same dataset"
        )
    if list(state.get("modalities", [])) != list(modalities):
        raise ValueError(
            f"state['modalities']: the checkpoint has {list(state.get('modalities', []))}, this table "
            f"{list(modalities)}; the column layout must match"
        )
    values, last_step = state.get("values"), state.get("last_step")
    expected = (num_columns, num_samples)
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != expected:
        raise ValueError(
            f"state['values']: expected a tensor of shape {list(expected)}, got "
            f"{list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}"
        )
    if values.dtype not in STATS_DTYPES:
        raise ValueError(f"state['values']: expected a floating dtype of {STATS_DTYPES}, got {values.dtype}")
    if not isinstance(last_step, torch.Tensor) or tuple(last_step.shape) != (num_samples,):
        raise ValueError(f"state['last_step']: expected a tensor of shape [{num_samples}]")
    if last_step.dtype.is_floating_point or last_step.dtype == torch.bool:
        raise ValueError(f"state['last_step']: expected an integer tensor, got {last_step.dtype}")
    if bool(torch.isinf(values).any()):
        raise ValueError("state['values']: contains inf; the checkpoint is corrupt")
    updates = state.get("num_updates")
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise ValueError(f"state['num_updates']: expected a non-negative int, got {updates!r}")
    return values, last_step, updates


def convert_old_state(state: Mapping[str, Any], num_samples: int, num_columns: int) -> dict[str, Any]:
    """A format-1 checkpoint (no ``loss`` column) as format 2: its ``M + 2`` value rows
    plus a ``loss`` row of ``NaN`` (never written). Anything malformed is left for
    :func:`check_state` to name."""
    values = state.get("values")
    converted = dict(state)
    converted["format"] = STATE_FORMAT
    if isinstance(values, torch.Tensor) and values.dim() == 2 and tuple(values.shape) == (num_columns - 1, num_samples):
        converted["values"] = torch.cat([values, values.new_full((1, num_samples), math.nan)])
    elif isinstance(values, torch.Tensor):
        raise ValueError(
            f"state['values']: a {state.get('format')!r} checkpoint for this table has shape "
            f"{[num_columns - 1, num_samples]}, got {list(values.shape)}"
        )
    return converted
