"""d2lib.tools.bench: stage times come from the timing logs; no budget verdict over a pipeline that did not run."""
import json

import nbformat

from d2lib.tools import bench, nbnorm
from d2lib.core import timing


def _executed(path, seconds):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1", id="c0")]
    nb.metadata["papermill"] = {"duration": seconds, "start_time": "2026-01-01T00:00:00", "end_time": "x"}
    nbformat.write(nb, path)
    return path


def test_stage_times_read_what_nbnorm_moved_out_of_the_notebook(tmp_path):
    nbs, logs = tmp_path / "notebooks", tmp_path / "timing"
    nbs.mkdir()
    nbnorm.normalize_file(_executed(nbs / "01_video_data.ipynb", 12.5), log_dir=tmp_path / "logs", timing_root=logs)
    _executed(nbs / "03_align.ipynb", 40.0)  # not normalized (an older run): read from the notebook
    assert "duration" not in json.loads((nbs / "01_video_data.ipynb").read_text())["metadata"]["papermill"]
    assert bench.stage_times(nbs, timing_root=logs) == {"01_video_data": 12.5, "03_align": 40.0}
    timing.log("align", root=logs, train_s=50.0, seconds=61.25)  # a training stage's main logs its wall time
    assert bench.stage_times(nbs, timing_root=logs, commands=["align", "sft"])["align"] == 61.25  # sft: not run
    assert "sft" not in bench.stage_times(nbs, timing_root=logs, commands=["align", "sft"])


def test_cell_times_from_timing_logs_and_missing_cells_named(tmp_path, monkeypatch):
    class Cfg:
        def cells(self):
            return [("full", 0), ("full", 1)]
    monkeypatch.setattr(bench.config, "load_section", lambda name: Cfg())
    timing.log("ablation/full/0", root=tmp_path / "timing", seconds=30.0)
    t = bench.cell_times("ablation", root=tmp_path / "ablation", timing_root=tmp_path / "timing")
    assert t["cells_s"] == {"full/0": 30.0} and t["missing"] == ["full/1"] and not t["aggregate_ran"]


def _pipeline(monkeypatch, stages, missing_cells=(), aggregate=True):
    cells = {"cells_s": {}, "total_s": 60.0, "missing": list(missing_cells), "aggregate_ran": aggregate}
    monkeypatch.setattr(bench, "stage_times", lambda commands=(): stages)
    monkeypatch.setattr(bench, "cell_times", lambda study: cells)
    monkeypatch.setattr(bench, "lesson_stages", lambda: ["01_video_data", "03_align", "08_peers"])
    monkeypatch.setattr(bench, "command_stages", lambda: ["align"])  # a training stage run as a command
    monkeypatch.setattr(bench, "repro_run", lambda: None)
    return bench.pipeline_times()


def test_budget_verdict_refused_while_stages_or_cells_are_missing(monkeypatch):
    partial = _pipeline(monkeypatch, {"01_video_data": 50.0}, missing_cells=["full/0"], aggregate=False)
    assert partial["budget_met"] is None and partial["budget_with_peers_met"] is None  # prepare ran, nothing else
    assert {"lesson 03_align", "lesson 08_peers", "stage align", "ablation cell full/0"} <= set(partial["missing"])
    assert _pipeline(monkeypatch, {"01_video_data": 5.0, "03_align": 5.0, "08_peers": 5.0})["budget_met"] is None
    no_peers = _pipeline(monkeypatch, {"01_video_data": 5.0, "03_align": 5.0, "align": 5.0})
    assert no_peers["budget_met"] is True and no_peers["budget_with_peers_met"] is None
    cells = _pipeline(monkeypatch, {"01_video_data": 5.0, "03_align": 5.0, "align": 5.0, "08_peers": 5.0},
                      missing_cells=["full/1"])
    assert cells["budget_met"] is None and "ablation cell full/1" in cells["missing"]
    assert _pipeline(monkeypatch, {})["budget_met"] is False  # nothing measured: not met
    full = _pipeline(monkeypatch, {"01_video_data": 5.0, "03_align": 5.0, "align": 5.0, "08_peers": 5.0})
    assert full["budget_met"] is True and full["budget_with_peers_met"] is True and full["missing"] == []
