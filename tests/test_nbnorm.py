"""d2lib.tools.nbnorm: an executed lesson holds no timestamps, durations or random ids; its outputs stay."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from d2lib.tools import nbnorm
from d2lib.core import timing

CELLS = [
    "import sys, time\nprint('hello', 1 + 1)\nprint('started at', time.time(), file=sys.stderr)",
    "from tqdm import tqdm\nfor _ in tqdm(range(3)):\n    time.sleep(0.01)",
    "import ipywidgets as w\nw.VBox([w.IntSlider(value=3), w.Label('x')])",
    "{'a': 1}",
    "for i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)",  # three flushes: three chunks
]
TIME_KEYS = {"start_time", "end_time", "duration", "execution"}


def _lesson(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    for i, c in enumerate(nb.cells):
        c.id = f"cell{i}"
    nbformat.write(nb, path)
    return path


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


@pytest.mark.slow
def test_two_executions_normalize_to_the_same_bytes_with_outputs_kept(tmp_path):
    src = _lesson(tmp_path / "lesson.ipynb")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "lesson.ipynb"
        out.parent.mkdir()
        subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar", "../lesson.ipynb", "lesson.ipynb"],
                       cwd=out.parent, check=True, capture_output=True)  # relative paths, as the stages give
        raw = json.loads(out.read_text())
        assert raw["metadata"]["papermill"]["duration"] and raw["cells"][0]["metadata"]["execution"]
        assert len(raw["cells"][-1]["outputs"]) > 1  # the kernel sent the stream in chunks
        nbnorm.normalize_file(out, log_dir=tmp_path / run / "logs", timing_root=tmp_path / run / "timing")
        outs.append(out)
    a, b = (o.read_bytes() for o in outs)
    assert a == b
    nb = json.loads(a)
    assert not TIME_KEYS & set(_keys(nb)) and "version" not in nb["metadata"]["language_info"]
    texts = [o for c in nb["cells"] for o in c["outputs"]]
    assert texts[0] == {"name": "stdout", "output_type": "stream", "text": ["hello 2\n"]}
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in texts)
    assert texts[-2]["data"]["text/plain"] == ["{'a': 1}"]
    assert texts[-1] == {"name": "stdout", "output_type": "stream", "text": ["0\n", "1\n", "2\n"]}
    assert not any(o.get("name") == "stderr" for o in texts)
    stderr = (tmp_path / "a" / "logs" / "lesson.stderr.txt").read_text()
    assert "started at" in stderr and "3/3" in stderr
    logged = timing.read("lesson", root=tmp_path / "a" / "timing")
    assert logged["notebook_s"] > 0 and len(logged["cells_s"]) == len(CELLS)
    nbnorm.normalize_file(outs[0], log_dir=tmp_path / "a" / "logs", timing_root=tmp_path / "a" / "timing")
    assert outs[0].read_bytes() == a  # idempotent
    assert timing.read("lesson", root=tmp_path / "a" / "timing")["notebook_s"] == logged["notebook_s"]


def test_widget_ids_are_renumbered_by_position_not_by_value():
    def nb_with(ids):
        slider, layout = ids
        nb = nbformat.v4.new_notebook()
        view = {"model_id": slider, "version_major": 2, "version_minor": 0}
        nb.cells = [nbformat.v4.new_code_cell("w", id="c0", outputs=[nbformat.v4.new_output(
            "display_data", data={nbnorm.WIDGET_VIEW: view, "text/plain": "IntSlider()"})])]
        nb.metadata["widgets"] = {nbnorm.WIDGET_STATE: {"state": {
            slider: {"model_name": "IntSliderModel", "state": {"layout": f"IPY_MODEL_{layout}", "value": 3}},
            layout: {"model_name": "LayoutModel", "state": {}}}, "version_major": 2, "version_minor": 0}}
        return nbformat.writes(nbnorm.normalize(nb)[0])

    one, two = nb_with(["f" * 32, "0" * 32]), nb_with(["1" * 32, "e" * 32])
    assert one == two and "f" * 32 not in one


def _with_widget(model_name: str):
    """A notebook whose only cell displays a box holding one widget of ``model_name`` (as tqdm.auto does)."""
    state = {"box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_bar"]}},
             "bar": {"model_name": model_name, "state": {"value": 27.0}}}
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {nbnorm.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    nb.cells = [nbformat.v4.new_code_cell("model = load()", outputs=[nbformat.v4.new_output(
        "display_data", data={nbnorm.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0}})])]
    return nb


def test_a_progress_bar_widget_is_refused_naming_its_cell_and_other_widgets_pass():
    with pytest.raises(nbnorm.ProgressBarError, match=r"cells \[0\]"):
        nbnorm.normalize(_with_widget("FloatProgressModel"))
    assert nbnorm.progress_bar_cells(_with_widget("FloatSliderModel")) == []
    nbnorm.normalize(_with_widget("FloatSliderModel"))
