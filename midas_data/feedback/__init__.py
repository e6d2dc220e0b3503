"""The feedback loop: per-sample statistics from the training step back to the sampler.

``storage.py`` owns the shared memory (or file) that workers map, ``columns.py`` packs a
step's statistics, ``stats.py`` is the table with its validated updates and checkpoints,
``sync.py`` all-gathers statistics across ranks, ``planning.py`` turns a stats snapshot
into an epoch plan (pure functions) and ``sampler.py`` serves that plan as index batches.
Nothing here builds batches or knows the objective.
"""

from .columns import STATISTICS, pack_statistics
from .planning import POLICIES, EpochPlan, plan_from_snapshot
from .sampler import DistributedMidasBatchSampler, MidasBatchSampler, shared_epoch
from .stats import STATS_DTYPES, StatsTable, bytes_per_sample
from .storage import SharedBuffer, StatsStorageWarning
from .sync import all_gather_rows, is_distributed, sync_stats

__all__ = [
    "StatsTable",
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
    "plan_from_snapshot",
    "shared_epoch",
    "sync_stats",
    "all_gather_rows",
    "is_distributed",
]
