"""Evaluation protocols: Charades-STA, E.T. Bench (tvg/epm/tem/tal/rar/gvq/dvc) and YouCook2 (TimeChat).

Taught in lesson ``06_evaluation``. Each protocol is re-implemented from its published definition;
``docs/METRICS.md`` lists every known difference from each published evaluator, with the test that
asserts it. Every public function returns a plain, JSON-serialisable dict of floats and counts,
including parse failures and the parse-path histogram.

Conventions shared by all protocols

* IoU is :mod:`d2lib.core.spans`' one implementation (``inter / hull``, 0 without overlap). Thresholds use
  ``>=`` (Charades-STA, E.T. Bench tvg/tem/tal/gvq), except where the protocol says "strictly greater".
* **Exact ties.** Every threshold is decided exactly on the decimals the answer and the ground truth
  write (``arithmetic="exact"``, the default; :func:`d2lib.core.spans.reaches`): GT ``[22, 28]`` vs
  ``20.2 - 25.9`` has IoU exactly 1/2 and is a hit at 0.5, an IoU of exactly 0.7 is a hit at 0.7.
  The published scripts decide ties by the rounding of their floats, so a tie hits or misses depending
  on the value: E.T. Bench's ``compute_metrics.py`` and D²VLM's ``new_compute_metrics.py`` compute IoU in
  float32 (nncore) — an integer-span tie at 0.1/0.3/0.5 hits, at 0.7 it misses for tvg/epm/tem/gvq
  (float32 rounds 7/10 below the float 0.7) and hits for tal (compared in float32); the 1/2 above hits.
  TimeChat's ``eval_tvg.py`` (and D²VLM's Charades script) use float64 — integer ties hit, decimal ties
  either way (the 1/2 above computes as 0.4999999999999998: a miss). Where a number must match a script
  bit for bit, pass its arithmetic: ``arithmetic="float32"`` (E.T. Bench, D²VLM) or ``"float64"``
  (TimeChat); mIoU and the other float outputs stay floats in every arithmetic.
* Dense captioning (E.T. Bench dvc and YouCook2) follows densevid_eval: detection counts IoU strictly
  ``> θ``; caption pairing writes ``>= θ`` on ``inter / (union + 1e-8)`` (:func:`dense_iou_matrix`),
  which never pairs an exact tie. The exact rule is therefore IoU ``> θ`` for both (:func:`dense_hits`):
  the published decisions, decided exactly; ``arithmetic="float64"`` uses the ``1e-8`` formula itself.
* Predictions are not clipped to the video: a span past the duration is scored as written.
* Every query/sample stays in the denominator; an unparsable answer scores 0 (except where the protocol
  says otherwise, e.g. E.T. Bench dvc, which scores parsed samples and multiplies by the parse rate).
* **E.T. Bench evidence stage** (``_evi`` keys, D²VLM). By default (``evidence="independent"``) it is
  the same metric on the spans written before ``</evi>``, scored on its own: an evidence part without a
  span is a failure (0), whatever the answer part holds, and evidence read from a sample whose answer
  part has no span still counts; dvc's evidence stage is detection only, scaled by its own parse rate.
  A missing ``</evi>`` fails both stages. D²VLM's ``new_compute_metrics.py`` couples the two stages
  instead; ``evidence="d2vlm"`` reproduces that exactly (with ``arithmetic="float32"``, bit for bit):

  - a sample whose answer part has no readable span is counted as failed and its evidence is not scored
    (0): ``8 - 11 </evi> The event happens in 14 - - 15.`` with GT ``[8, 10]`` has evidence IoU 2/3
    when independent, 0 when coupled;
  - an evidence part without an ``a - b`` span is replaced by the answer's spans (tvg/epm/tem/tal;
    gvq scores it 0, dvc scores its detection 0 among the answer-parsed samples);
  - tal: a sample's evidence F1 at θ counts only where its answer reaches θ, and where the answer
    reaches θ but the evidence does not, the script resets the running evidence sum at θ to 0
    (``f1_score_evi[i] = 0``) — order-dependent, reproduced as written.

  Independent scoring is the default because the ``_evi`` numbers are meant to measure evidence
  grounding: under the coupling an evidence score depends on whether the *answer* text parsed, and an
  absent evidence stage is credited with the answer's spans.
* D²VLM's tvg takes the best of all answer (and evidence) spans; we keep E.T. Bench's first span
  (identical for one-span answers) in both evidence modes.
* Random references for unmatched captions come from ``random.Random(seed)`` (the official scripts
  use the unseeded global generator), so results are reproducible.
* The caption scorers (MiniLM, the PTB tokenizer, METEOR, CIDEr-D) live in
  :mod:`d2lib.evaluation.captioning`. Metrics that need Java (METEOR, hence SODA_c; the PTB tokenizer)
  are never approximated under their own name: without Java, ``METEOR``/``SODA_c`` are ``None`` with a
  reason under ``not_computed``, and token-based scores computed over the pure-Python tokenizer get a
  ``_simpletok`` suffix (``CIDEr_simpletok``, ``SentSim_simpletok``) while ``CIDEr``/``SentSim`` stay
  ``None``.
* A model answer never stops an evaluation: an answer that is not a string (``5``, ``[1, 2]``, ``nan``),
  or that writes an impossible time (``1e3``, ``0:99``, a 400-digit number; :mod:`d2lib.core.parsing`),
  is a counted parse failure (parse paths ``not_text``/``invalid_time``) and scores as a miss.

>>> charades_sta([[0, 10], None, [20, 40]], [[0, 10], [0, 5], [25, 35]])["R1@0.5"]
0.6666666666666666
"""
from __future__ import annotations

import random
import string
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from d2lib.core.parsing import (
    EVIDENCE_DELIMITER,
    INVALID_TIME,
    NOT_TEXT,
    is_not_text,
    parse_dense_captions,
    parse_option,
    parse_spans,
    split_evidence,
    strip_option_prefix,
)
from d2lib.core.spans import ARITHMETICS, iou_matrix, iou_value, iou_values, order_span, reaches
from d2lib.evaluation.captioning import Embed, cider_d, resolve_captioner, resolve_embed

__all__ = [
    "ETB_THRESHOLDS", "CHARADES_THRESHOLDS", "YC2_THRESHOLDS",
    "ARITHMETICS", "EVIDENCE_MODES",
    "f1_score", "recall_at", "dense_iou_matrix", "dense_hits", "detection_pr", "tal_f1", "order_preserving_max",
    "soda_f1",
    "charades_sta", "charades_sta_from_text", "charades_sta_timechat",
    "etbench_task", "evaluate_etbench",
    "youcook2_gt_from_official", "youcook2_gt_from_timeit", "youcook2_dvc",
]

ETB_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)
CHARADES_THRESHOLDS = (0.3, 0.5, 0.7)
YC2_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
DENSE_IOU_EPS = 1e-8
EVIDENCE_MODES = ("independent", "d2vlm")

Span = Sequence[float]


# --------------------------------------------------------------------------------------------------
# Small pure building blocks
# --------------------------------------------------------------------------------------------------
def f1_score(p: float, r: float) -> float:
    """Harmonic mean, 0 when both are 0.

    >>> f1_score(0.5, 1.0)
    0.6666666666666666
    >>> f1_score(0.0, 0.0)
    0.0
    """
    return 0.0 if p + r == 0 else float(2 * p * r / (p + r))


def recall_at(ious: Sequence, thresholds: Sequence[float], n: int | None = None,
              arithmetic: str = "exact") -> list[float]:
    """``R@θ = #{IoU >= θ} / n`` for each threshold (``n`` defaults to ``len(ious)``; 0 when ``n == 0``).

    ``ious``: values from :func:`d2lib.core.spans.iou_value` with the same ``arithmetic`` (exact fractions by
    default; plain floats are read as the decimals they print as). Ties are decided by
    :func:`d2lib.core.spans.reaches`.

    >>> recall_at([0.5, 0.29, 0.0], (0.3, 0.5))
    [0.3333333333333333, 0.3333333333333333]
    """
    n = len(ious) if n is None else n
    return [sum(reaches(v, t, arithmetic) for v in ious) / n if n else 0.0 for t in thresholds]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def dense_iou_matrix(pred: Iterable[Span], gt: Iterable[Span]) -> np.ndarray:
    """densevid_eval IoU ``inter / (union + 1e-8)``, shape ``(len(pred), len(gt))``.

    Equal to :func:`d2lib.core.spans.iou_matrix` up to the ``1e-8``, which makes an exact tie fall just below
    its threshold (as in the official dense-captioning evaluators).

    >>> float(dense_iou_matrix([[0, 5]], [[0, 10]])[0, 0]) < 0.5
    True
    """
    a = np.asarray(list(pred), dtype=float).reshape(-1, 2)
    b = np.asarray(list(gt), dtype=float).reshape(-1, 2)
    hull = np.maximum(a[:, None, 1], b[None, :, 1]) - np.minimum(a[:, None, 0], b[None, :, 0])
    # iou_matrix = inter / hull (hull = union when overlapping) -> inter / (union + eps)
    return iou_matrix(a, b, "float64") * hull / (hull + DENSE_IOU_EPS)


def dense_hits(pred: Sequence[Span], gt: Sequence[Span], threshold: float, arithmetic: str = "exact",
               op: str = ">") -> np.ndarray:
    """Dense-captioning pairs that pass a tIoU, shape ``(len(pred), len(gt))`` of bools.

    The published dense evaluators (densevid_eval style: E.T. Bench's ``DVCEval``, TimeChat's
    ``eval_dvc.py``) compare :func:`dense_iou_matrix` (float64, ``+1e-8``) with ``>`` (detection) or ``>=``
    (caption pairing); any non-exact ``arithmetic`` does exactly that. With ``"exact"`` both mean IoU
    strictly ``> θ`` on the exact IoU: the ``1e-8`` makes an exact tie fail ``>=`` as well, and moves no
    decimal IoU across θ otherwise, so this is the published rule decided exactly.

    >>> dense_hits([[0, 5], [0, 6]], [[0, 10]], 0.5, op=">=").ravel().tolist()  # 0.5 is a tie: no pair
    [False, True]
    """
    if op not in (">", ">="):
        raise ValueError(f"op must be '>' or '>=', got {op!r}")
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((len(pred), len(gt)), dtype=bool)
    if arithmetic == "exact":
        return np.array([[reaches(v, threshold, strict=True) for v in row] for row in iou_values(pred, gt)],
                        dtype=bool).reshape(len(pred), len(gt))
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    m = dense_iou_matrix(pred, gt)
    return m > threshold if op == ">" else m >= threshold


def detection_pr(pred: Sequence[Span], gt: Sequence[Span], threshold: float,
                 arithmetic: str = "exact") -> tuple[float, float]:
    """Dense-captioning detection ``(precision, recall)`` at one tIoU: a pred (a GT) is covered when some
    GT (pred) has IoU strictly ``> threshold`` (:func:`dense_hits`). ``precision = covered / max(#pred, 1)``,
    ``recall = covered / #GT``. Duplicated predictions are each counted as covered.

    >>> detection_pr([[0, 10], [0, 10], [50, 60]], [[0, 10], [20, 30]], 0.5)
    (0.6666666666666666, 0.5)
    """
    if len(gt) == 0:
        return 0.0, 0.0
    if len(pred) == 0:
        return 0.0, 0.0
    hit = dense_hits(pred, gt, threshold, arithmetic, ">")
    return float(hit.any(axis=1).sum() / len(pred)), float(hit.any(axis=0).sum() / len(gt))


def _share(count: int, total: int, arithmetic: str) -> float:
    """``count / total``; in float32 under ``"float32"`` (E.T. Bench's ``(...).float().mean().item()``)."""
    if arithmetic == "float32":
        return float(np.float32(count) / np.float32(total))
    return count / total


def tal_f1(pred: Sequence[Span], gt: Sequence[Span], threshold: float, arithmetic: str = "exact") -> float:
    """E.T. Bench tal, one sample: ``rec`` = share of GT spans whose best pred IoU ``>= θ``,
    ``prc`` = share of preds whose best GT IoU ``>= θ``; F1 of the two (0 when no pair reaches θ).

    ``arithmetic="float32"`` is E.T. Bench's script bit for bit: float32 IoU compared with θ *cast to
    float32* (tensor vs Python scalar) and the shares taken in float32.

    >>> tal_f1([[0, 10], [40, 50]], [[0, 10], [20, 30]], 0.5)  # prc 1/2, rec 1/2
    0.5
    """
    if len(pred) == 0 or len(gt) == 0:
        return 0.0
    hit = [[reaches(v, threshold, arithmetic, float32_threshold=True) for v in row]
           for row in iou_values(gt, pred, arithmetic)]  # (n_gt, n_pred)
    if not any(map(any, hit)):
        return 0.0
    rec = _share(sum(map(any, hit)), len(hit), arithmetic)
    prc = _share(sum(any(col) for col in zip(*hit)), len(pred), arithmetic)
    return f1_score(prc, rec)


def order_preserving_max(scores: np.ndarray) -> float:
    """Best total score of a one-to-one assignment that keeps the order of rows and columns.

    ``scores``: shape ``(n_gt, n_pred)``, non-negative. This is SODA's matching (Fujita et al., ECCV 2020):
    ``D[i, j] = max(D[i-1, j], D[i, j-1], D[i-1, j-1] + S[i-1, j-1])`` over prefixes.

    >>> order_preserving_max(np.array([[0.0, 1.0], [1.0, 0.0]]))  # crossing pairs are not allowed
    1.0
    >>> order_preserving_max(np.array([[0.9, 0.1], [0.2, 0.8]]))
    1.7000000000000002
    """
    scores = np.asarray(scores, dtype=float)
    n, m = scores.shape
    d = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = max(d[i - 1, j], d[i, j - 1], d[i - 1, j - 1] + scores[i - 1, j - 1])
    return float(d[n, m])


def soda_f1(iou_gt_pred: np.ndarray, meteor_gt_pred: np.ndarray) -> float:
    """SODA_c of one video: ``s`` = :func:`order_preserving_max` of IoU × METEOR (both ``(n_gt, n_pred)``,
    IoU not thresholded); ``P = s / n_pred``, ``R = s / n_gt``, F1 of the two; 0 without predictions.

    >>> soda_f1(np.array([[1.0, 0.0], [0.0, 0.5]]), np.array([[0.5, 0.0], [0.0, 1.0]]))
    0.5
    """
    iou_gt_pred = np.asarray(iou_gt_pred, dtype=float)
    if iou_gt_pred.size == 0:
        return 0.0
    n_gt, n_pred = iou_gt_pred.shape
    s = order_preserving_max(iou_gt_pred * np.asarray(meteor_gt_pred, dtype=float))
    return f1_score(s / n_pred, s / n_gt)


def _first_span(value) -> list[float] | None:
    """A prediction's first span from ``[s, e]`` or ``[[s, e], ...]``; ``None`` if empty/missing."""
    if value is None or len(value) == 0:
        return None
    if isinstance(value[0], (int, float)):
        return order_span(value)[0] if len(value) == 2 else None
    return order_span(value[0])[0] if len(value[0]) == 2 else None


# --------------------------------------------------------------------------------------------------
# Charades-STA
# --------------------------------------------------------------------------------------------------
def charades_sta(pred_spans: Sequence[Span | None], gt_spans: Sequence[Span],
                 thresholds: Sequence[float] = CHARADES_THRESHOLDS,
                 paths: Sequence[str] | None = None, arithmetic: str = "exact") -> dict[str, Any]:
    """Charades-STA R@1 at each IoU and mIoU over **all** queries; ``None`` (unparsed) scores IoU 0.

    ``pred_spans[i]`` is the top-1 span for ``gt_spans[i]``. Output keys: ``R1@θ``, ``mIoU``, ``n``,
    ``n_failed``, ``parse_failure_rate`` and, with ``paths``, ``parse_paths`` (a histogram).
    ``arithmetic``: ``"exact"`` (ties decided exactly) or ``"float64"`` (TimeChat's ``eval_tvg.py`` and
    D²VLM's Charades script bit for bit), see :mod:`d2lib.core.spans`.

    >>> out = charades_sta([[0, 10], None], [[0, 10], [0, 5]])
    >>> out["R1@0.7"], out["mIoU"], out["parse_failure_rate"]
    (0.5, 0.5, 0.5)
    """
    if len(pred_spans) != len(gt_spans):
        raise ValueError(f"{len(pred_spans)} predictions for {len(gt_spans)} queries")
    ious = [iou_value(order_span(p)[0], g, arithmetic) if p is not None else 0.0
            for p, g in zip(pred_spans, gt_spans)]
    n = len(gt_spans)
    n_failed = sum(p is None for p in pred_spans)
    out: dict[str, Any] = {f"R1@{t}": r for t, r in zip(thresholds, recall_at(ious, thresholds, n, arithmetic))}
    out.update(mIoU=_mean(map(float, ious)), n=n, n_failed=n_failed, parse_failure_rate=n_failed / n if n else 0.0)
    if paths is not None:
        out["parse_paths"] = dict(Counter(paths))
    return out


def _grounding_from_text(text: str | None, delimiter: str | None, evidence_fallback: bool):
    """First span of an answer for Charades-style grounding: ``(span | None, path)``."""
    if is_not_text(text):
        return None, NOT_TEXT
    if delimiter is None:
        spans, path = parse_spans(text)
        return (spans[0] if spans else None), path
    evidence, answer, ok = split_evidence(text, delimiter)
    if not ok:
        return None, "no_delimiter"
    spans, path = parse_spans(answer)
    if spans:
        return spans[0], path
    if evidence_fallback:
        spans, _ = parse_spans(evidence)
        if spans:
            return spans[0], "evidence_fallback"
    return None, path


def charades_sta_from_text(answers: Sequence[str | None], gt_spans: Sequence[Span],
                           delimiter: str | None = None, evidence_fallback: bool = True,
                           thresholds: Sequence[float] = CHARADES_THRESHOLDS,
                           arithmetic: str = "exact") -> dict[str, Any]:
    """:func:`charades_sta` on raw answers: the first parsed span of each (:func:`parse_spans`).

    With ``delimiter`` (``"</evi>"``, D²VLM), the span comes from the answer part, else (when
    ``evidence_fallback``) from the evidence part, as D²VLM's Charades script; a missing delimiter fails.

    >>> out = charades_sta_from_text(["3 - 7</evi>The event happens in 2 - 8.", "0 - 4</evi>Sorry."],
    ...                              [[2, 8], [0, 4]], delimiter="</evi>")
    >>> out["R1@0.7"], out["parse_paths"]
    (1.0, {'range': 1, 'evidence_fallback': 1})
    """
    parsed = [_grounding_from_text(a, delimiter, evidence_fallback) for a in answers]
    return charades_sta([p for p, _ in parsed], gt_spans, thresholds, paths=[path for _, path in parsed],
                        arithmetic=arithmetic)


def charades_sta_timechat(preds: Mapping[str, Mapping], gt: Mapping[str, Any],
                          thresholds: Sequence[float] = CHARADES_THRESHOLDS,
                          arithmetic: str = "exact") -> dict[str, Any]:
    """Charades-STA on TimeChat/TimeIT files, N = all GT queries.

    ``preds``: ``{id: {"timestamp": [[s, e], ...] (or one [s, e]), "query": str, "vid": str}}``;
    ``gt``: ``{"annotations": [{"image_id", "caption", "timestamp": [s, e], "id"}, ...]}``.
    A query with no prediction, an empty ``timestamp`` or no ``timestamp`` key scores IoU 0 (D²VLM's
    script drops such queries from N instead, which inflates its numbers). Extra: ``n_missing``
    (ids absent from ``preds``) and ``n_extra`` (prediction ids not in GT).

    >>> gt = {"annotations": [{"image_id": "A.mp4", "caption": "x", "timestamp": [0, 10], "id": 0},
    ...                       {"image_id": "A.mp4", "caption": "y", "timestamp": [5, 9], "id": 1}]}
    >>> charades_sta_timechat({"0": {"timestamp": [[0, 10]]}, "1": {"timestamp": []}}, gt)["R1@0.3"]
    0.5
    """
    by_id = {str(k): v for k, v in preds.items()}
    gt_ids = [str(a["id"]) for a in gt["annotations"]]
    spans = [_first_span((by_id.get(i) or {}).get("timestamp")) for i in gt_ids]
    out = charades_sta(spans, [a["timestamp"] for a in gt["annotations"]], thresholds, arithmetic=arithmetic)
    out["n_missing"] = sum(i not in by_id for i in gt_ids)
    out["n_extra"] = len(set(by_id) - set(gt_ids))
    return out


# --------------------------------------------------------------------------------------------------
# Caption pairs (dense captioning)
# --------------------------------------------------------------------------------------------------
def _random_ref(rng: random.Random) -> str:
    """A 10–20 letter random "reference" for an unmatched prediction (so it scores ~0), as the
    official evaluators do; drawn from a seeded generator so results are reproducible."""
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(10, 20)))


def _caption_pairs(pred_spans, pred_caps, gt_spans, gt_caps, threshold, rng,
                   arithmetic: str = "exact") -> list[tuple[str, str]]:
    """(hyp, ref) pairs at one tIoU: each prediction with every GT of dense IoU ``>= threshold``
    (:func:`dense_hits`: an exact tie is never paired); an unmatched prediction with a random string."""
    pairs = []
    m = dense_hits(pred_spans, gt_spans, threshold, arithmetic, ">=") if len(pred_spans) and len(gt_spans) else None
    for i, cap in enumerate(pred_caps):
        matched = [j for j in range(len(gt_caps)) if m is not None and m[i, j]]
        pairs += [(cap, gt_caps[j]) for j in matched] or [(cap, _random_ref(rng))]
    return pairs


def _labelled(out: dict, not_computed: dict, key: str, value, tokenizer: str) -> None:
    """Store a token-based score under ``key`` (PTB) or ``key + "_simpletok"`` (fallback tokenizer)."""
    if tokenizer == "ptb":
        out[key] = value
    else:
        out[key] = None
        out[f"{key}_simpletok"] = value
        not_computed[key] = f"the PTB tokenizer needs Java; {key}_simpletok uses the pure-Python tokenizer"


# --------------------------------------------------------------------------------------------------
# E.T. Bench
# --------------------------------------------------------------------------------------------------
def _stage_text(answer: str | None, delimiter: str | None, stage: str) -> str | None:
    """Text read by one stage: ``"answer"`` or ``"evidence"`` part; ``None`` = no ``</evi>`` (fails).
    A non-string answer is passed through as it is: the parsers fail it (``"not_text"``)."""
    if is_not_text(answer):
        return answer
    if delimiter is None:
        return (answer or "") if stage == "answer" else None
    evidence, ans, ok = split_evidence(answer, delimiter)
    if not ok:
        return None
    return ans if stage == "answer" else evidence


def _stages(delimiter: str | None) -> list[tuple[str, str]]:
    """``(stage, key suffix)``: the answer stage always, the evidence stage when there is a delimiter."""
    return [("answer", ""), ("evidence", "_evi")] if delimiter is not None else [("answer", "")]


def _parse_stage_spans(answer, delimiter, stage):
    text = _stage_text(answer, delimiter, stage)
    if text is None:
        return None, "no_delimiter"
    return parse_spans(text)


# parse paths that mean "this stage read no span" (``answer_failed``: D²VLM coupling, the answer part had none)
_FAILED_PATHS = ("none", "empty", "no_delimiter", "answer_failed", NOT_TEXT, INVALID_TIME)


def _check_evidence_mode(evidence: str) -> None:
    if evidence not in EVIDENCE_MODES:
        raise ValueError(f"evidence must be one of {EVIDENCE_MODES}, got {evidence!r}")


def _evidence_d2vlm(answer_spans, answer_path, evidence_spans, evidence_path, substitute: bool = True):
    """The evidence stage as D²VLM's ``new_compute_metrics.py`` reads it: ``(spans | None, path)``.

    * the answer part has no span: the sample failed and its evidence is not scored (``"answer_failed"``;
      ``"no_delimiter"`` stays as it is);
    * evidence spans are read with the range pattern only (``a - b``; its other paths count as none);
    * no evidence span: the answer's spans stand in (``"answer_spans"``) — except where the script
      gives the evidence nothing instead (``substitute=False``: gvq scores ``[0, 0]``, dvc no spans).
    """
    if not answer_spans:
        return None, (answer_path if answer_path in ("no_delimiter", NOT_TEXT) else "answer_failed")
    if evidence_spans and evidence_path == "range":
        return evidence_spans, evidence_path
    if substitute:
        return answer_spans, "answer_spans"
    return None, (evidence_path if evidence_path in _FAILED_PATHS else "none")


def _etb_stage_spans(records, delimiter, evidence: str, substitute: bool = True) -> dict[str, list]:
    """Per stage, per record ``(spans | None, path)``: the answer part, and (with a delimiter) the
    evidence part scored independently (``evidence="independent"``) or coupled to the answer as D²VLM
    does (``"d2vlm"``, :func:`_evidence_d2vlm`)."""
    _check_evidence_mode(evidence)
    answer = [_parse_stage_spans(r.get("a"), delimiter, "answer") for r in records]
    out = {"answer": answer}
    if delimiter is not None:
        evi = [_parse_stage_spans(r.get("a"), delimiter, "evidence") for r in records]
        if evidence == "d2vlm":
            evi = [_evidence_d2vlm(*a, *e, substitute=substitute) for a, e in zip(answer, evi)]
        out["evidence"] = evi
    return out


def _etb_single_span(records, delimiter, thresholds, tem: bool, arithmetic: str = "exact",
                     evidence: str = "independent") -> dict[str, Any]:
    """tvg / epm ("F1" = mean R@θ of the first span) and tem (IoU = max over GT spans, "mRec")."""
    n = len(records)
    out: dict[str, Any] = {"Total": n}
    name = "R" if tem else "F1"
    staged = _etb_stage_spans(records, delimiter, evidence)
    for stage, sfx in _stages(delimiter):
        ious, paths = [], []
        for r, (spans, path) in zip(records, staged[stage]):
            paths.append(path)
            if not spans:
                ious.append(0.0)
                continue
            gts = r["tgt"] if tem else [r["tgt"]]
            ious.append(max(iou_value(spans[0], g, arithmetic) for g in gts))
        rec = recall_at(ious, thresholds, n, arithmetic)
        for t, v in zip(thresholds, rec):
            out[f"{name}{sfx}@{t}"] = v
        out["mRec" + sfx if tem else "F1" + sfx] = _mean(rec)
        out["mIoU" + sfx] = _mean(map(float, ious))
        out["Failed" + sfx] = sum(p in _FAILED_PATHS for p in paths)
        out["parse_paths" + sfx] = dict(Counter(paths))
    return out


def _etb_tal(records, delimiter, thresholds, arithmetic: str = "exact",
             evidence: str = "independent") -> dict[str, Any]:
    """tal: per-sample F1 at each θ (:func:`tal_f1`) summed over samples / N; "F1" = mean over θ.

    ``evidence="d2vlm"`` also couples the evidence *per θ*, as D²VLM's ``tal_eval`` does: a sample's
    evidence F1 at θ is counted only when its answer reaches θ, and when the answer reaches θ but the
    evidence does not, the script *resets* the running evidence sum at θ to 0
    (``f1_score_evi[i] = 0``) — order-dependent, reproduced so the number is the script's."""
    n = len(records)
    out: dict[str, Any] = {"Total": n}
    staged = _etb_stage_spans(records, delimiter, evidence)
    answer_f1 = [[tal_f1(spans, r["tgt"], t, arithmetic) for t in thresholds] if spans else [0.0] * len(thresholds)
                 for r, (spans, _) in zip(records, staged["answer"])]
    for stage, sfx in _stages(delimiter):
        sums, paths = [0.0] * len(thresholds), []
        for r, (spans, path), fa in zip(records, staged[stage], answer_f1):
            paths.append(path)
            if not spans:
                continue
            f1s = fa if stage == "answer" else [tal_f1(spans, r["tgt"], t, arithmetic) for t in thresholds]
            for k, f in enumerate(f1s):
                if stage == "evidence" and evidence == "d2vlm":
                    if fa[k] > 0:  # the script's `iou.max() >= thr` branch of the answer
                        sums[k] = 0.0 if f == 0 else sums[k] + f
                else:
                    sums[k] += f
        f1s = [s / n if n else 0.0 for s in sums]
        for t, v in zip(thresholds, f1s):
            out[f"F1{sfx}@{t}"] = v
        out["F1" + sfx] = _mean(f1s)
        out["Failed" + sfx] = sum(p in _FAILED_PATHS for p in paths)
        out["parse_paths" + sfx] = dict(Counter(paths))
    return out


def _option_strings(options: Sequence) -> list[str]:
    letters = "ABCDEFGHIJ"
    return [f"({letters[k]}) " + (f"{o[0]} - {o[1]}" if isinstance(o, (list, tuple)) else str(o))
            for k, o in enumerate(options)]


def _mcq_choice(answer_text: str, options: Sequence, embed: Embed | None, allow_paren: bool):
    """Strict option choice ``(index | None, path)``; sentence-similarity fallback when no letter parses.

    Fallback (E.T. Bench): embed the prefix-stripped answer and each ``"(A) option"`` string and take the
    highest dot product (first on ties); path ``"similarity"``. Without ``embed``: ``(None, "none")``.
    """
    idx, path = parse_option(answer_text, len(options), allow_paren=allow_paren)
    if idx is not None or path in ("empty", NOT_TEXT):
        return idx, path
    if embed is None:
        return None, path
    e = embed([strip_option_prefix(answer_text)] + _option_strings(options))
    return int(np.argmax(e[1:] @ e[0])), "similarity"


def _mcq_text(answer: str | None, delimiter: str | None) -> str:
    """Option letters are read after the last delimiter, or from the whole text without one (D²VLM);
    a non-string answer is passed through (:func:`d2lib.core.parsing.parse_option` fails it)."""
    if is_not_text(answer):
        return answer
    if delimiter is None:
        return answer or ""
    return split_evidence(answer, delimiter)[1]


def _etb_mcq(records, delimiter, embed) -> dict[str, Any]:
    """rar / eca / rvq: strict accuracy = hits / N. ``Failed`` = no letter parsed (the similarity
    fallback may still score it, as in the official script)."""
    n = len(records)
    hits, paths = 0, []
    for r in records:
        idx, path = _mcq_choice(_mcq_text(r.get("a"), delimiter), r["o"], embed, allow_paren=True)
        paths.append(path)
        hits += idx is not None and idx == r["p"]
    return {"Total": n, "Acc": hits / n if n else 0.0,
            "Failed": sum(p not in ("paren", "leading") for p in paths),
            "mcq_fallback": "similarity" if embed is not None else "none (counted wrong)",
            "parse_paths": dict(Counter(paths))}


def _etb_gvq(records, delimiter, thresholds, embed, arithmetic: str = "exact",
             evidence: str = "independent") -> dict[str, Any]:
    """gvq: Acc = correct / N; R@θ counts the first span's IoU ``>= θ`` only on correctly answered
    samples, still over N; "mRec" = mean over θ. ``evidence="d2vlm"``: a correct answer whose answer
    part has no span scores 0 in both stages, and a missing evidence span scores 0 (the script's
    ``[0, 0]``; no stand-in here)."""
    n = len(records)
    correct, opt_paths = [], []
    for r in records:
        idx, path = _mcq_choice(_mcq_text(r.get("a"), delimiter), r["o"], embed, allow_paren=False)
        opt_paths.append(path)
        correct.append(idx is not None and idx == r["p"])
    out: dict[str, Any] = {"Total": n, "Acc": sum(correct) / n if n else 0.0,
                           "option_paths": dict(Counter(opt_paths))}
    n_empty = sum(p in ("empty", NOT_TEXT) for p in opt_paths)
    staged = _etb_stage_spans(records, delimiter, evidence, substitute=False)
    for stage, sfx in _stages(delimiter):
        ious, paths = [], []
        for r, ok, (spans, path) in zip(records, correct, staged[stage]):
            if not ok:
                ious.append(0.0)
                continue
            paths.append(path)
            ious.append(iou_value(spans[0], r["tgt"], arithmetic) if spans else 0.0)
        rec = recall_at(ious, thresholds, n, arithmetic)
        for t, v in zip(thresholds, rec):
            out[f"R{sfx}@{t}"] = v
        out["mRec" + sfx] = _mean(rec)
        out["mIoU" + sfx] = _mean(map(float, ious))
        out["Failed" + sfx] = n_empty + sum(p in _FAILED_PATHS for p in paths)
        out["parse_paths" + sfx] = dict(Counter(paths))
    return out


def _etb_dvc(records, delimiter, thresholds, embed, captioner, seed, arithmetic: str = "exact",
             evidence: str = "independent") -> dict[str, Any]:
    """dvc / slc: detection F1 (IoU strictly > θ, averaged over parsed samples, scaled by parse rate)
    and caption scores (METEOR, CIDEr, ROUGE_L, SentSim) over parsed samples, not scaled.

    Evidence stage: the evidence part's spans (:func:`parse_spans`), detection only, averaged over the
    samples whose evidence parsed and scaled by that rate. ``evidence="d2vlm"`` (the script's
    ``evaluate_detection_evi``): averaged over the samples whose *answer* parsed — an evidence part
    without an ``a - b`` span scores 0 there, with no stand-in — and scaled by the answer's parse rate."""
    _check_evidence_mode(evidence)
    if captioner is not None:
        captioner.start_meteor()  # the JVM loads METEOR while we parse and embed
    n = len(records)
    out: dict[str, Any] = {"Total": n}
    not_computed: dict[str, str] = {}
    staged: dict[str, list] = {"answer": []}  # per record (spans | None, path)
    parsed = []  # (record, spans, captions) of parsed samples, answer stage
    for r in records:
        text = _stage_text(r.get("a"), delimiter, "answer")
        spans, caps, path = parse_dense_captions(text) if text is not None else (None, None, "no_delimiter")
        staged["answer"].append((spans, path))
        if spans:
            parsed.append((r, spans, caps))
    if delimiter is not None:
        staged["evidence"] = [_parse_stage_spans(r.get("a"), delimiter, "evidence") for r in records]
        if evidence == "d2vlm":
            staged["evidence"] = [_evidence_d2vlm(*a, *e, substitute=False)
                                  for a, e in zip(staged["answer"], staged["evidence"])]
    for stage, sfx in _stages(delimiter):
        pr = []  # per scored sample: [(precision, recall) per θ]
        for r, (spans, path), (answer_spans, _) in zip(records, staged[stage], staged["answer"]):
            if spans:
                pr.append([detection_pr(spans, r["tgt"], t, arithmetic) for t in thresholds])
            elif stage == "evidence" and evidence == "d2vlm" and answer_spans:
                pr.append([(0.0, 0.0)] * len(thresholds))  # scored, as 0
        scale = len(pr) / n if n else 0.0
        f1s = []
        for k, t in enumerate(thresholds):
            p = _mean(x[k][0] for x in pr) * scale
            rc = _mean(x[k][1] for x in pr) * scale
            f1s.append(f1_score(p, rc))
            out[f"F1{sfx}@{t}"] = f1s[-1]
        out["F1" + sfx] = _mean(f1s)
        out["Failed" + sfx] = sum(not spans for spans, _ in staged[stage])
        out["parse_paths" + sfx] = dict(Counter(path for _, path in staged[stage]))
    out.update(_etb_caption_scores(parsed, thresholds, embed, captioner, seed, not_computed, arithmetic))
    out["not_computed"] = not_computed
    return out


def _etb_caption_scores(parsed, thresholds, embed, captioner, seed, not_computed,
                        arithmetic: str = "exact") -> dict[str, Any]:
    """E.T. Bench captioning scores: per θ, per parsed video (pairs from :func:`_caption_pairs`,
    tokenized), averaged over videos then over θ. 0 when nothing parsed (as the official script)."""
    rng = random.Random(seed)
    per_video = [[_caption_pairs(spans, caps, r["tgt"], r["g"], t, rng, arithmetic) for t in thresholds]
                 for r, spans, caps in parsed]
    out: dict[str, Any] = {}
    tokenizer = captioner.tokenizer if captioner is not None else None
    out["tokenizer"] = tokenizer
    if captioner is None:
        for key in ("METEOR", "CIDEr", "ROUGE_L", "SentSim"):
            out[key] = None
            not_computed[key] = "no caption scorer (captioner=None)"
        return out
    flat = [s for video in per_video for pairs in video for pair in pairs for s in pair]
    tok = iter(captioner.tokenize(flat))
    per_video = [[[(next(tok), next(tok)) for _ in pairs] for pairs in video] for video in per_video]
    scores: dict[str, list[float]] = defaultdict(list)
    if embed is not None:  # embed every distinct caption once
        unique = sorted({s for video in per_video for pairs in video for pair in pairs for s in pair})
        table = dict(zip(unique, embed(unique))) if unique else {}
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    for video in per_video:
        for pairs in video:
            hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
            scores["CIDEr"].append(cider_d(hyps, refs))
            scores["ROUGE_L"].append(float(rouge.compute_score({i: [r] for i, r in enumerate(refs)},
                                                                {i: [h] for i, h in enumerate(hyps)})[0]))
            if captioner.java:
                scores["METEOR"].append(captioner.meteor(hyps, refs)[0])
            if embed is not None:
                scores["SentSim"].append(_mean(float(table[h] @ table[r]) for h, r in pairs))
    # mean over videos then θ == mean over all (video, θ) cells, since every video has every θ
    if captioner.java:
        out["METEOR"] = _mean(scores["METEOR"])
    else:
        out["METEOR"] = None
        not_computed["METEOR"] = captioner.no_meteor_reason
    _labelled(out, not_computed, "CIDEr", _mean(scores["CIDEr"]), captioner.tokenizer)
    _labelled(out, not_computed, "ROUGE_L", _mean(scores["ROUGE_L"]), captioner.tokenizer)
    if embed is None:
        out["SentSim"] = None
        not_computed["SentSim"] = "no sentence embedder (embed=None)"
    else:
        _labelled(out, not_computed, "SentSim", _mean(scores["SentSim"]), captioner.tokenizer)
    return out


_GROUNDING_SINGLE = ("tvg", "epm")
_MCQ = ("rar", "eca", "rvq")
_DENSE = ("dvc", "slc")
SUPPORTED_TASKS = _GROUNDING_SINGLE + ("tem", "tal", "gvq") + _MCQ + _DENSE


def etbench_task(task: str, records: Sequence[Mapping], delimiter: str | None = EVIDENCE_DELIMITER,
                 embed="minilm", captioner="auto", thresholds: Sequence[float] = ETB_THRESHOLDS,
                 seed: int = 0, arithmetic: str = "exact", evidence: str = "independent") -> dict[str, Any]:
    """E.T. Bench metrics of one (task, source) group of records (E.T. Bench schema with ``a`` filled).

    ``delimiter``: ``"</evi>"`` splits each answer into evidence and answer parts (D²VLM); grounding then
    fails without it, and each grounding number also has an ``_evi`` variant read from the evidence part.
    ``None`` reads the whole answer and computes no ``_evi`` numbers. ``embed``: ``"minilm"`` (lazy
    :func:`d2lib.evaluation.captioning.load_minilm`), a callable ``texts -> (n, d) normalised array``, or
    ``None`` (no MCQ similarity fallback — unparsed letters count wrong — and no SentSim). ``captioner``:
    ``"auto"``, a :class:`~d2lib.evaluation.captioning.CaptionScorer`, or ``None``. ``seed`` seeds the
    random references of unmatched captions.

    ``arithmetic``: how IoU thresholds are decided — ``"exact"`` (default: exact ties are hits) or
    ``"float32"`` (E.T. Bench's ``compute_metrics.py`` / D²VLM's ``new_compute_metrics.py`` bit for bit:
    nncore's float32 IoU), see :mod:`d2lib.core.spans`. ``evidence``: how the ``_evi`` numbers are scored —
    ``"independent"`` (default: the evidence part on its own) or ``"d2vlm"`` (coupled to the answer part
    exactly as D²VLM's ``new_compute_metrics.py``: a sample whose answer part has no span scores 0 in
    both stages, a missing evidence span is replaced by the answer's spans; module docstring).

    >>> rec = {"tgt": [8, 10], "a": "8 - 11 </evi> The event happens in 14 - - 15."}
    >>> [etbench_task("tvg", [rec], evidence=e)["mIoU_evi"] for e in EVIDENCE_MODES]
    [0.6666666666666666, 0.0]
    """
    records = list(records)
    embed = resolve_embed(embed)
    _check_evidence_mode(evidence)
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    if task in _GROUNDING_SINGLE:
        return _etb_single_span(records, delimiter, thresholds, tem=False, arithmetic=arithmetic, evidence=evidence)
    if task == "tem":
        return _etb_single_span(records, delimiter, thresholds, tem=True, arithmetic=arithmetic, evidence=evidence)
    if task == "tal":
        return _etb_tal(records, delimiter, thresholds, arithmetic, evidence)
    if task in _MCQ:
        return _etb_mcq(records, delimiter, embed)
    if task == "gvq":
        return _etb_gvq(records, delimiter, thresholds, embed, arithmetic, evidence)
    if task in _DENSE:
        return _etb_dvc(records, delimiter, thresholds, embed, resolve_captioner(captioner), seed, arithmetic,
                        evidence)
    raise ValueError(f"task {task!r} is not implemented (supported: {', '.join(SUPPORTED_TASKS)})")


# Per-task headline numbers (E.T. Bench "Overall" row) and the "Merged" columns built from them.
_HEADLINE = {"rar": ["Acc"], "eca": ["Acc"], "rvq": ["Acc"], "tvg": ["F1"], "epm": ["F1"], "tal": ["F1"],
             "evs": ["F1"], "vhd": ["F1"], "dvc": ["F1", "SentSim"], "slc": ["F1", "SentSim"],
             "tem": ["mRec"], "gvq": ["mRec", "Acc"]}
_MERGED = {"Acc(ref)": (("rar", "eca", "rvq"), "Acc"), "F1(gnd)": (("tvg", "epm", "tal", "evs", "vhd"), "F1"),
           "F1(cap)": (("dvc", "slc"), "F1"), "Sim(cap)": (("dvc", "slc"), "SentSim"),
           "Rec(com)": (("tem", "gvq"), "mRec")}


def _mean_or_none(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else _mean(values)


def evaluate_etbench(records: Sequence[Mapping], delimiter: str | None = EVIDENCE_DELIMITER,
                     embed="minilm", captioner="auto", thresholds: Sequence[float] = ETB_THRESHOLDS,
                     seed: int = 0, arithmetic: str = "exact", evidence: str = "independent") -> dict[str, Any]:
    """E.T. Bench evaluation of a submission (records with ``a`` filled): per (task, source), per task
    (mean over sources) and the merged row.

    Returns ``{"groups": {"task/source": {...}}, "tasks": {task: {metric: mean over sources}},
    "merged": {"F1(gnd)": …, "F1(gnd)_evi": …, …, "tasks": {column: [tasks used]}}, "config": {...}}``.
    Merged columns average the tasks present (the official script needs all 12; with fewer tasks the
    numbers are not comparable to published ones — ``merged["tasks"]`` says which went in); a column is
    ``None`` when one of its inputs is not computed. Arguments as in :func:`etbench_task`.
    """
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for r in records:
        grouped[(r["task"], r["source"])].append(r)
    embed = resolve_embed(embed)
    captioner = resolve_captioner(captioner) if any(t in _DENSE for t, _ in grouped) else None
    groups = {f"{t}/{s}": etbench_task(t, recs, delimiter, embed, captioner, thresholds, seed, arithmetic, evidence)
              for (t, s), recs in sorted(grouped.items())}
    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted({t for t, _ in grouped}):
        outs = [g for k, g in groups.items() if k.split("/")[0] == task]
        row: dict[str, Any] = {"n_sources": len(outs)}
        for key in _HEADLINE[task]:
            for k in (key, key + "_evi"):
                if all(k in o for o in outs):
                    row[k] = _mean_or_none([o[k] for o in outs])
        tasks[task] = row
    merged: dict[str, Any] = {"tasks": {}}
    for col, (members, key) in _MERGED.items():
        present = [t for t in members if t in tasks]
        if not present:
            continue
        merged["tasks"][col] = present
        merged[col] = _mean_or_none([tasks[t].get(key) for t in present])
        if all(key + "_evi" in tasks[t] for t in present):
            merged[col + "_evi"] = _mean_or_none([tasks[t][key + "_evi"] for t in present])
    config = {"delimiter": delimiter, "thresholds": list(thresholds), "mcq": "strict",
              "mcq_fallback": "similarity" if embed is not None else "none",
              "tokenizer": captioner.tokenizer if captioner is not None else None, "seed": seed,
              "arithmetic": arithmetic, "evidence": evidence}
    return {"groups": groups, "tasks": tasks, "merged": merged, "config": config}


# --------------------------------------------------------------------------------------------------
# YouCook2 dense captioning (TimeChat / Vid2Seq protocol)
# --------------------------------------------------------------------------------------------------
def youcook2_gt_from_official(obj: Mapping, subset: str | None = "validation") -> dict[str, dict]:
    """``{vid: {"timestamps": [[s, e], ...], "sentences": [...], "duration": d}}`` from the official
    ``youcookii_annotations_*.json`` layout (``{"database": {vid: {subset, duration, annotations}}}``).

    >>> db = {"database": {"v1": {"subset": "validation", "duration": 30.0,
    ...        "annotations": [{"id": 0, "segment": [2, 9], "sentence": "cut onions"}]}}}
    >>> youcook2_gt_from_official(db)
    {'v1': {'timestamps': [[2.0, 9.0]], 'sentences': ['cut onions'], 'duration': 30.0}}
    """
    out = {}
    for vid, v in obj["database"].items():
        if subset is not None and v.get("subset") != subset:
            continue
        out[vid] = {"timestamps": [order_span(a["segment"])[0] for a in v["annotations"]],
                    "sentences": [a["sentence"] for a in v["annotations"]],
                    "duration": float(v["duration"])}
    return out


def youcook2_gt_from_timeit(obj: Mapping) -> dict[str, dict]:
    """Same, from TimeIT's ``val.caption_coco_format.json`` as TimeChat reads it: key = basename of
    ``image_id``, captions = ``pure_cap.split(". ")`` each with "." appended (TimeChat does this).

    >>> youcook2_gt_from_timeit({"annotations": [{"image_id": "yc/v1.mp4", "duration": 30,
    ...     "segments": [[2, 9], [9, 20]], "pure_cap": "cut onions. fry them."}]})["v1.mp4"]["sentences"]
    ['cut onions.', 'fry them..']
    """
    out = {}
    for a in obj["annotations"]:
        caps = [c + "." for c in a["pure_cap"].split(". ")]
        if len(caps) != len(a["segments"]):
            raise ValueError(f"{a['image_id']}: {len(caps)} captions for {len(a['segments'])} segments")
        out[a["image_id"].split("/")[-1]] = {"timestamps": [order_span(s)[0] for s in a["segments"]],
                                             "sentences": caps, "duration": float(a.get("duration", 0.0))}
    return out


def youcook2_dvc(preds: Mapping[str, Sequence[Mapping]], gt: Mapping[str, Mapping],
                 captioner="auto", thresholds: Sequence[float] = YC2_THRESHOLDS, seed: int = 0,
                 soda: bool = True, arithmetic: str = "exact") -> dict[str, Any]:
    """YouCook2 dense captioning, TimeChat protocol: per video, then the mean over all GT videos.

    ``preds``: ``{vid: [{"timestamp": [s, e], "caption": str}, ...]}``; ``gt``: from
    :func:`youcook2_gt_from_official` / :func:`youcook2_gt_from_timeit`. A GT video without predictions
    scores 0 everywhere; predictions for unknown videos are ignored (``n_extra_videos``).

    Per video: ``Precision@θ``/``Recall@θ`` from :func:`detection_pr` (IoU strictly > θ), ``F1`` =
    F1 of their means over θ; ``CIDEr`` (per-video CIDEr-D, IDF from that video's pairs) and ``METEOR``
    (corpus METEOR of that video's pairs) over the caption pairs at each θ, averaged over θ; ``SODA_c``
    (:func:`soda_f1` with METEOR of every pred vs every GT caption, scored as TimeChat's ``sodac`` does:
    the GT caption as hypothesis, the prediction as reference). Without Java: ``METEOR`` and
    ``SODA_c`` are ``None`` (reason in ``not_computed``) and CIDEr is reported as ``CIDEr_simpletok``.
    ``arithmetic``: ``"exact"`` decides each tIoU exactly (:func:`dense_hits`); ``"float64"`` is
    TimeChat's ``inter / (union + 1e-8)`` bit for bit (the same decisions on decimal spans). SODA_c
    weighs METEOR by :func:`dense_iou_matrix` (TimeChat's values; no threshold) either way.
    """
    captioner = resolve_captioner(captioner)
    if captioner is not None:
        captioner.start_meteor()
    rng = random.Random(seed)
    vids = list(gt)
    cells = []  # per video: (pred spans, pred caps, gt spans, gt caps)
    for vid in vids:
        items = list(preds.get(vid) or [])
        cells.append(([order_span(x["timestamp"])[0] for x in items], [x["caption"] for x in items],
                      gt[vid]["timestamps"], list(gt[vid]["sentences"])))
    per: dict[str, list[float]] = defaultdict(list)
    for ps, _, gs, _ in cells:
        prc, rec = zip(*(detection_pr(ps, gs, t, arithmetic) for t in thresholds))
        for t, p, r in zip(thresholds, prc, rec):
            per[f"Precision@{t}"].append(p)
            per[f"Recall@{t}"].append(r)
        per["Precision_Mean"].append(_mean(prc))
        per["Recall_Mean"].append(_mean(rec))
        per["F1"].append(f1_score(_mean(prc), _mean(rec)))
    out: dict[str, Any] = {k: _mean(v) for k, v in per.items()}
    out["n_videos"] = len(vids)
    out["n_videos_without_prediction"] = sum(not c[0] for c in cells)
    out["n_extra_videos"] = len(set(preds) - set(gt))
    not_computed: dict[str, str] = {}
    if captioner is None:
        for key in ("CIDEr", "METEOR", "SODA_c"):
            out[key] = None
            not_computed[key] = "no caption scorer (captioner=None)"
        out["tokenizer"], out["not_computed"] = None, not_computed
        return out
    pairs = [[_caption_pairs(ps, pc, gs, gc, t, rng, arithmetic) for t in thresholds] for ps, pc, gs, gc in cells]
    flat = [s for video in pairs for cell in video for pair in cell for s in pair]
    flat += [c for _, pc, _, gc in cells for c in pc + gc]
    tok = iter(captioner.tokenize(flat))
    pairs = [[[(next(tok), next(tok)) for _ in cell] for cell in video] for video in pairs]
    tok_caps = [([next(tok) for _ in pc], [next(tok) for _ in gc]) for _, pc, _, gc in cells]
    cider, meteor, soda_c = [], [], []
    for video, (ps, _, gs, _), (pc_tok, gc_tok) in zip(pairs, cells, tok_caps):
        cider.append(_mean(cider_d([h for h, _ in c], [r for _, r in c]) for c in video))
        if captioner.java:
            meteor.append(_mean(captioner.meteor([h for h, _ in c], [r for _, r in c])[0] if c else 0.0
                                for c in video))
            if soda and ps:
                # TimeChat's sodac (like fujiso/SODA) passes (preds, gt) to compute_score(gts, res): the GT
                # caption is METEOR's hypothesis and the prediction its reference (METEOR is asymmetric)
                met = np.array([captioner.meteor([g] * len(pc_tok), pc_tok)[1] for g in gc_tok])
                soda_c.append(soda_f1(dense_iou_matrix(ps, gs).T, met))
            elif soda:
                soda_c.append(0.0)
    _labelled(out, not_computed, "CIDEr", _mean(cider), captioner.tokenizer)
    if captioner.java:
        out["METEOR"] = _mean(meteor)
        if soda:
            out["SODA_c"] = _mean(soda_c)
    else:
        out["METEOR"] = None
        not_computed["METEOR"] = captioner.no_meteor_reason
        if soda:
            out["SODA_c"] = None
            not_computed["SODA_c"] = "SODA_c scores with METEOR, which " + captioner.no_meteor_reason
    out["tokenizer"], out["not_computed"] = captioner.tokenizer, not_computed
    return out
