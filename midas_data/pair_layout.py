"""The layout of a pair plan, shared by the single-label and multi-label pairings.

Both draw a partner per anchor under their own rule; the rows they make from it are laid
out the same way, here (and, for more than two modalities, their other sources drawn
here): direction-major blocks, one per kept modality (two modalities:
``(x_i^1, x_j^2)`` and ``(x_j^1, x_i^2)``; more: each replaced modality from its own
uniform source, one of them forced to the anchor's partner where no source satisfies the
rule), anchors without a valid partner left out and counted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["direction_blocks"]


def direction_blocks(
    rows: torch.Tensor,
    partner: torch.Tensor,
    valid: torch.Tensor,
    num_modalities: int,
    generator: torch.Generator | None = None,
    lacks_other: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(sources [K, M], anchors [K], unpaired)`` on ``rows``' device.

    For more than two modalities the sources are drawn here from ``generator``, after the
    partners: every replaced modality uniform over the batch, and, where a rule applies
    (``lacks_other(sources)``: rows whose sources break it; ``None``: no rule), which
    replaced modality takes the anchor's partner instead.
    """
    batch, device = rows.numel(), rows.device
    if num_modalities > 2:
        # Independent sources per modality, uniform over the batch; the row keeps modality r
        # from the anchor.
        extra = torch.randint(batch, (num_modalities, batch, num_modalities), generator=generator, device=device)
        if lacks_other is not None:
            forced = torch.randint(num_modalities - 1, (num_modalities, batch), generator=generator, device=device)
    directions = []
    for kept in range(num_modalities):
        if num_modalities == 2:
            src = torch.stack([rows, partner], dim=1) if kept == 0 else torch.stack([partner, rows], dim=1)
        else:
            src = extra[kept].clone()
            src[:, kept] = rows
            if lacks_other is not None:
                fix = lacks_other(src)
                # forced[kept] indexes the M-1 replaced modalities; skip the kept column.
                col = forced[kept] + (forced[kept] >= kept).long()
                src[fix, col[fix]] = partner[fix]
        directions.append(src)
    sources = torch.cat(directions, dim=0)
    anchors = rows.repeat(num_modalities)
    keep = valid.repeat(num_modalities)
    requested = sources.shape[0]
    if not bool(keep.all()):
        sources, anchors = sources[keep], anchors[keep]
    return sources, anchors, requested - sources.shape[0]
