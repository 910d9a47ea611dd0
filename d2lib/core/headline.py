"""Where a stage's numbers go: the full results and the headline metrics.

Every stage that measures something writes two JSON files, both git-tracked DVC outputs (``cache: false``):

* ``artifacts/results/<stage>.json`` — everything it computed (tables, intervals, claims, schedules,
  statements). The lessons, the explorer, the book and ``python -m d2lib.tools.bench`` read this file.
* ``artifacts/metrics/<stage>.json`` — the stage's DVC ``metrics:`` file: only the few flat numbers a
  researcher compares across experiments, so ``dvc metrics show`` / ``dvc exp show`` fit a terminal
  (:data:`BUDGET` values across all stages with the default params).

:func:`write` writes both; :data:`HEADLINES` says which numbers each stage keeps. A headline always has
the same keys for the same rows (a number that was not computed is ``null``), so experiments line up.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from d2lib.core import paths

# At most this many values across all the metrics files together (``dvc exp show`` on one screen).
BUDGET = 40


def _num(x: Any) -> float | int | None:
    """A JSON number, or None (missing, NaN, inf, not a number)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return int(x) if isinstance(x, int) else v


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return None
        obj = obj[k]
    return obj


def prepare(full: Mapping) -> dict:
    """Videos and records the model trains on, records it is tested on."""
    return {"train_videos": _get(full, "train", "videos"), "train_records": _get(full, "train", "records"),
            "test_records": _get(full, "test", "records")}


def align(full: Mapping) -> dict:
    """The alignment stage's last training loss and its val loss."""
    return {"train_loss": full.get("train_loss"), "val_loss": full.get("val_loss")}


def sft(full: Mapping) -> dict:
    """Val tvg R@1 at IoU 0.5 / 0.7, mIoU, and the query control (R@1@0.5 with another query's answer)."""
    v = full.get("val_tvg") or {}
    return {"val_R1@0.5": v.get("R1@0.5"), "val_R1@0.7": v.get("R1@0.7"), "val_mIoU": v.get("mIoU"),
            "val_ctrl_R1@0.5": v.get("ctrl_R1@0.5")}


def fpo(full: Mapping) -> dict:
    """Val tvg R@1@0.5 after preference training, its change over the SFT model, val preference accuracy."""
    return {"val_R1@0.5": _get(full, "val_tvg", "R1@0.5"),
            "val_R1@0.5_delta": _get(full, "val_tvg_delta", "R1@0.5", "estimate"),
            "val_pref_acc": _get(full, "pref_after", "acc")}


def evaluate(full: Mapping) -> dict:
    """The evaluated model (the first system): E.T. Bench F1(gnd), F1(cap), Charades-style R@1@0.5; and
    the best baseline's F1(gnd)."""
    systems = list((full.get("systems") or {}).items())
    model = systems[0][1] if systems else {}
    base = [_num(_get(m, "etbench", "merged", "F1(gnd)")) for _, m in systems[1:]]
    base = [b for b in base if b is not None]
    return {"F1(gnd)": _get(model, "etbench", "merged", "F1(gnd)"),
            "F1(cap)": _get(model, "etbench", "merged", "F1(cap)"),
            "R1@0.5": _get(model, "charades", "R1@0.5"),
            "best_baseline_F1(gnd)": max(base) if base else None}


ABLATION_ROW_METRIC = "charades.R1@0.5"
ABLATION_FULL_METRICS = ("charades.R1@0.7", "F1(gnd)", "F1(cap)")


def _short(metric: str) -> str:
    return metric.split(".", 1)[1] if metric.startswith("charades.") else metric


def ablation(full: Mapping) -> dict:
    """Each row's mean test R@1@0.5 over seeds; the full model's R@1@0.7, F1(gnd) and F1(cap); how many
    claim × metric comparisons reproduce / are contradicted / are unresolved; how many rows pass the
    query control on every seed."""
    rows = full.get("rows") or {}
    out = {f"R1@0.5/{r}": _get(d, ABLATION_ROW_METRIC, "mean") for r, d in rows.items()}
    if "full" in rows:
        out.update({f"{_short(m)}/full": _get(rows["full"], m, "mean") for m in ABLATION_FULL_METRICS})
    n = full.get("claim_counts") or {}
    out.update({f"claims_{k}": n.get(k) for k in ("reproduced", "contradicted", "unresolved")})
    q = _get(full, "query_control", "rows") or {}
    out["rows_passing_query_control"] = sum(bool(v.get("all_pass")) for v in q.values())
    return out


def peers(full: Mapping) -> dict:
    """The baseline row's test R@1@0.5; how many rows are higher / lower / not resolved against it on R@1@0.5."""
    base = full.get("baseline")
    comps = [c.get("verdict") for k, c in (full.get("comparisons") or {}).items() if k.endswith("/charades.R1@0.5")]
    return {"baseline_R1@0.5": _get(full, "rows", base, "metrics", "charades.R1@0.5", "mean"),
            "rows_higher": comps.count("higher"), "rows_lower": comps.count("lower"),
            "rows_unresolved": len(comps) - comps.count("higher") - comps.count("lower")}


HEADLINES: dict[str, Callable[[Mapping], dict]] = {
    "prepare": prepare, "align": align, "sft": sft, "fpo": fpo, "evaluate": evaluate,
    "ablation": ablation, "peers": peers,
}


def headline(stage: str, full: Mapping) -> dict:
    """``{name: number or None}``: the flat numbers of ``stage``'s metrics file, from its full results."""
    return {k: _num(v) for k, v in HEADLINES[stage](full).items()}


def results_path(stage: str) -> Path:
    """``artifacts/results/<stage>.json``: the stage's full results."""
    return paths.artifacts("results", f"{stage}.json", mkdir=False)


def metrics_path(stage: str) -> Path:
    """``artifacts/metrics/<stage>.json``: the stage's headline metrics (DVC ``metrics:``)."""
    return paths.artifacts("metrics", f"{stage}.json", mkdir=False)


def results_beside(metrics_file: str | os.PathLike) -> Path:
    """The full-results file that goes with a metrics file: ``…/metrics/x.json`` → ``…/results/x.json``."""
    p = Path(metrics_file)
    return p.parent.parent / "results" / p.name


def _write_json(obj: Any, path: Path) -> Path:
    """JSON, atomically (:func:`d2lib.evaluation.formats.write_json`), key order kept: rows and systems in run order."""
    from d2lib.evaluation.formats import json_safe, write_json

    return write_json(json_safe(obj), path)


def write(stage: str, full: Mapping, metrics_file: str | os.PathLike | None = None,
          results_file: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``full`` to the stage's results file and its :func:`headline` to its metrics file (defaults:
    :func:`metrics_path`, and the results file beside the metrics file); returns ``(results, metrics)``."""
    mpath = Path(metrics_file) if metrics_file is not None else metrics_path(stage)
    rpath = Path(results_file) if results_file is not None else results_beside(mpath)
    _write_json(full, rpath)
    _write_json(headline(stage, full), mpath)
    return rpath, mpath


def count_values(obj: Any) -> int:
    """How many scalar values ``obj`` holds (what DVC shows as columns of a metrics file)."""
    if isinstance(obj, Mapping):
        return sum(count_values(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(count_values(v) for v in obj)
    return 1


if __name__ == "__main__":  # python -m d2lib.core.headline: the headline numbers of every stage that ran
    for stage in HEADLINES:
        p = metrics_path(stage)
        if p.is_file():
            print(stage, json.dumps(json.loads(p.read_text()), sort_keys=True))
