"""The README's plain and multi-label loops run as written, and the multi-process examples
run on two CPU processes and print their JSON line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from example_runs import ROOT, run_example


def readme_loop() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## In a plain training loop") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_loop_runs_as_written():
    code = readme_loop()
    assert "for epoch in range(70):" in code
    # The same code with 3 epochs past a 1-epoch warm-up, so the test stays short.
    code = code.replace("range(70)", "range(3)").replace("warmup_epochs=10", "warmup_epochs=1")
    code += "\nassert info['num_misaligned'] > 0 and objective.epoch == 2 and torch.isfinite(loss)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_readme_multi_label_loop_runs_as_written():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Multi-label data") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'task="multilabel"' in code and "num_workers=2" in code
    code += (
        "\nassert batch.labels.dtype == torch.float32 and batch.labels.shape[1] == 5"
        "\nassert info['num_misaligned'] > 0 and objective.epoch == 4 and torch.isfinite(loss)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("example", ["ddp_train.py", "accelerate_train.py"])
def test_the_multi_process_examples_run_on_two_cpu_processes(example):
    if example == "accelerate_train.py":
        pytest.importorskip("accelerate")
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "examples" / example)]
    report = run_example([*args, "--epochs", "3", "--warmup-epochs", "1"], cwd=ROOT, timeout=300)
    assert report["samples_per_rank_per_epoch"] == [[500] * 3, [500] * 3]
    assert report["alpha_per_rank"][0] == report["alpha_per_rank"][1]
    assert 0.0 <= report["test_accuracy"] <= 1.0
