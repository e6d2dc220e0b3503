"""The MIDAS math as pure tensor functions: no state, no I/O, no framework glue.

Notation follows the paper (Hwang, Choi, Whang, NeurIPS 2025). A batch holds ``B``
aligned samples with ``M`` modalities and ``C`` classes. A *pair plan* describes ``K``
misaligned rows: ``plan[k, m]`` is the batch row whose modality ``m`` the misaligned row
``k`` takes, and ``anchors[k]`` is the aligned row it was built for (its "original"
sample, whose replaced modalities define the hard-sample similarity).

Every function takes its device from its tensor arguments and never synchronises with
the device except where a Python value is unavoidable (input validation of shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .pair_layout import direction_blocks

__all__ = [
    "PairPlan",
    "plan_partners",
    "plan_pairs",
    "plan_anchors",
    "check_plan",
    "check_plan_shape",
    "plan_in_range",
    "replaced_mask",
    "source_labels",
    "gather_confidences",
    "normalized_confidences",
    "soft_labels",
    "fusion_confidence_ratio",
    "feature_similarity",
    "hard_weights_from_similarity",
    "hard_sample_weights",
    "misaligned_loss",
    "swap_features",
    "pair_importance_weights",
    "PAIR_WEIGHTINGS",
    "per_anchor_means",
]

PARTNER_RULES = ("different_label", "any")


class PairPlan(NamedTuple):
    """A pair plan with its bookkeeping.

    ``sources`` is ``[K, M]`` (batch rows per modality), ``anchors`` is ``[K]`` (the aligned
    row each misaligned row was built for) and ``num_unpaired`` counts the rows that were
    asked for but could not be formed because the batch had no valid partner.
    """

    sources: torch.Tensor
    anchors: torch.Tensor
    num_unpaired: int


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"labels: expected shape [B], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor of class ids, got {labels.dtype}")


def _other_class_partners(labels: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row, a row drawn uniformly among the rows of another class, and whether one exists.

    Rows sorted by class put each class in one run ``[start, start + count)``; the rows of
    other classes are the sorted positions outside that run, so the ``u``-th of them, ``u``
    uniform in ``[0, B - count)``, sits at position ``u`` or ``u + count``. ``O(B log B)``
    time and ``O(B)`` memory, a handful of kernels whatever the batch size.
    """
    batch = labels.numel()
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, labels, side="left")
    count = torch.searchsorted(sorted_labels, labels, side="right") - first
    num_other = batch - count
    # 62-bit integers modulo num_other: the bias is below 1e-16, and unlike scaled floats
    # the draw can never reach num_other itself.
    draw = torch.randint(2**62, (batch,), generator=generator, device=labels.device)
    u = draw % num_other.clamp_min(1)
    position = u + (u >= first) * count
    valid = num_other > 0
    partner = order[position.clamp_max(batch - 1)]
    return partner, valid


def plan_pairs(
    labels: torch.Tensor,
    num_modalities: int = 2,
    generator: torch.Generator | None = None,
    rule: str = "different_label",
) -> PairPlan:
    """Plan the misaligned rows of one batch.

    Paper semantics (``rule="different_label"``): for every aligned row ``i`` a partner is
    drawn uniformly among the batch rows of another class. With two modalities each anchor
    gives two rows, ``(x_i^1, x_j^2)`` and ``(x_j^1, x_i^2)``; with ``M > 2`` each anchor
    gives ``M`` rows, row ``r`` keeping modality ``r`` from the anchor and drawing every
    other modality from its own random source, with at least one source of another class.

    ``rule="any"`` is the reference code's form: a random permutation of the batch, so
    partners may share the label or be the anchor itself.

    Rows are ordered direction-major: all anchors for kept modality 0, then all for kept
    modality 1, and so on. An anchor with no valid partner (its class is the only one in
    the batch) gets no row; ``num_unpaired`` counts them so that callers can report them.
    The random draws are made on ``generator``'s device (CPU by default) and the result
    is moved to the labels' device.
    """
    _check_labels(labels)
    if num_modalities < 2:
        raise ValueError(f"num_modalities: MIDAS needs at least 2 modalities, got {num_modalities}")
    if rule not in PARTNER_RULES:
        raise ValueError(f"rule: expected one of {PARTNER_RULES}, got {rule!r}")
    device = labels.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    y = labels.to(gen_device)
    batch = y.numel()
    rows = torch.arange(batch, device=gen_device)

    if rule == "any":
        partner = torch.randperm(batch, generator=generator, device=gen_device)
        valid = torch.ones(batch, dtype=torch.bool, device=gen_device)
    else:
        partner, valid = _other_class_partners(y, generator)

    def lacks_other(src: torch.Tensor) -> torch.Tensor:
        # At least one source must have another label: where none has, one replaced
        # modality takes the anchor's other-class partner (direction_blocks).
        return ~(y[src] != y.unsqueeze(1)).any(dim=1)

    rule_check = lacks_other if rule == "different_label" else None
    sources, anchors, unpaired = direction_blocks(rows, partner, valid, num_modalities, generator, rule_check)
    return PairPlan(sources.to(device), anchors.to(device), unpaired)


def plan_partners(
    labels: torch.Tensor,
    num_modalities: int = 2,
    generator: torch.Generator | None = None,
    rule: str = "different_label",
) -> torch.Tensor:
    """The pair plan alone, ``LongTensor [K, M]``; see :func:`plan_pairs`.

    The plan is self-describing: rows come in ``M`` equal direction blocks and row ``k``
    keeps modality ``k // (K / M)`` from its anchor, so :func:`plan_anchors` recovers the
    anchors, and the number of unpaired rows is ``M * B - K``.
    """
    return plan_pairs(labels, num_modalities, generator, rule).sources


def plan_anchors(plan: torch.Tensor) -> torch.Tensor:
    """The anchor row of every misaligned row of a plan from :func:`plan_pairs`, ``[K]``.

    Row ``k`` lies in direction block ``k // (K / M)`` and keeps that modality from its
    anchor, so the anchor is ``plan[k, k // (K / M)]``.
    """
    rows, modalities = plan.shape
    if rows % modalities:
        raise ValueError(
            f"plan: {rows} rows do not split into {modalities} direction blocks; "
            "pass the anchors explicitly for a plan not made by plan_pairs"
        )
    block = torch.arange(rows, device=plan.device) // max(rows // modalities, 1)
    return plan.gather(1, block.unsqueeze(1)).squeeze(1)


def check_plan_shape(plan: torch.Tensor, name: str = "plan") -> None:
    """Raise a clear error unless ``plan`` is an integer ``[K, M]`` tensor (host-known facts only)."""
    if plan.dim() != 2:
        raise ValueError(f"{name}: expected shape [K, M], got {tuple(plan.shape)}")
    if plan.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected an integer tensor of batch rows, got {plan.dtype}")


def plan_in_range(plan: torch.Tensor, batch: int) -> torch.Tensor:
    """0-dim bool tensor: every entry of ``plan`` is a batch row in ``[0, batch)``. No host
    synchronisation: a caller folds it into one combined check."""
    if plan.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=plan.device)
    return (plan.min() >= 0) & (plan.max() < batch)


def check_plan(plan: torch.Tensor, batch: int, name: str = "plan") -> None:
    """Raise a clear error unless ``plan`` is an integer ``[K, M]`` of rows in ``[0, batch)``
    (one host synchronisation, for the range)."""
    check_plan_shape(plan, name)
    if not bool(plan_in_range(plan, batch)):
        raise IndexError(
            f"{name}: entries must be batch rows in [0, {batch}), got range [{int(plan.min())}, {int(plan.max())}]"
        )


def replaced_mask(plan: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``[K, M]`` bool: which modalities of each misaligned row come from another sample."""
    return plan != anchors.unsqueeze(1)


def source_labels(labels: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """``[K, M]``: the class of the sample that each modality of each row comes from."""
    return labels[plan]


def gather_confidences(probs: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Unimodal confidence on the own label, ``[B, M]``, from ``M`` tensors ``[B, C]``."""
    return torch.stack([p.gather(1, labels.unsqueeze(1)).squeeze(1) for p in probs], dim=1)


def normalized_confidences(confidences: torch.Tensor) -> torch.Tensor:
    """``c~ = c / sum_m c``, row-wise over ``[K, M]``.

    A row whose confidences are all zero or subnormal (possible only through underflow) gets
    equal shares instead of NaN or shares that do not sum to one.
    """
    total = confidences.sum(dim=1, keepdim=True)
    tiny = torch.finfo(confidences.dtype).tiny
    equal = torch.full_like(confidences, 1.0 / confidences.shape[1])
    return torch.where(total >= tiny, confidences / total.clamp_min(tiny), equal)


def soft_labels(confidences: torch.Tensor, source_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The confidence-based soft target ``y~ = sum_m c~^m onehot(y_k(m))``, ``[K, C]``.

    ``confidences`` ``[K, M]`` are the unimodal confidences of each component's source
    on its own label; ``source_labels`` ``[K, M]`` are those labels. Components that share
    a label add up. Rows sum to 1.
    """
    if confidences.shape != source_labels.shape or confidences.dim() != 2:
        raise ValueError(
            f"confidences {tuple(confidences.shape)} and source_labels {tuple(source_labels.shape)}: "
            "expected the same shape [K, M]"
        )
    shares = normalized_confidences(confidences)
    target = torch.zeros(shares.shape[0], num_classes, dtype=shares.dtype, device=shares.device)
    return target.scatter_add_(1, source_labels.long(), shares)


def fusion_confidence_ratio(fusion_probs: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
    """``q^m = p~[y_k(m)] / sum_m' p~[y_k(m')]``, ``[K, M]``: how the fusion head splits its
    belief between the components' classes."""
    picked = fusion_probs.gather(1, source_labels.long())
    return normalized_confidences(picked)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def feature_similarity(
    original_features: Sequence[torch.Tensor],
    swapped_features: Sequence[torch.Tensor],
    replaced: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Hard-sample similarity ``s`` in ``[-1, 1]``, ``[K]``: the mean cosine similarity, over
    the replaced modalities, between the anchor's feature and the one swapped in.

    ``original_features[i]`` and ``swapped_features[i]`` are ``[K, D_i]`` features of one
    modality. ``replaced`` (``[K, len(features)]`` bool) selects the modalities per row where
    rows differ (three or more modalities); by default every listed modality counts. The
    cosine runs in float32 whatever the features' dtype: in float16 the product of two
    norms above ~256 overflows and a zero clamp rounds to 0. A zero-norm feature has
    similarity 0, never NaN; a row with no replaced modality gets ``s = 0``. Detached.
    """
    if len(original_features) != len(swapped_features) or not original_features:
        raise ValueError(
            "original_features and swapped_features: expected two non-empty lists of the same "
            f"length, got {len(original_features)} and {len(swapped_features)}"
        )
    sims = []
    for i, (a, b) in enumerate(zip(original_features, swapped_features)):
        if a.shape != b.shape:
            raise ValueError(f"features of modality {i}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        a, b = _flatten(a.detach()).float(), _flatten(b.detach()).float()
        dot = (a * b).sum(dim=1)
        norms = a.norm(dim=1) * b.norm(dim=1)
        sims.append(dot / norms.clamp_min(eps))
    sim = torch.stack(sims, dim=1)
    if replaced is None:
        mean_sim = sim.mean(dim=1)
    else:
        if replaced.shape != sim.shape:
            raise ValueError(f"replaced: expected shape {tuple(sim.shape)}, got {tuple(replaced.shape)}")
        mask = replaced.to(sim.dtype)
        mean_sim = (sim * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return mean_sim.clamp(-1.0, 1.0)


def hard_weights_from_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """``w = 1 + (s + 1) / 2`` in ``[1, 2]``: the more alike, the harder, the heavier."""
    return 1.0 + (similarity + 1.0) / 2.0


def hard_sample_weights(
    original_features: Sequence[torch.Tensor],
    swapped_features: Sequence[torch.Tensor],
    replaced: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Hard-sample weight ``w = 1 + (s + 1) / 2`` in ``[1, 2]``, ``[K]``, float32, detached;
    ``s`` is :func:`feature_similarity` (same arguments)."""
    return hard_weights_from_similarity(feature_similarity(original_features, swapped_features, replaced, eps))


def misaligned_loss(
    fusion_logits: torch.Tensor,
    confidences: torch.Tensor,
    source_labels: torch.Tensor,
    alpha: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Per-row misaligned loss ``w * (-sum_m alpha_m c~^m log p~[y_k(m)])``, ``[K]``.

    ``fusion_logits`` ``[K, C]`` are the fusion head's logits on the misaligned rows,
    ``confidences`` ``[K, M]`` the unimodal confidences of the components' sources on their
    own labels, ``alpha`` ``[M]`` the weak-modality weights and ``weights`` ``[K]`` the
    hard-sample weights. Confidences, alpha and weights are treated as constants: the
    gradient flows through ``fusion_logits`` only. The log-softmax runs in float32 (the
    result is float32) whatever the logits' dtype, so bf16/fp16 logits lose nothing here.
    """
    if fusion_logits.dim() != 2 or fusion_logits.shape[0] != confidences.shape[0]:
        raise ValueError(
            f"fusion_logits: expected shape [K={confidences.shape[0]}, C], got {tuple(fusion_logits.shape)}"
        )
    if alpha.shape != (confidences.shape[1],):
        raise ValueError(f"alpha: expected shape [{confidences.shape[1]}], got {tuple(alpha.shape)}")
    if weights.shape != (confidences.shape[0],):
        raise ValueError(f"weights: expected shape [{confidences.shape[0]}], got {tuple(weights.shape)}")
    shares = normalized_confidences(confidences.detach().float())
    log_p = F.log_softmax(fusion_logits.float(), dim=1).gather(1, source_labels.long())
    per_row = -(alpha.detach().to(log_p.dtype) * shares * log_p).sum(dim=1)
    return weights.detach().to(per_row.dtype) * per_row


def pair_importance_weights(sample_weights: torch.Tensor, plan: torch.Tensor, how: str = "product") -> torch.Tensor:
    """Importance weights of misaligned rows ``[K]`` from those of the batch rows ``[B]``.

    ``"product"``: a misaligned row is a function of its distinct source samples, each
    drawn with probability ``p``; relative to uniform draws its weight is the product of
    their ``1 / (N p)``. (Exact up to the within-batch partner draw, which is uniform among
    the batch's other-class rows under every policy.) ``"mean"``: the mean of the distinct
    sources' weights, i.e. the row's loss shared equally among its sources, each share
    weighted by its own source's weight: unbiased per source when every kept sample
    sources about as many rows (pruning keeps or skips samples, and a kept one is paired
    as often as any), and never above the largest weight, where the product grows as its
    power (weight 3 on two sources: 9).
    """
    if plan.dim() != 2:
        raise ValueError(f"plan: expected shape [K, M], got {tuple(plan.shape)}")
    if how not in PAIR_WEIGHTINGS:
        raise ValueError(f"how: expected one of {PAIR_WEIGHTINGS}, got {how!r}")
    rows, _ = plan.sort(dim=1)
    weights = sample_weights[rows]
    repeated = torch.zeros_like(rows, dtype=torch.bool)
    repeated[:, 1:] = rows[:, 1:] == rows[:, :-1]
    if how == "mean":
        distinct = (~repeated).sum(dim=1)
        return weights.masked_fill(repeated, 0.0).sum(dim=1) / distinct.to(weights.dtype)
    return weights.masked_fill(repeated, 1.0).prod(dim=1)


PAIR_WEIGHTINGS = ("product", "mean")


def swap_features(features: Sequence[torch.Tensor], plan: torch.Tensor) -> list[torch.Tensor]:
    """Feature-level misalignment: modality ``m`` of row ``k`` is ``features[m][plan[k, m]]``."""
    if plan.shape[1] != len(features):
        raise ValueError(f"plan: expected {len(features)} columns (one per modality), got {plan.shape[1]}")
    return [f.index_select(0, plan[:, m]) for m, f in enumerate(features)]


def per_anchor_means(anchors: torch.Tensor, batch_size: int, values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean of each ``[K]`` value over the rows of each anchor, ``[B]`` (0 where none), plus
    a ``[B]`` bool of which anchors had rows."""
    counts = torch.zeros(batch_size, device=anchors.device).index_add_(
        0, anchors, torch.ones_like(anchors, dtype=torch.float32)
    )
    means = [
        torch.zeros(batch_size, device=anchors.device).index_add_(0, anchors, v.float()) / counts.clamp_min(1.0)
        for v in values
    ]
    return means + [counts > 0]
