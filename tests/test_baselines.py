"""Random-span and duration-prior baselines (lesson 06_evaluation)."""
import numpy as np
import pytest

from d2lib.evaluation.baselines import normalised_mean_span, prior_span, random_span
from d2lib.evaluation.metrics import charades_sta
from d2lib.core.spans import iou


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


# --- TFVTG-style scorer ---------------------------------------------------------------------------
from d2lib.evaluation.baselines import (  # noqa: E402
    boundary_scores, gaussian_smooth, static_scores, tfvtg_proposals, tfvtg_scores, tfvtg_span,
)


def test_tfvtg_plateau_is_the_answer():
    sim = np.zeros(30)
    sim[11:18] = 1.0  # frames 11..17
    assert tfvtg_span(sim) == [11.0, 17.0]
    assert tfvtg_span(sim, dynamic_weight=0.0) == [11.0, 17.0]  # static score alone finds it too
    # a noisy plateau on a noisy floor, and an offset/scale change of the curve
    rng = np.random.default_rng(0)
    noisy = sim + rng.normal(0, 0.15, 30)
    assert tfvtg_span(noisy) == [11.0, 17.0]
    assert tfvtg_span(3.0 * noisy - 7.0) == [11.0, 17.0]


def test_tfvtg_higher_plateau_wins_and_fps():
    sim = np.zeros(40)
    sim[4:9], sim[25:31] = 0.5, 1.0
    assert tfvtg_span(sim) == [25.0, 30.0]
    assert tfvtg_span(sim, fps=2.0) == [12.5, 15.0]  # frame t = second t / fps


def test_static_scores_hand_values():
    S = static_scores([0.0, 2.0, 2.0, 0.0, 0.0])
    # [1, 2]: inside mean 2, outside (0 + 0 + 0) / 3 = 0 -> 2; [0, 1]: 1 - 2/3 = 1/3
    assert S[1, 2] == pytest.approx(2.0) and S[0, 1] == pytest.approx(1 / 3)
    assert S[0, 4] == 0.0 and np.isneginf(S[3, 1])  # whole video; reversed span
    S2 = static_scores([0.0, 2.0, 2.0, 0.0, 0.0], min_len=2, max_len=3)
    assert np.isneginf(S2[1, 1]) and np.isneginf(S2[0, 3]) and np.isfinite(S2[1, 3])


def test_min_len_prevents_zero_length_answers():
    sim = np.zeros(20)
    sim[10] = 5.0  # one spike: the best single frame would be the zero-length span [10, 10]
    s, e = tfvtg_span(sim, min_len=3)
    assert e - s == 2 and s <= 10 <= e


def test_dynamic_score_sharpens_boundaries():
    # a ramp up over 6..9 then a plateau to 14: the rise puts the start where the curve climbs
    sim = np.r_[np.zeros(6), np.linspace(0.2, 0.8, 4), np.ones(5), np.zeros(6)]
    rise, fall = boundary_scores(sim, width=2, sigma=0)
    assert int(np.argmax(rise)) in (6, 7, 8) and int(np.argmax(fall)) == 14
    S = tfvtg_scores(sim, dynamic_weight=2.0, width=2, sigma=0)
    s, e = np.unravel_index(np.argmax(S), S.shape)
    assert e == 14 and 6 <= s <= 10


def test_tfvtg_proposals_nms_and_order():
    sim = np.zeros(30)
    sim[3:7], sim[18:24] = 1.0, 0.9
    props = tfvtg_proposals(sim, top_k=3, nms_iou=0.3)
    assert [p for p, _ in props[:2]] == [[3.0, 6.0], [18.0, 23.0]]
    scores = [s for _, s in props]
    assert scores == sorted(scores, reverse=True)
    for i, (a, _) in enumerate(props):  # survivors overlap each other by at most nms_iou
        for b, _ in props[i + 1:]:
            assert iou([a[0], a[1] + 1], [b[0], b[1] + 1]) <= 0.3


def test_gaussian_smooth_preserves_mass_and_constants():
    x = np.r_[np.zeros(10), 1.0, np.zeros(10)]
    assert gaussian_smooth(x, 1.5).sum() == pytest.approx(1.0)
    assert gaussian_smooth(np.full(7, 2.0), 3.0) == pytest.approx(np.full(7, 2.0))
    assert gaussian_smooth(x, 0).tolist() == x.tolist()


def test_tfvtg_proposals_hand_checked_ties():
    # two identical plateaus: [1, 2] and [5, 6] both score 2/3 (inside 1, outside 2/6) + rise 1 + fall 1
    sim = np.array([0, 1, 1, 0, 0, 1, 1, 0.0])
    props = tfvtg_proposals(sim, top_k=8, nms_iou=0.3, sigma=0, width=1, min_len=2)
    assert [p for p, _ in props] == [[1.0, 2.0], [5.0, 6.0], [0.0, 6.0], [3.0, 4.0]]
    assert props[0][1] == props[1][1] == pytest.approx(8 / 3)  # the tie goes to the earlier span
    # [0, 6] = frames [0, 7) overlaps [1, 3) and [5, 7) by 2/7 each (<= 0.3): kept; max_len=4 drops it
    assert props[2][1] == pytest.approx(11 / 7)
    capped = tfvtg_proposals(sim, top_k=8, nms_iou=0.3, sigma=0, width=1, min_len=2, max_len=4)
    assert [p for p, _ in capped] == [[1.0, 2.0], [5.0, 6.0], [2.0, 5.0]]
    assert tfvtg_proposals(sim, top_k=1, sigma=0, width=1, min_len=2) == props[:1]


def _greedy_reference(sim, top_k, nms_iou, **kw):
    """Greedy NMS written out over the flattened score matrix (stable order, stop at -inf)."""
    S = tfvtg_scores(sim, **kw)
    kept = []
    for flat in np.argsort(-S, axis=None, kind="stable"):
        if not np.isfinite(S.flat[flat]):
            break
        s, e = divmod(int(flat), S.shape[0])
        if all(iou([s, e + 1], [p, q + 1]) <= nms_iou for (p, q), _ in kept):
            kept.append(([float(s), float(e)], float(S.flat[flat])))
            if len(kept) >= top_k:
                break
    return kept


def test_tfvtg_proposals_equal_the_greedy_definition_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(40):
        T = int(rng.integers(1, 16))
        sim = rng.integers(0, 3, T) / 2 if trial % 2 else rng.normal(size=T)  # odd trials: many ties
        kw = {"sigma": float(rng.choice([0.0, 1.0])), "width": int(rng.integers(1, 3)),
              "min_len": int(rng.integers(1, 4)), "max_len": int(rng.integers(1, 16))}
        for top_k, nms_iou in ((1, 0.3), (3, 0.0), (T * T, 0.3), (T * T, 0.5)):
            assert tfvtg_proposals(sim, top_k, nms_iou, **kw) == _greedy_reference(sim, top_k, nms_iou, **kw)
