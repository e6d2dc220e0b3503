"""PyTorch Lightning: ``MidasCallback`` (extra ``midas-data[lightning]``).

The user's side, on top of a joint-training LightningModule::

    def training_step(self, batch, batch_idx):
        return midas_step(self.objective, self.net, batch)     # {"loss": ..., "midas": diagnostics}

    def train_dataloader(self):
        return midas_loader(dataset, ("audio", "video"), batch_size=64, stats=self.table)

    trainer = Trainer(..., callbacks=[MidasCallback()])

What Lightning does already: with its default ``use_distributed_sampler=True`` it re-creates
the MIDAS batch sampler with its ``DistributedSampler``, whose ranks split the global plan
once (see ``MidasBatchSampler(sampler=...)``), and it calls ``set_epoch`` on
``batch_sampler.sampler``, which reaches the MIDAS sampler. What the callback adds: the
objective's epoch, the per-sample statistics written back to the stats table (all-gathered
across ranks, so every rank plans the same epochs), alpha, confidences and misaligned-row
counts through ``pl_module.log``, and the MIDAS state in Lightning's checkpoints.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ..data.batch import MidasBatch
from ..distributed import world_size
from ..errors import MidasDataError, MidasDataWarning
from ..feedback.sampler import MidasBatchSampler
from ..feedback.stats import StatsTable
from ..feedback.sync import sync_stats
from ..objective import MidasObjective
from .step import midas_loss

__all__ = ["MidasCallback", "midas_step"]

_STATE_FORMAT = "midas_data.MidasCallback/1"
_RETURN_HINT = (
    "training_step must return {'loss': loss, 'midas': diagnostics} with (loss, diagnostics) = objective(...), "
    "or simply `return midas_step(self.objective, self.net, batch)`"
)


def midas_step(objective: MidasObjective, model: torch.nn.Module, batch: MidasBatch) -> dict[str, Any]:
    """What a LightningModule's ``training_step`` returns for MIDAS: ``{"loss", "midas"}``.

    Runs ``model`` on the batch, checks its output against the model protocol and computes
    the objective; ``MidasCallback`` reads the diagnostics from ``outputs["midas"]``.
    """
    _warn_without_callback(objective, sys._getframe(1).f_locals.get("self"))
    loss, diagnostics = midas_loss(objective, model, batch)
    return {"loss": loss, "midas": diagnostics}


def _warn_without_callback(objective: MidasObjective, module: Any) -> None:
    """Once per objective: a MIDAS step under a Trainer that has no :class:`MidasCallback`."""
    if getattr(objective, "_checked_callback", False) or not isinstance(module, pl.LightningModule):
        return
    trainer = module._trainer
    if trainer is None:
        return
    objective._checked_callback = True  # type: ignore[attr-defined]
    if not any(isinstance(callback, MidasCallback) for callback in trainer.callbacks):
        warnings.warn(
            "midas_step runs under a Lightning Trainer without MidasCallback: the stats table is never written "
            "(prioritised policies stay uniform), alpha steps per micro-batch under accumulate_grad_batches, and "
            "the stats table and sampler position are not in the checkpoints. Add "
            "Trainer(callbacks=[MidasCallback()])",
            MidasDataWarning,
            stacklevel=3,
        )


class MidasCallback(pl.Callback):
    """Epochs, feedback, logging and checkpoints of MIDAS training under Lightning.

    Args:
        objective: the :class:`MidasObjective`; ``None`` finds the one attribute of the
            LightningModule that is one.
        stats: the :class:`StatsTable` to write per-sample statistics to; ``None`` uses the
            train loader's (``midas_loader(..., stats=table)``), and without one nothing is
            written back.
        log_prefix: prefix of the logged names (``midas/alpha_audio``, ...).
        sync_stats: all-gather statistics across ranks before writing them (keep it on under
            DDP: the sampler's plans need identical tables on every rank).

    Logged every step (``on_step=True``, rank 0's values for per-rank quantities): alpha per
    modality after the step's update, mean unimodal confidence per modality, mean confidence share per modality of
    the misaligned rows, the number of misaligned rows, ``loss_mis`` and ``warmup``.

    Checkpoints hold the objective (alpha, epoch), the stats table and the sampler's
    position. On resume the sampler continues the saved epoch at the batch after the last
    one trained, unless the loader is stateful (torchdata's ``StatefulDataLoader``), whose
    state Lightning restores itself.
    """

    def __init__(
        self,
        objective: MidasObjective | None = None,
        stats: StatsTable | None = None,
        *,
        log_prefix: str = "midas/",
        sync_stats: bool = True,
    ) -> None:
        super().__init__()
        self.objective = objective
        self.stats = stats
        self.log_prefix = log_prefix
        self.sync = sync_stats
        self.sampler: MidasBatchSampler | None = None
        self._batches_in_epoch = 0
        self._resumed_epoch: int | None = None  # the epoch a restored state continues in the middle
        self._stateful_loader = False
        self._pending: dict[str, Any] | None = None
        self._hooks: list[Any] = []  # alpha's hooks on the trainer's optimizers

    # -- finding the parts -----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The module's attributes, submodules included (the objective is a module).
        attributes = list({id(v): v for v in [*vars(pl_module).values(), *pl_module.children()]}.values())
        if self.objective is None:
            found = [v for v in attributes if isinstance(v, MidasObjective)]
            if len(found) != 1:
                raise ValueError(
                    f"MidasCallback: the LightningModule has {len(found)} MidasObjective attributes; pass "
                    "MidasCallback(objective=...) to say which one"
                )
            self.objective = found[0]
        if self.stats is None:
            # Found now, the table can be restored before Lightning starts the train loader's
            # workers, which plan the first resumed epoch from it (policy="hard").
            tables = [v for v in attributes if isinstance(v, StatsTable)]
            self.stats = tables[0] if len(tables) == 1 else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = _midas_loader_of(trainer.train_dataloader)
        sampler = loader.batch_sampler
        assert isinstance(sampler, MidasBatchSampler)
        if world_size() > 1 and sampler.num_replicas == 1:
            raise ValueError(
                f"MidasCallback: {world_size()} ranks iterate the global MIDAS sampler unsharded, so every rank would "
                "train on every sample. Keep Lightning's default Trainer(use_distributed_sampler=True), which shards "
                "it, or build the loader with midas_loader(..., num_replicas=world_size, rank=rank)"
            )
        self.sampler = sampler
        if self.stats is None:
            self.stats = sampler.stats
        self._stateful_loader = callable(getattr(loader, "state_dict", None))
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        # A restarted epoch gets no on_train_epoch_start: its count is set here, from the
        # restored sampler (a pruned epoch, or the rest of an epoch resumed on other ranks).
        _follow_epoch_length(trainer, len(sampler))
        # Alpha steps once per optimizer step (summed over accumulate_grad_batches micro-batches).
        assert self.objective is not None
        self._detach()
        self._hooks = [self.objective.attach(optimizer) for optimizer in trainer.optimizers]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()

    def _detach(self) -> None:
        for handle in self._hooks:
            if self.objective is not None:
                self.objective.detach(handle)
        self._hooks = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A batch planned for another epoch than the one Lightning trains must never reach the
        # objective: under DDP its warm-up decision would differ from the other ranks'. The
        # sampler's state is restored (and its epoch set) identically on every rank, so every
        # rank takes this branch alike.
        planned = getattr(batch, "epoch", -1)
        if isinstance(batch, MidasBatch) and planned >= 0 and planned != trainer.current_epoch:
            raise MidasDataError(
                f"MidasCallback: batch {batch_idx} was planned for epoch {planned} but Lightning trains epoch "
                f"{trainer.current_epoch}; was the loader's sampler restored or set after its iterator started? "
                "Build the loader with midas_loader (Lightning then restores its state before the first batch)"
            )

    # -- every epoch and step --------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.objective is not None
        self.objective.set_epoch(trainer.current_epoch)
        # Lightning skips this hook when it restarts an epoch in the middle; the restored count
        # of batches trained before the checkpoint stands then.
        if self._resumed_epoch != trainer.current_epoch:
            self._batches_in_epoch = 0
        self._resumed_epoch = None
        if self.sampler is not None:
            _follow_epoch_length(trainer, len(self.sampler))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches_in_epoch += 1
        self._resumed_epoch = None
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            return  # training_step returned None: Lightning skipped this batch
        diagnostics = _diagnostics_of(outputs)
        if not isinstance(batch, MidasBatch):
            raise TypeError(f"MidasCallback: the train batch is a {type(batch).__name__}, not a MidasBatch")
        if self.stats is not None:
            per_sample, step = diagnostics["per_sample"], trainer.global_step
            if self.sync:
                # The same fixed capacity on every rank (the sampler's batches grow by at most two
                # rows) spares a size exchange, a host synchronisation under NCCL, every step.
                capacity = None if self.sampler is None else self.sampler.max_batch_size + 2
                sync_stats(self.stats, batch.ids, per_sample, step=step, capacity=capacity)
            else:
                self.stats.update(batch.ids, per_sample, step=step)
        pl_module.log_dict(
            self._metrics(diagnostics), on_step=True, on_epoch=False, prog_bar=False, batch_size=len(batch)
        )

    def _metrics(self, diagnostics: Mapping[str, Any]) -> dict[str, Any]:
        assert self.objective is not None
        prefix, names = self.log_prefix, self.objective.modalities
        metrics: dict[str, Any] = {
            f"{prefix}num_misaligned": float(diagnostics.get("num_misaligned", 0)),
            f"{prefix}warmup": float(bool(diagnostics.get("warmup", False))),
        }
        # alpha as the controller holds it after this step's update (one value on every rank).
        alpha = self.objective.alpha.detach().clone()
        metrics.update({f"{prefix}alpha_{m}": alpha[i] for i, m in enumerate(names)})
        for key, label in (("confidence", "confidence"), ("confidence_share", "share")):
            values = diagnostics.get(key)
            if isinstance(values, torch.Tensor) and values.numel() == len(names):
                metrics.update({f"{prefix}{label}_{m}": values[i] for i, m in enumerate(names)})
        if isinstance(diagnostics.get("loss_mis"), torch.Tensor):
            metrics[f"{prefix}loss_mis"] = diagnostics["loss_mis"]
        return metrics

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"format": _STATE_FORMAT}
        if self.objective is not None:
            state["objective"] = self.objective.state_dict()
        if self.stats is not None:
            state["stats"] = self.stats.state_dict()
        if self.sampler is not None and not self._stateful_loader:
            state["sampler"] = _trained_position(self.sampler, self._batches_in_epoch)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"MidasCallback state: expected format {_STATE_FORMAT!r}, got {state_dict.get('format')!r}"
            )
        # Lightning restores callbacks after setup() and before it builds the train loader and
        # starts its workers (which may plan an epoch at once): restore objective and table now;
        # what needs the loader (a sampler position) waits for train start.
        state = dict(state_dict)
        if self.objective is not None and ("stats" not in state or self.stats is not None):
            self._restore({k: v for k, v in state.items() if k != "sampler"})
            state = {k: v for k, v in state.items() if k not in ("objective", "stats")}
        self._pending = state

    def _restore(self, state: Mapping[str, Any]) -> None:
        if "objective" in state:
            assert self.objective is not None
            self.objective.load_state_dict(state["objective"])
        if "stats" in state:
            if self.stats is None:
                raise ValueError("MidasCallback: the checkpoint holds a stats table but this run has none")
            self.stats.load_state_dict(state["stats"])
        if "sampler" in state and self.sampler is not None and not self._stateful_loader:
            self.sampler.load_state_dict(state["sampler"])
            self._resumed_epoch = int(state["sampler"]["epoch"])
            self._batches_in_epoch = int(state["sampler"]["yielded"])


def _diagnostics_of(outputs: Any) -> Mapping[str, Any]:
    """The objective's diagnostics in what ``training_step`` returned."""
    if isinstance(outputs, Mapping):
        if isinstance(outputs.get("midas"), Mapping):
            return outputs["midas"]
        if "per_sample" in outputs:
            return outputs
    got = type(outputs).__name__ if not isinstance(outputs, Mapping) else f"a dict with keys {list(outputs)}"
    raise TypeError(f"MidasCallback: training_step returned {got}; {_RETURN_HINT}")


def _follow_epoch_length(trainer: pl.Trainer, batches: int) -> None:
    """Tell Lightning how many batches this epoch has: under ``policy="prune"`` epochs
    differ, and an epoch resumed on another number of ranks is a rest.

    Lightning reads ``len(train_dataloader)`` once, when it sets up the data (before a
    checkpoint restores the sampler), and ends every epoch at that count or when the loader
    stops, whichever comes first: a run set up during a short epoch would cut the longer
    ones after it. The count is set before the epoch's iterator starts (progress bars read
    it in their own hook, after the user's callbacks). ``max_batches``, the combined
    loader's ``limits`` and the fetcher's ``length`` are Lightning's own attributes; those
    a version lacks are left alone."""
    limit = trainer.limit_train_batches
    count = min(int(limit), batches) if isinstance(limit, int) else int(batches * float(limit))
    trainer.fit_loop.max_batches = count
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is not None and getattr(fetcher, "length", None) is not None:
        fetcher.length = count
    # The data fetcher sizes the epoch from the combined loader's per-loader limits, also
    # read at setup (no public handle on it: left alone if a Lightning version lacks it).
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    limits = getattr(combined, "limits", None)
    if limits is not None:
        flattened = list(combined.flattened)
        ours = [isinstance(getattr(dl, "batch_sampler", None), MidasBatchSampler) for dl in flattened]
        found = [i for i, mine in enumerate(ours) if mine]
        if len(found) == 1:
            limits = list(limits)
            limits[found[0]] = count
            combined.limits = limits


def _midas_loader_of(loaders: Any) -> DataLoader:
    """The one train DataLoader whose batch sampler is a :class:`MidasBatchSampler`."""
    if isinstance(loaders, DataLoader):
        candidates = [loaders]
    elif isinstance(loaders, Mapping):
        candidates = list(loaders.values())
    elif isinstance(loaders, Sequence):
        candidates = list(loaders)
    else:
        candidates = []
    found = [dl for dl in candidates if isinstance(getattr(dl, "batch_sampler", None), MidasBatchSampler)]
    if len(found) != 1:
        raise ValueError(
            f"MidasCallback: expected one train DataLoader made by midas_loader (a MidasBatchSampler as its "
            f"batch_sampler), found {len(found)}"
        )
    return found[0]


def _trained_position(sampler: MidasBatchSampler, trained: int) -> dict[str, Any]:
    """The sampler's state at the batch after the last one trained.

    The sampler counts the batches it has handed out, which runs ahead of training by the
    DataLoader's prefetch; a resume continues after the last batch trained instead.
    """
    state = sampler.state_dict()
    if state["planned"] and not (state["exhausted"] and trained >= state["yielded"]):
        state["yielded"], state["exhausted"] = trained, False
    return state
