"""The data layer: MidasDataset, MidasCollate, MidasBatchSampler and midas_loader."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from midas_data import (
    LateFusionClassifier,
    MidasBatch,
    MidasCollate,
    MidasDataError,
    MidasDataset,
    MidasObjective,
    midas_loader,
    set_epoch,
)
from midas_data.feedback.sampler import MidasBatchSampler

NUM_CLASSES = 4


class DictDataset(Dataset):
    """Sample i: audio filled with i, video filled with -i, label i % 4."""

    def __init__(self, n: int = 50, reads: list | None = None) -> None:
        self.n, self.reads = n, reads

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if self.reads is not None:
            self.reads.append(i)
        return {"audio": torch.full((3,), float(i)), "video": torch.full((2, 2), -float(i)), "label": i % NUM_CLASSES}


class TupleDataset(DictDataset):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        return item["audio"].numpy(), item["video"], np.int64(item["label"])


def epochs_of(loader, epochs=2):
    out = []
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        out.append([(b.ids.tolist(), b.plan.tolist()) for b in loader])
    return out


def test_dict_items_make_midas_batches():
    loader = midas_loader(DictDataset(), ("audio", "video"), batch_size=8)
    batch = next(iter(loader))
    assert isinstance(batch, MidasBatch)
    assert batch.ids.dtype == torch.int64 and batch.labels.dtype == torch.int64
    assert torch.equal(batch.inputs["audio"][:, 0], batch.ids.float())
    assert torch.equal(batch.labels, batch.ids % NUM_CLASSES)
    assert batch.plan.shape == (16, 2) and batch.misaligned_inputs is None
    assert (batch.labels[batch.plan[:, 0]] != batch.labels[batch.plan[:, 1]]).all()


def test_tuple_items_with_named_positions():
    loader = midas_loader(TupleDataset(), {"audio": 0, "video": 1}, 2, batch_size=8, mode="input")
    batch = next(iter(loader))
    assert batch.modalities == ("audio", "video")
    assert torch.equal(batch.inputs["audio"][:, 0], batch.ids.float())
    # Misaligned inputs are the aligned ones recombined by the plan.
    assert torch.equal(batch.misaligned_inputs["audio"], batch.inputs["audio"][batch.plan[:, 0]])
    assert torch.equal(batch.misaligned_inputs["video"], batch.inputs["video"][batch.plan[:, 1]])


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker")
@pytest.mark.parametrize("num_workers", [2, 4])
def test_same_batches_and_plans_for_any_worker_count(num_workers):
    reference = epochs_of(midas_loader(DictDataset(), ("audio", "video"), batch_size=8, seed=7))
    got = epochs_of(midas_loader(DictDataset(), ("audio", "video"), batch_size=8, seed=7, num_workers=num_workers))
    assert got == reference
    assert reference[0] != reference[1]


def test_persistent_workers_follow_set_epoch():
    reference = epochs_of(midas_loader(DictDataset(), ("audio", "video"), batch_size=8, seed=1), epochs=3)
    persistent = midas_loader(
        DictDataset(), ("audio", "video"), batch_size=8, seed=1, num_workers=2, persistent_workers=True
    )
    assert epochs_of(persistent, epochs=3) == reference


def test_plans_change_with_epoch_even_without_shuffle():
    loader = midas_loader(DictDataset(), ("audio", "video"), batch_size=10, shuffle=False)
    first, second = epochs_of(loader)
    assert [ids for ids, _ in first] == [ids for ids, _ in second]
    assert [plan for _, plan in first] != [plan for _, plan in second]


def test_every_sample_once_per_epoch_and_singleton_tail_folded():
    loader = midas_loader(DictDataset(49), ("audio", "video"), batch_size=8)
    for epoch in epochs_of(loader):
        ids = [i for batch_ids, _ in epoch for i in batch_ids]
        assert sorted(ids) == list(range(49))
        assert min(len(batch_ids) for batch_ids, _ in epoch) >= 2
    assert len(loader) == 6


def test_drop_last():
    loader = midas_loader(DictDataset(50), ("audio", "video"), batch_size=8, drop_last=True)
    sizes = [len(b) for b in loader]
    assert sizes == [8] * 6


def test_input_level_reads_each_sample_once():
    reads: list[int] = []
    loader = midas_loader(DictDataset(40, reads), ("audio", "video"), batch_size=8, mode="input")
    batches = list(loader)
    assert sorted(reads) == list(range(40))
    assert sum(b.misaligned_inputs["audio"].shape[0] for b in batches) == 80


def test_wrapper_forwards_getitems():
    calls: list[list[int]] = []

    class Batched(DictDataset):
        def __getitems__(self, indices):
            calls.append(list(indices))
            return [DictDataset.__getitem__(self, i) for i in indices]

    list(midas_loader(Batched(16), ("audio", "video"), batch_size=8))
    assert len(calls) == 2 and all(len(c) == 8 for c in calls)


def test_objective_consumes_a_loader_batch():
    torch.manual_seed(0)
    model = LateFusionClassifier(
        {"audio": torch.nn.Linear(3, 5), "video": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))},
        {"audio": 5, "video": 5},
        NUM_CLASSES,
    )
    objective = MidasObjective(NUM_CLASSES, ("audio", "video"))
    for mode in ("feature", "input"):
        batch = next(iter(midas_loader(DictDataset(), ("audio", "video"), batch_size=8, mode=mode, seed=3)))
        output = model(batch.inputs)
        if mode == "feature":
            loss_f, _ = objective(output, batch, fuse=model.fuse, update_alpha=False)
        else:
            mis = model(batch.misaligned_inputs).fusion_logits
            loss_i, _ = objective(output, batch, misaligned_logits=mis, update_alpha=False)
    assert torch.allclose(loss_f, loss_i, atol=1e-6)


def test_numpy_and_token_dict_modalities_with_custom_collate():
    class Text(Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return {
                "image": np.full((2,), i, dtype=np.float32),
                "text": {"input_ids": torch.arange(1 + i % 3)},
                "label": i % 3,
            }

    def pad(items):
        width = max(len(t["input_ids"]) for t in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for row, t in enumerate(items):
            ids[row, : len(t["input_ids"])] = t["input_ids"]
            mask[row, : len(t["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask}

    loader = midas_loader(Text(), ("image", "text"), batch_size=6, mode="input", modality_collate={"text": pad})
    batch = next(iter(loader))
    assert batch.inputs["text"]["input_ids"].shape[0] == 6
    mis = batch.misaligned_inputs["text"]
    assert torch.equal(mis["attention_mask"], batch.inputs["text"]["attention_mask"][batch.plan[:, 1]])
    moved = batch.to("cpu")
    assert torch.equal(moved.inputs["text"]["input_ids"], batch.inputs["text"]["input_ids"])


def test_pin_memory_loader_runs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no accelerator here: DataLoader turns pinning off
        loader = midas_loader(DictDataset(), ("audio", "video"), batch_size=8, pin_memory=True, num_workers=2)
        assert len(list(loader)) == len(loader)


def test_spawn_workers():
    loader = midas_loader(
        DictDataset(24), ("audio", "video"), batch_size=8, num_workers=2, multiprocessing_context="spawn", seed=2
    )
    reference = midas_loader(DictDataset(24), ("audio", "video"), batch_size=8, seed=2)
    assert epochs_of(loader, 1) == epochs_of(reference, 1)


def test_midas_collate_in_a_hand_built_loader():
    dataset = MidasDataset(DictDataset())
    sampler = MidasBatchSampler(len(dataset), 10, seed=5)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=MidasCollate(("audio", "video"), epoch=sampler.epoch_tensor)
    )
    assert sum(len(b) for b in loader) == 50


# -- bad input ---------------------------------------------------------------------------
class Broken(DictDataset):
    def __init__(self, bad_id, kind):
        super().__init__(16)
        self.bad_id, self.kind = bad_id, kind

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i == self.bad_id:
            if self.kind == "missing":
                del item["video"]
            elif self.kind == "float_label":
                item["label"] = 1.5
            elif self.kind == "shape":
                item["audio"] = torch.zeros(5)
            elif self.kind == "no_label":
                del item["label"]
        return item


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", r"sample 5: has no modality 'video'"),
        ("float_label", r"sample 5: label 'label' is 1.5 \(float\); expected an integer class id"),
        ("shape", r"sample 5: modality 'audio' has shape \(5,\) but sample \d+ has \(3,\)"),
        ("no_label", r"sample 5: has no label 'label'"),
    ],
)
def test_bad_items_name_sample_and_key(kind, message, num_workers):
    loader = midas_loader(Broken(5, kind), ("audio", "video"), batch_size=16, num_workers=num_workers)
    with pytest.raises(MidasDataError, match=message):
        list(loader)


def test_empty_dataset_and_batch_size_one():
    with pytest.raises(MidasDataError, match="length 0"):
        midas_loader(DictDataset(0), ("audio", "video"), batch_size=8)
    with pytest.raises(ValueError, match="batch_size: expected at least 2"):
        midas_loader(DictDataset(), ("audio", "video"), batch_size=1)


def test_bad_configuration():
    with pytest.raises(ValueError, match="at least two modality keys"):
        MidasCollate(("audio",))
    with pytest.raises(ValueError, match="mode"):
        MidasCollate(("audio", "video"), mode="late")
    with pytest.raises(TypeError, match="sets 'collate_fn' itself"):
        midas_loader(DictDataset(), ("audio", "video"), batch_size=8, collate_fn=list)
    with pytest.raises(MidasDataError, match="sample_id, item"):
        MidasCollate(("audio", "video"))([{"audio": 1}])


def test_single_class_batch_is_reported_not_filled():
    class OneClass(DictDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["label"] = 2
            return item

    batch = next(iter(midas_loader(OneClass(8), ("audio", "video"), batch_size=8)))
    assert batch.plan.shape == (0, 2) and batch.num_unpaired == 16


def test_worker_side_and_consumer_side_materialisation_agree():
    lazy = midas_loader(DictDataset(), ("audio", "video"), batch_size=8, mode="input", num_workers=2, seed=9)
    eager = midas_loader(
        DictDataset(), ("audio", "video"), batch_size=8, mode="input", num_workers=2, seed=9, materialize_in_worker=True
    )
    for a, b in zip(lazy, eager):
        assert a._misaligned is None and b._misaligned is not None  # where the rows were built
        for m in ("audio", "video"):
            assert torch.equal(a.misaligned_inputs[m], b.misaligned_inputs[m])


def test_pin_memory_pins_every_tensor(monkeypatch):
    pinned = []

    def fake_pin(self, *args, **kwargs):  # no accelerator here: record instead of pinning
        pinned.append(tuple(self.shape))
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = next(iter(midas_loader(DictDataset(), ("audio", "video"), batch_size=8, mode="input")))
    _ = batch.misaligned_inputs
    out = batch.pin_memory()
    # audio, video, labels, ids, plan and the two materialised misaligned inputs
    assert sorted(pinned) == sorted([(8, 3), (8, 2, 2), (8,), (8,), (16, 2), (16, 3), (16, 2, 2)])
    assert torch.equal(out.misaligned_inputs["video"], batch.misaligned_inputs["video"])


def test_pin_memory_pins_tensors_in_lists_tuples_and_nested_mappings(monkeypatch):
    from dataclasses import replace

    pinned_copies = []

    def fake_pin(self, *args, **kwargs):  # no accelerator needed: a marked copy stands for pinned memory
        copy = self.clone()
        pinned_copies.append(copy)
        return copy

    def is_pinned_copy(value):
        return any(value is copy for copy in pinned_copies)

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = next(iter(midas_loader(DictDataset(), ("audio", "video"), batch_size=8)))
    crops = [torch.zeros(8, 2), torch.ones(8, 3)]
    batch = replace(
        batch,
        extras={
            "crops": crops,
            "pair": (torch.zeros(8), torch.ones(8)),
            "nested": {"masks": [torch.ones(8, 4, dtype=torch.bool)], "weight": torch.ones(8)},
            "paths": ["a.wav"] * 8,
        },
    )
    out = batch.pin_memory().extras
    assert isinstance(out["crops"], list) and isinstance(out["pair"], tuple)
    assert all(is_pinned_copy(t) for t in [*out["crops"], *out["pair"], *out["nested"]["masks"]])
    assert is_pinned_copy(out["nested"]["weight"]) and out["paths"] == ["a.wav"] * 8
    assert torch.equal(out["crops"][1], crops[1]) and not is_pinned_copy(crops[1])
