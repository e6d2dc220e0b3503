"""Resuming an interrupted epoch on another number of ranks.

The plan of an epoch depends only on ``(seed, epoch, stats snapshot)``, never on the number
of ranks; the number of ranks only decides which slots of the plan each rank takes
(:func:`~midas_data.feedback.planning.batch_bounds`). A checkpoint taken after ``k``
batches of an epoch on ``N`` ranks therefore tells every new rank, from any one old rank's
state, which slots were trained: under DDP every rank takes one batch per step, so all
``N`` ranks had received their first ``k`` batches (the *lockstep* rule). The slots no old
rank received (the *rest* of the epoch, in plan order) are then laid out for the ``M`` new
ranks with the same rule that splits an epoch's tail: full batches, then the last samples
split as evenly as possible so that every rank has the same number of batches and every
slot is used exactly once (no padding, no repeat). The rest is kept in the state, so an
epoch resumed on ``M`` ranks can be interrupted and resumed again, on any number of ranks.

Positions stay those of the epoch: a pass over the rest starts at batch ``k`` (its first
``k`` batches are placeholders that are never yielded), so ``len()`` and a trainer's batch
counter continue from where the interrupted epoch stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .epochs import EpochCursor
from .planning import batch_bounds
from .prune import upcoming_epoch
from .sampler_checks import FORMAT

__all__ = ["ELASTIC_KEYS", "other_replicas", "saved_rest", "rest_of_epoch", "rest_bounds", "upcoming_rest"]

ELASTIC_KEYS = ("num_replicas", "num_shards")
"""Layout keys of a sampler state that may differ on resume (only ``num_replicas`` does)."""


def other_replicas(state: Any, mine: Mapping[str, Any]) -> int | None:
    """The number of ranks a sampler state was saved on, when it differs from this sampler's
    (``None`` when it is the same, or when the state is not a sampler state at all: the
    format check reports that). Any other difference of layout (dataset size, batch size,
    seed, shuffle, drop_last, policy) raises ``ValueError`` naming the field and both values."""
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        return None
    for key, value in mine.items():
        if key in ELASTIC_KEYS or key not in state:
            continue  # a missing key is reported by the sampler's own check
        if state[key] != value:
            raise ValueError(
                f"state[{key!r}]: the checkpoint has {state[key]!r}, this sampler {value!r}; a loader state "
                "resumes only with the same dataset size, batch size, seed, shuffle, drop_last and policy "
                "(the number of ranks may change)"
            )
    saved = state.get("num_replicas")
    if saved == mine["num_replicas"] or state.get("num_shards", 1) != 1 or mine["num_shards"] != 1:
        return None  # the same ranks, or Accelerate's processes: the exact check applies
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise ValueError(f"state['num_replicas']: expected a positive int, got {saved!r}")
    return saved


def saved_rest(state: Mapping[str, Any], yielded: int, num_samples: int) -> tuple[torch.Tensor | None, int]:
    """The rest of an epoch a state's pass was laying out (``None`` for a whole epoch) and
    the position it began at, checked."""
    slots, start = state.get("elastic_slots"), state.get("elastic_from", 0)
    if slots is None:
        return None, 0
    if not isinstance(slots, torch.Tensor) or slots.dim() != 1 or slots.dtype not in (torch.int32, torch.int64):
        raise ValueError("state['elastic_slots']: expected None or a 1-d integer tensor of plan slots")
    if slots.numel() and not (0 <= int(slots.min()) and int(slots.max()) < num_samples):
        raise ValueError(f"state['elastic_slots']: slots must lie in [0, {num_samples})")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= yielded:
        raise ValueError(f"state['elastic_from']: expected an int in [0, {yielded}] (state['yielded']), got {start!r}")
    return slots, start


def rest_of_epoch(
    num_slots: int,
    batch_size: int,
    drop_last: bool,
    num_replicas: int,
    position: int,
    slots: torch.Tensor | None = None,
    slots_from: int = 0,
) -> torch.Tensor:
    """The slots of an epoch's plan that none of ``num_replicas`` ranks had received when each
    had received its first ``position`` batches, ascending (``int64``).

    ``slots``/``slots_from``: the pass was itself the rest of the epoch (from an earlier
    resume), laid out from position ``slots_from`` by :func:`rest_bounds`; else it was the
    whole epoch of ``num_slots`` slots, laid out by ``batch_bounds`` (with ``drop_last``: the
    dropped tail was never part of the epoch, and is not part of its rest either).
    """
    if slots is None:
        count, done, cut = num_slots, position, drop_last
    else:
        count, done, cut = slots.numel(), position - slots_from, False
    left = torch.zeros(count, dtype=torch.bool)
    for rank in range(num_replicas):
        for begin, end in batch_bounds(count, batch_size, num_replicas, rank, cut)[done:] if count else []:
            left[begin:end] = True
    rest = left.nonzero().squeeze(1)
    return rest if slots is None else slots.long()[rest]


def rest_bounds(num_rest: int, slots_from: int, batch_size: int, num_replicas: int, rank: int) -> list[tuple[int, int]]:
    """The batches of ``rank`` over the rest of an epoch (``num_rest`` slots), as ranges of
    the rest, after ``slots_from`` empty placeholders for the batches already trained.

    The rest is cut as an epoch is, without ``drop_last`` (every remaining sample is trained
    once): full global steps of ``num_replicas * batch_size`` slots, then the tail split
    evenly into one more batch per rank, or folded into the last step's batches (they grow
    by at most two samples). Every rank has the same number of batches.
    """
    if 0 < num_rest < num_replicas:
        raise ValueError(
            f"the interrupted epoch has {num_rest} sample(s) left, fewer than the {num_replicas} ranks resuming it: "
            "every rank needs at least one. Resume on at most that many ranks, or start the next epoch "
            "(set_epoch(loader, saved_epoch + 1)) and skip those samples"
        )
    placeholders = [(0, 0)] * slots_from
    if num_rest == 0:
        return placeholders
    return placeholders + batch_bounds(num_rest, batch_size, num_replicas, rank, False)


def upcoming_rest(cursor: EpochCursor, slots: torch.Tensor | None, slots_from: int) -> tuple[torch.Tensor | None, int]:
    """The rest the sampler's next pass lays out, without starting it: the saved one it
    continues, the current one after a peek, none for a new epoch."""
    epoch, saved = upcoming_epoch(cursor)
    if saved is not None:
        return saved.slots, saved.slots_from
    return (slots, slots_from) if epoch < 0 else (None, 0)
