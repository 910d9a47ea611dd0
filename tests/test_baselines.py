"""Random-span and duration-prior baselines (lesson 06_evaluation)."""
import numpy as np
import pytest

from d2lib.baselines import normalised_mean_span, prior_span, random_span
from d2lib.metrics import charades_sta


def test_random_span_bounds_order_and_determinism():
    rng = np.random.default_rng(0)
    spans = [random_span(30.0, rng) for _ in range(1000)]
    assert all(0.0 <= s <= e <= 30.0 for s, e in spans)
    assert random_span(30.0, np.random.default_rng(7)) == random_span(30.0, np.random.default_rng(7))
    assert random_span(0.0, rng) == [0.0, 0.0]  # degenerate video: zero-length span
    with pytest.raises(ValueError):
        random_span(-1.0, rng)


def test_random_span_moments():
    # start = min and end = max of two U(0, D): E[start] = D/3, E[end] = 2D/3, E[length] = D/3.
    # D = 30: 10, 20, 10. Length sd = D/sqrt(18) = 7.07 -> standard error over 20000 draws 0.05.
    rng = np.random.default_rng(123)
    arr = np.array([random_span(30.0, rng) for _ in range(20000)])
    assert arr[:, 0].mean() == pytest.approx(10.0, abs=0.25)
    assert arr[:, 1].mean() == pytest.approx(20.0, abs=0.25)
    assert (arr[:, 1] - arr[:, 0]).mean() == pytest.approx(10.0, abs=0.25)


def test_prior_span_hand_values():
    train = [(0, 10, 40), (10, 30, 40), (35, 20, 50)]  # the last is reversed: read as (20, 35)
    # normalised: (0, .25), (.25, .75), (.4, .7) -> mean start = .65/3, mean end = 1.7/3
    ns, ne = normalised_mean_span(train)
    assert ns == pytest.approx(0.65 / 3) and ne == pytest.approx(1.7 / 3)
    # scaled to a 60 s video: [60 * .65/3, 60 * 1.7/3] = [13, 34]
    assert prior_span(60.0, train) == pytest.approx([13.0, 34.0])


def test_prior_span_clips_and_skips():
    # end past the video (Charades-STA noise) is clipped to 1; zero-duration videos are skipped
    assert normalised_mean_span([(10, 40, 30), (1, 2, 0)]) == pytest.approx((1 / 3, 1.0))
    with pytest.raises(ValueError):
        normalised_mean_span([])


def test_prior_baseline_scores_on_charades_metric():
    # Prior from training: every GT covers the middle half -> prior = [D/4, 3D/4].
    train = [(5, 15, 20), (10, 30, 40)]
    gts, durations = [[5, 15], [0, 10]], [20.0, 20.0]
    preds = [prior_span(d, train) for d in durations]  # [5, 15] twice
    out = charades_sta(preds, gts)
    # IoU 1 for the first; [5,15] vs [0,10]: inter 5 / hull 15 = 1/3 -> R@0.3 = 1, R@0.5 = 1/2, mIoU 2/3
    assert out["R1@0.3"] == 1.0 and out["R1@0.5"] == 0.5 and out["mIoU"] == pytest.approx(2 / 3)
