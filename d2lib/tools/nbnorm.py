"""``python -m d2lib.tools.nbnorm OUT.ipynb ...``: make an executed lesson a pure function of its inputs.

Each notebook stage runs it right after papermill (``dvc.yaml``), before DVC hashes the notebook.
Through nbformat (no text surgery), it

- removes papermill's ``start_time``/``end_time``/``duration`` (notebook and cells) and Jupyter's
  ``execution`` timestamps from the metadata — the durations go to the timing log of the notebook
  (:mod:`d2lib.core.timing`, name = its stem), where ``python -m d2lib.tools.bench`` reads them;
- joins consecutive ``stdout`` chunks of a cell into one output (the kernel splits a stream where its
  flush timer happens to fire);
- moves the cells' ``stderr`` streams — progress bars with rates and elapsed times, warnings that
  name this machine's paths — to ``artifacts/logs/<stem>.stderr.txt``;
- renames the ipywidgets model ids (random UUIDs) to ids numbered in order of appearance;
- drops ``language_info.version`` (the Python patch release; the pinned packages are in pyproject);
- refuses a notebook that shows a progress-bar *widget* (``tqdm.auto`` in a kernel, e.g. transformers'
  "Loading weights"): its items-per-second text lives in the widget state, where no rule can tell it
  from a result — :class:`ProgressBarError` names the cell, so the lesson or the library silences it.

Everything else, outputs included, is kept as it is. Running it twice changes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path

import nbformat

TIMING_KEYS = ("start_time", "end_time", "duration")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_IDS = uuid.UUID("6d2a1b5e-0c7f-4d1e-9a3b-2f8e5c4d7a10")  # namespace of the renumbered widget ids


def _refs(obj):
    """Model ids a widget's state refers to (``IPY_MODEL_<id>`` strings), in sorted-key order."""
    if isinstance(obj, dict):
        for k in sorted(obj):
            yield from _refs(obj[k])
    elif isinstance(obj, list):
        for v in obj:
            yield from _refs(v)
    elif isinstance(obj, str) and obj.startswith("IPY_MODEL_"):
        yield obj[len("IPY_MODEL_"):]


def _widget_ids(nb) -> list[str]:
    """Widget model ids in an order that does not depend on the ids themselves (the saved state is a
    dict sorted by id): each displayed widget in output order, then the models it refers to, depth
    first; models nothing displayed refers to come last, ordered by their content."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    seen: dict[str, None] = {}

    def visit(mid: str) -> None:
        if mid not in seen:
            seen[mid] = None
            for ref in _refs(state.get(mid, {}).get("state", {})):
                visit(ref)

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id"):
                visit(view["model_id"])
    blank = {m: "" for m in state}
    for mid in sorted((m for m in state if m not in seen),
                      key=lambda m: json.dumps(_rename(state[m], blank), sort_keys=True)):
        visit(mid)
    return list(seen)


def _rename(obj, names: dict[str, str]):
    """``obj`` with every string equal to an old id (or ``IPY_MODEL_<old id>``) replaced, dict keys too."""
    if isinstance(obj, dict):
        return type(obj)((names.get(k, k), _rename(v, names)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_rename(v, names) for v in obj]
    if isinstance(obj, str):
        if obj in names:
            return names[obj]
        if obj.startswith("IPY_MODEL_") and obj[len("IPY_MODEL_"):] in names:
            return "IPY_MODEL_" + names[obj[len("IPY_MODEL_"):]]
    return obj


class ProgressBarError(ValueError):
    """An executed lesson displays a progress-bar widget (its rate differs from run to run)."""


def progress_bar_cells(nb) -> list[int]:
    """Indices of the cells whose outputs display a progress-bar widget (a ``FloatProgress``, alone or
    inside a box, as ``tqdm.auto`` draws it)."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    bars = {k for k, v in state.items() if v.get("model_name") == "FloatProgressModel"}
    boxes = {k for k, v in state.items() if bars & set(_refs(v.get("state", {})))}
    shown = bars | boxes
    return [i for i, cell in enumerate(nb.cells) for out in cell.get("outputs", [])
            if out.get("data", {}).get(WIDGET_VIEW, {}).get("model_id") in shown]


def normalize(nb) -> tuple[object, dict, str]:
    """Normalize ``nb`` in place (module docstring); return it, the timings removed and the stderr text."""
    bar_cells = progress_bar_cells(nb)
    if bar_cells:
        raise ProgressBarError(f"cells {sorted(set(bar_cells))} display a progress-bar widget: its it/s text differs "
                               "from run to run, so the executed lesson would not reproduce; silence it "
                               "(transformers.utils.logging.disable_progress_bar(), or tqdm's disable=True)")
    timings: dict = {}
    pm = nb.metadata.get("papermill", {})
    for k in TIMING_KEYS:
        if k in pm:
            timings[f"notebook_{k}"] = pm.pop(k)
    nb.metadata.get("language_info", {}).pop("version", None)
    cells_s, stderr = [], []
    for i, cell in enumerate(nb.cells):
        cpm = cell.metadata.get("papermill", {})
        if cpm.get("duration") is not None:
            cells_s.append([i, cpm["duration"]])
        for k in TIMING_KEYS:
            cpm.pop(k, None)
        cell.metadata.pop("execution", None)
        if "outputs" in cell:
            kept = []
            for out in cell.outputs:
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    if not stderr or stderr[-1][0] != i:
                        stderr.append((i, [f"--- cell {i}\n"]))
                    stderr[-1][1].append(out.get("text", ""))
                elif out.get("output_type") == "stream" and kept and kept[-1].get("output_type") == "stream" \
                        and kept[-1].get("name") == out.get("name"):
                    kept[-1]["text"] += out.get("text", "")  # one stream, however the kernel's flushes split it
                else:
                    kept.append(out)
            cell.outputs = kept
    ids = _widget_ids(nb)
    if ids:
        names = {old: uuid.uuid5(_IDS, str(n)).hex for n, old in enumerate(ids)}
        nb.metadata = nbformat.from_dict(_rename(nb.metadata, names))
        for cell in nb.cells:
            if "outputs" in cell:
                cell.outputs = [nbformat.from_dict(_rename(o, names)) for o in cell.outputs]
    if cells_s:
        timings["cells_s"] = cells_s
    return nb, timings, "".join("".join(parts) + "\n" for _, parts in stderr)


def normalize_file(path: str | os.PathLike, log_dir: str | os.PathLike | None = None,
                   timing_root: str | os.PathLike | None = None) -> Path:
    """Normalize the notebook at ``path`` in place (atomically); its stderr goes to
    ``<log_dir>/<stem>.stderr.txt`` (default ``artifacts/logs``), its durations to the timing log."""
    from d2lib.core import timing

    path = Path(path)
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nb, timings, stderr = normalize(nb)
    if log_dir is None:
        from d2lib.core import paths
        log_dir = paths.artifacts("logs", mkdir=False)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{path.stem}.stderr.txt").write_text(stderr)
    if timings:
        dur = timings.get("notebook_duration")
        timing.log(path.stem, root=timing_root, **({"notebook_s": dur} if dur is not None else {}),
                   **{k: v for k, v in timings.items() if k != "notebook_duration"})
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", help="executed notebooks to normalize in place")
    args = ap.parse_args(argv)
    for p in args.notebooks:
        normalize_file(p)


if __name__ == "__main__":
    main()
