"""Golden tests for the evaluation protocols (lesson 06_evaluation).

Every expected value is computed by hand; the arithmetic is in the comments. Tests named ``*_java_*``
need a Java runtime (METEOR 1.5, PTB tokenizer) and are skipped without one; tests named
``*_minilm_*`` load the real all-MiniLM-L6-v2 once per process (a few seconds). Deselect either with
``-k "not java"`` / ``-k "not minilm"``.
"""
import json
import math
import re
import shutil

import numpy as np
import pytest

from d2lib.evaluation import captioning as C
from d2lib.evaluation import metrics as M

HAVE_JAVA = shutil.which("java") is not None
requires_java = pytest.mark.skipif(
    not HAVE_JAVA, reason="METEOR 1.5 and the PTB tokenizer run on Java; `java` is not on PATH")
approx = pytest.approx


@pytest.fixture(scope="module", autouse=True)
def _warm_meteor(request):
    """If Java tests were selected, start the METEOR JVM when this module starts: it loads its paraphrase
    table (~10 s of one core) while the other tests run; the Java tests come last."""
    if HAVE_JAVA and any("java" in item.name for item in request.session.items):
        C.get_caption_scorer(True).start_meteor()
    yield


def bow_embed(texts):
    """Fake sentence embedder for hand-computable SentSim: L2-normalised bag of words (a-z runs)."""
    vocab, rows = {}, []
    for t in texts:
        words = re.findall(r"[a-z]+", t.lower())
        rows.append(words)
        for w in words:
            vocab.setdefault(w, len(vocab))
    out = np.zeros((len(texts), max(len(vocab), 1)))
    for i, words in enumerate(rows):
        for w in words:
            out[i, vocab[w]] += 1
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1)


SIMPLE = C.get_caption_scorer(False)  # labelled pure-Python fallback (no Java)


# ------------------------------------------------------------------------------------- building blocks
def test_dense_iou_ties_and_hull():
    m = M.dense_iou_matrix([[0, 5], [0, 10], [3, 3]], [[0, 10]])
    # [0,5] vs [0,10]: inter 5 / (union 10 + 1e-8) = 0.4999999995 -> an exact 0.5 tie falls below 0.5
    assert m[0, 0] == approx(0.5, abs=1e-8) and m[0, 0] < 0.5
    assert m[1, 0] == approx(1.0, abs=1e-8) and m[2, 0] == 0.0  # zero-length span: 0


def test_detection_pr_strict_and_duplicates():
    gt = [[0, 10], [20, 30]]
    # pred [0,10] twice (duplicates) and [50,60]: at 0.5 the two duplicates are covered -> P = 2/3;
    # one GT of two covered -> R = 1/2
    assert M.detection_pr([[0, 10], [0, 10], [50, 60]], gt, 0.5) == approx((2 / 3, 1 / 2))
    # [0,5] vs [0,10]: IoU 0.5 is not strictly greater than 0.5
    assert M.detection_pr([[0, 5]], gt, 0.5) == (0.0, 0.0)
    assert M.detection_pr([[0, 5]], gt, 0.3) == (1.0, 0.5)
    assert M.detection_pr([], gt, 0.3) == (0.0, 0.0)  # empty prediction


def test_tal_f1():
    gt = [[0, 10], [20, 30]]
    # preds [0,10], [0,10] (duplicate), [40,50]: rec = 1/2 (only GT 1 found), prc = 2/3 (duplicates both hit)
    # F1 = 2 * 2/3 * 1/2 / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    assert M.tal_f1([[0, 10], [0, 10], [40, 50]], gt, 0.7) == approx(4 / 7)
    assert M.tal_f1([[40, 50]], gt, 0.1) == 0.0  # nothing reaches θ
    assert M.tal_f1([], gt, 0.1) == 0.0


def test_order_preserving_max_and_soda_f1():
    # 3 GT x 2 preds. Best order-preserving picks: (g0,p0)=0.5 + (g2,p1)=0.9 = 1.4; the crossing choice
    # (g1,p0)=0.8 + (g0,p1)=0.7 is not allowed, and (g1,p0)+(g2,p1) = 0.8 + 0.9 = 1.7 is allowed -> 1.7
    s = np.array([[0.5, 0.7], [0.8, 0.0], [0.0, 0.9]])
    assert M.order_preserving_max(s) == approx(1.7)
    # SODA_c: s = 1.7, P = 1.7 / 2 preds = 0.85, R = 1.7 / 3 GT = 0.5667, F = 2PR/(P+R) = 0.68
    assert M.soda_f1(s, np.ones_like(s)) == approx(2 * 0.85 * (1.7 / 3) / (0.85 + 1.7 / 3))
    assert M.soda_f1(np.zeros((2, 0)), np.zeros((2, 0))) == 0.0  # no predictions


def test_cider_d_hand_values():
    # one pair: every n-gram has df 1 = corpus size 1 -> idf log(1) - log(1) = 0 -> CIDEr 0
    assert C.cider_d(["chop onions"], ["chop onions"]) == 0.0
    # two identical 2-word pairs, disjoint refs: idf = log 2 for every n-gram; cosines 1 (1-grams),
    # 1 (2-grams), 0 (no 3-/4-grams) -> mean 0.5, x10 = 5 per pair -> 5
    assert C.cider_d(["chop onions", "fry garlic"], ["chop onions", "fry garlic"]) == approx(5.0)
    assert C.cider_d([], []) == 0.0


# --------------------------------------------------------------------------------------- Charades-STA
def test_charades_sta_hand_values():
    preds = [[0, 10], [0, 5], None, [20, 40], [3, 3]]
    gts = [[0, 10], [0, 10], [0, 5], [25, 35], [0, 10]]
    # IoUs: 1; 5/10 = 0.5; unparsed 0; past the 30 s video, not clipped: inter [25,35]=10 / hull [20,40]=20
    # = 0.5; zero-length span 0.  N = 5 (all queries).
    # R@0.3 = R@0.5 = 3/5 (1, .5, .5), R@0.7 = 1/5, mIoU = 2/5
    out = M.charades_sta(preds, gts)
    assert out["R1@0.3"] == approx(0.6) and out["R1@0.5"] == approx(0.6) and out["R1@0.7"] == approx(0.2)
    assert out["mIoU"] == approx(0.4)
    assert (out["n"], out["n_failed"], out["parse_failure_rate"]) == (5, 1, approx(0.2))
    json.dumps(out)


def test_charades_sta_from_text():
    answers = ["The event happens in 0 - 10.", "I don't know.", "", "happens in 20 - 10"]
    out = M.charades_sta_from_text(answers, [[0, 10], [0, 10], [0, 10], [0, 10]])
    # IoUs 1, 0 (unparsed), 0 (empty), 0.0 for [10,20] vs [0,10] (touching) -> R@0.3 = 1/4, mIoU = 1/4
    assert out["R1@0.3"] == 0.25 and out["mIoU"] == 0.25 and out["n_failed"] == 2
    assert out["parse_paths"] == {"range": 2, "none": 1, "empty": 1}


def test_charades_sta_from_text_d2vlm_split():
    answers = ["2 - 8</evi>The event happens in 0 - 10.",  # answer span used: IoU([0,10],[0,10]) = 1
               "0 - 5</evi>Not sure.",  # answer unparsed -> evidence span [0,5]: IoU 0.5
               "The event happens in 0 - 10."]  # no </evi>: failure
    out = M.charades_sta_from_text(answers, [[0, 10]] * 3, delimiter="</evi>")
    # R@0.5 = 2/3, R@0.7 = 1/3, mIoU = 1.5 / 3 = 0.5
    assert out["R1@0.5"] == approx(2 / 3) and out["R1@0.7"] == approx(1 / 3) and out["mIoU"] == approx(0.5)
    assert out["parse_paths"] == {"range": 1, "evidence_fallback": 1, "no_delimiter": 1}
    off = M.charades_sta_from_text(answers[1:2], [[0, 10]], delimiter="</evi>", evidence_fallback=False)
    assert off["mIoU"] == 0.0 and off["n_failed"] == 1


def test_charades_sta_timechat_format():
    gt = {"annotations": [
        {"image_id": "A.mp4", "caption": "a", "timestamp": [0.0, 10.0], "id": 0},
        {"image_id": "A.mp4", "caption": "b", "timestamp": [10.0, 20.0], "id": 1},
        {"image_id": "B.mp4", "caption": "c", "timestamp": [5.0, 15.0], "id": 2},
        {"image_id": "B.mp4", "caption": "d", "timestamp": [0.0, 4.0], "id": 3},
        {"image_id": "C.mp4", "caption": "e", "timestamp": [0.0, 4.0], "id": 4}]}
    preds = {"0": {"timestamp": [[0, 10], [50, 60]], "query": "a", "vid": "A.mp4"},  # first span: IoU 1
             "1": {"timestamp": [12, 20], "query": "b", "vid": "A.mp4"},  # one flat span: 8/10 = 0.8
             "2": {"timestamp": [], "query": "c", "vid": "B.mp4"},  # empty: 0
             "3": {"query": "d", "vid": "B.mp4"},  # no timestamp key: 0
             "99": {"timestamp": [[0, 1]]}}  # not in GT; id 4 missing: 0
    out = M.charades_sta_timechat(preds, gt)
    # N = 5 GT queries: R@0.3 = R@0.5 = R@0.7 = 2/5; mIoU = 1.8 / 5 = 0.36
    assert out["R1@0.7"] == approx(0.4) and out["mIoU"] == approx(0.36)
    assert (out["n"], out["n_failed"], out["n_missing"], out["n_extra"]) == (5, 3, 1, 1)


# ------------------------------------------------------------------------------------------ E.T. Bench
def _rec(task, a, source="shapes", **kw):
    return {"task": task, "source": source, "a": a, **kw}


TVG = [
    _rec("tvg", "10 - 20</evi>The event happens in 10 - 20.", tgt=[10, 20]),
    _rec("tvg", "12 - 20</evi>The event happens in 14 - 24.", tgt=[10, 20]),
    _rec("tvg", "</evi>I don't know.", tgt=[10, 20]),
    _rec("tvg", "The event happens in 10 - 20.", tgt=[10, 20]),
]


def test_etbench_tvg_answer_and_evidence():
    out = M.etbench_task("tvg", TVG, embed=None, captioner=None)
    # answer IoUs: 1; [14,24]: inter 6 / hull 14 = 3/7 = 0.4286; unparsed 0; no </evi> 0  (N = 4)
    # R@0.1 = R@0.3 = 2/4, R@0.5 = R@0.7 = 1/4 -> F1 = (.5 + .5 + .25 + .25) / 4 = 0.375
    assert [out[f"F1@{t}"] for t in (0.1, 0.3, 0.5, 0.7)] == [0.5, 0.5, 0.25, 0.25]
    assert out["F1"] == approx(0.375) and out["mIoU"] == approx((1 + 3 / 7) / 4)
    # evidence IoUs: 1; [12,20]: 8/10 = 0.8; empty 0; no </evi> 0 -> R@θ = 2/4 for all θ -> F1_evi 0.5
    assert out["F1_evi"] == approx(0.5) and out["mIoU_evi"] == approx(1.8 / 4)
    assert out["Failed"] == 2 and out["Failed_evi"] == 2 and out["Total"] == 4
    assert out["parse_paths"] == {"range": 2, "none": 1, "no_delimiter": 1}
    assert out["parse_paths_evi"] == {"range": 2, "empty": 1, "no_delimiter": 1}


def test_etbench_tvg_without_delimiter_and_ties():
    out = M.etbench_task("tvg", TVG, delimiter=None, embed=None, captioner=None)
    # whole text, first span: [10,20] -> 1; [12,20] (the evidence span comes first) -> 0.8; none -> 0;
    # [10,20] -> 1.  R@0.1..0.7 = 3/4 each -> F1 0.75; no _evi numbers without a delimiter
    assert out["F1"] == approx(0.75) and "F1_evi" not in out
    tie = M.etbench_task("epm", [_rec("epm", "</evi>10 - 17", tgt=[10, 20])], embed=None, captioner=None)
    # IoU exactly 7/10 = 0.7 is a hit at 0.7 (exact arithmetic, >=)
    assert tie["F1@0.7"] == 1.0


def test_exact_tie_at_half_is_a_hit_in_every_protocol():
    """GT [22, 28] vs the answer "20.2 - 25.9": IoU 3.9 / 7.8 = 1/2 exactly, a hit at 0.5 under the exact
    rule; float64 (TimeChat) computes 0.4999999999999998 and misses it, float32 (E.T. Bench) hits it."""
    answer = ["The event happens in 20.2 - 25.9."]
    ch = M.charades_sta_from_text(answer, [[22, 28]])
    assert ch["R1@0.5"] == 1.0 and ch["R1@0.7"] == 0.0 and ch["mIoU"] == 0.5
    assert M.charades_sta_from_text(answer, [[22, 28]], arithmetic="float64")["R1@0.5"] == 0.0
    rec = [_rec("tvg", "22 - 28 </evi>" + answer[0], tgt=[22, 28])]
    exact, f32 = (M.etbench_task("tvg", rec, embed=None, captioner=None, arithmetic=a) for a in ("exact", "float32"))
    assert exact["F1@0.5"] == exact["F1_evi@0.7"] == 1.0 and exact["F1@0.7"] == 0.0
    assert f32["F1@0.5"] == 1.0 and f32["mIoU"] == 0.5
    assert M.etbench_task("tvg", rec, arithmetic="float64")["F1@0.5"] == 0.0
    gvq = [_rec("gvq", "22 - 28 </evi> A. " + answer[0], tgt=[22, 28], o=OPTS, p=0)]
    assert M.etbench_task("gvq", gvq, embed=None, captioner=None)["R@0.5"] == 1.0
    tal = [_rec("tal", "22 - 28 </evi>" + answer[0], tgt=[[22, 28]])]
    assert M.etbench_task("tal", tal, embed=None, captioner=None)["F1@0.5"] == 1.0


def test_exact_tie_at_0_7_per_arithmetic():
    """IoU exactly 7/10: a hit under the exact rule and in float64 (integer spans); E.T. Bench's float32
    IoU rounds to 0.699999988 — a miss for tvg/tem/gvq, which compare it with the float 0.7, a hit for
    tal, which compares it with float32(0.7)."""
    recs = {task: [_rec(task, "10 - 17 </evi> 10 - 17", tgt=[[10, 20]] if task in ("tem", "tal") else [10, 20],
                        **({"o": OPTS, "p": 0} if task == "gvq" else {}))] for task in ("tvg", "tem", "tal", "gvq")}
    recs["gvq"][0]["a"] = "10 - 17 </evi> A. It happens in 10 - 17."
    key = {"tvg": "F1@0.7", "tem": "R@0.7", "tal": "F1@0.7", "gvq": "R@0.7"}
    for task, k in key.items():
        got = {a: M.etbench_task(task, recs[task], embed=None, captioner=None, arithmetic=a)[k]
               for a in ("exact", "float64", "float32")}
        assert got == {"exact": 1.0, "float64": 1.0, "float32": 1.0 if task == "tal" else 0.0}, task
    # Charades: the same in TimeChat's float64; a decimal tie there can miss ([25.5, 29.7] vs 24.9 - 30.9)
    assert M.charades_sta([[24.9, 30.9]], [[25.5, 29.7]])["R1@0.7"] == 1.0
    assert M.charades_sta([[24.9, 30.9]], [[25.5, 29.7]], arithmetic="float64")["R1@0.7"] == 0.0


def test_dense_captioning_exact_ties_never_count():
    """Dense captioning (E.T. Bench dvc, YouCook2): the published ``inter / (union + 1e-8)`` makes an exact
    tie fail both ``>`` (detection) and ``>=`` (caption pairing); the exact rule decides IoU > θ, the same."""
    pred, gt = [[0, 5], [20.2, 25.9]], [[0, 10], [22, 28]]  # IoUs 1/2 (integers) and 1/2 (decimals)
    for arithmetic in ("exact", "float64"):
        assert not M.dense_hits(pred, gt, 0.5, arithmetic, ">=").any()
        assert M.detection_pr(pred, gt, 0.5, arithmetic) == (0.0, 0.0)
        assert M.detection_pr(pred, gt, 0.3, arithmetic) == (1.0, 1.0)
    with pytest.raises(ValueError):
        M.dense_hits(pred, gt, 0.5, op="<")


def test_etbench_tem_max_over_gt():
    recs = [_rec("tem", "</evi>30 - 40, 0 - 10", tgt=[[0, 10], [30, 40]]),  # first span [30,40]: IoU 1
            _rec("tem", "</evi>0 - 6", tgt=[[0, 10], [30, 40]])]  # 6/10 = 0.6 with the first GT
    out = M.etbench_task("tem", recs, embed=None, captioner=None)
    # R@0.1 = R@0.3 = R@0.5 = 2/2, R@0.7 = 1/2 -> mRec = 3.5 / 4 = 0.875
    assert out["R@0.7"] == 0.5 and out["mRec"] == approx(0.875) and out["mIoU"] == approx(0.8)


def test_etbench_tal_hand_values():
    recs = [_rec("tal", "0 - 10</evi>0 - 10, 0 - 10, 40 - 50", tgt=[[0, 10], [20, 30]]),
            _rec("tal", "0 - 10</evi>nothing", tgt=[[0, 10]]),
            _rec("tal", "0 - 5</evi>0 - 5", tgt=[[0, 10]])]
    out = M.etbench_task("tal", recs, embed=None, captioner=None)
    # sample 1 (duplicates): 4/7 at every θ (see test_tal_f1); sample 2 unparsed: 0;
    # sample 3: IoU 0.5 -> F1 1 at 0.1/0.3/0.5, 0 at 0.7.  N = 3
    # F1@0.1 = (4/7 + 0 + 1)/3 = 11/21, F1@0.7 = (4/7)/3 = 4/21, F1 = (3 * 11/21 + 4/21)/4 = 37/84
    assert out["F1@0.1"] == approx(11 / 21) and out["F1@0.7"] == approx(4 / 21)
    assert out["F1"] == approx(37 / 84) and out["Failed"] == 1
    # evidence: [0,10] vs [[0,10],[20,30]] -> rec 1/2, prc 1 -> 2/3; [0,10] vs [[0,10]] -> 1;
    # [0,5] -> 1,1,1,0.  F1_evi@0.1 = (2/3 + 1 + 1)/3 = 8/9, @0.7 = (2/3 + 1)/3 = 5/9
    assert out["F1_evi@0.1"] == approx(8 / 9) and out["F1_evi@0.7"] == approx(5 / 9)
    assert out["F1_evi"] == approx((3 * 8 / 9 + 5 / 9) / 4)


OPTS = ["a red square", "a blue circle", "a green star", "a cat"]
RAR = [
    _rec("rar", "</evi>(B) a blue circle.", o=OPTS, p=1),  # paren -> B: hit
    _rec("rar", "</evi>(A) a blue circle.", o=OPTS, p=1),  # strict: A is final although the text is B's
    _rec("rar", "</evi>It is the green star", o=OPTS, p=2),  # no letter -> similarity -> C: hit
    _rec("rar", "</evi>", o=OPTS, p=0),  # empty: miss
    _rec("rar", "Best option: (D", o=OPTS, p=3),  # no </evi>: letters read from the whole text -> D: hit
]


def test_etbench_rar_strict_with_similarity_fallback():
    out = M.etbench_task("rar", RAR, embed=bow_embed, captioner=None)
    # BOW fallback for "it is the green star": only "(C) a green star" shares words (green, star) -> C
    # hits: 1 + 0 + 1 + 0 + 1 = 3 of N = 5 -> Acc 0.6; Failed (no letter) = similarity + empty = 2
    assert out["Acc"] == approx(0.6) and out["Failed"] == 2
    assert out["parse_paths"] == {"paren": 2, "similarity": 1, "empty": 1, "leading": 1}
    no_fallback = M.etbench_task("rar", RAR, embed=None, captioner=None)
    assert no_fallback["Acc"] == approx(0.4)  # the similarity hit is lost: 2/5


def test_etbench_gvq_recall_only_on_correct_answers():
    o = ["red", "blue", "green", "cat"]
    recs = [_rec("gvq", "10 - 20</evi>(B) blue. The evidence is in 10 - 20.", o=o, p=1, tgt=[10, 20]),
            _rec("gvq", "10 - 20</evi>(A) red. The evidence is in 10 - 20.", o=o, p=1, tgt=[10, 20]),
            _rec("gvq", "12 - 20</evi>(B) blue. The evidence is in 15 - 20.", o=o, p=1, tgt=[10, 20]),
            _rec("gvq", "</evi>(B) blue.", o=o, p=1, tgt=[10, 20])]
    out = M.etbench_task("gvq", recs, embed=None, captioner=None)
    # correct: 1, 3, 4 -> Acc 3/4. Sample 2 is wrong: its perfect span does not count.
    # answer IoUs on correct samples: 1; [15,20] 5/10 = 0.5; none.  N = 4
    # R@0.1 = R@0.3 = R@0.5 = 2/4, R@0.7 = 1/4 -> mRec = 1.75 / 4 = 0.4375
    assert out["Acc"] == 0.75 and out["R@0.5"] == 0.5 and out["R@0.7"] == 0.25
    assert out["mRec"] == approx(0.4375)
    # evidence IoUs on correct samples: 1; [12,20] 0.8; empty -> R_evi@θ = 2/4 -> mRec_evi 0.5
    assert out["mRec_evi"] == approx(0.5) and out["Failed"] == 1 and out["Failed_evi"] == 1


DVC_TGT, DVC_G = [[0, 10], [10, 20]], ["chop onions", "fry garlic"]
DVC = [
    _rec("dvc", "0 - 10 10 - 20</evi>0 - 10, chop the onions. 10 - 20, fry the garlic.",
         tgt=DVC_TGT, g=DVC_G),
    _rec("dvc", "0 - 10</evi>0 - 5, chop the onions. 0 - 5, chop the onions.", tgt=DVC_TGT, g=DVC_G),
    _rec("dvc", "garbage", tgt=DVC_TGT, g=DVC_G),
]


def test_etbench_dvc_detection_scaled_by_parse_rate():
    out = M.etbench_task("dvc", DVC, embed=None, captioner=None)
    # sample 1: P = R = 1 at every θ. Sample 2: two [0,5] duplicates, IoU with [0,10] = 0.5 (-1e-9):
    #   θ 0.1, 0.3: P = 2/2, R = 1/2;  θ 0.5, 0.7: P = R = 0 (not strictly greater).  Sample 3 unparsed.
    # scale = 2 parsed / 3.  θ 0.1: P = (1+1)/2 * 2/3 = 2/3, R = (1+.5)/2 * 2/3 = 1/2 -> F1 = 4/7
    #   θ 0.5: P = R = (1+0)/2 * 2/3 = 1/3 -> F1 = 1/3.   F1 = (4/7 + 4/7 + 1/3 + 1/3)/4 = 19/42
    assert out["F1@0.1"] == approx(4 / 7) and out["F1@0.5"] == approx(1 / 3)
    assert out["F1"] == approx(19 / 42) and out["Failed"] == 1
    # evidence: sample 1 P = R = 1; sample 2 "0 - 10": P = 1, R = 1/2 at every θ -> F1_evi = 4/7
    assert out["F1_evi"] == approx(4 / 7)
    assert out["METEOR"] is None and out["SentSim"] is None and "METEOR" in out["not_computed"]


# Caption scores of DVC, per θ and parsed video (tokenized "chop the onions" vs "chop onions"):
#   sample 1, every θ: pairs (chop the onions | chop onions), (fry the garlic | fry garlic)
#   sample 2, θ 0.1/0.3: (chop the onions | chop onions) twice; θ 0.5/0.7: both vs random strings
# CIDEr-D: sample 1 refs share no n-gram -> idf log 2 for all; 1-gram cosine 2/sqrt(2*3), other n 0;
#   length penalty exp(-(2-1)^2/72) (lengths are bigram counts) -> 10 * (2/sqrt 6)/4 * e^(-1/72)
#   = 2.013087 per cell; sample 2: both refs equal -> idf 0 -> 0; random refs -> 0.
#   mean over 2 videos x 4 θ = 4 * 2.013087 / 8 = 1.006544
CIDER_DVC = 10 * (2 / math.sqrt(6)) / 4 * math.exp(-1 / 72) * 4 / 8
# ROUGE-L (β = 1.2): LCS 2, P = 2/3, R = 1 -> 2.44 * (2/3) / (1 + 1.44 * 2/3) = 0.829932; 6 of 8 cells
ROUGE_DVC = (2.44 * 2 / 3) / (1 + 1.44 * 2 / 3) * 6 / 8
# SentSim with the bag-of-words embedder: cos = 2/sqrt(6) on matched cells, 0 vs random strings
SIM_DVC = 2 / math.sqrt(6) * 6 / 8


def test_etbench_dvc_caption_scores_without_java():
    out = M.etbench_task("dvc", DVC, embed=bow_embed, captioner=SIMPLE)
    assert out["tokenizer"] == "simple"
    assert out["CIDEr"] is None and out["CIDEr_simpletok"] == approx(CIDER_DVC)
    assert out["ROUGE_L_simpletok"] == approx(ROUGE_DVC)
    assert out["SentSim"] is None and out["SentSim_simpletok"] == approx(SIM_DVC)
    assert out["METEOR"] is None
    assert set(out["not_computed"]) == {"METEOR", "CIDEr", "ROUGE_L", "SentSim"}
    assert "Java" in out["not_computed"]["METEOR"]
    json.dumps(out)


def test_evaluate_etbench_sources_and_merged_row():
    recs = [dict(r, source="s1") for r in TVG]
    recs += [_rec("tvg", "10 - 20</evi>10 - 20", source="s2", tgt=[10, 20])]
    recs += [dict(r) for r in RAR] + [dict(r) for r in DVC]
    out = M.evaluate_etbench(recs, embed=bow_embed, captioner=SIMPLE)
    assert set(out["groups"]) == {"tvg/s1", "tvg/s2", "rar/shapes", "dvc/shapes"}
    # tvg: mean over sources, not pooled: (0.375 + 1.0)/2 = 0.6875; evi (0.5 + 1.0)/2 = 0.75
    assert out["tasks"]["tvg"]["F1"] == approx(0.6875) and out["tasks"]["tvg"]["F1_evi"] == approx(0.75)
    m = out["merged"]
    assert m["F1(gnd)"] == approx(0.6875) and m["F1(gnd)_evi"] == approx(0.75)
    assert m["Acc(ref)"] == approx(0.6)
    assert m["F1(cap)"] == approx(19 / 42) and m["F1(cap)_evi"] == approx(4 / 7)
    assert m["Sim(cap)"] is None  # SentSim only exists as SentSim_simpletok without Java
    assert m["tasks"] == {"Acc(ref)": ["rar"], "F1(gnd)": ["tvg"], "F1(cap)": ["dvc"], "Sim(cap)": ["dvc"]}
    assert out["config"]["tokenizer"] == "simple" and out["config"]["mcq"] == "strict"
    json.dumps(out)


def test_etbench_unknown_task():
    with pytest.raises(ValueError, match="not implemented"):
        M.etbench_task("evs", [], embed=None, captioner=None)


# ------------------------------------------------------------------------ answers that are no text, odd times
NOT_TEXT = [None, 5, 0, 2.5, float("nan"), float("inf"), [1, 2], [], {"a": 1}]
BAD_TIME = ["The event happens in 0 - " + "9" * 400 + ".", "1e3 - 2e3", "0:99 - 1:99"]


@pytest.mark.parametrize("delimiter", [None, "</evi>"])
def test_odd_answers_are_counted_failures_in_every_task(delimiter):
    answers = NOT_TEXT + BAD_TIME + [f"</evi>{t}" for t in BAD_TIME]
    n, good = len(answers), "10 - 20</evi>The event happens in 10 - 20."
    for task, extra in (("tvg", {"tgt": [10, 20]}), ("tem", {"tgt": [[10, 20]]}), ("tal", {"tgt": [[10, 20]]}),
                        ("dvc", {"tgt": DVC_TGT, "g": DVC_G}), ("rar", {"o": OPTS, "p": 1}),
                        ("gvq", {"o": OPTS, "p": 1, "tgt": [10, 20]})):
        recs = [_rec(task, a, **extra) for a in answers]
        for evidence in M.EVIDENCE_MODES:
            out = M.etbench_task(task, recs, delimiter=delimiter, embed=None, captioner=SIMPLE, evidence=evidence)
            # gvq counts a wrong (here: unreadable) option only when it is empty or not text
            assert out["Total"] == n and out["Failed"] == (len(NOT_TEXT) if task == "gvq" else n), (task, out)
            assert all(v == 0 for k, v in out.items() if k.split("@")[0] in ("F1", "mRec", "R", "Acc", "mIoU"))
            if delimiter is not None and "Failed_evi" in out:
                assert out["Failed_evi"] == out["Failed"]
        # a readable answer next to them still scores (tvg: the one good answer is a hit at every θ)
        if task == "tvg":
            out = M.etbench_task(task, recs + [_rec(task, good, **extra)], delimiter=delimiter, embed=None,
                                 captioner=None)
            assert out["F1"] == approx(1 / (n + 1)) and out["Failed"] == n
    paths = M.etbench_task("tvg", [_rec("tvg", a, tgt=[10, 20]) for a in answers], delimiter=delimiter,
                           embed=None, captioner=None)["parse_paths"]
    # None is "empty" (no delimiter: empty text; with one: no </evi>), the others "not_text";
    # the times that are no times "invalid_time" (a missing </evi> comes first)
    assert paths["not_text"] == len(NOT_TEXT) - 1
    assert paths["invalid_time"] == (2 * len(BAD_TIME) if delimiter is None else len(BAD_TIME))


def test_odd_answers_in_charades_and_youcook2():
    answers = NOT_TEXT + BAD_TIME
    out = M.charades_sta_from_text(answers, [[10, 20]] * len(answers))
    assert out["n_failed"] == len(answers) and out["mIoU"] == 0.0
    assert out["parse_paths"] == {"empty": 1, "not_text": len(NOT_TEXT) - 1, "invalid_time": len(BAD_TIME)}
    with_delim = M.charades_sta_from_text(answers, [[10, 20]] * len(answers), delimiter="</evi>")
    assert with_delim["n_failed"] == len(answers) and with_delim["parse_paths"]["not_text"] == len(NOT_TEXT) - 1


# ------------------------------------------------------------------------------------------- YouCook2
YC_GT = {"v1": {"timestamps": [[0, 10], [10, 20]], "sentences": ["chop onions.", "fry garlic."]},
         "v2": {"timestamps": [[0, 30]], "sentences": ["boil water."]},
         "v3": {"timestamps": [[0, 10]], "sentences": ["add salt."]}}
YC_PRED = {"v1": [{"timestamp": [0, 10], "caption": "chop onions"},
                  {"timestamp": [10, 20], "caption": "fry garlic"},
                  {"timestamp": [20, 10], "caption": "fry garlic"}],  # duplicate (written reversed)
           "v2": [{"timestamp": [15, 45], "caption": "boil water"}],  # runs past the 30 s video
           "v9": [{"timestamp": [0, 1], "caption": "x"}]}  # v3 has no prediction; v9 is not in GT


def test_youcook2_detection_and_cider_without_java():
    out = M.youcook2_dvc(YC_PRED, YC_GT, captioner=SIMPLE)
    # v1: every pred covered (duplicates too) and every GT -> P = R = 1 at all θ, F1 1
    # v2: [15,45] vs [0,30]: inter 15 / union 45 = 1/3 -> covered only at 0.3: P̄ = R̄ = 1/4, F1 1/4
    # v3: no prediction -> 0.   F1 = (1 + 1/4 + 0)/3 = 5/12;  Precision@0.3 = (1 + 1 + 0)/3 = 2/3
    assert out["F1"] == approx(5 / 12) and out["Precision@0.3"] == approx(2 / 3)
    assert out["Recall_Mean"] == approx(5 / 12)
    assert (out["n_videos"], out["n_videos_without_prediction"], out["n_extra_videos"]) == (3, 1, 1)
    # CIDEr-D per video: v1 has 3 identical pairs (refs: chop onions, fry garlic, fry garlic): idf log 3
    #   or log 1.5 > 0, cosines 1 (1-, 2-grams), 0 (3-, 4-grams) -> 10 * 2/4 = 5 each -> 5 at every θ
    #   v2: a single pair at 0.3 -> CIDEr 0 (one-pair corpus), random refs above -> 0;  v3: 0
    #   CIDEr = (5 + 0 + 0)/3
    assert out["CIDEr"] is None and out["CIDEr_simpletok"] == approx(5 / 3)
    assert out["METEOR"] is None and out["SODA_c"] is None
    assert set(out["not_computed"]) == {"CIDEr", "METEOR", "SODA_c"}
    json.dumps(out)


def test_youcook2_gt_loaders():
    off = {"database": {"a": {"subset": "validation", "duration": 50.0,
                              "annotations": [{"id": 0, "segment": [5, 1], "sentence": "s0"}]},
                        "b": {"subset": "training", "duration": 9.0, "annotations": []}}}
    assert M.youcook2_gt_from_official(off) == {"a": {"timestamps": [[1.0, 5.0]], "sentences": ["s0"],
                                                       "duration": 50.0}}
    assert set(M.youcook2_gt_from_official(off, subset=None)) == {"a", "b"}
    with pytest.raises(ValueError):
        M.youcook2_gt_from_timeit({"annotations": [{"image_id": "x.mp4", "segments": [[0, 1]],
                                                     "pure_cap": "one. two"}]})


# --------------------------------------------------------------------------------- MiniLM (real model)
@pytest.fixture(scope="module")
def minilm():
    return C.load_minilm()  # cached for the whole process


def test_minilm_offline_weights_and_reference_similarity(minilm):
    assert C.load_minilm() is minilm  # module-level cache
    e = minilm(["A man is eating food.", "A man is eating a piece of bread.", "A man is eating food."])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    # cosine of identical sentences is 1; the pair below is 0.7553 with the official weights (hash-checked)
    assert float(e[0] @ e[2]) == approx(1.0, abs=1e-5)
    assert float(e[0] @ e[1]) == approx(0.7553, abs=1e-3)


def test_minilm_transformers_backend_matches(minilm):
    texts = ["a red square appears", "", "word " * 400]  # empty and > 256 tokens (truncated)
    other = C.load_minilm("transformers")
    assert np.abs(other(texts) - minilm(texts)).max() < 1e-5


def test_minilm_sentsim_and_mcq_fallback(minilm):
    # perfect dense captions: every pair is (caption, same caption) -> SentSim = cos(x, x) = 1
    text = "0 - 10 10 - 20</evi>0 - 10, chop onions. 10 - 20, fry garlic."
    recs = [_rec("dvc", text, tgt=DVC_TGT, g=DVC_G)]
    out = M.etbench_task("dvc", recs, embed=minilm, captioner=SIMPLE)
    assert out["SentSim_simpletok"] == approx(1.0, abs=1e-5) and out["F1"] == approx(1.0)
    rar = M.etbench_task("rar", [RAR[2]], embed=minilm, captioner=None)  # "It is the green star" -> C
    assert rar["Acc"] == 1.0 and rar["parse_paths"] == {"similarity": 1}


# ----------------------------------------------------------------------------- Java: METEOR, PTB, SODA
@requires_java
def test_java_meteor_hand_values():
    c = C.get_caption_scorer(True)
    # METEOR 1.5 (-norm, en): Fmean = P R / (0.85 P + 0.15 R), penalty 0.6 (chunks / matches)^0.2;
    # content words weigh 0.75, function words 0.25 in P and R.
    # reversed "man cuts onions": P = R = 1, 3 chunks / 3 matches -> 1 - 0.6 = 0.4
    assert c.meteor(["onions cuts man"], ["man cuts onions"])[0] == approx(0.4)
    # "chop the onions" vs "chop onions": P = 1.5/1.75 ("the" is a function word), R = 1,
    # Fmean = (6/7) / (0.85 * 6/7 + 0.15) = 0.97561, 2 chunks / 2 matches -> x 0.4 = 0.390244
    p = 1.5 / 1.75
    assert c.meteor(["chop the onions"], ["chop onions"])[0] == approx(p / (0.85 * p + 0.15) * 0.4)
    # corpus score aggregates statistics (not the mean of 1.0 and 0.0): exact match + a junk hypothesis
    # P = 2.5 / (2.5 + 0.75) , R = 2.5 / 5.0 -> Fmean 0.527704, no penalty (exact-match segment)
    p, r = 2.5 / 3.25, 0.5
    score, per = c.meteor(["a man cuts onions", "qwertyuiop"], ["a man cuts onions", "a man cuts onions"])
    assert per == [1.0, 0.0] and score == approx(p * r / (0.85 * p + 0.15 * r))


@requires_java
def test_java_ptb_tokenizer():
    c = C.get_caption_scorer(True)
    assert c.tokenize(["A man, cutting the Onions.", "", "fry garlic.."]) == ["a man cutting the onions", "",
                                                                               "fry garlic"]


@requires_java
def test_java_etbench_dvc_meteor_and_ptb():
    out = M.etbench_task("dvc", DVC, embed=bow_embed, captioner=C.get_caption_scorer(True))
    # METEOR per cell: 0.390244 (see test_java_meteor_hand_values) on the 6 matched cells, 0 on the 2
    # random-reference cells -> 0.390244 * 6/8.  PTB gives the same tokens as the simple tokenizer here.
    p = 1.5 / 1.75
    assert out["METEOR"] == approx(p / (0.85 * p + 0.15) * 0.4 * 6 / 8)
    assert out["CIDEr"] == approx(CIDER_DVC) and out["ROUGE_L"] == approx(ROUGE_DVC)
    assert out["SentSim"] == approx(SIM_DVC) and out["not_computed"] == {} and out["tokenizer"] == "ptb"


@requires_java
def test_java_youcook2_meteor_soda():
    out = M.youcook2_dvc(YC_PRED, YC_GT, captioner=C.get_caption_scorer(True))
    assert out["CIDEr"] == approx(5 / 3) and out["tokenizer"] == "ptb"
    # METEOR per video (mean over θ): v1 3 identical pairs -> 1 at every θ; v2 identical at 0.3 only
    # -> 1/4; v3 0.  (1 + 1/4 + 0)/3 = 5/12
    assert out["METEOR"] == approx(5 / 12)
    # SODA_c: v1 IoU x METEOR (GT x pred) = [[1,0,0],[0,1,1]] -> best order-preserving sum 2,
    #   P = 2/3 (the duplicate is penalised), R = 2/2 -> F = 0.8;  v2: 1/3 x 1 -> P = R = 1/3 -> 1/3;
    #   v3: 0.  SODA_c = (0.8 + 1/3 + 0)/3
    assert out["SODA_c"] == approx((0.8 + 1 / 3) / 3, abs=1e-7)
