"""One storage per batch (packing.py) and the reusable host buffers (buffers.py)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from midas_data import midas_loader
from midas_data.data.buffers import HostBufferPool
from midas_data.data.packing import pack_tensors, stackable


class DictDataset(Dataset):
    """Sample i: audio filled with i, video filled with -i, label i % 4."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i):
        return {"audio": torch.full((3,), float(i)), "video": torch.full((2, 2), -float(i)), "label": i % 4}


def storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


# -- pack_tensors --------------------------------------------------------------------------
def test_packed_entries_are_aligned_views_of_one_storage_with_stacked_values():
    images = [torch.rand(3, 5, 5).permute(0, 2, 1) for _ in range(4)]  # not contiguous
    codes = [torch.randint(0, 9, (7,), dtype=torch.uint8) for _ in range(4)]
    labels = torch.tensor([3, 1, 4, 1])
    half = torch.rand(4, 3).half()
    packed = pack_tensors({"image": images, "codes": codes, "labels": labels, ("input", "half"): half})
    assert torch.equal(packed["image"], torch.stack(images))
    assert torch.equal(packed["codes"], torch.stack(codes))
    assert torch.equal(packed["labels"], labels) and packed["labels"].dtype == torch.int64
    assert torch.equal(packed["input", "half"], half)
    assert len({storage_ptr(t) for t in packed.values()}) == 1
    assert all(t.is_contiguous() and t.data_ptr() % 64 == 0 for t in packed.values())


def test_packing_unequal_shapes_raises_like_stack():
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        pack_tensors({"x": [torch.zeros(2), torch.zeros(3)]})


def test_only_plain_cpu_tensors_are_packed():
    assert stackable([torch.zeros(2)])
    assert not stackable([np.zeros(2)])
    assert not stackable([torch.zeros(2, requires_grad=True)])
    assert not stackable([torch.zeros(2).to_sparse()])
    assert not stackable([])


def test_a_worker_packs_into_shared_memory_and_sends_one_segment():
    batches = DataLoader(
        list(range(6)),
        batch_size=3,
        num_workers=1,
        collate_fn=lambda xs: pack_tensors({"x": [torch.full((2,), float(x)) for x in xs], "n": torch.tensor(xs)}),
    )
    for packed in batches:
        assert packed["x"].is_shared()
        assert storage_ptr(packed["x"]) == storage_ptr(packed["n"])
        assert packed["x"][:, 0].tolist() == packed["n"].tolist()


def test_a_worker_sends_a_midas_batch_as_one_segment_and_small_fields_get_their_own_memory():
    loader = midas_loader(DictDataset(), ("audio", "video"), batch_size=8, num_workers=2)
    batch = next(iter(loader))
    assert batch.inputs["audio"].is_shared()
    assert storage_ptr(batch.inputs["audio"]) == storage_ptr(batch.inputs["video"])
    # Labels, ids and plan crossed in the same segment but are copied out on arrival, so
    # that keeping them does not keep the inputs alive.
    for small in (batch.labels, batch.ids, batch.plan):
        assert not small.is_shared() and storage_ptr(small) != storage_ptr(batch.inputs["audio"])
    assert batch.inputs["audio"][:, 0].tolist() == batch.ids.float().tolist()
    assert batch.labels.tolist() == [i % 4 for i in batch.ids.tolist()]


def test_in_the_main_process_modalities_are_collated_on_their_own():
    batch = next(iter(midas_loader(DictDataset(), ("audio", "video"), batch_size=8, num_workers=0)))
    assert storage_ptr(batch.inputs["audio"]) != storage_ptr(batch.inputs["video"])
    assert storage_ptr(batch.inputs["audio"]) != storage_ptr(batch.labels)
    assert batch.inputs["audio"][:, 0].tolist() == batch.ids.float().tolist()


def double(values):
    return torch.stack(values) * 2


def test_modalities_with_their_own_collate_stay_separate():
    loader = midas_loader(
        DictDataset(), ("audio", "video"), batch_size=8, num_workers=1, modality_collate={"video": double}
    )
    batch = next(iter(loader))
    assert storage_ptr(batch.inputs["video"]) != storage_ptr(batch.inputs["audio"])
    assert torch.equal(batch.inputs["video"][:, 0, 0], -2 * batch.ids.float())


# -- HostBufferPool ------------------------------------------------------------------------
def test_a_dropped_buffer_is_reused_and_a_held_one_is_not():
    pool = HostBufferPool()
    first = pool.empty((4, 3), torch.float32)
    first.fill_(1.0)
    address = first.data_ptr()
    second = pool.empty((4, 3), torch.float32)
    assert second.data_ptr() != address  # `first` is still held
    assert torch.equal(first, torch.ones(4, 3))
    del first
    assert pool.empty((4, 3), torch.float32).data_ptr() == address
    # Another shape that fits (padded inputs): the front of the same free buffer.
    assert pool.empty((2, 5), torch.float32).data_ptr() == address
    assert pool.empty((4, 3), torch.float64).data_ptr() != address  # another dtype
    assert pool.empty((2, 2), torch.float32).data_ptr() != address  # under half: not worth 12 elements


def test_pool_of_variable_shapes_stays_bounded():
    pool = HostBufferPool(capacity=64, max_bytes=1000)
    for length in range(1, 60):  # every batch padded to another length, none kept by the caller
        out = pool.empty((length, 4), torch.float32)
        assert out.shape == (length, 4)
    assert pool.nbytes <= 1000
    assert pool.empty((300, 4), torch.float32).shape == (300, 4)  # larger than the cap: not pooled
    assert pool.nbytes <= 1000


@pytest.mark.parametrize("holder", ["view", "numpy", "autograd"])
def test_anything_sharing_the_memory_keeps_a_buffer_from_reuse(holder):
    pool = HostBufferPool()
    buffer = pool.empty((4, 3), torch.float32).normal_()
    address = buffer.data_ptr()
    keep: object
    if holder == "view":
        keep = buffer[1:]
    elif holder == "numpy":
        keep = buffer.numpy()
    else:
        keep = (torch.nn.Linear(3, 2)(buffer) ** 2).sum()  # the linear layer saves its input
    del buffer
    assert pool.empty((4, 3), torch.float32).data_ptr() != address
    if holder == "autograd":
        keep.backward()  # type: ignore[attr-defined]
    del keep
    assert pool.empty((4, 3), torch.float32).data_ptr() == address


def test_a_buffer_sent_to_another_process_is_never_reused():
    pool = HostBufferPool()
    buffer = pool.empty((4, 3), torch.float32)
    buffer.share_memory_()  # what pickling for a torch.multiprocessing queue does
    address = buffer.data_ptr()
    del buffer
    assert pool.empty((4, 3), torch.float32).data_ptr() != address


def test_pool_capacity():
    pool = HostBufferPool(capacity=2)
    held = [pool.empty((2,), torch.float32) for _ in range(5)]
    assert len(pool) == 2 and len(held) == 5
    assert HostBufferPool(capacity=0).empty((2,), torch.float32).shape == (2,)
    with pytest.raises(ValueError, match="capacity"):
        HostBufferPool(capacity=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        HostBufferPool(max_bytes=-1)


def test_misaligned_inputs_of_a_held_batch_survive_later_batches():
    loader = midas_loader(DictDataset(), ("audio", "video"), batch_size=8, mode="input", seed=3)
    batches = list(loader)
    kept = [{m: t.clone() for m, t in b.misaligned_inputs.items()} for b in batches]  # all held at once
    for batch, copy in zip(batches, kept):
        for m in ("audio", "video"):
            assert torch.equal(batch.misaligned_inputs[m], copy[m])
            assert torch.equal(batch.misaligned_inputs[m], batch.inputs[m][batch.plan[:, ("audio", "video").index(m)]])


def test_a_batch_that_cannot_be_packed_is_collated_modality_by_modality(monkeypatch):
    import midas_data.data.collate as collate_module

    real = collate_module.pack_tensors

    def refuse_inputs(entries):
        if any(isinstance(key, tuple) for key in entries):
            raise RuntimeError("cannot pack these inputs")
        return real(entries)

    monkeypatch.setattr(collate_module, "pack_tensors", refuse_inputs)  # inherited by forked workers
    loader = midas_loader(
        DictDataset(), ("audio", "video"), batch_size=8, num_workers=1, multiprocessing_context="fork"
    )
    batch = next(iter(loader))
    assert storage_ptr(batch.inputs["audio"]) != storage_ptr(batch.inputs["video"])
    assert batch.inputs["audio"][:, 0].tolist() == batch.ids.float().tolist()
    assert batch.inputs["video"][:, 0, 0].tolist() == (-batch.ids.float()).tolist()
