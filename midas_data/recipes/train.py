"""One training run of a recipe on a device, with checkpoints and resume.

The step is the toolkit's: a :class:`~midas_data.experiments.MidasMethod` (or
:class:`~midas_data.experiments.JointTraining`) gives the loss of a
:func:`~midas_data.midas_loader` batch, and the toolkit's metrics score each epoch. What
this adds to :func:`midas_data.experiments.fit`, which trains in-memory tensors on the
CPU, is what real datasets need: batches decoded by DataLoader workers and moved to a
device, evaluation streamed over a loader, SGD with StepLR stepped only after the
warm-up, and a checkpoint after every epoch (``last.pt``: model, optimiser, scheduler,
MIDAS objective state, epoch, history) plus the best-on-validation weights (``best.pt``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import functional as MF
from ..experiments.evaluation import (
    Predictions,
    headline,
    misaligned_plan,
    multilabel_metrics,
    predict_batches,
    split_metrics,
)
from ..loader import midas_loader, set_epoch
from ..models import LateFusionClassifier
from .config import RecipeConfig

__all__ = ["make_method", "predict_stream", "evaluate_stream", "train_run"]


def make_method(config: RecipeConfig, num_classes: int) -> Any:
    """The toolkit method of ``config.method`` with the recipe's MIDAS hyper-parameters."""
    from ..experiments import JointTraining, MidasMethod

    if config.method == "joint":
        return JointTraining(heads=False)  # cross-entropy, or per-class BCE on multi-hot labels
    return MidasMethod(
        num_classes,
        config.modalities,
        warmup_epochs=config.warmup_epochs,
        lam=config.lam,
        eta=config.eta,
        alpha_max=config.alpha_max,
        variant=config.variant,
        task="multilabel" if config.task == "multilabel" else "single_label",
    )


def predict_stream(model: LateFusionClassifier, loader: DataLoader, device: torch.device) -> Predictions:
    """Model outputs over every batch of ``loader`` (plain dict batches), kept on ``device``."""
    batches = (
        ({m: batch[m].to(device, non_blocking=True) for m in model.modalities}, torch.as_tensor(batch["label"]))
        for batch in loader
    )
    return predict_batches(model, batches)


@torch.no_grad()
def evaluate_stream(
    model: LateFusionClassifier,
    loader: DataLoader,
    device: torch.device,
    eval_seed: int,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The toolkit's aligned and misaligned metrics (see
    :func:`midas_data.experiments.evaluate`), computed from a streamed pass. Multi-hot
    labels: F1 at ``thresholds`` (chosen here when ``None``: pass ``None`` on validation
    and validation's thresholds on test), see
    :func:`~midas_data.experiments.evaluation.multilabel_metrics`."""
    preds = predict_stream(model, loader, device)
    if preds.labels.dim() == 2:
        return multilabel_metrics(preds, thresholds)
    modalities = list(model.modalities)
    plan = misaligned_plan(preds.labels, len(modalities), eval_seed)
    swapped = MF.swap_features([preds.features[m] for m in modalities], plan.to(device))
    mis_logits = model.fuse(dict(zip(modalities, swapped))).cpu()
    on_cpu = Predictions(
        labels=preds.labels,
        fusion_logits=preds.fusion_logits.cpu(),
        unimodal_logits={m: v.cpu() for m, v in preds.unimodal_logits.items()},
        features=preds.features,  # only their modality names are read
    )
    return split_metrics(on_cpu, mis_logits, plan)


def _bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def train_run(
    model: LateFusionClassifier,
    datasets: Mapping[str, Any],
    config: RecipeConfig,
    *,
    device: torch.device,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train ``model`` on ``datasets["train"]``, select on ``"val"``, test the selected
    weights once on ``"test"``. Returns the plain-data run that
    :func:`midas_data.experiments.report.write_report` takes."""
    checkpoints = out / "checkpoints"
    last_path, best_path = checkpoints / "last.pt", checkpoints / "best.pt"
    if last_path.exists() and not resume:
        raise FileExistsError(
            f"{last_path}: a run is already here; pass --resume to continue it or choose another --out"
        )
    checkpoints.mkdir(parents=True, exist_ok=True)
    num_classes = model.num_classes
    model.to(device)
    method = make_method(config, num_classes)
    workers: dict[str, Any] = {"num_workers": config.num_workers, "pin_memory": device.type == "cuda"}
    if config.num_workers > 0:
        workers["persistent_workers"] = True
    multilabel = config.task == "multilabel"
    train_loader = midas_loader(
        datasets["train"], config.modalities, "label", batch_size=config.batch_size, seed=config.seed,
        num_classes=num_classes if multilabel else None, **workers,
    )  # fmt: skip
    eval_loaders = {
        split: DataLoader(datasets[split], batch_size=config.batch_size, shuffle=False, **workers)
        for split in ("val", "test")
    }
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    warmup = config.warmup_epochs if config.method == "midas" else 0
    # best_accuracy: the selection figure, micro-F1 for multi-label (headline); best_thresholds:
    # the multi-label thresholds chosen on validation at the best epoch, which score the test split.
    state: dict[str, Any] = {
        "epoch": -1, "history": [], "best_epoch": -1, "best_accuracy": -1.0, "best_thresholds": None, "alpha_steps": []
    }  # fmt: skip
    if resume and last_path.exists():
        saved = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("objective") is not None and hasattr(method, "objective"):
            method.objective.load_state_dict(saved["objective"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        if hasattr(method, "alpha_steps"):
            method.alpha_steps = list(state["alpha_steps"])
        log(f"resumed from {last_path} after epoch {state['epoch'] + 1}")
    steps = len(train_loader)
    start = state["epoch"] + 1
    bar = _bar(steps * config.epochs, steps * start, config.method, progress)
    started = time.perf_counter()
    try:
        for epoch in range(start, config.epochs):
            set_epoch(train_loader, epoch)
            method.start_epoch(epoch)
            model.train()
            total = torch.zeros((), device=device)
            for batch in train_loader:
                batch = batch.to(device, non_blocking=True)
                loss, info = method.loss(model, batch)
                method.update(model, optimizer, batch, loss, info)
                total += loss.detach()
                if bar is not None:
                    bar.update(1)
            train_loss = float(total) / max(steps, 1)
            if not torch.isfinite(torch.tensor(train_loss)):
                raise FloatingPointError(f"{config.method}: mean training loss is {train_loss} at epoch {epoch}")
            if epoch + 1 > warmup:  # StepLR counts epochs after the warm-up only
                scheduler.step()
            val = evaluate_stream(model, eval_loaders["val"], device, config.eval_seed)
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val": val,
                "lr": scheduler.get_last_lr(),
            }
            alpha_steps = getattr(method, "alpha_steps", None)
            if alpha_steps:
                record["alpha"] = alpha_steps[-1]
            state["history"].append(record)
            state["alpha_steps"] = list(alpha_steps or [])
            state["epoch"] = epoch
            if headline(val) > state["best_accuracy"]:
                state["best_accuracy"], state["best_epoch"] = headline(val), epoch
                state["best_thresholds"] = val.get("thresholds")
                torch.save(model.state_dict(), best_path)
            objective = getattr(method, "objective", None)
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "objective": objective.state_dict() if objective is not None else None,
                "rng": torch.get_rng_state(),
                "state": state,
                "config": config.to_dict(),
            }
            torch.save(checkpoint, last_path.with_suffix(".tmp"))
            last_path.with_suffix(".tmp").replace(last_path)  # never a half-written checkpoint
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{headline(val):.3f}")
    finally:
        if bar is not None:
            bar.close()
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    test = evaluate_stream(model, eval_loaders["test"], device, config.eval_seed, state.get("best_thresholds"))
    return {
        "history": state["history"],
        "test": test,
        "best_epoch": state["best_epoch"],
        "alpha_steps": state["alpha_steps"],
        "steps_per_epoch": steps,
        "seconds": time.perf_counter() - started,
    }


def shapes_of(batch: Any, modalities: Sequence[str]) -> dict[str, list[int]]:
    return {m: list(batch.inputs[m].shape) for m in modalities} | {"label": list(batch.labels.shape)}
