"""MIDAS as a training method, with uniform or prioritised (fed-back) batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.batch import MidasBatch
from ..feedback.prune import PrunePolicy
from ..feedback.stats import StatsTable
from ..loader import midas_loader
from ..models import LateFusionClassifier
from ..objective import MidasObjective
from .config import TrainConfig
from .method import Method, probe_loss

__all__ = ["MidasMethod", "InputLevelMidasMethod", "PrioritisedMidasMethod", "PrunedJointTraining"]


class MidasMethod(Method):
    """MIDAS, feature-level: :class:`MidasObjective` on :func:`midas_loader` batches.

    ``rule`` is the loader's pairing rule; ``objective_kwargs`` go to :class:`MidasObjective`
    (``warmup_epochs``, ``lam``, ``eta``, ``alpha_max``, ``weak_modality_weighting``,
    ``hard_sample_weighting``, ``task``...).
    """

    def __init__(
        self,
        num_classes: int,
        modalities: Sequence[str],
        name: str = "midas",
        rule: str = "different_label",
        **objective_kwargs: Any,
    ) -> None:
        self.name = name
        self.rule = rule
        self.objective = MidasObjective(num_classes, tuple(modalities), **objective_kwargs)
        self.alpha_steps: list[list[float]] = []

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        return midas_loader(
            dataset, tuple(modalities), "label", batch_size=config.batch_size, seed=config.seed, rule=self.rule
        )

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self.objective.set_epoch(epoch)

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        return self.objective(output, batch, fuse=model.fuse)

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        self.alpha_steps.append([float(a) for a in info["alpha"]])


class InputLevelMidasMethod(MidasMethod):
    """MIDAS, input-level: the misaligned samples are materialised by the loader
    (``mode="input"``) and run through the whole model, encoders included.

    The encoders then see each step's inputs twice, once aligned and once misaligned, and
    BatchNorm layers update their running statistics on both passes.
    """

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        return midas_loader(
            dataset,
            tuple(modalities),
            "label",
            batch_size=config.batch_size,
            seed=config.seed,
            mode="input",
            rule=self.rule,
        )

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        misaligned = None
        if not self.objective.in_warmup and batch.num_misaligned > 0:
            misaligned = model(batch.misaligned_inputs).fusion_logits
        return self.objective(output, batch, misaligned_logits=misaligned)


def _sampler_policy(policy: str, prune: dict[str, Any], config: TrainConfig) -> Any:
    """``policy`` as the loader takes it: ``"prune"`` becomes a :class:`PrunePolicy` over
    the run's epochs with the options given (the rest at their defaults)."""
    return PrunePolicy(num_epochs=config.epochs, **prune) if policy == "prune" else policy


class PrioritisedMidasMethod(MidasMethod):
    """MIDAS whose batches come from a sampler policy (``"hard"``, ``"weak_modality"``,
    ``"prune"``, or ``"uniform"`` to only record the table) that reads a
    :class:`~midas_data.feedback.stats.StatsTable` fed by the objective's per-sample
    diagnostics after every step.

    The sampler's importance weights go to the objective (``sample_weights``), so the
    expected loss stays that of uniform sampling while the hard or weak-modality samples
    are seen more often. ``floor`` is the sampler's (the share of uniform sampling);
    ``importance_weights=False`` drops the weights, so the prioritised samples also count
    more in the loss (a variant, not the documented use). ``prune`` holds the
    :class:`PrunePolicy` options (``ratio``, ``tail``, ``score``) of ``policy="prune"``;
    the number of epochs comes from the training budget.
    """

    def __init__(
        self,
        num_classes: int,
        modalities: Sequence[str],
        policy: str,
        name: str,
        *,
        floor: float = 0.2,
        importance_weights: bool = True,
        prune: dict[str, Any] | None = None,
        **objective_kwargs: Any,
    ) -> None:
        super().__init__(num_classes, modalities, name=name, **objective_kwargs)
        self.policy = policy
        self.prune = dict(prune or {})
        self.floor = float(floor)
        self.use_importance_weights = bool(importance_weights)
        self.stats: Any = None
        self.sampler: Any = None

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        loader, self.stats = _loader_with_table(
            dataset,
            modalities,
            config,
            policy=_sampler_policy(self.policy, self.prune, config),
            floor=self.floor,
            rule=self.rule,
        )
        self.sampler = loader.batch_sampler
        return loader

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.sampler is None:
            raise RuntimeError(f"{self.name}: call train_loader() first; the loss needs its sampler's weights")
        output = model(batch.inputs)
        if self.use_importance_weights:
            weights = self.sampler.importance_weights(batch.ids)
        else:  # explicit ones: the objective would otherwise take the weights the batch carries
            weights = torch.ones(batch.labels.shape[0], device=batch.labels.device)
        return self.objective(output, batch, fuse=model.fuse, sample_weights=weights)

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        super().after_step(batch, info)
        self.stats.update(batch.ids, info["per_sample"])


class PrunedJointTraining(Method):
    """Joint training (fusion cross-entropy, unimodal heads as probes on detached features)
    on batches of ``policy="prune"``: the pruning alone, without MIDAS. The fusion loss per
    sample feeds the table's ``loss`` column, the sampler's importance weights scale it."""

    def __init__(self, name: str = "joint_prune", prune: dict[str, Any] | None = None) -> None:
        self.name = name
        self.prune = dict(prune or {})
        self.stats: Any = None
        self.sampler: Any = None

    def train_loader(self, dataset: Dataset, modalities: Sequence[str], config: TrainConfig) -> DataLoader:
        loader, self.stats = _loader_with_table(
            dataset, modalities, config, policy=_sampler_policy("prune", self.prune, config)
        )
        self.sampler = loader.batch_sampler
        return loader

    def loss(self, model: LateFusionClassifier, batch: MidasBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(batch.inputs)
        rows = F.cross_entropy(output.fusion_logits, batch.labels, reduction="none")
        weights = self.sampler.importance_weights(batch.ids)
        loss = (rows * weights).mean() + probe_loss(model, output, batch.labels)
        return loss, {"per_sample": {"loss": rows.detach()}}

    def after_step(self, batch: MidasBatch, info: Mapping[str, Any]) -> None:
        self.stats.update(batch.ids, info["per_sample"])


def _loader_with_table(
    dataset: Dataset, modalities: Sequence[str], config: TrainConfig, **sampler: Any
) -> tuple[DataLoader, StatsTable]:
    """A MIDAS loader whose sampler reads a fresh float32 stats table (the methods feed it)."""
    table = StatsTable(len(dataset), tuple(modalities), dtype=torch.float32)
    loader = midas_loader(
        dataset, tuple(modalities), "label", batch_size=config.batch_size, seed=config.seed, stats=table, **sampler
    )
    return loader, table
