"""The catalogue of docs/errors.md: one test per row, named after the row.

Each test makes the mistake a user makes (or the fault a machine has) and checks what
the user then gets: an error naming the sample, key, modality or shard and what was
expected, a warning, or a documented behaviour. Row names match docs/errors.md.
"""

import functools
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from midas_data import (
    LateFusionClassifier,
    MidasBatchSampler,
    MidasCollate,
    MidasDataError,
    MidasDataset,
    MidasDataWarning,
    MidasObjective,
    StatsStorageWarning,
    StatsTable,
    midas_loader,
    set_epoch,
)
from midas_data import functional as MF
from midas_data.feedback.planning import EpochPlan

ROOT = Path(__file__).resolve().parent.parent
MODS = ("audio", "video")
NUM_CLASSES = 4


class Items(Dataset):
    """Item i: audio filled with i, video filled with -i, label i % 4; ``change`` edits
    chosen items (the mistake under test)."""

    def __init__(self, n: int = 16, change=None) -> None:
        self.n, self.change = n, change

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        item = {"audio": torch.full((3,), float(i)), "video": torch.full((2, 2), -float(i)), "label": i % NUM_CLASSES}
        if self.change is not None:
            item = self.change(i, item)
        return item


def first_batch(dataset, modalities=MODS, label_key="label", batch_size=8, shuffle=False, **kwargs):
    """The first batch of samples 0 .. batch_size - 1."""
    loader = midas_loader(dataset, modalities, label_key, batch_size=batch_size, shuffle=shuffle, **kwargs)
    iterator = iter(loader)
    try:
        return next(iterator)
    finally:
        stop_workers(iterator)


def stop_workers(iterator) -> None:
    """Stop a loader iterator's workers now. An error's traceback keeps the iterator alive
    until a garbage collection, and PyTorch's shutdown of it from there waits seconds for
    its workers (and workers forked meanwhile inherit it)."""
    try:
        getattr(iterator, "_shutdown_workers", lambda: None)()
    except RuntimeError as err:
        # After a worker was killed, PyTorch's SIGCHLD handler may report that same death
        # again while the others are joined: the run has already failed with it.
        if "DataLoader worker" not in str(err):
            raise


def edit(bad_id, **changes):
    """A ``change`` that sets keys of item ``bad_id`` (a value ``None`` deletes the key)."""

    def change(i, item):
        if i == bad_id:
            for key, value in changes.items():
                if value is None:
                    del item[key]
                else:
                    item[key] = value
        return item

    return change


def model(seed: int = 0) -> LateFusionClassifier:
    torch.manual_seed(seed)
    return LateFusionClassifier(
        {"audio": torch.nn.Linear(3, 5), "video": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))},
        {"audio": 5, "video": 5},
        NUM_CLASSES,
    )


# -- items and keys -----------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
def test_missing_modality_key(num_workers):
    with pytest.raises(MidasDataError, match=r"sample 5: has no modality 'video'; the item is a dict with keys"):
        first_batch(Items(change=edit(5, video=None)), batch_size=16, num_workers=num_workers)


def test_misspelled_label_key():
    with pytest.raises(MidasDataError, match=r"sample \d+: has no label 'labels'.*did you mean 'label'\?"):
        first_batch(Items(), label_key="labels")


def test_tuple_items_without_the_label_position():
    class Tuples(Items):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return item["audio"], item["video"], item["label"]

    with pytest.raises(MidasDataError, match=r"has no label 'label'; the item is a tuple of length 3; .*label_key=2"):
        first_batch(Tuples(), {"audio": 0, "video": 1})
    assert first_batch(Tuples(), {"audio": 0, "video": 1}, 2).labels.tolist() != []  # the hint works


@pytest.mark.parametrize(
    "row, label, message",
    [
        ("string_label", "cat", r"label 'label' is 'cat' \(str\); expected an integer class id; map class names"),
        ("float_label", 1.5, r"label 'label' is 1.5 \(float\); expected an integer class id"),
        ("bool_label", True, r"label 'label' is a bool; expected an integer class id"),
        ("one_hot_label", torch.tensor([0, 1, 0, 0]), r"\(Tensor\); expected an integer class id; a one-hot"),
    ],
)
def test_label_of_the_wrong_type(row, label, message):
    with pytest.raises(MidasDataError, match=r"sample 3: .*" + message):
        first_batch(Items(change=edit(3, label=label)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_label_out_of_range_when_num_classes_is_given(num_workers):
    dataset = Items(change=edit(6, label=NUM_CLASSES))
    with pytest.raises(MidasDataError, match=r"labels: sample 6 has label 4; expected class ids in \[0, 4\)"):
        first_batch(dataset, num_classes=NUM_CLASSES, num_workers=num_workers)


def test_label_out_of_range_at_the_objective():
    batch = first_batch(Items(change=edit(6, label=NUM_CLASSES)))  # num_classes not given
    net = model()
    with pytest.raises(MidasDataError, match=r"labels: sample 6 has label 4; expected class ids in \[0, 4\)\. Pass n"):
        MidasObjective(NUM_CLASSES, MODS)(net(batch.inputs), batch, fuse=net.fuse)


def test_negative_label():
    with pytest.raises(MidasDataError, match=r"labels: sample 2 has label -1; expected class ids >= 0"):
        first_batch(Items(change=edit(2, label=-1)))


# -- modality values ----------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
def test_modality_of_another_dtype(num_workers):
    dataset = Items(change=edit(3, audio=torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(MidasDataError, match=r"sample 3: modality 'audio' has dtype torch.float64 but sample 0 has"):
        first_batch(dataset, num_workers=num_workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_modality_of_another_shape(num_workers):
    dataset = Items(change=edit(5, audio=torch.zeros(5)))
    with pytest.raises(MidasDataError, match=r"sample 5: modality 'audio' has shape \(5,\) but sample 0 has \(3,\)"):
        first_batch(dataset, num_workers=num_workers)


def test_variable_length_list_modality():
    def tokens(i, item):
        item["text"] = [torch.tensor(t) for t in range(2 + i % 3)]  # a list of variable length
        return item

    dataset = Items(change=tokens)
    with pytest.raises(
        MidasDataError,
        match=r"sample 1: modality 'text' is a list of length 3 .* but sample 0 has length 2;.*"
        r"modality_collate=\{'text': fn\} that pads",
    ):
        first_batch(dataset, ("audio", "text"))
    # The hint works: a collate function that pads.
    pad = lambda values: torch.nn.utils.rnn.pad_sequence([torch.stack(v) for v in values], batch_first=True)  # noqa: E731
    batch = first_batch(dataset, ("audio", "text"), modality_collate={"text": pad})
    assert batch.inputs["text"].shape == (8, 4)


def test_modality_missing_value():
    def no_video(i, item):
        item["video"] = None if i == 4 else item["video"]
        return item

    with pytest.raises(MidasDataError, match=r"sample 4: modality 'video' is None but sample 0 gives a Tensor"):
        first_batch(Items(change=no_video))


def test_hf_dataset_without_torch_format():
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    hf = datasets.Dataset.from_dict(
        {
            "audio": rng.standard_normal((16, 6)).astype(np.float32).tolist(),
            "video": rng.standard_normal((16, 2, 3)).astype(np.float32).tolist(),
            "label": [i % 3 for i in range(16)],
        }
    )
    with pytest.raises(MidasDataError, match=r"modality 'audio' is a list of length 6 .*with_format\('torch'\)"):
        first_batch(hf)
    assert first_batch(hf.with_format("torch")).inputs["video"].shape == (8, 2, 3)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_extra_keys_pass_through(num_workers):
    def extras(i, item):
        item.update(path=f"clips/{i}.wav", w=0.5 + i, boxes=torch.zeros(i % 2 + 1, 4))
        return item

    batch = first_batch(Items(change=extras), num_workers=num_workers)
    ids = batch.ids.tolist()
    assert batch.extras["path"] == [f"clips/{i}.wav" for i in ids]
    assert batch.extras["w"].tolist() == [0.5 + i for i in ids]
    # Values that do not stack stay a list, one entry per sample, in batch order.
    assert [tuple(b.shape) for b in batch.extras["boxes"]] == [(i % 2 + 1, 4) for i in ids]


def test_items_with_different_keys():
    with pytest.raises(MidasDataError, match=r"sample 3: has \['audio', 'label', 'path', 'video'\] but sample 0"):
        first_batch(Items(change=edit(3, path="x.wav")))


def test_num_workers_above_the_core_count():
    """The README's example asked for 4 workers (PyTorch warned twice on two cores); the
    documented examples stay within two cores."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    asked = {
        page.name: [int(n) for n in re.findall(r"num_workers=(\d+)", page.read_text())]
        for page in pages
        if page.name not in ("benchmarks.md", "errors.md")  # measured settings; the mistake itself
    }
    assert asked["README.md"] and asked["quickstart.md"]
    assert all(n <= 2 for counts in asked.values() for n in counts), asked


def test_empty_dataset_and_batch_size_one():
    with pytest.raises(MidasDataError, match="dataset: has length 0"):
        midas_loader(Items(0), MODS, batch_size=8)
    with pytest.raises(ValueError, match="batch_size: expected at least 2, got 1; a misaligned sample takes"):
        midas_loader(Items(), MODS, batch_size=1)


# -- batches MIDAS cannot misalign --------------------------------------------------------
def test_one_class_dataset():
    dataset = Items(change=edit_all(label=2))
    loader = midas_loader(dataset, MODS, batch_size=4, num_classes=NUM_CLASSES)
    net, objective = model(), MidasObjective(NUM_CLASSES, MODS)
    counts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            set_epoch(loader, epoch)
            objective.set_epoch(epoch)
            for batch in loader:
                _, info = objective(net(batch.inputs), batch, fuse=net.fuse)
                counts.append(info["batches_without_misaligned"])
    ours = [w for w in caught if issubclass(w.category, MidasDataWarning)]
    assert len(ours) == 1  # once, though every batch of every epoch had none
    assert "4 of 4 batches of epoch 0 had no misaligned rows" in str(ours[0].message)
    assert counts == list(range(1, 13))  # the diagnostics keep counting


def edit_all(**changes):
    def change(i, item):
        item.update(changes)
        return item

    return change


def test_one_sample_batch():
    # A hand-built loader may make batches of one; midas_loader folds a last single sample
    # into the batch before it.
    loader = DataLoader(MidasDataset(Items(3)), batch_size=1, collate_fn=MidasCollate(MODS))
    batch = next(iter(loader))
    assert batch.num_misaligned == 0 and batch.num_unpaired == 2
    net = model()
    loss, info = MidasObjective(NUM_CLASSES, MODS)(net(batch.inputs), batch, fuse=net.fuse)
    assert torch.isfinite(loss) and info["num_misaligned"] == 0 and info["batches_without_misaligned"] == 1
    assert [len(b) for b in midas_loader(Items(9), MODS, batch_size=4)] == [4, 5]


# -- values -------------------------------------------------------------------------------
def test_nan_in_an_input():
    batch = first_batch(Items(change=edit(6, video=torch.full((2, 2), float("nan")))))
    net = model()
    with pytest.raises(MidasDataError) as err:
        MidasObjective(NUM_CLASSES, MODS)(net(batch.inputs), batch, fuse=net.fuse)
    message = str(err.value)
    assert message.startswith("output.fusion_logits: contains NaN or inf in the rows of samples [6]")
    assert "batch.inputs['video'] of samples [6] hold NaN or inf" in message


def test_inf_from_the_model():
    batch = first_batch(Items())
    net = model()
    with torch.no_grad():
        net.encoders["audio"].weight[0, 0] = float("inf")  # a diverged step
    with pytest.raises(ValueError, match=r"in the rows of samples \[0, 1, 2, .*their inputs are finite, so the model"):
        MidasObjective(NUM_CLASSES, MODS)(net(batch.inputs), batch, fuse=net.fuse)


def test_zero_norm_features():
    features = [torch.zeros(4, 3), torch.randn(4, 3)]
    swapped = [torch.randn(4, 3), torch.zeros(4, 3)]
    weights = MF.hard_sample_weights(features, swapped)
    assert torch.equal(weights, torch.full((4,), 1.5))  # similarity 0, never NaN


def test_plan_pointing_outside_the_batch():
    labels = torch.tensor([0, 1, 2, 3])
    plan = torch.tensor([[0, 1], [1, 4]])
    net = model()
    output = net({"audio": torch.randn(4, 3), "video": torch.randn(4, 2, 2)})
    with pytest.raises(IndexError, match=r"plan: entries must be batch rows in \[0, 4\), got range \[0, 4\]"):
        MidasObjective(NUM_CLASSES, MODS)(output, labels=labels, plan=plan, fuse=net.fuse)


def test_ids_above_2_to_the_24():
    class Huge(Items):
        def __len__(self):
            return 2**24 + 8

    big = [2**24 + 1, 2**24 + 3, 2**24 + 5, 2**24 + 6]
    # dataset -> collate -> batch.ids
    batch = MidasCollate(MODS)(MidasDataset(Huge()).__getitems__(big))
    assert batch.ids.dtype == torch.int64 and batch.ids.tolist() == big
    # objective -> stats table
    net = model()
    _, info = MidasObjective(NUM_CLASSES, MODS)(net(batch.inputs), batch, fuse=net.fuse)
    table = StatsTable(2**24 + 8, MODS)  # float16: 12 bytes a sample
    table.update(batch.ids, info["per_sample"])
    read = table.read(big)["confidence"]
    assert torch.allclose(read, info["per_sample"]["confidence"], atol=1e-3)
    assert table.read([2**24, 2**24 + 2, 2**24 + 4])["confidence"].isnan().all()  # float32 neighbours untouched
    with pytest.raises(TypeError, match=r"float ids lose precision above 2\*\*24"):
        table.update(batch.ids.float(), info["per_sample"])
    # the sampler's importance weights look ids up exactly
    snapshot = torch.zeros(2**24 + 8)
    snapshot[2**24 + 3] = 1.0
    plan = EpochPlan(0, "hard", torch.zeros(0, dtype=torch.int64), snapshot, a=1.0, b=1.0)
    assert plan.importance_weights(batch.ids).tolist() == [1.0, 0.5, 1.0, 1.0]


def test_duplicate_ids_in_one_batch():
    # A prioritised epoch draws a sample more than once, sometimes into one batch.
    samples = MidasDataset(Items()).__getitems__([3, 3, 4, 5])
    batch = MidasCollate(MODS)(samples)
    assert batch.ids.tolist() == [3, 3, 4, 5]
    # Under the paper rule a copy is never its own partner: partners have another label.
    assert (batch.labels[batch.plan[:, 0]] != batch.labels[batch.plan[:, 1]]).all()
    table = StatsTable(16, MODS, dtype=torch.float32)
    table.update(batch.ids, similarity=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert table.read([3])["similarity"].item() == pytest.approx(0.2)  # the last row wins


def test_model_output_of_the_wrong_number_of_classes():
    batch = first_batch(Items())
    net = model()
    with pytest.raises(ValueError, match=r"output.fusion_logits: expected shape \[8, 5\], got \[8, 4\]"):
        MidasObjective(5, MODS)(net(batch.inputs), batch, fuse=net.fuse)


# -- workers and resuming -----------------------------------------------------------------
class Faulty(Items):
    """Sample ``bad`` fails the first time it is read (a flaky shard): it raises, or kills
    the worker reading it. ``armed`` is in shared memory, so a worker disarms it for all."""

    def __init__(self, n: int, bad: int | None, fault: str) -> None:
        super().__init__(n)
        self.bad, self.fault = bad, fault
        self.armed = torch.ones((), dtype=torch.int64).share_memory_()

    def __getitem__(self, i):
        if i == self.bad and int(self.armed) == 1:
            self.armed.fill_(0)
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(f"shard-00003.tar: truncated record for index {i}")
        return super().__getitem__(i)


class Run:
    """A small training run that checkpoints after every step, as a user would."""

    def __init__(self, dataset, num_workers: int) -> None:
        from torchdata.stateful_dataloader import StatefulDataLoader

        self.model = model(1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.table = StatsTable(len(dataset), MODS, dtype=torch.float32)
        self.objective = MidasObjective(NUM_CLASSES, MODS)
        self.loader = midas_loader(
            dataset,
            MODS,
            batch_size=4,
            seed=5,
            stats=self.table,
            policy="hard",
            num_classes=NUM_CLASSES,
            loader_class=StatefulDataLoader,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self.log: list[tuple[int, list[int]]] = []
        self.checkpoint: bytes | None = None
        self.on_save = lambda data: None
        self.epoch = 0

    def train(self, epochs: int) -> None:
        for epoch in range(self.epoch, epochs):
            self.epoch = epoch
            set_epoch(self.loader, epoch)
            self.objective.set_epoch(epoch)
            for batch in self.loader:
                output = self.model(batch.inputs)
                weights = self.loader.batch_sampler.importance_weights(batch.ids)
                loss, info = self.objective(output, batch, fuse=self.model.fuse, sample_weights=weights)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.table.update(batch.ids, info["per_sample"])
                self.log.append((epoch, batch.ids.tolist()))
                self.save()
        self.epoch = epochs

    def save(self) -> None:
        buffer = io.BytesIO()
        state = {
            "epoch": self.epoch,
            "steps": len(self.log),
            "loader": self.loader.state_dict(),
            "table": self.table.state_dict(),
            "objective": self.objective.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, buffer)
        self.checkpoint = buffer.getvalue()  # only a complete checkpoint replaces the last one
        self.on_save(self.checkpoint)

    def resume(self, checkpoint: bytes) -> int:
        state = torch.load(io.BytesIO(checkpoint), weights_only=True)  # nothing unpickled
        self.loader.load_state_dict(state["loader"])
        self.table.load_state_dict(state["table"])
        self.objective.load_state_dict(state["objective"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        return state["steps"]


def first_run(fault: str, num_workers: int, bad: int, path: str | None = None) -> tuple[str, str, bytes]:
    """Train until the fault stops the run: what was raised and the last checkpoint (also
    written to ``path``, as a job would, when given)."""
    run = Run(Faulty(64, bad, fault), num_workers)
    if path is not None:
        run.on_save = lambda data: (Path(path + ".tmp").write_bytes(data), os.replace(path + ".tmp", path))
    try:
        run.train(3)
    except Exception as err:
        said = str(err) + "".join(getattr(err, "__notes__", []))
        stop_workers(getattr(run.loader, "_iterator", None))
        assert run.epoch < 3 and run.checkpoint is not None
        return type(err).__name__, said, run.checkpoint
    raise AssertionError("the fault did not surface")


def first_run_in_its_own_process(fault: str, num_workers: int, bad: int, tmp_path: Path) -> tuple[str, str, bytes]:
    """:func:`first_run` in a process of its own, as a job that dies and is restarted:
    after a killed worker PyTorch's child-process handler may raise again in the process
    that saw it, so the resume happens elsewhere, from the checkpoint file."""
    path = str(tmp_path / "checkpoint.pt")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_bad_input as t; "
        f"kind, said, _ = t.first_run({fault!r}, {num_workers}, {bad}, {path!r}); "
        "print(kind); print(said); sys.stdout.flush(); import os; os._exit(0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, said = done.stdout.split("\n", 1)
    return kind, said, Path(path).read_bytes()


@functools.cache
def uninterrupted_run() -> Run:
    """The run without a fault, in the main process (workers change nothing)."""
    reference = Run(Faulty(64, None, "raise"), 0)
    reference.train(3)
    return reference


def resume_matches_an_uninterrupted_run(checkpoint: bytes, num_workers: int) -> None:
    reference = uninterrupted_run()
    second = Run(Faulty(64, None, "raise"), num_workers)  # the flaky read now succeeds
    steps = second.resume(checkpoint)
    assert 0 < steps < len(reference.log)  # stopped mid-run, not at an epoch's end only
    second.log = reference.log[:steps]
    second.train(3)
    # Nothing lost or double-counted: the same batches, statistics, alpha and weights.
    assert second.log == reference.log
    assert torch.equal(second.table.values.nan_to_num(9.0), reference.table.values.nan_to_num(9.0))
    assert torch.equal(second.table.last_step, reference.table.last_step)
    assert torch.equal(second.objective.alpha, reference.objective.alpha)
    for a, b in zip(second.model.parameters(), reference.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torchdata, not ours
@pytest.mark.filterwarnings("ignore::midas_data.MidasDataWarning")  # a random one-class batch or two
@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_raises_mid_epoch(num_workers):
    pytest.importorskip("torchdata.stateful_dataloader")
    kind, said, checkpoint = first_run("raise", num_workers, bad=37)
    assert kind == "OSError"  # the dataset's own error, with a note naming the sample
    assert "shard-00003.tar: truncated record for index 37" in said
    assert "sample 37: reading it from the dataset raised this error" in said
    resume_matches_an_uninterrupted_run(checkpoint, num_workers)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::midas_data.MidasDataWarning")
def test_killed_worker(tmp_path):
    pytest.importorskip("torchdata.stateful_dataloader")
    kind, said, checkpoint = first_run_in_its_own_process("kill", 2, 37, tmp_path)
    # PyTorch's words; ConnectionResetError when the worker died while handing over a batch.
    assert kind in ("RuntimeError", "ConnectionResetError"), (kind, said)
    if kind == "RuntimeError":
        assert re.search(r"DataLoader worker \(pid\(?s?\)? .*\) (is killed by signal|exited unexpectedly)", said)
    resume_matches_an_uninterrupted_run(checkpoint, 2)


# -- checkpoints --------------------------------------------------------------------------
def test_checkpoint_from_another_dataset_size():
    with pytest.raises(ValueError, match=r"state\['num_samples'\]: the checkpoint has 20 samples, this table 16"):
        StatsTable(16, MODS).load_state_dict(StatsTable(20, MODS).state_dict())
    sampler = MidasBatchSampler(20, 4)
    with pytest.raises(ValueError, match=r"state\['num_samples'\]: the checkpoint has 20, this sampler 16"):
        MidasBatchSampler(16, 4).load_state_dict(sampler.state_dict())


def test_checkpoint_from_another_modality_set():
    with pytest.raises(ValueError, match=r"state\['modalities'\]: the checkpoint has \['audio', 'text'\]"):
        StatsTable(16, MODS).load_state_dict(StatsTable(16, ("audio", "text")).state_dict())
    with pytest.raises(ValueError, match=r"state\['modalities'\]: the checkpoint is for modalities \('video', 'aud"):
        MidasObjective(NUM_CLASSES, MODS).load_state_dict(MidasObjective(NUM_CLASSES, ("video", "audio")).state_dict())
    with pytest.raises(ValueError, match=r"controller state is for .* 3 modalities"):
        MidasObjective(NUM_CLASSES, MODS).load_state_dict(
            {"epoch": 0, "controller": MidasObjective(NUM_CLASSES, ("a", "b", "c")).controller.state_dict()}
        )


def test_checkpoint_from_another_version():
    state = StatsTable(16, MODS).state_dict()
    state["format"] = "midas_data.StatsTable/9"
    with pytest.raises(ValueError, match=r"state\['format'\]: expected 'midas_data.StatsTable/2'.*got 'midas_data.S"):
        StatsTable(16, MODS).load_state_dict(state)
    sampler_state = {**MidasBatchSampler(16, 4).state_dict(), "format": "midas_data.MidasBatchSampler/0"}
    with pytest.raises(ValueError, match=r"state\['format'\]: expected 'midas_data.MidasBatchSampler/1'"):
        MidasBatchSampler(16, 4).load_state_dict(sampler_state)


def test_truncated_checkpoint_file(tmp_path):
    table = StatsTable(16, MODS)
    table.update(torch.arange(4), similarity=torch.full((4,), 0.5))
    path = tmp_path / "checkpoint.pt"
    torch.save({"table": table.state_dict()}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(RuntimeError, match="PytorchStreamReader failed reading zip archive"):
        table.load_state_dict(torch.load(path, weights_only=True)["table"])
    assert table.read([0])["similarity"].item() == 0.5 and table.num_updates == 1  # nothing changed


def test_checkpoints_load_without_unpickling():
    sampler = MidasBatchSampler(16, 4, stats=(table := StatsTable(16, MODS)), policy="hard")
    next(iter(sampler))
    states = {"table": table.state_dict(), "sampler": sampler.state_dict()}
    states["objective"] = MidasObjective(NUM_CLASSES, MODS).state_dict()
    buffer = io.BytesIO()
    torch.save(states, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    MidasBatchSampler(16, 4, stats=table, policy="hard").load_state_dict(loaded["sampler"])
    StatsTable(16, MODS).load_state_dict(loaded["table"])
    MidasObjective(NUM_CLASSES, MODS).load_state_dict(loaded["objective"])


# -- shared memory ------------------------------------------------------------------------
def _fail_share_memory(self):
    raise RuntimeError("unable to write to file </torch_7_123_0>: No space left on device (28)")


def test_stats_table_memory_gone(tmp_path):
    table = StatsTable(16, MODS, storage="file", directory=tmp_path)
    sent = pickle.dumps(table)  # what a spawned worker receives
    os.unlink(table.path)  # e.g. a temp-directory cleaner
    with pytest.raises(RuntimeError, match=r"file-backed table .* no longer exists.*directory="):
        pickle.loads(sent)


def test_dev_shm_too_small_for_the_table(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.Tensor, "share_memory_", _fail_share_memory)
    with pytest.raises(RuntimeError, match=r"could not allocate .* shared memory .*--shm-size.*storage='file'"):
        StatsTable(16, MODS, storage="shm")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.warns(StatsStorageWarning, match="using a file-backed table"):
        assert StatsTable(16, MODS).storage == "file"


def test_dev_shm_full_in_a_worker(monkeypatch):
    """A worker that cannot get shared memory for a batch: the error says so, instead of
    blaming a modality (simulated in this process: the worker paths, failing storage)."""
    import torch.utils.data._utils.collate as torch_collate

    import midas_data.data.collate as collate_module
    import midas_data.data.packing as packing_module

    monkeypatch.setattr(collate_module, "get_worker_info", lambda: object())
    monkeypatch.setattr(packing_module, "get_worker_info", lambda: object())
    monkeypatch.setattr(torch_collate, "get_worker_info", lambda: object(), raising=False)
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", classmethod(lambda cls, *a, **k: _fail_share_memory(None)))
    samples = MidasDataset(Items()).__getitems__(list(range(8)))
    with pytest.raises(MidasDataError, match=r"batch of samples \[0, 1, .*could not allocate shared memory.*/dev/shm"):
        MidasCollate(MODS)(samples)


# -- the feedback loop --------------------------------------------------------------------
def test_stats_update_with_nan():
    table = StatsTable(16, MODS)
    table.update(torch.tensor([2]), confidence=torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"confidence: \[nan, 0.25\] for sample id 9 \(row 1\) is not finite.*unch"):
        table.update(torch.tensor([2, 9]), confidence=torch.tensor([[0.75, 0.75], [float("nan"), 0.25]]))
    assert table.read([2])["confidence"].tolist() == [[0.5, 0.5]] and table.num_updates == 1


def test_set_epoch_going_backwards():
    loader = midas_loader(Items(), MODS, batch_size=4)
    set_epoch(loader, 3)
    with pytest.warns(MidasDataWarning, match=r"set_epoch\(1\) after epoch 3: epoch 1's sample order and pair plans"):
        set_epoch(loader, 1)
    with pytest.raises(ValueError, match=r"epoch: expected a non-negative int, got -1"):
        set_epoch(loader, -1)
    with pytest.raises(ValueError, match=r"epoch: expected a non-negative int, got 1.5"):
        set_epoch(loader, 1.5)
    # A checkpoint may take the epoch back without a warning.
    state = MidasBatchSampler(16, 4).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.batch_sampler.load_state_dict(state)


def test_objective_and_loader_with_different_modality_orders():
    batch = first_batch(Items(), ("video", "audio"))
    net = model()
    with pytest.raises(ValueError, match=r"batch.modalities \('video', 'audio'\) differ from the objective's"):
        MidasObjective(NUM_CLASSES, MODS)(net(batch.inputs), batch, fuse=net.fuse)
    with pytest.raises(ValueError, match=r"stats: the table's modalities \('video', 'audio'\) are the loader's"):
        midas_loader(Items(), MODS, batch_size=4, stats=StatsTable(16, ("video", "audio")))


# -- the catalogue itself -----------------------------------------------------------------
def test_the_catalogue_names_every_test_and_only_these():
    rows = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines() if line.startswith("| ")]
    named = [re.findall(r"`(test_\w+)`", row)[-1] for row in rows if re.search(r"`test_\w+` \|$", row)]
    tests = {name for name in globals() if name.startswith("test_")} - {
        "test_the_catalogue_names_every_test_and_only_these"
    }
    assert len(named) >= 25
    # Every test here is in the catalogue; every test the catalogue names exists, here or in
    # the test module of its part (precision, trainers).
    assert tests <= set(named)
    defined = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    assert [name for name in named if f"def {name}(" not in defined] == []
