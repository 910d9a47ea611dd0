"""Figures for the lessons (seaborn/matplotlib; DVC's HTML plots would need a CDN).

Frame strips and span timelines first appear in lesson ``01_video_data``; heat-maps in
``02_model``; loss curves in ``03_align``/``04_sft_lora``; result bars in ``06_evaluation``.
Every function draws on a given ``ax`` (or makes one) and returns the figure or axes, so the
widgets of ``d2lib.widgets`` can redraw them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .spans import format_span

PALETTE = sns.color_palette("colorblind")


def frame_strip(frames: np.ndarray, seconds: Sequence[float] | None = None, max_frames: int = 16,
                ax=None, title: str | None = None):
    """Show up to ``max_frames`` evenly spaced frames side by side, labelled with their second.

    ``frames``: uint8 ``(T, H, W, 3)``; ``seconds``: ``(T,)`` (default: frame t = second t).
    """
    T = len(frames)
    seconds = np.arange(T) if seconds is None else np.asarray(seconds)
    pick = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    strip = np.concatenate([np.pad(frames[i], ((0, 0), (0, 2), (0, 0)), constant_values=255) for i in pick], axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(1.0 * len(pick), 16), 1.6))
    ax.imshow(strip, interpolation="nearest")
    w = frames.shape[2] + 2
    ax.set_xticks([w * j + w / 2 - 1 for j in range(len(pick))])
    ax.set_xticklabels([f"{seconds[i]:g}s" for i in pick], fontsize=7)
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def timeline(tracks: Mapping[str, Sequence[Sequence[float]]], duration: float, ax=None,
             labels: Mapping[str, Sequence[str]] | None = None, title: str | None = None):
    """One horizontal lane per track (e.g. ``{"GT": [[2, 5]], "full": [[3, 6]]}``), spans as bars.

    ``labels`` optionally gives a short text per span (captions) drawn inside the bars.
    """
    names = list(tracks)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 0.8))
    for row, name in enumerate(names):
        colour = PALETTE[row % len(PALETTE)]
        for j, span in enumerate(tracks[name] or []):
            s, e = float(span[0]), float(span[1])
            ax.barh(row, max(e - s, 0.3), left=s, height=0.6, color=colour, alpha=0.8)
            text = labels[name][j] if labels and name in labels and j < len(labels[name]) else None
            if text:
                ax.text(s + 0.2, row, text, va="center", fontsize=6, clip_on=True)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, duration)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def video_card(frames: np.ndarray, tracks: Mapping[str, Sequence[Sequence[float]]], duration: float,
               labels=None, title: str | None = None):
    """A frame strip above a span timeline for one video; returns the figure."""
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(12, 1.8 + 0.45 * len(tracks) + 0.8),
                                 gridspec_kw={"height_ratios": [1.6, 0.45 * len(tracks) + 0.8]})
    frame_strip(frames, ax=a0, title=title)
    timeline(tracks, duration, ax=a1, labels=labels)
    fig.tight_layout()
    return fig


def heatmap(scores: np.ndarray, gt_spans: Sequence[Sequence[float]] | None = None, ax=None,
            row_labels: Sequence[str] | None = None, title: str | None = None, cmap: str = "viridis"):
    """Events × frames similarity heat-map (``scores``: ``(K, T)``), GT spans outlined in white."""
    scores = np.asarray(scores)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.5 * len(scores) + 1))
    sns.heatmap(scores, ax=ax, cmap=cmap, cbar=True, xticklabels=5,
                yticklabels=row_labels if row_labels is not None else True)
    for k, span in enumerate(gt_spans or []):
        ax.add_patch(plt.Rectangle((span[0], k), span[1] - span[0] + 1, 1, fill=False, ec="white", lw=1.5))
    ax.set_xlabel("frame (= second)")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def loss_curves(df, x: str = "step", ys: Sequence[str] = ("loss",), ax=None, title: str | None = None):
    """Loss curves from a long or wide DataFrame (columns ``x`` and each of ``ys``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    for y in ys:
        if y in df:
            sns.lineplot(data=df, x=x, y=y, ax=ax, label=y)
    ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def span_label(span) -> str:
    """``"s - e"`` as shown to users."""
    return format_span(span)
