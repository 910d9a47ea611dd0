"""The paper's claims, tested on the ablation's cells (lesson ``07_ablations``).

A claim reads "row ``better`` beats row ``worse``" (:data:`CLAIMS`: factorizing beats coupled generation,
FPO after SFT helps, ...). :func:`compare` measures one claim on one metric with two intervals:

* the **per-seed differences** (the same seed gives both rows the same data order and LoRA init) with a
  t-interval over seeds (:func:`d2lib.core.stats.t_interval`);
* a **paired bootstrap over test videos** of the seed-averaged per-record differences
  (:func:`d2lib.core.stats.video_bootstrap`), for metrics that are means of per-record scores
  (:data:`d2lib.evaluation.record_metrics.RECORD_METRICS`).

:func:`claim_verdict` turns them into a verdict — *reproduces* when every available interval lies above
0, *contradicted* when one lies below 0, otherwise not resolved — :func:`evaluate_claims` tests every
claim whose two rows were run, :func:`claim_counts` tallies the verdicts and :func:`claims_statement`
writes them in plain language, computed from the numbers only.

>>> verdict(0.05, 0.01, 0.09), verdict(0.05, -0.01, 0.11), verdict(-0.05, -0.09, -0.01)
('reproduces', 'same direction, not resolved', 'contradicted')
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from d2lib.core.stats import t_interval, video_bootstrap
from d2lib.evaluation.record_metrics import RECORD_METRICS, seed_mean_records
from d2lib.study.ablation import PAPER, label

__all__ = ["Claim", "CLAIMS", "CLAIM_METRICS", "verdict", "compare", "claim_verdict", "evaluate_claims",
           "claim_counts", "claims_statement"]


@dataclass(frozen=True)
class Claim:
    """A claim of the paper (or of the design) as "row ``better`` beats row ``worse``"."""

    id: str
    better: str
    worse: str
    text: str
    source: str


CLAIMS = (
    Claim("factorize", "factorized", "coupled",
          "factorizing (ground the evidence first, then answer) beats coupled generation", "paper ablation"),
    Claim("interleave", "factorized_interleaved", "factorized",
          "answers that cite <evi> tokens beat answers with text timestamps", "paper ablation"),
    Claim("consistency", "full", "factorized_interleaved",
          "the evidence-consistency loss helps", "paper ablation"),
    Claim("fpo", "full_fpo", "full", "FPO after SFT helps", "paper ablation"),
    Claim("injection", "full", "no_visual_injection",
          "injecting the evidence's visual semantics into <evi> helps", "paper ablation"),
    Claim("span_head", "full", "frame_level",
          "span-level grounding (a sigmoid per frame) beats frame-level tokens (E.T. Chat style)", "paper ablation"),
    Claim("fpo_vs_dpo", "full_fpo", "full_dpo",
          "preference optimisation that scores the grounding too (FPO) beats text-only DPO on the same pairs",
          "paper (motivation of FPO; no number in its ablation table)"),
    Claim("evi_vs_text", "full", "text_timestamps",
          "<evi> grounding heads beat times written as text tokens (TimeChat/VTG-LLM style)",
          "design (§4 peer baseline; §9 prototype)"),
)
CLAIM_METRICS = ("F1(gnd)", "F1(cap)")


def verdict(diff: float, low: float, high: float) -> str:
    """How a difference "better − worse" with one interval ``[low, high]`` relates to the claim that it
    is positive."""
    if diff is None or not np.isfinite(diff):
        return "not computed"
    if np.isfinite(low) and low > 0:
        return "reproduces"
    if np.isfinite(high) and high < 0:
        return "contradicted"
    return "same direction, not resolved" if diff > 0 else "opposite direction, not resolved"


def compare(per_seed, records, better: str, worse: str, metric: str, level: float = 0.95, n_boot: int = 1000,
            seed: int = 0) -> dict:
    """Paired comparison of two rows on one metric: per-seed differences (same seed = same data order
    and LoRA init) with a t-interval over seeds, and a paired bootstrap over test videos of the
    seed-averaged per-record differences (where the metric is per-record).

    ``per_seed``: long DataFrame ``row, seed, metric, value`` (:func:`d2lib.study.aggregate.cells_frame`);
    ``records``: the cells' records (:func:`d2lib.study.aggregate.load_records`) or ``None``. Returns
    ``{better, worse, metric, per_seed: {seed: diff}, n_seeds, diff, low, high, boot_diff, boot_low,
    boot_high}`` (NaN where not computed)."""
    a = per_seed[(per_seed["row"] == better) & (per_seed["metric"] == metric)].set_index("seed")["value"]
    b = per_seed[(per_seed["row"] == worse) & (per_seed["metric"] == metric)].set_index("seed")["value"]
    common = sorted(set(a.dropna().index) & set(b.dropna().index))
    diffs = {int(s): float(a[s] - b[s]) for s in common}
    t = t_interval(list(diffs.values()), level)
    out = {"better": better, "worse": worse, "metric": metric, "per_seed": diffs, "n_seeds": len(common),
           "diff": t.estimate, "low": t.low, "high": t.high, "boot_diff": math.nan, "boot_low": math.nan,
           "boot_high": math.nan}
    if records is not None and len(records) and metric in RECORD_METRICS and common:
        ra = seed_mean_records(records, better, metric, common)
        rb = seed_mean_records(records, worse, metric, common)
        if ra is not None and rb is not None:
            m = ra.merge(rb, on=["task", "idx", "video"], suffixes=("_a", "_b"))
            m["value"] = m["value_a"] - m["value_b"]
            bci = video_bootstrap(m[["task", "video", "value"]], n_boot, level, seed)
            out.update(boot_diff=bci.estimate, boot_low=bci.low, boot_high=bci.high)
    return out


def claim_verdict(c: Mapping) -> str:
    """A claim × metric verdict from :func:`compare`'s output. It *reproduces* when every available
    interval — the t-interval over seeds and the video bootstrap — lies above 0; it is *contradicted*
    when one lies below 0; otherwise the sign of the mean difference decides the unresolved wording.
    With a single seed only the video bootstrap is available."""
    intervals = [(c["low"], c["high"]), (c.get("boot_low", math.nan), c.get("boot_high", math.nan))]
    intervals = [(lo, hi) for lo, hi in intervals if np.isfinite(lo) and np.isfinite(hi)]
    diff = c["diff"]
    if diff is None or not np.isfinite(diff):
        return "not computed"
    if not intervals:
        return "same direction, not resolved" if diff > 0 else "opposite direction, not resolved"
    if any(hi < 0 for _, hi in intervals):
        return "contradicted"
    if all(lo > 0 for lo, _ in intervals):
        return "reproduces"
    return "same direction, not resolved" if diff > 0 else "opposite direction, not resolved"


def evaluate_claims(per_seed, records=None, level: float = 0.95, n_boot: int = 1000,
                    claims: Sequence[Claim] = CLAIMS, metrics: Sequence[str] = CLAIM_METRICS, seed: int = 0):
    """Every claim whose two rows were run, on each of ``metrics``: a DataFrame with the paired
    comparison (:func:`compare`), the paper's difference (×100, where it reports both rows) and the
    :func:`claim_verdict`."""
    import pandas as pd

    present = set(per_seed["row"])
    out = []
    for c in claims:
        if c.better not in present or c.worse not in present:
            continue
        for m in metrics:
            r = compare(per_seed, records, c.better, c.worse, m, level, n_boot, seed)
            pa, pb = PAPER.get(c.better, {}).get(m), PAPER.get(c.worse, {}).get(m)
            r.update(claim=c.id, text=c.text, source=c.source,
                     paper_diff=(pa - pb) if pa is not None and pb is not None else math.nan,
                     per_seed=json.dumps(r["per_seed"]))
            r["verdict"] = claim_verdict(r)
            out.append(r)
    cols = ["claim", "text", "source", "better", "worse", "metric", "n_seeds", "diff", "low", "high",
            "boot_diff", "boot_low", "boot_high", "paper_diff", "verdict", "per_seed"]
    return pd.DataFrame(out, columns=cols)


def claim_counts(claims_df) -> dict:
    """How many claim × metric comparisons reproduce / are contradicted / are unresolved (any other
    verdict), computed from :func:`evaluate_claims`'s verdicts.

    >>> import pandas as pd
    >>> claim_counts(pd.DataFrame({"verdict": ["reproduces", "contradicted", "same direction, not resolved"]}))
    {'reproduced': 1, 'contradicted': 1, 'unresolved': 1, 'total': 3}
    """
    v = list(claims_df["verdict"]) if len(claims_df) else []
    rep, con = v.count("reproduces"), v.count("contradicted")
    return {"reproduced": rep, "contradicted": con, "unresolved": len(v) - rep - con, "total": len(v)}


def claims_statement(claims_df) -> str:
    """A plain-language summary of which claims reproduce, built only from ``claims_df`` (the output of
    :func:`evaluate_claims`): one line per claim, then the tally.

    >>> import pandas as pd
    >>> df = pd.DataFrame([{"claim": "x", "text": "A beats B", "better": "a", "worse": "b", "metric": "F1(gnd)",
    ...     "diff": 0.05, "low": 0.01, "high": 0.09, "boot_low": float("nan"), "boot_high": float("nan"),
    ...     "paper_diff": 7.7, "verdict": "reproduces", "n_seeds": 3}])
    >>> print(claims_statement(df))
    - A beats B (a vs b): grounding F1 +5.0 [+1.0, +9.0] (paper +7.7) — reproduces.
    <BLANKLINE>
    Reproduces on Shapes: A beats B [grounding F1].
    Not resolved with these seeds/videos: none.
    Does not reproduce (contradicted): none.
    """
    names = {"F1(gnd)": "grounding F1", "F1(cap)": "caption F1"}
    lines: list[str] = []
    groups: dict[str, dict[str, list[str]]] = {"reproduces": {}, "unresolved": {}, "contradicted": {}}
    for cid, g in claims_df.groupby("claim", sort=False):
        parts = []
        first = g.iloc[0]
        for r in g.itertuples():
            paper = f" (paper {r.paper_diff:+.1f})" if np.isfinite(r.paper_diff) else ""
            ci = f" [{100 * r.low:+.1f}, {100 * r.high:+.1f}]" if np.isfinite(r.low) else ""
            boot = (f", test-video bootstrap [{100 * r.boot_low:+.1f}, {100 * r.boot_high:+.1f}]"
                    if np.isfinite(r.boot_low) else "")
            metric = names.get(r.metric, r.metric)
            parts.append(f"{metric} {100 * r.diff:+.1f}{ci}{boot}{paper} — {r.verdict}")
            key = ("reproduces" if r.verdict == "reproduces" else "contradicted" if r.verdict == "contradicted"
                   else "unresolved")
            groups[key].setdefault(first.text, []).append(metric)
        lines.append(f"- {first.text} ({label(first.better)} vs {label(first.worse)}): " + "; ".join(parts) + ".")

    def tally(key: str) -> str:
        return "; ".join(f"{text} [{', '.join(ms)}]" for text, ms in groups[key].items()) or "none"

    lines.append("")
    lines.append("Reproduces on Shapes: " + tally("reproduces") + ".")
    lines.append("Not resolved with these seeds/videos: " + tally("unresolved") + ".")
    lines.append("Does not reproduce (contradicted): " + tally("contradicted") + ".")
    return "\n".join(lines)
