"""d2lib.core.spans: IoU, soft targets and D²VLM span decoding (hand-computed cases)."""
import numpy as np
import pytest
import torch

from d2lib.core import spans


@pytest.mark.parametrize("a,b,expected", [
    ([0, 10], [0, 10], 1.0),
    ([0, 10], [5, 15], 5 / 15),
    ([0, 4], [1, 2], 1 / 4),          # contained
    ([0, 1], [1, 2], 0.0),            # touching: zero overlap
    ([2, 2], [0, 4], 0.0),            # zero-length prediction
    ([3, 9], [6, 12], 3 / 9),
])
def test_iou_hand_computed(a, b, expected):
    assert spans.iou(a, b) == pytest.approx(expected)
    assert spans.iou(b, a) == pytest.approx(expected)


def test_iou_matrix_matches_scalar():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 30, (7, 2)), axis=1)
    b = np.sort(rng.uniform(0, 30, (5, 2)), axis=1)
    m = spans.iou_matrix(a, b)
    assert m.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            assert m[i, j] == pytest.approx(spans.iou(a[i], b[j]))


def test_soft_target_halves_per_second_outside():
    y = spans.soft_target([3, 5], 9)
    assert y.tolist() == [0.125, 0.25, 0.5, 1, 1, 1, 0.5, 0.25, 0.125]
    assert spans.soft_targets([[0, 0], [8, 8]], 9).shape == (2, 9)
    assert spans.soft_targets([], 9).shape == (0, 9)


def test_decode_span_threshold_runs_and_ties():
    # threshold 0.6*0.9=0.54 keeps frames 2,3 (mean .85) and 6 (mean .9): the single-frame run wins
    p = [0.1, 0.2, 0.8, 0.9, 0.3, 0.1, 0.9]
    assert spans.decode_span(p) == (6, 6)
    # equal means: the earlier run
    assert spans.decode_span([1.0, 0.0, 1.0]) == (0, 0)
    # tensor input, logits also fine for the argmax-like behaviour of a single peak
    assert spans.decode_span(torch.tensor([0.0, 0.7, 0.7, 0.7, 0.0])) == (1, 3)
    with pytest.raises(ValueError):
        spans.decode_span([])


def test_decode_recovers_span_from_its_soft_target():
    for s, e in [(0, 0), (2, 7), (10, 15), (3, 19)]:
        y = spans.soft_target([s, e], 20)
        assert spans.decode_span(y) == (s, min(e, 19))


def test_clip_and_order():
    assert spans.clip_span([-2, 40], 30) == ([0.0, 30.0], True)
    assert spans.clip_span([1, 2], 30) == ([1.0, 2.0], False)
    assert spans.order_span([9, 3]) == ([3.0, 9.0], True)


# ----------------------------------------------------------------------------------- exact IoU and ties
def test_exact_reads_floats_as_the_decimals_they_print_as():
    from decimal import Decimal
    from fractions import Fraction

    assert spans.exact(20.2) == Fraction(101, 5) != Fraction(20.2)  # not the binary double
    assert spans.exact(0.7) == Fraction(7, 10)
    assert spans.exact("25.90") == spans.exact(Decimal("25.9")) == spans.exact(np.float64(25.9)) == Fraction(259, 10)
    assert spans.exact(np.int64(3)) == 3
    with pytest.raises(ValueError):
        spans.exact(float("inf"))


def test_tie_at_half_is_a_hit_under_the_exact_rule():
    """GT [22, 28] vs the answer "20.2 - 25.9": intersection 3.9, union 7.8, IoU exactly 1/2."""
    from fractions import Fraction

    gt, pred = [22, 28], [20.2, 25.9]
    assert spans.iou_exact(gt, pred) == Fraction(1, 2)
    assert spans.iou(gt, pred) == 0.5 and spans.reaches(spans.iou_value(gt, pred), 0.5)
    # the published arithmetics: float64 (TimeChat) misses it, float32 (E.T. Bench / nncore) hits it
    assert spans.iou(gt, pred, "float64") == 0.4999999999999998
    assert not spans.reaches(spans.iou_value(gt, pred, "float64"), 0.5, "float64")
    assert spans.reaches(spans.iou_value(gt, pred, "float32"), 0.5, "float32")


def test_tie_at_0_7():
    """[10, 17] vs [10, 20] is exactly 7/10: a hit when decided exactly; float32 rounds it to
    0.699999988…, a miss against the float 0.7 (E.T. Bench tvg) but a hit against float32(0.7) (its tal)."""
    gt, pred = [10, 20], [10, 17]
    assert spans.reaches(spans.iou_value(gt, pred), 0.7)
    assert not spans.reaches(spans.iou_value(gt, pred), 0.7, strict=True)
    v32 = spans.iou_value(gt, pred, "float32")
    assert v32 == 0.699999988079071
    assert not spans.reaches(v32, 0.7, "float32") and spans.reaches(v32, 0.7, "float32", float32_threshold=True)
    assert spans.reaches(spans.iou_value(gt, pred, "float64"), 0.7, "float64")  # integers: float64 is exact
    # with decimals it depends on the value: [25.5, 29.7] vs [24.9, 30.9] = 4.2 / 6 is a miss in float64
    # and a hit in float32 (tvg), the reverse of the integer tie above
    g, p = [25.5, 29.7], [24.9, 30.9]
    assert spans.iou_exact(g, p) == spans.exact(0.7) and spans.reaches(spans.iou_value(g, p), 0.7)
    assert not spans.reaches(spans.iou_value(g, p, "float64"), 0.7, "float64")
    assert spans.reaches(spans.iou_value(g, p, "float32"), 0.7, "float32")


def test_float_iou_decides_thresholds_exactly_on_decimal_spans():
    """``iou`` is the exact IoU correctly rounded, so ``iou(a, b) >= 0.7`` (what per-record tables and
    their CSVs compare) agrees with the exact decision for every pair of 1-decimal spans on a grid."""
    rng = np.random.default_rng(0)
    ends = np.round(rng.uniform(0, 40, (4000, 4)), 1)
    n_ties = 0
    for g0, g1, p0, p1 in ends:
        g, p = sorted([g0, g1]), sorted([p0, p1])
        value = spans.iou_value(g, p)
        for t in (0.1, 0.3, 0.5, 0.7):
            assert (spans.iou(g, p) >= t) == spans.reaches(value, t) == (value >= spans.exact(t))
            n_ties += value == spans.exact(t)
    assert n_ties > 5  # the grid does contain exact ties


@pytest.mark.parametrize("arithmetic", spans.ARITHMETICS)
def test_iou_matrix_and_values_match_scalar_in_every_arithmetic(arithmetic):
    a = [[20.2, 25.9], [0, 10], [3, 3], [7.5, 12.25]]
    b = [[22, 28], [5, 15]]
    m = spans.iou_matrix(a, b, arithmetic)
    vals = spans.iou_values(a, b, arithmetic)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            assert m[i, j] == spans.iou(x, y, arithmetic) == float(vals[i][j])
    with pytest.raises(ValueError):
        spans.iou([0, 1], [0, 2], "float16")


def test_iou_non_finite_end_has_no_overlap():
    assert spans.iou([0, 10], [5, float("inf")]) == 0.0 and spans.iou_exact([0, 10], [float("inf")] * 2) == 0


# ------------------------------------------------------------------------------------------------ NaN
@pytest.mark.parametrize("nan", [float("nan"), np.float64("nan"), np.float32("nan"), "nan"])
@pytest.mark.parametrize("arithmetic", spans.ARITHMETICS)
def test_iou_rejects_nan_in_every_variant(nan, arithmetic):
    for a, b in (([0, nan], [0, 1]), ([0, 1], [nan, 1])):
        with pytest.raises(ValueError, match="NaN"):
            spans.iou(a, b, arithmetic)
        with pytest.raises(ValueError, match="NaN"):
            spans.iou_value(a, b, arithmetic)
        with pytest.raises(ValueError, match="NaN"):
            spans.iou_matrix([a], [b], arithmetic)
    with pytest.raises(ValueError, match="NaN"):
        spans.iou_exact([0, nan], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        spans.exact(nan)


def test_iou_nan_error_names_both_spans():
    with pytest.raises(ValueError, match=r"\[0, nan\] and \[2, 3\]"):
        spans.iou([0, float("nan")], [2, 3])
    from decimal import Decimal

    with pytest.raises(ValueError, match="NaN"):
        spans.iou([Decimal("NaN"), 1], [0, 1])


# ------------------------------------------------------------------------------------------------ NMS
def test_nms_hand_checked():
    s = [[0, 10], [1, 10], [20, 30], [0, 9], [2, 8]]
    # visit order by score: 0 (0.9), 3 (0.9, tie: index order), 1 (0.8), 2 (0.7), 4 (0.6)
    # IoU with [0, 10]: [0, 9] 0.9, [1, 10] 0.9, [2, 8] 0.6, [20, 30] 0
    sc = [0.9, 0.8, 0.7, 0.9, 0.6]
    assert spans.nms(s, sc, 0.5) == [0, 2]
    assert spans.nms(s, sc, 0.6) == [0, 2, 4]  # 0.6 is not above the threshold: kept
    assert spans.nms(s, sc, 0.9) == [0, 3, 1, 2, 4]  # [1, 10] vs [0, 9]: 8/10
    assert spans.nms(s, sc, 0.89) == [0, 2, 4]
    assert spans.nms(s, sc, 0.9, top_k=2) == [0, 3]
    # all scores tied: index order
    assert spans.nms(s, [1.0] * 5, 0.5) == [0, 2]
    assert spans.nms(s, [1.0] * 5, 1.0) == [0, 1, 2, 3, 4]
    assert spans.nms([], [], 0.5) == []
    assert spans.nms(np.array(s), np.array(sc, dtype=np.float32), 0.5) == [0, 2]  # arrays


def test_nms_exact_iou_tie_is_not_above_the_threshold():
    # [0, 1] vs [0.7, 1]: IoU exactly 3/10, not above 0.3; float64 gives 1 - 0.7 = 0.30000000000000004
    assert spans.iou([0, 1], [0.7, 1], "float64") > 0.3
    assert spans.nms([[0, 1], [0.7, 1]], [1.0, 0.5], 0.3) == [0, 1]


def test_nms_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        spans.nms([[0, 1], [2, 3]], [0.5, float("nan")], 0.5)
    with pytest.raises(ValueError, match="top_k"):
        spans.nms([[0, 1]], [0.5], 0.5, top_k=0)
    with pytest.raises(ValueError, match="shape"):
        spans.nms([[0, 1], [2, 3]], [0.5], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        spans.nms([[0, 1], [0, float("nan")]], [0.5, 0.4], 0.5)
