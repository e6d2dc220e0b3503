"""``benchmarks/gpu_step.py`` without a GPU: a clear skip line, and its step runs on the CPU.

The GPU figures themselves need a CUDA device; here the script must say plainly that it
skipped (exit 0, one JSON line), and its per-configuration function must run a few fp32
steps of each kind at both misalignment levels on the CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_step  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script runs instead of skipping")
def test_skips_without_cuda():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_step.py")], capture_output=True, text=True, timeout=120,
        cwd=BENCHMARKS.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    line = json.loads(lines[0])
    assert line["benchmark"] == "gpu_step"
    assert "CUDA" in line["skipped"]


@pytest.mark.parametrize("level", gpu_step.LEVELS)
def test_one_config_on_cpu(level):
    result = gpu_step.run_config(
        torch.device("cpu"), "fp32", level, batch_size=16, steps=1, repeats=1, warmup=1, image_side=8, num_batches=2
    )
    for kind in gpu_step.KINDS:
        assert result[f"{kind}_steps_per_s"] > 0
    assert math.isfinite(result["midas_over_joint"]) and result["midas_over_joint"] > 0
    assert math.isfinite(result["midas_over_joint_heads"]) and result["midas_over_joint_heads"] > 0
    assert result["nonfinite_loss"] is False
    assert result["misaligned_rows_per_batch"] > 0
    assert result["peak_memory_mib"] is None  # measured on CUDA only
