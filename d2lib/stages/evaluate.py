"""Stage ``evaluate`` (lesson ``06_evaluation``): every trained model and every baseline on the test split.

For each *system* — the trained models listed in ``evaluate.models`` (folders under ``artifacts/``,
e.g. ``sft``) and the baselines in ``evaluate.baselines`` — :func:`run`:

1. answers the Shapes records of ``evaluate.split`` (``test``): a model answers every task by greedy
   generation (:func:`d2lib.vlm.infer.predict`); a baseline answers only what a span can answer — ``tvg``
   (one span) and ``tal`` (spans) — and is scored on those grounding tasks only;
2. scores the answers with the published protocols (:mod:`d2lib.evaluation.metrics`): E.T. Bench (per task,
   merged, and the evidence stage ``_evi`` for models whose answers have a ``</evi>`` grounding
   prefix), Charades-STA R@1@{0.3,0.5,0.7} + mIoU on ``tvg``, the YouCook2/TimeChat protocol (F1,
   CIDEr, METEOR, SODA_c) on ``dvc`` — read back from the TimeChat files it wrote, so the numbers are
   what the public evaluators would see — and bootstrap 95% CIs (:mod:`d2lib.core.stats`) on the headlines;
3. writes the predictions in the public evaluators' formats (:mod:`d2lib.evaluation.formats`) under
   ``artifacts/evaluate/<system>/``: ``etbench/submission.json`` (records with ``a``: the full responses, for
   D²VLM's evaluator, which splits them at ``</evi>``), for a ground-then-answer model also
   ``etbench_stages/answer/submission.json`` and ``etbench_stages/evidence/submission.json`` (one stage each:
   what E.T. Bench's ``compute_metrics.py``, which reads the first spans of an answer, must be given to score the
   answer stage as reported here, or the evidence stage),
   ``timechat/tvg_pred.json`` + ``tvg_gt.json``, ``timechat/dvc_pred.json`` +
   ``<split>.caption_coco_format.json`` (TimeChat takes the split from that name), and
   ``details.json`` (every number, parse-path histograms included; the files by their path relative to
   the system's folder);
4. one row per (system, record) for failure analysis (:func:`record_rows`) →
   ``artifacts/plots/evaluate_records.csv``; the compact scores → ``artifacts/results/evaluate.json`` and
   their headline numbers → ``artifacts/metrics/evaluate.json`` (:mod:`d2lib.core.headline`).
   Each system's wall time (``SystemResult.seconds``) goes to the timing log ``evaluate``
   (:mod:`d2lib.core.timing`), not into the metrics.

Baselines (:mod:`d2lib.evaluation.baselines`): ``random`` (uniform span), ``prior`` (the mean normalised span of
the training split's GT, per task), ``whole`` (the whole video — the answer of a collapsed model) and ``tfvtg`` (the training-free TFVTG-style scorer over frame–query
similarities of the **aligned** model of stage ``align`` — no grounding training at all).
Nothing here is tuned on the test split: the TFVTG knobs are chosen on val (lesson 06, §5).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from d2lib.evaluation import baselines, captioning, formats, metrics
from d2lib.evaluation.record_metrics import RECORD_METRICS
from d2lib.core import io, paths, stats, timing
from d2lib.core.config import check
from d2lib.core.parsing import EVIDENCE_DELIMITER, parse_spans, split_evidence
from d2lib.core.spans import iou, iou_matrix, order_span

TASKS = ("tvg", "tal", "dvc", "rar", "gvq")
BASELINES = ("random", "prior", "whole", "tfvtg")
BASELINE_TASKS = ("tvg", "tal")  # what a span-only baseline can answer
SINGLE_SPAN = ("tvg", "gvq")


# --------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TFVTGConfig:
    """params ``evaluate.tfvtg``: the TFVTG-style baseline (:mod:`d2lib.evaluation.baselines`).

    ``model``: the folder under ``artifacts/`` of the aligned model whose similarities are scored;
    ``measure``/``layer``/``pool``/``center``: :func:`d2lib.evaluation.baselines.frame_text_similarity` (chosen
    on the **val** split with :func:`tfvtg_val_sweep`; ``sweep_videos``: val videos the lesson's sweep
    uses, 0 = all); ``min_len`` (frames)
    and ``max_frac`` (of the video's frames) bound the candidate spans — like TFVTG's minimum window
    (its stride), ``min_len`` matters: inside-minus-outside favours the single most query-like frame,
    a zero-length span ``[t, t]`` that never overlaps anything (3 frames = 2 s, the shortest Shapes
    event of the training distribution); ``dynamic_weight`` (λ),
    ``width`` and ``sigma``: :func:`d2lib.evaluation.baselines.tfvtg_scores`; ``nms_iou``: proposal NMS;
    ``tal_keep_ratio``: tal answers every NMS survivor scoring ≥ this × the best (positive) score.
    """

    model: str = "align"
    measure: Literal["cosine", "attention", "heads"] = "cosine"
    layer: int = -2
    pool: Literal["mean", "last"] = "mean"
    center: bool = True
    min_len: int = 3
    max_frac: float = 0.5
    dynamic_weight: float = 1.0
    width: int = 2
    sigma: float = 1.0
    nms_iou: float = 0.3
    tal_keep_ratio: float = 0.5
    batch_size: int = 16
    sweep_videos: int = 0

    def __post_init__(self):
        check(self.sweep_videos >= 0, "evaluate.tfvtg.sweep_videos", f"must be >= 0, got {self.sweep_videos}")
        check(self.min_len >= 1, "evaluate.tfvtg.min_len", f"must be >= 1, got {self.min_len}")
        check(0.0 < self.max_frac <= 1.0, "evaluate.tfvtg.max_frac", f"must be in (0, 1], got {self.max_frac}")
        check(self.width >= 1, "evaluate.tfvtg.width", f"must be >= 1, got {self.width}")
        check(self.sigma >= 0, "evaluate.tfvtg.sigma", f"must be >= 0, got {self.sigma}")
        check(0.0 <= self.nms_iou <= 1.0, "evaluate.tfvtg.nms_iou", f"must be in [0, 1], got {self.nms_iou}")
        check(0.0 < self.tal_keep_ratio <= 1.0, "evaluate.tfvtg.tal_keep_ratio",
              f"must be in (0, 1], got {self.tal_keep_ratio}")
        check(self.batch_size >= 1, "evaluate.tfvtg.batch_size", f"must be >= 1, got {self.batch_size}")

    def score_kwargs(self, n_frames: int) -> dict:
        """Keyword arguments of :func:`d2lib.evaluation.baselines.tfvtg_scores` for a video of ``n_frames``."""
        return {"min_len": self.min_len, "max_len": max(self.min_len, int(math.floor(self.max_frac * n_frames))),
                "dynamic_weight": self.dynamic_weight, "width": self.width, "sigma": self.sigma}


@dataclass(frozen=True)
class EvaluateConfig:
    """params section ``evaluate`` (stage ``evaluate``, lesson ``06_evaluation``).

    ``models``: trained models to evaluate, each a folder under ``artifacts/`` holding a
    ``D2VLM.save_pretrained`` directory (itself or its ``final/``); its tokenizer is the folder's
    ``tokenizer/``, else ``artifacts/align/tokenizer``. Add the folder to the stage's ``deps`` in
    dvc.yaml too. ``baselines``: any of random, prior, whole, tfvtg. ``max_videos``: evaluate the records of
    the first N videos (sorted by name; 0 = all — smoke runs use a few). ``caption_metrics``: METEOR,
    SODA_c, PTB-tokenized CIDEr (Java) and SentSim (MiniLM); ``false`` skips the ~40 s of loading them
    (smoke) and reports them as not computed; ``meteor: false`` keeps SentSim but skips the Java scorers
    (METEOR, SODA_c, PTB-tokenized CIDEr; the ablation's cells, d2lib.study.ablation). ``n_boot``/``ci_level``:
    bootstrap CIs of the headlines.
    ``num_threads``: torch threads (0 leaves torch's setting).
    """

    split: Literal["val", "test"] = "test"
    models: tuple[str, ...] = ("sft",)
    baselines: tuple[Literal["random", "prior", "whole", "tfvtg"], ...] = BASELINES
    tasks: tuple[Literal["tvg", "tal", "dvc", "rar", "gvq"], ...] = TASKS
    max_videos: int = 0
    batch_size: int = 32
    max_new_tokens: int = 96
    caption_metrics: bool = True
    meteor: bool = True
    seed: int = 0
    n_boot: int = 1000
    ci_level: float = 0.95
    num_threads: int = 0
    tfvtg: TFVTGConfig = field(default_factory=TFVTGConfig)

    def __post_init__(self):
        check(len(set(self.models)) == len(self.models), "evaluate.models", "names must be unique")
        clash = sorted(set(self.models) & set(BASELINES))
        check(not clash, "evaluate.models", f"{clash} is a baseline's name; rename the folder")
        check(len(self.tasks) > 0, "evaluate.tasks", "give one or more tasks")
        check(self.max_videos >= 0, "evaluate.max_videos", f"must be >= 0, got {self.max_videos}")
        check(self.batch_size >= 1, "evaluate.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.max_new_tokens >= 1, "evaluate.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.n_boot >= 1, "evaluate.n_boot", f"must be >= 1, got {self.n_boot}")
        check(0.0 < self.ci_level < 1.0, "evaluate.ci_level", f"must be in (0, 1), got {self.ci_level}")
        check(self.num_threads >= 0, "evaluate.num_threads", f"must be >= 0, got {self.num_threads}")


# --------------------------------------------------------------------------------------------------
# records, models, baselines
# --------------------------------------------------------------------------------------------------
def select_records(records: Sequence[Mapping], tasks: Sequence[str], max_videos: int = 0) -> list[dict]:
    """The records of ``tasks`` on the first ``max_videos`` videos by name (all with 0), order kept.

    >>> recs = [{"video": "b", "task": "tvg"}, {"video": "a", "task": "dvc"}, {"video": "a", "task": "tvg"}]
    >>> [(r["video"], r["task"]) for r in select_records(recs, ["tvg"], max_videos=1)]
    [('a', 'tvg')]
    """
    keep = sorted({r["video"] for r in records})
    keep = set(keep[:max_videos] if max_videos else keep)
    return [dict(r) for r in records if r["task"] in tasks and r["video"] in keep]


def model_dir(name: str | Path) -> Path:
    """The ``save_pretrained`` folder of a trained model: ``artifacts/<name>`` (or a path) itself if it
    holds ``d2vlm.json``, else its ``final/``."""
    base = Path(name) if Path(name).is_absolute() else paths.artifacts(str(name), mkdir=False)
    for cand in (base, base / "final"):
        if (cand / "d2vlm.json").is_file():
            return cand
    raise FileNotFoundError(f"{base}: no trained model (d2vlm.json) there or in {base / 'final'} — "
                            f"run the stage that writes it, or remove {str(name)!r} from evaluate.models")


def tokenizer_dir(model_path: Path) -> Path:
    """``<model>/tokenizer``, ``<model>/../tokenizer``, else stage align's ``artifacts/align/tokenizer``."""
    for cand in (model_path / "tokenizer", model_path.parent / "tokenizer", paths.artifacts("align", "tokenizer", mkdir=False)):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"no tokenizer for {model_path} (looked in tokenizer/, ../tokenizer/, artifacts/align/tokenizer)")


def system_name(name: str | Path) -> str:
    """The name a model is reported and stored under: ``evaluate.models`` entry as written, or the folder
    name for an absolute path.

    >>> system_name("sft"), system_name("/tmp/runs/my_model")
    ('sft', 'my_model')
    """
    return Path(name).name if Path(name).is_absolute() else str(name)


def load_model(name: str | Path):
    """``(model in eval mode, tokenizer, model folder)`` of a trained model (:func:`model_dir`)."""
    from d2lib.vlm.model import D2VLM
    from d2lib.vlm.tokens import load_tokenizer

    d = model_dir(name)
    return D2VLM.from_pretrained(d).eval(), load_tokenizer(tokenizer_dir(d)), d


def answer_delimiter(variant) -> str | None:
    """``"</evi>"`` for variants with a grounding prefix, else ``None`` (no evidence stage)."""
    return EVIDENCE_DELIMITER if getattr(variant, "prefix", False) else None


def tvg_answer(span: Sequence[float]) -> str:
    """A baseline's tvg answer in the prompt's format (times rounded to 0.1 s).

    >>> tvg_answer([3, 7.25])
    'The event happens in 3 - 7.2.'
    """
    return f"The event happens in {_fmt(span)}."


def tal_answer(spans: Sequence[Sequence[float]]) -> str:
    """A baseline's tal answer: ``'s - e, s - e'``.

    >>> tal_answer([[1, 3], [8, 9.5]])
    '1 - 3, 8 - 9.5'
    """
    return ", ".join(_fmt(s) for s in spans)


def _fmt(span) -> str:
    from d2lib.core.spans import format_span

    return format_span(order_span(span)[0])


def train_priors(train_records: Sequence[Mapping]) -> dict[str, list[tuple[float, float, float]]]:
    """``{task: [(start, end, duration), ...]}`` of the training GT spans, for :func:`d2lib.evaluation.baselines.prior_span`
    (tvg: one span per query; tal: every span of every query)."""
    out: dict[str, list] = {t: [] for t in BASELINE_TASKS}
    for r in train_records:
        if r["task"] == "tvg":
            out["tvg"].append((*r["tgt"], r["duration"]))
        elif r["task"] == "tal":
            out["tal"] += [(*s, r["duration"]) for s in r["tgt"]]
    return out


def random_answers(records: Sequence[Mapping], seed: int = 0) -> list[dict]:
    """The random baseline on the tvg/tal records (one uniform random span each; tal too)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        if r["task"] not in BASELINE_TASKS:
            continue
        span = baselines.random_span(float(r["duration"]), rng)
        out.append({**r, "a": tvg_answer(span) if r["task"] == "tvg" else tal_answer([span])})
    return out


def prior_answers(records: Sequence[Mapping], priors: Mapping[str, Sequence]) -> list[dict]:
    """The duration-prior baseline: the task's mean normalised training span, scaled to each video."""
    out = []
    for r in records:
        if r["task"] not in BASELINE_TASKS:
            continue
        span = baselines.prior_span(float(r["duration"]), priors[r["task"]])
        out.append({**r, "a": tvg_answer(span) if r["task"] == "tvg" else tal_answer([span])})
    return out


def whole_answers(records: Sequence[Mapping]) -> list[dict]:
    """The whole-video baseline: ``[0, duration]`` for every tvg/tal record. Its IoU with an event is
    ``event length / duration`` — what a model that has collapsed to "the whole video" scores.

    >>> [r["a"] for r in whole_answers([{"task": "tvg", "duration": 30}, {"task": "rar", "duration": 30}])]
    ['The event happens in 0 - 30.']
    """
    return [{**r, "a": tvg_answer([0, r["duration"]]) if r["task"] == "tvg" else tal_answer([[0, r["duration"]]])}
            for r in records if r["task"] in BASELINE_TASKS]


def tfvtg_answers(records: Sequence[Mapping], sims: Sequence[np.ndarray], cfg: TFVTGConfig,
                  fps: float = 1.0) -> list[dict]:
    """The TFVTG-style baseline from precomputed similarity curves (aligned with ``records``, tvg/tal
    only): tvg the top-1 proposal, tal every NMS survivor with score ≥ ``tal_keep_ratio`` × the best,
    in temporal order.

    >>> cfg = TFVTGConfig(sigma=0.0, width=1, min_len=2)
    >>> recs = [{"task": "tvg", "duration": 8}, {"task": "tal", "duration": 8}]
    >>> curve = np.array([0, 1, 1, 0, 0, 1, 1, 0.0])
    >>> [r["a"] for r in tfvtg_answers(recs, [curve, curve], cfg)]
    ['The event happens in 1 - 2.', '1 - 2, 5 - 6']
    """
    out = []
    for r, sim in zip(records, sims):
        if r["task"] not in BASELINE_TASKS:
            raise ValueError(f"tfvtg answers tvg/tal only, got {r['task']!r}")
        kw = cfg.score_kwargs(len(sim))
        if r["task"] == "tvg":
            span = baselines.tfvtg_span(sim, fps=fps, **kw)
            out.append({**r, "a": tvg_answer(span)})
            continue
        props = baselines.tfvtg_proposals(sim, top_k=len(sim), nms_iou=cfg.nms_iou, fps=fps, **kw)
        best = props[0][1]
        keep = [p for p, s in props if best <= 0 or s >= cfg.tal_keep_ratio * best] or [props[0][0]]
        out.append({**r, "a": tal_answer(sorted(keep))})
    return out


# --------------------------------------------------------------------------------------------------
# per-record analysis
# --------------------------------------------------------------------------------------------------
def _stage_spans(answer: str | None, delimiter: str | None, stage: str) -> list[list[float]] | None:
    """Spans read by one stage, as :mod:`d2lib.evaluation.metrics` reads them (answer part / evidence part;
    ``None`` when the stage fails, e.g. no ``</evi>``)."""
    if delimiter is None:
        text = (answer or "") if stage == "answer" else None
    else:
        ev, ans, ok = split_evidence(answer, delimiter)
        text = None if not ok else (ans if stage == "answer" else ev)
    if text is None:
        return None
    return parse_spans(text)[0]


def _coverage_iou(pred, gt) -> float:
    """Mean over GT spans of the best IoU with any prediction (0 without predictions)."""
    if not pred or not gt:
        return 0.0
    return float(iou_matrix(gt, pred).max(axis=1).mean())


def _event_of(record: Mapping, meta: Mapping | None) -> dict | None:
    """The world event a tvg/gvq/rar record is about (matched by span, and by caption when possible)."""
    if not meta:
        return None
    span = record.get("tgt") if record["task"] in SINGLE_SPAN else record.get("src") if record["task"] == "rar" else None
    if not span:
        return None
    cands = [e for e in meta.get("events", []) if [e["start"], e["end"]] == [span[0], span[1]]]
    if record["task"] == "tvg" and record.get("g"):
        cands = [e for e in cands if e.get("caption") == record["g"][0]] or cands
    if record["task"] == "rar" and record.get("o") is not None and "p" in record:
        cands = [e for e in cands if e.get("caption") == record["o"][record["p"]]] or cands
    return cands[0] if cands else None


def distractor_info(record: Mapping, meta: Mapping | None) -> dict:
    """``distractor``: does the record need attribute binding? For tvg/gvq/rar, another event in the
    video has the *same action* on a *different object* than the event asked about (the Shapes
    distractor design); for tal/dvc, the video holds an event generated as a distractor.
    ``distractor_event``: the event asked about was itself generated as a distractor (tvg/gvq/rar)."""
    events = (meta or {}).get("events", [])
    if record["task"] in ("tal", "dvc"):
        return {"distractor": any(e.get("distractor") for e in events), "distractor_event": None}
    ev = _event_of(record, meta)
    if ev is None:
        return {"distractor": None, "distractor_event": None}
    twin = any(e is not ev and e["kind"] == ev["kind"] and e["object"] != ev["object"] for e in events)
    return {"distractor": twin, "distractor_event": bool(ev.get("distractor"))}


def _mcq_correct(record: Mapping, delimiter: str | None, embed) -> tuple[bool, str]:
    """E.T. Bench's strict option reading (the similarity fallback with ``embed``), as in :mod:`d2lib.evaluation.metrics`."""
    allow_paren = record["task"] != "gvq"
    idx, path = metrics._mcq_choice(metrics._mcq_text(record.get("a"), delimiter), record["o"], embed,
                                    allow_paren=allow_paren)
    return idx is not None and idx == record["p"], path


def record_rows(system: str, answered: Sequence[Mapping], delimiter: str | None, metas: Mapping[str, Mapping],
                embed=None, thresholds: Sequence[float] = metrics.ETB_THRESHOLDS) -> list[dict]:
    """One row per answered record for failure analysis (a plain dict per row, JSON-able values).

    Columns: ``system, task, idx, video, duration, n_events`` (events in the video), ``n_gt``
    (GT spans), ``event_len`` (GT span length; mean for tal/dvc; rar: the quoted span),
    ``distractor``/``distractor_event`` (:func:`distractor_info`), ``gt``/``pred``/``pred_evi`` (spans
    as JSON lists — the answer part and the evidence part; ``[]`` when none parsed, ``pred_evi`` empty
    for systems without an evidence stage), ``parsed`` (the answer part had a span),
    ``iou``/``iou_evi`` (tvg/gvq: first span vs GT, as E.T. Bench; tal/dvc: mean over GT spans of the
    best IoU), ``iou_charades`` (tvg: the span the Charades/TimeChat files hold), ``correct`` (rar/gvq),
    ``score`` — this record's share of its task's E.T. Bench headline (tvg: mean over θ of hits; tal:
    mean over θ of the sample F1; gvq: correct × mean hits; rar: correct) or, for dvc, the YouCook2
    per-video detection F1 — and ``answer``.
    """
    rows = []
    for r in answered:
        task, a = r["task"], r.get("a")
        meta = metas.get(r["video"])
        gt = [list(map(float, r["tgt"]))] if task in SINGLE_SPAN else [list(map(float, s)) for s in r.get("tgt") or []]
        pred = _stage_spans(a, delimiter, "answer")
        pred_evi = _stage_spans(a, delimiter, "evidence") if delimiter is not None else None
        row: dict[str, Any] = {
            "system": system, "task": task, "idx": r["idx"], "video": r["video"], "duration": r["duration"],
            "n_events": len((meta or {}).get("events", [])), "n_gt": len(gt),
            "event_len": (float(np.mean([e - s for s, e in gt])) if gt else
                          float(r["src"][1] - r["src"][0]) if r.get("src") else None),
            **distractor_info(r, meta),
            "gt": json.dumps(gt), "pred": json.dumps(pred or []),
            "pred_evi": json.dumps(pred_evi or []) if delimiter is not None else None,
            "parsed": bool(pred), "iou": None, "iou_evi": None, "iou_charades": None, "correct": None,
            "score": None, "answer": a,
        }
        if task in SINGLE_SPAN:
            row["iou"] = iou(pred[0], gt[0]) if pred else 0.0
            if delimiter is not None:
                row["iou_evi"] = iou(pred_evi[0], gt[0]) if pred_evi else 0.0
            hits = float(np.mean([row["iou"] >= t for t in thresholds]))
            if task == "tvg":
                row["score"] = hits
                ts = formats.timechat_tvg_spans(a, delimiter)
                row["iou_charades"] = iou(ts[0], gt[0]) if ts else 0.0
        elif task in ("tal", "dvc"):
            row["iou"] = _coverage_iou(pred, gt)
            if delimiter is not None:
                row["iou_evi"] = _coverage_iou(pred_evi, gt)
            if task == "tal":
                row["score"] = float(np.mean([metrics.tal_f1(pred, gt, t) for t in thresholds])) if pred else 0.0
            else:
                ev = formats.timechat_dvc_events(a, delimiter)
                pr = [metrics.detection_pr([e["timestamp"] for e in ev], gt, t) for t in metrics.YC2_THRESHOLDS]
                row["score"] = metrics.f1_score(float(np.mean([p for p, _ in pr])), float(np.mean([q for _, q in pr])))
        if task in ("rar", "gvq"):
            ok, _ = _mcq_correct(r, delimiter, embed)
            row["correct"] = bool(ok)
            row["score"] = float(ok) if task == "rar" else float(ok) * hits
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8192)
def _minilm_cached(texts: tuple[str, ...]) -> np.ndarray:
    out = captioning.load_minilm()(list(texts))
    out.setflags(write=False)  # shared between callers
    return out


def minilm_embed(texts) -> np.ndarray:
    """The MiniLM sentence embeddings of ``captioning`` ("minilm"), memoised per list of texts: scoring a
    system and building its per-record rows embed the same (answer, options) lists — once each now."""
    return _minilm_cached(tuple(texts))


def _scorers(caption_metrics: bool, meteor: bool = True):
    """``(embed, captioner)`` for :mod:`d2lib.evaluation.metrics`: MiniLM + METEOR/PTB (Java), or neither; with
    ``meteor=False`` MiniLM only (no Java: METEOR/SODA_c not computed)."""
    if caption_metrics:
        return minilm_embed, captioning.get_caption_scorer() if meteor else captioning.get_caption_scorer(use_java=False)
    return None, captioning.get_caption_scorer(use_java=False)


def _ci(values, n_boot, level, seed) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    ci = stats.bootstrap_ci(values, n_boot=n_boot, level=level, seed=seed)
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high}


def headline_cis(rows: Sequence[Mapping], n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 evidence: bool = False) -> dict[str, dict]:
    """Bootstrap CIs (resampling records) of the headline numbers from :func:`record_rows` rows: one per
    metric of :data:`d2lib.evaluation.record_metrics.RECORD_METRICS` (what each metric is per record) whose tasks
    are answered, in its order.

    Keys: ``F1(gnd)`` (stratified over tvg and tal, :func:`d2lib.core.stats.mean_of_means_ci`), ``tvg.F1``,
    ``tal.F1``, ``rar.Acc``, ``gvq.Acc``, ``gvq.mRec``, ``charades.R1@{0.3,0.5,0.7}``, ``charades.mIoU``,
    ``youcook2.F1``; with ``evidence`` also ``tvg.F1_evi``. Each estimate equals the protocol's number.
    """
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["task"], []).append(r)
    kw = {"n_boot": n_boot, "level": level, "seed": seed}
    out: dict[str, dict] = {}
    for key, m in RECORD_METRICS.items():
        if m.evidence and not evidence:
            continue
        groups = [[m.value(r) for r in by[t]] for t in m.tasks if t in by]
        if not groups:
            continue
        if len(m.tasks) > 1:  # merged over tasks: the mean of the task means, resampled within each task
            ci = stats.mean_of_means_ci(groups, **kw)
            out[key] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high}
        else:
            out[key] = _ci(groups[0], **kw)
    return {k: v for k, v in out.items() if v is not None}


def write_predictions(out_dir: str | Path, answered: Sequence[Mapping], delimiter: str | None,
                      split: str = "test") -> dict[str, str]:
    """The public evaluators' files of one system under ``out_dir`` (module docstring, step 3);
    returns ``{kind: path}``. TimeChat files are written only for the tasks present."""
    out_dir = Path(out_dir)
    files = {"etbench": formats.write_etbench_submission(out_dir / "etbench" / "submission.json", answered)}
    if delimiter is not None:  # ground-then-answer: one file per stage for single-pass evaluators
        stages = formats.write_etbench_stages(out_dir / "etbench_stages", answered, delimiter=delimiter)
        files.update({f"etbench_{part}": p for part, p in stages.items()})
    tvg = [r for r in answered if r["task"] == "tvg"]
    if tvg:
        files["tvg_pred"], files["tvg_gt"] = formats.write_timechat_tvg(
            out_dir / "timechat" / "tvg_pred.json", out_dir / "timechat" / "tvg_gt.json", tvg, delimiter=delimiter)
    dvc = [r for r in answered if r["task"] == "dvc"]
    if dvc:
        files["dvc_pred"], files["dvc_gt"] = formats.write_timechat_dvc(
            out_dir / "timechat" / "dvc_pred.json", out_dir / "timechat" / f"{split}.caption_coco_format.json",
            dvc, delimiter=delimiter)
    return {k: str(v) for k, v in files.items()}


def score_system(answered: Sequence[Mapping], delimiter: str | None, files: Mapping[str, str] | None = None,
                 caption_metrics: bool = True, seed: int = 0, meteor: bool = True) -> dict[str, Any]:
    """Every protocol on one system's answers: ``{"etbench", "charades", "youcook2"}`` (full outputs of
    :func:`d2lib.evaluation.metrics.evaluate_etbench`, :func:`~d2lib.evaluation.metrics.charades_sta_from_text` and
    :func:`~d2lib.evaluation.metrics.youcook2_dvc`). tvg/dvc are scored from the TimeChat ``files`` when given
    (what the public evaluators read), else from the answers."""
    embed, captioner = _scorers(caption_metrics, meteor)
    out: dict[str, Any] = {"etbench": metrics.evaluate_etbench(answered, delimiter=delimiter, embed=embed,
                                                                captioner=captioner, seed=seed)}
    tvg = [r for r in answered if r["task"] == "tvg"]
    if tvg:
        out["charades"] = metrics.charades_sta_from_text([r.get("a") for r in tvg], [r["tgt"] for r in tvg],
                                                         delimiter=delimiter)
        if files and "tvg_pred" in files:
            ch = metrics.charades_sta_timechat(formats.read_timechat_tvg_predictions(files["tvg_pred"]),
                                               formats.read_timechat_tvg_gt(files["tvg_gt"]))
            assert all(abs(ch[k] - out["charades"][k]) < 1e-12 for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")), \
                "TimeChat tvg files disagree with the answers"  # the files hold exactly what we scored
            out["charades"]["n_missing"] = ch["n_missing"]
    dvc = [r for r in answered if r["task"] == "dvc"]
    if dvc:
        if files and "dvc_pred" in files:
            preds = formats.read_timechat_dvc_predictions(files["dvc_pred"])
            gt = metrics.youcook2_gt_from_timeit(formats.read_timechat_dvc_gt(files["dvc_gt"]))
        else:
            preds = formats.timechat_dvc_predictions(dvc, delimiter=delimiter)
            gt = metrics.youcook2_gt_from_timeit(formats.timechat_dvc_gt(dvc))
        out["youcook2"] = metrics.youcook2_dvc(preds, gt, captioner=captioner, seed=seed)
    return out


_CHARADES_KEYS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "parse_failure_rate", "n")
_YC2_KEYS = ("F1", "Precision_Mean", "Recall_Mean", "CIDEr", "CIDEr_simpletok", "METEOR", "SODA_c", "n_videos")


def compact(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers worth keeping in ``artifacts/results/evaluate.json`` from :func:`score_system`'s output:
    E.T. Bench merged + per task (headline keys, ``_evi`` variants, ``Failed`` counts), Charades-STA
    and YouCook2 headline keys. ``None`` marks a metric not computed (the reason is in ``details.json``)."""
    etb = scores["etbench"]
    merged = {k: v for k, v in etb["merged"].items() if k != "tasks"}
    tasks = {}
    for task, row in etb["tasks"].items():
        row = {k: v for k, v in row.items() if k != "n_sources"}
        groups = [g for k, g in etb["groups"].items() if k.split("/")[0] == task]
        row["n"] = sum(g["Total"] for g in groups)
        for k in ("Failed", "Failed_evi"):
            if all(k in g for g in groups):
                row[k] = sum(g[k] for g in groups)
        if task in ("dvc",):
            for k in ("METEOR", "CIDEr", "CIDEr_simpletok", "SentSim", "SentSim_simpletok"):
                if all(k in g for g in groups):
                    vals = [g[k] for g in groups]
                    row[k] = None if any(v is None for v in vals) else float(np.mean(vals))
        tasks[task] = row
    out: dict[str, Any] = {"etbench": {"merged": merged, "tasks": tasks}}
    if "charades" in scores:
        out["charades"] = {k: scores["charades"][k] for k in _CHARADES_KEYS if k in scores["charades"]}
    if "youcook2" in scores:
        out["youcook2"] = {k: scores["youcook2"][k] for k in _YC2_KEYS if k in scores["youcook2"]}
    return out


# --------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------
@dataclass
class SystemResult:
    """One evaluated system: its answers, per-record rows, all scores, compact metrics, files (absolute
    paths), seconds (wall time, kept in memory and in the timing log only)."""

    name: str
    kind: str  # "model" | "baseline"
    delimiter: str | None
    answered: list[dict]
    rows: list[dict]
    scores: dict
    metrics: dict
    files: dict
    seconds: float
    extra: dict = field(default_factory=dict)


def evaluate_system(name: str, kind: str, answered: Sequence[Mapping], delimiter: str | None,
                    metas: Mapping[str, Mapping], cfg: EvaluateConfig, out_root: str | Path,
                    seconds: float = 0.0) -> SystemResult:
    """Write one system's prediction files, score them, build its rows and CIs (see :func:`run`)."""
    t0 = time.perf_counter()
    answered = [dict(r) for r in answered]
    out_dir = Path(out_root) / name
    files = write_predictions(out_dir, answered, delimiter, cfg.split)
    scores = score_system(answered, delimiter, files, cfg.caption_metrics, cfg.seed, cfg.meteor)
    embed = minilm_embed if cfg.caption_metrics else None
    rows = record_rows(name, answered, delimiter, metas, embed=embed)
    m = compact(scores)
    m["ci"] = headline_cis(rows, cfg.n_boot, cfg.ci_level, cfg.seed, evidence=delimiter is not None)
    m.update(kind=kind, evidence_stage=delimiter is not None, n_records=len(answered))
    secs = seconds + time.perf_counter() - t0
    formats.write_json({"name": name, "kind": kind, "delimiter": delimiter, "scores": scores, "ci": m["ci"],
                        "files": {k: Path(os.path.relpath(v, out_dir)).as_posix() for k, v in files.items()}},
                       out_dir / "details.json")
    return SystemResult(name, kind, delimiter, answered, rows, scores, m, files, secs)


def _set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def evaluate_model(name: str, records: Sequence[Mapping], frames: Mapping, metas: Mapping, cfg: EvaluateConfig,
                   out_root: str | Path, progress: bool = False) -> SystemResult:
    """A trained model: its own tower encodes each video once, then :func:`d2lib.vlm.infer.predict`."""
    from d2lib.training import data
    from d2lib.vlm import infer
    from d2lib.vlm.tokens import token_budget

    t0 = time.perf_counter()
    model, tok, mdir = load_model(name)
    used = {v: frames[v] for v in {r["video"] for r in records}}
    feats = data.tower_features(model, used, progress=progress)
    answered = infer.predict(model, records, feats, tok, batch_size=cfg.batch_size,
                             max_new_tokens=cfg.max_new_tokens, keep=token_budget(model.variant).keep_masks(used))
    res = evaluate_system(system_name(name), "model", answered, answer_delimiter(model.variant), metas, cfg,
                          out_root, time.perf_counter() - t0)
    res.metrics["model_dir"] = str(Path(mdir).relative_to(paths.repo_root())) if Path(mdir).is_relative_to(paths.repo_root()) else str(mdir)
    res.metrics["variant"] = dataclasses.asdict(model.variant)
    return res


def tfvtg_similarities(records: Sequence[Mapping], frames: Mapping, cfg: TFVTGConfig,
                       progress: bool = False) -> list[np.ndarray]:
    """Similarity curves of ``records`` (tvg/tal) from the aligned model ``artifacts/<cfg.model>``."""
    from d2lib.training import data

    model, tok, _ = load_model(cfg.model)
    feats = data.tower_features(model, {v: frames[v] for v in {r["video"] for r in records}}, progress=progress)
    return baselines.frame_text_similarity(model, tok, records, feats, layer=cfg.layer, pool=cfg.pool,
                                           center=cfg.center, batch_size=cfg.batch_size, measure=cfg.measure)


def tfvtg_val_sweep(cfg: TFVTGConfig, records: Sequence[Mapping], frames: Mapping,
                    measures: Sequence[str] = ("heads", "cosine", "attention"), pools: Sequence[str] = ("mean", "last"),
                    layers: Sequence[int] | None = None, progress: bool = False):
    """Charades-STA scores of the TFVTG baseline on the **val** tvg ``records`` for every
    (measure, layer, pool) — how ``evaluate.tfvtg`` is chosen without looking at the test split.
    ``layers``: default every hidden state (cosine: 0..L) or decoder block (attention: 1..L); ``heads``
    has one setting (the grounding heads on ``hidden_states[-2]``, the query's last token).
    Returns a DataFrame sorted by mIoU (best first) with a ``chosen`` column marking ``cfg``'s setting."""
    import pandas as pd

    from d2lib.training import data

    model, tok, _ = load_model(cfg.model)
    recs = [r for r in records if r["task"] == "tvg"]
    feats = data.tower_features(model, {v: frames[v] for v in {r["video"] for r in recs}}, progress=progress)
    L = model.lm.config.num_hidden_layers
    rows = []
    for measure in measures:
        if measure == "heads":  # one setting: hidden_states[-2], the query's last token
            lays, pls = [-2], ["last"]
        else:
            lays = list(layers) if layers is not None else list(range(0 if measure == "cosine" else 1, L + 1))
            pls = list(pools)
        curves = baselines.similarity_curves(model, tok, recs, feats, lays, pls, center=cfg.center,
                                             batch_size=cfg.batch_size, measure=measure)
        for (layer, pool), sims in curves.items():
            preds = [baselines.tfvtg_span(x, **cfg.score_kwargs(len(x))) for x in sims]
            out = metrics.charades_sta(preds, [r["tgt"] for r in recs])
            chosen = measure == cfg.measure and (measure == "heads" or (
                pool == cfg.pool and layer % (L + 1) == cfg.layer % (L + 1)))
            rows.append({"measure": measure, "layer": layer, "pool": pool, "chosen": chosen,
                         **{k: out[k] for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")}})
    return pd.DataFrame(rows).sort_values("mIoU", ascending=False, kind="stable").reset_index(drop=True)


def evaluate_baseline(name: str, records: Sequence[Mapping], frames: Mapping, metas: Mapping,
                      train_records: Sequence[Mapping], cfg: EvaluateConfig, out_root: str | Path,
                      progress: bool = False) -> SystemResult:
    """One baseline on the tvg/tal records (delimiter ``None``: baselines have no evidence stage)."""
    t0 = time.perf_counter()
    recs = [r for r in records if r["task"] in BASELINE_TASKS]
    extra: dict = {}
    if name == "random":
        answered = random_answers(recs, cfg.seed)
    elif name == "prior":
        answered = prior_answers(recs, train_priors(train_records))
    elif name == "whole":
        answered = whole_answers(recs)
    elif name == "tfvtg":
        sims = tfvtg_similarities(recs, frames, cfg.tfvtg, progress)
        answered = tfvtg_answers(recs, sims, cfg.tfvtg)
        extra["similarities"] = {f"{r['task']}_{r['idx']}": s for r, s in zip(recs, sims)}
    else:
        raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
    res = evaluate_system(name, "baseline", answered, None, metas, cfg, out_root, time.perf_counter() - t0)
    res.extra = extra
    return res


def run(cfg: EvaluateConfig, out_root: str | Path | None = None, records: Sequence[Mapping] | None = None,
        frames: Mapping | None = None, metas: Mapping | None = None, train_records: Sequence[Mapping] | None = None,
        progress: bool = False, timing_name: str | None = "evaluate") -> dict[str, SystemResult]:
    """Evaluate every model of ``cfg.models`` and every baseline of ``cfg.baselines`` (module docstring).

    Defaults read the Shapes split ``cfg.split`` (records + metas from ``data/shapes``, frames from the
    ``prepare`` cache) and the training records (for the prior); tests pass their own. Writes
    ``<out_root>/<system>/...`` (default ``artifacts/evaluate``) and returns ``{system: SystemResult}``;
    :func:`write_outputs` writes the results JSON, its headline metrics and the per-record CSV. Each system's seconds go to the
    timing log ``timing_name`` as ``<system>_s`` (``None``: not logged).
    """
    from d2lib.training import data
    from d2lib.world.records import load_shapes, shapes_split_dir

    _set_threads(cfg.num_threads)
    out_root = Path(out_root) if out_root is not None else paths.artifacts("evaluate")
    if records is None or metas is None:
        split = load_shapes(shapes_split_dir(cfg.split), check_videos=False)
        records = split.records if records is None else records
        metas = split.metas if metas is None else metas
    records = select_records(records, cfg.tasks, cfg.max_videos)
    if frames is None:
        frames = data.load_frames(cfg.split, {r["video"] for r in records})
    if train_records is None and "prior" in cfg.baselines:
        train_records = data.load_records("train", BASELINE_TASKS)
    results: dict[str, SystemResult] = {}
    names = [system_name(n) for n in cfg.models]
    if len(set(names) | set(cfg.baselines)) != len(names) + len(cfg.baselines):
        raise ValueError(f"system names clash: models {names}, baselines {list(cfg.baselines)}")
    for name in cfg.models:
        results[system_name(name)] = evaluate_model(name, records, frames, metas, cfg, out_root, progress)
    for name in cfg.baselines:
        results[name] = evaluate_baseline(name, records, frames, metas, train_records or [], cfg, out_root, progress)
    if timing_name:
        timing.log(timing_name, **{f"{name}_s": res.seconds for name, res in results.items()})
    return results


def metrics_json(results: Mapping[str, SystemResult], cfg: EvaluateConfig) -> dict:
    """The content of ``artifacts/results/evaluate.json``."""
    n = {r["task"] for res in results.values() for r in res.answered}
    return {"split": cfg.split, "tasks": sorted(n), "n_records": max((len(r.answered) for r in results.values()), default=0),
            "systems": {k: v.metrics for k, v in results.items()}}


def write_outputs(results: Mapping[str, SystemResult], cfg: EvaluateConfig, metrics_path: str | Path | None = None,
                  rows_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write the compact scores (``artifacts/results/evaluate.json``, beside ``metrics_path``), their headline
    numbers (``metrics_path``, default ``artifacts/metrics/evaluate.json``) and the per-record CSV
    (``artifacts/plots/evaluate_records.csv``); returns the results file and the CSV."""
    import pandas as pd

    from d2lib.core import headline

    rows_path = Path(rows_path) if rows_path else paths.artifacts("plots", "evaluate_records.csv")
    results_path, _ = headline.write("evaluate", metrics_json(results, cfg), metrics_path)
    df = pd.DataFrame([row for res in results.values() for row in res.rows])
    io.write_csv(df, rows_path, index=False)
    return results_path, rows_path


def results_table(metrics_obj: Mapping, keys: Sequence[str] = ("F1(gnd)", "F1(gnd)_evi", "tvg.F1", "tal.F1",
                                                                "Acc(ref)", "gvq.mRec", "F1(cap)", "Sim(cap)",
                                                                "charades.R1@0.5", "charades.R1@0.7",
                                                                "charades.mIoU", "youcook2.F1",
                                                                "youcook2.CIDEr", "youcook2.METEOR",
                                                                "youcook2.SODA_c")):
    """A DataFrame (systems × metrics, ×100) from ``results/evaluate.json``; missing or not-computed cells are NaN.
    Keys: E.T. Bench merged columns (``F1(gnd)``...), ``<task>.<metric>`` from the per-task rows, and
    ``charades.<k>`` / ``youcook2.<k>``."""
    import pandas as pd

    rows = {}
    for name, m in metrics_obj["systems"].items():
        row = {}
        for k in keys:
            head, _, rest = k.partition(".")
            if not rest:
                v = m["etbench"]["merged"].get(k)
            elif head in ("charades", "youcook2"):
                v = m.get(head, {}).get(rest)
            else:
                v = m["etbench"]["tasks"].get(head, {}).get(rest)
            row[k] = np.nan if v is None else 100 * float(v)
        rows[name] = row
    return pd.DataFrame(rows).T


__all__ = ["TASKS", "BASELINES", "BASELINE_TASKS", "TFVTGConfig", "EvaluateConfig", "select_records", "model_dir",
           "tokenizer_dir", "system_name", "load_model", "answer_delimiter", "tvg_answer", "tal_answer", "train_priors",
           "random_answers", "prior_answers", "whole_answers", "tfvtg_answers", "distractor_info", "record_rows", "headline_cis",
           "write_predictions", "score_system", "compact", "SystemResult", "evaluate_system", "evaluate_model",
           "tfvtg_similarities", "tfvtg_val_sweep", "evaluate_baseline", "run", "metrics_json", "write_outputs", "results_table"]
