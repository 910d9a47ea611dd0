"""The ablation's aggregate (lesson ``07_ablations``): read every cell, average the seeds, write the table.

``python -m d2lib.study.aggregate`` (stage ``ablation_aggregate``) runs :func:`aggregate`: it reads
every configured cell (:func:`load_cells`: ``metrics.json``; :func:`load_records`: ``records.csv``), builds
the table (:func:`summarize`) and the claims (:func:`d2lib.study.claims.evaluate_claims`), and writes
``artifacts/results/ablation.json`` (its headline numbers: ``artifacts/metrics/ablation.json``, DVC
metrics), ``artifacts/plots/ablation_{table,cells,claims,query_control}.csv`` and
``ablation_{cumulative,rows}.png`` (:func:`d2lib.study.plots.save_ablation_figures`). Two intervals per number:

* ``low``/``high`` — a **t-interval over seeds** (mean ± t₀.₉₇₅,ₙ₋₁ · sd/√n): how much the number
  moves when the *training* is repeated (n = 3 seeds by default, so t = 4.30);
* ``boot_low``/``boot_high`` — a **bootstrap over test videos** of the seed-averaged score
  (:func:`d2lib.core.stats.video_bootstrap`): how much it would move on another draw of test videos. Only
  for metrics that are means of per-record scores (:data:`d2lib.evaluation.record_metrics.RECORD_METRICS`; not
  the E.T. Bench caption F1/SentSim).

The loaders also serve the peers study (lesson ``08_peers``): its cells have the ablation's layout, and
the rows it reuses from the ablation are read from the ablation's folder (``ablation_rows``,
``ablation_root``).

>>> schedule_text("full_fpo", {"sft_steps": 60, "fpo_steps": 20, "eval_max_videos": 24})
'ablation budget: 60 SFT + 20 FPO steps; 24 test videos'
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from d2lib.core import io, paths, timing
from d2lib.core.stats import t_interval, video_bootstrap
from d2lib.evaluation.record_metrics import seed_mean_records
from d2lib.study import claims as C
from d2lib.study.ablation import (CUMULATIVE, LABELS, METRICS, PAPER, QUERY_CONTROL_RATIO, AblationConfig, Study,
                                  cell_dir, cell_folder, label, split_row)

__all__ = ["load_cells", "load_records", "cells_frame", "summarize", "wide_table",
           "query_control_table", "query_control_summary", "schedule_text", "cell_schedule", "cell_wall_times",
           "aggregate", "main"]

# The command that writes a study's cell (named in the error when a cell is missing).
_CELL_COMMANDS = {"ablation": "python -m d2lib.study.ablation cell --variant {row} --seed {seed}",
                  "peers": "python -m d2lib.study.peers cell --row {row} --seed {seed}"}


# ------------------------------------------------------------------------------------------------
# reading cells
# ------------------------------------------------------------------------------------------------
def _missing(path: Path, row: str, seed: int, study: Study, reused: bool) -> str:
    """The error for a missing cell: the file, and the command that writes it."""
    if reused:
        return (f"{path}: missing ablation cell for {study}.from_ablation row {row!r} "
                f"({_CELL_COMMANDS['ablation'].format(row=row, seed=seed)}; its seeds come from ablation.seeds)")
    return f"{path}: missing {study} cell ({_CELL_COMMANDS[study].format(row=row, seed=seed)})"


def load_cells(keys: Iterable[tuple[str, int]], root: str | Path | None = None, missing_ok: bool = False,
               study: Study = "ablation", ablation_rows: Sequence[str] = (),
               ablation_root: str | Path | None = None) -> dict:
    """``{(row, seed): metrics.json payload}`` of the cells ``keys`` (e.g. :meth:`AblationConfig.cells`),
    each read from :func:`cell_folder`. A missing cell is an error naming its file and the command that
    writes it (skipped with ``missing_ok``)."""
    out = {}
    for row, seed in keys:
        p = cell_folder(row, seed, root, study, ablation_rows, ablation_root) / "metrics.json"
        if not p.is_file():
            if missing_ok:
                continue
            raise FileNotFoundError(_missing(p, row, seed, study, row in ablation_rows))
        out[(row, seed)] = json.loads(p.read_text())
    return out


def load_records(cells: Iterable[tuple[str, int]], root: str | Path | None = None, study: Study = "ablation",
                 ablation_rows: Sequence[str] = (), ablation_root: str | Path | None = None,
                 tasks: Sequence[str] | None = None):
    """The ``records.csv`` of every cell of ``cells`` (its keys ``(row, seed)``; folders as in
    :func:`cell_folder`) as one DataFrame: the columns of :func:`d2lib.stages.evaluate.record_rows` +
    ``row``, ``seed``; with ``tasks``, only those tasks' records. A cell without the file is skipped."""
    import pandas as pd

    frames = []
    for row, seed in cells:
        p = cell_folder(row, seed, root, study, ablation_rows, ablation_root) / "records.csv"
        if p.is_file():
            d = pd.read_csv(p)
            if tasks is not None:
                d = d[d["task"].isin(list(tasks))]
            d["row"], d["seed"] = row, int(seed)
            frames.append(d)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cells_frame(cells: Mapping):
    """Long DataFrame of every cell's numbers: ``row, label, seed, metric, value`` (fractions)."""
    import pandas as pd

    rows = [{"row": row, "label": label(row), "seed": int(seed), "metric": k, "value": v}
            for (row, seed), c in cells.items() for k, v in c["values"].items()]
    df = pd.DataFrame(rows, columns=["row", "label", "seed", "metric", "value"])
    df["value"] = df["value"].astype(float)
    return df


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def summarize(per_seed, records=None, level: float = 0.95, n_boot: int = 1000, rows: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None, seed: int = 0):
    """The ablation table (long): one line per (row, metric) with ``mean`` (over seeds), ``sd``, ``n``
    (seeds), ``low``/``high`` (t-interval over seeds), ``boot_low``/``boot_high`` (bootstrap over test
    videos of the seed-averaged score; NaN where not per-record) and ``paper`` (×100 where the paper
    reports it). Values are fractions (``paper`` is ×100, as printed in the paper)."""
    import pandas as pd

    rows = list(rows) if rows is not None else list(dict.fromkeys(per_seed["row"]))
    metrics = list(metrics) if metrics is not None else list(METRICS)
    out = []
    for row in rows:
        for metric in metrics:
            vals = per_seed[(per_seed["row"] == row) & (per_seed["metric"] == metric)]["value"].dropna().to_list()
            t = t_interval(vals, level)
            b_lo = b_hi = math.nan
            if records is not None and len(records):
                rv = seed_mean_records(records, row, metric)
                if rv is not None:
                    b = video_bootstrap(rv, n_boot, level, seed)
                    b_lo, b_hi = b.low, b.high
            out.append({"row": row, "label": label(row), "metric": metric, "mean": t.estimate,
                        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan, "n": t.n,
                        "low": t.low, "high": t.high, "boot_low": b_lo, "boot_high": b_hi,
                        "paper": PAPER.get(row, {}).get(metric, math.nan)})
    return pd.DataFrame(out)


def wide_table(table, metrics: Sequence[str] | None = None, digits: int = 1):
    """The table as people read it: rows × metrics, ``"mean ± half-width"`` (×100, t-interval over
    seeds), with the paper's grounding/caption F1 side by side, the number of seeds and (when the table
    has it, as the aggregate writes it) the ablation schedule each row was trained with."""
    import pandas as pd

    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(table["metric"]))
    rows = list(dict.fromkeys(table["row"]))
    out = {}
    for row in rows:
        d = table[table["row"] == row].set_index("metric")
        line = {}
        for m in metrics:
            if m not in d.index or not np.isfinite(d.loc[m, "mean"]):
                line[m] = "—"
                continue
            mean, lo, hi = (100 * d.loc[m, k] for k in ("mean", "low", "high"))
            line[m] = f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}" if np.isfinite(lo) else f"{mean:.{digits}f}"
        for m in C.CLAIM_METRICS:
            p = PAPER.get(row, {}).get(m)
            line[f"paper {m}"] = f"{p:.1f}" if p is not None else "—"
        line["seeds"] = int(d["n"].max()) if len(d) else 0
        if "schedule" in d:
            line["schedule"] = d["schedule"].iloc[0]
        out[label(row)] = line
    return pd.DataFrame(out).T


def query_control_table(cells: Mapping):
    """One line per cell: ``row, label, seed`` and its query-use numbers (:func:`d2lib.study.ablation.query_use`:
    ``true_R1@0.5``, ``ctrl_R1@0.5``, ``any_event_R1@0.5``, ``e1_share``, ``passes``) — the table that says,
    seed by seed, whether a row's model uses the query at all."""
    import pandas as pd

    out = []
    for (row, seed), c in cells.items():
        q = (c.get("metrics") or {}).get("query_use") or {}
        out.append({"row": row, "label": label(row), "seed": int(seed),
                    **{k: q.get(k) for k in ("true_R1@0.5", "ctrl_R1@0.5", "any_event_R1@0.5", "e1_share", "passes")}})
    cols = ["row", "label", "seed", "true_R1@0.5", "ctrl_R1@0.5", "any_event_R1@0.5", "e1_share", "passes"]
    return pd.DataFrame(out, columns=cols)


def query_control_summary(qtable) -> dict:
    """Per row: does every seed pass the query control? ``{row: {"seeds_passing", "n_seeds", "all_pass"}}``."""
    out = {}
    for row, g in qtable.groupby("row", sort=False):
        ok = [p is True or p == 1.0 for p in g["passes"]]
        out[row] = {"seeds_passing": int(sum(ok)), "n_seeds": len(g), "all_pass": bool(all(ok))}
    return out


def schedule_text(row: str, sched: Mapping) -> str:
    """The ablation schedule a row was trained with, for the table (example in the module docstring)."""
    method = split_row(row)[1]
    steps = f"{sched.get('sft_steps')} SFT" + (f" + {sched.get('fpo_steps')} {method.upper()}" if method else "")
    vids = sched.get("eval_max_videos")
    return f"ablation budget: {steps} steps; {vids or 'all'} test videos"


def cell_schedule(cells: Mapping) -> dict:
    """The training/evaluation schedule the cells recorded (the ablation budget); a key on which cells
    disagree (a stale cell) lists every value seen.

    >>> cell_schedule({("a", 0): {"schedule": {"sft_steps": 60}}, ("b", 0): {"schedule": {"sft_steps": 60}}})
    {'sft_steps': 60}
    """
    seen: dict[str, list] = {}
    for c in cells.values():
        for k, v in (c.get("schedule") or {}).items():
            if k == "continues_from":
                continue
            if v not in seen.setdefault(k, []):
                seen[k].append(v)
    return {k: v[0] if len(v) == 1 else v for k, v in seen.items()}


def cell_wall_times(cells: Mapping, study: str = "ablation", timing_root: str | Path | None = None) -> dict:
    """Wall times of ``cells`` (``{(row, seed): ...}`` of ``study``) from their timing logs (0 for a cell
    with none). Never written to a hashed output; ``python -m d2lib.tools.bench`` reports the whole pipeline's."""
    secs = {f"{row}/{seed}": float(timing.read(f"{study}/{row}/{seed}", root=timing_root).get("seconds") or 0.0)
            for row, seed in cells}
    by_row: dict[str, float] = {}
    for name, sec in secs.items():
        row = name.split("/", 1)[0]
        by_row[row] = by_row.get(row, 0.0) + sec
    return {"cells_s": round(sum(secs.values()), 1), "n_cells": len(secs),
            "mean_cell_s": round(sum(secs.values()) / max(len(secs), 1), 1),
            "rows_s": {k: round(v, 1) for k, v in by_row.items()}, "per_cell_s": secs}


# ------------------------------------------------------------------------------------------------
# the aggregate command
# ------------------------------------------------------------------------------------------------
def aggregate(acfg: AblationConfig, root: str | Path | None = None, metrics_path: str | Path | None = None,
              plots_dir: str | Path | None = None, figures: bool = True, results_path: str | Path | None = None) -> dict:
    """The ``aggregate`` command: read every cell, write the full results (``results_path``, default the
    ``results/ablation.json`` beside ``metrics_path``), the headline metrics (``metrics_path``, default
    ``artifacts/metrics/ablation.json``; :mod:`d2lib.core.headline`), the CSVs and the PNGs; returns
    ``{"json": dict, "table": DataFrame, "claims": DataFrame, "per_seed": DataFrame}``."""
    from d2lib.core import headline
    from d2lib.evaluation.formats import json_safe

    t0 = time.perf_counter()
    cells = load_cells(acfg.cells(), root)
    per_seed = cells_frame(cells)
    records = load_records(cells, root)
    rows = acfg.rows()
    table = summarize(per_seed, records, acfg.ci_level, acfg.n_boot, rows=rows)
    claims = C.evaluate_claims(per_seed, records, acfg.ci_level, acfg.n_boot)
    sched = cell_schedule(cells)
    table["schedule"] = [schedule_text(r, sched) for r in table["row"]]
    plots_dir = Path(plots_dir) if plots_dir is not None else paths.artifacts("plots", mkdir=False)
    metrics_path = Path(metrics_path) if metrics_path is not None else headline.metrics_path("ablation")
    io.write_csv(table, plots_dir / "ablation_table.csv")
    io.write_csv(per_seed, plots_dir / "ablation_cells.csv")
    io.write_csv(claims, plots_dir / "ablation_claims.csv")
    qtable = query_control_table(cells)
    io.write_csv(qtable, plots_dir / "ablation_query_control.csv")
    if figures:
        from d2lib.study import plots

        plots.save_ablation_figures(table, plots_dir, CUMULATIVE, list(METRICS), C.CLAIM_METRICS, LABELS)
    obj = {
        "split": "test",
        "schedule": sched,
        "seeds": list(acfg.seeds),
        "interval": {"low/high": f"t-interval over seeds ({100 * acfg.ci_level:.0f}%, n-1 degrees of freedom)",
                     "boot_low/boot_high": f"bootstrap over test videos of the seed-averaged score "
                                           f"({acfg.n_boot} resamples; per-record metrics only)"},
        "rows": {row: {"label": label(row),
                       "paper": PAPER.get(row),
                       **{m: {k: d[k] for k in ("mean", "low", "high", "boot_low", "boot_high", "n")}
                          for m, d in ((r.metric, r._asdict()) for r in table[table["row"] == row].itertuples())}}
                 for row in rows},
        "claims": {f"{r.claim}/{r.metric}": {"diff": r.diff, "low": r.low, "high": r.high, "boot_low": r.boot_low,
                                             "boot_high": r.boot_high, "paper_diff": r.paper_diff, "verdict": r.verdict}
                   for r in claims.itertuples()},
        "statement": C.claims_statement(claims) if len(claims) else "",
        "claim_counts": C.claim_counts(claims),
        "query_control": {"rule": f"control R@0.5 <= {QUERY_CONTROL_RATIO} x true R@0.5, every seed",
                          "rows": query_control_summary(qtable)},
    }
    headline.write("ablation", json_safe(obj), metrics_path, results_path)
    timing.log("ablation_aggregate", seconds=time.perf_counter() - t0)
    return {"json": obj, "table": table, "claims": claims, "per_seed": per_seed}


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from d2lib.study.ablation import load_config

    ap = argparse.ArgumentParser(prog="python -m d2lib.study.aggregate",
                                 description="The ablation's table: mean ± CI over seeds, claims, figures → "
                                             "artifacts/results/ablation.json, artifacts/metrics/ablation.json")
    ap.add_argument("--profile", default=None, help="params profile (default: params.yaml's `profile`)")
    args = ap.parse_args(argv)
    res = aggregate(load_config(args.profile))
    print(wide_table(res["table"]).to_string())
    if res["json"]["statement"]:
        print("\n" + res["json"]["statement"])


if __name__ == "__main__":
    main()
