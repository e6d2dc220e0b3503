"""Training-step throughput of MIDAS on a CUDA device, beside joint training, in three precisions.

The model and batch shapes are those of ``benchmarks/step_overhead.py`` (the benchmark's
late-fusion classifier; ``--image-side 28``: CNN image and audio encoders, ``8``: the 8x8
model). For each precision (``fp32``; ``bf16``: bf16 autocast; ``fp16``: fp16 autocast with
``torch.amp.GradScaler("cuda")``) and each misalignment level (``feature``, ``input``) three
kinds of step run side by side, each with its own copy of the model and a fused SGD:

* ``joint`` — forward on the aligned batch, fusion cross-entropy, backward, optimizer step;
* ``joint_heads`` — the same plus the sum of the unimodal heads' cross-entropies;
* ``midas`` — the same forward, then ``MidasObjective(..., validate=False)``: at feature
  level ``objective(output, batch, model=model)``; at input level the misaligned rows are
  gathered from the batch on the device (in the step, as in training) and the whole model
  runs again on ``batch.misaligned_inputs``.

Every step runs under ``torch.cuda.set_sync_debug_mode("error")``: a host synchronisation
anywhere in a step (forward, objective, backward, scaler, optimizer) raises, and that
configuration reports the error instead of figures. Batches come from ``midas_loader`` over
synthetic data (``num_workers=0``, ``warmup_epochs=0``), are built and moved to the device
once, and are cycled through, so no data loading is timed. After warm-up steps, each kind
runs ``--steps`` steps per round for ``--repeats`` rounds (order rotated every round),
timed with CUDA events; only between rounds does the host wait for the device. Figures are
medians over rounds; ratios are step-time ratios (above 1: MIDAS is slower). Peak memory is
``torch.cuda.max_memory_allocated`` during a kind's rounds, reset before each round; it
includes the resident state of the configuration (three models, the batches). Prints one
JSON line; without a CUDA device it prints a ``skipped`` line and exits 0.

    python benchmarks/gpu_step.py [--batch-size 256] [--steps 30] [--repeats 5] [--image-side 28]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from step_overhead import NUM_CLASSES, Shapes, shapes_for  # the script beside this one

from midas_data import MidasBatch, MidasObjective, midas_loader
from midas_data.experiments import build_model

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LEVELS = ("feature", "input")
KINDS = ("joint", "joint_heads", "midas")

Step = Callable[[MidasBatch], torch.Tensor]


def make_batches(level: str, count: int, batch_size: int, shapes: Shapes, device: torch.device) -> list[MidasBatch]:
    """``count`` MIDAS batches of synthetic data from one pass of ``midas_loader``, on ``device``."""
    n = count * batch_size
    g = torch.Generator().manual_seed(0)
    data = {m: torch.randn(n, *shape, generator=g) for m, shape in shapes.items()}
    labels = torch.randint(NUM_CLASSES, (n,), generator=g).tolist()
    items = [{**{m: data[m][i] for m in shapes}, "label": labels[i]} for i in range(n)]
    loader = midas_loader(
        items, tuple(shapes), "label", batch_size=batch_size, mode=level, drop_last=True, num_workers=0,
        num_classes=NUM_CLASSES,
    )  # fmt: skip
    return [batch.to(device) for batch in loader]


def make_step(kind: str, level: str, precision: str, shapes: Shapes, device: torch.device) -> tuple[Step, object]:
    """One training step of ``kind`` (returns the detached loss) and its grad scaler (or ``None``)."""
    model = build_model(shapes, NUM_CLASSES, seed=0).to(device)
    # Fused SGD takes the grad scaler's inf check on the device (no host read in scaler.step).
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=fused)
    objective = MidasObjective(NUM_CLASSES, tuple(shapes), warmup_epochs=0, validate=False)
    if hasattr(objective, "to"):
        objective.to(device)
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def loss_of(batch: MidasBatch) -> torch.Tensor:
        output = model(batch.inputs)
        loss = F.cross_entropy(output.fusion_logits, batch.labels)
        if kind == "joint":
            return loss
        if kind == "joint_heads":
            return loss + sum(F.cross_entropy(logits, batch.labels) for logits in output.unimodal_logits.values())
        if level == "feature":
            return objective(output, batch, model=model)[0]
        fresh = dataclasses.replace(batch, _misaligned=None)  # gather the misaligned rows in the step
        return objective(output, fresh, misaligned_logits=model(fresh.misaligned_inputs).fusion_logits)[0]

    def step(batch: MidasBatch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return step, scaler


@contextlib.contextmanager
def host_syncs_raise(device: torch.device) -> Iterator[None]:
    """On CUDA, make any host synchronisation an error for the duration."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def run_steps(step: Step, batches: list[MidasBatch], count: int, start: int, bad: torch.Tensor) -> float:
    """Seconds for ``count`` steps over ``batches`` (cycled from ``start``); ORs non-finite losses into ``bad``."""
    device = bad.device
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
    else:
        began = time.perf_counter()
    with host_syncs_raise(device):
        for i in range(count):
            loss = step(batches[(start + i) % len(batches)])
            torch.logical_or(bad, ~torch.isfinite(loss), out=bad)
    if device.type != "cuda":
        return time.perf_counter() - began
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1000


def run_config(
    device: torch.device,
    precision: str,
    level: str,
    *,
    batches: list[MidasBatch] | None = None,
    batch_size: int = 256,
    steps: int = 30,
    repeats: int = 5,
    warmup: int = 5,
    image_side: int = 28,
    num_batches: int = 8,
) -> dict:
    """The three kinds of step for one precision and level; figures as in the module docstring.

    Works on the CPU in fp32 too (no sync checks, wall-clock timing, no memory figures).
    """
    shapes = shapes_for(image_side)
    if batches is None:
        batches = make_batches(level, num_batches, batch_size, shapes, device)
    cuda = device.type == "cuda"
    made = {kind: make_step(kind, level, precision, shapes, device) for kind in KINDS}
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for kind in KINDS:
        run_steps(made[kind][0], batches, warmup, 0, bad)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    peak: dict[str, int] = dict.fromkeys(KINDS, 0)
    for rep in range(repeats):
        for kind in KINDS[rep % 3 :] + KINDS[: rep % 3]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            times[kind].append(run_steps(made[kind][0], batches, steps, warmup + rep * steps, bad) / steps)
            if cuda:
                peak[kind] = max(peak[kind], torch.cuda.max_memory_allocated(device))
    step_s = {kind: statistics.median(values) for kind, values in times.items()}
    result: dict = {f"{kind}_steps_per_s": round(1 / step_s[kind], 2) for kind in KINDS}
    result["midas_over_joint"] = round(step_s["midas"] / step_s["joint"], 3)
    result["midas_over_joint_heads"] = round(step_s["midas"] / step_s["joint_heads"], 3)
    result["peak_memory_mib"] = {kind: round(peak[kind] / 2**20, 1) for kind in KINDS} if cuda else None
    result["nonfinite_loss"] = bool(bad)
    result["misaligned_rows_per_batch"] = batches[0].num_misaligned
    scaler = made["midas"][1]
    if scaler is not None:
        result["midas_final_grad_scale"] = float(scaler.get_scale())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed round (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per kind (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per kind first (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches cycled through (default: %(default)s)")
    parser.add_argument("--image-side", type=int, default=28, choices=(8, 28), help="28: glyphs model; 8: 8x8 model")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    args = parser.parse_args(argv)
    if args.batches < 2:
        parser.error("--batches: at least 2 (the objective treats a repeated batch as a repeated step)")
    if not torch.cuda.is_available():
        reason = f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
        reason += f"CUDA build {torch.version.cuda}); run this on a machine with a GPU"
        print(json.dumps({"benchmark": "gpu_step", "skipped": reason}))
        return 0

    device = torch.device("cuda")
    shapes = shapes_for(args.image_side)
    results: dict[str, dict] = {p: {} for p in args.precisions}
    errors = 0
    for level in args.levels:
        batches = make_batches(level, args.batches, args.batch_size, shapes, device)
        for precision in args.precisions:
            try:
                results[precision][level] = run_config(
                    device, precision, level, batches=batches, steps=args.steps, repeats=args.repeats,
                    warmup=args.warmup, image_side=args.image_side,
                )  # fmt: skip
            except RuntimeError as error:  # a host sync under "error" mode, or a failed kernel
                errors += 1
                results[precision][level] = {"error": str(error).strip().splitlines()[0]}
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        del batches
    print(
        json.dumps(
            {
                "benchmark": "gpu_step",
                "gpu": torch.cuda.get_device_name(device),
                "torch": torch.__version__,
                "batch_size": args.batch_size,
                "image_side": args.image_side,
                "steps_per_repeat": args.steps,
                "repeats": args.repeats,
                "warmup_steps": args.warmup,
                "sync_free": errors == 0,
                "results": results,
            }
        )
    )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
