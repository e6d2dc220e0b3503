"""Multi-label MIDAS as pure tensor functions: labels are multi-hot rows ``[B, C]``.

The single-label math (``functional.py``) generalises through one identity: a modality's
confidence on its sample's label is the likelihood of that label under the modality's head,
``c = p[y] = exp(-CE)``. With independent per-class sigmoids the likelihood of a label set
``y`` is ``prod_c p_c^y_c (1 - p_c)^(1 - y_c) = exp(-C * BCE)``, ``BCE`` the mean over
classes; its ``C``-th root, the per-class geometric mean ``exp(-BCE)``, is the confidence:

    c^m  = exp(-BCE(z^m, y_k(m)))                in (0, 1], 1 iff the head is sure of exactly y
    c~^m = c^m / sum_m' c^m'
    t    = sum_m c~^m y_k(m)                      soft target per class, in [0, 1]
    L    = w * sum_m alpha_m c~^m BCE(z~, y_k(m))  = w * BCE(z~, t) when every alpha is 1

BCE is linear in its target, so the alpha-weighted sum of per-source terms is the soft-target
BCE when alpha is 1, as the single-label loss is the soft-target cross-entropy. All BCEs
are means over classes, the scale of the aligned loss. The fusion head's share ``q^m`` is
its own confidence on each source's label set, normalised the same way. Hard-sample weights
do not involve labels and are the single-label ones.

The pairing rules (a partner must differ from the anchor in its label set):

* ``"different_set"`` (default): ``y_j != y_i`` as sets, the single-label rule read on
  label sets (two samples of one set are one class of the power set);
* ``"disjoint"``: the sets share no class and differ (two unlabelled rows do not pair),
  every misaligned component then adds classes of its own;
* ``"any"``: a random permutation, the reference code's form.

The shares ``c~`` and the plan layout are the single-label ones (``functional``,
``pair_layout``); nothing else of the package is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .functional import normalized_confidences
from .pair_layout import direction_blocks

__all__ = [
    "MULTILABEL_RULES",
    "check_multi_hot",
    "label_set_confidence",
    "label_set_confidences",
    "soft_targets",
    "misaligned_bce",
    "valid_partners",
    "plan_pairs_multilabel",
    "ids_to_multi_hot",
]

MULTILABEL_RULES = ("different_set", "disjoint", "any")


def check_multi_hot(labels: torch.Tensor, name: str = "labels") -> None:
    """Raise unless ``labels`` is a floating-point ``[B, C]`` tensor (host-known facts only;
    the value range is checked by the callers, folded into their one synchronisation)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 2 or not labels.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a float multi-hot tensor [B, C], got {labels.dtype} {tuple(labels.shape)}")


def label_set_confidence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``exp(-mean_c BCE(z_c, y_c))``, ``[...]`` over the leading dimensions of ``[..., C]``:
    the per-class geometric mean of the probability the head gives the label set. Float32,
    detached. An all-zero row is the set "no class" and gets a well-defined confidence."""
    bce = F.binary_cross_entropy_with_logits(logits.detach().float(), targets.float(), reduction="none")
    return torch.exp(-bce.mean(dim=-1))


def label_set_confidences(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Unimodal confidence of each of ``M`` heads ``[B, C]`` on the sample's own set, ``[B, M]``."""
    return torch.stack([label_set_confidence(z, labels) for z in logits], dim=1)


def soft_targets(confidences: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
    """The soft target ``t = sum_m c~^m y_k(m)``, ``[K, C]``, from confidences ``[K, M]`` and
    the sources' multi-hot labels ``[K, M, C]``. Each entry lies in ``[0, 1]``."""
    if source_labels.dim() != 3 or source_labels.shape[:2] != confidences.shape:
        raise ValueError(
            f"source_labels {tuple(source_labels.shape)}: expected [K, M, C] with [K, M] = {tuple(confidences.shape)}"
        )
    shares = normalized_confidences(confidences.detach().float())
    return (shares.unsqueeze(2) * source_labels.float()).sum(dim=1)


def misaligned_bce(
    fusion_logits: torch.Tensor,
    confidences: torch.Tensor,
    source_labels: torch.Tensor,
    alpha: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Per-row misaligned loss ``w * sum_m alpha_m c~^m BCE(z~, y_k(m))``, ``[K]``, float32.

    ``fusion_logits`` ``[K, C]``, ``confidences`` ``[K, M]``, ``source_labels`` ``[K, M, C]``,
    ``alpha`` ``[M]``, ``weights`` ``[K]``. Only ``fusion_logits`` carries a gradient.
    """
    rows, modalities = confidences.shape
    if fusion_logits.dim() != 2 or fusion_logits.shape[0] != rows:
        raise ValueError(f"fusion_logits: expected shape [K={rows}, C], got {tuple(fusion_logits.shape)}")
    if source_labels.shape != (rows, modalities, fusion_logits.shape[1]):
        raise ValueError(
            f"source_labels: expected shape [{rows}, {modalities}, {fusion_logits.shape[1]}], "
            f"got {tuple(source_labels.shape)}"
        )
    if alpha.shape != (modalities,) or weights.shape != (rows,):
        raise ValueError(
            f"alpha {tuple(alpha.shape)} and weights {tuple(weights.shape)}: expected [{modalities}] and [{rows}]"
        )
    shares = normalized_confidences(confidences.detach().float())
    logits = fusion_logits.float().unsqueeze(1).expand(-1, modalities, -1)
    per_source = F.binary_cross_entropy_with_logits(logits, source_labels.float(), reduction="none").mean(dim=2)
    per_row = (alpha.detach().float() * shares * per_source).sum(dim=1)
    return weights.detach().float() * per_row


def valid_partners(labels: torch.Tensor, rule: str) -> torch.Tensor:
    """``[B, B]`` bool: may row ``j`` be row ``i``'s partner under ``rule``."""
    differ = (labels.unsqueeze(1) != labels.unsqueeze(0)).any(dim=2)
    if rule == "different_set":
        return differ
    if rule == "disjoint":
        positive = (labels > 0).float()
        return differ & (positive @ positive.t() == 0)
    if rule == "any":
        return torch.ones_like(differ)
    raise ValueError(f"rule: expected one of {MULTILABEL_RULES}, got {rule!r}")


def _draw_partners(allowed: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A partner per row drawn uniformly among its allowed rows (the largest of i.i.d.
    uniform keys over the allowed set is uniform over it), and whether one exists."""
    keys = torch.rand(allowed.shape, generator=generator, device=allowed.device)
    keys = torch.where(allowed, keys, torch.full_like(keys, -1.0))
    return keys.argmax(dim=1), allowed.any(dim=1)


def plan_pairs_multilabel(
    labels: torch.Tensor,
    num_modalities: int = 2,
    generator: torch.Generator | None = None,
    rule: str = "different_set",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(sources [K, M], anchors [K], num_unpaired)`` for multi-hot ``labels`` ``[B, C]``.

    The layout is that of :func:`midas_data.functional.plan_pairs` (direction-major rows;
    two modalities: ``(x_i^1, x_j^2)`` and ``(x_j^1, x_i^2)``; more: each replaced modality
    from its own uniform source, one of them forced to the anchor's partner when no source
    satisfies the rule). An anchor without a valid partner gets no rows and is counted.
    """
    check_multi_hot(labels)
    if num_modalities < 2:
        raise ValueError(f"num_modalities: MIDAS needs at least 2 modalities, got {num_modalities}")
    if rule not in MULTILABEL_RULES:
        raise ValueError(f"rule: expected one of {MULTILABEL_RULES}, got {rule!r}")
    device = labels.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    y = labels.to(gen_device)
    batch = y.shape[0]
    rows = torch.arange(batch, device=gen_device)
    allowed = valid_partners(y, rule)
    if rule == "any":
        partner = torch.randperm(batch, generator=generator, device=gen_device)
        valid = torch.ones(batch, dtype=torch.bool, device=gen_device)
    else:
        partner, valid = _draw_partners(allowed, generator)

    def lacks_other(src: torch.Tensor) -> torch.Tensor:
        return ~allowed[rows.unsqueeze(1), src].any(dim=1)

    rule_check = lacks_other if rule != "any" else None
    sources, anchors, unpaired = direction_blocks(rows, partner, valid, num_modalities, generator, rule_check)
    return sources.to(device), anchors.to(device), unpaired


def ids_to_multi_hot(class_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """A float32 multi-hot row ``[C]`` from a list of class ids (repeats count once). The
    caller has checked the ids are in range."""
    row = torch.zeros(num_classes, dtype=torch.float32)
    if len(class_ids):
        row[torch.as_tensor(list(class_ids), dtype=torch.int64)] = 1.0
    return row
