"""Exact resume under Lightning with DataLoader workers: every cell runs an uninterrupted
5-epoch fit, a fit stopped at a checkpoint and a fit resumed from it (tests/lightning_resume.py,
launched as a user would; Lightning starts the second process itself), and compares on every
rank the ids, pair plans, losses and alpha of every trained step and the final weights and
stats table."""

import json
import subprocess
import warnings

import pytest

pytest.importorskip("lightning.pytorch")

from example_runs import ROOT, run_example  # noqa: E402

SCRIPT = str(ROOT / "tests" / "lightning_resume.py")

CELLS = [
    # (processes, workers, persistent, loader, checkpoint)
    (1, 0, False, "default", "mid"),
    (1, 0, False, "default", "end"),
    (1, 1, False, "default", "mid"),
    (1, 1, False, "default", "end"),
    (1, 2, True, "default", "mid"),
    (1, 2, True, "default", "end"),
    (1, 2, True, "default", "last"),
    (1, 2, False, "stateful", "mid"),
    (1, 1, True, "stateful", "end"),
    # Two processes with persistent workers: each rank forks its workers once per fit, not
    # once per epoch (a fork next to gloo's threads hung once in about 20 runs here).
    (2, 1, True, "default", "mid"),
    (2, 2, True, "default", "end"),
    (2, 1, True, "stateful", "mid"),
]


def cell_id(cell) -> str:
    processes, workers, persistent, loader, checkpoint = cell
    return f"{processes}proc-{workers}w{'-persistent' if persistent else ''}-{loader}-{checkpoint}"


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_lightning_resumes_exactly_with_workers(cell, tmp_path):
    processes, workers, persistent, loader, checkpoint = cell
    args = [SCRIPT, "--out", str(tmp_path), "--devices", str(processes), "--workers", str(workers)]
    args += ["--loader", loader, "--stop", checkpoint] + (["--persistent"] if persistent else [])
    try:
        # A cell takes about 16 s on two cores, loaded or not: 75 s is ample and caps what
        # the rare hang below costs the suite.
        run_example(args, tmp_path, timeout=75)
    except subprocess.TimeoutExpired:
        # A rare hang of the launch (about one run in 20 on a loaded two-core machine, seen
        # once on a quiet one, never reproduced in isolation): run the cell once more; a
        # second hang fails the test.
        warnings.warn(f"{cell_id(cell)}: the run hung and was started again", stacklevel=1)
        run_example(args, tmp_path, timeout=150)
    for rank in range(processes):
        straight, head, resumed = (
            json.loads((tmp_path / f"{name}-rank{rank}.json").read_text()) for name in ("straight", "head", "resumed")
        )
        steps = straight["steps"]
        assert len(head["steps"]) < len(steps)
        # Every batch trained in the epoch Lightning says, before and after the resume.
        assert all(step["batch_epoch"] == step["epoch"] for step in head["steps"] + resumed["steps"])
        assert head["steps"] == steps[: len(head["steps"])]
        assert resumed["steps"] == steps[len(head["steps"]) :]  # ids, plans, losses, alpha
        assert resumed["digest"] == straight["digest"]  # final weights and stats table
        assert resumed["alpha"] == straight["alpha"]
