"""Multi-label pairing rules compared on validation, on synthetic multi-label data.

A first look, not a dataset study: the data are synthetic (below), so the figures say how
the rules behave on a controlled imbalance, not which rule wins on MM-IMDB; a recipe on a
real multi-label dataset should repeat the comparison.

Data: ``C`` = 8 classes; a sample has 1 to 3 classes, class 0 in about half of them (a
frequent class, as genre "drama" is in movie data), the others uniform. Modality ``a``
shows each present class strongly (signal 1.5 per class in 16 noisy dimensions), modality
``b`` weakly (0.6): ``a`` is the strong modality. Splits: 3,000 / 1,000 / 2,000 samples.

Methods: joint training (``lam = 0``), and MIDAS with ``rule="different_set"`` (partner's
label set differs, the default) and ``rule="disjoint"`` (no shared class). Every run: an
MLP encoder per modality, concat fusion, SGD lr 0.1 with momentum 0.9, batch 64, 20 epochs,
warm-up 2 epochs. The threshold is chosen on validation (one global threshold maximising
micro-F1); the scores are micro/macro F1 at that threshold, and the weak modality's
unimodal micro-F1 (its own threshold chosen on validation), mean over seeds.

    python benchmarks/multilabel_pairing.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, midas_loader
from midas_data.experiments.metrics import multilabel_f1, select_threshold

C, DIM = 8, 16
SIGNAL = {"a": 1.5, "b": 0.6}
MODALITIES = ("a", "b")


def make_split(n: int, seed: int, projections: dict[str, torch.Tensor]) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, C)
    labels[:, 0] = (torch.rand(n, generator=g) < 0.5).float()
    count = torch.randint(1, 4, (n,), generator=g)
    for i in range(n):
        others = 1 + torch.randperm(C - 1, generator=g)[: int(count[i]) - int(labels[i, 0])]
        labels[i, others] = 1.0
    split = {m: labels @ projections[m] * SIGNAL[m] + torch.randn(n, DIM, generator=g) for m in MODALITIES}
    return [{"a": split["a"][i], "b": split["b"][i], "label": labels[i]} for i in range(n)]


def model() -> LateFusionClassifier:
    encoders = {m: nn.Sequential(nn.Linear(DIM, 32), nn.ReLU()) for m in MODALITIES}
    return LateFusionClassifier(encoders, {m: 32 for m in MODALITIES}, C)


def predict(net: LateFusionClassifier, data: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    net.eval()
    with torch.no_grad():
        out = net({m: torch.stack([d[m] for d in data]) for m in MODALITIES})
    net.train()
    probs = {"fusion": out.fusion_logits.sigmoid(), **{m: out.unimodal_logits[m].sigmoid() for m in MODALITIES}}
    return probs, torch.stack([d["label"] for d in data])


def run(method: str, seed: int, epochs: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(1000)
    projections = {m: torch.randn(C, DIM, generator=g) / 2 for m in MODALITIES}
    train, val, test = (make_split(n, s, projections) for n, s in ((3000, 1), (1000, 2), (2000, 3)))
    torch.manual_seed(seed)
    net = model()
    rule = "different_set" if method == "joint" else method
    objective = MidasObjective(C, MODALITIES, task="multilabel", warmup_epochs=2, lam=0.0 if method == "joint" else 1.0)
    loader = midas_loader(train, MODALITIES, batch_size=64, shuffle=True, seed=seed, rule=rule)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    unpaired = 0
    for _ in range(epochs):
        for batch in loader:
            loss, info = objective(net(batch.inputs), batch, model=net)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            unpaired += info["num_unpaired"]
    val_probs, val_y = predict(net, val)
    test_probs, test_y = predict(net, test)
    result = {"unpaired_rows": unpaired}
    for head in ("fusion", "b"):
        threshold, val_f1 = select_threshold(val_probs[head], val_y)
        result[f"{head}_val_micro_f1"] = val_f1
        result[f"{head}_test_micro_f1"] = multilabel_f1(test_probs[head], test_y, threshold)
        result[f"{head}_test_macro_f1"] = multilabel_f1(test_probs[head], test_y, threshold, "macro")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for method in ("joint", "different_set", "disjoint"):
        runs = [run(method, seed, args.epochs) for seed in range(args.seeds)]
        means = {key: round(statistics.mean(r[key] for r in runs), 4) for key in runs[0]}
        print(json.dumps({"method": method, "seeds": args.seeds, "epochs": args.epochs, **means}), flush=True)


if __name__ == "__main__":
    main()
