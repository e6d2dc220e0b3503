"""``MidasBatchSampler``: the epoch plan of index batches for the MIDAS loader.

One global plan per epoch (``planning.py``: deterministic from ``(seed, epoch, stats
snapshot)`` and so identical on every rank), cut into batches and, for the rank-aware
variant, split by rank. The epoch lives in a shared ``int64`` tensor that the collate
step reads inside the workers, so that ``set_epoch`` in the main process reaches the pair
planning there too.

Policies (``docs/feedback.md`` has the estimators):

* ``uniform`` — the paper's behaviour and the default: a random permutation.
* ``hard`` (experimental) — each sample is drawn in proportion to the hard-sample weight
  ``w = 1 + (s + 1) / 2`` of its last misaligned copies (``s`` from the stats table).
* ``weak_modality`` (experimental) — in proportion to ``1 - c^m^``, the weak modality's
  unimodal confidence on the sample's own label.
* ``prune`` — each epoch leaves out a random share of the samples scored below the mean,
  with importance weights that keep the epoch loss unbiased (``prune.py``); its epochs
  are shorter, and ``len()`` says how long (see :meth:`MidasBatchSampler.__len__`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Sampler

from ..distributed import world_size
from ..functional import pair_importance_weights
from .elastic import other_replicas, rest_bounds, rest_of_epoch, saved_rest, upcoming_rest
from .epochs import EpochCursor, SavedPosition, checked_epoch, shared_epoch
from .planning import POLICIES, EpochPlan, batch_bounds, choose_weak_modality, plan_from_snapshot
from .prune import PrunePolicy, prune_plan, prune_policy_of, upcoming_epoch
from .recreate import record_init_arguments, replicas_of
from .sampler_checks import FORMAT as _FORMAT
from .sampler_checks import check_wrapper, checked_state
from .sharding import shard_bounds, sharding_wrapper
from .stats import StatsTable

__all__ = [
    "MidasBatchSampler",
    "DistributedMidasBatchSampler",
    "EpochPlan",
    "POLICIES",
    "SAMPLER_POLICIES",
    "PrunePolicy",
    "shared_epoch",
    "shard_bounds",
    "pair_importance_weights",
]

SAMPLER_POLICIES = (*POLICIES, "prune")


class _SampleOrder(Sampler[int]):
    """The batch sampler's epochs one index at a time: ``batch_sampler.sampler``.

    Trainers look for ``set_epoch`` here (Lightning on ``batch_sampler.sampler``,
    Accelerate on ``batch_sampler.batch_sampler.sampler``); it reaches the batch sampler.
    """

    def __init__(self, batch_sampler: MidasBatchSampler) -> None:
        self.batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batch_sampler:
            yield from batch

    def __len__(self) -> int:
        return sum(end - begin for begin, end in self.batch_sampler._bounds_cache)


class MidasBatchSampler(Sampler[list[int]]):
    """Yields lists of sample indices, one list a batch.

    Args:
        num_samples: size of the dataset.
        batch_size: samples per batch (per rank), at least 2 (a misaligned row needs a
            partner).
        shuffle: a new random order every epoch; ``False`` keeps dataset order (uniform
            policy only).
        seed: base seed of the order.
        drop_last: drop a final incomplete batch. When kept, a final batch of one sample
            (which could not be misaligned) is folded into the batch before it, so every
            sample still appears exactly once per epoch (see :func:`batch_bounds`).
        epoch: the shared epoch tensor (see :func:`shared_epoch`); one is made if omitted.
        policy: ``"uniform"`` (default, the paper), ``"hard"`` or ``"weak_modality"``
            (experimental, need ``stats``), or ``"prune"`` (needs ``stats``; a
            :class:`~midas_data.feedback.prune.PrunePolicy` instance sets its options).
        num_epochs: ``policy="prune"`` given as a string: the training's epochs (its last
            eighth is trained on the full data); the other options at their defaults.
        stats: the :class:`~midas_data.feedback.stats.StatsTable` the prioritised policies read.
        floor: share of every prioritised epoch drawn uniformly, in ``(0, 1]``: each sample
            is expected at least ``floor`` times per epoch and importance weights stay at or
            below ``1 / floor``. ``1`` gives the uniform plan.
        weak_modality: for ``"weak_modality"``: the modality (name or index) to favour;
            ``None`` picks the weak one from the table at every epoch.
        num_replicas, rank: split every global plan into ``num_replicas`` disjoint shares
            and yield share ``rank`` (plain DDP loops). Leave at ``1, 0`` (the global
            sampler) when the framework shards batches itself (Accelerate).
        num_shards: global sampler only: how many ranks a framework deals the batches out
            to, round-robin. The batches are then ordered so that each rank gets exactly the
            share the rank-aware sampler would give it: the same number of batches on every
            rank and each sample once per epoch, with no framework padding. ``None``
            (default): the ``torch.distributed`` world size, or Accelerate's process count
            when Accelerate wraps this sampler.
        sampler: the distributed sampler a trainer hands over when it re-creates this batch
            sampler to shard it (PyTorch Lightning with ``use_distributed_sampler=True``): its
            ``num_replicas`` and ``rank`` split the global plan as ``num_replicas``/``rank``
            would; its own order is not used. A sampler already split by rank must agree.

    Epochs advance by themselves: a new iteration plans the next epoch, as a shuffling
    ``DataLoader`` does, when the last one counted as an epoch: it delivered at least two
    batches or ran to its end. After one abandoned with zero or one batch (a peek at the
    first batch) the same epoch is planned again, with the same plan. ``midas_loader``
    counts the batches the caller received; iterated otherwise, the batches this sampler
    yielded count. :meth:`set_epoch` since the last iteration always wins (resume,
    Lightning, Accelerate). :class:`~midas_data.feedback.epochs.EpochCursor` keeps the count.

    The plan is made when an epoch's iterator is created, from a snapshot of the stats
    table at that moment: updates made during an epoch shape the next epoch's plan.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        epoch: torch.Tensor | None = None,
        policy: str | PrunePolicy = "uniform",
        stats: StatsTable | None = None,
        floor: float = 0.2,
        weak_modality: str | int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        num_shards: int | None = None,
        sampler: Any = None,
        num_epochs: int | None = None,
    ) -> None:
        prune = prune_policy_of(policy, num_epochs)
        policy_arg, policy = policy, ("prune" if prune is not None else policy)
        if sampler is not None:
            num_replicas, rank = replicas_of(sampler, num_replicas, rank)
        if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
            raise TypeError(
                f"num_samples: expected the dataset size as an int, got {type(num_samples).__name__}. "
                "(a trainer re-creating this batch sampler passes its distributed sampler as sampler=...)"
            )
        if num_samples <= 0:
            raise ValueError(f"num_samples: expected a positive dataset size, got {num_samples}")
        if batch_size < 2:
            raise ValueError(
                f"batch_size: expected at least 2, got {batch_size}; a misaligned sample takes a modality "
                "from another sample of the same batch"
            )
        if policy not in SAMPLER_POLICIES:
            raise ValueError(f"policy: expected one of {SAMPLER_POLICIES} or a PrunePolicy, got {policy!r}")
        if policy != "uniform":
            if stats is None:
                raise ValueError(f"policy={policy!r} reads per-sample statistics: pass stats=StatsTable(...)")
            if not shuffle:
                raise ValueError(f"policy={policy!r} draws samples at random; it needs shuffle=True")
        if stats is not None:
            if not isinstance(stats, StatsTable):
                raise TypeError(f"stats: expected a StatsTable, got {type(stats).__name__}")
            if stats.num_samples != num_samples:
                raise ValueError(f"stats: the table has {stats.num_samples} rows but the dataset {num_samples} samples")
        if not (isinstance(floor, (int, float)) and 0.0 < float(floor) <= 1.0):
            raise ValueError(f"floor: expected a share in (0, 1], got {floor!r}")
        if not (isinstance(num_replicas, int) and num_replicas >= 1):
            raise ValueError(f"num_replicas: expected a positive int, got {num_replicas!r}")
        if not (isinstance(rank, int) and 0 <= rank < num_replicas):
            raise ValueError(f"rank: expected an int in [0, {num_replicas}), got {rank!r}")
        if num_shards is not None:
            if not (isinstance(num_shards, int) and num_shards >= 1):
                raise ValueError(f"num_shards: expected a positive int or None, got {num_shards!r}")
            if num_shards > 1 and num_replicas > 1:
                raise ValueError("num_shards: only for the global sampler (num_replicas=1); this one is split by rank")
        self.num_samples = int(num_samples)
        self.max_batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch_tensor = epoch if epoch is not None else shared_epoch()
        self.cursor = EpochCursor(self.epoch_tensor)
        self.policy = policy
        self.prune = prune
        self._upcoming: tuple[tuple[int, int], EpochPlan] | None = None
        self._in_pass = False
        self.stats = stats
        self.floor = float(floor)
        self.weak_modality = weak_modality
        if weak_modality is not None and stats is not None:
            stats.modality_index(weak_modality)  # fail early on an unknown name
        self.num_replicas = num_replicas
        self.rank = rank
        self.fixed_num_shards = num_shards
        self.current_plan: EpochPlan | None = None
        self._slots: torch.Tensor | None = None  # a pass over the rest of an epoch (elastic.py)
        self._slots_from = 0
        self._warned_unsharded = False
        self.sampler = _SampleOrder(self)
        self._set_bounds(self.fixed_num_shards or 1)
        kwargs = {"shuffle": shuffle, "seed": seed, "drop_last": drop_last, "epoch": self.epoch_tensor}
        kwargs.update(policy=policy_arg, stats=stats, floor=floor, weak_modality=weak_modality)
        kwargs.update(num_replicas=num_replicas, rank=rank, num_shards=num_shards)
        if num_epochs is not None:
            kwargs["num_epochs"] = num_epochs
        record_init_arguments(self, (self.num_samples, self.max_batch_size), kwargs)

    def _set_bounds(self, num_shards: int, num_slots: int | None = None) -> None:
        """Batch bounds over ``num_slots`` global slots (default all ``N``; a pruned plan
        has fewer), for ``num_shards`` Accelerate processes or this sampler's rank."""
        self.num_shards = num_shards
        bounds = self._bounds_for(num_slots, self._slots, self._slots_from)
        self._bounds_cache = bounds
        self._uniform_size = {end - begin for begin, end in bounds} == {self.max_batch_size}

    def _bounds_for(self, num_slots: int | None, rest: torch.Tensor | None, rest_from: int) -> list[tuple[int, int]]:
        """This rank's batches of an epoch, or of the ``rest`` of one (ranges of ``rest``)."""
        slots = self.num_samples if num_slots is None else num_slots
        if rest is not None:
            return rest_bounds(rest.numel(), rest_from, self.max_batch_size, self.num_replicas, self.rank)
        if self.num_shards > 1:
            return shard_bounds(slots, self.max_batch_size, self.num_shards, self.drop_last)
        return batch_bounds(slots, self.max_batch_size, self.num_replicas, self.rank, self.drop_last)

    @property
    def batch_size(self) -> int | None:
        """The size of every batch, or ``None`` when sizes vary (a smaller last batch, a
        folded tail). Frameworks read it: Accelerate treats ``None`` as batches of varying
        size and neither pads nor drops them. :attr:`max_batch_size` is the size asked for."""
        self._fit_to_shard()  # Accelerate reads it when it wraps this sampler, before any iteration
        return self.max_batch_size if self._uniform_size else None

    # -- epoch -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self.epoch_tensor)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (otherwise the next iteration advances by one,
        or repeats the epoch after a peek)."""
        self.cursor.pin(checked_epoch(epoch, self.epoch))

    # -- planning --------------------------------------------------------------------------
    def plan_epoch(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one) from the table as it is now."""
        epoch = self.epoch if epoch is None else int(epoch)
        snapshot, weak, updates = None, -1, -1
        if self.stats is not None:
            self.stats.flush()
            updates = self.stats.num_updates
        if self.prune is not None and self.stats is not None:
            key = (epoch, updates)
            if self._upcoming is not None and self._upcoming[0] == key:
                return self._upcoming[1]  # planned when len() was asked; the table is unchanged
            if not self.prune.prunes(epoch):
                return prune_plan(self.num_samples, epoch, self.seed, self.prune, None, updates)
            snapshot = getattr(self.stats, self.prune.score).clone()
            return prune_plan(self.num_samples, epoch, self.seed, self.prune, snapshot, updates)
        if self.policy == "hard" and self.stats is not None:
            snapshot = self.stats.similarity.clone()
        elif self.policy == "weak_modality" and self.stats is not None:
            if self.weak_modality is not None:
                weak = self.stats.modality_index(self.weak_modality)
            else:
                weak = -1 if (chosen := choose_weak_modality(self.stats.confidence)) is None else chosen
            if weak >= 0:
                snapshot = self.stats.confidence[weak].clone()
        return plan_from_snapshot(
            self.num_samples, epoch, self.seed, self.policy, snapshot, self.floor, weak, self.shuffle, updates
        )

    def epoch_order(self) -> torch.Tensor:
        """The ``int64`` global order of the current epoch (sample id per slot)."""
        return self.plan_epoch().order.long()

    def importance_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """``1 / (N p_i)`` of the epoch being iterated for each id, float32 on ``ids.device``.

        Multiply each aligned sample's loss by it (and each misaligned row's by
        :func:`pair_importance_weights`) to keep the expected loss of a prioritised epoch
        equal to that of a uniform one. All ones under ``uniform``.
        """
        if self.current_plan is None:
            if self.policy == "uniform":
                return torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
            raise RuntimeError("importance_weights: no epoch planned yet; iterate the loader first")
        return self.current_plan.importance_weights(ids)

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        self._check_wrapper()
        return self._epoch()

    def _epoch(self) -> Iterator[list[int]]:
        # The epoch is chosen when the first batch is asked for, not when the iterator is
        # made: a DataLoader makes (and drops) an extra iterator when it starts workers,
        # torchdata another one when it restores a state.
        start = self.cursor.begin()
        had_rest = self._slots is not None
        if start.saved is not None:
            plan = self._saved_plan(start.saved)
            self._slots, self._slots_from = start.saved.slots, start.saved.slots_from
        elif start.repeat and self.current_plan is not None and self.current_plan.epoch == start.epoch:
            plan = self.current_plan  # the last pass was a peek: the same order (and rest) again
        else:
            plan = self.plan_epoch(start.epoch)
            self._slots, self._slots_from = None, 0
        self.current_plan = plan
        self._upcoming = None
        if self.prune is not None or had_rest or self._slots is not None:
            self._set_bounds(self.num_shards, plan.order.numel())
        order = plan.order if self._slots is None else plan.order[self._slots]
        self._in_pass = True
        try:
            yield from self._batches(order, start.position)
            self.cursor.finish()
        finally:
            self._in_pass = False

    def _saved_plan(self, saved: SavedPosition) -> EpochPlan:
        """The plan of a checkpointed epoch, from the snapshot it was drawn from."""
        if self.prune is not None:
            return prune_plan(
                self.num_samples, saved.epoch, self.seed, self.prune, saved.snapshot, saved.snapshot_updates
            )
        return plan_from_snapshot(
            self.num_samples,
            saved.epoch,
            self.seed,
            self.policy,
            saved.snapshot,
            self.floor,
            saved.weak_modality,
            self.shuffle,
            saved.snapshot_updates,
        )

    def _check_wrapper(self) -> None:
        """Fit the batches to an Accelerate wrapper, or refuse one that cannot work."""
        check_wrapper(self)

    def _deal_to(self, shard: Any) -> None:
        """Lay the batches out for an Accelerate shard wrapper's round-robin."""
        num_shards = self.fixed_num_shards or int(getattr(shard, "num_processes", 1))
        if num_shards != self.num_shards:
            self._set_bounds(num_shards)

    def _batches(self, order: torch.Tensor, start: int) -> Iterator[list[int]]:
        for begin, end in self._bounds_cache[start:]:
            # Count before yielding: StatefulDataLoader snapshots right after each dispatch.
            self.cursor.advance()
            yield order[begin:end].tolist()

    def __len__(self) -> int:
        """Batches of an epoch (of this rank). Under ``prune`` epochs differ in length:
        during an epoch (its sampler pass begun and not ended) this is that epoch's count;
        between epochs it is the next epoch's, planned now from the table as it is (and
        kept for that epoch while the table does not change), so ask after the last
        update and ``set_epoch`` of the previous epoch (trainers ask at the start of an
        epoch). With DataLoader workers the sampler pass ends when the workers have fetched
        the last batches, a little before the loop sees them."""
        self._fit_to_shard()
        pruned = self.prune is not None and self.stats is not None
        if not self._in_pass and (pruned or self._slots is not None):
            # The next pass's count: a new epoch after a pass over the rest of one is whole again.
            num_slots = self._next_plan().order.numel() if pruned else None
            return len(self._bounds_for(num_slots, *upcoming_rest(self.cursor, self._slots, self._slots_from)))
        return len(self._bounds_cache)

    def _next_plan(self) -> EpochPlan:
        """The plan the next pass will use (``prune``), made once per epoch and table state."""
        epoch, saved = upcoming_epoch(self.cursor)
        if saved is not None:
            return prune_plan(self.num_samples, epoch, self.seed, self.prune, saved.snapshot, saved.snapshot_updates)
        if epoch < 0:
            if self.current_plan is not None:
                return self.current_plan  # the last pass was a peek: the same plan again
            epoch = self.epoch
        plan = self.plan_epoch(epoch)
        self._upcoming = ((plan.epoch, plan.snapshot_updates), plan)
        return plan

    def _fit_to_shard(self) -> None:
        """Order the batches for the Accelerate shard wrapper reading ``len`` or ``batch_size``."""
        wrapper = sharding_wrapper()
        if wrapper is not None and wrapper[0] == "shard" and self.num_replicas == 1:
            self._deal_to(wrapper[1])

    # -- checkpoints -----------------------------------------------------------------------
    def _layout(self, num_shards: int) -> dict[str, Any]:
        """What a saved position depends on: written by :meth:`state_dict`, and checked by
        :meth:`load_state_dict` against this sampler (with the shards it would use now)."""
        return {
            "num_samples": self.num_samples,
            "batch_size": self.max_batch_size,
            "num_replicas": self.num_replicas,
            "num_shards": num_shards,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "policy": self.policy,
            "floor": self.floor,
            "prune": None if self.prune is None else self.prune.as_state(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch plus what the plan was drawn from, in ``O(1)``.

        torchdata's ``StatefulDataLoader`` calls this after every dispatched batch; the
        snapshot tensor is shared by reference, never copied, as it never changes.
        """
        plan = self.current_plan
        position = self.cursor.state
        return {
            "format": _FORMAT,
            "epoch": self.epoch if plan is None else plan.epoch,
            "yielded": position["yielded"] if plan is not None else 0,
            "planned": plan is not None,
            "exhausted": position["exhausted"],
            "snapshot": None if plan is None else plan.snapshot,
            "weak_modality": -1 if plan is None else plan.weak_modality,
            "snapshot_updates": -1 if plan is None else plan.snapshot_updates,
            "elastic_slots": None if plan is None else self._slots,  # never modified: shared, not copied
            "elastic_from": 0 if plan is None else self._slots_from,
            **self._layout(self.num_shards),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume where :meth:`state_dict` was taken: the next iterator yields exactly the
        batches an uninterrupted run would have yielded after it.

        The epoch is restored too (the pair plans of the collate step depend on it). At an
        epoch boundary it behaves as torchdata's ``StatefulDataLoader`` does with its own
        samplers: a state taken after the last batch but before the iterator ended resumes
        with an empty iteration (the rest of that epoch), a state taken after the end resumes
        with the next epoch. ``set_epoch`` to another epoch, before or after (torchdata
        applies a loaded state lazily, at the next ``iter``), discards the saved position.

        The state must come from the same dataset size, batch size, seed, shuffle, drop_last
        and policy; anything else raises ``ValueError`` naming the field. A state saved on
        another number of ranks (``num_replicas``) resumes the rest of its epoch on this
        sampler's ranks: every sample the old ranks had not received, once (lockstep rule and
        layout in ``elastic.py``, docs/distributed.md); Accelerate's process count must match.
        """
        mine = self._layout(self.fixed_num_shards or (world_size() if self.num_replicas == 1 else 1))
        old_replicas = other_replicas(state, mine)
        saved_on = mine if old_replicas is None else {**mine, "num_replicas": old_replicas}
        epoch, yielded, snapshot = checked_state(state, saved_on, self.num_samples)
        rest, rest_from = saved_rest(state, yielded, self.num_samples)
        self.cursor.saved = None
        self._in_pass, self._upcoming = False, None
        self._slots, self._slots_from = None, 0
        self._set_bounds(mine["num_shards"])
        if self.cursor.pinned and self.epoch != epoch:
            return  # set_epoch already chose another epoch (torchdata applies a state lazily)
        if not state.get("planned"):
            self.cursor.pin(epoch)  # as set_epoch, but a checkpoint may take the epoch back: no warning
            return
        # An epoch was under way (or complete): the next iteration continues it, without
        # advancing; the one after it advances if that one counts.
        saved = None
        if not state.get("exhausted"):
            weak, updates = int(state.get("weak_modality", -1)), int(state.get("snapshot_updates", -1))
            saved = SavedPosition(epoch, yielded, snapshot, weak, updates)
            if old_replicas is not None:  # what no old rank received, laid out for these ranks
                num_slots = self.num_samples if self.prune is None else self._saved_plan(saved).order.numel()
                args = (num_slots, self.max_batch_size, self.drop_last, old_replicas, yielded, rest, rest_from)
                rest, rest_from = rest_of_epoch(*args), yielded
            if rest is not None:
                self._bounds_for(None, rest, rest_from)  # raises when too few samples are left
                saved.slots, saved.slots_from = rest, rest_from
                self._slots, self._slots_from = rest, rest_from
                self._set_bounds(mine["num_shards"])
            saved.position = min(yielded, len(self._bounds_cache))
        self.cursor.restore(epoch, saved)


class DistributedMidasBatchSampler(MidasBatchSampler):
    """The rank-aware sampler for plain DDP loops (``torchrun`` + your own loop).

    The same global plan on every rank, each rank yielding its disjoint share, with the
    same number of batches on every rank. ``num_replicas`` and ``rank`` default to
    ``torch.distributed``'s world size and rank. Do not give it to Accelerate, which would
    shard it again (docs/feedback.md says which sampler goes where); Lightning accepts it when
    its ranks agree, but the global sampler is all Lightning needs.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "DistributedMidasBatchSampler: torch.distributed is not initialised; call "
                    "init_process_group first or pass num_replicas= and rank="
                )
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        super().__init__(num_samples, batch_size, num_replicas=num_replicas, rank=rank, **kwargs)
