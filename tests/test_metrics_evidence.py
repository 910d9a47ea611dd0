"""The evidence stage under both conventions, and exact ties, on one small exported E.T. Bench set.

``SET`` is a whole submission (tvg, tem, tal, gvq, dvc, rar; D²VLM's ``</evi>`` answers) written with
:func:`d2lib.evaluation.formats.write_etbench_submission` and read back, then scored by
:func:`d2lib.evaluation.metrics.evaluate_etbench`:

* ``evidence="independent"`` (the default) against values computed by hand below;
* ``evidence="d2vlm", arithmetic="float32"`` against the frozen output of D²VLM's evaluator
  (``PUBLISHED_D2VLM``), to 1e-12, on every group of source ``shapes``;
* ``evidence="d2vlm"`` with the default exact arithmetic: the script's numbers except at the exact ties;
* source ``shapes_dev`` holds one record per known difference from that script, each asserted.

``PUBLISHED_D2VLM`` is what nusnlp/d2vlm @ 756d3407f9db73978fab52a87eb9cf94e28eb913
``all_benchmark_eval/etbench/new_compute_metrics.py`` (``--delimiter v3`` = ``</evi>``) computes on ``SET``
with nncore 0.4.7 and torch 2.13.0+cpu, through :func:`run_published` (its ``tvg_eval``/``tem_eval``/
``tal_eval``/``gvq_eval``/``dvc_eval`` per (task, source), as its ``__main__`` groups them). Changes made
from outside only: its ``__main__`` block is not executed (it needs Python 3.12 f-strings), ``round`` is
the identity, and dvc's caption scorers (Java METEOR, PTB, MiniLM) are stubbed out — only detection F1
is compared. To re-run it::

    pip install --target /tmp/parity/site --no-deps nncore==0.4.7 h5py jsonlines termcolor
    D2VLM_NEW_COMPUTE_METRICS=/path/to/new_compute_metrics.py PYTHONPATH=/tmp/parity/site \\
        .venv/bin/python -m pytest -q tests/test_metrics_evidence.py -k published
"""
import importlib.util
import os
import types
from fractions import Fraction

import pytest

from d2lib.evaluation import formats as F
from d2lib.evaluation import metrics as M

OPTS = ["a red square", "a blue circle", "a green star", "a yellow cross"]
DVC_GT, DVC_G = [[0, 10], [20, 30]], ["a man cuts onions.", "he fries them."]


def _rec(task, idx, tgt, a, source="shapes", **kw):
    return {"version": 1.0, "idx": idx, "task": task, "source": source, "duration": 60.0,
            "video": f"shapes/{task}_{source}_{idx}.mp4", "tgt": tgt, "q": "", "a": a, **kw}


SET = [
    _rec("tvg", 0, [8, 10], "8 - 11 </evi> The event happens in 14 - - 15."),  # answer unreadable
    _rec("tvg", 1, [22, 28], "22 - 28 </evi> The event happens in 20.2 - 25.9."),  # exact 0.5 tie
    _rec("tvg", 2, [10, 20], "</evi> The event happens in 10 - 17."),  # no evidence; 0.7 tie
    _rec("tvg", 3, [2, 8], "The event happens in 3 - 7."),  # no </evi>
    _rec("tvg", 4, [2, 8], "2 - 6 </evi> The event happens in 3 - 7."),
    _rec("tvg", 5, [0, 4], "0 to 4 </evi> It happens in 1 - 5."),  # evidence without "a - b"
    _rec("tvg", 6, [1.5, 3.5], "1.5 - 3.5 </evi> The event happens in 1.5 - 1.7."),  # exact 0.1 tie
    _rec("tem", 0, [[0, 10], [30, 40]], "30 - 40 </evi> The event happens in 30 - 38."),
    _rec("tem", 1, [[0, 10]], "</evi> It happens in 1 - 9."),
    _rec("tem", 2, [[0, 10]], "5 - 9 </evi> Sorry, no idea."),
    _rec("tal", 0, [[0, 10], [20, 30]], "0 - 10, 20 - 30 </evi> 0 - 10, 20 - 30"),
    _rec("tal", 1, [[0, 10]], "0 - 10 </evi> 0 - 10, 40 - 50"),
    _rec("tal", 2, [[0, 10]], "0 - 4 </evi> 0 - 9"),  # answer reaches every θ, evidence only 0.1/0.3
    _rec("tal", 3, [[0, 10]], "0 - 10 </evi> 25 - 30"),  # answer reaches no θ
    _rec("tal", 4, [[0, 10]], "0 - 5 </evi> none here"),
    _rec("tal", 5, [[0, 10]], "</evi> 0 - 7"),  # 0.7 tie
    _rec("gvq", 0, [3, 7], "3 - 7 </evi> A. It happens in 3 - 7.", o=OPTS, p=0),
    _rec("gvq", 1, [2, 8], "</evi> B. It happens in 2 - 6.", o=OPTS, p=1),
    _rec("gvq", 2, [4, 8], "4 - 8 </evi> C. I am not sure.", o=OPTS, p=2),
    _rec("gvq", 3, [1, 2], "1 - 2 </evi> A. It happens in 1 - 2.", o=OPTS, p=3),  # wrong option
    _rec("gvq", 4, [10, 20], "10 - 17 </evi> A. It happens in 10 - 17.", o=OPTS, p=0),  # 0.7 tie
    _rec("dvc", 0, DVC_GT, "0 - 10, 20 - 30 </evi> 0 - 10, a man cuts onions. 20 - 30, he fries them.", g=DVC_G),
    _rec("dvc", 1, DVC_GT, "</evi> 0 - 10, a man cuts onions.", g=DVC_G),
    _rec("dvc", 2, DVC_GT, "0 - 12, 25 - 30 </evi> 0 - 12, a man cuts onions. 22 - 30, he fries them.", g=DVC_G),
    _rec("dvc", 3, DVC_GT, "I cannot tell.", g=DVC_G),
    _rec("dvc", 4, DVC_GT, "5 - 10\n</evi> I cannot tell.", g=DVC_G),  # evidence only
    _rec("rar", 0, None, "</evi> (B) a blue circle.", o=OPTS, p=1),
    _rec("rar", 1, None, "</evi> C. a green star", o=OPTS, p=2),
    # one record per known difference from D²VLM's script
    _rec("tvg", 0, [8, 10], "0 - 2 </evi> The event happens in 0 - 2 and 8 - 10.", source="shapes_dev"),
    _rec("tvg", 1, [8, 10], "11 - 8 </evi> The event happens in 8 - 11.", source="shapes_dev"),
    _rec("dvc", 0, [[5, 10]], "5 - 10 </evi> I cannot tell.", source="shapes_dev", g=["a man waits."]),
    _rec("dvc", 1, DVC_GT, "0 - 10 </evi> 0 - 10, a man cuts onions. </evi> 20 - 30, he fries them.",
         source="shapes_dev", g=DVC_G),
    _rec("rar", 0, None, "</evi> A blue circle, I think (B).", source="shapes_dev", o=OPTS, p=1),
]

# --------------------------------------------------------------- frozen output of D²VLM's evaluator on SET
PUBLISHED_D2VLM = {
    "tvg/shapes": {"Total": 7, "Failed": 2, "mIoU": 0.36666667461395264, "mIoU_evi": 0.566666671207973,
                   "F1@0.1": 0.7142857142857143, "F1@0.3": 0.5714285714285714, "F1@0.5": 0.5714285714285714,
                   "F1@0.7": 0.0, "F1": 0.46428571428571425, "F1_evi@0.1": 0.7142857142857143,
                   "F1_evi@0.3": 0.7142857142857143, "F1_evi@0.5": 0.7142857142857143,
                   "F1_evi@0.7": 0.2857142857142857, "F1_evi": 0.6071428571428571},
    "tem/shapes": {"Total": 3, "Failed": 1, "mIoU": 0.5333333412806193, "mIoU_evi": 0.600000003973643,
                   "R@0.1": 0.6666666666666666, "R@0.3": 0.6666666666666666, "R@0.5": 0.6666666666666666,
                   "R@0.7": 0.6666666666666666, "R_evi@0.1": 0.6666666666666666,
                   "R_evi@0.3": 0.6666666666666666, "R_evi@0.5": 0.6666666666666666,
                   "R_evi@0.7": 0.6666666666666666, "mRec": 0.6666666666666666, "mRec_evi": 0.6666666666666666},
    "tal/shapes": {"Total": 6, "Failed": 1, "F1@0.1": 0.611111111111111, "F1@0.3": 0.611111111111111,
                   "F1@0.5": 0.611111111111111, "F1@0.7": 0.611111111111111, "F1_evi@0.1": 0.6666666666666666,
                   "F1_evi@0.3": 0.6666666666666666, "F1_evi@0.5": 0.16666666666666666,
                   "F1_evi@0.7": 0.16666666666666666, "F1": 0.611111111111111, "F1_evi": 0.4166666666666667},
    "gvq/shapes": {"Total": 5, "Failed": 1, "mIoU": 0.4733333349227905, "mIoU_evi": 0.33999999761581423,
                   "R@0.1": 0.6, "R@0.3": 0.6, "R@0.5": 0.6, "R@0.7": 0.2, "R_evi@0.1": 0.4, "R_evi@0.3": 0.4,
                   "R_evi@0.5": 0.4, "R_evi@0.7": 0.2, "mRec": 0.49999999999999994,
                   "mRec_evi": 0.35000000000000003, "Acc": 0.8},
    "dvc/shapes": {"Total": 5, "Failed": 2, "F1@0.1": 0.5454545454545454, "F1@0.3": 0.5454545454545454,
                   "F1@0.5": 0.5454545454545454, "F1@0.7": 0.5454545454545454, "F1": 0.5454545454545454,
                   "F1_evi@0.1": 0.39999999999999997, "F1_evi@0.3": 0.39999999999999997, "F1_evi@0.5": 0.3,
                   "F1_evi@0.7": 0.3, "F1_evi": 0.35},
    "rar/shapes": {"Total": 2, "Failed": 0, "Acc": 1.0},
    "tvg/shapes_dev": {"Total": 2, "Failed": 0, "mIoU": 0.8333333432674408, "mIoU_evi": 0.0, "F1@0.1": 1.0,
                       "F1@0.3": 1.0, "F1@0.5": 1.0, "F1@0.7": 0.5, "F1": 0.875, "F1_evi@0.1": 0.0,
                       "F1_evi@0.3": 0.0, "F1_evi@0.5": 0.0, "F1_evi@0.7": 0.0, "F1_evi": 0.0},
    "dvc/shapes_dev": {"Total": 2, "Failed": 0, "F1@0.1": 0.8571428571428571, "F1@0.3": 0.8571428571428571,
                       "F1@0.5": 0.8571428571428571, "F1@0.7": 0.8571428571428571, "F1": 0.8571428571428571,
                       "F1_evi@0.1": 0.8571428571428571, "F1_evi@0.3": 0.8571428571428571,
                       "F1_evi@0.5": 0.8571428571428571, "F1_evi@0.7": 0.8571428571428571,
                       "F1_evi": 0.8571428571428571},
    "rar/shapes_dev": {"Total": 1, "Failed": 0, "Acc": 0.0},
}
COMPARED = ("Total", "Failed", "Acc", "mIoU", "mIoU_evi", "F1", "F1_evi", "mRec", "mRec_evi")


def _keys(published: dict) -> list[str]:
    return [k for k in published if k in COMPARED or k.split("@")[0] in ("F1", "F1_evi", "R", "R_evi")]


def assert_equal(ours: dict, theirs: dict, where: str, keys=None, tol: float = 1e-12) -> None:
    keys = _keys(theirs) if keys is None else keys
    bad = {k: (ours.get(k), theirs[k]) for k in keys if ours.get(k) is None or abs(ours[k] - theirs[k]) > tol}
    assert not bad, f"{where}: (ours, published) differ: {bad}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """SET as an exported submission file, read back (what evaluate writes and the scripts read)."""
    path = F.write_etbench_submission(tmp_path_factory.mktemp("evi") / "submission.json", SET)
    return F.read_etbench_submission(path)


def score(records, **kw):
    return M.evaluate_etbench(records, embed=None, captioner=None, **kw)["groups"]


# ------------------------------------------------------------------------------------------- the sample
def test_unreadable_answer_span_under_both_conventions():
    """`8 - 11 </evi> The event happens in 14 - - 15.` with GT [8, 10]: the answer part has no span
    ("14 - - 15" is not a range, and one keyword time is not a pair). Scored independently its evidence
    has IoU 2/3; coupled as D²VLM's script does, the sample failed and its evidence scores 0."""
    rec = {"tgt": [8, 10], "a": "8 - 11 </evi> The event happens in 14 - - 15."}
    ind = M.etbench_task("tvg", [rec], embed=None, captioner=None)
    d2 = M.etbench_task("tvg", [rec], embed=None, captioner=None, evidence="d2vlm")
    assert ind["mIoU"] == d2["mIoU"] == 0.0 and ind["Failed"] == d2["Failed"] == 1
    assert ind["mIoU_evi"] == pytest.approx(2 / 3) and ind["F1_evi"] == 0.75  # hits at 0.1, 0.3, 0.5
    assert d2["mIoU_evi"] == 0.0 and d2["F1_evi"] == 0.0
    assert ind["parse_paths_evi"] == {"range": 1} and d2["parse_paths_evi"] == {"answer_failed": 1}


def test_missing_evidence_is_replaced_by_the_answer_only_when_coupled():
    rec = {"tgt": [10, 20], "a": "</evi> The event happens in 10 - 16."}
    ind = M.etbench_task("tvg", [rec], embed=None, captioner=None)
    d2 = M.etbench_task("tvg", [rec], embed=None, captioner=None, evidence="d2vlm")
    assert ind["mIoU_evi"] == 0.0 and ind["Failed_evi"] == 1
    assert d2["mIoU_evi"] == d2["mIoU"] == pytest.approx(0.6) and d2["Failed_evi"] == 0
    assert d2["parse_paths_evi"] == {"answer_spans": 1}


def test_unknown_conventions_raise():
    with pytest.raises(ValueError, match="evidence"):
        M.etbench_task("tvg", [], evidence="coupled")
    with pytest.raises(ValueError, match="arithmetic"):
        M.etbench_task("tvg", [], arithmetic="float16")


# ------------------------------------------------------------------------------ independent: by hand
def test_golden_independent(exported):
    g = score(exported)
    assert [r["a"] for r in exported] == [r["a"] for r in SET]
    tvg = g["tvg/shapes"]
    # answer IoUs: 0 (unreadable), 1/2 (tie), 7/10 (tie), 0 (no </evi>), 4/6, 3/5, 1/10 (tie)
    assert [tvg[f"F1@{t}"] for t in M.ETB_THRESHOLDS] == [5 / 7, 4 / 7, 4 / 7, 1 / 7]
    assert tvg["mIoU"] == pytest.approx((0.5 + 0.7 + 4 / 6 + 0.6 + 0.1) / 7)
    # evidence IoUs: 2/3, 1, 0 (empty), 0 (no </evi>), 4/6, 1 ("0 to 4" read by the "to" path), 1
    assert [tvg[f"F1_evi@{t}"] for t in M.ETB_THRESHOLDS] == [5 / 7, 5 / 7, 5 / 7, 3 / 7]
    assert tvg["mIoU_evi"] == pytest.approx((2 / 3 + 1 + 4 / 6 + 1 + 1) / 7)
    assert (tvg["Failed"], tvg["Failed_evi"]) == (2, 2)
    tem = g["tem/shapes"]
    # answer: 0.8, 0.8, failed; evidence: 1, none, 0.4
    assert [tem[f"R@{t}"] for t in M.ETB_THRESHOLDS] == [2 / 3] * 4
    assert [tem[f"R_evi@{t}"] for t in M.ETB_THRESHOLDS] == [2 / 3, 2 / 3, 1 / 3, 1 / 3]
    tal = g["tal/shapes"]
    # answer F1 per θ: 1, 2/3, 1, 0, failed, 1 (0.7 tie)  -> (1 + 2/3 + 1 + 1) / 6 at every θ
    assert [tal[f"F1@{t}"] for t in M.ETB_THRESHOLDS] == [pytest.approx(11 / 18)] * 4
    # evidence: 1, 1, [0,4] (1 at 0.1/0.3), [0,10] 1, [0,5] (1 up to 0.5), none
    assert [tal[f"F1_evi@{t}"] for t in M.ETB_THRESHOLDS] == pytest.approx([5 / 6, 5 / 6, 4 / 6, 3 / 6])
    gvq = g["gvq/shapes"]
    # correct: 0, 1, 2, 4.  answer IoU 1, 4/6, none, 7/10 (tie); evidence 1, none, 1, 7/10 (tie)
    assert gvq["Acc"] == 0.8
    assert [gvq[f"R@{t}"] for t in M.ETB_THRESHOLDS] == [0.6, 0.6, 0.6, 0.4]
    assert [gvq[f"R_evi@{t}"] for t in M.ETB_THRESHOLDS] == [0.6] * 4
    dvc = g["dvc/shapes"]
    # answer parsed: 0 (P = R = 1), 1 (P 1, R 1/2), 2 (10/12, 8/10: P = R = 1 up to 0.7) -> scale 3/5
    assert [dvc[f"F1@{t}"] for t in M.ETB_THRESHOLDS] == pytest.approx([f1(3 / 5, 5 / 6 * 3 / 5)] * 4)
    # evidence parsed: 0 (1, 1), 2 ([0,12] 1, [25,30] vs [20,30] = 0.5: only > 0.1/0.3), 4 ([5,10] = 0.5)
    #   θ .1/.3: P (1 + 1 + 1)/3, R (1 + 1 + 1/2)/3;  θ .5/.7: P (1 + 1/2 + 0)/3, R (1 + 1/2 + 0)/3; scale 3/5
    low, high = f1(3 / 3 * 3 / 5, 2.5 / 3 * 3 / 5), f1(1.5 / 3 * 3 / 5, 1.5 / 3 * 3 / 5)
    assert [dvc[f"F1_evi@{t}"] for t in M.ETB_THRESHOLDS] == pytest.approx([low, low, high, high])
    assert g["rar/shapes"]["Acc"] == 1.0


def f1(p, r):
    return 2 * p * r / (p + r)


# ------------------------------------------------------------------------ coupled: D²VLM's evaluator
@pytest.mark.parametrize("group", [g for g in PUBLISHED_D2VLM if g.endswith("/shapes")])
def test_golden_d2vlm_float32_equals_published(exported, group):
    ours = score(exported, evidence="d2vlm", arithmetic="float32")[group]
    assert_equal(ours, PUBLISHED_D2VLM[group], group)


def test_golden_d2vlm_differs_from_independent_where_coupled(exported):
    ind, d2 = score(exported), score(exported, evidence="d2vlm")
    for group in ("tvg/shapes", "tem/shapes", "tal/shapes", "gvq/shapes", "dvc/shapes"):
        assert ind[group]["Failed"] == d2[group]["Failed"]  # the answer stage is the same
        assert {k: v for k, v in ind[group].items() if "evi" not in k} == \
               {k: v for k, v in d2[group].items() if "evi" not in k}, group
    # tvg evidence: record 0 -> 0 (answer failed), 2 -> the answer's 7/10, 5 -> the answer's [1, 5] (3/5)
    assert d2["tvg/shapes"]["mIoU_evi"] == pytest.approx((1 + 0.7 + 4 / 6 + 0.6 + 1) / 7)
    assert ind["tvg/shapes"]["mIoU_evi"] == pytest.approx((2 / 3 + 1 + 4 / 6 + 1 + 1) / 7)
    assert d2["tvg/shapes"]["parse_paths_evi"] == {"answer_failed": 1, "range": 3, "answer_spans": 2,
                                                   "no_delimiter": 1}
    # tal: the evidence sum at 0.5/0.7 is reset to 0 by record 2 (answer reaches θ, evidence does not);
    # record 3's evidence is skipped (its answer reaches no θ); only record 5 counts after the reset
    assert [d2["tal/shapes"][f"F1_evi@{t}"] for t in M.ETB_THRESHOLDS] == pytest.approx([4 / 6, 4 / 6, 1 / 6, 1 / 6])
    # dvc: an evidence part whose answer did not parse (record 4) is not scored when coupled
    assert d2["dvc/shapes"]["F1_evi"] < ind["dvc/shapes"]["F1_evi"]


def test_golden_d2vlm_exact_differs_from_published_only_at_exact_ties(exported):
    """With exact arithmetic the coupled numbers are the script's except where float32 misses an exact
    tie: IoU 7/10 in tvg record 2 (both stages: its evidence is the answer's span) and gvq record 4."""
    ours = score(exported, evidence="d2vlm")
    for group in ("tem/shapes", "tal/shapes", "dvc/shapes", "rar/shapes"):  # no float32-missed tie here
        assert_equal(ours[group], PUBLISHED_D2VLM[group], group, tol=1e-7)  # mIoU: float32 ~1e-8 apart
    tvg, pub = ours["tvg/shapes"], PUBLISHED_D2VLM["tvg/shapes"]
    assert tvg["F1@0.7"] - pub["F1@0.7"] == pytest.approx(1 / 7) and tvg["F1_evi@0.7"] - pub["F1_evi@0.7"] == pytest.approx(1 / 7)
    assert_equal(tvg, pub, "tvg", keys=[f"F1{s}@{t}" for s in ("", "_evi") for t in (0.1, 0.3, 0.5)])
    gvq, pub = ours["gvq/shapes"], PUBLISHED_D2VLM["gvq/shapes"]
    assert gvq["R@0.7"] - pub["R@0.7"] == pytest.approx(0.2) and gvq["R_evi@0.7"] - pub["R_evi@0.7"] == pytest.approx(0.2)


# -------------------------------------------------------------- known differences from D²VLM's script
def _dev(records, task, **changes):
    out = [dict(r) for r in records if r["task"] == task and r["source"] == "shapes_dev"]
    for idx, a in changes.items():
        out[int(idx[1:])]["a"] = a
    return out


def test_d2vlm_difference_tvg_first_span_and_unordered_evidence(exported):
    """Record 0: D²VLM's tvg takes the best of all answer (and evidence) spans, we the first (as E.T.
    Bench). Record 1: D²VLM does not reorder evidence spans ("11 - 8" scores 0 there), we do. Written
    the way the script reads them, the numbers are the script's."""
    ours = score(exported, evidence="d2vlm", arithmetic="float32")["tvg/shapes_dev"]
    theirs = PUBLISHED_D2VLM["tvg/shapes_dev"]
    assert ours["F1"] == 0.375 and theirs["F1"] == 0.875  # [0, 2] (ours) vs [8, 10] (theirs) for record 0
    assert ours["mIoU_evi"] == pytest.approx(1 / 3, abs=1e-7) and theirs["mIoU_evi"] == 0.0  # record 1
    emulated = _dev(exported, "tvg", r0="0 - 2 </evi> The event happens in 8 - 10.",
                    r1="0 - 1 </evi> The event happens in 8 - 11.")
    assert_equal(M.etbench_task("tvg", emulated, evidence="d2vlm", arithmetic="float32"), theirs, "tvg/shapes_dev")


def test_d2vlm_difference_dvc_fallback_and_second_delimiter(exported):
    """D²VLM's dvc reads the answer differently in two cases. Record 0: when the answer part has no
    "a - b", its line fallback searches the *whole* text, so the evidence span "5 - 10" becomes an answer
    event; we read the answer part only (a failure). Record 1: with a second ``</evi>`` its dvc answer is
    the text between the first two delimiters (``split(delimiter)[1]``; its tvg takes the last part,
    as we do everywhere)."""
    ours = score(exported, evidence="d2vlm")["dvc/shapes_dev"]
    # record 0 failed; record 1: answer [20, 30] (P 1, R 1/2), evidence [0, 10] (P 1, R 1/2); scale 1/2
    assert ours["Failed"] == 1 and ours["F1"] == ours["F1_evi"] == pytest.approx(f1(1 / 2, 1 / 4))
    emulated = _dev(exported, "dvc", r0="5 - 10 </evi> 5 - 10, i cannot tell.",
                    r1="0 - 10 </evi> 0 - 10, a man cuts onions.")
    out = M.etbench_task("dvc", emulated, evidence="d2vlm", embed=None, captioner=None)
    assert_equal(out, PUBLISHED_D2VLM["dvc/shapes_dev"], "dvc/shapes_dev")


def test_d2vlm_difference_option_letter_in_parentheses_anywhere(exported):
    """D²VLM's strict rvq_eval compares ``match.group(0)`` ("(b)", parentheses included) with the letters,
    so its "(X) anywhere" rule never fires and "A blue circle, I think (B)." is read as A; we read (B)
    as E.T. Bench's original does."""
    ours = score(exported)["rar/shapes_dev"]
    assert ours["Acc"] == 1.0 and PUBLISHED_D2VLM["rar/shapes_dev"]["Acc"] == 0.0
    emulated = _dev(exported, "rar", r0="</evi> A. a blue circle")
    assert_equal(M.etbench_task("rar", emulated, embed=None), PUBLISHED_D2VLM["rar/shapes_dev"], "rar/shapes_dev")


# ---------------------------------------------------------------------- re-running the published script
def run_published(script: str, records) -> dict:
    """D²VLM's ``new_compute_metrics.py`` on ``records`` (module docstring: what is patched, from outside)."""
    src = open(script).read()
    src = src[:src.index("\nif __name__ == '__main__':")]
    mod = types.ModuleType("d2vlm_new_compute_metrics")
    exec(compile(src, script, "exec"), mod.__dict__)
    mod.round = lambda x, ndigits=None: x
    mod.Meteor = lambda: None
    mod.PTBTokenizer = lambda verbose=False: None
    caption_keys = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SentSim")
    mod.DVCEval.evaluate_tiou = lambda self, tiou: {k: 0.0 for k in caption_keys}
    groups: dict = {}
    for r in records:
        groups.setdefault(f"{r['task']}/{r['source']}", []).append(dict(r))
    out = {}
    for group, samples in groups.items():
        task = group.split("/")[0]
        if task in ("tvg", "tem", "tal"):
            out[group] = getattr(mod, f"{task}_eval")(samples, "</evi>")
        elif task in ("gvq", "dvc", "rar"):  # st (MiniLM) is never reached: every option letter parses
            out[group] = getattr(mod, "rvq_eval" if task == "rar" else f"{task}_eval")(samples, None, "</evi>")
    return out


@pytest.mark.skipif(not os.environ.get("D2VLM_NEW_COMPUTE_METRICS") or importlib.util.find_spec("nncore") is None,
                    reason="set D2VLM_NEW_COMPUTE_METRICS to D²VLM's new_compute_metrics.py (and install nncore)")
def test_published_script_reproduces_frozen_values(exported):
    got = run_published(os.environ["D2VLM_NEW_COMPUTE_METRICS"], exported)
    assert set(got) == set(PUBLISHED_D2VLM)
    for group, theirs in PUBLISHED_D2VLM.items():
        assert_equal(got[group], theirs, group, tol=0.0)


def test_exact_ties_in_the_set_are_exact():
    """The ties above are ties: the IoUs the hand values rely on are exactly 1/2, 7/10 and 1/10."""
    from d2lib.core.spans import iou_exact

    assert iou_exact([22, 28], [20.2, 25.9]) == Fraction(1, 2)
    assert iou_exact([10, 20], [10, 17]) == Fraction(7, 10) == iou_exact([0, 10], [0, 7])
    assert iou_exact([1.5, 3.5], [1.5, 1.7]) == Fraction(1, 10)


def test_stage_files_give_a_first_span_reader_the_reported_stage_numbers(tmp_path):
    """evaluate writes, next to the full responses, one file per stage (formats.write_etbench_stages). Read with
    no delimiter — as E.T. Bench's compute_metrics.py reads any answer, first spans first — the answer file gives
    every number reported for the answer stage, and the evidence file the ``_evi`` numbers of the span-only
    tasks; the full file would give the evidence prefix instead."""
    files = F.write_etbench_stages(tmp_path, SET)
    full = score(SET)
    answer = score(F.read_etbench_submission(files["answer"]), delimiter=None)
    evidence = score(F.read_etbench_submission(files["evidence"]), delimiter=None)
    assert set(evidence) == {g for g in full if g.split("/")[0] in F.SPAN_TASKS}
    for g, ours in full.items():
        plain = {k: v for k, v in ours.items() if isinstance(v, (int, float)) and "_evi" not in k}
        assert_equal(answer[g], plain, f"answer file {g}", keys=list(plain))
        if g in evidence:
            evi = {k.replace("_evi", ""): v for k, v in ours.items() if isinstance(v, (int, float)) and "_evi" in k}
            assert_equal(evidence[g], evi, f"evidence file {g}", keys=list(evi))
    # the full file read the same way is the evidence prefix, not what is reported for the answer stage
    assert score(SET, delimiter=None)["tvg/shapes"]["F1"] != full["tvg/shapes"]["F1"]


def test_stage_file_keeps_an_option_answer_without_delimiter_whole():
    """The one documented difference: a gvq answer without ``</evi>`` keeps its text in the answer file (its
    option is read from the whole text), so a first-span reader also reads its span, which this project counts
    as a failed grounding (as D²VLM's evaluator does)."""
    rec = _rec("gvq", 0, [3, 7], "A. It happens in 3 - 7.", o=OPTS, p=0)
    (back,) = F.stage_submission([rec], "answer")
    assert back["a"] == rec["a"]
    assert score([rec])["gvq/shapes"]["R@0.5"] == 0.0 and score([back], delimiter=None)["gvq/shapes"]["R@0.5"] == 1.0
