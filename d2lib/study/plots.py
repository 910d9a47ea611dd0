"""Figures for the lessons (seaborn/matplotlib; ``dvc plots show`` draws the pipeline's CSVs as vega).

Frame strips and span timelines first appear in lesson ``01_video_data``; heat-maps in
``02_model``; loss curves in ``03_align``/``04_sft_lora``; result bars in ``06_evaluation``; the
ablation's figures in ``07_ablations``. Every function draws on a given ``ax`` (or makes one) and
returns the figure or axes, so the widgets of ``d2lib.study.widgets`` can redraw them; a figure the
pipeline keeps is written atomically by :func:`d2lib.core.io.save_figure` (:func:`save_ablation_figures`).

**One colour per variant.** :data:`VARIANT_COLORS` fixes the colour of every ablation row and peer
system by its name, and :func:`variant_color` is the one lookup the lessons, the explorer, the DVC
plot template (``.dvc/plots/variant_bars.json``) and the book use: a variant keeps its colour whatever
else is selected. Ground truth is :data:`GT_COLOR`.

>>> variant_color("factorized") == variant_color("factorized") == VARIANT_COLORS["factorized"]
True
>>> variant_color("full (+consistency)") == VARIANT_COLORS["full"]  # a label resolves to its row
True

**Intervals that stay in the metric's range.** :func:`seed_intervals` draws the t-interval over seeds
computed on the logit scale of the metric's range (:func:`metric_range`) and mapped back
(:func:`d2lib.core.stats.logit_t_interval`), so a score in [0, 1] never gets an interval below 0 or above
1 (the plain t-interval of 3 seeds can).
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from d2lib.core import io
from d2lib.core.spans import format_span
from d2lib.core.stats import logit_t_interval

PALETTE = sns.color_palette("colorblind")

# --- one colour per variant ------------------------------------------------------------------------
GT_COLOR = "#3c3c3c"
# Ablation rows: seaborn's colour-blind palette (its grey left out, next to GT's) and one from its
# "bright" palette; peer systems: seaborn's "dark" palette. Keyed by the row's params name
# (d2lib.study.ablation / d2lib.study.peers); tests/test_widgets.py fails when a row has no colour of its own.
VARIANT_COLORS = {
    "coupled": "#ca9161",
    "factorized": "#de8f05",
    "factorized_interleaved": "#ece133",
    "full": "#0173b2",
    "consistency_from_start": "#8b2be2",
    "full_dpo": "#56b4e9",
    "full_fpo": "#029e73",
    "no_visual_injection": "#cc78bc",
    "frame_level": "#d55e00",
    "text_timestamps": "#fbafe4",
    "univtg": "#001c7f",
    "numpro": "#b1400d",
    "timemarker": "#12711c",
    "timechat": "#8c0800",
    "vtimellm": "#591e71",
    "vtgllm": "#592f0d",
    "diff_fp": "#a23582",
    "moviechat": "#b8850a",
    "stc": "#006374",
}
_FALLBACK = sns.color_palette("husl", 24).as_hex()


def _row_name(name: str) -> str:
    """The row (params name) a shown label stands for; ``name`` itself when it is no known label."""
    if name in VARIANT_COLORS:
        return name
    from d2lib.study import ablation

    tables = [ablation.LABELS]
    peers = sys.modules.get("d2lib.study.peers")  # imports torch: used only when the caller has loaded it
    if peers is not None:
        tables.append(peers.LABELS)
    for labels in tables:
        for row, label in labels.items():
            if label == name:
                return row
    return name


def variant_color(name: str) -> str:
    """The colour (hex) of a variant, by its row name or its label; ``"GT"`` → :data:`GT_COLOR`. A name
    not in :data:`VARIANT_COLORS` gets a fixed colour from its CRC32 — never from its position."""
    if name in ("GT", "ground truth"):
        return GT_COLOR
    row = _row_name(name)
    if row in VARIANT_COLORS:
        return VARIANT_COLORS[row]
    return _FALLBACK[zlib.crc32(row.encode()) % len(_FALLBACK)]


def variant_palette(names: Sequence[str]) -> dict[str, str]:
    """``{name: colour}`` for seaborn's ``palette=`` (and matplotlib ``color=[...]``)."""
    return {n: variant_color(n) for n in names}


def is_variant(name: str) -> bool:
    return name in ("GT", "ground truth") or _row_name(name) in VARIANT_COLORS


# --- intervals within the metric's range ---------------------------------------------------------
# Scores are fractions in [0, 1] unless listed here.
METRIC_RANGES = {"youcook2.CIDEr": (0.0, 10.0), "Sim(cap)": (-1.0, 1.0)}


def metric_range(metric: str | None) -> tuple[float, float]:
    return METRIC_RANGES.get(metric or "", (0.0, 1.0))


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
        # variants and GT keep their colour whatever else is drawn; other lanes by position
        colour = variant_color(name) if is_variant(name) else PALETTE[row % len(PALETTE)]
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
               labels=None, title: str | None = None, width: float = 12.0):
    """A frame strip above a span timeline for one video (``width`` in inches); returns the figure."""
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(width, 1.8 + 0.45 * len(tracks) + 0.8),
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


# --- ablation figures (lesson 07_ablations, d2lib.study.aggregate, d2lib.study.widgets) --------------------------
def _interval(d, kind: str = "t"):
    """(mean, low, high) columns ×100 of an ablation table slice; ``kind`` "t" (over seeds) or "boot"."""
    lo, hi = ("low", "high") if kind == "t" else ("boot_low", "boot_high")
    return 100 * d["mean"].to_numpy(float), 100 * d[lo].to_numpy(float), 100 * d[hi].to_numpy(float)


def _yerr(mean, lo, hi):
    """Error-bar lengths from an interval; NaN (one seed) draws no bar, never a negative length."""
    low = np.where(np.isfinite(lo), np.maximum(mean - lo, 0.0), 0.0)
    high = np.where(np.isfinite(hi), np.maximum(hi - mean, 0.0), 0.0)
    return np.vstack([low, high])


def metric_bars(table, metrics: Sequence[str], rows: Sequence[str], ax=None, labels: Mapping[str, str] | None = None,
                interval: str = "t", title: str | None = None):
    """Grouped bars: one group per metric, one bar per row, mean ×100 with its interval as error bars.

    ``table``: the long ablation table of :func:`d2lib.study.aggregate.summarize` (columns ``row, metric,
    mean, low, high, boot_low, boot_high``); ``interval``: ``"t"`` (over seeds) or ``"boot"`` (over
    test videos). Returns the axes."""
    labels = labels or {}
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics) * max(1, len(rows)) / 3), 3.6))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(metrics))
    for j, row in enumerate(rows):
        d = table[table["row"] == row].set_index("metric").reindex(list(metrics))
        mean, lo, hi = _interval(d, interval)
        pos = x + (j - (len(rows) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(mean), width, label=labels.get(row, row), color=variant_color(row))
        ax.errorbar(pos, mean, yerr=_yerr(mean, lo, hi), fmt="none", ecolor="k", lw=0.8, capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(list(metrics), fontsize=8, rotation=20 if len(metrics) > 4 else 0)
    ax.set_ylabel("score ×100")
    ax.legend(fontsize=7, ncol=min(len(rows), 5))
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def cumulative_ablation(table, chain: Sequence[str], metrics: Sequence[str] = ("F1(gnd)", "F1(cap)"),
                        paper: Mapping[str, Mapping[str, float]] | None = None,
                        labels: Mapping[str, str] | None = None, interval: str = "t"):
    """The cumulative ablation (each row adds one mechanism to the previous): one panel per metric,
    ours (mean ×100 with error bars) along ``chain`` and, where ``table`` has it, the paper's numbers
    (column ``paper``, or ``paper={row: {metric: value}}``) dashed on the same axes. Returns the figure."""
    labels = labels or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(chain))
    for ax, metric in zip(axes[0], metrics):
        d = table[table["metric"] == metric].set_index("row").reindex(list(chain))
        mean, lo, hi = _interval(d, interval)
        ax.errorbar(x, mean, yerr=_yerr(mean, lo, hi), marker="o", capsize=3, color=PALETTE[0], label="Shapes (ours)")
        if paper is not None:
            pv = np.array([paper.get(r, {}).get(metric, np.nan) for r in chain], dtype=float)
        else:
            pv = d["paper"].to_numpy(float) if "paper" in d else np.full(len(chain), np.nan)
        if np.isfinite(pv).any():
            ax.plot(x, pv, ls="--", marker="s", color=PALETTE[1], label="paper (E.T. Bench)")
        ax.set_xticks(x)
        ax.set_xticklabels([labels.get(r, r) for r in chain], rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} ×100")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def seed_intervals(per_seed, metric: str, rows: Sequence[str], level: float = 0.95):
    """(mean, low, high) arrays (fractions) of ``metric`` per row: the mean over seeds and the
    :func:`d2lib.core.stats.logit_t_interval` over seeds in :func:`metric_range` (``per_seed``: long
    DataFrame ``row, seed, metric, value`` of :func:`d2lib.study.aggregate.cells_frame`)."""
    lo_r, hi_r = metric_range(metric)
    out = []
    for row in rows:
        v = per_seed[(per_seed["row"] == row) & (per_seed["metric"] == metric)]["value"].dropna()
        ci = logit_t_interval(v.to_numpy(float), level, lo_r, hi_r)
        out.append((ci.estimate, ci.low, ci.high))
    a = np.array(out, dtype=float).reshape(len(rows), 3)
    return a[:, 0], a[:, 1], a[:, 2]


_INTERVAL_NAMES = {"t": "t-interval over seeds", "logit_t": "t over seeds, logit scale",
                   "boot": "bootstrap over videos (percentile)"}


def row_bars(table, per_seed, metric: str, rows: Sequence[str], ax=None, labels: Mapping[str, str] | None = None,
             interval: str = "t", title: str | None = None, level: float = 0.95):
    """One bar per row for one metric: mean ×100 with its interval and each seed's value as a dot
    (``per_seed``: long DataFrame ``row, seed, metric, value`` of :func:`d2lib.study.aggregate.cells_frame`).
    Each bar has its variant's colour (:func:`variant_color`). ``interval``: ``"t"`` (the table's
    t-interval over seeds), ``"logit_t"`` (:func:`seed_intervals`: t over seeds on the logit scale, within
    the metric's range) or ``"boot"`` (the table's bootstrap over test videos, percentile)."""
    labels = labels or {}
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 1.1 * len(rows)), 3.2))
    if interval == "logit_t":
        mean, lo, hi = (100 * a for a in seed_intervals(per_seed, metric, rows, level))
    else:
        d = table[table["metric"] == metric].set_index("row").reindex(list(rows))
        mean, lo, hi = _interval(d, interval)
    x = np.arange(len(rows))
    ax.bar(x, np.nan_to_num(mean), 0.6, color=[variant_color(r) for r in rows], alpha=0.85)
    ax.errorbar(x, mean, yerr=_yerr(mean, lo, hi), fmt="none", ecolor="k", lw=1, capsize=3)
    if per_seed is not None and len(per_seed):
        for j, row in enumerate(rows):
            v = per_seed[(per_seed["row"] == row) & (per_seed["metric"] == metric)]["value"].dropna()
            ax.scatter(np.full(len(v), j) + np.linspace(-0.12, 0.12, max(len(v), 1))[: len(v)], 100 * v.to_numpy(float),
                       s=12, color="k", zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels([labels.get(r, r) for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} ×100")
    lo_r, hi_r = metric_range(metric)
    if lo_r == 0.0:
        ax.set_ylim(bottom=0)
    ax.set_title(title or f"{metric}: mean ± {_INTERVAL_NAMES.get(interval, interval)}", fontsize=9)
    return ax


# --- the ablation aggregate's figures ---------------------------------------------------------------
def save_ablation_figures(table, plots_dir: str | Path, chain: Sequence[str], metrics: Sequence[str],
                          chain_metrics: Sequence[str], labels: Mapping[str, str] | None = None) -> list[Path]:
    """The ablation aggregate's figures (stage ``ablation_aggregate``) from its long table
    (:func:`d2lib.study.aggregate.summarize`): ``ablation_cumulative.png`` (:func:`cumulative_ablation` of
    ``chain_metrics`` along the rows of ``chain`` the table has, when it has one) and ``ablation_rows.png``
    (:func:`metric_bars` of every row on ``metrics``), written atomically. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    plots_dir = Path(plots_dir)
    out = []
    present = [r for r in chain if r in set(table["row"])]
    if present:
        fig = cumulative_ablation(table, present, chain_metrics, labels=labels)
        out.append(io.save_figure(fig, plots_dir / "ablation_cumulative.png", dpi=110))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(12, 4))
    metric_bars(table, list(metrics), list(dict.fromkeys(table["row"])), ax=ax, labels=labels)
    fig.tight_layout()
    out.append(io.save_figure(fig, plots_dir / "ablation_rows.png", dpi=110))
    plt.close(fig)
    return out
