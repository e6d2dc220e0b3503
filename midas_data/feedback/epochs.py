"""``EpochCursor``: which epoch the batch sampler's next pass plans, and where it starts.

The epoch lives in a shared ``int64`` tensor (:func:`shared_epoch`) that the collate step
reads inside the workers. Without ``set_epoch``, each pass plans the epoch after the last
one, provided the last pass *counted*: it delivered at least :data:`COUNTED_BATCHES`
batches or ran to its end. A pass that delivered fewer and was abandoned (a look at the
first batch before training) was a peek: the next pass plans the same epoch again, with
the same plan. ``midas_loader``'s loader reports the batches its iterator hands to the
caller, and a loader pass is judged by that count (a DataLoader with workers asks the
sampler for batches ahead, and may start and drop sampler passes of its own: torchdata
does when it restores an ended iterator). Iterated by anything else, the sampler pass is
judged by the batches it yielded, which with workers includes those fetched ahead.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import MidasDataWarning

__all__ = ["COUNTED_BATCHES", "EpochCursor", "PassStart", "SavedPosition", "checked_epoch", "shared_epoch"]

COUNTED_BATCHES = 2
"""A pass abandoned after fewer batches than this does not count as an epoch."""


def shared_epoch(epoch: int = 0) -> torch.Tensor:
    """A 0-dim ``int64`` tensor in shared memory, to be created before workers start."""
    return torch.full((), epoch, dtype=torch.int64).share_memory_()


def checked_epoch(epoch: Any, current: int) -> int:
    """``epoch`` as an int, refusing what is not a non-negative integer, and warning when
    it goes back: an earlier epoch repeats that epoch's order and pair plans exactly."""
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"epoch: expected a non-negative int, got {epoch!r}")
    epoch = int(epoch)
    if epoch < current:
        warnings.warn(
            f"set_epoch({epoch}) after epoch {current}: epoch {epoch}'s sample order and pair plans repeat exactly. "
            "When resuming, load the sampler's (or the StatefulDataLoader's) state_dict, or continue the epoch count "
            "from the checkpoint",
            MidasDataWarning,
            stacklevel=3,
        )
    return epoch


@dataclass
class SavedPosition:
    """A checkpointed position that the next pass continues, with what its plan was drawn from."""

    epoch: int
    position: int
    snapshot: torch.Tensor | None
    weak_modality: int
    snapshot_updates: int
    slots: torch.Tensor | None = None  # the rest of the epoch, on another number of ranks (elastic.py)
    slots_from: int = 0  # the position that rest begins at


class PassStart(NamedTuple):
    """What :meth:`EpochCursor.begin` decided for a new pass."""

    epoch: int
    position: int  # the first batch of the epoch's plan to yield
    saved: SavedPosition | None  # plan from this checkpoint, not from the stats table now
    repeat: bool  # the last pass was a peek: reuse its plan, so the order stays the same


@dataclass
class EpochCursor:
    """The epoch bookkeeping of one batch sampler.

    A *sampler pass* is one iteration of the sampler: :meth:`begin` is called when it is
    asked for its first batch (not when its iterator is made: a DataLoader makes and drops
    one when it starts workers), :meth:`advance` for every batch yielded and :meth:`finish`
    when it runs out. A *loader pass* is one ``iter(loader)``; a loader that counts what it
    hands out calls :meth:`loader_pass`, :meth:`batch_delivered` and :meth:`caller_reached_end`,
    and its count, not the sampler's, then decides whether the pass was an epoch.
    """

    tensor: torch.Tensor
    pinned: bool = False  # set_epoch chose the epoch of the next pass
    started: bool = False  # a sampler pass has begun: the next one may advance
    start: int = 0  # position the current sampler pass began at
    yielded: int = 0  # position in the epoch's batches (what a checkpoint saves)
    exhausted: bool = False  # the current sampler pass yielded its last batch and ended
    saved: SavedPosition | None = None
    loader_pass_open: bool = False  # a loader pass is counting deliveries
    began_in_loader_pass: bool = False  # a sampler pass began during it
    delivered: int = 0  # batches the open loader pass handed to the caller
    caller_ended: bool = False  # the caller saw the open loader pass end
    verdict: bool | None = None  # the last loader pass counted; for the next begin()

    @property
    def epoch(self) -> int:
        return int(self.tensor)

    def pin(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass, whatever the last pass was."""
        self.tensor.fill_(epoch)
        self.pinned = True

    @property
    def last_pass_counts(self) -> bool:
        """Whether the last pass was an epoch rather than a peek: by the loader's count if a
        loader reported one, else by the batches the sampler yielded."""
        if self.verdict is not None:
            return self.verdict
        return self.yielded - self.start >= COUNTED_BATCHES or self.exhausted

    def begin(self) -> PassStart:
        """Choose the epoch and start position of a new sampler pass, in this order: a saved
        position (unless ``set_epoch`` chose another epoch), the pinned epoch, the epoch
        after a pass that counted, the same epoch again after a peek."""
        saved, self.saved = self.saved, None
        if saved is not None and self.pinned and self.epoch != saved.epoch:
            saved = None  # set_epoch chose another epoch: the saved position is moot
        repeat = False
        position = 0
        if saved is not None:
            self.tensor.fill_(saved.epoch)
            position = saved.position
        elif self.started and not self.pinned:
            if self.last_pass_counts:
                self.tensor.add_(1)
            else:
                repeat, position = True, self.start
        self.started, self.pinned, self.exhausted, self.verdict = True, False, False, None
        self.start = self.yielded = position
        self.began_in_loader_pass = True
        return PassStart(self.epoch, position, saved, repeat)

    def advance(self) -> None:
        """One more batch of the current sampler pass yielded."""
        self.yielded += 1

    def finish(self) -> None:
        """The current sampler pass yielded its last batch."""
        self.exhausted = True

    # -- reports from a loader that counts what it hands out ---------------------------------
    def loader_pass(self) -> None:
        """A loader pass starts (call it before the loader makes its iterator: with workers,
        that begins the sampler pass). Judges the loader pass before it, if it began one."""
        if self.loader_pass_open and self.began_in_loader_pass:
            self.verdict = self.delivered >= COUNTED_BATCHES or self.caller_ended
        self.loader_pass_open, self.began_in_loader_pass = True, False
        self.delivered, self.caller_ended = 0, False

    def batch_delivered(self) -> None:
        self.delivered += 1

    def caller_reached_end(self) -> None:
        self.caller_ended = True

    def caller_position(self) -> tuple[int, bool] | None:
        """``(position, ended)`` of the open loader pass as the caller received it (the
        sampler runs ahead of it with workers), or ``None`` when no pass of this loader began."""
        if not (self.loader_pass_open and self.began_in_loader_pass):
            return None
        return self.start + self.delivered, self.caller_ended

    # -- checkpoints --------------------------------------------------------------------------
    def restore(self, epoch: int, saved: SavedPosition | None) -> None:
        """A checkpoint taken during (``saved``) or after (``None``) a pass of ``epoch``: the
        next pass continues it, or, when it had ended, plans the epoch after it. What the
        loader counted before the checkpoint no longer matters."""
        self.tensor.fill_(epoch)
        self.started, self.pinned, self.saved = True, False, saved
        self.start = self.yielded = 0 if saved is None else saved.position
        self.exhausted = saved is None  # an ended pass counts
        self.verdict, self.began_in_loader_pass = None, False

    @property
    def state(self) -> dict[str, Any]:
        """The position a checkpoint saves: batches yielded so far, and whether the pass ended."""
        return {"yielded": self.yielded, "exhausted": self.exhausted}
