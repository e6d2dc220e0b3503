"""Streaming sharded data: MIDAS batches from webdataset shards and Hugging Face
``IterableDataset``, with the feedback loop.

``stage.py`` is the stream stage (:class:`MidasBatches`), ``ids.py`` the shard index
(sizes and key -> slot ids) and the tar check for damaged shards, ``balance.py`` equal
work per rank, ``shares.py`` each worker's share of an epoch and the check of what came,
``window.py`` prioritised draws in a bounded window, ``pruning.py`` ``policy="prune"``
within it, ``decode.py`` safe member decoding and the per-sample reader (id and checked
fields), ``faults.py`` what the stage checks and says about bad input, ``hf.py`` the
Hugging Face wrapper and ``writer.py`` the shard writer. webdataset and datasets are imported only where they are
used (``writer.py``, and by your own pipeline code).
"""

from .balance import batch_counts, plan_batches, shard_share, split_sizes, worker_bounds, worker_shards
from .decode import PICKLE_EXTENSIONS, decode_member
from .hf import MidasIterable
from .ids import INDEX_NAME, ShardEntry, ShardIndex, slot_key, tar_damage
from .stage import SKIP_COUNTS, MidasBatches, SkipHandler, WorkerPlace, midas_batches
from .window import draw_window
from .writer import write_shards

__all__ = [
    "MidasBatches",
    "midas_batches",
    "MidasIterable",
    "ShardIndex",
    "ShardEntry",
    "INDEX_NAME",
    "slot_key",
    "tar_damage",
    "write_shards",
    "SkipHandler",
    "SKIP_COUNTS",
    "WorkerPlace",
    "decode_member",
    "PICKLE_EXTENSIONS",
    "draw_window",
    "batch_counts",
    "plan_batches",
    "shard_share",
    "split_sizes",
    "worker_bounds",
    "worker_shards",
]
