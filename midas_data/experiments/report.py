"""A report folder for a comparison of training methods: plots, ``results.json``, ``summary.md``.

Inputs are plain data, so that anything that trains can report:

* ``history`` — one dict per epoch: ``{"epoch": e, "train_loss": ..., "val": {"accuracy",
  "macro_f1", "per_modality_accuracy": {m: ...}, "misaligned_accuracy",
  "modality_confidence": {m: ...}}}`` (what :func:`midas_data.experiments.fit` records);
* ``alpha_steps`` — MIDAS's weak-modality weights after every training step, ``[[a_1..a_M], ...]``;
* ``test`` — the test metrics of the selected checkpoint, same keys as ``val``.

matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "plot_accuracy_curves",
    "plot_modality_confidence",
    "plot_alpha",
    "plot_score_histogram",
    "comparison_table",
    "write_report",
]

METRIC_COLUMNS = (
    ("accuracy", "Accuracy"),
    ("macro_f1", "Macro-F1"),
    ("misaligned_accuracy", "Misaligned acc."),
)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("midas_data.experiments.report needs matplotlib: pip install 'midas-data[report]'") from err
    return plt


def _shade_warmup(ax: Any, warmup_epochs: int | None, label: str = "MIDAS warm-up") -> None:
    if warmup_epochs:
        ax.axvspan(0, warmup_epochs, color="0.9", zorder=0, label=label)


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[int]:
    """x positions: epochs completed when the evaluation ran (1 after the first epoch)."""
    return [int(r["epoch"]) + 1 for r in history]


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0)
    ax.set_xlabel("epochs trained")


def plot_accuracy_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    best_epochs: Mapping[str, int] | None = None,
    warmup_epochs: int | None = None,
    title: str = "Validation accuracy per epoch",
) -> Path:
    """Aligned (solid) and misaligned (dashed) validation accuracy of each method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    _shade_warmup(ax, warmup_epochs)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        epochs = _epochs(history)
        ax.plot(epochs, [r["val"]["accuracy"] for r in history], "-o", ms=3, color=colour, label=f"{name}: aligned")
        ax.plot(
            epochs,
            [r["val"]["misaligned_accuracy"] for r in history],
            "--",
            color=colour,
            label=f"{name}: misaligned (top-2 has both labels)",
        )
        if best_epochs and name in best_epochs:
            best = best_epochs[name]
            value = next(r["val"]["accuracy"] for r in history if r["epoch"] == best)
            ax.plot([best + 1], [value], marker="*", ms=15, color=colour, markeredgecolor="black", linestyle="none")
    ax.set_title(title + ("  (star: selected checkpoint)" if best_epochs else ""))
    _epoch_axis(ax)
    ax.set_ylabel("accuracy on the validation split")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return _save(fig, path)


def plot_modality_confidence(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    warmup_epochs: int | None = None,
) -> Path:
    """One panel per method: the fusion head's mean probability on each modality's source
    label, over misaligned validation samples, per epoch."""
    plt = _pyplot()
    names = list(histories)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        history = histories[name]
        epochs = _epochs(history)
        if "midas" in name:
            _shade_warmup(ax, warmup_epochs)
        modalities = list(history[0]["val"]["modality_confidence"]) if history else []
        for m in modalities:
            ax.plot(epochs, [r["val"]["modality_confidence"][m] for r in history], "-o", ms=3, label=f"{m}'s label")
        ax.set_title(name)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
    axes[0][0].set_ylabel("mean fusion probability on misaligned val samples")
    axes[0][0].set_ylim(0, 1)
    fig.suptitle("Which modality does the model follow when the modalities disagree?")
    return _save(fig, path)


def plot_alpha(
    alpha_steps: Sequence[Sequence[float]],
    modalities: Sequence[str],
    path: str | Path,
    *,
    steps_per_epoch: int,
    warmup_epochs: int | None = None,
) -> Path:
    """MIDAS's weak-modality weights ``alpha`` after every step, x-axis in epochs."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: expected at least 1, got {steps_per_epoch}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    if warmup_epochs:
        ax.axvspan(0, warmup_epochs, color="0.9", zorder=0, label="warm-up (alpha not used)")
    x = [(i + 1) / steps_per_epoch for i in range(len(alpha_steps))]
    for j, m in enumerate(modalities):
        ax.plot(x, [a[j] for a in alpha_steps], drawstyle="steps-post", label=f"alpha[{m}]")
    ax.set_title("MIDAS weak-modality weight alpha per training step")
    _epoch_axis(ax)
    ax.set_ylabel("alpha (starts at 1)")
    ax.set_ylim(bottom=0.95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


def plot_score_histogram(
    scores: Any,
    path: str | Path,
    *,
    by: str = "mismatch",
    marked: Any = None,
    marked_label: str = "marked samples",
    bins: int = 60,
) -> Path:
    """Histogram of a per-sample score (``StatsTable.scores(by)``, or any 1-D values;
    ``NaN`` dropped), with the ``marked`` ids (e.g. known bad pairs) drawn apart, and the
    threshold of the top 5 % as a dashed line. Log-scaled counts."""
    import torch

    plt = _pyplot()
    values = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    seen = ~values.isnan()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    known = values[seen]
    if known.numel():
        edges = torch.linspace(float(known.min()), float(known.max()) + 1e-6, bins + 1).tolist()
        if marked is not None:
            mask = torch.zeros_like(values, dtype=torch.bool)
            mask[torch.as_tensor(marked, dtype=torch.long)] = True
            ax.hist(values[seen & ~mask].numpy(), bins=edges, color="0.6", label="other samples")
            ax.hist(values[seen & mask].numpy(), bins=edges, color="C3", alpha=0.8, label=marked_label)
        else:
            ax.hist(known.numpy(), bins=edges, color="C0", label="samples")
        cut = float(torch.quantile(known.double(), 0.95))
        ax.axvline(cut, color="k", linestyle="--", linewidth=1, label="top 5 %")
    ax.set_yscale("log")
    ax.set_xlabel(f"score: {by}")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of test metrics, one row per method (values in percent)."""
    if not results:
        raise ValueError("results: expected at least one method")
    modalities = list(next(iter(results.values()))["per_modality_accuracy"])
    header = ["Method"] + [title for _, title in METRIC_COLUMNS] + [f"{m} head acc." for m in modalities]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in results.items():
        cells = [name] + [_pct(metrics.get(key)) for key, _ in METRIC_COLUMNS]
        cells += [_pct(metrics["per_modality_accuracy"].get(m)) for m in modalities]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    *,
    dataset: str,
    runs: Mapping[str, Mapping[str, Any]],
    modalities: Sequence[str],
    warmup_epochs: int | None = None,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    scores: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the plots, ``results.json`` and ``summary.md`` into ``out_dir``.

    ``runs`` maps a method name to ``{"history", "test", "best_epoch", "alpha_steps"
    (optional), "steps_per_epoch"}``. ``scores`` (optional): ``{"values": [N] per-sample
    score, "by": its name, "marked": ids to draw apart}``, e.g. from a
    :class:`~midas_data.StatsTable`, adds ``score_histogram.png``. Returns the paths
    written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    histories = {name: run["history"] for name, run in runs.items()}
    best = {name: int(run["best_epoch"]) for name, run in runs.items()}
    paths = {
        "accuracy_curves": plot_accuracy_curves(
            histories, out / "accuracy_curves.png", best_epochs=best, warmup_epochs=warmup_epochs
        ),
        "modality_confidence": plot_modality_confidence(
            histories, out / "modality_confidence.png", warmup_epochs=warmup_epochs
        ),
    }
    alpha_runs = [(name, run) for name, run in runs.items() if run.get("alpha_steps")]
    if alpha_runs:
        name, run = alpha_runs[0]
        paths["alpha"] = plot_alpha(
            run["alpha_steps"],
            modalities,
            out / "alpha.png",
            steps_per_epoch=int(run["steps_per_epoch"]),
            warmup_epochs=warmup_epochs,
        )
    if scores is not None:
        paths["score_histogram"] = plot_score_histogram(
            scores["values"], out / "score_histogram.png", by=scores.get("by", "mismatch"), marked=scores.get("marked")
        )
    results = {
        "dataset": dataset,
        "modalities": list(modalities),
        "test": {name: run["test"] for name, run in runs.items()},
        "best_epoch": best,
        "history": histories,
        "alpha_steps": {name: run["alpha_steps"] for name, run in alpha_runs},
        **dict(extra or {}),
    }
    paths["results"] = out / "results.json"
    paths["results"].write_text(json.dumps(results, indent=1) + "\n")
    paths["summary"] = out / "summary.md"
    paths["summary"].write_text(_summary(dataset, runs, best, paths, notes))
    return paths


def _summary(
    dataset: str,
    runs: Mapping[str, Mapping[str, Any]],
    best: Mapping[str, int],
    paths: Mapping[str, Path],
    notes: Sequence[str],
) -> str:
    lines = [
        f"# {dataset}: " + " vs ".join(runs),
        "",
        "Test split, checkpoint with the best validation accuracy (percent). Misaligned accuracy:",
        "each test sample paired with one of another class, both directions; a hit when both",
        "source labels are in the top-2. Head acc.: the unimodal heads (probes on detached",
        "features for methods that do not train them).",
        "",
        comparison_table({name: run["test"] for name, run in runs.items()}),
        "",
        "Checkpoint selected after epoch (1 = first): "
        + ", ".join(f"{name} {epoch + 1}" for name, epoch in best.items())
        + ".",
        "",
    ]
    lines += [f"{n}" for n in notes] + ([""] if notes else [])
    figures = [
        ("accuracy_curves", "Validation accuracy, aligned and misaligned"),
        ("modality_confidence", "Fusion probability on each modality's label, misaligned validation samples"),
        ("alpha", "MIDAS alpha trajectory"),
    ]
    for key, caption in figures:
        if key in paths:
            lines += [f"## {caption}", "", f"![{caption}]({paths[key].name})", ""]
    return "\n".join(lines)
