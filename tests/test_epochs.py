"""Epochs, wrappers and resume in one process: epochs advance by themselves, an explicit
epoch wins, the objective follows the batch's epoch, the fusion head is reached through
wrappers, and a resumed loader behaves as torchdata's own at an epoch boundary."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from many_processes import MODALITIES, NUM_CLASSES, SyntheticPairs, make_model
from torch import nn

from midas_data import MidasDataWarning, MidasObjective, midas_loader, set_epoch
from midas_data.feedback.planning import batch_bounds
from midas_data.feedback.sampler import MidasBatchSampler
from midas_data.feedback.sharding import shard_bounds
from midas_data.models import unwrap_model

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")


def train(explicit_epochs: bool, epochs: int = 3, num_workers: int = 0):
    """The README loop, with or without the set_epoch calls."""
    dataset = SyntheticPairs()
    model = make_model(seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = midas_loader(dataset, MODALITIES, batch_size=16, seed=2, num_workers=num_workers)
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    record = []
    for epoch in range(epochs):
        if explicit_epochs:
            set_epoch(loader, epoch)
            objective.set_epoch(epoch)
        for batch in loader:
            loss, info = objective(model(batch.inputs), batch, model=model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            record.append(
                (epoch, batch.epoch, batch.ids.tolist(), batch.plan.tolist(), loss.item(), info["num_misaligned"])
            )
    return record, objective.alpha.tolist()


def test_a_loop_without_set_epoch_trains_the_same_as_one_with_it():
    with_calls, alpha_with = train(explicit_epochs=True)
    without, alpha_without = train(explicit_epochs=False)
    assert without == with_calls and alpha_without == alpha_with
    assert [r[1] for r in without] == [r[0] for r in without]  # every batch knows its epoch
    assert all(r[5] == 0 for r in without if r[0] == 0) and any(r[5] > 0 for r in without if r[0] == 2)
    assert len({tuple(i for r in without if r[0] == e for i in r[2]) for e in range(3)}) == 3


def test_workers_advance_one_epoch_per_iteration():
    # A DataLoader with workers makes an extra sampler iterator when it starts: still one epoch.
    serial, _ = train(explicit_epochs=False, epochs=2)
    parallel, _ = train(explicit_epochs=False, epochs=2, num_workers=2)
    assert [r[:4] for r in parallel] == [r[:4] for r in serial]


def test_explicit_epoch_wins_and_iterating_again_advances():
    sampler = MidasBatchSampler(40, 8, seed=1)
    first = list(sampler)
    assert sampler.epoch == 0
    second = list(sampler)
    assert sampler.epoch == 1 and second != first
    with pytest.warns(MidasDataWarning, match="set_epoch\\(0\\) after epoch 1"):
        sampler.set_epoch(0)  # going back repeats epoch 0 exactly, and says so
    assert list(sampler) == first and sampler.epoch == 0
    sampler.set_epoch(7)
    list(sampler)
    assert sampler.epoch == 7
    list(sampler)
    assert sampler.epoch == 8


def test_an_unused_iterator_does_not_spend_an_epoch():
    sampler = MidasBatchSampler(40, 8, seed=1)
    iter(sampler)  # made and dropped
    iter(sampler)
    assert sampler.epoch == 0 and len(list(sampler)) == 5
    assert sampler.epoch == 0


def test_objective_follows_the_batch_epoch_and_warns_once_on_disagreement():
    loader = midas_loader(SyntheticPairs(), MODALITIES, batch_size=16)
    model = make_model()
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    set_epoch(loader, 3)
    batch = next(iter(loader))
    assert batch.epoch == 3
    _, info = objective(model(batch.inputs), batch, model=model)
    assert objective.epoch == 3 and info["num_misaligned"] > 0
    objective.set_epoch(0)
    with pytest.warns(UserWarning, match="set_epoch\\(0\\) but the batch was planned for epoch 3"):
        objective(model(batch.inputs), batch, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective(model(batch.inputs), batch, model=model)  # once only
    manual = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1, follow_batch_epoch=False)
    _, info = manual(model(batch.inputs), batch, model=model)
    assert manual.epoch == 0 and info["num_misaligned"] == 0


def test_a_hand_built_collate_leaves_the_epoch_to_the_objective():
    from midas_data import MidasCollate

    dataset = SyntheticPairs()
    batch = MidasCollate(MODALITIES)([(i, dataset[i]) for i in range(8)])
    assert batch.epoch == -1
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=2)
    objective.set_epoch(2)
    model = make_model()
    _, info = objective(model(batch.inputs), batch, model=model)
    assert objective.epoch == 2 and info["num_misaligned"] > 0


def test_the_fusion_head_is_reached_through_wrappers():
    model = make_model()
    wrapped = nn.DataParallel(nn.DataParallel(model))
    assert unwrap_model(wrapped) is model
    loader = midas_loader(SyntheticPairs(), MODALITIES, batch_size=16)
    batch = next(iter(loader))
    objective = MidasObjective(NUM_CLASSES, MODALITIES)
    loss_wrapped, _ = objective(wrapped(batch.inputs), batch, model=wrapped, update_alpha=False)
    loss_plain, _ = objective(model(batch.inputs), batch, fuse=model.fuse, update_alpha=False)
    assert torch.allclose(loss_wrapped, loss_plain)
    with pytest.raises(TypeError, match="has no fuse\\(features\\) -> logits method"):
        objective(model(batch.inputs), batch, model=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="either model= or fuse="):
        objective(model(batch.inputs), batch, model=model, fuse=model.fuse)


# -- sharding for Accelerate -----------------------------------------------------------------
@pytest.mark.parametrize(
    "n,batch,shards,drop_last", [(101, 8, 2, False), (100, 8, 4, False), (37, 5, 3, True), (9, 4, 2, False)]
)
def test_shard_bounds_deal_each_rank_its_rank_aware_share(n, batch, shards, drop_last):
    bounds = shard_bounds(n, batch, shards, drop_last)
    assert len(bounds) % shards == 0
    for rank in range(shards):
        # Round-robin, as Accelerate's BatchSamplerShard deals them out.
        assert bounds[rank::shards] == batch_bounds(n, batch, shards, rank, drop_last)
    slots = sorted(i for begin, end in bounds for i in range(begin, end))
    assert slots == list(range(len(slots))) and (drop_last or len(slots) == n)


def test_batch_size_is_none_when_batch_sizes_vary():
    assert MidasBatchSampler(64, 8).batch_size == 8
    uneven = MidasBatchSampler(65, 8)
    assert uneven.batch_size is None and uneven.max_batch_size == 8
    assert MidasBatchSampler(65, 8, drop_last=True).batch_size == 8
    with pytest.raises(ValueError, match="num_shards: only for the global sampler"):
        MidasBatchSampler(64, 8, num_replicas=2, rank=0, num_shards=2)


def test_set_epoch_reaches_the_batch_sampler_through_its_sampler():
    # Lightning calls batch_sampler.sampler.set_epoch; Accelerate batch_sampler.batch_sampler.sampler.
    loader = midas_loader(SyntheticPairs(), MODALITIES, batch_size=16)
    loader.batch_sampler.sampler.set_epoch(4)
    assert next(iter(loader)).epoch == 4
    assert len(loader.batch_sampler.sampler) == len(SyntheticPairs())


def test_accelerate_with_one_process_changes_nothing():
    pytest.importorskip("accelerate")
    from accelerate.data_loader import prepare_data_loader

    loader = midas_loader(SyntheticPairs(), MODALITIES, batch_size=16, seed=9)
    reference = [b.ids.tolist() for b in midas_loader(SyntheticPairs(), MODALITIES, batch_size=16, seed=9)]
    prepared = prepare_data_loader(loader, num_processes=1, process_index=0, put_on_device=False)
    assert [b.ids.tolist() for b in prepared] == reference


# -- resume at the boundary, against torchdata's own loader ---------------------------------
def _stateful(loader_kind: str, num_workers: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    if loader_kind == "midas":
        return midas_loader(
            SyntheticPairs(40),
            MODALITIES,
            batch_size=8,
            seed=4,
            loader_class=StatefulDataLoader,
            num_workers=num_workers,
        )
    generator = torch.Generator().manual_seed(0)
    return StatefulDataLoader(list(range(40)), batch_size=8, shuffle=True, generator=generator, num_workers=num_workers)


def _ids(batch):
    return batch.ids.tolist() if hasattr(batch, "ids") else batch.tolist()


def _save(loader):
    buffer = io.BytesIO()
    torch.save(loader.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("finished", [False, True])
def test_resume_at_an_epoch_boundary_matches_torchdata(num_workers, finished):
    pytest.importorskip("torchdata.stateful_dataloader")
    outcome = {}
    for kind in ("torchdata", "midas"):
        loader = _stateful(kind, num_workers)
        epoch0 = []
        iterator = iter(loader)
        for _ in range(len(loader)):
            epoch0.append(_ids(next(iterator)))  # after the last batch, before StopIteration
        if finished:
            assert next(iterator, None) is None
        state = _save(loader)
        reference = [[_ids(b) for b in loader] for _ in range(2)]
        resumed = _stateful(kind, num_workers)
        resumed.load_state_dict(state)
        after = [[_ids(b) for b in resumed] for _ in range(2)]
        outcome[kind] = [len(epoch) for epoch in after]
        if kind == "midas":
            if finished:  # the next epoch at once
                assert after == reference
            else:  # the rest of the saved epoch (nothing), then the next
                assert after[0] == [] and after[1] == reference[0]
    assert outcome["midas"] == outcome["torchdata"]


def test_a_checkpoint_from_another_world_size_goes_on_and_accelerate_processes_must_match():
    sampler = MidasBatchSampler(64, 8, num_replicas=2, rank=0)
    list(sampler)
    other = MidasBatchSampler(64, 8, num_replicas=4, rank=0)
    other.load_state_dict(sampler.state_dict())  # the rest of an epoch: tests/test_elastic_resume.py
    fresh = MidasBatchSampler(64, 8, num_replicas=4, rank=0)
    fresh.set_epoch(1)
    assert list(other) == list(fresh)  # the ended epoch's next one, on four ranks
    shards = MidasBatchSampler(64, 8, num_shards=2)
    list(shards)
    with pytest.raises(ValueError, match="num_shards"):
        MidasBatchSampler(64, 8, num_shards=3).load_state_dict(shards.state_dict())


# -- a peek is not an epoch ------------------------------------------------------------------
LOADER_SETUPS = [
    pytest.param({"num_workers": 0}, id="serial"),
    pytest.param({"num_workers": 2}, id="workers"),
    pytest.param({"num_workers": 2, "persistent_workers": True}, id="persistent"),
]


def _passes(loader, passes: int):
    """``passes`` full passes with no set_epoch call, as (batch.epoch, ids, plan) per batch."""
    return [[(b.epoch, b.ids.tolist(), b.plan.tolist()) for b in loader] for _ in range(passes)]


def _peek_loader(**kwargs):
    return midas_loader(SyntheticPairs(40), MODALITIES, batch_size=8, seed=6, **kwargs)


@pytest.mark.parametrize("setup", LOADER_SETUPS)
def test_a_peek_before_training_does_not_shift_the_epochs(setup):
    reference = _passes(_peek_loader(**setup), 5)
    loader = _peek_loader(**setup)
    peeked = next(iter(loader))
    assert (peeked.epoch, peeked.ids.tolist(), peeked.plan.tolist()) == reference[0][0]
    assert _passes(loader, 5) == reference
    assert [{e for e, _, _ in epoch} for epoch in reference] == [{0}, {1}, {2}, {3}, {4}]


@pytest.mark.parametrize("setup", LOADER_SETUPS)
@pytest.mark.parametrize("taken", [0, 1, 2, 3])
def test_a_pass_counts_from_two_delivered_batches(setup, taken):
    reference = _passes(_peek_loader(**setup), 3)
    loader = _peek_loader(**setup)
    iterator = iter(loader)  # with workers, this alone has the sampler plan and fetch ahead
    assert [(b.epoch, b.ids.tolist(), b.plan.tolist()) for _, b in zip(range(taken), iterator)] == (
        reference[0][:taken]
    )
    del iterator
    after = _passes(loader, 2)
    assert after == (reference[1:] if taken >= 2 else reference[:2])


def test_a_pass_broken_after_three_batches_is_an_epoch():
    reference = _passes(_peek_loader(num_workers=2), 2)
    loader = _peek_loader(num_workers=2)
    for taken, _ in enumerate(loader, 1):
        if taken == 3:
            break
    assert _passes(loader, 1) == reference[1:]


@pytest.mark.parametrize("setup", LOADER_SETUPS[:2])
def test_warm_up_ends_on_time_after_a_peek(setup):
    loader = midas_loader(SyntheticPairs(), MODALITIES, batch_size=16, seed=2, **setup)
    model = make_model(seed=1)
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    batch = next(iter(loader))  # a look at the data before training; its loss computed too
    objective(model(batch.inputs), batch, model=model, update_alpha=False)
    warmup = {}
    for _ in range(2):
        for batch in loader:
            _, info = objective(model(batch.inputs), batch, model=model)
            warmup.setdefault(batch.epoch, []).append(info["warmup"])
    assert set(warmup) == {0, 1}
    assert all(warmup[0]) and len(warmup[0]) == len(loader)
    assert not any(warmup[1])


def test_an_explicit_epoch_still_wins_after_a_peek():
    loader = _peek_loader()
    next(iter(loader))
    set_epoch(loader, 3)
    assert {b.epoch for b in loader} == {3}
    next(iter(loader))  # a peek at epoch 4
    loader.batch_sampler.sampler.set_epoch(6)  # where Lightning calls it
    assert {b.epoch for b in loader} == {6}
    assert {b.epoch for b in loader} == {7}


def test_a_sampler_iterated_directly_counts_the_batches_it_yields():
    sampler = MidasBatchSampler(40, 8, seed=1)
    first = list(sampler)
    sampler.set_epoch(0)
    next(iter(sampler))  # one batch: a peek
    assert list(sampler) == first and sampler.epoch == 0
    iterator = iter(sampler)
    next(iterator), next(iterator)  # two batches of epoch 1: an epoch
    assert sampler.epoch == 1
    list(sampler)
    assert sampler.epoch == 2


def test_loaders_count_passes_and_pickle():
    import pickle

    from midas_data.loader import MidasDataLoader, counting_loader_class

    loader = _peek_loader()
    assert type(loader) is MidasDataLoader
    copy = pickle.loads(pickle.dumps(loader))
    assert type(copy) is MidasDataLoader and len(list(copy)) == len(loader)
    pytest.importorskip("torchdata.stateful_dataloader")
    from torchdata.stateful_dataloader import StatefulDataLoader

    stateful = _peek_loader(loader_class=StatefulDataLoader)
    assert isinstance(stateful, StatefulDataLoader) and type(stateful) is counting_loader_class(StatefulDataLoader)
    assert counting_loader_class(type(stateful)) is type(stateful)
    copy = pickle.loads(pickle.dumps(stateful))
    assert type(copy) is type(stateful)
    reference = _passes(_peek_loader(), 2)
    next(iter(copy))
    assert _passes(copy, 2) == reference
