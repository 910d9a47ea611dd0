"""d2lib.core.stats: bootstrap confidence intervals (lesson 06_evaluation; ablations use them too)."""
import numpy as np
import pytest

from d2lib.core.stats import bootstrap_ci, mean_of_means_ci, paired_bootstrap_diff


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
