"""Hugging Face ``datasets.Dataset`` through the MIDAS loader."""

import numpy as np
import pytest
import torch

from midas_data import midas_loader, set_epoch

datasets = pytest.importorskip("datasets")


def make_hf(n: int = 40):
    rng = np.random.default_rng(0)
    return datasets.Dataset.from_dict(
        {
            "audio": rng.standard_normal((n, 6)).astype(np.float32).tolist(),
            "image": rng.standard_normal((n, 2, 3)).astype(np.float32).tolist(),
            "label": [i % 5 for i in range(n)],
        }
    )


def collect(loader, epochs=2):
    out = []
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        out.append([(b.ids.tolist(), b.plan.tolist(), b.inputs["audio"].clone()) for b in loader])
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_with_format_torch(num_workers):
    hf = make_hf().with_format("torch")
    loader = midas_loader(hf, ("audio", "image"), batch_size=8, num_workers=num_workers, mode="input")
    batches = list(loader)
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(40))
    b = batches[0]
    assert b.inputs["image"].shape == (8, 2, 3)
    expected = hf[b.ids.tolist()]["audio"]
    assert torch.allclose(b.inputs["audio"], expected)
    assert torch.equal(b.misaligned_inputs["image"], b.inputs["image"][b.plan[:, 1]])


def test_getitems_of_the_hf_dataset_is_used(monkeypatch):
    hf = make_hf().with_format("torch")
    calls = []
    original = type(hf).__getitems__

    def spy(self, keys):
        calls.append(len(keys))
        return original(self, keys)

    monkeypatch.setattr(type(hf), "__getitems__", spy)
    list(midas_loader(hf, ("audio", "image"), batch_size=8))
    assert calls == [8] * 5


def test_with_transform_and_worker_determinism():
    def to_tensors(batch):
        return {
            "audio": [torch.tensor(a) * 2 for a in batch["audio"]],
            "image": [torch.tensor(x) for x in batch["image"]],
            "label": batch["label"],
        }

    hf = make_hf().with_transform(to_tensors)
    serial = collect(midas_loader(hf, ("audio", "image"), batch_size=8, seed=4))
    parallel = collect(midas_loader(hf, ("audio", "image"), batch_size=8, seed=4, num_workers=2))
    assert [[(i, p) for i, p, _ in e] for e in serial] == [[(i, p) for i, p, _ in e] for e in parallel]
    raw = torch.tensor(make_hf()[serial[0][0][0]]["audio"])
    assert torch.allclose(serial[0][0][2], raw * 2)
