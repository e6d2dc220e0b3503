"""``MidasIterable`` gives the dataset its epoch from every worker at once: a ``set_epoch``
that reads and then writes a value shared between the workers (as ``datasets``' does)
must still end at the pass's epoch."""

import time

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from midas_data.streaming import MidasBatches, MidasIterable


class SharedEpochRows(IterableDataset):
    """Rows split by worker, each carrying the dataset's epoch as its worker read it; the
    epoch lives in shared memory and ``set_epoch`` updates it the way ``datasets`` does
    (``value += epoch - value``), slowly, so that two workers calling it at once overlap."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        change = epoch - int(self.epoch)
        time.sleep(0.2)
        self.epoch += change

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        seen = int(self.epoch)
        for i in range(worker, self.rows, workers):
            yield {"a": torch.full((3,), float(seen)), "b": torch.zeros(2), "label": i % 3, "id": i}


@pytest.mark.parametrize("persistent", [True, False])
def test_every_worker_reads_the_pass_epoch_when_all_set_it_at_once(persistent):
    stage = MidasBatches(("a", "b"), batch_size=4, id_field="id", window=4)
    dataset = MidasIterable(SharedEpochRows(24), stage)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=persistent)
    for epoch in range(3):  # no set_epoch: each pass is the next epoch
        batches = list(loader)
        assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(24))
        for batch in batches:
            assert batch.epoch == epoch
            assert batch.inputs["a"][:, 0].tolist() == [float(epoch)] * len(batch)
