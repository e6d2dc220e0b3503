"""A small training and evaluation toolkit shared by the demo and the benchmarks.

It trains a :class:`~midas_data.models.LateFusionClassifier` with one of several methods,
all fed the same :func:`~midas_data.midas_loader` batches (the baselines ignore the pair
plan), evaluates on aligned and on misaligned samples every epoch, and keeps the
checkpoint with the best *validation* accuracy. The test split is touched once, by the
caller, with the selected checkpoint.

Methods (each a small class with ``loss(model, batch)``):

* ``joint`` — fusion cross-entropy only. Its unimodal heads are trained as *probes* on
  detached features, so per-modality accuracy measures what each encoder learned without
  changing the training of the encoders.
* ``joint_heads`` — fusion cross-entropy plus every unimodal head's cross-entropy.
* ``mixup`` — ``joint_heads`` plus feature-level Mixup: the features of two samples are
  mixed with ``lambda ~ Beta(a, a)`` (all modalities with the same lambda), the fusion head
  is trained on the mixture against the mixed soft target.
* ``ogm_ge`` — on-the-fly gradient modulation with generalisation enhancement (Peng et
  al., CVPR 2022): the encoder of the modality whose share of the fusion head's
  confidence is larger gets its gradient scaled by ``1 - tanh(alpha * (ratio - 1))``, and
  Gaussian noise with the gradient's own standard deviation is added to the encoders'
  gradients. Unimodal heads are probes, as for ``joint``.
* ``midas`` and its ablations — :class:`~midas_data.objective.MidasObjective`,
  feature-level misalignment; ``midas_sampler_hard`` and ``midas_sampler_weak`` draw their
  batches with the sampler's prioritised policies, fed back from the objective.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import functional as MF
from . import metrics
from .batch import MidasBatch
from .loader import midas_loader, set_epoch
from .models import LateFusionClassifier, MultimodalOutput
from .objective import MidasObjective

__all__ = [
    "InMemoryDataset",
    "cache_dataset",
    "image_encoder",
    "audio_encoder",
    "build_model",
    "TrainConfig",
    "Method",
    "JointTraining",
    "FeatureMixup",
    "mixup_lambda",
    "OGMGE",
    "ogm_coefficients",
    "MidasMethod",
    "PrioritisedMidasMethod",
    "METHODS",
    "make_method",
    "Predictions",
    "predict",
    "misaligned_plan",
    "evaluate",
    "FitResult",
    "fit",
    "RunResult",
    "run",
]


# -- data ------------------------------------------------------------------------------
class InMemoryDataset(Dataset):
    """A dataset held as stacked tensors: ``{modality: [N, ...]}`` and ``labels [N]``.

    Items are dicts ``{modality: tensor, label_key: int}``, the layout that
    :func:`~midas_data.midas_loader` expects. Reading every item of a decoding dataset
    once into memory makes each epoch cost the model's compute only; it is exact for any
    dataset whose item ``i`` is the same on every read.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor, label_key: str = "label") -> None:
        if labels.dim() != 1 or labels.dtype.is_floating_point:
            raise ValueError(f"labels: expected an integer tensor [N], got {labels.dtype} {tuple(labels.shape)}")
        for name, value in tensors.items():
            if value.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"tensors[{name!r}]: expected {labels.shape[0]} rows (one per label), got {value.shape[0]}"
                )
        if label_key in tensors:
            raise ValueError(f"label_key {label_key!r} is also a modality name")
        self.tensors = dict(tensors)
        self.labels = labels.long()
        self.label_key = label_key

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {name: value[index] for name, value in self.tensors.items()}
        item[self.label_key] = int(self.labels[index])
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def subset(self, indices: torch.Tensor) -> InMemoryDataset:
        """The rows ``indices`` as a new dataset."""
        return InMemoryDataset({k: v[indices] for k, v in self.tensors.items()}, self.labels[indices], self.label_key)


def cache_dataset(dataset: Any, modalities: Sequence[str], label_key: str = "label") -> InMemoryDataset:
    """Read every item of ``dataset`` once and stack it into an :class:`InMemoryDataset`."""
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    columns: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    labels: list[int] = []
    for i in range(len(dataset)):
        item = dataset[i]
        for m in modalities:
            if m not in item:
                raise KeyError(f"dataset[{i}]: has no modality {m!r}; keys are {sorted(item)}")
            columns[m].append(torch.as_tensor(item[m]))
        labels.append(int(item[label_key]))
    return InMemoryDataset({m: torch.stack(v) for m, v in columns.items()}, torch.tensor(labels), label_key)


# -- models ----------------------------------------------------------------------------
def image_encoder(feature_dim: int = 64, pixels: int = 64, dropout: float = 0.0) -> nn.Module:
    """An MLP for small grey images ``[B, 1, H, W]`` with ``H * W = pixels``.

    ``dropout`` on the pixels and the hidden layer; noisy images are easy to memorise.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(pixels, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, feature_dim),
        nn.ReLU(),
    )


class _DropChannel(nn.Module):
    """``[B, 1, F, T] -> [B, F, T]``: mel bins become the channels of a 1-D convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"audio: expected a log-mel batch [B, 1, F, T], got {tuple(x.shape)}")
        return x.squeeze(1)


def audio_encoder(feature_dim: int = 64, n_mels: int = 32) -> nn.Module:
    """A small time-delay network for log-mel spectrograms ``[B, 1, n_mels, T]``.

    Three 1-D convolutions over time with the mel bins as channels, then max-pooling over
    time: the spoken word may sit anywhere in the clip.
    """
    return nn.Sequential(
        _DropChannel(),
        nn.Conv1d(n_mels, 64, 5, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Conv1d(64, 64, 5, stride=2, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Conv1d(64, feature_dim, 3, stride=2, padding=1),
        nn.BatchNorm1d(feature_dim),
        nn.ReLU(),
        nn.AdaptiveMaxPool1d(1),
        nn.Flatten(),
    )


def build_model(
    input_shapes: Mapping[str, Sequence[int]],
    num_classes: int,
    feature_dim: int = 64,
    seed: int | None = None,
    image_dropout: float = 0.0,
) -> LateFusionClassifier:
    """A late-fusion classifier with an encoder chosen per input shape.

    ``[1, H, W]`` with ``H * W <= 256`` gets :func:`image_encoder`, a larger ``[1, F, T]``
    gets :func:`audio_encoder`; anything else must be given its own encoder.
    """
    if seed is not None:
        torch.manual_seed(seed)
    encoders: dict[str, nn.Module] = {}
    for name, shape in input_shapes.items():
        shape = tuple(shape)
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"input_shapes[{name!r}]: expected [1, H, W], got {list(shape)}")
        pixels = shape[1] * shape[2]
        encoders[name] = (
            image_encoder(feature_dim, pixels, image_dropout) if pixels <= 256 else audio_encoder(feature_dim, shape[1])
        )
    return LateFusionClassifier(encoders, {m: feature_dim for m in encoders}, num_classes)


# -- methods ---------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The training budget, identical for every method of a comparison."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    eval_seed: int = 1234  # pairs of the misaligned evaluation samples; fixed across methods
    image_dropout: float = 0.3  # chosen on joint training's validation accuracy (0, 0.3, 0.5)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


def _probe_loss(model: LateFusionClassifier, output: MultimodalOutput, labels: torch.Tensor) -> torch.Tensor:
    """Unimodal heads on *detached* features: they measure the encoders without training them."""
    return sum(F.cross_entropy(model.unimodal_heads[m](output.features[m].detach()), labels) for m in model.modalities)


def _heads_loss(output: MultimodalOutput, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(logits, labels) for logits in output.unimodal_logits.values())


class Method:
    """One training method. Subclasses define :meth:`loss`; the hooks default to no-ops."""

    name = "method"

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        """The batches of every method: MIDAS batches with the same order for all."""
        return midas_loader(dataset, tuple(modalities), "label", batch_size=config.batch_size, seed=config.seed)

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def after_backward(self, model: LateFusionClassifier) -> None:
        """Called between ``backward()`` and ``optimizer.step()``."""

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        """Called after ``optimizer.step()`` with the diagnostics of :meth:`loss`."""


class JointTraining(Method):
    """Fusion cross-entropy; ``heads=True`` adds the unimodal heads' cross-entropy."""

    def __init__(self, heads: bool = False) -> None:
        self.heads = heads
        self.name = "joint_heads" if heads else "joint"

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        loss = F.cross_entropy(output.fusion_logits, batch.labels)
        extra = _heads_loss(output, batch.labels) if self.heads else _probe_loss(model, output, batch.labels)
        return loss + extra, {}


def mixup_lambda(concentration: float) -> float:
    """``lambda ~ Beta(a, a)`` from torch's global generator (seeded by :func:`fit`)."""
    if concentration <= 0:
        raise ValueError(f"concentration: expected a > 0, got {concentration}")
    a = torch.tensor(float(concentration))
    return float(torch.distributions.Beta(a, a).sample())


class FeatureMixup(Method):
    """``joint_heads`` plus Mixup of the encoder features (the same lambda for every modality).

    The mixed row ``lambda * f_i + (1 - lambda) * f_j`` (``j`` a random permutation of the
    batch) is fused and trained against ``lambda * y_i + (1 - lambda) * y_j``, as an extra
    term beside the aligned losses, the way MIDAS adds its misaligned term.
    """

    name = "mixup"

    def __init__(self, concentration: float = 1.0, weight: float = 1.0) -> None:
        self.concentration = concentration
        self.weight = weight

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        labels = batch.labels
        aligned = F.cross_entropy(output.fusion_logits, labels) + _heads_loss(output, labels)
        lam = mixup_lambda(self.concentration)
        perm = torch.randperm(labels.shape[0], device=labels.device)
        mixed = {m: lam * f + (1.0 - lam) * f[perm] for m, f in output.features.items()}
        logits = model.fuse(mixed)
        mix_loss = lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(logits, labels[perm])
        return aligned + self.weight * mix_loss, {"mixup_lambda": lam}


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM modulation coefficients ``[M]`` from per-modality confidence sums ``[M]``.

    ``ratio_m = s_m / mean_{m' != m} s_m'``; a modality with ``ratio > 1`` dominates and
    gets ``1 - tanh(alpha * (ratio - 1))``, the others 1.
    """
    if scores.dim() != 1 or scores.numel() < 2:
        raise ValueError(f"scores: expected one confidence sum per modality [M >= 2], got {tuple(scores.shape)}")
    others = (scores.sum() - scores) / (scores.numel() - 1)
    ratio = scores / others.clamp_min(1e-12)
    return 1.0 - torch.tanh(alpha * (ratio - 1.0).clamp_min(0.0))


class OGMGE(Method):
    """OGM-GE for concat fusion with a linear head (Peng et al., CVPR 2022).

    The fusion head's logits split into one part per modality: ``W_m f_m + b / M``. The
    confidence of part ``m`` on the true labels, summed over the batch, gives ``s_m``;
    :func:`ogm_coefficients` turns the ratios into gradient scales for the encoders, and
    ``noise=True`` adds ``N(0, std(grad)^2)`` to each encoder gradient (generalisation
    enhancement). ``alpha`` sets the modulation strength.
    """

    name = "ogm_ge"

    def __init__(self, alpha: float = 0.5, noise: bool = True) -> None:
        self.alpha = alpha
        self.noise = noise
        self._coeff: torch.Tensor | None = None

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        head = getattr(model, "fusion_head", None)
        if not isinstance(head, nn.Linear):
            raise TypeError("ogm_ge: needs a model with a linear fusion_head over concatenated features")
        output = model(batch.inputs)
        labels = batch.labels
        with torch.no_grad():
            scores, start = [], 0
            for m in model.modalities:
                f = output.features[m].flatten(1)
                part = f @ head.weight[:, start : start + f.shape[1]].T + head.bias / len(model.modalities)
                start += f.shape[1]
                scores.append(part.softmax(dim=1).gather(1, labels.unsqueeze(1)).sum())
            self._coeff = ogm_coefficients(torch.stack(scores), self.alpha)
        loss = F.cross_entropy(output.fusion_logits, labels) + _probe_loss(model, output, labels)
        return loss, {"ogm_coefficients": self._coeff}

    def after_backward(self, model: LateFusionClassifier) -> None:
        if self._coeff is None:
            return
        for m, coeff in zip(model.modalities, self._coeff.tolist()):
            for p in model.encoders[m].parameters():
                if p.grad is None:
                    continue
                p.grad.mul_(coeff)
                if self.noise and p.grad.numel() > 1:
                    p.grad.add_(torch.randn_like(p.grad) * p.grad.std())


class MidasMethod(Method):
    """MIDAS, feature-level: :class:`MidasObjective` on :func:`midas_loader` batches.

    ``objective_kwargs`` go to :class:`MidasObjective` (``warmup_epochs``, ``lam``,
    ``eta``, ``alpha_max``, ``weak_modality_weighting``, ``hard_sample_weighting``...).
    """

    def __init__(
        self, num_classes: int, modalities: Sequence[str], name: str = "midas", **objective_kwargs: Any
    ) -> None:
        self.name = name
        self.objective = MidasObjective(num_classes, tuple(modalities), **objective_kwargs)
        self.alpha_steps: list[list[float]] = []

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self.objective.set_epoch(epoch)

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        return self.objective(output, batch, fuse=model.fuse)

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        self.alpha_steps.append([float(a) for a in info["alpha"]])


class PrioritisedMidasMethod(MidasMethod):
    """MIDAS whose batches come from a prioritised sampler policy (``"hard"`` or
    ``"weak_modality"``) that reads a :class:`~midas_data.stats.StatsTable` fed by the
    objective's per-sample diagnostics after every step.

    The sampler's importance weights go to the objective (``sample_weights``), so the
    expected loss stays that of uniform sampling while the hard or weak-modality samples
    are seen more often.
    """

    def __init__(
        self, num_classes: int, modalities: Sequence[str], policy: str, name: str, **objective_kwargs: Any
    ) -> None:
        super().__init__(num_classes, modalities, name=name, **objective_kwargs)
        self.policy = policy
        self.stats: Any = None
        self.sampler: Any = None

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        from .stats import StatsTable

        self.stats = StatsTable(len(dataset), tuple(modalities), dtype=torch.float32)
        loader = midas_loader(
            dataset,
            tuple(modalities),
            "label",
            batch_size=config.batch_size,
            seed=config.seed,
            policy=self.policy,
            stats=self.stats,
        )
        self.sampler = loader.batch_sampler
        return loader

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.sampler is None:
            raise RuntimeError(f"{self.name}: call train_loader() first; the loss needs its sampler's weights")
        output = model(batch.inputs)
        weights = self.sampler.importance_weights(batch.ids)
        return self.objective(output, batch, fuse=model.fuse, sample_weights=weights)

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        super().after_step(batch, info)
        self.stats.update(batch.ids, info["per_sample"])


MethodFactory = Callable[[int, Sequence[str], Mapping[str, Any]], Method]


def _midas(name: str, **fixed: Any) -> MethodFactory:
    def factory(num_classes: int, modalities: Sequence[str], options: Mapping[str, Any]) -> Method:
        kwargs = {"warmup_epochs": options.get("warmup_epochs", 2), "lam": options.get("lam", 1.0), **fixed}
        policy = kwargs.pop("policy", None)
        if policy is not None:
            return PrioritisedMidasMethod(num_classes, modalities, policy, name, **kwargs)
        return MidasMethod(num_classes, modalities, name=name, **kwargs)

    return factory


METHODS: dict[str, MethodFactory] = {
    "joint": lambda c, m, o: JointTraining(heads=False),
    "joint_heads": lambda c, m, o: JointTraining(heads=True),
    "mixup": lambda c, m, o: FeatureMixup(o.get("mixup_concentration", 1.0)),
    "ogm_ge": lambda c, m, o: OGMGE(o.get("ogm_alpha", 0.5)),
    "midas": _midas("midas"),
    "midas_no_warmup": _midas("midas_no_warmup", warmup_epochs=0),
    "midas_no_weak": _midas("midas_no_weak", weak_modality_weighting=False),
    "midas_no_hard": _midas("midas_no_hard", hard_sample_weighting=False),
    "midas_sampler_hard": _midas("midas_sampler_hard", policy="hard"),
    "midas_sampler_weak": _midas("midas_sampler_weak", policy="weak_modality"),
}


def make_method(
    name: str, num_classes: int, modalities: Sequence[str], options: Mapping[str, Any] | None = None
) -> Method:
    """A fresh method by name (see :data:`METHODS`); ``options`` are its hyper-parameters."""
    if name not in METHODS:
        raise KeyError(f"method: unknown {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name](num_classes, modalities, dict(options or {}))


# -- evaluation ------------------------------------------------------------------------
@dataclass
class Predictions:
    """Model outputs over a whole split (CPU tensors)."""

    labels: torch.Tensor
    fusion_logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


@torch.no_grad()
def predict(model: LateFusionClassifier, data: InMemoryDataset, batch_size: int = 512) -> Predictions:
    """Run ``model`` in eval mode over ``data`` in chunks; restores the training mode."""
    was_training = model.training
    model.eval()
    try:
        outs: list[MultimodalOutput] = []
        for start in range(0, len(data), batch_size):
            chunk = {m: v[start : start + batch_size] for m, v in data.tensors.items()}
            outs.append(model(chunk))
    finally:
        model.train(was_training)
    mods = list(outs[0].features)
    return Predictions(
        labels=data.labels,
        fusion_logits=torch.cat([o.fusion_logits for o in outs]),
        unimodal_logits={m: torch.cat([o.unimodal_logits[m] for o in outs]) for m in mods},
        features={m: torch.cat([o.features[m] for o in outs]) for m in mods},
    )


def misaligned_plan(labels: torch.Tensor, num_modalities: int, seed: int) -> torch.Tensor:
    """A fixed pair plan over a whole split: every sample with a partner of another class.

    The same ``seed`` gives the same misaligned evaluation set for every method and epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    plan = MF.plan_pairs(labels.cpu(), num_modalities, generator)
    if plan.num_unpaired:
        raise ValueError(f"labels: {plan.num_unpaired} misaligned rows could not be paired; the split has one class")
    return plan.sources


@torch.no_grad()
def misaligned_logits(
    model: LateFusionClassifier, preds: Predictions, data: InMemoryDataset, plan: torch.Tensor
) -> torch.Tensor:
    """Fusion logits on the misaligned rows: feature-level through ``model.fuse`` when the
    model has it, else by running the model on recombined inputs."""
    modalities = list(preds.features)
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "fuse"):
            return model.fuse(dict(zip(modalities, MF.swap_features([preds.features[m] for m in modalities], plan))))
        inputs = {m: data.tensors[m][plan[:, i]] for i, m in enumerate(modalities)}
        return model(inputs).fusion_logits
    finally:
        model.train(was_training)


def evaluate(
    model: LateFusionClassifier, data: InMemoryDataset, plan: torch.Tensor | None = None, seed: int = 1234
) -> dict[str, Any]:
    """Aligned and misaligned metrics of ``model`` on ``data``.

    Returns ``accuracy``, ``macro_f1``, ``per_modality_accuracy`` (unimodal heads),
    ``misaligned_accuracy`` and ``modality_confidence`` (fusion probability on each
    modality's source label over the misaligned samples). ``plan`` defaults to
    :func:`misaligned_plan` with ``seed``.
    """
    preds = predict(model, data)
    modalities = list(preds.features)
    if plan is None:
        plan = misaligned_plan(preds.labels, len(modalities), seed)
    mis_logits = misaligned_logits(model, preds, data, plan)
    sources = preds.labels[plan]
    num_classes = preds.fusion_logits.shape[1]
    return {
        "accuracy": metrics.accuracy(preds.fusion_logits, preds.labels),
        "macro_f1": metrics.macro_f1(preds.fusion_logits, preds.labels, num_classes),
        "per_modality_accuracy": metrics.per_modality_accuracy(preds.unimodal_logits, preds.labels),
        "misaligned_accuracy": metrics.misaligned_accuracy(mis_logits, sources),
        "modality_confidence": metrics.modality_confidence(mis_logits.softmax(dim=1), sources, modalities),
    }


# -- training --------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` returns: per-epoch history and the selected checkpoint."""

    method: str
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    best_state: dict[str, torch.Tensor]
    alpha_steps: list[list[float]] = field(default_factory=list)
    steps_per_epoch: int = 0
    seconds: float = 0.0


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)


def fit(
    method: Method,
    model: LateFusionClassifier,
    train: InMemoryDataset,
    val: InMemoryDataset,
    config: TrainConfig,
    *,
    progress: bool = False,
    desc: str | None = None,
) -> FitResult:
    """Train ``model`` with ``method`` for ``config.epochs`` epochs.

    After every epoch the model is evaluated on ``val`` (aligned and misaligned); the
    state with the highest validation accuracy is kept (the earliest on ties). The test
    split never enters here.
    """
    if config.epochs < 1:
        raise ValueError(f"config.epochs: expected at least 1, got {config.epochs}")
    torch.manual_seed(config.seed)  # mixup draws, OGM-GE noise, dropout
    modalities = list(model.modalities)
    loader = method.train_loader(train, modalities, config)
    optimizer = config.optimizer(model)
    val_plan = misaligned_plan(val.labels, len(modalities), config.eval_seed)
    steps = len(loader)
    bar = _progress(steps * config.epochs, desc or method.name, progress)
    history: list[dict[str, Any]] = []
    best_acc, best_epoch, best_state = -math.inf, -1, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    try:
        for epoch in range(config.epochs):
            set_epoch(loader, epoch)
            method.start_epoch(epoch)
            model.train()
            total, count = 0.0, 0
            for batch in loader:
                loss, info = method.loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{method.name}: loss is {float(loss)} at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                method.after_backward(model)
                optimizer.step()
                method.after_step(batch, info)
                total += float(loss.detach())
                count += 1
                if bar is not None:
                    bar.update(1)
            val_metrics = evaluate(model, val, val_plan)
            record = {"epoch": epoch, "train_loss": total / max(count, 1), "val": val_metrics}
            alpha_steps = getattr(method, "alpha_steps", None)
            if alpha_steps:
                record["alpha"] = alpha_steps[-1]
            history.append(record)
            if val_metrics["accuracy"] > best_acc:
                best_acc, best_epoch = val_metrics["accuracy"], epoch
                best_state = copy.deepcopy(model.state_dict())
            if bar is not None:
                bar.set_postfix(
                    loss=f"{record['train_loss']:.3f}", val_acc=f"{val_metrics['accuracy']:.3f}", best=f"{best_acc:.3f}"
                )
    finally:
        if bar is not None:
            bar.close()
    return FitResult(
        method=method.name,
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        best_state=best_state,
        alpha_steps=list(getattr(method, "alpha_steps", [])),
        steps_per_epoch=steps,
        seconds=time.perf_counter() - started,
    )


@dataclass
class RunResult:
    """One method trained and tested: the fit, and test metrics of the selected checkpoint."""

    fit: FitResult
    test: dict[str, Any]
    model: LateFusionClassifier

    def as_report(self) -> dict[str, Any]:
        """The plain-data form :func:`midas_data.report.write_report` takes."""
        return {
            "history": self.fit.history,
            "test": self.test,
            "best_epoch": self.fit.best_epoch,
            "alpha_steps": self.fit.alpha_steps,
            "steps_per_epoch": self.fit.steps_per_epoch,
            "seconds": self.fit.seconds,
        }


def run(
    method_name: str,
    splits: Mapping[str, InMemoryDataset],
    num_classes: int,
    config: TrainConfig,
    *,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> RunResult:
    """Build a fresh model (seeded by ``config.seed``), fit it with one method, restore the
    best-on-validation checkpoint and evaluate it once on ``splits["test"]``."""
    for split in ("train", "val", "test"):
        if split not in splits:
            raise KeyError(f"splits: missing {split!r}; expected train, val and test")
    train = splits["train"]
    modalities = list(train.tensors)
    shapes = {m: tuple(v.shape[1:]) for m, v in train.tensors.items()}
    model = build_model(shapes, num_classes, seed=config.seed, image_dropout=config.image_dropout)
    method = make_method(method_name, num_classes, modalities, options)
    result = fit(method, model, train, splits["val"], config, progress=progress, desc=desc)
    model.load_state_dict(result.best_state)
    test = evaluate(model, splits["test"], seed=config.eval_seed)
    return RunResult(result, test, model)
