"""Running an example script in its own processes, as a user would, and checking its JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# On a loaded machine a gloo process now and then aborts at interpreter exit, after its
# work and its output are complete ("terminate called without an active exception"): a
# process group still referenced at exit (e.g. by a DDP model) has a gloo worker thread
# need the GIL during finalisation, and the thread's forced exit aborts the process (seen
# in a core dump; about once in 8-15 two-process runs under load, not seen when idle).
TEARDOWN_ABORT = "terminate called without an active exception"


def _finished_then_aborted(done: subprocess.CompletedProcess) -> bool:
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 or TEARDOWN_ABORT not in done.stderr or not lines:
        return False
    try:
        json.loads(lines[-1])
    except json.JSONDecodeError:
        return False
    return True


def run_example(args: list[str], cwd: Path, timeout: float = 180) -> dict:
    """The last stdout line of ``python args...`` (run from ``cwd``) as JSON.

    A run that completed its output and then hit the teardown abort above is run again (at
    most twice); any other failure fails at once.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        if not _finished_then_aborted(done):
            break
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_shared_epochs(result: dict, samples: int, epochs: int) -> None:
    """Two ranks: every sample once per epoch across them, new plans every epoch, one alpha."""
    assert result["processes"] == 2 and result["epochs_run"] == epochs
    assert result["each_sample_once_per_epoch"] is True
    assert all(sum(ranks) == samples and ranks[0] == ranks[1] for ranks in result["samples_per_rank_per_epoch"])
    assert result["distinct_epoch_plans"] == epochs
    assert result["alpha_per_rank"][0] == result["alpha_per_rank"][1]
    assert result["alpha_per_rank"][0] != [1.0, 1.0]  # alpha moved after warm-up
