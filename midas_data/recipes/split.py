"""The 70/10/20 stratified re-split of all samples with a fixed seed.

The paper's reference code pools every sample of a dataset and re-splits it per class
(70 % train, 10 % validation, 20 % test) with a fixed seed; it does not use the datasets'
official splits. Numbers from these recipes compare with the paper's, not with papers
that report on the official splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import MidasDataError

__all__ = ["SPLITS", "stratified_split"]

SPLITS = ("train", "val", "test")


def stratified_split(
    labels: Sequence[int], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[int]]:
    """Indices of ``train``, ``val`` and ``test``: each class shuffled with ``seed`` and cut
    by ``fractions`` (rounded down for train and val; test takes the rest).

    Every class with at least three samples puts at least one in each split, so that each
    split holds every such class. The result is sorted within each split.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise MidasDataError(f"fractions: expected three positive numbers summing to 1, got {tuple(fractions)}")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        n = len(order)
        n_train = int(n * fractions[0])
        n_val = int(n * fractions[1])
        if n >= 3:  # one of each at least
            n_val = max(n_val, 1)
            n_train = max(min(n_train, n - n_val - 1), 1)
        out["train"] += order[:n_train]
        out["val"] += order[n_train : n_train + n_val]
        out["test"] += order[n_train + n_val :]
    return {name: sorted(indices) for name, indices in out.items()}
