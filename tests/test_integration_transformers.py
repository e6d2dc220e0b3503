"""MidasTrainer with the real Hugging Face Trainer: epochs, feedback, logging, evaluation,
gradient accumulation, checkpoints, two processes under torchrun (the example script)."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from many_processes import free_port
from torch import nn

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from example_runs import ROOT, assert_shared_epochs, run_example  # noqa: E402

from midas_data import LateFusionClassifier, MidasObjective, StatsTable  # noqa: E402
from midas_data.integrations.transformers import STATE_FILE, MidasTrainer  # noqa: E402

MODALITIES = ("a", "b")
N, C = 40, 3


def data(n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    a = nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(n, 4, generator=g)
    b = nn.functional.one_hot(labels, 4).float() * 0.5 + torch.randn(n, 4, generator=g)
    columns = {"a": a.numpy(), "b": b.numpy(), "label": labels.numpy(), "note": [f"row {i}" for i in range(n)]}
    return datasets.Dataset.from_dict(columns).with_format("torch")


def model() -> LateFusionClassifier:
    torch.manual_seed(0)
    return LateFusionClassifier({m: nn.Linear(4, 8) for m in MODALITIES}, {m: 8 for m in MODALITIES}, C)


class Recording(MidasTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen.append((inputs.epoch, inputs.ids.tolist(), inputs.plan.tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def trainer(out, *, epochs=3, net=None, policy="uniform", **args) -> Recording:
    objective = MidasObjective(C, MODALITIES, warmup_epochs=1)
    training = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_train_epochs=epochs,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **{"logging_steps": 1, "save_strategy": "no", **args},
    )
    made = Recording(
        model=net or model(),
        args=training,
        train_dataset=data(),
        eval_dataset=data(30, seed=1),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, 1) == p.label_ids).mean())},
        objective=objective,
        stats=StatsTable(N, MODALITIES),
        midas_loader_kwargs={"policy": policy},
    )
    made.seen = []
    return made


def run(t: Recording, **kwargs) -> Recording:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.train(**kwargs)
    return t


def test_training_feedback_logging_and_evaluation_in_one_process(tmp_path):
    t = run(trainer(tmp_path))
    epochs = [e for e, _, _ in t.seen]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1, 2}
    orders = []
    for epoch in range(3):
        ids = [i for e, batch, _ in t.seen if e == epoch for i in batch]
        assert sorted(ids) == list(range(N))  # every sample once per epoch
        orders.append(ids)
    assert orders[0] != orders[1] != orders[2]
    assert t.objective.epoch == 2
    assert bool((t.stats.last_step >= 0).all()) and not torch.isnan(t.stats.similarity).any()
    logged = [entry for entry in t.state.log_history if "midas/alpha_a" in entry]
    assert logged and logged[-1]["midas/num_misaligned"] > 0 and "midas/share_b" in logged[-1]
    assert [logged[-1]["midas/alpha_a"], logged[-1]["midas/alpha_b"]] == t.objective.alpha.tolist()
    # Evaluation is the Trainer's own path; remove_unused_columns (on by default) kept the modalities.
    metrics = t.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and np.isfinite(metrics["eval_loss"])


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    t = run(trainer(tmp_path, epochs=1, gradient_accumulation_steps=2))
    assert len(t.seen) == 5 and t.state.global_step == 3  # 5 batches: steps of 2, 2 and 1


def test_alpha_takes_one_step_per_optimizer_step_under_accumulation(tmp_path):
    t = trainer(
        tmp_path, epochs=5, gradient_accumulation_steps=2, dataloader_num_workers=2, dataloader_persistent_workers=True
    )
    changes = []
    original = t.objective.step_alpha

    def recording_step():
        before = t.objective.alpha.clone()
        after = original()
        changes.append(not torch.equal(before, after))
        return after

    t.objective.step_alpha = recording_step
    run(t)
    micro_batches = len(t.seen)
    assert micro_batches == 25 and t.state.global_step == 15
    # One controller step per optimizer step (warm-up steps gather nothing and leave alpha).
    assert len(changes) == t.state.global_step == int(t.objective.controller.steps)
    assert any(changes) and t.objective.alpha.max() > 1


def test_a_midas_loader_under_the_plain_trainer_names_midas_trainer(tmp_path):
    from midas_data import midas_loader

    items = [{"a": torch.randn(4), "b": torch.randn(4), "label": i % C} for i in range(16)]

    class Plain(transformers.Trainer):
        def get_train_dataloader(self):
            return midas_loader(items, MODALITIES, batch_size=8)

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", num_train_epochs=1, disable_tqdm=True
    )
    with pytest.raises(TypeError, match="MidasTrainer"):
        Plain(model=model(), args=args, train_dataset=items).train()


@pytest.mark.parametrize(
    "workers",
    [{}, {"dataloader_num_workers": 2, "dataloader_persistent_workers": True}],
    ids=["0 workers", "2 persistent"],
)
@pytest.mark.parametrize("at", [12, 10], ids=["mid-epoch", "epoch end"])
def test_a_checkpoint_resumes_midas_exactly(tmp_path, workers, at):
    straight = run(trainer(tmp_path / "straight", policy="hard", **workers))
    # A checkpoint in the middle of the third epoch (5 steps an epoch), or at the end of the second.
    first = run(trainer(tmp_path / "first", policy="hard", save_strategy="steps", save_steps=at, **workers))
    checkpoint = tmp_path / "first" / f"checkpoint-{at}"
    assert (checkpoint / STATE_FILE).is_file()
    for later in tmp_path.joinpath("first").glob("checkpoint-*"):
        if later != checkpoint:
            shutil.rmtree(later)
    resumed = run(trainer(tmp_path / "first", policy="hard", **workers), resume_from_checkpoint=True)
    assert resumed.seen == straight.seen[at:]  # the same ids and pair plans after the checkpoint
    assert torch.equal(resumed.objective.alpha, straight.objective.alpha)
    assert torch.allclose(resumed.stats.values, straight.stats.values, rtol=0, atol=0, equal_nan=True)
    assert first.state.global_step == resumed.state.global_step == 15


class LogitsOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = model()

    def forward(self, inputs):
        return self.net(inputs).fusion_logits


def test_a_model_off_the_protocol_gets_an_error_naming_what_is_missing(tmp_path):
    with pytest.raises(TypeError, match=r"returned a Tensor without \['features'.*MultimodalOutput\(features="):
        run(trainer(tmp_path, epochs=1, net=LogitsOnly()))


def test_resuming_from_a_checkpoint_without_midas_state_is_refused(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        run(trainer(tmp_path), resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_two_processes_under_torchrun_share_epochs_once_with_one_alpha(tmp_path):
    port = free_port()
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    args += [str(ROOT / "examples" / "hf_trainer_train.py"), "--epochs", "3", "--samples", "100", "--batch-size", "8"]
    # Gradient accumulation too: MIDAS's collectives run inside DDP's no_sync steps.
    result = run_example([*args, "--gradient-accumulation-steps", "2", "--output-dir", str(tmp_path)], tmp_path)
    assert_shared_epochs(result, samples=100, epochs=3)
    assert result["logged_alpha"] is not None


@pytest.mark.parametrize("step", [4, 6], ids=["mid-epoch", "epoch end"])
def test_two_processes_with_workers_resume_exactly(tmp_path, step):
    """torchrun, 2 ranks x 2 persistent workers, policy='hard', 4 epochs of 3 steps: the run
    resumed from the checkpoint at ``step`` trains the same batches, losses and alpha as the
    uninterrupted run and ends with the same table, on both ranks."""
    import json

    port = free_port()
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    args += [str(ROOT / "tests" / "hf_resume.py"), "--out", str(tmp_path), "--workers", "2", "--resume-step", str(step)]
    run_example(args, tmp_path, timeout=300)
    for rank in range(2):
        straight = json.loads((tmp_path / f"straight-rank{rank}.json").read_text())
        resumed = json.loads((tmp_path / f"resumed-rank{rank}.json").read_text())
        assert len(straight["steps"]) == 12 and len(resumed["steps"]) == 12 - step
        assert resumed["steps"] == straight["steps"][step:]
        assert resumed["alpha"] == straight["alpha"]
        assert torch.equal(
            torch.tensor(resumed["table"]).nan_to_num(-9), torch.tensor(straight["table"]).nan_to_num(-9)
        )
