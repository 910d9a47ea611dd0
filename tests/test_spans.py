"""d2lib.spans: IoU, soft targets and D²VLM span decoding (hand-computed cases)."""
import numpy as np
import pytest
import torch

from d2lib import spans


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
