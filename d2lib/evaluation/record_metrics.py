"""Per-record metrics: what a headline number is for one test record (lesson ``06_evaluation``).

Most headline numbers are means over test records of a per-record score. Charades-style ``R@1@0.5`` is
the share of tvg records whose answer overlaps the ground truth with IoU ≥ 0.5, so one record's value is
1 or 0; ``mIoU`` is the mean IoU, so one record's value is its IoU. :data:`RECORD_METRICS` lists every such
metric once: the tasks whose records it averages, the column of the per-record rows it reads
(:func:`d2lib.stages.evaluate.record_rows`, the ``records.csv`` of an ablation cell) and the IoU thresholds
it counts hits at. Two users read it:

* the evaluate stage's bootstrap intervals over records (:func:`d2lib.stages.evaluate.headline_cis`);
* the ablation's bootstrap over test videos (lesson ``07_ablations``): :func:`record_values` turns the
  rows of a ``records.csv`` into one value per record, :func:`seed_mean_records` averages them over seeds.

A metric of several tasks (``F1(gnd)``: tvg and tal) is the mean over tasks of each task's mean, as E.T.
Bench merges them. Metrics that are not means of per-record scores (caption F1, SentSim, CIDEr) are not
listed.

>>> m = RECORD_METRICS["charades.R1@0.5"]
>>> m.tasks, m.column, m.thresholds
(('tvg',), 'iou_charades', (0.5,))
>>> [m.value({"iou_charades": x}) for x in (0.49, 0.5, 0.9)]
[0.0, 1.0, 1.0]
>>> RECORD_METRICS["tvg.F1_evi"].value({"iou_evi": 0.6})  # hits at 0.1, 0.3, 0.5; not at 0.7
0.75
>>> RECORD_METRICS["charades.mIoU"].value({"iou_charades": 0.6})
0.6
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from d2lib.evaluation.metrics import CHARADES_THRESHOLDS, ETB_THRESHOLDS

__all__ = ["RecordMetric", "RECORD_METRICS", "record_values", "seed_mean_records"]


@dataclass(frozen=True)
class RecordMetric:
    """One metric as a mean of per-record values.

    ``tasks``: the tasks whose records it averages (several: the mean of the per-task means);
    ``column``: the per-record column it reads; ``thresholds``: ``None`` — the column is the value (a
    score, an IoU, a 0/1 correctness); IoU thresholds — the value is the share of them the column's IoU
    reaches (1/0 for one threshold). ``evidence``: it reads the evidence stage (systems without one have
    no value).
    """

    tasks: tuple[str, ...]
    column: str
    thresholds: tuple[float, ...] | None = None
    evidence: bool = False
    description: str = ""

    def value(self, record: Mapping[str, Any]) -> float | None:
        """This metric's value for one record (a dict of :func:`d2lib.stages.evaluate.record_rows`);
        ``None`` where the column is ``None``."""
        x = record[self.column]
        if x is None:
            return None
        if self.thresholds is None:
            return float(x)
        return float(np.mean([x >= t for t in self.thresholds]))

    def values(self, rows) -> np.ndarray:
        """The value of every record of ``rows`` (a DataFrame of one task's records, e.g. read from
        ``records.csv``): ``(n,)`` floats; a missing IoU counts as no hit."""
        x = rows[self.column].astype(float).to_numpy()
        if self.thresholds is None:
            return x
        return np.mean([x >= t for t in self.thresholds], axis=0)


def _registry() -> dict[str, RecordMetric]:
    """The registry in the order the evaluate stage reports its intervals."""
    out = {
        "F1(gnd)": RecordMetric(("tvg", "tal"), "score", description="grounding F1 (E.T. Bench, tvg+tal merged)"),
        "tvg.F1": RecordMetric(("tvg",), "score", description="tvg F1: mean over the E.T. Bench thresholds of hits"),
        "tvg.F1_evi": RecordMetric(("tvg",), "iou_evi", ETB_THRESHOLDS, evidence=True,
                                   description="tvg F1 of the evidence stage's span"),
    }
    for t in CHARADES_THRESHOLDS:
        out[f"charades.R1@{t}"] = RecordMetric(("tvg",), "iou_charades", (t,),
                                               description=f"Charades-style R@1: IoU >= {t}")
    out.update({
        "charades.mIoU": RecordMetric(("tvg",), "iou_charades", description="Charades-style mean IoU"),
        "tal.F1": RecordMetric(("tal",), "score", description="tal F1: mean over the thresholds of the sample F1"),
        "rar.Acc": RecordMetric(("rar",), "correct", description="rar accuracy"),
        "gvq.Acc": RecordMetric(("gvq",), "correct", description="gvq accuracy"),
        "gvq.mRec": RecordMetric(("gvq",), "score", description="gvq recall: correct × mean hits"),
        "youcook2.F1": RecordMetric(("dvc",), "score", description="YouCook2 per-video detection F1"),
    })
    return out


#: Every per-record metric by its key (the keys of :func:`d2lib.stages.evaluate.results_table`).
RECORD_METRICS: dict[str, RecordMetric] = _registry()


def record_values(rows, metric: str):
    """Per-record values of ``metric`` from per-record rows (a DataFrame with ``task``, ``idx``, ``video``
    and the score columns, e.g. ``records.csv``): a DataFrame ``task, idx, video, value`` (the tasks in
    the metric's order), or ``None`` when ``metric`` is not a mean of per-record scores or ``rows`` has
    none of its tasks.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"task": ["tvg", "tvg", "rar"], "idx": [0, 1, 2], "video": ["a", "b", "a"],
    ...                      "iou_charades": [0.6, 0.4, None], "correct": [None, None, True]})
    >>> record_values(rows, "charades.R1@0.5")["value"].tolist(), record_values(rows, "F1(cap)")
    ([1.0, 0.0], None)
    """
    import pandas as pd

    spec = RECORD_METRICS.get(metric)
    if spec is None:
        return None
    parts = []
    for task in spec.tasks:
        d = rows[rows["task"] == task]
        if d.empty:
            continue
        parts.append(pd.DataFrame({"task": task, "idx": d["idx"].to_numpy(), "video": d["video"].to_numpy(),
                                   "value": np.asarray(spec.values(d), dtype=float)}))
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True)


def seed_mean_records(records, row: str, metric: str, seeds: Iterable[int] | None = None):
    """Per-record values of ``metric`` for ``row``, averaged over its seeds (every seed answers the same
    test records): DataFrame ``task, idx, video, value``, or ``None``. ``records``: the rows of several
    cells with their ``row`` and ``seed`` columns (:func:`d2lib.study.aggregate.load_records`)."""
    d = records[records["row"] == row]
    if seeds is not None:
        d = d[d["seed"].isin(list(seeds))]
    parts = []
    for _, g in d.groupby("seed"):
        v = record_values(g, metric)
        if v is not None:
            parts.append(v)
    if not parts:
        return None
    import pandas as pd

    return pd.concat(parts).groupby(["task", "idx", "video"], as_index=False)["value"].mean()
