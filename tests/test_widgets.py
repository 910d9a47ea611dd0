"""d2lib.study.widgets, headless: set the explorer's widget values and check that its table and figures change,
that it fits JupyterLab's output area, that a variant keeps its colour whatever is selected, that its
intervals stay inside the metric's range and that the whole query text is shown. The explorer reads cell
files only (fake cells here) and a frame mapping — no training. One check runs the explorer in JupyterLab
in headless Chromium (skipped when no browser is installed)."""
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex

from ablation_fixture import fake_cells, fake_records
from d2lib.core import stats
from d2lib.study import ablation, plots, widgets

ALL_ROWS = {"coupled": [0.1, 0.2, 0.3], "factorized": [0.6, 0.7, 0.8], "full": 0.9}
LONG_QUERY = ("the small red circle that was hiding behind the big blue square slides slowly to the left "
              "while the yellow triangle keeps spinning in the top right corner of the frame")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    records, metas = fake_records(n_videos=3)
    fake_cells(root, ALL_ROWS, records=records)
    frames = {v: np.full((int(m["duration"]), 8, 8, 3), 40 * k, np.uint8) for k, (v, m) in enumerate(metas.items())}
    queries = {("tvg", r["idx"]): r["g"][0] for r in records if r["task"] == "tvg"}
    first_tvg = min(i for t, i in queries)
    queries[("tvg", first_tvg)] = LONG_QUERY
    return widgets.AblationExplorer(root, frames=frames, queries=queries, n_boot=50)


@pytest.fixture(scope="module")
def all_rows(tmp_path_factory):
    """Every ablation row, scores close to 0 and 1 (where plain t-intervals leave [0, 1])."""
    root = tmp_path_factory.mktemp("abl9")
    records, metas = fake_records(n_videos=3)
    rows = [*ablation.SFT_ROWS, *(ablation.preference_row(m) for m in ablation.PREFERENCE)]
    quality = {r: ([0.0, 0.0, 0.35] if k % 2 == 0 else [1.0, 1.0, 0.6]) for k, r in enumerate(rows)}
    fake_cells(root, quality, records=records)
    frames = {v: np.zeros((int(m["duration"]), 8, 8, 3), np.uint8) for v, m in metas.items()}
    return widgets.AblationExplorer(root, frames=frames, queries={}, n_boot=50)


def test_initial_state_shows_every_row_and_seed(explorer):
    ex = explorer
    assert list(ex.table.index) == ["coupled", "factorized", "full (+consistency)"]
    assert {"mean", "low", "high", "seeds", "seed 0", "seed 1", "seed 2", "paper"} <= set(ex.table.columns)
    assert ex.table.loc["coupled", "paper"] == 21.2 and ex.table.loc["coupled", "seeds"] == 3
    assert "<table" in ex.table_html.value and ex.chart.value[:4] == b"\x89PNG"
    assert len(ex.figure.axes[0].patches) == 3  # one bar per variant
    assert ex.card is not None and ex.card_image.value[:4] == b"\x89PNG"
    assert list(ex.card_tracks) == ["GT", "coupled", "factorized", "full (+consistency)"]
    assert ex.interval.value == "logit_t" and "logit" in ex.table_html.value


def test_variant_seed_metric_and_interval_choices_update_table_and_chart(explorer):
    ex = explorer
    png, table = ex.chart.value, ex.table.copy()
    ex.variants.value = ("coupled", "full")
    assert list(ex.table.index) == ["coupled", "full (+consistency)"] and len(ex.figure.axes[0].patches) == 2
    assert ex.chart.value != png
    ex.seeds.value = (0, 1)
    assert (ex.table["seeds"] == 2).all() and "seed 2" not in ex.table.columns
    assert ex.table.loc["coupled", "mean"] == pytest.approx((table.loc["coupled", "seed 0"] + table.loc["coupled", "seed 1"]) / 2, abs=0.06)
    ex.seeds.value = (0,)
    assert np.isnan(ex.table.loc["coupled", "low"])  # one seed: no interval over seeds…
    ex.interval.value = "boot"
    assert np.isfinite(ex.table.loc["coupled", "low"])  # …but the test-video bootstrap still has one
    assert "percentile bootstrap" in ex.table_html.value
    ex.interval.value = "logit_t"
    ex.seeds.value = (0, 1, 2)
    # task → its metrics; metric → the table and chart follow
    ex.task.value = "gvq"
    assert [v for _, v in ex.metric.options] == ["gvq.Acc", "gvq.mRec"] and ex.metric.value == "gvq.Acc"
    acc = ex.table["mean"].copy()
    png = ex.chart.value
    ex.metric.value = "gvq.mRec"
    assert "gvq.mRec" in ex.table_html.value and "paper" not in ex.table.columns
    assert ex.chart.value != png
    ex.task.value = "tvg"
    assert ex.metric.value == "tvg.F1" and "tvg.F1" in ex.table_html.value
    assert not ex.table["mean"].equals(acc)
    ex.variants.value = ()
    assert ex.table is None and "choose" in ex.table_html.value
    ex.variants.value = ("coupled", "factorized", "full")


def test_video_and_query_choices_redraw_the_timeline(explorer):
    ex = explorer
    ex.task.value = "tvg"
    first = ex.card_image.value
    tracks = dict(ex.card_tracks)
    assert ex.query.options and all(o[0].startswith("tvg #") for o in ex.query.options)
    ex.video.value = ex.video.options[1]
    assert ex.card_image.value != first
    assert ex.video.value in ex.card.axes[0].get_title() and ex.video.value not in str(tracks)
    assert len(ex.query.options) > 1  # the fixture's videos have several tvg queries
    before = ex.card_image.value
    ex.query.value = ex.query.options[1][1]
    assert ex.card_image.value != before
    ex.variants.value = ("full",)
    assert list(ex.card_tracks) == ["GT", "full (+consistency)"]
    ex.timeline_seed.value = 2
    assert "seed 2" in ex.card.axes[0].get_title()
    ex.task.value = "tal"  # the timeline follows the task: tal records have several GT spans
    assert all(o[0].startswith("tal #") for o in ex.query.options)
    box = ex.widget()
    assert ex.chart in box.children and ex.card_image in box.children and ex.query_text in box.children
    ex.variants.value = ("coupled", "factorized", "full")
    ex.task.value = "merged"


def test_the_full_query_text_is_shown(explorer):
    ex = explorer
    ex.task.value = "tvg"
    ex.video.value = ex.video.options[0]
    label = dict((v, k) for k, v in ex.query.options)[ex.query.value]
    assert label.endswith(LONG_QUERY)  # the menu entry is not cut…
    assert ex.query.layout.width == "100%"  # …and the menu spans the output area
    assert LONG_QUERY in ex.query_text.value  # the chosen query as wrapping text
    assert LONG_QUERY.split()[-1] in ex.card.axes[0].get_title()  # and in the card's (wrapped) title
    ex.task.value = "merged"


def test_figures_fit_the_output_area(all_rows):
    """Every figure is drawn no wider than JupyterLab's output area and shown with max-width 100%."""
    ex = all_rows
    assert len(ex.figure.axes[0].patches) == len(ex.variants.options) >= 9  # every row drawn
    for png, image in ((ex.chart.value, ex.chart), (ex.card_image.value, ex.card_image)):
        width, _ = widgets.png_size(png)
        assert 300 < width <= widgets.OUTPUT_WIDTH_PX
        assert image.layout.max_width == "100%" and image.layout.height == "auto"
    fig_w = ex.figure.get_size_inches()[0] * widgets.DPI
    assert fig_w <= widgets.OUTPUT_WIDTH_PX
    # every bar and its tick label lie inside the figure (nothing clipped at the right edge)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(ex.figure)
    canvas.draw()
    right = ex.figure.bbox.width
    for artist in [*ex.figure.axes[0].patches, *ex.figure.axes[0].get_xticklabels()]:
        box = artist.get_window_extent(canvas.get_renderer())
        assert box.x0 >= -1 and box.x1 <= right + 1, artist


def test_colour_of_a_variant_is_stable_under_selection(all_rows):
    ex = all_rows

    def bar_colours():
        labels = [t.get_text() for t in ex.figure.axes[0].get_xticklabels()]
        return {lab: to_hex(p.get_facecolor(), keep_alpha=False) for lab, p in zip(labels, ex.figure.axes[0].patches)}

    every = bar_colours()
    assert len(set(every.values())) == len(every) == len(ex.variants.options)  # one colour per variant
    for sel in [("factorized",), ("coupled", "factorized"), ("factorized", "full_fpo"), ("full", "factorized")]:
        ex.variants.value = sel
        for lab, colour in bar_colours().items():
            assert colour == every[lab] == plots.variant_color(lab)
        assert plots.variant_color(ablation.label("factorized")) == plots.VARIANT_COLORS["factorized"]
        # the video card's lanes use the same mapping
        lanes = ex.card.axes[1]
        names = [t.get_text() for t in lanes.get_yticklabels()]
        for patch in lanes.patches:
            lane = names[int(round(patch.get_y() + patch.get_height() / 2))]
            assert to_hex(patch.get_facecolor(), keep_alpha=False) == plots.variant_color(lane)
    ex.variants.value = tuple(r for _, r in ex.variants.options)


@pytest.mark.parametrize("interval", ["logit_t", "boot"])
def test_intervals_stay_within_0_1(all_rows, interval):
    ex = all_rows
    ex.interval.value = interval
    for task, metrics in (("merged", ["F1(gnd)"]), ("tvg", ["tvg.F1", "charades.R1@0.5", "charades.mIoU"]),
                          ("gvq", ["gvq.Acc"])):
        ex.task.value = task
        for m in metrics:
            ex.metric.value = m
            t = ex.table
            assert t["low"].notna().all() and t["high"].notna().all(), (interval, m)
            assert (t["low"] >= 0).all() and (t["high"] <= 100).all(), (interval, m, t)
            assert (t["low"] <= t["mean"] + 1e-9).all() and (t["mean"] <= t["high"] + 1e-9).all()
            lo, hi = ex.figure.axes[0].get_ylim()
            assert lo >= 0
    # the plain t-interval of the same seeds does leave [0, 1] (what this guards against)
    plain = stats.t_interval([0.0, 0.0, 0.35])
    assert plain.low < 0
    ex.interval.value = "logit_t"
    ex.task.value = "merged"


def test_every_row_has_its_own_colour():
    import d2lib.study.peers as peers

    rows = [*ablation.SFT_ROWS, *(ablation.preference_row(m) for m in ablation.PREFERENCE), *peers.LABELS]
    missing = [r for r in dict.fromkeys(rows) if r not in plots.VARIANT_COLORS]
    assert not missing, f"add a colour for {missing} to d2lib.study.plots.VARIANT_COLORS (and run tools/vega/templates.py)"
    colours = list(plots.VARIANT_COLORS.values())
    assert len(set(colours)) == len(colours) and plots.GT_COLOR not in colours
    assert plots.variant_color(peers.label("univtg")) == plots.VARIANT_COLORS["univtg"]


def test_display_carries_a_static_snapshot(explorer):
    box = explorer.widget()
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = bundle["text/html"]
    assert html.count("data:image/png;base64,") == 2 and "<table" in html


EXPLORER_CELL = """import sys
sys.path.insert(0, {tests!r})
import numpy as np
from pathlib import Path
from ablation_fixture import fake_cells, fake_records
from d2lib.study import ablation, widgets
records, metas = fake_records(n_videos=3)
rows = [*ablation.SFT_ROWS, *(ablation.preference_row(m) for m in ablation.PREFERENCE)]
fake_cells(Path("cells"), {{r: [0.0, 0.1, 0.35] for r in rows}}, records=records)
frames = {{v: np.zeros((int(m["duration"]), 8, 8, 3), np.uint8) for v, m in metas.items()}}
queries = {{("tvg", r["idx"]): {query!r} for r in records if r["task"] == "tvg"}}
explorer, box = widgets.ablation_explorer("cells", frames=frames, queries=queries, n_boot=20)
explorer.task.value = "tvg"
box"""


@pytest.mark.slow
def test_explorer_fits_jupyterlab_output_area(tmp_path):
    """The explorer on every ablation row, run in JupyterLab in headless Chromium (1280×720 window, default
    layout): the output area is at least :data:`widgets.OUTPUT_WIDTH_PX` wide and has no horizontal
    scroll, both figures lie inside it at no more than their own width, and the query text is shown whole."""
    import nbformat

    import browser

    browser.need_browser()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(EXPLORER_CELL.format(tests=str(Path(__file__).parent), query=LONG_QUERY))]
    nbformat.write(nb, tmp_path / "explorer.ipynb")
    with browser.jupyterlab(tmp_path, (1280, 720)) as (d, open_notebook):
        open_notebook("explorer.ipynb")
        d.set_script_timeout(240)
        ran = d.execute_async_script("""
            var done = arguments[arguments.length - 1], app = window.jupyterapp, w = app.shell.currentWidget;
            w.context.ready.then(function () { return w.sessionContext.ready; })
             .then(function () { return app.commands.execute('notebook:run-all-cells'); })
             .then(function (ok) { done(String(ok)); }, function (e) { done('error: ' + e); });""")
        assert not ran.startswith("error"), ran
        shown = browser.wait_for(d, "var i = document.querySelectorAll('.jp-OutputArea-output img');"
                                    " return i.length >= 2 && Array.from(i).every(x => x.complete && x.naturalWidth > 0)",
                                 timeout=240, poll=1)
        assert shown, "the explorer did not render (kernel or widget error)"
        m = d.execute_script("""
            var out = document.querySelector('.jp-OutputArea-output'), r = out.getBoundingClientRect();
            var imgs = Array.from(out.querySelectorAll('img')).map(function (i) {
              var b = i.getBoundingClientRect(); return [b.left, b.right, b.width, i.naturalWidth]; });
            var q = Array.from(out.querySelectorAll('.widget-html-content')).map(e => e.innerText)
                         .filter(t => t.indexOf('tvg #') === 0);
            return {left: r.left, right: r.right, width: r.width, scroll: out.scrollWidth, client: out.clientWidth,
                    imgs: imgs, query: q};""")
    assert m["width"] >= widgets.OUTPUT_WIDTH_PX, m
    assert m["scroll"] <= m["client"] + 1, f"the output area scrolls horizontally: {m}"
    assert len(m["imgs"]) == 2
    for left, right, width, natural in m["imgs"]:
        assert m["left"] - 1 <= left and right <= m["right"] + 1, m  # every bar / lane inside the output area
        assert width <= natural + 1, m  # drawn at its own size or smaller, never stretched
    assert m["query"] and LONG_QUERY in m["query"][0], m
