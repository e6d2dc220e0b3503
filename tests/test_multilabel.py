"""Multi-label MIDAS: the math against hand-computed numbers, the pairing rules, multi-hot
and list-of-ids labels through midas_loader, the objective end to end, and bad input."""

import math

import pytest
import torch
from torch import nn

from midas_data import LateFusionClassifier, MidasObjective, StatsTable, midas_loader
from midas_data import functional as MF
from midas_data import multilabel as ML
from midas_data.data.collate import MidasCollate
from midas_data.errors import MidasDataError

MODS = ("a", "v")
C = 4


# -- the math ------------------------------------------------------------------------------
def test_label_set_confidence_is_the_per_class_geometric_mean_likelihood():
    # z = [0, ln 3]: sigmoid = [0.5, 0.75].
    z = torch.tensor([[0.0, math.log(3.0)]] * 3)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    got = ML.label_set_confidence(z, y)
    # y = {0}:  sqrt(0.5 * (1 - 0.75)) = sqrt(0.125) = 0.353553
    # y = {1}:  sqrt(0.5 * 0.75)       = sqrt(0.375) = 0.612372
    # y = {}:   sqrt(0.5 * 0.25)       = 0.353553 (no class: the head's belief that none applies)
    assert torch.allclose(got, torch.tensor([0.353553, 0.612372, 0.353553]), atol=1e-6)
    # Sure of exactly the set: confidence 1; sure of the complement: 0.
    sure = torch.tensor([[30.0, -30.0]])
    assert ML.label_set_confidence(sure, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)
    assert ML.label_set_confidence(sure, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_target_mixes_the_two_label_sets_by_confidence_share():
    # The paper's worked example with label sets: c = (0.9, 0.3) -> c~ = (0.75, 0.25);
    # y_i = {0, 2}, y_j = {1, 2}: t = 0.75 [1, 0, 1] + 0.25 [0, 1, 1] = [0.75, 0.25, 1.0].
    conf = torch.tensor([[0.9, 0.3]])
    sources = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])
    assert torch.allclose(ML.soft_targets(conf, sources), torch.tensor([[0.75, 0.25, 1.0]]))


def test_misaligned_bce_by_hand():
    # z~ = [ln 3, -ln 3]: p = [0.75, 0.25]; y_i = {0}, y_j = {1}; c~ = (0.75, 0.25).
    z = torch.tensor([[math.log(3.0), -math.log(3.0)]], requires_grad=True)
    conf = torch.tensor([[0.9, 0.3]])
    sources = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # BCE(z~, y_i) = mean(-ln 0.75, -ln 0.75) = ln(4/3) = 0.287682
    # BCE(z~, y_j) = mean(-ln 0.25, -ln 0.25) = ln 4     = 1.386294
    # alpha = 1, w = 1: 0.75 * 0.287682 + 0.25 * 1.386294 = 0.562335
    one = ML.misaligned_bce(z, conf, sources, torch.ones(2), torch.ones(1))
    assert one.item() == pytest.approx(0.562335, abs=1e-5)
    # ... which is BCE against the soft target t = [0.75, 0.25] (BCE is linear in its target).
    t = ML.soft_targets(conf, sources)
    assert one.item() == pytest.approx(nn.functional.binary_cross_entropy_with_logits(z, t).item(), abs=1e-6)
    # alpha = (2, 1), w = 1.5: 1.5 * (2 * 0.215762 + 0.346574) = 1.5 * 0.778097 = 1.167146
    weighted = ML.misaligned_bce(z, conf, sources, torch.tensor([2.0, 1.0]), torch.tensor([1.5]))
    assert weighted.item() == pytest.approx(1.167146, abs=1e-5)
    weighted.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # The fusion head's shares q: exp(-0.287682) = 0.75 and exp(-1.386294) = 0.25.
    fused = ML.label_set_confidence(z.detach().unsqueeze(1).expand(-1, 2, -1), sources)
    assert torch.allclose(MF.normalized_confidences(fused), torch.tensor([[0.75, 0.25]]), atol=1e-6)


def test_ids_to_multi_hot():
    assert ML.ids_to_multi_hot([2, 0, 2], 4).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert ML.ids_to_multi_hot([], 3).tolist() == [0.0, 0.0, 0.0]


# -- pairing rules -----------------------------------------------------------------------------
LABELS = torch.tensor(
    [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.float32
)


@pytest.mark.parametrize("modalities", [2, 3])
def test_different_set_rule_pairs_only_different_sets(modalities):
    for seed in range(20):
        sources, anchors, unpaired = ML.plan_pairs_multilabel(
            LABELS, modalities, torch.Generator().manual_seed(seed), "different_set"
        )
        assert unpaired == 0 and sources.shape == (modalities * 6, modalities)
        src_sets = LABELS[sources]  # [K, M, C]
        differs = (src_sets != LABELS[anchors].unsqueeze(1)).any(dim=2).any(dim=1)
        assert differs.all()


def test_disjoint_rule_pairs_only_sets_without_a_shared_class():
    seen = set()
    for seed in range(30):
        sources, anchors, unpaired = ML.plan_pairs_multilabel(
            LABELS, 2, torch.Generator().manual_seed(seed), "disjoint"
        )
        assert unpaired == 0
        partner = sources[:6, 1]
        assert ((LABELS[partner] * LABELS).sum(dim=1) == 0).all()
        assert (LABELS[partner] != LABELS).any(dim=1).all()
        seen.update(zip(range(6), partner.tolist()))
    # Row 2 ({0, 1}) may pair with {2, 3} and with the empty row, never with {0} or {1}.
    assert {p for i, p in seen if i == 2} == {4, 5}


def test_a_batch_of_one_label_set_has_no_partner_and_is_counted():
    same = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    sources, _, unpaired = ML.plan_pairs_multilabel(same, 2, torch.Generator().manual_seed(0))
    assert sources.shape[0] == 0 and unpaired == 8
    # "any" pairs them all the same (the reference code's form).
    sources, _, unpaired = ML.plan_pairs_multilabel(same, 2, torch.Generator().manual_seed(0), "any")
    assert sources.shape[0] == 8 and unpaired == 0


# -- the loader and the objective ------------------------------------------------------------
class _Data(torch.utils.data.Dataset):
    """Classes are visible in "a" (strong) and, noisily, in "v" (weak)."""

    def __init__(self, n: int = 48, as_ids: bool = False):
        g = torch.Generator().manual_seed(0)
        self.sets = [sorted({i % C, (i * 7 + 1) % C} if i % 3 else {i % C}) for i in range(n)]
        self.a = torch.randn(n, 6, generator=g)
        self.v = torch.randn(n, 5, generator=g)
        for i, s in enumerate(self.sets):
            self.a[i, s] += 2.0
            self.v[i, [c + 1 for c in s]] += 0.5
        self.as_ids = as_ids

    def __len__(self):
        return len(self.sets)

    def __getitem__(self, i):
        label = self.sets[i] if self.as_ids else ML.ids_to_multi_hot(self.sets[i], C)
        return {"a": self.a[i], "v": self.v[i], "label": label}


def _model():
    torch.manual_seed(0)
    return LateFusionClassifier({"a": nn.Linear(6, 8), "v": nn.Linear(5, 8)}, {"a": 8, "v": 8}, C)


def test_list_of_ids_labels_become_multi_hot_rows():
    loader = midas_loader(_Data(12, as_ids=True), MODS, batch_size=6, num_classes=C)
    batch = next(iter(loader))
    assert batch.labels.dtype == torch.float32 and batch.labels.shape == (6, C)
    expected = torch.stack([ML.ids_to_multi_hot(_Data(12).sets[i], C) for i in batch.ids.tolist()])
    assert torch.equal(batch.labels, expected)
    assert batch.rule == "different_set"


def test_objective_trains_end_to_end_with_workers():
    loader = midas_loader(
        _Data(), MODS, batch_size=12, shuffle=True, num_workers=2, persistent_workers=True, num_classes=C
    )
    model = _model()
    objective = MidasObjective(C, MODS, task="multilabel")
    table = StatsTable(len(loader.dataset), MODS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(5):  # five epochs, no set_epoch: each pass is the next epoch
        for batch in loader:
            assert batch.labels.shape[1] == C and batch.plan.shape[0] > 0
            loss, info = objective(model(batch.inputs), batch, model=model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            table.update(batch.ids, info["per_sample"])
            losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert info["num_misaligned"] > 0 and info["loss_mis"] > 0
    confidence = table.confidence
    assert confidence.shape == (2, len(loader.dataset)) and not confidence.isnan().any()
    assert ((confidence > 0) & (confidence <= 1)).all()
    # The strong modality is the more confident one on the training label sets.
    assert confidence[0].mean() > confidence[1].mean()


def test_objective_loss_is_the_documented_sum_of_terms():
    batch = next(iter(midas_loader(_Data(12), MODS, batch_size=12)))
    model = _model()
    objective = MidasObjective(C, MODS, task="multilabel", hard_sample_weighting=False)
    out = model(batch.inputs)
    loss, info = objective(out, batch, model=model)
    bce = nn.functional.binary_cross_entropy_with_logits
    y = batch.labels
    aligned = bce(out.fusion_logits, y) + sum(bce(out.unimodal_logits[m], y) for m in MODS)
    conf = ML.label_set_confidences([out.unimodal_logits[m] for m in MODS], y)
    swapped = {m: out.features[m][batch.plan[:, k]] for k, m in enumerate(MODS)}
    mis = ML.misaligned_bce(
        model.fuse(swapped), conf[batch.plan, [0, 1]], y[batch.plan], torch.ones(2), torch.ones(12 * 2)
    )
    assert loss.item() == pytest.approx((aligned + mis.mean()).item(), rel=1e-5)


def test_validated_multilabel_step_syncs_the_host_once():
    from midas_data.debug import count_host_syncs

    batch = next(iter(midas_loader(_Data(16), MODS, batch_size=16)))
    model = _model()
    objective = MidasObjective(C, MODS, task="multilabel")
    with count_host_syncs() as syncs:
        loss, _ = objective(model(batch.inputs), batch, model=model)
        loss.backward()
    assert syncs.count == 1, syncs.ops


def test_loss_is_finite_under_bf16_autocast():
    batch = next(iter(midas_loader(_Data(12), MODS, batch_size=12)))
    model = _model()
    objective = MidasObjective(C, MODS, task="multilabel")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch.inputs)
        loss, _ = objective(out, batch, model=model)
    assert out.fusion_logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_disjoint_rule_runs_and_the_single_label_rule_is_refused():
    batch = next(iter(midas_loader(_Data(12), MODS, batch_size=12, rule="disjoint")))
    assert batch.rule == "disjoint"
    model = _model()
    loss, _ = MidasObjective(C, MODS, task="multilabel")(model(batch.inputs), batch, model=model)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="rule="):
        MidasObjective(C, MODS, task="multilabel", variant="reference")(model(batch.inputs), batch, model=model)


def test_a_regression_task_is_refused_with_the_reason_and_the_alternative():
    with pytest.raises(ValueError, match="'regression' is not offered.*Regression targets.*7class"):
        MidasObjective(C, MODS, task="regression")


# -- bad input ------------------------------------------------------------------------------------
def _collate(num_classes=C, rule="different_label"):
    return MidasCollate(MODS, num_classes=num_classes, rule=rule)


def _item(label):
    return {"a": torch.zeros(6), "v": torch.zeros(5), "label": label}


def test_bad_multi_hot_labels_name_the_sample():
    good = _item(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(MidasDataError, match=r"sample 7: .*outside \[0, 1\]"):
        _collate()([(3, good), (7, _item(torch.tensor([2.0, 0.0, 0.0, 0.0])))])
    with pytest.raises(MidasDataError, match=r"sample 7: .*class id 4.*\[0, 4\)"):
        _collate()([(3, _item([0, 1])), (7, _item([1, 4]))])
    with pytest.raises(MidasDataError, match="sample 3: .*pass num_classes"):
        _collate(num_classes=None)([(3, _item([0, 1]))])
    with pytest.raises(MidasDataError, match="sample 7: label is a class id"):
        _collate()([(3, good), (7, _item(2))])
    with pytest.raises(MidasDataError, match="sample 7: .*5 entries"):
        _collate()([(3, good), (7, _item(torch.zeros(5)))])
    collate = _collate()
    collate([(3, good), (4, _item(torch.tensor([0.0, 1.0, 0.0, 0.0])))])
    with pytest.raises(MidasDataError, match="sample 9: label is a class id"):
        collate([(9, _item(1)), (10, _item(2))])  # a later batch of the other kind
    with pytest.raises(MidasDataError, match="multi-label rule"):
        _collate(rule="disjoint")([(3, _item(0)), (4, _item(1))])


def test_all_zero_rows_are_allowed():
    batch = _collate()([(3, _item([])), (4, _item([1])), (5, _item(torch.zeros(C)))])
    assert batch.labels.sum(dim=1).tolist() == [0.0, 1.0, 0.0]
    # The two unlabelled rows share their (empty) set: each pairs only with sample 4.
    partners = batch.plan[:3, 1].tolist()
    assert partners == [1, 0, 1]


def test_objective_names_the_samples_of_out_of_range_multi_hot_values():
    batch = next(iter(midas_loader(_Data(6), MODS, batch_size=6)))
    batch.labels[2, 0] = 1.5
    model = _model()
    with pytest.raises(MidasDataError, match=f"samples \\[{int(batch.ids[2])}\\]"):
        MidasObjective(C, MODS, task="multilabel")(model(batch.inputs), batch, model=model)
    with pytest.raises(TypeError, match="task='multilabel'"):
        MidasObjective(C, MODS, task="multilabel")(
            model(batch.inputs), labels=torch.zeros(6, dtype=torch.long), plan=batch.plan, model=model
        )
    with pytest.raises(ValueError, match="task"):
        MidasObjective(C, MODS, task="multiclass")


# -- metrics ----------------------------------------------------------------------------------
def test_multilabel_f1_and_threshold_selection_by_hand():
    pytest.importorskip("sklearn")
    from midas_data.experiments.metrics import multilabel_f1, select_threshold

    probs = torch.tensor([[0.9, 0.4, 0.2], [0.3, 0.6, 0.1]])
    truth = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # At 0.5: predicted {0}, {1}; TP = 2, FP = 0, FN = 1 -> micro F1 = 2*2 / (2*2 + 0 + 1) = 0.8.
    assert multilabel_f1(probs, truth) == pytest.approx(0.8)
    # Per class F1: class 0 = 1, class 1 = 2*1/(2+0+1) = 2/3, class 2 = 0 (no truth, no prediction).
    assert multilabel_f1(probs, truth, average="macro") == pytest.approx((1 + 2 / 3 + 0) / 3)
    # Weighted by support (1, 2, 0): (1 * 1 + 2 * 2/3) / 3 = 7/9.
    assert multilabel_f1(probs, truth, average="weighted") == pytest.approx(7 / 9)
    # Per sample: row 0 F1 = 2*1/(2+0+1) = 2/3, row 1 = 1 -> mean 5/6.
    assert multilabel_f1(probs, truth, average="samples") == pytest.approx(5 / 6)
    # At 0.35 every true label is found (0.9, 0.4, 0.6) and nothing else: F1 = 1.
    threshold, best = select_threshold(probs, truth, candidates=[0.5, 0.35, 0.25])
    assert (threshold, best) == (0.35, 1.0)


def test_integer_vectors_are_class_ids_and_a_one_entry_vector_follows_its_batch():
    # A Hugging Face column of lists in torch format: integer tensors of ids, ragged.
    batch = _collate()(
        [(0, _item(torch.tensor([0, 2]))), (1, _item(torch.tensor([3]))), (2, _item(torch.tensor([]).long()))]
    )
    assert batch.labels.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    # A single-label dataset that wraps its ids stays single-label.
    single = _collate()([(0, _item(torch.tensor([3]))), (1, _item(torch.tensor([1])))])
    assert single.labels.dtype == torch.int64 and single.labels.tolist() == [3, 1]
    # An integer multi-hot row repeats ids: refused rather than misread as the set {0, 1}.
    with pytest.raises(MidasDataError, match="sample 5: .*repeats"):
        _collate()([(4, _item([1])), (5, _item(torch.tensor([0, 1, 1, 0])))])


# -- streaming ------------------------------------------------------------------------------------
def test_a_streamed_label_holding_a_list_of_ids_becomes_multi_hot():
    from midas_data.streaming import MidasBatches

    sets = [[i % C] if i % 3 == 0 else [i % C, (i + 1) % C] if i % 3 == 1 else [] for i in range(12)]
    samples = [{"a": torch.zeros(6), "v": torch.zeros(5), "label": sets[i], "id": i} for i in range(12)]
    stage = MidasBatches(MODS, batch_size=6, id_field="id", shuffle=False, num_classes=C)
    batches = list(stage(iter(samples)))
    assert [b.ids.tolist() for b in batches] == [list(range(6)), list(range(6, 12))]
    for b in batches:
        expected = torch.stack([ML.ids_to_multi_hot(samples[i]["label"], C) for i in b.ids.tolist()])
        assert torch.equal(b.labels, expected) and b.rule == "different_set" and b.plan.shape[0] == 12
    samples[7]["label"] = [0, C]
    with pytest.raises(MidasDataError, match=f"sample 7: .*class id {C}"):
        list(MidasBatches(MODS, batch_size=6, id_field="id", shuffle=False, num_classes=C)(iter(samples)))


@pytest.mark.parametrize("validate", [True, False])
def test_a_single_label_objective_refuses_multi_hot_labels_even_unvalidated(validate):
    batch = next(iter(midas_loader(_Data(6), MODS, batch_size=6)))
    model = _model()
    with pytest.raises(TypeError, match="task='multilabel'"):
        MidasObjective(C, MODS, validate=validate)(model(batch.inputs), batch, model=model)


@pytest.mark.parametrize("as_ids", [False, True])
def test_write_shards_streams_multi_label_data_every_sample_once_for_five_epochs(tmp_path, as_ids):
    wds = pytest.importorskip("webdataset")
    from midas_data.streaming import MidasBatches, ShardIndex, write_shards

    data = _Data(53, as_ids=as_ids)  # uneven: shards of 10, 10, 10, 10, 10, 3
    write_shards(data, tmp_path, MODS, shard_size=10, progress=False)
    index = ShardIndex.load(tmp_path)
    assert index.fields["label"] == "label.npy" and [s.count for s in index.shards] == [10] * 5 + [3]
    stage = MidasBatches(MODS, "label", batch_size=8, index=index, num_classes=C, seed=3)
    source = wds.WebDataset(
        index.urls, nodesplitter=stage.split_by_node, shardshuffle=100, seed=5, empty_check=False
    ).compose(stage)
    loader = wds.WebLoader(source, batch_size=None, num_workers=2, persistent_workers=True)
    model, objective = _model(), MidasObjective(C, MODS, task="multilabel", warmup_epochs=1)
    orders = []
    for epoch in range(5):  # no set_epoch: each pass is the next epoch
        ids, misaligned = [], 0
        for batch in loader:
            assert batch.epoch == epoch and batch.rule == "different_set"
            expected = torch.stack([ML.ids_to_multi_hot(data.sets[i], C) for i in batch.ids.tolist()])
            assert torch.equal(batch.labels, expected)
            loss, info = objective(model(batch.inputs), batch, model=model)
            assert torch.isfinite(loss)
            misaligned += info["num_misaligned"]
            ids += batch.ids.tolist()
        assert sorted(ids) == list(range(53))
        assert (misaligned == 0) == (epoch == 0)
        orders.append(tuple(ids))
    assert len(set(orders)) == 5  # a new shuffle every epoch


def test_write_shards_names_the_sample_whose_label_kind_differs(tmp_path):
    pytest.importorskip("webdataset")
    from midas_data.streaming import write_shards

    items = [{"a": torch.zeros(6), "v": torch.zeros(5), "label": [0, 2]} for _ in range(4)]
    items[2]["label"] = 1
    with pytest.raises(MidasDataError, match="sample 2: label 'label' is 1, a single class id"):
        write_shards(items, tmp_path / "a", MODS, progress=False)
    items[2]["label"] = [1, 1]
    with pytest.raises(MidasDataError, match="sample 2: .*distinct class ids"):
        write_shards(items, tmp_path / "b", MODS, progress=False)
    items[2]["label"] = torch.tensor([0.0, 0.5, 1.0, 0.0])
    with pytest.raises(MidasDataError, match="sample 2: .*multi-hot"):
        write_shards(items, tmp_path / "c", MODS, progress=False)
    with pytest.raises(MidasDataError, match="sample 0: .*one-entry .*multilabel=True or False"):
        write_shards([{"a": torch.zeros(6), "v": torch.zeros(5), "label": torch.tensor([3])}], tmp_path / "d", MODS)
