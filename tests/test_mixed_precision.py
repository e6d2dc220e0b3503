"""Mixed-precision training with MIDAS on CPU, wired the way the docs show it.

Every training path of the docs is run with reduced precision for three epochs, the first
of them warm-up (``warmup_epochs=1``), at feature level and at input level:

* a plain loop with ``torch.autocast("cpu", ...)`` (bf16, and fp16 where CPU autocast has
  it), with the objective called inside the autocast region and outside it (the second is
  what Accelerate does: it autocasts ``model.forward`` only);
* Accelerate, ``Accelerator(mixed_precision="bf16", cpu=True)``, as in
  ``examples/accelerate_train.py``;
* the Hugging Face ``MidasTrainer`` with ``TrainingArguments(bf16=True, use_cpu=True)``;
* Lightning with ``precision="bf16-mixed"`` and ``MidasCallback``.

Each run must give a finite loss on every step, train misaligned rows after warm-up
(``info["num_misaligned"] > 0`` and a finite, positive ``loss_mis``) and leave alpha finite
and float32. Then the numerics on fp16 tensors directly (the hard-sample weights with
norms whose products overflow fp16, and a zero feature row), and what is expected of
inputs that mix or misuse dtypes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import midas_data.functional as MF
from midas_data import LateFusionClassifier, MidasObjective, midas_loader
from midas_data.models import MultimodalOutput

MODALITIES = ("audio", "video")
DIMS = {"audio": 12, "video": 10}
FEATURE_DIM = 16
C = 4  # classes
N = 128  # samples: 4 batches of 32 per epoch
BATCH = 32
EPOCHS = 5
WARMUP = 1
LEVELS = ("feature", "input")


# -- data and model ----------------------------------------------------------------------
def make_items(n: int = N, seed: int = 0) -> list[dict]:
    """A strong audio signal and a weak video one, as in the examples."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    audio = nn.functional.one_hot(labels, DIMS["audio"]).float() * 2.0 + torch.randn(n, DIMS["audio"], generator=g)
    video = nn.functional.one_hot(labels, DIMS["video"]).float() * 0.7 + torch.randn(n, DIMS["video"], generator=g)
    return [{"audio": audio[i], "video": video[i], "label": int(labels[i])} for i in range(n)]


def make_model(seed: int = 0) -> LateFusionClassifier:
    torch.manual_seed(seed)
    encoders = {m: nn.Sequential(nn.Linear(DIMS[m], FEATURE_DIM), nn.ReLU()) for m in MODALITIES}
    return LateFusionClassifier(encoders, {m: FEATURE_DIM for m in MODALITIES}, C)


def make_loader(level: str, num_workers: int = 0):
    workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    return midas_loader(make_items(), MODALITIES, "label", batch_size=BATCH, mode=level, num_classes=C, **workers)


def record_head_dtypes(model: LateFusionClassifier) -> set[torch.dtype]:
    """The dtypes the fusion head produced, to check a run really computed in reduced precision."""
    seen: set[torch.dtype] = set()
    model.fusion_head.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    return seen


def cpu_autocast_supports(dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast("cpu", dtype=dtype)`` really runs a matmul in ``dtype``."""
    from torch.amp.autocast_mode import is_autocast_available

    if not is_autocast_available("cpu"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unsupported dtype disables autocast with a warning
            with torch.autocast("cpu", dtype=dtype):
                out = nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    except (RuntimeError, ValueError, TypeError):
        return False
    return out.dtype == dtype


# -- what every run must show --------------------------------------------------------------
@dataclass
class Step:
    epoch: int
    loss: float
    num_misaligned: int
    loss_mis: float | None


def step_of(epoch: int, loss: torch.Tensor | float, info: dict) -> Step:
    loss_mis = info.get("loss_mis")
    return Step(
        epoch=int(epoch),
        loss=float(loss),
        num_misaligned=int(info["num_misaligned"]),
        loss_mis=None if loss_mis is None else float(loss_mis),
    )


def assert_trained_past_warmup(steps: list[Step], alpha: torch.Tensor, batches_per_epoch: int = N // BATCH) -> None:
    assert steps, "no training step ran"
    bad = [(i, s.epoch, s.loss) for i, s in enumerate(steps) if not math.isfinite(s.loss)]
    assert not bad, f"non-finite loss at (step, epoch, loss) {bad[:5]}"
    assert sorted({s.epoch for s in steps}) == list(range(EPOCHS)), [s.epoch for s in steps]
    warm = [s for s in steps if s.epoch < WARMUP]
    after = [s for s in steps if s.epoch >= WARMUP]
    assert all(s.num_misaligned == 0 for s in warm), "misaligned rows trained during warm-up"
    assert len(after) >= (EPOCHS - WARMUP) * batches_per_epoch, f"only {len(after)} steps after warm-up"
    untrained = [(s.epoch, s.num_misaligned) for s in after if s.num_misaligned <= 0]
    assert not untrained, f"steps after warm-up without misaligned rows (epoch, rows): {untrained}"
    mis = [s.loss_mis for s in after]
    assert all(v is not None and math.isfinite(v) and v > 0 for v in mis), f"loss_mis after warm-up: {mis}"
    assert alpha.dtype == torch.float32, f"alpha became {alpha.dtype}"
    assert bool(torch.isfinite(alpha).all()), f"alpha is not finite: {alpha}"


def assert_finite_parameters(model: nn.Module) -> None:
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    assert not bad, f"parameters with NaN/inf after training: {bad}"


def assert_finite_gradients(model: nn.Module) -> None:
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads, "no gradient reached the model"
    bad = [name for name, grad in grads.items() if not bool(torch.isfinite(grad).all())]
    assert not bad, f"non-finite gradients: {bad}"


# -- 1. a plain loop under torch.autocast ----------------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_plain(level: str, dtype: torch.dtype, objective_in_autocast: bool, num_workers: int = 0):
    model = make_model()
    head_dtypes = record_head_dtypes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = make_loader(level, num_workers)
    objective = MidasObjective(C, MODALITIES, warmup_epochs=WARMUP)
    # fp16 needs loss scaling as in PyTorch's AMP recipe; bf16 does not.
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None

    def midas(output, batch, misaligned_logits):
        if level == "feature":
            return objective(output, batch, model=model)
        return objective(output, batch, misaligned_logits=misaligned_logits)

    steps = []
    for _ in range(EPOCHS):
        for batch in loader:
            with torch.autocast("cpu", dtype=dtype):
                output = model(batch.inputs)
                mis_logits = model(batch.misaligned_inputs).fusion_logits if level == "input" else None
                if objective_in_autocast:
                    loss, info = midas(output, batch, mis_logits)
            if not objective_in_autocast:
                loss, info = midas(output, batch, mis_logits)
            optimizer.zero_grad()
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            steps.append(step_of(batch.epoch, loss.detach(), info))
    assert dtype in head_dtypes, f"autocast did not run the fusion head in {dtype}: {head_dtypes}"
    return steps, objective, model


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("placement", ["objective inside autocast", "objective outside autocast"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_plain_loop_under_cpu_autocast(level, placement, precision):
    """``with torch.autocast("cpu", dtype)`` around the forward, and the objective either in
    the same region or after it (features and logits then reach the objective, and its
    ``fuse``, in bf16/fp16 while the fusion head's weights are fp32)."""
    dtype = DTYPES[precision]
    if not cpu_autocast_supports(dtype):
        pytest.skip(f"torch {torch.__version__}: CPU autocast does not run matmuls in {dtype}")
    steps, objective, model = train_plain(level, dtype, placement == "objective inside autocast")
    assert_trained_past_warmup(steps, objective.alpha)
    assert_finite_parameters(model)


# -- 2. Accelerate -----------------------------------------------------------------------
@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons; every test gets its own."""
    state = pytest.importorskip("accelerate.state")
    state.AcceleratorState._reset_state(True)
    state.GradientState._reset_state()
    yield
    state.AcceleratorState._reset_state(True)
    state.GradientState._reset_state()


# fp16: Accelerate and transformers accept it on CPU but run in fp32 there (no autocast).
@pytest.mark.parametrize("precision", ["bf16"])
@pytest.mark.parametrize("level", LEVELS)
def test_accelerate_mixed_precision(level, precision, fresh_accelerate_state):
    """Accelerate autocasts ``model.forward`` only and hands back the ``MultimodalOutput``
    unconverted: the objective (and at feature level the fusion head it runs) sees bf16
    features outside any autocast region."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=precision, cpu=True)
    model = make_model()
    head_dtypes = record_head_dtypes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = make_loader(level, num_workers=2)  # the global sampler, as the docs say for Accelerate
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    objective = MidasObjective(C, MODALITIES, warmup_epochs=WARMUP)

    steps = []
    for _ in range(EPOCHS):
        for batch in loader:
            output = model(batch.inputs)
            if level == "feature":
                loss, info = objective(output, batch, model=model)
            else:
                loss, info = objective(output, batch, misaligned_logits=model(batch.misaligned_inputs).fusion_logits)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            steps.append(step_of(batch.epoch, loss.detach(), info))
    assert DTYPES[precision] in head_dtypes, f"Accelerate did not autocast the forward: {head_dtypes}"
    assert_trained_past_warmup(steps, objective.alpha)
    assert_finite_parameters(accelerator.unwrap_model(model))


# -- 3. Hugging Face MidasTrainer ----------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16"])
@pytest.mark.parametrize("level", LEVELS)
def test_hf_midas_trainer_mixed_precision(level, precision, tmp_path, fresh_accelerate_state):
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    from midas_data import MidasBatch
    from midas_data.integrations.transformers import MidasTrainer

    class Recording(MidasTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not isinstance(inputs, MidasBatch):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, info = super().compute_loss(model, inputs, True, num_items_in_batch)
            self.steps.append(step_of(inputs.epoch, loss.detach(), info))
            return (loss, info) if return_outputs else loss

    items = make_items()
    columns = {key: torch.stack([torch.as_tensor(item[key]) for item in items]).numpy() for key in items[0]}
    train = datasets.Dataset.from_dict(columns).with_format("torch")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        num_train_epochs=EPOCHS,
        learning_rate=0.05,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    model = make_model()
    head_dtypes = record_head_dtypes(model)
    objective = MidasObjective(C, MODALITIES, warmup_epochs=WARMUP)
    trainer = Recording(
        model=model, args=args, train_dataset=train, objective=objective, midas_loader_kwargs={"mode": level}
    )
    trainer.steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert DTYPES[precision] in head_dtypes, f"{precision}=True did not run the model in {precision}: {head_dtypes}"
    assert_trained_past_warmup(trainer.steps, objective.alpha)
    assert_finite_parameters(model)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(math.isfinite(entry["loss"]) for entry in logged), logged


# -- 4. Lightning --------------------------------------------------------------------------
@pytest.mark.parametrize(("level", "num_workers"), [("feature", 0), ("input", 1)])
def test_lightning_bf16_mixed(level, num_workers):
    pl = pytest.importorskip("lightning.pytorch")
    from midas_data.integrations.lightning import MidasCallback, midas_step

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()
            self.objective = MidasObjective(C, MODALITIES, warmup_epochs=WARMUP)
            self.autocast_on: list[bool] = []

        def training_step(self, batch, batch_idx):
            self.autocast_on.append(torch.is_autocast_enabled("cpu"))
            return midas_step(self.objective, self.net, batch)

        def train_dataloader(self):
            return make_loader(level, num_workers)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    class Steps(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[Step] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps.append(step_of(batch.epoch, outputs["loss"], outputs["midas"]))

    module, record = Classifier(), Steps()
    head_dtypes = record_head_dtypes(module.net)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=EPOCHS,
        callbacks=[MidasCallback(), record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(many workers|LeafSpec).*")
        trainer.fit(module)
    assert module.autocast_on and all(module.autocast_on), "bf16-mixed did not autocast training_step"
    assert torch.bfloat16 in head_dtypes, head_dtypes
    assert_trained_past_warmup(record.steps, module.objective.alpha)
    assert_finite_parameters(module.net)


# -- 5. fp16 numerics without autocast -----------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1000.0], ids=["norms near 4", "norms above 256"])
def test_hard_sample_weights_on_fp16_features(scale):
    """fp16 features with all-zero rows, at unit scale and at a scale where the norms exceed
    256 (so a product of two norms, or of two entries, overflows fp16): the weights are
    finite, within [1, 2], and agree with the same values computed in fp32 to 1e-3."""
    g = torch.Generator().manual_seed(0)
    k, d = 12, FEATURE_DIM
    originals = [torch.randn(k, d, generator=g) * scale for _ in MODALITIES]
    swapped = [torch.randn(k, d, generator=g) * scale for _ in MODALITIES]
    originals[0][2] = 0.0  # all-zero anchor rows
    originals[1][7] = 0.0
    swapped[0][3] = 0.0  # an all-zero swapped-in row
    swapped[1][5] = -originals[1][5]  # similarity -1 in one modality
    swapped[0][9] = originals[0][9]  # similarity 1
    swapped[1][9] = originals[1][9]
    half_orig = [f.half() for f in originals]
    half_swap = [f.half() for f in swapped]
    if scale > 1:
        assert float(half_orig[0].float().norm(dim=1).max()) > 256

    weights16 = MF.hard_sample_weights(half_orig, half_swap)
    weights32 = MF.hard_sample_weights([f.float() for f in half_orig], [f.float() for f in half_swap])
    got = weights16.float()
    assert bool(torch.isfinite(got).all()), got
    assert bool(((got >= 1.0) & (got <= 2.0)).all()), got
    torch.testing.assert_close(got, weights32, atol=1e-3, rtol=0)
    assert abs(float(got[9]) - 2.0) <= 1e-3  # identical rows: s = 1


@pytest.mark.parametrize("how", ["fp32 model, fuse casts to the head's dtype", "model.half()"])
def test_objective_on_fp16_features_and_logits(how):
    """A ``MultimodalOutput`` whose features and logits are fp16, with features large enough
    that fp16 norms overflow: the MIDAS loss after warm-up is finite and so are the gradients."""
    items = make_items(BATCH)
    labels = torch.tensor([item["label"] for item in items])
    inputs = {m: torch.stack([item[m] for item in items]) * 250.0 for m in MODALITIES}
    model = make_model()
    if how == "model.half()":
        model = model.half()
        output = model({m: x.half() for m, x in inputs.items()})
        fuse = model.fuse
    else:
        out32 = model(inputs)
        output = MultimodalOutput(
            {m: f.half() for m, f in out32.features.items()},
            {m: lg.half() for m, lg in out32.unimodal_logits.items()},
            out32.fusion_logits.half(),
        )

        def fuse(features):
            dtype = model.fusion_head.weight.dtype
            return model.fuse({m: f.to(dtype) for m, f in features.items()})

    assert output.fusion_logits.dtype == torch.float16
    assert all(f.dtype == torch.float16 for f in output.features.values())
    norms = output.features["audio"].detach().float().norm(dim=1)
    assert float(norms.median()) > 256, "the features should be large enough to overflow fp16 norm products"
    plan = MF.plan_pairs(labels, len(MODALITIES), torch.Generator().manual_seed(0))
    objective = MidasObjective(C, MODALITIES, warmup_epochs=0)
    loss, info = objective(output, labels=labels, plan=plan.sources, anchors=plan.anchors, fuse=fuse)
    assert bool(torch.isfinite(loss)), loss
    assert info["num_misaligned"] > 0 and bool(torch.isfinite(info["loss_mis"]))
    assert bool(torch.isfinite(info["hard_weight"])), info["hard_weight"]
    assert bool(torch.isfinite(objective.alpha).all()), objective.alpha
    loss.backward()
    assert_finite_gradients(model)


# -- 6. inputs that mix or misuse dtypes -----------------------------------------------------
def one_batch(level: str):
    """The first batch of a loader, the model and its fp32 output on that batch."""
    batch = next(iter(make_loader(level)))
    model = make_model()
    return batch, model, model(batch.inputs)


def call_objective(level, model, output, batch, *, fuse=None, misaligned_logits=None):
    """One call of a fresh objective without warm-up, so the misaligned rows count at once."""
    objective = MidasObjective(C, MODALITIES, warmup_epochs=0)
    if level == "feature":
        loss, info = objective(output, batch, fuse=fuse if fuse is not None else model.fuse)
    else:
        if misaligned_logits is None:
            misaligned_logits = model(batch.misaligned_inputs).fusion_logits
        loss, info = objective(output, batch, misaligned_logits=misaligned_logits)
    return loss, info, objective


def with_features(output: MultimodalOutput, **features: torch.Tensor) -> MultimodalOutput:
    return MultimodalOutput({**output.features, **features}, dict(output.unimodal_logits), output.fusion_logits)


@pytest.mark.parametrize("level", LEVELS)
def test_features_of_different_dtypes_across_modalities(level):
    """Expected: bf16 audio features next to fp32 video features either give a finite loss
    that trains (gradients finite), or a TypeError/ValueError that names the modality and
    its dtype. A RuntimeError from deep inside torch is neither."""
    batch, model, output = one_batch(level)
    mixed = with_features(output, audio=output.features["audio"].to(torch.bfloat16))
    try:
        loss, info, objective = call_objective(level, model, mixed, batch)
    except (TypeError, ValueError) as error:
        message = str(error)
        assert "audio" in message and ("bfloat16" in message or "dtype" in message), message
        return
    assert bool(torch.isfinite(loss)), loss
    assert info["num_misaligned"] > 0
    assert bool(torch.isfinite(objective.alpha).all())
    loss.backward()
    assert_finite_gradients(model)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_integer_features_are_refused_naming_the_modality(level, int_dtype):
    """Expected: integer features (a model that returned token ids or a mask instead of
    features) raise a TypeError or ValueError that names the modality, not a RuntimeError
    from inside torch and not a silently wrong loss."""
    batch, model, output = one_batch(level)
    ints = torch.randint(0, 5, output.features["video"].shape, dtype=torch.int64).to(int_dtype)
    bad = with_features(output, video=ints)

    def fuse(features):  # a fusion head that would accept them, so only the objective can object
        return model.fuse({m: f.float() for m, f in features.items()})

    with pytest.raises((TypeError, ValueError), match="video"):
        call_objective(level, model, bad, batch, fuse=fuse)


def other_dtype_case(level: str, direction: str):
    """A batch, the model, an output and a fusion head (feature level) or misaligned logits
    (input level) whose dtype differs from the output's fusion logits."""
    batch, model, out32 = one_batch(level)
    bf16 = torch.bfloat16
    if direction.startswith("forward bf16"):
        output = MultimodalOutput(
            {m: f.to(bf16) for m, f in out32.features.items()},
            {m: lg.to(bf16) for m, lg in out32.unimodal_logits.items()},
            out32.fusion_logits.to(bf16),
        )
        mis_dtype = torch.float32
    else:
        output, mis_dtype = out32, bf16

    def fuse(features):  # runs the head in fp32, returns mis_dtype
        return model.fuse({m: f.float() for m, f in features.items()}).to(mis_dtype)

    mis_logits = model(batch.misaligned_inputs).fusion_logits.to(mis_dtype) if level == "input" else None
    return batch, model, output, fuse, mis_logits


DIRECTIONS = ["forward fp32, misaligned bf16", "forward bf16, misaligned fp32"]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_misaligned_logits_in_another_dtype_than_the_fusion_logits(level, direction):
    """Expected: a ``fuse`` (feature level) or ``misaligned_logits`` (input level) whose dtype
    differs from the forward's fusion logits works, gives a float32 loss and trains."""
    batch, model, output, fuse, mis_logits = other_dtype_case(level, direction)
    loss, info, objective = call_objective(level, model, output, batch, fuse=fuse, misaligned_logits=mis_logits)
    assert loss.dtype == torch.float32, f"loss in {loss.dtype}"
    assert bool(torch.isfinite(loss)) and info["num_misaligned"] > 0
    assert bool(torch.isfinite(objective.alpha).all())
    loss.backward()
    assert_finite_gradients(model)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_loss_from_mixed_dtypes_is_computed_in_fp32(level, direction):
    """Expected: the loss is computed in fp32 whatever dtypes the logits and features come
    in, so it equals (to 1e-4 relative) the loss of the same values upcast to fp32 first;
    so do the per-sample misaligned losses (one row's loss would show bf16 rounding, about
    4e-3 relative, which a mean over the batch can hide)."""
    batch, model, output, fuse, mis_logits = other_dtype_case(level, direction)
    produced = []  # what the fusion head gave on the recombined features, however the objective ran it

    def recording_fuse(features):
        produced.append(fuse(features))
        return produced[-1]

    with torch.no_grad():
        loss, info, _ = call_objective(level, model, output, batch, fuse=recording_fuse, misaligned_logits=mis_logits)
        upcast = MultimodalOutput(
            {m: f.float() for m, f in output.features.items()},
            {m: lg.float() for m, lg in output.unimodal_logits.items()},
            output.fusion_logits.float(),
        )
        reference, reference_info, _ = call_objective(
            level,
            model,
            upcast,
            batch,
            fuse=lambda f: produced[0].float(),
            misaligned_logits=None if mis_logits is None else mis_logits.float(),
        )
    torch.testing.assert_close(loss.float(), reference, rtol=1e-4, atol=1e-6, msg=lambda m: f"total loss: {m}")
    torch.testing.assert_close(
        info["per_sample"]["misaligned_loss"].float(),
        reference_info["per_sample"]["misaligned_loss"],
        rtol=1e-4,
        atol=1e-6,
        msg=lambda m: f"per-sample misaligned loss: {m}",
    )
