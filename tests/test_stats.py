"""d2lib.core.stats: every confidence interval of the library (lesson 06_evaluation; the ablations and peers use
them too) — bootstrap intervals over records and over test videos, t-intervals over seeds — checked against
scipy.stats where scipy has the same interval."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from d2lib.core.stats import (bootstrap_ci, logit_t_interval, mean_of_means_ci, paired_bootstrap_diff, t_interval,
                              video_bootstrap)


def test_ci_contains_the_mean_and_is_ordered():
    x = np.random.default_rng(3).random(200)
    ci = bootstrap_ci(x, n_boot=500, seed=1)
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low <= ci.estimate <= ci.high
    assert ci.level == 0.95 and ci.n == 200 and ci.n_boot == 500


def test_ci_narrower_with_more_samples():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.integers(0, 2, 50), n_boot=1000, seed=0)
    large = bootstrap_ci(rng.integers(0, 2, 2000), n_boot=1000, seed=0)
    # half-width ~ 1.96 * sqrt(p(1-p)/n): 0.14 at n=50, 0.022 at n=2000
    assert large.half_width < small.half_width / 3
    assert 0.08 < small.half_width < 0.2 and 0.01 < large.half_width < 0.035


def test_ci_deterministic_with_seed():
    x = np.random.default_rng(1).random(100)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)


def test_ci_level_and_degenerate_samples():
    x = np.random.default_rng(2).random(300)
    assert bootstrap_ci(x, level=0.5).half_width < bootstrap_ci(x, level=0.99).half_width
    const = bootstrap_ci([0.3] * 10, n_boot=50)
    assert (const.low, const.high) == pytest.approx((0.3, 0.3))
    with pytest.raises(ValueError):
        bootstrap_ci([], n_boot=10)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], level=1.0)


def test_ci_of_a_row_statistic():
    # rows (precision, recall): F1 of the column means, as E.T. Bench dvc
    rng = np.random.default_rng(0)
    pr = np.column_stack([rng.random(60), 0.5 * rng.random(60)])
    f1 = lambda a: 2 * a[:, 0].mean() * a[:, 1].mean() / (a[:, 0].mean() + a[:, 1].mean())  # noqa: E731
    ci = bootstrap_ci(pr, f1, n_boot=300, seed=0)
    assert ci.estimate == pytest.approx(f1(pr)) and ci.low <= ci.estimate <= ci.high
    with pytest.raises(ValueError):
        bootstrap_ci(pr)  # the default mean needs 1-D values


def test_mean_of_means_is_stratified():
    a, b = np.r_[np.ones(30), np.zeros(10)], np.zeros(5)
    ci = mean_of_means_ci([a, b], n_boot=500, seed=0)
    assert ci.estimate == pytest.approx((0.75 + 0.0) / 2)  # unweighted, not the pooled 30/45
    assert ci.low <= ci.estimate <= ci.high and ci.n == 45
    # b has no variance, so the interval is half as wide as a's own
    own = bootstrap_ci(a, n_boot=500, seed=0)
    assert ci.half_width == pytest.approx(own.half_width / 2, rel=0.3)


def test_paired_difference():
    rng = np.random.default_rng(4)
    base = rng.random(300)
    better = base + 0.05 + rng.normal(0, 0.01, 300)
    d = paired_bootstrap_diff(better, base, n_boot=500)
    assert d.low > 0  # the paired test resolves a small, consistent gain
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 2], [1, 2, 3])


# ----------------------------------------------------------------------------- intervals over seeds
T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles (tables)


@pytest.mark.parametrize("values, level", [([0.30, 0.35, 0.40], 0.95), ([1, 2, 3, 4, 5], 0.95),
                                           ([0.12, 0.5, 0.07, 0.33], 0.9), (np.linspace(-1, 2, 11), 0.99)])
def test_t_interval_equals_scipy(values, level):
    x = np.asarray(values, dtype=float)
    ci = t_interval(values, level)
    lo, hi = sps.t.interval(level, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert ci.estimate == pytest.approx(x.mean(), abs=1e-12) and ci.n == len(x) and ci.level == level
    assert abs(ci.low - lo) < 1e-12 and abs(ci.high - hi) < 1e-12


def test_t_interval_of_known_per_seed_values():
    ci = t_interval([0.30, 0.35, 0.40])
    half = T_975[2] * 0.05 / math.sqrt(3)
    assert (ci.low, ci.high) == pytest.approx((0.35 - half, 0.35 + half))
    ci5 = t_interval([1, 2, 3, 4, 5], level=0.95)
    assert ci5.high - ci5.estimate == pytest.approx(T_975[4] * np.std([1, 2, 3, 4, 5], ddof=1) / math.sqrt(5))
    one = t_interval([0.4])  # one seed: no interval
    assert one.estimate == 0.4 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    assert t_interval([0.2, None, float("nan"), 0.2]).n == 2  # missing values are dropped
    same = t_interval([0.5, 0.5, 0.5])
    assert same.low == same.high == 0.5
    assert math.isnan(t_interval([]).estimate) and t_interval([]).n == 0


def test_logit_t_interval_stays_in_the_metric_range():
    ci = logit_t_interval([0.2, 0.3, 0.4])
    assert 0 < ci.low < 0.3 < ci.high < 1 and ci.estimate == pytest.approx(0.3)
    # on the logit scale: the plain t-interval of the logits, mapped back
    z = t_interval(np.log(np.array([0.2, 0.3, 0.4]) / (1 - np.array([0.2, 0.3, 0.4]))))
    assert ci.low == pytest.approx(1 / (1 + math.exp(-z.low))) and ci.high == pytest.approx(1 / (1 + math.exp(-z.high)))
    near_zero = [0.0, 0.0, 0.35]
    assert t_interval(near_zero).low < 0 <= logit_t_interval(near_zero).low  # the plain one leaves [0, 1]
    assert np.isnan(logit_t_interval([0.5]).low) and logit_t_interval([0.5]).estimate == 0.5
    assert logit_t_interval([1.0, 1.0, 1.0]).high <= 1.0
    ci = logit_t_interval([2.0, 3.0, 4.0], lo=0.0, hi=10.0)  # a CIDEr-like range
    assert 0 <= ci.low < 3 < ci.high <= 10


# ----------------------------------------------------------------------------- bootstrap over videos
def _one_record_per_video(x):
    return pd.DataFrame({"task": "tvg", "video": [f"v{i:02d}" for i in range(len(x))], "value": x})


def test_video_bootstrap_is_the_percentile_bootstrap_of_scipy():
    """One record per video, one task: the plain percentile bootstrap of the mean; scipy's on the same data
    agrees within Monte-Carlo error (20 000 resamples each: about 0.001 on these bounds)."""
    x = np.random.default_rng(7).random(40)
    ours = video_bootstrap(_one_record_per_video(x), n_boot=20000, seed=3)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                        rng=np.random.default_rng(11)).confidence_interval
    assert ours.estimate == pytest.approx(x.mean(), abs=1e-12) and ours.n == 40 and ours.n_boot == 20000
    assert abs(ours.low - ref.low) < 0.005 and abs(ours.high - ref.high) < 0.005
    assert abs(ours.low - bootstrap_ci(x, n_boot=20000, seed=5).low) < 0.005  # the record bootstrap, too


def test_video_bootstrap_is_reproducible_for_a_seed():
    df = _one_record_per_video(np.random.default_rng(1).random(30))
    assert video_bootstrap(df, n_boot=300, seed=4) == video_bootstrap(df, n_boot=300, seed=4)
    assert video_bootstrap(df, n_boot=300, seed=4) != video_bootstrap(df, n_boot=300, seed=5)
    # the same draws as numpy's generator: resample b takes the videos rng.integers(0, V, (n_boot, V))[b]
    draws = np.random.default_rng(4).integers(0, 30, size=(300, 30))
    boots = df["value"].to_numpy()[draws].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    ci = video_bootstrap(df, n_boot=300, seed=4)
    assert (ci.low, ci.high) == pytest.approx((lo, hi), abs=1e-12)


def test_video_bootstrap_resamples_videos_and_stratifies_tasks():
    # tvg: video a all 1, video b all 0 (3 records each); tal: every record 0.5
    df = pd.DataFrame({"task": ["tvg"] * 6 + ["tal"] * 2, "video": list("aaabbb") + ["a", "b"],
                       "value": [1, 1, 1, 0, 0, 0, 0.5, 0.5]})
    ci = video_bootstrap(df, n_boot=2000, seed=0)
    assert ci.estimate == pytest.approx((0.5 + 0.5) / 2)  # mean of the task means, not of all records
    # resampling *videos*: a tvg resample is 0, 0.5 or 1 (never e.g. 2/3) → quantiles at 0.25 / 0.75 overall
    assert ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.75)
    const = pd.DataFrame({"task": ["rar"] * 4, "video": list("abcd"), "value": [1.0] * 4})
    c = video_bootstrap(const, n_boot=100)
    assert c.estimate == c.low == c.high == 1.0
    empty = video_bootstrap(pd.DataFrame({"task": ["tvg"], "video": ["a"], "value": [float("nan")]}))
    assert math.isnan(empty.estimate) and empty.n == 0


def test_bootstrap_ci_agrees_with_scipy():
    x = np.random.default_rng(9).integers(0, 2, 80).astype(float)
    ours = bootstrap_ci(x, n_boot=20000, seed=2)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                        rng=np.random.default_rng(8)).confidence_interval
    assert abs(ours.low - ref.low) < 0.01 and abs(ours.high - ref.high) < 0.01
