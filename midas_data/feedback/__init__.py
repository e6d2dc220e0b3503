"""The feedback loop: per-sample statistics from the training step back to the sampler.

``storage.py`` owns the shared memory (or file) that workers map, ``columns.py`` packs a
step's statistics, ``stats.py`` is the table with its validated updates and checkpoints,
``sync.py`` all-gathers statistics across ranks, ``planning.py`` turns a stats snapshot
into an epoch plan (pure functions), ``prune.py`` makes the plans of ``policy="prune"``,
``sampler.py`` serves a plan as index batches and ``readout.py`` reads the table for
people (suspicious samples, CSV, pandas), ``history.py`` averages a score over epochs.
Nothing here builds batches or knows the objective.
"""

from .columns import STATISTICS, pack_statistics
from .history import ScoreHistory
from .planning import POLICIES, EpochPlan, plan_from_snapshot
from .prune import PrunePolicy, prune_plan
from .sampler import SAMPLER_POLICIES, DistributedMidasBatchSampler, MidasBatchSampler, shared_epoch
from .stats import STATS_DTYPES, StatsTable, bytes_per_sample
from .storage import SharedBuffer, StatsStorageWarning
from .sync import all_gather_rows, is_distributed, sync_stats

__all__ = [
    "StatsTable",
    "ScoreHistory",
    "StatsStorageWarning",
    "SharedBuffer",
    "STATS_DTYPES",
    "STATISTICS",
    "bytes_per_sample",
    "pack_statistics",
    "MidasBatchSampler",
    "DistributedMidasBatchSampler",
    "EpochPlan",
    "POLICIES",
    "SAMPLER_POLICIES",
    "PrunePolicy",
    "prune_plan",
    "plan_from_snapshot",
    "shared_epoch",
    "sync_stats",
    "all_gather_rows",
    "is_distributed",
]
