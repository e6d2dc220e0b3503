"""Training-step time of MIDAS relative to joint training, for the same model and batches.

Three steps on the benchmark's late-fusion model with batches of its shapes, built
beforehand so that only the step is timed. ``--image-side 28`` (default) is protocol v2's
model on the glyphs data (CNN image and audio encoders); ``--image-side 8`` the earlier
8x8 model (MLP image encoder, time-delay audio encoder):

* ``joint`` — forward on the aligned batch, fusion cross-entropy, backward, SGD step;
* ``feature`` — MIDAS with feature-level misalignment: the same forward, then the fusion
  head on the recombined features (``objective(output, batch, fuse=model.fuse)``);
* ``input`` — MIDAS with input-level misalignment: the misaligned inputs are built from the
  batch (timed: it happens in the step by default) and the whole model runs on them.

The three run in alternation, ``--steps`` steps per round and ``--repeats`` rounds, with
the order rotated every round; the medians of the per-step times are compared. Prints one
JSON line.

    python benchmarks/step_overhead.py [--batch-size 64] [--steps 20] [--repeats 15] [--image-side 28]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from midas_data import MidasBatch, MidasCollate, MidasObjective
from midas_data.experiments import build_model

NUM_CLASSES = 10


Shapes = dict[str, tuple[int, ...]]


def shapes_for(image_side: int) -> Shapes:
    return {"image": (1, image_side, image_side), "audio": (1, 32, 65)}


def make_batches(count: int, batch_size: int, mode: str, shapes: Shapes, seed: int = 0) -> list[MidasBatch]:
    collate = MidasCollate(tuple(shapes), "label", mode=mode, seed=seed)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(count):
        items = [
            (
                b * batch_size + i,
                {
                    **{m: torch.randn(*shape, generator=g) for m, shape in shapes.items()},
                    "label": int(torch.randint(NUM_CLASSES, (), generator=g)),
                },
            )
            for i in range(batch_size)
        ]
        batches.append(collate(items))
    return batches


def make_step(kind: str, shapes: Shapes, seed: int) -> tuple[Callable[[MidasBatch], None], torch.nn.Module]:
    model = build_model(shapes, NUM_CLASSES, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    objective = MidasObjective(NUM_CLASSES, tuple(shapes))

    def step(batch: MidasBatch) -> None:
        output = model(batch.inputs)
        if kind == "joint":
            loss = F.cross_entropy(output.fusion_logits, batch.labels)
        elif kind == "feature":
            loss, _ = objective(output, batch, fuse=model.fuse)
        else:
            # A fresh copy: the misaligned inputs are built in the step, as in training.
            fresh = dataclasses.replace(batch, _misaligned=None)
            misaligned = model(fresh.misaligned_inputs).fusion_logits
            loss, _ = objective(output, fresh, misaligned_logits=misaligned)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=15, help="rounds per kind")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--image-side", type=int, default=28, choices=(8, 28), help="28: glyphs model; 8: 8x8 model")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    shapes = shapes_for(args.image_side)

    kinds = ("joint", "feature", "input")
    batches = {
        "joint": make_batches(args.steps, args.batch_size, "feature", shapes),
        "feature": make_batches(args.steps, args.batch_size, "feature", shapes),
        "input": make_batches(args.steps, args.batch_size, "input", shapes),
    }
    steps = {kind: make_step(kind, shapes, seed=0)[0] for kind in kinds}
    for kind in kinds:  # warm-up: allocator, autograd graph caches
        for batch in batches[kind][:3]:
            steps[kind](batch)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for rep in range(args.repeats):
        order = kinds[rep % 3 :] + kinds[: rep % 3]
        for kind in order:
            start = time.perf_counter()
            for batch in batches[kind]:
                steps[kind](batch)
            times[kind].append((time.perf_counter() - start) / args.steps)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "step_overhead",
                "batch_size": args.batch_size,
                "image_side": args.image_side,
                "joint_step_s": median["joint"],
                "feature_level_step_s": median["feature"],
                "input_level_step_s": median["input"],
                "feature_level_ratio": median["feature"] / median["joint"],
                "input_level_ratio": median["input"] / median["joint"],
                "repeats": args.repeats,
                "steps_per_repeat": args.steps,
                "threads": torch.get_num_threads(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
