"""Finding bad pairs with the stats table: mismatched pairs injected into the glyphs data.

5 % of the training samples (200 of 4,000, drawn with the injection seed) get the speech
clip of a training sample of another class; their label stays the image's. MIDAS is
trained as usual (protocol v2: 15 epochs, the CNN model, the uniform sampler) with a
:class:`~midas_data.StatsTable` fed every step (``midas_table``), and the training set is
ranked by the table's scores. The top 5 % of each ranking is compared with the injected
set: precision (share of the top 5 % that is injected) and recall (share of the injected
found in the top 5 %; with both sets of 200 they are equal).

Two stages, so that nothing reported is chosen on what it reports:

* ``select``: injection seed 100, training seed 100. The candidate mismatch scores are
  ranked here and the best precision names the score the report uses. Candidates: the
  table's last ``surprise`` and ``disagreement`` (``midas_data.feedback.readout``; the
  first selection chose ``surprise`` as the table's ``mismatch`` default), and, added in a
  second selection (declared before its run), ``surprise`` and ``loss`` averaged over
  epochs with a :class:`~midas_data.feedback.history.ScoreHistory` recorded at every
  epoch's end (``mean_surprise``, ``mean_loss``), after the warm-up only
  (``mean_surprise_after_warmup``) and over the second half of training
  (``mean_surprise_late``).
* ``report`` (the JSON line): injection seed 1, training seed 1 (and further seeds with
  ``--seeds``), ranked by ``mismatch`` against two baselines: the per-sample loss alone
  (the table's ``loss`` column, the aligned fusion loss) and a random ranking (its
  expected precision is the injection rate, 0.05; one seeded draw is printed too).
  With ``--retrain``, MIDAS is trained again on the cleaned set (the top 5 % by
  ``mismatch`` dropped) and its test accuracy (``precise`` protocol) is set against the
  corrupted run's, seed for seed.

Every run is appended to ``results/bad_pairs.jsonl`` and skipped when met again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from accuracy import RESULTS, load_splits, method_options
from feedback_savings import EPOCHS, train_and_test

from midas_data.experiments.datasets import InMemoryDataset
from midas_data.feedback.history import ScoreHistory

LOG = RESULTS / "bad_pairs.jsonl"
RATE = 0.05
CANDIDATES = (
    "surprise",
    "disagreement",
    "mean_surprise",
    "mean_surprise_after_warmup",
    "mean_surprise_late",
    "mean_loss",
)
SELECTION_SEED = 100


def inject(train: InMemoryDataset, seed: int, rate: float = RATE) -> tuple[InMemoryDataset, torch.Tensor]:
    """A copy of ``train`` in which ``rate`` of the samples carry the audio of a sample of
    another class (drawn among the untouched ones); labels unchanged. Returns it and the
    sorted injected ids."""
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    injected = torch.randperm(n, generator=g)[: round(rate * n)].sort().values
    clean = torch.ones(n, dtype=torch.bool)
    clean[injected] = False
    audio = train.tensors["audio"].clone()
    labels = train.labels
    for i in injected.tolist():
        donors = (clean & (labels != labels[i])).nonzero().squeeze(1)
        audio[i] = train.tensors["audio"][donors[torch.randint(donors.numel(), (1,), generator=g)]]
    return InMemoryDataset({**train.tensors, "audio": audio}, labels, train.label_key), injected


def top_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """Ids of the highest ``share`` of ``scores`` (NaN last; ties: smaller id first)."""
    k = round(share * scores.numel())
    order = torch.sort(scores.nan_to_num(float("-inf")), descending=True, stable=True).indices
    return order[:k]


def precision_recall(flagged: torch.Tensor, injected: torch.Tensor) -> tuple[float, float]:
    hits = int(torch.isin(flagged, injected).sum())
    return hits / max(flagged.numel(), 1), hits / max(injected.numel(), 1)


def _key(stage: str, seed: int, kind: str) -> str:
    # "v2": the runs with the epoch-averaged candidates (the first runs' records stay in
    # the log under their old keys, for the record of the first selection).
    return f"v2/{stage}/{seed}/{kind}"


def _log(log: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[record["key"]] = record
    return runs


def ranked_run(stage: str, seed: int, splits: dict[str, Any], options: dict[str, Any], log: Path) -> dict[str, Any]:
    """Train MIDAS with the table on the corrupted set; precision/recall of every score."""
    key = _key(stage, seed, "corrupted")
    runs = _log(log)
    if key in runs:
        return runs[key]
    train, injected = inject(splits["train"], seed)
    histories: dict[str, tuple[ScoreHistory, int]] = {}

    def record_epoch(method: Any, epoch: int) -> None:
        # Called as epoch `epoch` starts: the table holds the end of epoch `epoch - 1`.
        if not histories:
            first = {"mean_surprise": 0, "mean_surprise_after_warmup": options["warmup_epochs"],
                     "mean_surprise_late": EPOCHS // 2, "mean_loss": 0}  # fmt: skip
            for name, start in first.items():
                by = "loss" if name == "mean_loss" else "surprise"
                histories[name] = (ScoreHistory(method.stats, by), start)
        for history, start in histories.values():
            if epoch - 1 >= start:
                history.record()

    record, method = train_and_test("midas_table", seed, splits, options, train=train, on_epoch=record_epoch)
    record_epoch(method, EPOCHS)  # the end of the last epoch
    table = method.stats
    scores = {by: table.scores(by) for by in ("surprise", "disagreement", "mismatch", "loss")}
    scores.update({name: history.scores() for name, (history, _) in histories.items()})
    ranking = {}
    for by in (*CANDIDATES, "mismatch", "loss"):
        flagged = top_share(scores[by], RATE)
        ranking[by] = {
            "precision": precision_recall(flagged, injected)[0],
            "recall": precision_recall(flagged, injected)[1],
        }
    random_flagged = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 7))[: injected.numel()]
    p, r = precision_recall(random_flagged, injected)
    ranking["random_draw"] = {"precision": p, "recall": r}
    flagged = {by: top_share(scores[by], RATE).tolist() for by in CANDIDATES}
    out = {"key": key, "stage": stage, "seed": seed, "ranking": ranking, "run": record, "flagged": flagged}
    with log.open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(f"{stage} seed {seed}: {json.dumps(ranking)}", file=sys.stderr, flush=True)
    return out


def retrain(seed: int, by: str, flagged: list[int], splits: dict[str, Any], options: dict[str, Any], log: Path) -> dict:
    key = _key("report", seed, f"cleaned by {by}")
    runs = _log(log)
    if key in runs:
        return runs[key]
    train, _ = inject(splits["train"], seed)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[torch.tensor(flagged, dtype=torch.long)] = False
    record, _ = train_and_test("midas", seed, splits, options, train=train.subset(keep.nonzero().squeeze(1)))
    out = {"key": key, "stage": "report", "seed": seed, "run": record}
    with log.open("a") as f:
        f.write(json.dumps(out) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("select", "report", "both"), default="both")
    parser.add_argument("--seeds", default="1", help="comma-separated report seeds (default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="also train on the cleaned set")
    parser.add_argument("--log", default=str(LOG))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    log = Path(args.log)
    options = method_options("glyphs", EPOCHS)
    splits = load_splits("glyphs")
    if args.stage in ("select", "both"):
        chosen = ranked_run("select", SELECTION_SEED, splits, options, log)
        best = max(CANDIDATES, key=lambda by: chosen["ranking"][by]["precision"])
        print(json.dumps({"benchmark": "bad_pairs", "stage": "select", "seed": SELECTION_SEED, "chosen": best,
                          "ranking": chosen["ranking"]}), flush=True)  # fmt: skip
    if args.stage in ("report", "both"):
        seeds = [int(s) for s in args.seeds.split(",") if s]
        reports = [ranked_run("report", s, splits, options, log) for s in seeds]
        row: dict[str, Any] = {"benchmark": "bad_pairs", "seeds": seeds, "injected_share": RATE, "epochs": EPOCHS}
        mean = lambda by, what: round(statistics.mean(r["ranking"][by][what] for r in reports), 4)  # noqa: E731
        selected = _log(log).get(_key("select", SELECTION_SEED, "corrupted"))
        if selected is None:
            parser.error("the report needs the selection stage first (--stage select)")
        best = max(CANDIDATES, key=lambda by: selected["ranking"][by]["precision"])
        row["precision_top5"], row["recall_top5"] = mean(best, "precision"), mean(best, "recall")
        row["score"] = f"{best} (chosen on the selection run)"
        row["baselines"] = {
            "loss": {"precision_top5": mean("loss", "precision"), "recall_top5": mean("loss", "recall")},
            "random_expected": {"precision_top5": RATE, "recall_top5": RATE},
            "random_draw": {
                "precision_top5": mean("random_draw", "precision"),
                "recall_top5": mean("random_draw", "recall"),
            },
            **{
                by: {"precision_top5": mean(by, "precision"), "recall_top5": mean(by, "recall")}
                for by in CANDIDATES
                if by != best
            },
        }
        row["goal_precision_top5"] = 0.80
        row["corrupted_test_accuracy"] = [round(100 * r["run"]["test_accuracy"]["precise"], 2) for r in reports]
        if args.retrain:
            cleaned = [retrain(r["seed"], best, r["flagged"][best], splits, options, log) for r in reports]
            row["cleaned_test_accuracy"] = [round(100 * c["run"]["test_accuracy"]["precise"], 2) for c in cleaned]
            row["cleaned_minus_corrupted_points"] = [
                round(a - b, 2) for a, b in zip(row["cleaned_test_accuracy"], row["corrupted_test_accuracy"])
            ]
        row["bn_protocol"] = "precise"
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
