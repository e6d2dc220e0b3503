"""Hugging Face ``transformers``: ``MidasTrainer`` (extra ``midas-data[transformers]``).

The user's side, on top of a joint-training ``Trainer``::

    objective = MidasObjective(num_classes=6, modalities=("audio", "video"), warmup_epochs=10)
    trainer = MidasTrainer(model=model, args=args, train_dataset=train, eval_dataset=val, objective=objective)

``model(inputs)`` follows the MIDAS model protocol (``LateFusionClassifier`` does). The
trainer builds the MIDAS train loader from ``train_dataset`` (the global sampler, sharded by
Accelerate's ``BatchSamplerShard`` so that every sample comes once per epoch across ranks),
computes the MIDAS loss in ``compute_loss``, writes per-sample statistics back to the stats
table (all-gathered across ranks), logs alpha and the confidences with the training loss,
and saves / restores the MIDAS state (``midas_state.pt``) with the Trainer's checkpoints.
Evaluation is the Trainer's own: its eval loader and collator, the fusion logits as the
predictions and their cross-entropy as the loss.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..data.batch import MidasBatch
from ..feedback.sampler import MidasBatchSampler
from ..feedback.stats import StatsTable
from ..feedback.sync import sync_stats
from ..loader import attach_importance_weights, midas_loader
from ..objective import MidasObjective
from .step import check_output, midas_loss

__all__ = ["MidasTrainer", "STATE_FILE"]

STATE_FILE = "midas_state.pt"
_FORMAT = "midas_data.MidasTrainer/1"


class MidasTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with the MIDAS objective.

    Args:
        objective: the :class:`MidasObjective`; its modalities name the dataset's modality
            columns.
        label_key: the label column of ``train_dataset`` items.
        stats: a :class:`StatsTable` for the feedback loop (``policy="hard"`` and the like
            read it); per-sample statistics are written to it every step.
        midas_loader_kwargs: more arguments for :func:`midas_loader` (``mode="input"``,
            ``policy``, ``modality_collate``, ``rule``, ...). Batch size, seed, workers, pinning
            and ``drop_last`` come from ``TrainingArguments``.
        *args, **kwargs: the ``Trainer``'s own.

    The MIDAS loss is a mean over its batch, so gradient accumulation divides it by the
    number of accumulated batches (``num_items_in_batch`` is not used); alpha takes one step
    per optimizer step, from the statistics of all the accumulated batches. Logged with the
    training loss: ``midas/alpha_<m>`` (the controller's alpha, one value on every rank),
    ``midas/confidence_<m>`` and ``midas/share_<m>`` (means since the last log, this rank's),
    ``midas/num_misaligned`` (rows since the last log, this rank's). FLOPs are the model's
    ``floating_point_ops`` on the aligned inputs, when it has one.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        objective: MidasObjective,
        label_key: str = "label",
        stats: StatsTable | None = None,
        midas_loader_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(objective, MidasObjective):
            raise TypeError(f"objective: expected a MidasObjective, got {type(objective).__name__}")
        super().__init__(*args, **kwargs)
        if self.args.include_num_input_tokens_seen not in ("no", False):
            raise ValueError(
                "MidasTrainer: include_num_input_tokens_seen counts tokens of a main input column, which MIDAS "
                "batches (one input per modality) do not have; leave it at 'no'"
            )
        self.objective = objective
        self.label_key = label_key
        self.stats = stats
        self.midas_loader_kwargs = dict(midas_loader_kwargs or {})
        self.midas_sampler: MidasBatchSampler | None = None
        self._pending_sampler_state: Mapping[str, Any] | None = None
        # policy="prune": epochs differ in length, which the Trainer's own bookkeeping
        # (one length for every epoch, read at the start) cannot follow; see _run_epoch.
        self._epoch_start_step = 0
        self._resumed_run: Mapping[str, int] | None = None
        self._since_log: dict[str, Any] = {}  # sums since the last log, on the device
        self._alpha_hook: tuple[Any, Any] | None = None  # (optimizer, hook handle)
        modalities = list(objective.modalities)
        if self.args.label_names is None and not self.label_names:
            self.label_names = ["labels"]  # what the default collator makes of a "label" column
        # Columns the Trainer keeps under remove_unused_columns (the model's forward names none).
        kept = modalities + sorted({label_key, "label", "label_ids", *self.label_names})
        self._signature_columns = kept  # type: ignore[assignment]

    # -- the train loader --------------------------------------------------------------------
    def get_train_dataloader(self) -> Any:
        """The MIDAS loader over ``train_dataset``, prepared by Accelerate (which shards it)."""
        if self.train_dataset is None:
            raise ValueError("MidasTrainer: training requires a train_dataset")
        args = self.args
        workers = args.dataloader_num_workers
        kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": args.dataloader_pin_memory}
        if workers > 0:
            kwargs.update(persistent_workers=args.dataloader_persistent_workers)
            kwargs.update(prefetch_factor=args.dataloader_prefetch_factor)
            kwargs.update(multiprocessing_context=args.dataloader_multiprocessing_context)
        kwargs.update(self.midas_loader_kwargs)
        loader = midas_loader(
            self.train_dataset,
            self.objective.modalities,
            self.label_key,
            batch_size=self._train_batch_size,
            seed=args.seed,
            drop_last=args.dataloader_drop_last,
            stats=kwargs.pop("stats", self.stats),
            **kwargs,
        )
        sampler = loader.batch_sampler
        assert isinstance(sampler, MidasBatchSampler)
        if self.stats is None:
            self.stats = sampler.stats
        self.midas_sampler = sampler
        if self._pending_sampler_state is not None:
            sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return self.accelerator.prepare(loader)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's optimizer, with alpha stepping once per optimizer step: under
        ``gradient_accumulation_steps`` the statistic is summed over the micro-batches."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self._alpha_hook is None or self._alpha_hook[0] is not optimizer:
            if self._alpha_hook is not None:
                self.objective.detach(self._alpha_hook[1])
            self._alpha_hook = (optimizer, self.objective.attach(optimizer))
        return optimizer

    # -- the step ----------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """The next ``num_batches`` batches; no item count for MIDAS batches (their loss is a mean)."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if batches and isinstance(batches[0], MidasBatch):
            return batches, None
        return batches, self._get_num_items_in_batch(batches, device)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Any,
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The MIDAS loss on a training :class:`MidasBatch`; the fusion head's cross-entropy on
        the Trainer's own (evaluation) batches."""
        if isinstance(inputs, MidasBatch):
            # Accelerate serves the batches through its own loader, past midas_loader's
            # iterator that attaches the weights elsewhere; the sampler holds this epoch's plan.
            attach_importance_weights(self.midas_sampler, inputs)
            batch = inputs.to(self.args.device)
            loss, diagnostics = midas_loss(self.objective, model, batch)
            self._feed_back(batch, diagnostics)
            return (loss, diagnostics) if return_outputs else loss
        if not isinstance(inputs, Mapping):
            raise TypeError(f"MidasTrainer: expected a MidasBatch or a dict batch, got {type(inputs).__name__}")
        modalities = self.objective.modalities
        missing = [m for m in modalities if m not in inputs]
        if missing:
            raise KeyError(f"MidasTrainer: the batch has no modality {missing} (it has {list(inputs)})")
        output = check_output(model({m: inputs[m] for m in modalities}), modalities)
        labels = inputs.get(self.label_names[0]) if self.label_names else None
        if labels is None:
            raise KeyError(f"MidasTrainer: the batch has no label column {self.label_names} (it has {list(inputs)})")
        if self.objective.task == "multilabel":
            loss = F.binary_cross_entropy_with_logits(output.fusion_logits.float(), labels.float())
        else:
            loss = F.cross_entropy(output.fusion_logits, labels)
        return (loss, {"logits": output.fusion_logits}) if return_outputs else loss

    def _feed_back(self, batch: MidasBatch, diagnostics: Mapping[str, Any]) -> None:
        if self.stats is not None:
            capacity = None if self.midas_sampler is None else self.midas_sampler.max_batch_size + 2
            sync_stats(self.stats, batch.ids, diagnostics["per_sample"], step=self.state.global_step, capacity=capacity)
        sums = self._since_log
        for key, label in (("confidence", "confidence"), ("confidence_share", "share")):
            value = diagnostics.get(key)
            if isinstance(value, torch.Tensor):
                sums[label] = sums.get(label, 0) + value.detach().float()
                sums[f"{label}_steps"] = sums.get(f"{label}_steps", 0) + 1
        sums["num_misaligned"] = sums.get("num_misaligned", 0) + int(diagnostics.get("num_misaligned", 0))

    def floating_point_ops(self, inputs: Any) -> int:
        if isinstance(inputs, MidasBatch):
            flat: dict[str, Any] = {}
            for name, value in inputs.inputs.items():
                flat.update(value if isinstance(value, Mapping) else {name: value})
            return super().floating_point_ops(flat)
        return super().floating_point_ops(inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with MIDAS's alpha, confidences and misaligned rows next to the loss."""
        if "loss" in logs:
            names = self.objective.modalities
            alpha = self.objective.alpha.tolist()
            logs.update({f"midas/alpha_{m}": alpha[i] for i, m in enumerate(names)})
            sums, self._since_log = self._since_log, {}
            for label in ("confidence", "share"):
                if label in sums:
                    mean = (sums[label] / sums[f"{label}_steps"]).tolist()
                    logs.update({f"midas/{label}_{m}": mean[i] for i, m in enumerate(names)})
            logs["midas/num_misaligned"] = float(sums.get("num_misaligned", 0))
        super().log(logs, start_time)

    # -- checkpoints -------------------------------------------------------------------------
    def midas_state_dict(self) -> dict[str, Any]:
        """Objective, stats table and sampler epoch (the Trainer skips batches itself on resume)."""
        state: dict[str, Any] = {"format": _FORMAT, "objective": self.objective.state_dict()}
        if self.stats is not None:
            state["stats"] = self.stats.state_dict()
        if self.midas_sampler is not None:
            sampler = self.midas_sampler.state_dict()
            if sampler["planned"]:
                # The Trainer replays the epoch and skips the batches it trained: keep the plan, not the position.
                sampler.update(yielded=0, exhausted=False)
            state["sampler"] = sampler
        state["run"] = {"epoch_start_step": self._epoch_start_step, "max_steps": self.state.max_steps}
        return state

    def load_midas_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"MIDAS state: expected format {_FORMAT!r}, got {state.get('format')!r}")
        self.objective.load_state_dict(state["objective"])
        if "stats" in state:
            if self.stats is None:
                raise ValueError("MidasTrainer: the checkpoint holds a stats table; pass stats=StatsTable(...)")
            self.stats.load_state_dict(state["stats"])
        self._pending_sampler_state = state.get("sampler")
        self._resumed_run = state.get("run")

    # -- epochs of changing length (policy="prune") -----------------------------------------
    def _prunes(self) -> bool:
        return self.midas_sampler is not None and self.midas_sampler.prune is not None

    def set_initial_training_values(self, args: Any, dataloader: Any) -> Any:
        """The Trainer's values; a resumed pruned run keeps the step budget of the run it
        continues (sized from a full first epoch), not one sized from the epoch it resumes."""
        values = list(super().set_initial_training_values(args, dataloader))
        resumed = self._resumed_run
        if self._prunes() and resumed is not None and args.max_steps <= 0 and resumed.get("max_steps", 0) > 0:
            values[-1] = int(resumed["max_steps"])
        return tuple(values)

    def _init_training_state(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        """The epoch and the batches trained in it, from the checkpoint's own record when
        epochs differ in length (the Trainer divides the global step by one epoch length)."""
        epochs, steps = super()._init_training_state(*args, **kwargs)
        resumed, sampler = self._resumed_run, self.midas_sampler
        if self._prunes() and resumed is not None and sampler is not None and not self.args.ignore_data_skip:
            epochs = sampler.epoch
            updates = self.state.global_step - int(resumed["epoch_start_step"])
            steps = updates * self.args.gradient_accumulation_steps
            self._epoch_start_step = int(resumed["epoch_start_step"])
        return epochs, steps

    def _run_epoch(self, **kwargs: Any) -> Any:
        """One epoch; under ``prune`` with the length of this epoch, not of the first one."""
        resuming = kwargs.get("resume_from_checkpoint") is not None and kwargs["epoch"] == kwargs["epochs_trained"]
        if not (resuming and self._resumed_run is not None):
            self._epoch_start_step = self.state.global_step
        if self._prunes():
            assert self.midas_sampler is not None
            self.midas_sampler.set_epoch(kwargs["epoch"])  # the Trainer sets it again; the same epoch
            batches = len(kwargs["train_dataloader"])
            accumulation = self.args.gradient_accumulation_steps
            kwargs.update(steps_in_epoch=batches, num_update_steps_per_epoch=max(math.ceil(batches / accumulation), 1))
        return super()._run_epoch(**kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's save (checkpoints call it too), plus ``midas_state.pt`` on the saving process."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            path = os.path.join(str(output_dir or self.args.output_dir), STATE_FILE)
            torch.save(self.midas_state_dict(), path)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's ``train``; resuming also restores the MIDAS state of that checkpoint."""
        checkpoint = resume_from_checkpoint
        self._resumed_run = None
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str):
            path = os.path.join(checkpoint, STATE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"MidasTrainer: {checkpoint} has no {STATE_FILE} (alpha, stats table, epoch plan); was it saved "
                    "by a MidasTrainer?"
                )
            self.load_midas_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return super().train(resume_from_checkpoint, *args, **kwargs)
