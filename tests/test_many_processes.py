"""Two processes, gloo, CPU: plain DDP and Accelerate give the same MIDAS training as one
process would, with nothing silent. Each test spawns its ranks once and checks several
things, to keep process start-up off the suite's time."""

from __future__ import annotations

import io

import pytest
import torch
import torch.multiprocessing as mp
from many_processes import (
    MODALITIES,
    NUM_CLASSES,
    SyntheticPairs,
    ddp_run,
    digest,
    free_port,
    init_gloo,
    leave_rank,
    make_model,
    tear_down_after_error,
)

from midas_data import MidasDataError, MidasObjective, StatsTable, midas_loader, sync_stats

WORLD = 2
N = len(SyntheticPairs())


# -- plain DDP ---------------------------------------------------------------------------
def _ddp_main(rank: int, port: int, out: str) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    init_gloo(rank, WORLD, port)
    try:
        result = {"full": ddp_run(rank, WORLD, epochs=3, loader_class=StatefulDataLoader)}
        # Interrupted mid-epoch (epoch 1, after 3 steps) and at the boundary (after the last
        # step of epoch 1), then resumed in fresh objects.
        for name, stop in (("mid", (1, 3)), ("boundary", (1, 7))):
            head = ddp_run(rank, WORLD, epochs=3, stop_at=stop, loader_class=StatefulDataLoader)
            ckpt = head["checkpoint"]
            buffer = io.BytesIO()
            torch.save(ckpt, buffer)
            buffer.seek(0)
            restored = torch.load(buffer, weights_only=False)
            tail = ddp_run(rank, WORLD, epochs=3, resume_from=restored, loader_class=StatefulDataLoader)
            result[name] = {"head": head["steps"], "tail": tail["steps"], "digest": tail["digest"]}
        # The same with midas_loader's own (stateful) loader and two persistent workers per rank.
        workers = {"num_workers": 2, "persistent_workers": True}
        for name, stop in (("mid_workers", (1, 3)), ("boundary_workers", (1, 7))):
            head = ddp_run(rank, WORLD, epochs=3, stop_at=stop, **workers)
            tail = ddp_run(rank, WORLD, epochs=3, resume_from=head["checkpoint"], **workers)
            result[name] = {"head": head["steps"], "tail": tail["steps"], "digest": tail["digest"]}
        torch.save(result, f"{out}/ddp{rank}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


def _spawn(main, name: str, tmp_path_factory) -> list[dict]:
    """Run ``main(rank, port, out)`` on WORLD ranks; each saves ``out/{name}{rank}.pt``."""
    out = tmp_path_factory.mktemp(name)
    mp.spawn(main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"{name}{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    pytest.importorskip("torchdata.stateful_dataloader")
    return _spawn(_ddp_main, "ddp", tmp_path_factory)


def _by_epoch(steps):
    epochs: dict[int, list[int]] = {}
    for step in steps:
        epochs.setdefault(step["epoch"], []).extend(step["ids"])
    return epochs


def test_ddp_ranks_see_disjoint_samples_covering_every_epoch(ddp_results):
    full = [r["full"]["steps"] for r in ddp_results]
    per_rank = [_by_epoch(steps) for steps in full]
    assert len(full[0]) == len(full[1])  # equal work per rank: no DDP hang
    for epoch in range(3):
        ids = per_rank[0][epoch] + per_rank[1][epoch]
        assert sorted(ids) == list(range(N)), f"epoch {epoch}"
    # Epochs advanced by themselves: no set_epoch call anywhere, yet every epoch differs.
    orders = [tuple(per_rank[0][e]) for e in range(3)]
    assert len(set(orders)) == 3
    assert [s["batch_epoch"] for s in full[0]] == [s["epoch"] for s in full[0]]


def test_ddp_warmup_works_and_alpha_is_one_value_across_ranks(ddp_results):
    full = [r["full"]["steps"] for r in ddp_results]
    warmup = [s for s in full[0] if s["epoch"] == 0]
    assert warmup and all(s["num_misaligned"] == 0 for s in warmup)  # warm-up ran through DDP
    # ... and ended on time: after it every batch with two classes has misaligned rows.
    labels = SyntheticPairs().labels
    after = [s for steps in full for s in steps if s["epoch"] > 0]
    assert all((s["num_misaligned"] > 0) == (len(set(labels[s["ids"]].tolist())) > 1) for s in after)
    assert sum(s["num_misaligned"] > 0 for s in after) >= len(after) - 2
    alphas = [[s["alpha"] for s in steps] for steps in full]
    assert alphas[0] == alphas[1]  # bit-identical at every step
    assert alphas[0][-1] != [1.0, 1.0]  # and it moved
    assert ddp_results[0]["full"]["digest"] == ddp_results[1]["full"]["digest"]  # identical stats tables


@pytest.mark.parametrize("name", ["mid", "boundary", "mid_workers", "boundary_workers"])
def test_ddp_resume_gives_the_exact_next_batches(ddp_results, name):
    for rank in range(WORLD):
        full = ddp_results[rank]["full"]["steps"]
        run = ddp_results[rank][name]
        resumed = run["head"] + run["tail"]
        assert [(s["epoch"], s["ids"], s["plan"]) for s in resumed] == [(s["epoch"], s["ids"], s["plan"]) for s in full]
        assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in full], rel=1e-5, abs=1e-6)
        assert [s["alpha"] for s in resumed] == [s["alpha"] for s in full]
        assert run["digest"] == ddp_results[rank]["full"]["digest"]


# -- Accelerate ----------------------------------------------------------------------------
def _accelerate_loop(accelerator, loader, model, optimizer, objective, table, epochs):
    steps = []
    for epoch in range(epochs):
        for batch in loader:
            output = model(batch.inputs)
            loss, info = objective(output, batch, model=model)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            sync_stats(table, batch.ids, info["per_sample"])
            steps.append({"epoch": epoch, "ids": batch.ids.tolist(), "alpha": objective.alpha.tolist()})
    return steps


def _accelerate_main(rank: int, port: int, out: str) -> None:
    init_gloo(rank, WORLD, port)
    from accelerate import Accelerator
    from accelerate.data_loader import prepare_data_loader

    try:
        accelerator = Accelerator(cpu=True)
        result = {"num_processes": accelerator.num_processes}
        dataset = SyntheticPairs()
        table = StatsTable(len(dataset), MODALITIES)
        loader = midas_loader(dataset, MODALITIES, batch_size=8, seed=5, stats=table)
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
        objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
        result["steps"] = _accelerate_loop(accelerator, prepared, model, optimizer, objective, table, 3)
        result["digest"] = digest(table)
        # even_batches=False: the same shares, and no rank waits for a batch the other lacks.
        uneven = prepare_data_loader(midas_loader(dataset, MODALITIES, batch_size=8, seed=5), even_batches=False)
        result["uneven"] = [b.ids.tolist() for b in uneven]
        # What cannot work says so, on every rank.
        errors = {}
        rank_aware = midas_loader(dataset, MODALITIES, batch_size=8, num_replicas=WORLD, rank=rank)
        plain = midas_loader(dataset, MODALITIES, batch_size=8)
        for name, wrapped in (
            ("rank_aware", lambda: prepare_data_loader(rank_aware)),
            ("dispatch", lambda: prepare_data_loader(plain, put_on_device=True, dispatch_batches=True)),
        ):
            try:
                next(iter(wrapped()))
                errors[name] = ""
            except MidasDataError as err:
                errors[name] = str(err)
        result["errors"] = errors
        result["pruned"] = _accelerate_pruned(accelerator, dataset)
        torch.save(result, f"{out}/acc{rank}.pt")
        leave_rank()
    finally:
        tear_down_after_error()


PRUNED_EPOCHS = 6


def _accelerate_pruned(accelerator, dataset) -> dict:
    """policy="prune" under Accelerate as users train: 2 persistent workers, 6 epochs, the
    weights by hand (Accelerate's loader serves the batches past midas_loader's iterator)."""
    from midas_data.feedback import PrunePolicy

    table = StatsTable(len(dataset), MODALITIES)
    loader = midas_loader(
        dataset, MODALITIES, batch_size=8, seed=7, stats=table, policy=PrunePolicy(num_epochs=PRUNED_EPOCHS),
        num_workers=2, persistent_workers=True,
    )  # fmt: skip
    model = make_model(seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=1)
    epochs = []
    for _ in range(PRUNED_EPOCHS):
        batches = []
        for batch in prepared:
            weights = loader.batch_sampler.importance_weights(batch.ids)
            loss, info = objective(model(batch.inputs), batch, model=model, sample_weights=weights)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            sync_stats(table, batch.ids, info["per_sample"])
            batches.append((batch.ids.tolist(), weights.tolist()))
        epochs.append(batches)
    return {"epochs": epochs, "digest": digest(table)}


@pytest.fixture(scope="module")
def accelerate_results(tmp_path_factory):
    pytest.importorskip("accelerate")
    return _spawn(_accelerate_main, "acc", tmp_path_factory)


def test_accelerate_prepare_gives_every_sample_once_per_epoch(accelerate_results):
    assert [r["num_processes"] for r in accelerate_results] == [WORLD, WORLD]
    steps = [r["steps"] for r in accelerate_results]
    assert len(steps[0]) == len(steps[1])
    per_rank = [_by_epoch(s) for s in steps]
    for epoch in range(3):
        assert sorted(per_rank[0][epoch] + per_rank[1][epoch]) == list(range(N)), f"epoch {epoch}"
    assert len({tuple(per_rank[0][e]) for e in range(3)}) == 3  # Accelerate's set_epoch reached the sampler
    assert [s["alpha"] for s in steps[0]] == [s["alpha"] for s in steps[1]]
    assert accelerate_results[0]["digest"] == accelerate_results[1]["digest"]


def test_accelerate_uneven_batches_need_no_padding_and_do_not_hang(accelerate_results):
    shares = [r["uneven"] for r in accelerate_results]
    assert len(shares[0]) == len(shares[1])
    assert sorted(i for share in shares for batch in share for i in batch) == list(range(N))


def test_accelerate_refuses_what_cannot_work_on_every_rank(accelerate_results):
    for result in accelerate_results:
        assert "already split by rank" in result["errors"]["rank_aware"]
        assert "midas_loader(...) without num_replicas/rank" in result["errors"]["rank_aware"]
        assert "dispatch_batches=True" in result["errors"]["dispatch"]


def test_accelerate_pruned_epochs_are_dealt_evenly_with_identical_plans(accelerate_results):
    runs = [r["pruned"] for r in accelerate_results]
    assert runs[0]["digest"] == runs[1]["digest"]  # identical tables on both ranks
    for epoch in range(PRUNED_EPOCHS):
        shares = [run["epochs"][epoch] for run in runs]
        assert len(shares[0]) == len(shares[1]), f"epoch {epoch}: unequal batch counts"
        ids = [[i for batch, _ in share for i in batch] for share in shares]
        assert not set(ids[0]) & set(ids[1])
        seen = ids[0] + ids[1]
        assert len(seen) == len(set(seen))  # no sample twice in the epoch
        weights = [w for share in shares for _, ws in share for w in ws]
        if epoch in (0, PRUNED_EPOCHS - 1):  # nothing seen yet; the full-data tail
            assert sorted(seen) == list(range(N)) and set(weights) == {1.0}
        else:
            assert len(seen) < N and max(weights) > 1.0
