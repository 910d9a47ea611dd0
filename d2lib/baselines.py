"""Reference baselines for temporal grounding: a random span and a duration prior.

Taught in lesson ``06_evaluation``: a metric means little until you know what chance and a
"same span for every query" prior score on it. (A training-free TFVTG-style scorer over the aligned
model's frame–text similarities comes later, with the model.) All functions are pure; randomness
comes only from the ``numpy.random.Generator`` passed in.

>>> import numpy as np
>>> s, e = random_span(30.0, np.random.default_rng(0))
>>> 0.0 <= s <= e <= 30.0
True
>>> prior_span(60.0, [(0, 10, 40), (10, 30, 40)])
[7.5, 30.0]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["random_span", "normalised_mean_span", "prior_span"]


def random_span(duration: float, rng: np.random.Generator) -> list[float]:
    """A random span in ``[0, duration]``: two independent uniform times, sorted (start <= end).

    Under this law the span length has mean ``duration / 3``.

    >>> random_span(10.0, np.random.default_rng(1)) == random_span(10.0, np.random.default_rng(1))
    True
    >>> random_span(0.0, np.random.default_rng(0))
    [0.0, 0.0]
    """
    if duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    a, b = rng.uniform(0.0, float(duration), size=2)
    return [float(min(a, b)), float(max(a, b))]


def normalised_mean_span(train_spans: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Mean of ``(start / duration, end / duration)`` over training GT, each clipped to ``[0, 1]``.

    ``train_spans``: sequence of ``(start, end, video_duration)``; reversed spans are reordered and
    zero-duration videos skipped. Clipping handles annotations that end past the video (Charades-STA
    has hundreds).

    >>> normalised_mean_span([(0, 10, 40), (10, 30, 40)])
    (0.125, 0.5)
    >>> normalised_mean_span([(20, 35, 30)])  # end past the video: clipped to 1
    (0.6666666666666666, 1.0)
    """
    rows = []
    for s, e, d in train_spans:
        if d <= 0:
            continue
        s, e = (s, e) if s <= e else (e, s)
        rows.append((min(max(s / d, 0.0), 1.0), min(max(e / d, 0.0), 1.0)))
    if not rows:
        raise ValueError("no training spans with a positive duration")
    arr = np.asarray(rows, dtype=float)
    return float(arr[:, 0].mean()), float(arr[:, 1].mean())


def prior_span(duration: float, train_spans: Sequence[Sequence[float]]) -> list[float]:
    """The duration prior: :func:`normalised_mean_span` of the training GT scaled to ``duration``.

    ``train_spans``: sequence of ``(start, end, video_duration)``. The same relative span for every
    query — what a grounding model scores if it ignores the video and the query.

    >>> prior_span(30.0, [(0, 10, 40), (10, 30, 40)])
    [3.75, 15.0]
    """
    ns, ne = normalised_mean_span(train_spans)
    return [ns * float(duration), ne * float(duration)]
