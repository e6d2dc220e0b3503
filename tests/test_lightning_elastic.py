"""Lightning resumes a mid-epoch checkpoint on another number of devices: its checkpoint
holds one loader state (the saving rank's), and any old rank's state will do
(docs/distributed.md, "Resuming on another number of ranks"), with a callback that reads
the number of batches again at every epoch start (tests/lightning_elastic.py). Launched as
a user would (Lightning starts the second process itself)."""

import json
import subprocess
import warnings
from collections import Counter

import pytest

pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from example_runs import ROOT, run_example  # noqa: E402

from midas_data import StatsTable  # noqa: E402
from midas_data.feedback.sampler import MidasBatchSampler  # noqa: E402

SCRIPT = str(ROOT / "tests" / "lightning_elastic.py")


def fit(tmp_path, devices: int, phase: str) -> None:
    args = [SCRIPT, "--out", str(tmp_path), "--devices", str(devices), "--phase", phase]
    try:
        run_example(args, tmp_path, timeout=150)
    except subprocess.TimeoutExpired:  # as tests/test_lightning_resume_matrix.py: one more try
        warnings.warn(f"lightning {phase} on {devices} device(s) hung and was started again", stacklevel=1)
        run_example(args, tmp_path, timeout=150)


@pytest.mark.parametrize(("old", "new"), [(1, 2)], ids=["1to2"])
def test_lightning_resumes_on_another_number_of_devices(tmp_path, old, new):
    from lightning_resume import BATCH, MODALITIES, N

    fit(tmp_path, old, "head")
    fit(tmp_path, new, "resume")
    heads = [json.loads((tmp_path / f"head-rank{r}.json").read_text()) for r in range(old)]
    tails = [json.loads((tmp_path / f"resume-rank{r}.json").read_text()) for r in range(new)]
    plan = heads[0]["plan"]
    assert all(t["plan"] == plan for t in tails)  # the interrupted epoch's plan, from the checkpoint
    before = [s for h in heads for s in h["steps"] if s["epoch"] == 2]
    after = [[s for s in t["steps"] if s["epoch"] == 2] for t in tails]
    # Every slot of epoch 2 once across both runs; Lightning's batch counter goes on.
    assert Counter(i for s in before + [s for rank in after for s in rank] for i in s["ids"]) == Counter(plan)
    steps = len(before) // old
    assert all([s["batch_idx"] for s in rank] == list(range(steps, steps + len(after[0]))) for rank in after)
    # Epochs 3-5: each the plan and split a new-device run draws from the table the epoch
    # before left (JSON keys are strings).
    from lightning_elastic import EPOCHS

    for epoch in range(3, EPOCHS):
        table = StatsTable(N, MODALITIES)
        state = table.state_dict()
        left = tails[0]["tables"][str(epoch - 1)]
        assert all(t["tables"][str(epoch - 1)] == left for t in tails)
        state.update(values=torch.tensor(left["values"], dtype=state["values"].dtype))
        state.update(last_step=torch.tensor(left["last_step"], dtype=state["last_step"].dtype))
        table.load_state_dict(state)
        for rank, tail in enumerate(tails):
            reference = MidasBatchSampler(N, BATCH, policy="hard", stats=table, num_replicas=new, rank=rank)
            reference.set_epoch(epoch)
            assert [s["ids"] for s in tail["steps"] if s["epoch"] == epoch] == list(reference), (epoch, rank)
