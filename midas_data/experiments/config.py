"""The training budget shared by every method of a comparison."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TrainConfig"]


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
    # BatchNorm statistics at evaluation, for validation selection and the test alike (see
    # evaluation.BN_PROTOCOLS). The first is the protocol of record; each one listed gets its
    # own best-on-validation checkpoint and its own test figures.
    bn_protocols: tuple[str, ...] = ("as_trained",)
    precise_bn_samples: int = 1000  # training rows (the first ones) of the "precise" re-estimation

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
