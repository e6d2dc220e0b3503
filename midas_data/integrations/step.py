"""One MIDAS training step for a trainer adapter: model, protocol check, objective.

Trainers hand the adapters a batch and a model that may be wrapped (DDP, ``torch.compile``);
this runs the model on the aligned inputs, checks that what it returned is a
:class:`~midas_data.models.MultimodalOutput` for the objective's modalities (an error that
names what is missing and shows the expected return type otherwise) and returns the
objective's ``(loss, diagnostics)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..data.batch import MidasBatch
from ..models import MultimodalOutput, unwrap_model
from ..objective import MidasObjective

__all__ = ["EXPECTED_OUTPUT", "check_output", "midas_loss"]

EXPECTED_OUTPUT = (
    "MultimodalOutput(features={modality: Tensor[B, D]}, unimodal_logits={modality: Tensor[B, C]}, "
    "fusion_logits=Tensor[B, C]) from midas_data.models, and for feature-level batches a "
    "fuse(features) -> Tensor[B, C] method (the fusion head alone)"
)


def check_output(output: Any, modalities: tuple[str, ...]) -> MultimodalOutput:
    """``output`` if it follows the model protocol for ``modalities``; a ``TypeError`` that
    names what is missing otherwise."""
    absent = [name for name in ("features", "unimodal_logits", "fusion_logits") if not hasattr(output, name)]
    if absent:
        raise TypeError(
            f"model(batch.inputs) returned a {type(output).__name__} without {absent}; expected {EXPECTED_OUTPUT}"
        )
    for name in ("features", "unimodal_logits"):
        value = getattr(output, name)
        if not isinstance(value, Mapping):
            raise TypeError(
                f"model output .{name} is a {type(value).__name__}, not a mapping of modality name to tensor; "
                f"expected {EXPECTED_OUTPUT}"
            )
        missing = [m for m in modalities if m not in value]
        if missing:
            raise TypeError(
                f"model output .{name} has no entry for modality {missing} (it has {list(value)}); "
                f"expected {EXPECTED_OUTPUT}"
            )
    if not isinstance(output.fusion_logits, torch.Tensor):
        raise TypeError(
            f"model output .fusion_logits is a {type(output.fusion_logits).__name__}; expected {EXPECTED_OUTPUT}"
        )
    return output


def midas_loss(
    objective: MidasObjective, model: torch.nn.Module, batch: MidasBatch, **objective_kwargs: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The MIDAS loss of ``model`` on ``batch`` and its diagnostics.

    Feature level: the objective runs ``model.fuse`` (reached through wrappers) on the
    recombined features. Input level: the model also runs on the materialised misaligned
    inputs, except in warm-up, which does not use them.
    """
    if not isinstance(batch, MidasBatch):
        raise TypeError(
            f"batch: expected a MidasBatch (from midas_loader), got {type(batch).__name__}; is the train "
            "dataloader a MIDAS loader?"
        )
    output = check_output(model(batch.inputs), objective.modalities)
    if not batch.input_level:
        if not callable(getattr(unwrap_model(model), "fuse", None)):
            raise TypeError(
                f"model: {type(unwrap_model(model)).__name__} has no fuse(features) method, which feature-level "
                f"MIDAS runs on recombined features; expected {EXPECTED_OUTPUT}. Models that fuse early use "
                "midas_loader(..., mode='input')"
            )
        return objective(output, batch, model=model, **objective_kwargs)
    in_warmup = 0 <= batch.epoch < objective.warmup_epochs if objective.follow_batch_epoch else objective.in_warmup
    if in_warmup or batch.num_misaligned == 0:
        mis_logits = output.fusion_logits.new_zeros((batch.num_misaligned, objective.num_classes))
    else:
        # The second forward goes through the unwrapped model: DDP allows one forward per backward.
        inputs = batch.misaligned_inputs
        assert inputs is not None
        mis_logits = check_output(unwrap_model(model)(inputs), objective.modalities).fusion_logits
    return objective(output, batch, misaligned_logits=mis_logits, **objective_kwargs)
