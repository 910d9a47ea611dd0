"""ipywidgets explorers (lesson ``07_ablations``), drawn with :mod:`d2lib.study.plots`.

:class:`AblationExplorer` reads the ablation's results only — every cell's ``metrics.json`` and
``records.csv`` under ``artifacts/ablation/<row>/<seed>/`` and the test frame cache of stage
``prepare`` — and never trains:

* choose **variants**, **seeds**, a **task** and one of its **metrics** (and the interval) → the table
  (mean, interval, each seed) and the bar chart update;
* choose a **test video** and one of its queries of that task → a frame strip above a timeline with
  the ground truth and each chosen variant's predicted spans (for the chosen timeline seed); the full
  query text is shown above the figure.

Intervals stay inside the metric's range (:func:`d2lib.study.plots.metric_range`; [0, 1] for fractions):

* **t over seeds, logit scale** (default) — :func:`d2lib.core.stats.logit_t_interval`: how much the number
  moves when the training is repeated; the plain t-interval of 3 seeds runs below 0 near 0;
* **bootstrap over test videos** — the percentile interval of :func:`d2lib.core.stats.video_bootstrap`
  (a quantile of resampled means of per-record scores, so inside the scores' range).

It fits the page: the figures are drawn at most :data:`OUTPUT_WIDTH_PX` pixels wide (JupyterLab 4's
output area at a 1280×720 window with the default layout, measured in Chromium) and shown with
``max-width: 100%``, so every bar stays visible in a narrower output area too. Each variant has one
colour, :func:`d2lib.study.plots.variant_color`, whatever is selected.

Figures are rendered to PNG into ``Image`` widgets and the table to an ``HTML`` widget, so the state
(:attr:`AblationExplorer.table`, :attr:`~AblationExplorer.figure`, :attr:`~AblationExplorer.card`) can be
checked without a browser — ``tests/test_widgets.py`` sets widget values and asserts that they change.
Displayed, the explorer also carries a static HTML snapshot (table, chart, video card) for places
without a kernel (nbviewer, the book): :meth:`AblationExplorer.snapshot_html`.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import textwrap
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from d2lib.study import ablation, aggregate, claims, plots

TASKS = ("merged", "tvg", "tal", "dvc", "rar", "gvq")
DPI = 90
# JupyterLab 4.6's notebook output area is 833 px wide in a 1280×720 Chromium window with the default
# layout (file browser open); tests/test_widgets.py checks the explorer against it in JupyterLab when a
# browser is installed.
OUTPUT_WIDTH_PX = 833
CHART_SIZE_IN = (6.4, 3.6)  # 576 × 324 px
CARD_WIDTH_IN = 9.0  # 810 px
INTERVALS = (("t over seeds, logit scale", "logit_t"), ("bootstrap over test videos (percentile)", "boot"))


def scan_cells(root: str | Path | None = None) -> dict:
    """``{(row, seed): metrics.json payload}`` of every finished cell under ``root`` (default
    ``artifacts/ablation``), whatever params say — the explorer shows what exists."""
    base = ablation.root_dir(root)
    out = {}
    for p in sorted(base.glob("*/*/metrics.json")):
        try:
            seed = int(p.parent.name)
        except ValueError:
            continue
        out[(p.parent.parent.name, seed)] = json.loads(p.read_text())
    return out


def _order(rows: Sequence[str]) -> list[str]:
    known = list(ablation.SFT_ROWS)
    known[known.index(ablation.BASE_OF_PREFERENCE) + 1:known.index(ablation.BASE_OF_PREFERENCE) + 1] = [
        ablation.preference_row(m) for m in ablation.PREFERENCE]
    return sorted(rows, key=lambda r: (known.index(r) if r in known else len(known), r))


def _png(fig) -> bytes:
    """The figure as PNG at :data:`DPI`, its full canvas (no tight bounding box: the width stays the
    one it was laid out for)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels of a PNG (read from its IHDR chunk)."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _spans(x) -> list:
    return json.loads(x) if isinstance(x, str) and x else []


class AblationExplorer:
    """The explorer (module docstring). ``frames``: ``{video: uint8 (T, H, W, 3)}`` or a function
    ``video → frames`` (default: the ``prepare`` stage's test frame cache); ``queries``: ``{(task, idx):
    text}`` for the query menu (default: read from the test annotations when present)."""

    def __init__(self, root: str | Path | None = None, frames: Mapping | Callable | None = None,
                 queries: Mapping | None = None, n_boot: int = 200, level: float = 0.95):
        import ipywidgets as W

        self.root = root
        self.n_boot, self.level = n_boot, level
        self.cells = scan_cells(root)
        if not self.cells:
            raise FileNotFoundError(f"{ablation.root_dir(root)}: no ablation cells (dvc repro ablation_aggregate)")
        self.per_seed = aggregate.cells_frame(self.cells)
        self.records = aggregate.load_records(self.cells, root)
        self._frames = frames
        self._frame_cache: dict = {}
        self.queries = dict(queries) if queries is not None else self._load_queries()
        rows = _order(sorted({r for r, _ in self.cells}))
        seeds = sorted({s for _, s in self.cells})
        self.table = None  # the results table shown (DataFrame)
        self.figure = None  # the bar chart (matplotlib Figure, closed after rendering)
        self.card = None  # the video card (matplotlib Figure)
        self.card_tracks: dict = {}

        lay = W.Layout(width="auto")
        # an image at its own size, never wider than the output area (not stretched by the box either)
        fit = dict(max_width="100%", height="auto", align_self="flex-start")
        self.variants = W.SelectMultiple(options=[(ablation.label(r), r) for r in rows], value=tuple(rows),
                                         rows=min(len(rows), 9), description="variants", layout=lay)
        self.seeds = W.SelectMultiple(options=seeds, value=tuple(seeds), rows=min(len(seeds), 5),
                                      description="seeds", layout=lay)
        self.task = W.Dropdown(options=list(TASKS), value="merged", description="task")
        self.metric = W.Dropdown(options=self._metric_options("merged"), description="metric")
        self.interval = W.ToggleButtons(options=list(INTERVALS), value="logit_t", description="interval",
                                        style={"button_width": "auto"})
        self.table_html = W.HTML(layout=W.Layout(max_width="100%", overflow="auto"))
        self.chart = W.Image(format="png", layout=W.Layout(**fit))
        videos = sorted(self.records["video"].unique()) if len(self.records) else []
        self.video = W.Dropdown(options=videos, value=videos[0] if videos else None, description="test video")
        # the full query text: a full-width menu, and the chosen query as wrapping text below it
        self.query = W.Dropdown(options=[], description="query", layout=W.Layout(width="100%"))
        self.query_text = W.HTML(layout=W.Layout(width="100%"))
        self.timeline_seed = W.Dropdown(options=seeds, value=seeds[0], description="seed")
        self.card_image = W.Image(format="png", layout=W.Layout(**fit))
        self.status = W.HTML()

        self._quiet = False  # set while one handler updates several widgets (one redraw at the end)
        self.task.observe(self._on_task, names="value")
        for w in (self.variants, self.seeds, self.metric, self.interval):
            w.observe(lambda _: self._quiet or self.update_results(), names="value")
        self.video.observe(lambda _: self._quiet or self._on_video(), names="value")
        for w in (self.query, self.timeline_seed, self.variants):
            w.observe(lambda _: self._quiet or self.update_video(), names="value")
        self.update_results()
        self._on_video()

    # ---------------------------------------------------------------- results
    def _metric_options(self, task: str) -> list[tuple[str, str]]:
        have = set(self.per_seed.dropna(subset=["value"])["metric"])
        keys = [k for k in ablation.TASK_METRICS[task] if k in have] or list(ablation.TASK_METRICS[task])
        return [(f"{k} — {ablation.ALL_METRICS.get(k, k)}", k) for k in keys]

    def _on_task(self, change) -> None:
        opts = self._metric_options(change["new"])
        self._quiet = True
        try:
            self.metric.options = opts
            self.metric.value = opts[0][1]
        finally:
            self._quiet = False
        self.update_results()
        self._on_video()

    def selection(self) -> tuple[list[str], list[int]]:
        return _order(list(self.variants.value)), sorted(self.seeds.value)

    def update_results(self) -> None:
        """Recompute the table and redraw the bar chart for the current choices."""
        import matplotlib.pyplot as plt

        rows, seeds = self.selection()
        metric = self.metric.value
        if not rows or not seeds or metric is None:
            self.table, self.table_html.value = None, "<i>choose at least one variant and one seed</i>"
            return
        ps = self.per_seed[self.per_seed["seed"].isin(seeds) & self.per_seed["row"].isin(rows)]
        rec = self.records[self.records["seed"].isin(seeds)] if len(self.records) else self.records
        t = aggregate.summarize(ps, rec, self.level, self.n_boot, rows=rows, metrics=[metric])
        if self.interval.value == "logit_t":
            _, t["low"], t["high"] = plots.seed_intervals(ps, metric, rows, self.level)
            lo, hi = "low", "high"
        else:
            lo, hi = "boot_low", "boot_high"
        table = t.set_index("label")[["mean", lo, hi, "n"]].rename(columns={lo: "low", hi: "high", "n": "seeds"})
        table[["mean", "low", "high"]] *= 100
        for s in seeds:
            v = ps[(ps["seed"] == s) & (ps["metric"] == metric)].set_index("row")["value"]
            table[f"seed {s}"] = [100 * v.get(r, np.nan) for r in rows]
        if metric in claims.CLAIM_METRICS:
            table["paper"] = [ablation.PAPER.get(r, {}).get(metric, np.nan) for r in rows]
        self.table = table.round(1)
        what = ("t-interval over the chosen seeds on the logit scale of the metric's range"
                if self.interval.value == "logit_t" else
                f"percentile bootstrap over test videos ({self.n_boot} resamples)")
        self.table_html.value = (f"<b>{html.escape(metric)}</b> ×100 — mean and {100 * self.level:.0f}% {what}"
                                 + self.table.to_html(na_rep="—", float_format=lambda x: f"{x:.1f}"))
        fig, ax = plt.subplots(figsize=CHART_SIZE_IN)
        plots.row_bars(t, ps, metric, rows, ax=ax, labels=ablation.LABELS, interval=self.interval.value,
                       level=self.level)
        fig.tight_layout()
        self.figure = fig
        self.chart.value = _png(fig)

    # ---------------------------------------------------------------- one video
    def _timeline_task(self) -> str:
        return self.task.value if self.task.value in ("tvg", "tal", "dvc", "gvq") else "tvg"

    def _load_queries(self) -> dict:
        try:
            from d2lib.world.records import load_shapes, shapes_split_dir

            split = load_shapes(shapes_split_dir("test"), check_videos=False)
        except Exception:  # the explorer works without the annotations (menu shows task and index)
            return {}
        return {(r["task"], int(r["idx"])): (r.get("g") or [r.get("q", "")])[0] for r in split.records}

    def _on_video(self) -> None:
        task = self._timeline_task()
        d = self.records[(self.records["video"] == self.video.value) & (self.records["task"] == task)]
        idxs = sorted({int(i) for i in d["idx"]})
        opts = [(f"{task} #{i}: {self.queries.get((task, i), '')}", i) for i in idxs]
        self._quiet = True
        try:
            self.query.options = opts
            self.query.value = idxs[0] if idxs else None
        finally:
            self._quiet = False
        self.update_video()

    def frames(self, video: str) -> np.ndarray:
        if video not in self._frame_cache:
            if callable(self._frames):
                f = self._frames(video)
            elif self._frames is not None:
                f = self._frames[video]
            else:  # the prepare stage's test frame cache (read only)
                from d2lib.world.framecache import load_frame_cache
                from d2lib.world.records import frame_cache_path

                with load_frame_cache(frame_cache_path("test")) as cache:
                    f = np.array(cache[video])
            self._frame_cache[video] = np.asarray(f)
        return self._frame_cache[video]

    def update_video(self) -> None:
        """Redraw the frame strip + timeline of the chosen video/query for the chosen variants."""
        video, idx, seed = self.video.value, self.query.value, self.timeline_seed.value
        task = self._timeline_task()
        if video is None or idx is None:
            self.card, self.card_tracks = None, {}
            self.query_text.value = ""
            self.status.value = f"<i>no {task} record in this video</i>"
            return
        d = self.records[(self.records["video"] == video) & (self.records["task"] == task)
                         & (self.records["idx"] == idx)]
        if d.empty:
            return
        rows, _ = self.selection()
        tracks = {"GT": _spans(d.iloc[0]["gt"])}
        notes = []
        for r in rows:
            x = d[(d["row"] == r) & (d["seed"] == seed)]
            if x.empty:
                notes.append(f"{ablation.label(r)}: no seed {seed}")
                continue
            tracks[ablation.label(r)] = _spans(x.iloc[0]["pred"])
        self.card_tracks = tracks
        q = self.queries.get((task, int(idx)), "")
        self.query_text.value = (f"<b>{task} #{idx}</b>: " + html.escape(q)) if q else f"<b>{task} #{idx}</b>"
        title = f"{video} — {task} #{idx}" + (f': "{q}"' if q else "") + f" (seed {seed})"
        title = "\n".join(textwrap.wrap(title, 110))  # the whole query, on as many lines as it needs
        fig = plots.video_card(self.frames(video), tracks, float(d.iloc[0]["duration"]), title=title,
                               width=CARD_WIDTH_IN)
        self.card = fig
        self.card_image.value = _png(fig)
        self.status.value = "; ".join(notes)

    # ---------------------------------------------------------------- layout
    def widget(self):
        """The explorer as one ipywidgets box (display it in a notebook). Rows wrap in a narrow output
        area; the table sits above the chart. Displayed, the box also carries :meth:`snapshot_html`."""
        import ipywidgets as W

        wrap = W.Layout(flex_flow="row wrap", max_width="100%")
        controls = W.HBox([self.variants, self.seeds, W.VBox([self.task, self.metric, self.interval])], layout=wrap)
        video = W.HBox([self.video, self.timeline_seed], layout=wrap)
        box = _ExplorerBox([controls, self.table_html, self.chart, W.HTML("<hr>"), video, self.query,
                            self.query_text, self.status, self.card_image],
                           layout=W.Layout(max_width="100%"))
        box._explorer = self
        return box

    def snapshot_html(self) -> str:
        """A static HTML view of the current state — the table, the bar chart and the video card as
        inline PNGs — for renderers without a kernel (the book shows it in place of the widget)."""
        def img(png, alt):
            if not png:
                return ""
            data = base64.b64encode(png).decode()
            return f'<img alt="{alt}" style="max-width:100%;height:auto" src="data:image/png;base64,{data}">'

        parts = ['<div class="d2lib-explorer-snapshot">',
                 "<p><i>Static snapshot of the ablation explorer (run the notebook to explore).</i></p>",
                 self.table_html.value, img(self.chart.value, "ablation bars"),
                 f"<p>{self.query_text.value}</p>", img(self.card_image.value, "video card"), "</div>"]
        return "\n".join(p for p in parts if p)


@functools.lru_cache(maxsize=None)
def _explorer_box_class():
    import ipywidgets as W

    class ExplorerBox(W.VBox):
        """The explorer's VBox; its display data adds ``text/html`` (the explorer's static snapshot), which
        JupyterLab ignores in favour of the live widget and kernel-less renderers show."""

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs)
            ex = getattr(self, "_explorer", None)
            if ex is not None and isinstance(data, dict):
                data = {**data, "text/html": ex.snapshot_html()}
            return data

    return ExplorerBox


def _ExplorerBox(*args, **kw):
    return _explorer_box_class()(*args, **kw)


def ablation_explorer(root: str | Path | None = None, **kw):
    """Build an :class:`AblationExplorer` and return ``(explorer, its widget)``."""
    ex = AblationExplorer(root, **kw)
    return ex, ex.widget()


__all__ = ["TASKS", "OUTPUT_WIDTH_PX", "INTERVALS", "scan_cells", "png_size", "AblationExplorer",
           "ablation_explorer"]
