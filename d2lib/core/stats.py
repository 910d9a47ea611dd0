"""Uncertainty of benchmark numbers: every confidence interval of the library.

Taught in lesson ``06_evaluation`` (headline numbers ± 95% CI) and used again by the ablations
(``07_ablations``: variants × seeds) and the peers (``08_peers``). Two kinds of interval:

* **over test samples** — a benchmark score is a statistic of a finite sample of test queries;
  resampling them with replacement shows how much it would move on another draw of the same size. The
  percentile interval is the ``(1−level)/2`` and ``(1+level)/2`` quantiles of the statistic over
  ``n_boot`` resamples: :func:`bootstrap_ci` (records), :func:`mean_of_means_ci` (stratified by task),
  :func:`paired_bootstrap_diff` (two systems on the same records), :func:`video_bootstrap` (whole test
  videos, all their records kept: records of one video are correlated);
* **over training seeds** — how much a number moves when the training is repeated: the Student-t
  interval :func:`t_interval` (mean ± t·sd/√n), and :func:`logit_t_interval`, the same on the logit
  scale of the metric's range so that a score in [0, 1] never gets an interval outside it.

All functions are pure: randomness comes only from ``numpy.random.default_rng(seed)``.

>>> ci = bootstrap_ci([0, 1, 1, 1], n_boot=2000, seed=0)
>>> ci.estimate, ci.low <= ci.estimate <= ci.high
(0.75, True)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["CI", "t_interval", "logit_t_interval", "bootstrap_ci", "bootstrap_indices", "mean_of_means_ci",
           "paired_bootstrap_diff", "video_bootstrap"]


@dataclass(frozen=True)
class CI:
    """A point estimate with a percentile-bootstrap interval ``[low, high]`` at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    n_boot: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` row indices drawn uniformly with replacement (the resamples).

    >>> bootstrap_indices(3, 2, seed=0).shape
    (2, 3)
    """
    if n <= 0:
        raise ValueError("cannot bootstrap an empty sample")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _check(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def bootstrap_ci(values: Sequence | np.ndarray, statistic: Callable[[np.ndarray], float] | None = None,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap CI of ``statistic(values)`` resampling the **rows** of ``values``.

    ``values``: per-sample scores ``(n,)`` (e.g. 1/0 hits, IoUs, per-sample F1), or ``(n, k)`` rows
    for statistics of several columns (e.g. per-video precision and recall → F1 of the means).
    ``statistic`` maps a resampled array to a number; default the mean (vectorised). The estimate
    is ``statistic(values)`` on the original sample.

    >>> ci = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], seed=1)
    >>> round(ci.estimate, 2), 0.38 < ci.low < 0.45, 0.55 < ci.high < 0.62
    (0.5, True, True)
    >>> f1 = lambda pr: 2 * pr[:, 0].mean() * pr[:, 1].mean() / (pr[:, 0].mean() + pr[:, 1].mean())
    >>> bootstrap_ci([[1.0, 0.5], [1.0, 0.5]], f1, n_boot=10).estimate  # every resample is the same
    0.6666666666666666
    """
    _check(level, n_boot)
    x = np.asarray(values, dtype=float)
    n = len(x)
    idx = bootstrap_indices(n, n_boot, seed)
    if statistic is None:
        estimate = float(x.mean(axis=0)) if x.ndim == 1 else None
        if estimate is None:
            raise ValueError("the default statistic (mean) needs 1-D values; pass a statistic for rows")
        boots = x[idx].mean(axis=1)
    else:
        estimate = float(statistic(x))
        boots = np.array([statistic(x[i]) for i in idx], dtype=float)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return CI(estimate, float(lo), float(hi), level, n, n_boot)


def mean_of_means_ci(groups: Sequence[Sequence[float]], n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> CI:
    """CI of the unweighted mean of group means (e.g. E.T. Bench's merged "F1(gnd)" = mean of the
    per-task F1s), resampling **within** each group (a stratified bootstrap: every resample keeps each
    task's size). ``n`` in the result is the total number of samples.

    >>> ci = mean_of_means_ci([[1, 1, 1, 1], [0, 0]], n_boot=200)
    >>> ci.estimate, ci.low, ci.high  # no variation inside either group
    (0.5, 0.5, 0.5)
    """
    _check(level, n_boot)
    groups = [np.asarray(g, dtype=float) for g in groups]
    if not groups or any(g.ndim != 1 or g.size == 0 for g in groups):
        raise ValueError("need one or more non-empty 1-D groups")
    rng = np.random.default_rng(seed)
    boots = np.mean([g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1) for g in groups], axis=0)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(np.mean([g.mean() for g in groups])), float(lo), float(hi), level,
              int(sum(g.size for g in groups)), n_boot)


def paired_bootstrap_diff(a: Sequence, b: Sequence, n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> CI:
    """CI of ``mean(a) − mean(b)`` for two systems scored on the **same** samples (resampled together,
    so the per-sample difficulty cancels). An interval that excludes 0 is a difference the test set
    resolves.

    >>> paired_bootstrap_diff([1, 1, 0, 1], [0, 1, 0, 0], n_boot=500).estimate
    0.5
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_boot=n_boot, level=level, seed=seed)


def t_interval(values: Sequence[float], level: float = 0.95):
    """Student-t interval of the mean of ``values`` (e.g. one number per seed): mean ± t·sd/√n with
    n − 1 degrees of freedom. With one value the interval is undefined (NaN). Returns a
    :class:`CI` (``n_boot`` = 0).

    >>> t = t_interval([0.2, 0.3, 0.4])
    >>> round(t.estimate, 3), round(t.low, 3), round(t.high, 3)  # 0.3 ± 4.303 · 0.1/√3
    (0.3, 0.052, 0.548)
    """
    from scipy import stats as sps

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return CI(math.nan, math.nan, math.nan, level, 0, 0)
    mean = float(x.mean())
    if x.size < 2:
        return CI(mean, math.nan, math.nan, level, 1, 0)
    half = float(sps.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return CI(mean, mean - half, mean + half, level, int(x.size), 0)


def logit_t_interval(values: Sequence[float], level: float = 0.95, lo: float = 0.0, hi: float = 1.0,
                     eps: float = 1e-3) -> CI:
    """t-interval over ``values`` (e.g. one score per seed) on the logit scale of ``[lo, hi]``.

    Each value is rescaled to ``u = (x − lo)/(hi − lo)``, clipped to ``[eps, 1 − eps]`` (a score of
    exactly 0 or 1 counts as 0.001 or 0.999 of the range), mapped to ``logit(u)``; the interval is
    mean ± t₍ₙ₋₁₎·sd/√n there, mapped back. The estimate is the plain mean of ``values`` (what tables
    show); where it falls outside the back-mapped interval (skewed seeds) the interval is widened to
    include it. One value: no interval (NaN). Returns a :class:`CI` (``n_boot`` = 0).

    >>> ci = logit_t_interval([0.0, 0.02, 0.3])  # the plain t-interval of these runs below 0
    >>> 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0, t_interval([0.0, 0.02, 0.3]).low < 0
    (True, True)
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size < 2:
        return t_interval(x, level)  # no values: all NaN; one value: no interval
    mean = float(x.mean())
    u = np.clip((x - lo) / (hi - lo), eps, 1 - eps)
    z = t_interval(np.log(u / (1 - u)), level)  # the plain t-interval, on the logit scale
    back = lambda v: lo + (hi - lo) / (1 + math.exp(-v))  # noqa: E731
    return CI(mean, min(back(z.low), mean), max(back(z.high), mean), level, int(x.size), 0)


def video_bootstrap(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap CI over **videos** of a per-record mean, stratified by task: the statistic
    is the mean over tasks of each task's mean (as E.T. Bench merges F1(gnd)). ``values``: DataFrame
    ``task, video, value`` (one row per record; NaN values are dropped). Videos are resampled with
    replacement and keep all their records; a resample in which a task has no record is left out. With
    one record per video and one task this is the plain percentile bootstrap of the mean.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"task": ["tvg"] * 4, "video": ["a", "a", "b", "b"], "value": [1.0, 1.0, 0.0, 0.0]})
    >>> ci = video_bootstrap(df, n_boot=500)
    >>> ci.estimate, ci.low, ci.high
    (0.5, 0.0, 1.0)
    """
    df = values[np.isfinite(values["value"].astype(float))]
    if df.empty:
        return CI(math.nan, math.nan, math.nan, level, 0, n_boot)
    videos = sorted(df["video"].unique())
    pos = {v: i for i, v in enumerate(videos)}
    V = len(videos)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, V, size=(n_boot, V))
    W = np.zeros((n_boot, V))  # W[b, v]: how often resample b drew video v
    np.add.at(W, (np.repeat(np.arange(n_boot), V), draws.ravel()), 1.0)
    est, boots = [], []
    for _, d in df.groupby("task", sort=True):
        vi = d["video"].map(pos).to_numpy()
        S = np.bincount(vi, weights=d["value"].astype(float).to_numpy(), minlength=V)  # per-video sums
        C = np.bincount(vi, minlength=V).astype(float)  # per-video record counts
        est.append(S.sum() / C.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            boots.append((W @ S) / (W @ C))
    b = np.mean(boots, axis=0)
    b = b[np.isfinite(b)]
    lo, hi = (np.quantile(b, [(1 - level) / 2, (1 + level) / 2]) if b.size else (math.nan, math.nan))
    return CI(float(np.mean(est)), float(lo), float(hi), level, int(len(df)), n_boot)
