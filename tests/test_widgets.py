"""d2lib.widgets, headless: set the explorer's widget values and check that its table and figures change.
The explorer reads cell files only (fake cells here) and a frame mapping — no training, no browser."""
import numpy as np
import pytest

from ablation_fixture import fake_cells, fake_records
from d2lib import widgets


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    records, metas = fake_records(n_videos=3)
    fake_cells(root, {"coupled": [0.1, 0.2, 0.3], "factorized": [0.6, 0.7, 0.8], "full": 0.9}, records=records)
    frames = {v: np.full((int(m["duration"]), 8, 8, 3), 40 * k, np.uint8) for k, (v, m) in enumerate(metas.items())}
    queries = {("tvg", r["idx"]): r["g"][0] for r in records if r["task"] == "tvg"}
    return widgets.AblationExplorer(root, frames=frames, queries=queries, n_boot=50)


def test_initial_state_shows_every_row_and_seed(explorer):
    ex = explorer
    assert list(ex.table.index) == ["coupled", "factorized", "full (+consistency)"]
    assert {"mean", "low", "high", "seeds", "seed 0", "seed 1", "seed 2", "paper"} <= set(ex.table.columns)
    assert ex.table.loc["coupled", "paper"] == 21.2 and ex.table.loc["coupled", "seeds"] == 3
    assert "<table" in ex.table_html.value and ex.chart.value[:4] == b"\x89PNG"
    assert len(ex.figure.axes[0].patches) == 3  # one bar per variant
    assert ex.card is not None and ex.card_image.value[:4] == b"\x89PNG"
    assert list(ex.card_tracks) == ["GT", "coupled", "factorized", "full (+consistency)"]


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
    assert np.isnan(ex.table.loc["coupled", "low"])  # one seed: no t-interval…
    ex.interval.value = "boot"
    assert np.isfinite(ex.table.loc["coupled", "low"])  # …but the test-video bootstrap still has one
    ex.interval.value = "t"
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
    if len(ex.query.options) > 1:
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
    assert len(box.children) == 6
