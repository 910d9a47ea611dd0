"""d2lib.evaluation.record_metrics: the one per-record metric registry. Each per-record metric, averaged over a real
evaluated system's records (``records.csv`` read back from an ablation cell), equals the protocol's number in
the cell's ``metrics.json`` and the estimate of the evaluate stage's bootstrap CI (evaluate.headline_cis)."""
import re

import numpy as np
import pandas as pd
import pytest

from d2lib.core import stats
from d2lib.evaluation.metrics import CHARADES_THRESHOLDS, ETB_THRESHOLDS
from d2lib.evaluation.record_metrics import RECORD_METRICS, record_values, seed_mean_records
from d2lib.stages import evaluate as ev
from d2lib.study import ablation as A
from d2lib.study import aggregate as AG
from d2lib.vlm import tokens
from d2lib.vlm.model import VariantsConfig
from d2lib.world import synth

SPAN = re.compile(r"(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)")
SHIFTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # seconds an answer's spans are moved: IoUs from 1 down to 0


def _shift(text: str, k: float) -> str:
    return SPAN.sub(lambda m: f"{float(m.group(1)) + k:g} - {float(m.group(2)) + k:g}", text)


def answered_records():
    """Test records of 8 Shapes videos (no rendering) answered in the full variant's format, each answer's
    spans shifted by a different amount (the evidence part by another), a third of the multiple-choice
    answers wrong: fractional IoUs on every task."""
    world = synth.WorldConfig(min_events=2, max_events=4, max_duration=20)
    records, metas = [], {}
    for k in range(8):
        spec = synth.sample_video(300 + k, world, duration=20 - k)
        name = f"videos/r_{k:02d}.mp4"
        records += synth.make_records(spec, name, start_idx=len(records))
        metas[name] = spec.to_meta(name)
    v = VariantsConfig().get("full")
    out = []
    for i, r in enumerate(records):
        resp = tokens.build_response(r, v)
        evi, ans = tokens.render_response(resp.text, resp.spans).split("</evi>")
        if r["task"] in ("rar", "gvq") and i % 3 == 0:
            ans = ans.replace(f"({'ABCD'[r['p']]})", f"({'ABCD'[(r['p'] + 1) % 4]})")
        a = _shift(evi, SHIFTS[(i + 3) % len(SHIFTS)]) + "</evi>" + _shift(ans, SHIFTS[i % len(SHIFTS)])
        out.append({**r, "a": a})
    return out, metas


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A real ablation cell's files without training: the answers scored by the evaluate stage's code with
    the ablation's settings (what :func:`d2lib.study.ablation.evaluate_cell` does after inference), its
    ``metrics.json`` and ``records.csv`` written by the cell's own writer."""
    root = tmp_path_factory.mktemp("records_cell")
    mp = pytest.MonkeyPatch()
    mp.setenv("D2LIB_ROOT", str(root))  # the cell's timing log goes under root
    answered, metas = answered_records()
    acfg = A.AblationConfig(caption_metrics=False, n_boot=50)
    out = A.cell_dir("full", 0, root / "ablation")
    system = ev.evaluate_system("full", "model", answered, "</evi>", metas, A.eval_config(acfg), out / "evaluate")
    payload = A._payload("full", 0, acfg, VariantsConfig().get("full"), system, {}, {})
    A.write_cell(out, payload, [{**r, "seed": 0} for r in system.rows])
    mp.undo()
    cells = AG.load_cells([("full", 0)], root / "ablation")
    return cells[("full", 0)], AG.load_records(cells, root / "ablation")


def test_fixture_answers_have_fractional_ious(cell):
    _, rec = cell
    tvg = rec[rec.task == "tvg"]
    assert tvg["iou_charades"].between(0.01, 0.99).any() and (tvg["iou_charades"] == 1.0).any()
    r = {t: (tvg["iou_charades"] >= t).mean() for t in CHARADES_THRESHOLDS}
    assert r[0.3] > r[0.5] > r[0.7] > 0 and tvg["iou_charades"].mean() not in r.values()
    assert not np.allclose(tvg["iou_evi"], tvg["iou_charades"])  # the evidence stage differs from the answer


@pytest.mark.parametrize("metric", list(RECORD_METRICS))
def test_per_record_values_average_to_the_cells_metrics(cell, metric):
    payload, rec = cell
    rv = record_values(rec, metric)
    assert list(dict.fromkeys(rv["task"])) == [t for t in RECORD_METRICS[metric].tasks if t in set(rec.task)]
    estimate = rv.groupby("task", sort=False)["value"].mean().mean()  # tasks merged as E.T. Bench merges them
    assert payload["values"][metric] is not None
    assert estimate == pytest.approx(payload["values"][metric], abs=1e-12), metric
    assert payload["metrics"]["ci"][metric]["estimate"] == pytest.approx(estimate, abs=1e-12)
    assert stats.video_bootstrap(rv, n_boot=20).estimate == pytest.approx(estimate, abs=1e-12)


def test_thresholds_are_read_per_metric(cell):
    _, rec = cell
    tvg = rec[rec.task == "tvg"]
    for t in CHARADES_THRESHOLDS:
        v = record_values(rec, f"charades.R1@{t}")["value"].to_numpy()
        assert np.array_equal(v, (tvg["iou_charades"].to_numpy() >= t).astype(float)), t
    evi = record_values(rec, "tvg.F1_evi")["value"].to_numpy()
    assert np.array_equal(evi, np.mean([tvg["iou_evi"].to_numpy() >= t for t in ETB_THRESHOLDS], axis=0))
    assert np.array_equal(record_values(rec, "charades.mIoU")["value"].to_numpy(), tvg["iou_charades"].to_numpy())
    assert record_values(rec, "F1(cap)") is None and record_values(rec[rec.task == "rar"], "tvg.F1") is None


def test_one_record_and_a_table_give_the_same_values(cell):
    """RecordMetric.value (one record dict, the evaluate stage) and .values (a records.csv table, the ablation)."""
    _, rec = cell
    for key, m in RECORD_METRICS.items():
        for task in m.tasks:
            d = rec[rec.task == task]
            one = [m.value(r) for r in d.to_dict("records")]
            assert np.array_equal(np.asarray(one, dtype=float), m.values(d)), key


def test_headline_cis_without_an_evidence_stage_skip_the_evidence_metric(cell):
    _, rec = cell
    rows = rec.drop(columns=["row", "seed"]).to_dict("records")
    with_evi = ev.headline_cis(rows, n_boot=20, evidence=True)
    without = ev.headline_cis(rows, n_boot=20, evidence=False)
    assert list(with_evi) == list(RECORD_METRICS) and list(without) == [k for k in RECORD_METRICS if k != "tvg.F1_evi"]
    only_tvg = ev.headline_cis([r for r in rows if r["task"] == "tvg"], n_boot=20)
    assert list(only_tvg) == ["F1(gnd)", "tvg.F1", *(f"charades.R1@{t}" for t in CHARADES_THRESHOLDS), "charades.mIoU"]
    assert only_tvg["F1(gnd)"]["estimate"] == pytest.approx(only_tvg["tvg.F1"]["estimate"])  # tal absent


def test_headline_cis_bootstrap_each_metrics_per_record_values(cell):
    """evaluate.headline_cis: the percentile bootstrap over records of each registry metric's values (stratified
    by task where the metric merges tasks), the same numbers as d2lib.core.stats on those values."""
    _, rec = cell
    cis = ev.headline_cis(rec.drop(columns=["row", "seed"]).to_dict("records"), n_boot=200, seed=3, evidence=True)
    for key, m in RECORD_METRICS.items():
        groups = [m.values(rec[rec.task == t]) for t in m.tasks if (rec.task == t).any()]
        ci = (stats.mean_of_means_ci(groups, n_boot=200, seed=3) if len(m.tasks) > 1 else
              stats.bootstrap_ci(groups[0], n_boot=200, seed=3))
        assert cis[key] == {"estimate": ci.estimate, "low": ci.low, "high": ci.high}, key
    assert cis["charades.R1@0.3"] != cis["charades.R1@0.5"] != cis["charades.R1@0.7"] != cis["charades.mIoU"]


def test_seed_mean_records_averages_the_seeds_record_by_record():
    rec = pd.DataFrame({"row": ["a"] * 4 + ["b"] * 2, "seed": [0, 0, 1, 1, 0, 0], "task": ["tvg"] * 6,
                        "idx": [0, 1, 0, 1, 0, 1], "video": ["v", "w", "v", "w", "v", "w"],
                        "iou_charades": [0.6, 0.2, 0.4, 0.8, 1.0, 1.0]})
    m = seed_mean_records(rec, "a", "charades.mIoU")
    assert m["value"].tolist() == pytest.approx([0.5, 0.5])
    r5 = seed_mean_records(rec, "a", "charades.R1@0.5", seeds=[1])
    assert r5["value"].tolist() == [0.0, 1.0]
    assert seed_mean_records(rec, "a", "F1(cap)") is None
