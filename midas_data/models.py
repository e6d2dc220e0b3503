"""What MIDAS needs from a model, and a small late-fusion model that provides it.

Any model works with :class:`~midas_data.objective.MidasObjective` if it returns a
:class:`MultimodalOutput` for a mapping of modality name to input:

* ``features[m]`` — the encoder output of modality ``m``, ``[B, ...]``; shared by the
  unimodal head and the fusion head;
* ``unimodal_logits[m]`` — the unimodal head's logits on ``features[m]``, ``[B, C]``;
* ``fusion_logits`` — the fusion head's logits, ``[B, C]``.

For *feature-level* misalignment the model also exposes ``fuse(features) -> logits``: the
fusion head alone, so that the objective can run it on recombined features without
running the encoders again. Models that mix modalities before or inside the encoders
(early fusion, cross-attention) cannot do that; they use *input-level* misalignment and
run the whole model on the misaligned inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["MultimodalOutput", "MidasModel", "LateFusionClassifier", "unwrap_model"]


@dataclass
class MultimodalOutput:
    """Per-modality features and logits plus the fusion logits of one forward pass."""

    features: dict[str, torch.Tensor]
    unimodal_logits: dict[str, torch.Tensor]
    fusion_logits: torch.Tensor


@runtime_checkable
class MidasModel(Protocol):
    """The protocol: ``model(inputs) -> MultimodalOutput``; ``fuse`` for feature level."""

    def __call__(self, inputs: Mapping[str, Any]) -> MultimodalOutput: ...

    def fuse(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


def unwrap_model(model: Any) -> Any:
    """The user's model inside training wrappers: ``DistributedDataParallel`` and
    ``DataParallel`` (``.module``), ``torch.compile`` (``._orig_mod``), nested in any order.

    The fusion head of a DDP model may be called through the unwrapped module: its
    parameters are the same tensors, and their gradients still reach DDP's reducer.
    """
    seen = 0
    while seen < 8:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model, nn.Module):
            model = model._orig_mod
        else:
            return model
        seen += 1
    return model


class LateFusionClassifier(nn.Module):
    """Modality encoders, linear unimodal heads and a concat-fusion linear head.

    This is the model of the paper's main experiments: the encoders are shared by the
    unimodal and fusion paths, and fusion is one linear layer on the concatenated features.

    Args:
        encoders: modality name -> module mapping that modality's input to ``[B, D_m]``
            (or ``[B, ...]``, flattened).
        feature_dims: modality name -> ``D_m``.
        num_classes: ``C``.
        dropout: dropout on the concatenated features before the fusion head.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        feature_dims: Mapping[str, int],
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"encoders: MIDAS needs at least two modalities, got {list(encoders)}")
        if set(encoders) != set(feature_dims):
            raise ValueError(
                f"feature_dims: expected one entry per encoder {sorted(encoders)}, got {sorted(feature_dims)}"
            )
        self.modalities = tuple(encoders)
        self.num_classes = num_classes
        self.encoders = nn.ModuleDict(dict(encoders))
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(feature_dims[m], num_classes) for m in self.modalities})
        self.dropout = nn.Dropout(dropout)
        self.fusion_head = nn.Linear(sum(feature_dims[m] for m in self.modalities), num_classes)

    def encode(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"inputs: missing modality {missing}; the model expects {list(self.modalities)}")
        return {m: self.encoders[m](inputs[m]).flatten(1) for m in self.modalities}

    def fuse(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        joined = torch.cat([features[m].flatten(1) for m in self.modalities], dim=1)
        return self.fusion_head(self.dropout(joined))

    def forward(self, inputs: Mapping[str, Any]) -> MultimodalOutput:  # type: ignore[override]
        features = self.encode(inputs)
        unimodal = {m: self.unimodal_heads[m](features[m]) for m in self.modalities}
        return MultimodalOutput(features, unimodal, self.fuse(features))
