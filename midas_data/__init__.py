"""midas_data: MIDAS misalignment-based augmentation in PyTorch data loading.

The core imports with torch and numpy alone. See ``midas_data.functional`` for the math,
``MidasObjective`` for the loss, ``midas_data.data`` for the worker-side batches and
``midas_data.feedback`` for the stats table and the sampler; ``docs/layout.md`` maps
the package.
"""

from . import functional
from .controller import WeakModalityController
from .data import MidasBatch, MidasCollate, MidasDataset
from .errors import MidasDataError, MidasDataWarning
from .feedback import (
    DistributedMidasBatchSampler,
    EpochPlan,
    MidasBatchSampler,
    StatsStorageWarning,
    StatsTable,
    sync_stats,
)
from .functional import pair_importance_weights
from .loader import midas_loader, set_epoch
from .models import LateFusionClassifier, MidasModel, MultimodalOutput
from .objective import MidasObjective

__version__ = "0.1.0"

__all__ = [
    "functional",
    "MidasBatch",
    "MidasCollate",
    "MidasDataset",
    "MidasDataError",
    "MidasDataWarning",
    "MidasBatchSampler",
    "DistributedMidasBatchSampler",
    "EpochPlan",
    "pair_importance_weights",
    "StatsTable",
    "StatsStorageWarning",
    "sync_stats",
    "midas_loader",
    "set_epoch",
    "WeakModalityController",
    "LateFusionClassifier",
    "MidasModel",
    "MultimodalOutput",
    "MidasObjective",
]
