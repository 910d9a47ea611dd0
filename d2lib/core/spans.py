"""Temporal spans: IoU, non-maximum suppression, soft grounding targets, span decoding and formatting.

Taught in lesson ``02_model`` (soft targets, span decoding) and ``06_evaluation`` (IoU, NMS).
A span is ``[start, end]`` in seconds with ``start <= end``. At 1 fps frame ``t`` is second ``t``.
All functions are pure; tensors are ``torch`` and arrays are ``numpy``.

**IoU, exactly.** Every IoU in the library — every protocol of :mod:`d2lib.evaluation.metrics`, the one greedy
:func:`nms` (TFVTG and UniVTG proposals), the preference negatives — goes through :func:`iou` /
:func:`iou_value` / :func:`iou_matrix`. A NaN span end is an error in every arithmetic (``ValueError``
naming the spans); an infinite one gives no overlap. By
default (``arithmetic="exact"``) the IoU is computed on the exact rationals the span ends stand for
(:func:`exact`: a float stands for its shortest decimal, i.e. the number the parser read, ``20.2`` =
101/5), so a threshold is decided exactly (:func:`reaches`): ``GT [22, 28]`` vs ``20.2 - 25.9`` has IoU
3.9 / 7.8 = 1/2 and *reaches* 0.5, where float64 arithmetic gives 0.4999999999999998. Returned floats
(:func:`iou`, mIoU) are the exact value correctly rounded. The published evaluators' own arithmetic can be
selected by name where a number must match a script bit for bit (:data:`ARITHMETICS`):

* ``"float64"`` — ``inter / hull`` in float64 on the float inputs (TimeChat's ``eval_tvg.py``, D²VLM's
  Charades script; d2lib before exact ties);
* ``"float32"`` — nncore's ``temporal_iou`` as E.T. Bench's ``compute_metrics.py`` and D²VLM's
  ``new_compute_metrics.py`` run it: inputs cast to float32, ``inter / (len_a + len_b - inter)`` in
  float32 (a tie then hits or misses by the rounding of the value: see ``docs/METRICS.md``).

>>> iou([0, 10], [5, 15])
0.3333333333333333
>>> iou([22, 28], [20.2, 25.9]), iou([22, 28], [20.2, 25.9], "float64"), iou([22, 28], [20.2, 25.9], "float32")
(0.5, 0.4999999999999998, 0.5)
>>> decode_span([0.1, 0.9, 0.8, 0.2, 0.95, 0.1])
(4, 4)
"""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import torch

Span = Sequence[float]

ARITHMETICS = ("exact", "float64", "float32")


def _check_arithmetic(arithmetic: str) -> None:
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")


@lru_cache(maxsize=1 << 16)
def _float_ratio(x: float) -> tuple[int, int]:
    f = Fraction(repr(x))  # the shortest decimal that reads back as x: what the text said
    return f.numerator, f.denominator


def _ratio(x) -> tuple[int, int] | None:
    """``(numerator, denominator)`` of :func:`exact`, or ``None`` for ±inf; ``ValueError`` for NaN."""
    if isinstance(x, Fraction):
        return x.numerator, x.denominator
    if isinstance(x, (int, np.integer)):
        return int(x), 1
    if isinstance(x, Decimal):
        if x.is_nan():
            raise ValueError(f"not a number (NaN): {x!r}")
        if not x.is_finite():
            return None
        f = Fraction(x)
        return f.numerator, f.denominator
    if isinstance(x, str):
        try:
            f = Fraction(x.strip())
            return f.numerator, f.denominator
        except ValueError:  # "inf", "nan" (finite garbage raises in float() below)
            pass
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"not a number (NaN): {x!r}")
    return _float_ratio(x) if math.isfinite(x) else None


def exact(x) -> Fraction:
    """The exact rational a span end (or a threshold) stands for.

    A float stands for its shortest round-tripping decimal (``repr``) — the decimal a parser read from
    the text, not the nearest binary double; ints, :class:`~fractions.Fraction`, :class:`~decimal.Decimal`
    and decimal strings are taken as they are. Non-finite values raise ``ValueError``.

    >>> exact(20.2), exact(0.7), exact("25.90"), exact(3)
    (Fraction(101, 5), Fraction(7, 10), Fraction(259, 10), Fraction(3, 1))
    """
    r = _ratio(x)
    if r is None:
        raise ValueError(f"not a finite number: {x!r}")
    return Fraction(*r)


def _nan_error(a: Span, b: Span) -> ValueError:
    return ValueError(f"IoU of spans with a NaN end: {list(a)!r} and {list(b)!r} (a span end must be a number)")


def _is_nan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _check_not_nan(a: Span, b: Span) -> None:
    """``ValueError`` naming both spans when an end is NaN."""
    if any(_is_nan(v) for v in (a[0], a[1], b[0], b[1])):
        raise _nan_error(a, b)


def _iou_parts(a: Span, b: Span) -> tuple[int, int]:
    """Exact IoU as integers ``(inter, hull)`` on a common denominator; ``(0, 1)`` without overlap.

    An infinite end gives no measurable overlap: ``(0, 1)``; a NaN end raises ``ValueError``.
    """
    try:
        rs = [_ratio(v) for v in (a[0], a[1], b[0], b[1])]
    except ValueError:
        _check_not_nan(a, b)
        raise
    if any(r is None for r in rs):
        return 0, 1
    (n0, d0), (n1, d1), (m0, e0), (m1, e1) = rs
    if d0 == d1 == e0 == e1:
        a0, a1, b0, b1 = n0, n1, m0, m1
    else:
        den = math.lcm(d0, d1, e0, e1)
        a0, a1, b0, b1 = n0 * (den // d0), n1 * (den // d1), m0 * (den // e0), m1 * (den // e1)
    inter = min(a1, b1) - max(a0, b0)
    hull = max(a1, b1) - min(a0, b0)
    if inter <= 0 or hull <= 0:
        return 0, 1
    return inter, hull


def iou_exact(a: Span, b: Span) -> Fraction:
    """Exact 1-D IoU ``inter / hull`` of the spans' decimal values (:func:`exact`); 0 without overlap.

    >>> iou_exact([22, 28], [20.2, 25.9]), iou_exact([10, 20], [10, 17]), iou_exact([0, 1], [2, 3])
    (Fraction(1, 2), Fraction(7, 10), Fraction(0, 1))
    """
    inter, hull = _iou_parts(a, b)
    return Fraction(inter, hull)


def _iou_float64(a: Span, b: Span) -> float:
    _check_not_nan(a, b)
    inter = min(a[1], b[1]) - max(a[0], b[0])
    hull = max(a[1], b[1]) - min(a[0], b[0])
    if inter <= 0 or hull <= 0:
        return 0.0
    return float(inter / hull)


def _iou_float32(a: Span, b: Span) -> float:
    """nncore ``temporal_iou`` on float32 tensors: ``inter = clamp(min(e) - max(s), 0)``,
    ``union = len_a + len_b - inter``, all in float32 (0/0 is NaN, as there)."""
    _check_not_nan(a, b)
    f = np.float32
    with np.errstate(all="ignore"):
        a0, a1, b0, b1 = f(a[0]), f(a[1]), f(b[0]), f(b[1])
        inter = max(min(a1, b1) - max(a0, b0), f(0))
        return float(inter / ((a1 - a0) + (b1 - b0) - inter))


def iou_value(a: Span, b: Span, arithmetic: str = "exact") -> Fraction | float:
    """The IoU a threshold is decided on: a :class:`~fractions.Fraction` (``"exact"``) or the float the
    named published arithmetic produces (``"float64"``, ``"float32"``, see the module docstring).
    Compare it with :func:`reaches`; ``float(...)`` of it is :func:`iou`.

    >>> iou_value([22, 28], [20.2, 25.9])
    Fraction(1, 2)
    """
    if arithmetic == "exact":
        return iou_exact(a, b)
    if arithmetic == "float64":
        return _iou_float64(a, b)
    if arithmetic == "float32":
        return _iou_float32(a, b)
    _check_arithmetic(arithmetic)


def iou(a: Span, b: Span, arithmetic: str = "exact") -> float:
    """1-D IoU of two spans as a float; 0 when they do not overlap or the union is empty.

    Uses the hull as denominator (equal to the union whenever the spans overlap). ``"exact"`` (default)
    returns the exact value correctly rounded, so for decimal spans ``iou(a, b) >= t`` with a threshold
    literal such as ``0.7`` decides exactly as :func:`reaches` does: rounding is monotone, and a decimal
    IoU that is not equal to ``t`` is farther from it than half an ulp (true while ``10 * hull`` in units
    of the spans' last decimal stays below ~``1e16``, e.g. 2-decimal spans up to ~10¹³ s).

    >>> iou([2, 4], [2, 4])
    1.0
    >>> iou([0, 1], [2, 3])
    0.0
    >>> iou([3, 3], [3, 3])  # zero-length spans: no measurable overlap
    0.0
    >>> iou([10, 20], [10, 17]) >= 0.7  # an exact tie, decided exactly
    True
    >>> iou([0, float("nan")], [0, 1])  # every arithmetic
    Traceback (most recent call last):
        ...
    ValueError: IoU of spans with a NaN end: [0, nan] and [0, 1] (a span end must be a number)
    """
    if arithmetic == "exact":
        inter, hull = _iou_parts(a, b)
        return inter / hull  # int / int: correctly rounded
    return float(iou_value(a, b, arithmetic))


def iou_values(a: Iterable[Span], b: Iterable[Span], arithmetic: str = "exact") -> list[list]:
    """Pairwise :func:`iou_value`, a list of ``len(a)`` rows of ``len(b)`` values.

    >>> iou_values([[0, 2], [4, 6]], [[1, 2]])
    [[Fraction(1, 2)], [Fraction(0, 1)]]
    """
    _check_arithmetic(arithmetic)
    b = list(b)
    return [[iou_value(x, y, arithmetic) for y in b] for x in a]


def iou_matrix(a: Iterable[Span], b: Iterable[Span], arithmetic: str = "exact") -> np.ndarray:
    """Pairwise :func:`iou` as floats, shape ``(len(a), len(b))``.

    >>> iou_matrix([[0, 2], [4, 6]], [[1, 2]]).round(2).tolist()
    [[0.5], [0.0]]
    """
    _check_arithmetic(arithmetic)
    a = [list(x) for x in a]
    b = [list(y) for y in b]
    if arithmetic == "float64":
        a = np.asarray(a, dtype=float).reshape(-1, 2)
        b = np.asarray(b, dtype=float).reshape(-1, 2)
        if np.isnan(a).any() or np.isnan(b).any():
            raise ValueError("iou_matrix: a span end is NaN (a span end must be a number)")
        inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
        hull = np.maximum(a[:, None, 1], b[None, :, 1]) - np.minimum(a[:, None, 0], b[None, :, 0])
        return np.where((inter > 0) & (hull > 0), inter / np.where(hull > 0, hull, 1.0), 0.0)
    out = np.zeros((len(a), len(b)))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i, j] = iou(x, y, arithmetic)
    return out


def nms(spans: Sequence[Span] | np.ndarray, scores: Sequence[float] | np.ndarray, iou_threshold: float,
        top_k: int | None = None) -> list[int]:
    """Greedy non-maximum suppression: the indices of the kept spans, best first.

    ``spans``: shape ``(N, 2)``; ``scores``: shape ``(N,)`` → indices, shape ``(K,)`` with
    ``K <= min(N, top_k)``. Spans are visited by decreasing score — equal scores in index order (a stable
    sort, so the order never depends on a sort implementation) — and a span is kept when its :func:`iou`
    (exact) with every span kept so far is ``<= iou_threshold``; the visit stops once ``top_k`` are kept
    (``None``: no limit). Raises ``ValueError`` for a NaN score, ``top_k < 1`` or mismatched lengths.

    >>> nms([[0, 10], [1, 10], [20, 30], [0, 9]], [0.9, 0.8, 0.7, 0.9], iou_threshold=0.5)
    [0, 2]
    >>> nms([[0, 10], [1, 10], [20, 30], [0, 9]], [0.9, 0.8, 0.7, 0.9], iou_threshold=0.95, top_k=2)
    [0, 3]
    """
    s = np.asarray(spans)
    sc = np.asarray(scores, dtype=float).reshape(-1)
    if s.size == 0 and sc.size == 0:
        return []
    if s.ndim != 2 or s.shape[1] != 2 or s.shape[0] != sc.shape[0]:
        raise ValueError(f"nms: spans must have shape (N, 2) and scores (N,), got {s.shape} and {sc.shape}")
    if np.isnan(sc).any():
        raise ValueError(f"nms: score {int(np.flatnonzero(np.isnan(sc))[0])} is NaN")
    if top_k is not None and top_k < 1:
        raise ValueError(f"nms: top_k must be >= 1 (or None), got {top_k}")
    rows = s.tolist()
    kept: list[int] = []
    for i in np.argsort(-sc, kind="stable").tolist():
        if all(iou(rows[i], rows[k]) <= iou_threshold for k in kept):
            kept.append(i)
            if top_k is not None and len(kept) >= top_k:
                break
    return kept


def threshold_value(threshold: float, arithmetic: str = "exact", float32_threshold: bool = False):
    """A threshold as a convention compares it: its exact decimal (``"exact"``), the float itself, or —
    ``float32_threshold``, E.T. Bench's tal, which compares float32 tensors with a Python scalar — the
    float32 nearest to it (``0.7`` → 0.699999988…).

    >>> threshold_value(0.7), threshold_value(0.7, "float32"), threshold_value(0.7, "float32", True)
    (Fraction(7, 10), 0.7, 0.699999988079071)
    """
    _check_arithmetic(arithmetic)
    if arithmetic == "exact":
        return exact(threshold)
    if float32_threshold and arithmetic == "float32":
        return float(np.float32(threshold))
    return float(threshold)


def reaches(value, threshold: float, arithmetic: str = "exact", strict: bool = False,
            float32_threshold: bool = False) -> bool:
    """Is an IoU (from :func:`iou_value` with the same ``arithmetic``) ``>= threshold`` (``> threshold``
    with ``strict``)? Exactly decided for ``"exact"``; as the named script decides otherwise.

    >>> v = iou_value([10, 20], [10, 17])  # exactly 7/10
    >>> reaches(v, 0.7), reaches(v, 0.7, strict=True)
    (True, False)
    >>> v32 = iou_value([10, 20], [10, 17], "float32")  # float32 rounds 0.7 down
    >>> reaches(v32, 0.7, "float32"), reaches(v32, 0.7, "float32", float32_threshold=True)
    (False, True)
    """
    t = threshold_value(threshold, arithmetic, float32_threshold)
    if arithmetic == "exact":
        value = value if isinstance(value, Fraction) else exact(value)
    return bool(value > t) if strict else bool(value >= t)


def clip_span(span: Span, duration: float) -> tuple[list[float], bool]:
    """Clip a span to ``[0, duration]``; returns ``(span, changed)``.

    >>> clip_span([-1, 5], 4.0)
    ([0.0, 4.0], True)
    """
    s, e = float(span[0]), float(span[1])
    cs, ce = min(max(s, 0.0), duration), min(max(e, 0.0), duration)
    return [cs, ce], (cs, ce) != (s, e)


def order_span(span: Span) -> tuple[list[float], bool]:
    """Swap start and end if reversed; returns ``(span, swapped)``.

    >>> order_span([5, 2])
    ([2.0, 5.0], True)
    """
    s, e = float(span[0]), float(span[1])
    return ([e, s], True) if s > e else ([s, e], False)


def span_to_frames(span: Span, n_frames: int, fps: float = 1.0) -> tuple[int, int]:
    """Inclusive frame-index range covered by a span in seconds, clipped to the video.

    Frame ``t`` is sampled at second ``t / fps``. Start rounds to the nearest frame,
    end too; the result always has ``first <= last``.

    >>> span_to_frames([2.4, 5.6], 10)
    (2, 6)
    >>> span_to_frames([8, 30], 10)
    (8, 9)
    """
    first = int(round(float(span[0]) * fps))
    last = int(round(float(span[1]) * fps))
    first = min(max(first, 0), n_frames - 1)
    last = min(max(last, first), n_frames - 1)
    return first, last


def frames_to_span(first: int, last: int, fps: float = 1.0) -> list[float]:
    """Seconds of an inclusive frame range (``frame t`` = second ``t/fps``).

    >>> frames_to_span(3, 7)
    [3.0, 7.0]
    """
    return [first / fps, last / fps]


def soft_target(span: Span, n_frames: int, alpha: float = 2.0, fps: float = 1.0) -> torch.Tensor:
    """Soft grounding target ``y_t = alpha ** -d(t, span)``, shape ``(n_frames,)``.

    ``d`` is the distance in frames from ``t`` to the (frame-rounded) span, 0 inside.

    >>> soft_target([2, 3], 6).tolist()
    [0.25, 0.5, 1.0, 1.0, 0.5, 0.25]
    """
    first, last = span_to_frames(span, n_frames, fps)
    t = torch.arange(n_frames, dtype=torch.float32)
    d = torch.clamp(first - t, min=0) + torch.clamp(t - last, min=0)
    return torch.pow(torch.tensor(float(alpha)), -d)


def soft_targets(spans: Sequence[Span], n_frames: int, alpha: float = 2.0, fps: float = 1.0) -> torch.Tensor:
    """Stack of :func:`soft_target`, shape ``(K, n_frames)``."""
    if len(spans) == 0:
        return torch.zeros(0, n_frames)
    return torch.stack([soft_target(s, n_frames, alpha, fps) for s in spans])


def decode_span(probs, ratio: float = 0.6) -> tuple[int, int]:
    """D²VLM span decoding: frames with ``p >= ratio * max(p)``, split into contiguous runs,
    return the inclusive ``(first, last)`` frame of the run with the highest mean probability
    (ties go to the earlier run).

    ``probs``: shape ``(T,)``, per-frame probabilities (any real scores work).

    >>> decode_span([0.2, 0.9, 0.9, 0.1, 0.9, 0.9])
    (1, 2)
    >>> decode_span([0.0, 0.0, 0.0])
    (0, 2)
    """
    p = np.asarray(probs.detach().float().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"decode_span expects a non-empty 1-D array, got shape {p.shape}")
    keep = p >= ratio * p.max()
    best, best_mean = (0, 0), -np.inf
    t = 0
    while t < p.size:
        if not keep[t]:
            t += 1
            continue
        start = t
        while t + 1 < p.size and keep[t + 1]:
            t += 1
        mean = p[start : t + 1].mean()
        if mean > best_mean:
            best, best_mean = (start, t), mean
        t += 1
    return best


def format_seconds(x: float) -> str:
    """Seconds as ``m:ss`` (or ``h:mm:ss``) for people.

    >>> format_seconds(75)
    '1:15'
    >>> format_seconds(3725.4)
    '1:02:05'
    """
    x = int(round(x))
    h, rem = divmod(x, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_span(span: Span) -> str:
    """How a span is written in responses: ``"s - e"`` with integers when exact.

    >>> format_span([3, 7.5])
    '3 - 7.5'
    """
    def fmt(v: float) -> str:
        v = float(v)
        return str(int(v)) if v.is_integer() else f"{v:.1f}"

    return f"{fmt(span[0])} - {fmt(span[1])}"
