"""Temporal spans: IoU, soft grounding targets, span decoding and formatting.

Taught in lesson ``02_model`` (soft targets, span decoding) and ``06_evaluation`` (IoU).
A span is ``[start, end]`` in seconds with ``start <= end``. At 1 fps frame ``t`` is second ``t``.
All functions are pure; tensors are ``torch`` and arrays are ``numpy``.

>>> iou([0, 10], [5, 15])
0.3333333333333333
>>> decode_span([0.1, 0.9, 0.8, 0.2, 0.95, 0.1])
(4, 4)
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

Span = Sequence[float]


def iou(a: Span, b: Span) -> float:
    """1-D IoU of two spans; 0 when they do not overlap or the union is empty.

    Uses the hull as denominator (equal to the union whenever the spans overlap).

    >>> iou([2, 4], [2, 4])
    1.0
    >>> iou([0, 1], [2, 3])
    0.0
    >>> iou([3, 3], [3, 3])  # zero-length spans: no measurable overlap
    0.0
    """
    inter = min(a[1], b[1]) - max(a[0], b[0])
    hull = max(a[1], b[1]) - min(a[0], b[0])
    if inter <= 0 or hull <= 0:
        return 0.0
    return float(inter / hull)


def iou_matrix(a: Iterable[Span], b: Iterable[Span]) -> np.ndarray:
    """Pairwise IoU, shape ``(len(a), len(b))``.

    >>> iou_matrix([[0, 2], [4, 6]], [[1, 2]]).round(2).tolist()
    [[0.5], [0.0]]
    """
    a = np.asarray(list(a), dtype=float).reshape(-1, 2)
    b = np.asarray(list(b), dtype=float).reshape(-1, 2)
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    hull = np.maximum(a[:, None, 1], b[None, :, 1]) - np.minimum(a[:, None, 0], b[None, :, 0])
    out = np.where((inter > 0) & (hull > 0), inter / np.where(hull > 0, hull, 1.0), 0.0)
    return out


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
