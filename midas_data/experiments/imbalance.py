"""Will MIDAS help this data? A short check before a full training run.

MIDAS is for a weak modality that joint training *under-uses* while it carries enough to
be learned; for a weak modality that carries little, its misaligned samples teach noise and
it loses (``benchmarks/results/study.md``). :func:`check_imbalance` measures which case a
user's data and model are in, on a short budget:

* **joint training** with the unimodal heads trained as *probes* on detached features
  (:class:`~midas_data.experiments.method.JointTraining`): each head's validation accuracy
  ``H`` says what joint training made of that modality's encoder;
* **each modality alone** (:class:`~midas_data.experiments.method.UnimodalTraining`): its
  validation accuracy ``A`` says what the modality can carry with this model;
* both over a few seeds, the gap ``A - H`` paired per seed with a 95 % t-interval.

:func:`decide` turns ``A``, the gap and the chance level into a verdict with the thresholds
below, chosen on the *validation* figures of the study's cells (``benchmarks/results/runs.jsonl``)
and checked by ``benchmarks/imbalance_check.py`` (``benchmarks/results/imbalance_check.md``).
Everything here reads the training and validation splits only.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models import LateFusionClassifier
from .config import TrainConfig
from .datasets import InMemoryDataset, cache_dataset
from .fit import fit
from .method import JointTraining, Method, UnimodalTraining
from .paired import paired_difference, t_quantile_975

__all__ = [
    "INFORMATIVE_LIFT",
    "LITTLE_LIFT",
    "UNDERUSED_GAP",
    "VERDICTS",
    "ModalityCheck",
    "ImbalanceReport",
    "decide",
    "check_imbalance",
    "plot_imbalance",
]

# The thresholds, for the default budget (3 seeds x 5 epochs). "Lift" is a modality's alone
# accuracy above chance, as a share of the room above chance: (A - chance) / (1 - chance);
# chance is the share of the commonest class in the validation split. Chosen on validation
# figures only: the check's own on the glyphs cells of the study (the image is the weak
# modality; benchmarks/results/imbalance_check.md), beside MIDAS - joint_heads measured on
# validation (5 seeds, 15 epochs, benchmarks/results/runs.jsonl). The 8x8 cells were held out.
#
#   glyphs cell        image alone A  lift  probe head H  gap A - H [95 %]     MIDAS - joint_heads (val)
#   image noise 0.3    65.5           0.61  37.6          +27.8 [+19.7, +36.0]  +2.7 [+1.4, +4.0]  win
#   image noise 0.5    39.3           0.32  24.7          +14.6 [+5.7, +23.6]   +0.9 [-0.5, +2.2]  tie
#   image noise 0.7    25.5           0.16  17.0          +8.5 [+2.2, +14.7]    -2.6 [-5.1, -0.2]  loss
#   image noise 1.2    13.2           0.03  11.5          +1.7 [-1.2, +4.6]     -7.2 [-9.5, -4.8]  loss
#   speech 0 dB        39.3           0.32  17.6          +21.7 [+12.3, +31.1]  -0.6 [-2.3, +1.1]  tie
#
# The outcome follows the lift, not the gap (the speech cell's gap is the second largest and
# MIDAS tied): INFORMATIVE_LIFT lies between the ties (0.32) and the win (0.61), at their
# midpoint rounded down; LITTLE_LIFT between the better loss (0.16) and the ties (0.32), at
# their midpoint rounded up. (After 15 epochs the same cells' lifts were 0.79,
# 0.48, 0.23 and 0.06: a longer --epochs moves the figures, and these thresholds with them.)
INFORMATIVE_LIFT = 0.45
LITTLE_LIFT = 0.25
# A modality is under-used when joint training leaves its probe this far (accuracy, as a
# fraction) below the modality alone, with the gap's interval above 0. The dominant speech's
# gap was +0.5 to +5.4 points in those cells with every interval reaching below 0; every
# image that carried something was at least 8.5 points below, its interval above 0.
UNDERUSED_GAP = 0.05

VERDICTS = {
    "helps": "under-used and informative: MIDAS likely helps",
    "hurts": "carries little: MIDAS likely hurts",
    "no_need": "no need for MIDAS",
}


@dataclass
class ModalityCheck:
    """One modality's figures (validation accuracy, fractions) and verdict."""

    modality: str
    alone: float  # mean over seeds: the modality trained alone
    head: float  # mean over seeds: its head, a probe, under joint training
    gap: dict[str, Any]  # alone - head, paired per seed: mean, std, low, high (95 %), n
    lift: float  # (alone - chance) / (1 - chance)
    verdict: str  # a key of VERDICTS
    reason: str
    alone_per_seed: list[float] = field(default_factory=list)
    head_per_seed: list[float] = field(default_factory=list)


@dataclass
class ImbalanceReport:
    """What :func:`check_imbalance` returns. ``weak`` is the modality whose head joint
    training left lowest; ``verdict`` is that modality's."""

    rows: list[ModalityCheck]
    weak: str
    verdict: str
    chance: float
    joint_accuracy: float  # fused validation accuracy of joint training, mean over seeds
    seeds: int
    epochs: int
    thresholds: dict[str, float]

    @property
    def verdicts(self) -> dict[str, str]:
        """Modality -> verdict key."""
        return {row.modality: row.verdict for row in self.rows}

    def row(self, modality: str) -> ModalityCheck:
        for row in self.rows:
            if row.modality == modality:
                return row
        raise KeyError(f"modality: no row for {modality!r}; the report has {[r.modality for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = VERDICTS[self.verdict]
        return json.loads(json.dumps(out, default=float))

    def to_json(self) -> str:
        """The report as one JSON line."""
        return json.dumps(self.to_dict())

    def table(self) -> str:
        """A plain-text table, percent."""
        lines = [
            f"{'modality':<12} {'alone':>6} {'head':>6} {'gap [95% interval]':>24} {'lift':>5}  verdict",
        ]
        for r in self.rows:
            gap = f"{100 * r.gap['mean']:+.1f} [{100 * r.gap['low']:+.1f}, {100 * r.gap['high']:+.1f}]"
            figures = f"{r.modality:<12} {100 * r.alone:6.1f} {100 * r.head:6.1f} {gap:>24} {r.lift:5.2f}"
            lines.append(f"{figures}  {r.verdict}: {r.reason}")
        lines.append(
            f"weak modality: {self.weak} -> {VERDICTS[self.verdict]} "
            f"(validation accuracy, {self.seeds} seeds x {self.epochs} epochs, chance {100 * self.chance:.1f})"
        )
        return "\n".join(lines)


def decide(
    alone: float,
    head: float,
    chance: float,
    *,
    informative_lift: float = INFORMATIVE_LIFT,
    little_lift: float = LITTLE_LIFT,
    underused_gap: float = UNDERUSED_GAP,
    gap_low: float | None = None,
) -> tuple[str, str]:
    """The verdict for one modality from its alone accuracy, its head's accuracy under
    joint training and the chance level (fractions): ``(key of VERDICTS, reason)``.

    In order: a lift below ``little_lift`` -> ``"hurts"``; a gap ``alone - head`` below
    ``underused_gap``, or with its interval's lower end ``gap_low`` (when given) at or
    below 0 -> ``"no_need"`` (balanced); a lift of at least ``informative_lift`` ->
    ``"helps"``; else ``"no_need"`` (under-used but too weak for a measurable gain).
    """
    for name, value in (("alone", alone), ("head", head), ("chance", chance)):
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"{name}: expected an accuracy in [0, 1], got {value}")
    if chance >= 1.0:
        raise ValueError(f"chance: expected below 1 (the validation split has one class), got {chance}")
    lift = (alone - chance) / (1.0 - chance)
    gap = alone - head
    if lift < little_lift:
        return "hurts", f"carries little: lift {lift:.2f} < {little_lift}"
    if gap < underused_gap or (gap_low is not None and gap_low <= 0):
        shown = f"{100 * gap:+.1f} points" + ("" if gap_low is None else f", interval from {100 * gap_low:+.1f}")
        return "no_need", f"balanced: joint training uses it about as well as alone (gap {shown})"
    if lift >= informative_lift:
        return (
            "helps",
            f"under-used (gap {100 * gap:+.1f} points) and informative (lift {lift:.2f} >= {informative_lift})",
        )
    return "no_need", f"under-used but moderately informative (lift {lift:.2f} < {informative_lift}): no clear gain"


def _as_memory(data: Any, modalities: Sequence[str], name: str) -> InMemoryDataset:
    if not isinstance(data, InMemoryDataset):
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise TypeError(f"{name}: expected an InMemoryDataset or a map-style dataset, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError(f"{name}: expected a non-empty split, got 0 samples")
        data = cache_dataset(data, modalities)
    if len(data) == 0:
        raise ValueError(f"{name}: expected a non-empty split, got 0 samples")
    missing = [m for m in modalities if m not in data.tensors]
    if missing:
        raise KeyError(f"{name}: has no modality {missing}; it has {sorted(data.tensors)}")
    return data


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _half_width(values: Sequence[float]) -> float:
    n = len(values)
    return t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional
        return None
    return tqdm(total=total, desc="imbalance check", unit="run", file=sys.stderr, dynamic_ncols=True)


def check_imbalance(
    model_factory: Callable[[], LateFusionClassifier],
    train: Any,
    val: Any,
    modalities: Sequence[str],
    *,
    seeds: int = 3,
    epochs: int = 5,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> ImbalanceReport:
    """Train joint training (heads as probes) and each of ``modalities`` alone for a short
    budget over ``seeds`` seeds, and report per modality its alone accuracy, its head's
    accuracy under joint training, the gap with a 95 % interval and a verdict (:func:`decide`).

    Args:
        model_factory: returns a fresh :class:`~midas_data.models.LateFusionClassifier`
            (encoders per modality, a unimodal head per modality, a fusion head); it is
            called once per run after ``torch.manual_seed(seed)``.
        train, val: :class:`~midas_data.experiments.InMemoryDataset` or map-style datasets
            of ``{modality: tensor, "label": int}`` items (read once into memory).
        modalities: the modalities to check (at least one; the model's names).
        seeds: seeds 0..seeds-1; at least 2, for the intervals.
        epochs: epochs per run; the best epoch on validation is kept.
        config: the rest of the budget (learning rate, batch size...); ``epochs`` and the
            seed override its own. BatchNorm statistics are re-estimated before evaluation.
        progress: a progress bar on standard error.
    """
    modalities = list(modalities)
    if not modalities:
        raise ValueError("modalities: expected at least one modality name, got none")
    if seeds < 2:
        raise ValueError(f"seeds: expected at least 2 (an interval needs two seeds), got {seeds}")
    if epochs < 1:
        raise ValueError(f"epochs: expected at least 1, got {epochs}")
    probe = model_factory()
    if not isinstance(probe, LateFusionClassifier):
        raise TypeError(f"model_factory: expected it to return a LateFusionClassifier, got {type(probe).__name__}")
    unknown = [m for m in modalities if m not in probe.modalities]
    if unknown:
        raise KeyError(f"modalities: unknown {unknown}; the model has {list(probe.modalities)}")
    inputs = list(probe.modalities)
    train = _as_memory(train, inputs, "train")
    val = _as_memory(val, inputs, "val")
    counts = torch.bincount(val.labels)
    if int((counts > 0).sum()) < 2:
        raise ValueError("val: expected at least two classes, got one")
    chance = float(counts.max()) / len(val)
    base = config or TrainConfig()
    bar = _progress(seeds * (1 + len(modalities)), progress)
    joint_acc: list[float] = []
    heads: dict[str, list[float]] = {m: [] for m in modalities}
    alone: dict[str, list[float]] = {m: [] for m in modalities}

    def one(method: Method, seed: int) -> dict[str, Any]:
        run_config = TrainConfig(**{**vars(base), "epochs": epochs, "seed": seed, "bn_protocols": ("precise",)})
        torch.manual_seed(seed)
        model = model_factory()
        if bar is not None:
            bar.set_postfix_str(f"{method.name}, seed {seed}")
        result = fit(method, model, train, val, run_config)
        if bar is not None:
            bar.update(1)
        return result.selected["precise"]["metrics"]

    try:
        for seed in range(seeds):
            metrics = one(JointTraining(heads=False), seed)
            joint_acc.append(float(metrics["accuracy"]))
            for m in modalities:
                heads[m].append(float(metrics["per_modality_accuracy"][m]))
            for m in modalities:
                alone[m].append(float(one(UnimodalTraining(m), seed)["per_modality_accuracy"][m]))
    finally:
        if bar is not None:
            bar.close()
    rows = []
    for m in modalities:
        a, h = _mean(alone[m]), _mean(heads[m])
        gap = paired_difference(alone[m], heads[m])
        verdict, reason = decide(a, h, chance, gap_low=gap["low"])
        rows.append(
            ModalityCheck(
                modality=m,
                alone=a,
                head=h,
                gap=gap,
                lift=(a - chance) / (1.0 - chance),
                verdict=verdict,
                reason=reason,
                alone_per_seed=alone[m],
                head_per_seed=heads[m],
            )
        )
    weak = min(rows, key=lambda r: r.head)
    return ImbalanceReport(
        rows=rows,
        weak=weak.modality,
        verdict=weak.verdict,
        chance=chance,
        joint_accuracy=_mean(joint_acc),
        seeds=seeds,
        epochs=epochs,
        thresholds={
            "informative_lift": INFORMATIVE_LIFT,
            "little_lift": LITTLE_LIFT,
            "underused_gap": UNDERUSED_GAP,
        },
    )


def plot_imbalance(report: ImbalanceReport, path: str | Path, title: str | None = None) -> Path:
    """Bars of each modality's alone accuracy and its head under joint training, with 95 %
    intervals over the seeds and the chance level; written to ``path`` (PNG)."""
    from .report import _pyplot

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [r.modality for r in report.rows]
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(names), 3.2))
    width = 0.38
    for offset, key, label, colour in (
        (-width / 2, "alone_per_seed", "alone", "#4c72b0"),
        (width / 2, "head_per_seed", "head under joint training", "#dd8452"),
    ):
        values = [getattr(r, key) for r in report.rows]
        ax.bar(
            [i + offset for i in range(len(names))],
            [100 * _mean(v) for v in values],
            width,
            yerr=[100 * _half_width(v) for v in values],
            capsize=3,
            label=label,
            color=colour,
        )
    ax.axhline(100 * report.chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{r.modality}\n{r.verdict}" for r in report.rows])
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"imbalance check: {VERDICTS[report.verdict]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
