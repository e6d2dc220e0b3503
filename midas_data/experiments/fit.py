"""The fit loop: train a method, evaluate every epoch, keep the best-on-validation checkpoint.

The test split is touched once, by :func:`run`, with the selected checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..loader import set_epoch
from ..models import LateFusionClassifier
from .config import TrainConfig
from .datasets import InMemoryDataset
from .encoders import build_model
from .evaluation import BN_PROTOCOLS, evaluate, headline, misaligned_plan, with_bn_protocol
from .method import Method
from .registry import make_method

__all__ = ["FitResult", "fit", "RunResult", "run"]


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
    # BatchNorm protocol -> {"epoch", "val_accuracy", "score", "metrics" (validation
    # metrics of that epoch), "state"}; the first protocol of config.bn_protocols is also
    # best_epoch / best_val_accuracy / best_state.
    selected: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    state with the highest validation accuracy (micro-F1 for multi-label, each head's
    threshold chosen on validation) is kept (the earliest on ties). The test split never
    enters here.
    """
    if config.epochs < 1:
        raise ValueError(f"config.epochs: expected at least 1, got {config.epochs}")
    protocols = tuple(config.bn_protocols)
    if not protocols or any(p not in BN_PROTOCOLS for p in protocols):
        raise ValueError(f"config.bn_protocols: expected some of {BN_PROTOCOLS}, got {protocols}")
    torch.manual_seed(config.seed)  # mixup draws, OGM-GE noise, dropout
    modalities = list(model.modalities)
    loader = method.train_loader(train, modalities, config)
    optimizer = config.optimizer(model)
    # Multi-label splits have no misaligned evaluation (see evaluation.py).
    val_plan = None if val.multilabel else misaligned_plan(val.labels, len(modalities), config.eval_seed)
    steps = len(loader)
    bar = _progress(steps * config.epochs, desc or method.name, progress)
    history: list[dict[str, Any]] = []
    selected: dict[str, dict[str, Any]] = {
        p: {
            "epoch": -1,
            "val_accuracy": -math.inf,
            "score": -math.inf,
            "metrics": {},
            "state": copy.deepcopy(model.state_dict()),
        }
        for p in protocols
    }
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
                method.update(model, optimizer, batch, loss, info)
                total += float(loss.detach())
                count += 1
                if bar is not None:
                    bar.update(1)
            by_protocol = {}
            for protocol in protocols:
                evaluated = with_bn_protocol(model, protocol, train, config.precise_bn_samples)
                metrics = evaluate(evaluated, val, val_plan)
                by_protocol[protocol] = metrics
                score = method.selection_score(metrics)
                if score > selected[protocol]["score"]:  # the earliest epoch wins ties
                    selected[protocol] = {
                        "epoch": epoch,
                        "val_accuracy": headline(metrics),
                        "score": score,
                        "metrics": metrics,
                        "state": copy.deepcopy(evaluated.state_dict()),
                    }
            val_metrics = by_protocol[protocols[0]]
            record = {"epoch": epoch, "train_loss": total / max(count, 1), "val": val_metrics}
            if len(protocols) > 1:
                record["val_by_bn"] = by_protocol
            alpha_steps = getattr(method, "alpha_steps", None)
            if alpha_steps:
                record["alpha"] = alpha_steps[-1]
            history.append(record)
            if bar is not None:
                best = selected[protocols[0]]["score"]
                bar.set_postfix(
                    loss=f"{record['train_loss']:.3f}", val=f"{headline(val_metrics):.3f}", best=f"{best:.3f}"
                )
    finally:
        if bar is not None:
            bar.close()
    primary = selected[protocols[0]]
    return FitResult(
        method=method.name,
        history=history,
        best_epoch=primary["epoch"],
        best_val_accuracy=primary["val_accuracy"],
        best_state=primary["state"],
        alpha_steps=list(getattr(method, "alpha_steps", [])),
        steps_per_epoch=steps,
        seconds=time.perf_counter() - started,
        selected=selected,
    )


@dataclass
class RunResult:
    """One method trained and tested: the fit, and test metrics of the selected checkpoint
    (``test``, under the first BatchNorm protocol; ``tests`` has one entry per protocol)."""

    fit: FitResult
    test: dict[str, Any]
    model: LateFusionClassifier
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_report(self) -> dict[str, Any]:
        """The plain-data form :func:`midas_data.experiments.report.write_report` takes."""
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
    best-on-validation checkpoint and evaluate it once on ``splits["test"]`` (once per
    BatchNorm protocol of ``config``, each with its own selected checkpoint)."""
    for split in ("train", "val", "test"):
        if split not in splits:
            raise KeyError(f"splits: missing {split!r}; expected train, val and test")
    train = splits["train"]
    modalities = list(train.tensors)
    shapes = {m: tuple(v.shape[1:]) for m, v in train.tensors.items()}
    model = build_model(shapes, num_classes, seed=config.seed, image_dropout=config.image_dropout)
    method = make_method(method_name, num_classes, modalities, options)
    result = fit(method, model, train, splits["val"], config, progress=progress, desc=desc)
    tests = {}
    for protocol, chosen in result.selected.items():
        model.load_state_dict(chosen["state"])  # the statistics of that protocol are in the state
        # Multi-label: the test split is scored at the thresholds chosen on validation.
        thresholds = chosen["metrics"].get("thresholds")
        tests[protocol] = evaluate(model, splits["test"], seed=config.eval_seed, thresholds=thresholds)
    model.load_state_dict(result.best_state)
    return RunResult(result, tests[config.bn_protocols[0]], model, tests)
