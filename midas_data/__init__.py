"""midas_data: MIDAS misalignment-based augmentation in PyTorch data loading.

The core imports with torch and numpy alone. See ``midas_data.functional`` for the math,
``MidasObjective`` for the loss and ``MidasBatch`` for what a training step consumes.
"""

from . import functional
from .batch import MidasBatch
from .collate import MidasCollate
from .controller import WeakModalityController
from .dataset import MidasDataset
from .distributed import sync_stats
from .errors import MidasDataError
from .loader import midas_loader, set_epoch
from .models import LateFusionClassifier, MidasModel, MultimodalOutput
from .objective import MidasObjective
from .sampler import DistributedMidasBatchSampler, EpochPlan, MidasBatchSampler, pair_importance_weights
from .stats import StatsStorageWarning, StatsTable

__version__ = "0.1.0"

__all__ = [
    "functional",
    "MidasBatch",
    "MidasCollate",
    "MidasDataset",
    "MidasDataError",
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
