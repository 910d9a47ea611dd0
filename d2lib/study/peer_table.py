"""The peers table (lesson ``08_peers``): every peer cell read back, averaged over seeds, compared with D²VLM.

``python -m d2lib.study.peer_table`` (stage ``peers_aggregate``) reads the cells the peers study trained
(:mod:`d2lib.study.peers`: ``artifacts/peers/<row>/<seed>``) and the rows it reuses from the ablation, and
writes ``artifacts/results/peers.json`` (headline numbers: ``artifacts/metrics/peers.json``) and
``artifacts/plots/peers_table.csv``: accuracy with t-intervals over seeds and a bootstrap over test videos
(:func:`d2lib.study.aggregate.summarize`), the costs the code and data decide (frame tokens per video,
training steps, trainable parameters), a paired comparison of every row with ``peers.baseline``
(:func:`d2lib.study.claims.compare`) and a statement computed from them. It is its own command, apart from
the cells, so that an edit to the table, the claims or the figures never re-runs a trained cell.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from d2lib.core import io, paths, timing
from d2lib.peers.univtg import ROW as UNIVTG
from d2lib.study import claims
from d2lib.study import aggregate as ablation_aggregate
from d2lib.study.peers import (COMPARE_METRICS, TABLE_METRICS, PeersConfig, check_reused, label, load_config, root_dir,
                               source_dir)

# ------------------------------------------------------------------------------------------------
# aggregate
# ------------------------------------------------------------------------------------------------
def load_cells(pcfg: PeersConfig, root: str | Path | None = None, ablation_root: str | Path | None = None) -> dict:
    """``{(row, seed): metrics.json payload}`` of every cell of the table (:func:`d2lib.study.aggregate.load_cells`:
    a missing one is an error that names its command); a ``from_ablation`` row's payload is its ablation
    cell's (checked by :func:`check_reused`), marked ``source: "ablation"``."""
    out = ablation_aggregate.load_cells(pcfg.table_cells(), root_dir(root), study="peers",
                                        ablation_rows=pcfg.from_ablation, ablation_root=ablation_root)
    for (row, seed), payload in out.items():
        reused = row in pcfg.from_ablation
        if reused:
            check_reused(pcfg, row, seed, payload, source_dir(pcfg, row, seed, root, ablation_root) / "metrics.json")
        payload["source"] = "ablation" if reused else "peers"
    return out


def load_records(cells: Mapping, pcfg: PeersConfig, root: str | Path | None = None,
                 ablation_root: str | Path | None = None):
    """Every cell's records.csv as one DataFrame (+ ``row``, ``seed``; :func:`d2lib.study.aggregate.load_records`):
    the ``from_ablation`` rows' cells read from the ablation, every cell's records of ``pcfg.eval_tasks`` only."""
    return ablation_aggregate.load_records(cells, root_dir(root), "peers", pcfg.from_ablation, ablation_root,
                                           tasks=pcfg.eval_tasks)


def _trainable(cell: Mapping):
    """Trainable parameters of a cell's model: the LLM rows' ``train.trainable.trainable`` (LoRA, heads and
    fully trained modules), the specialist's ``train.params`` (it trains every parameter)."""
    tr = cell.get("train") or {}
    t = tr.get("trainable")
    return t.get("trainable") if isinstance(t, Mapping) else tr.get("params")


def costs(cells: Mapping, row: str) -> dict:
    """A row's costs as its code, params and data decide them, averaged over its seeds: frame tokens per video
    (what the LLM reads per prompt; the specialist: frame features), frames per video, training steps and
    trainable parameters; the seeds used. Wall times depend on the machine: ``python -m d2lib.tools.bench``
    reports them from the cells' timing logs."""
    cs = [c for (r, _), c in cells.items() if r == row]

    def mean(get):
        vals = [get(c) for c in cs]
        vals = [float(v) for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    inf = lambda c, k: (c.get("metrics", {}).get("inference") or {}).get(k)  # noqa: E731
    return {"kind": cs[0].get("kind") if cs else None,
            "frame_tokens": mean(lambda c: inf(c, "frame_tokens")),
            "frames_per_video": mean(lambda c: inf(c, "frames_per_video")),
            "train_steps": mean(lambda c: (c.get("train") or {}).get("steps")),
            "trainable_params": mean(_trainable),
            "n_queries": mean(lambda c: inf(c, "n_queries")),
            "source": cs[0].get("source", "peers") if cs else None,
            "seeds": sorted(int(s) for (r, s) in cells if r == row)}


def results_table(per_seed, records, cells: Mapping, rows: Sequence[str], level: float = 0.95,
                  n_boot: int = 1000):
    """The peers table (one line per row): for each of :data:`TABLE_METRICS` the mean over seeds and its
    intervals (``<m>_low/_high``: t over seeds, ``<m>_boot_low/_boot_high``: bootstrap over test videos;
    fractions), then :func:`costs`."""
    import pandas as pd

    long = ablation_aggregate.summarize(per_seed, records, level, n_boot, rows=rows, metrics=list(TABLE_METRICS))
    out = []
    for row in rows:
        d = long[long["row"] == row].set_index("metric")
        line = {"row": row, "label": label(row)}
        for m, col in TABLE_METRICS.items():
            for suffix, k in (("", "mean"), ("_low", "low"), ("_high", "high"), ("_boot_low", "boot_low"),
                              ("_boot_high", "boot_high")):
                line[col + suffix] = float(d.loc[m, k]) if m in d.index else math.nan
        c = costs(cells, row)
        line.update({k: c[k] for k in ("kind", "source", "frame_tokens", "frames_per_video", "train_steps",
                                       "trainable_params")})
        line["seeds"] = " ".join(map(str, c["seeds"]))
        line["n_seeds"] = len(c["seeds"])
        out.append(line)
    return pd.DataFrame(out)


def display_table(table, digits: int = 1):
    """The table as people read it: accuracy ×100 (``mean ± half-width`` of the t-interval when there are
    2+ seeds), ``n/a`` where a row does not answer the task, costs, and the seeds used."""
    import pandas as pd

    out = {}
    for d in table.to_dict("records"):
        line = {}
        for col in TABLE_METRICS.values():
            mean, lo, hi = d[col], d[col + "_low"], d[col + "_high"]
            if not np.isfinite(mean):
                line[col] = "n/a"
            elif np.isfinite(lo):
                line[col] = f"{100 * mean:.{digits}f} ± {100 * (hi - lo) / 2:.{digits}f}"
            else:
                line[col] = f"{100 * mean:.{digits}f}"
        line["frame tokens / video"] = _num(d["frame_tokens"], 1)
        line["train steps"] = _num(d["train_steps"], 0)
        line["trainable params"] = f"{d['trainable_params']:,.0f}" if _finite(d["trainable_params"]) else "—"
        line["seeds"] = f"{d['n_seeds']} ({d['seeds']})"
        line["cells"] = "ablation's" if d.get("source") == "ablation" else "peers'"
        out[d["label"]] = line
    return pd.DataFrame(out).T


def _finite(v) -> bool:
    """A number that is not None/NaN/inf (a cost a cell did not record is None)."""
    return v is not None and bool(np.isfinite(float(v)))


def _num(v, digits: int) -> str:
    return f"{v:.{digits}f}" if _finite(v) else "—"


def comparisons(per_seed, records, rows: Sequence[str], baseline: str, level: float = 0.95, n_boot: int = 1000):
    """Every row against ``baseline`` on :data:`COMPARE_METRICS` (:func:`d2lib.study.claims.compare`: per-seed
    differences with a t-interval, and the paired video bootstrap); ``verdict``: ``higher``/``lower`` when
    every available interval excludes 0, else ``not resolved``."""
    import pandas as pd

    out = []
    for row in rows:
        if row == baseline:
            continue
        for m in COMPARE_METRICS:
            c = claims.compare(per_seed, records, row, baseline, m, level, n_boot)
            v = claims.claim_verdict(c)
            c["verdict"] = {"reproduces": "higher", "contradicted": "lower"}.get(v, "not resolved")
            c["per_seed"] = json.dumps(c["per_seed"])
            out.append(c)
    return pd.DataFrame(out, columns=["better", "worse", "metric", "n_seeds", "diff", "low", "high", "boot_diff",
                                      "boot_low", "boot_high", "per_seed", "verdict"])


def statement(table, comps, baseline: str) -> str:
    """Plain-language lines computed from the table and the comparisons (no typed numbers): per row its
    R@1@0.5 / mIoU difference to ``baseline`` with the intervals and verdict, then its costs relative to it."""
    t = table.set_index("row")
    if baseline not in t.index:
        return ""
    b = t.loc[baseline]
    names = {"charades.R1@0.5": "R@1@0.5", "charades.mIoU": "mIoU"}
    lines = []
    for row, g in comps.groupby("better", sort=False):
        parts = []
        for c in g.itertuples():
            ci = f" [t over seeds {100 * c.low:+.1f}, {100 * c.high:+.1f}]" if np.isfinite(c.low) else ""
            boot = f" [videos {100 * c.boot_low:+.1f}, {100 * c.boot_high:+.1f}]" if np.isfinite(c.boot_low) else ""
            parts.append(f"{names[c.metric]} {100 * c.diff:+.1f}{ci}{boot} ({c.verdict})")
        r = t.loc[row]
        cost = []
        if _finite(r["frame_tokens"]) and _finite(b["frame_tokens"]):
            cost.append(f"{r['frame_tokens']:.1f} vs {b['frame_tokens']:.1f} frame tokens/video")
        if _finite(r["trainable_params"]) and _finite(b["trainable_params"]):
            cost.append(f"{r['trainable_params']:,.0f} vs {b['trainable_params']:,.0f} trainable parameters")
        if _finite(r["train_steps"]) and _finite(b["train_steps"]) and r["train_steps"] != b["train_steps"]:
            cost.append(f"{r['train_steps']:.0f} vs {b['train_steps']:.0f} training steps")
        seeds = f"{int(r['n_seeds'])} seed(s)"
        lines.append(f"- {label(row)} vs {label(baseline)}: " + "; ".join(parts) + (f"; {', '.join(cost)}" if cost else "")
                     + f"; {seeds}.")
    return "\n".join(lines)


def aggregate(pcfg: PeersConfig, root: str | Path | None = None, metrics_path: str | Path | None = None,
              plots_dir: str | Path | None = None, ablation_root: str | Path | None = None,
              results_path: str | Path | None = None) -> dict:
    """The ``aggregate`` command: read every cell (the ``from_ablation`` rows' from ``ablation_root``,
    default ``artifacts/ablation``), write the full results (``results_path``, default the ``results/peers.json``
    beside ``metrics_path``), the headline metrics (``metrics_path``, default ``artifacts/metrics/peers.json``;
    :mod:`d2lib.core.headline`) and ``peers_table.csv``; returns
    ``{"json", "table", "comparisons", "per_seed", "records"}``."""
    from d2lib.core import headline
    from d2lib.evaluation.formats import json_safe

    t0 = time.perf_counter()
    cells = load_cells(pcfg, root, ablation_root)
    per_seed = ablation_aggregate.cells_frame(cells)
    per_seed["label"] = [label(r) for r in per_seed["row"]]
    records = load_records(cells, pcfg, root, ablation_root)
    own = {k: c for k, c in cells.items() if c.get("source") != "ablation"}
    rows = pcfg.all_rows()
    table = results_table(per_seed, records, cells, rows, pcfg.ci_level, pcfg.n_boot)
    comps = comparisons(per_seed, records, rows, pcfg.baseline, pcfg.ci_level, pcfg.n_boot)
    plots_dir = Path(plots_dir) if plots_dir is not None else paths.artifacts("plots", mkdir=False)
    metrics_path = Path(metrics_path) if metrics_path is not None else headline.metrics_path("peers")
    io.write_csv(table, plots_dir / "peers_table.csv")
    text = statement(table, comps, pcfg.baseline)
    obj = {
        "split": "test", "baseline": pcfg.baseline, "seeds": list(pcfg.seeds),
        "schedule": {**pcfg.schedule(), **{"recorded": ablation_aggregate.cell_schedule(own)}},
        "from_ablation": {"rows": list(pcfg.from_ablation),
                          "note": "cells trained by the ablation with the same schedule (checked), scored here on "
                                  "peers.eval_tasks only"},
        "interval": {"low/high": f"t-interval over seeds ({100 * pcfg.ci_level:.0f}%; none with one seed)",
                     "boot_low/boot_high": f"bootstrap over test videos ({pcfg.n_boot} resamples)"},
        "rows": {r["row"]: {"label": r["label"], "kind": r["kind"],
                            "metrics": {m: {k: r[c + s] for k, s in (("mean", ""), ("low", "_low"), ("high", "_high"),
                                                                     ("boot_low", "_boot_low"),
                                                                     ("boot_high", "_boot_high"))}
                                        for m, c in TABLE_METRICS.items()},
                            "cost": costs(cells, r["row"])}
                 for r in table.to_dict("records")},
        "comparisons": {f"{c.better}/{c.metric}": {"diff": c.diff, "low": c.low, "high": c.high,
                                                   "boot_low": c.boot_low, "boot_high": c.boot_high,
                                                   "n_seeds": c.n_seeds, "verdict": c.verdict}
                        for c in comps.itertuples()},
        "not_applicable": {UNIVTG: ["F1(cap)"]} if UNIVTG in rows else {},
        "statement": text,
    }
    headline.write("peers", json_safe(obj), metrics_path, results_path)
    timing.log("peers_aggregate", seconds=time.perf_counter() - t0)
    return {"json": obj, "table": table, "comparisons": comps, "per_seed": per_seed, "records": records}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m d2lib.study.peer_table", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="params profile (default: params.yaml's `profile`)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    res = aggregate(load_config(args.profile))
    print(display_table(res["table"]).to_string())
    if res["json"]["statement"]:
        print("\n" + res["json"]["statement"])


if __name__ == "__main__":
    main()


__all__ = ["load_cells", "load_records", "costs", "results_table", "display_table", "comparisons", "statement",
           "aggregate", "main"]
