"""Worker-side batch building: from loaded samples to a :class:`MidasBatch`.

``dataset.py`` tags each item with its sample id, ``collate.py`` (run inside the
DataLoader workers) validates the items, collates every modality once and plans the
misaligned rows, ``batch.py`` is what a training step consumes, ``packing.py`` sends a
batch from a worker as one shared-memory segment and ``buffers.py`` reuses host memory
for input-level gathers. Nothing here reads the stats table or knows about ranks.
"""

from .batch import MidasBatch, move_to, take_rows
from .buffers import HostBufferPool, host_buffers
from .collate import MODES, MidasCollate, plan_seed
from .dataset import MidasDataset
from .packing import pack_tensors, stackable

__all__ = [
    "MidasBatch",
    "MidasCollate",
    "MidasDataset",
    "MODES",
    "plan_seed",
    "take_rows",
    "move_to",
    "pack_tensors",
    "stackable",
    "HostBufferPool",
    "host_buffers",
]
