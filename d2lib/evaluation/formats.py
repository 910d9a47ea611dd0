"""The public evaluators' file formats: E.T. Bench submissions and TimeChat/TimeIT tvg and dvc files.

Taught in lesson ``06_evaluation``. Builders are pure functions from our records (E.T. Bench schema,
``docs/CONTRACTS.md``) and answers; writers add an atomic JSON write (:func:`d2lib.core.io.write_json`:
a reader never sees half a file); readers check that a file has the keys and types its evaluator reads,
and raise :class:`FormatError` naming the file and entry otherwise.

Every file written is strict JSON: ``allow_nan=False``, so ``NaN``/``Infinity`` (which Python's reader
accepts but a strict reader refuses) can never be written — the write raises instead. Answers never
bring one in: a time the parsers cannot read as a finite number fails the answer
(:mod:`d2lib.core.parsing`, ``"invalid_time"``), a span given directly must be finite
(:class:`FormatError` otherwise), and a non-string answer is written as ``""`` (a parse failure for
every evaluator, as ``None`` is).

Formats (as the published evaluators read them; docs/METRICS.md lists the differences):

* **E.T. Bench submission** — the records as a JSON list with ``a`` (the raw answer) filled in; the
  official ``compute_metrics.py`` reads one file, or every ``*.json``/``*.jsonl`` in a folder whose
  *path* does not contain "metrics" (so a folder under ``…/metrics/…`` reads as empty). It calls
  ``a.lower()``, so a missing answer is written as ``""`` (it then counts as a parse failure).
* **TimeChat tvg** (Charades-STA, ``metrics/tvg/eval_tvg.py``) — predictions
  ``{"<id>": {"timestamp": [[s, e]] or [], "query": str, "vid": str}}`` and the TimeIT COCO-style GT
  ``{"annotations": [{"image_id", "caption", "timestamp": [s, e], "id": int}]}``. The evaluator joins
  them on ``int(key) == id`` and asserts both have the same number of entries, so every GT query gets
  a prediction entry (``[]`` when the answer did not parse) and ids must be unique. (D²VLM's own
  Charades script reads a flat ``"timestamp": [s, e]`` and drops entries without one from N; these
  files follow TimeChat.)
* **TimeChat dvc** (YouCook2, ``metrics/dvc/eval_dvc.py``) — predictions
  ``{"<video>.mp4": [{"timestamp": [s, e], "caption": str}, ...]}`` and the TimeIT GT
  ``{"annotations": [{"image_id", "duration", "segments": [[s, e], ...], "pure_cap", "id"}]}`` where
  ``pure_cap`` is the captions joined by ``". "``: TimeChat reads them back as
  ``pure_cap.split(". ")`` and appends ``"."`` to each, so a caption may not contain ``". "`` and its
  trailing periods are dropped when writing. TimeChat keys videos by the basename of ``image_id`` and
  takes the split from the GT **file name** (``val.*.json`` → "val"; only ``train``/``val``/``test``
  work), so :func:`write_timechat_dvc_gt` refuses other names.

JSON is written ASCII-escaped (``ensure_ascii``), because the evaluators open files with the locale's
default encoding.

>>> recs = [{"idx": 3, "task": "tvg", "source": "shapes", "video": "videos/v0.mp4", "duration": 30,
...          "tgt": [4, 9], "g": ["the red square grows"], "q": "...", "a": "The event happens in 5 - 9."}]
>>> timechat_tvg_predictions(recs)
{'3': {'timestamp': [[5.0, 9.0]], 'query': 'the red square grows', 'vid': 'v0.mp4'}}
>>> timechat_tvg_gt(recs)["annotations"]
[{'image_id': 'v0.mp4', 'caption': 'the red square grows', 'timestamp': [4, 9], 'id': 3}]
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from d2lib.core import io
from d2lib.core.parsing import EVIDENCE_DELIMITER, parse_dense_captions, parse_spans, split_evidence
from d2lib.core.spans import order_span

__all__ = [
    "FormatError", "EVIDENCE_DELIMITER", "TIMECHAT_SPLITS",
    "write_json", "read_json", "video_id",
    "etbench_submission", "write_etbench_submission", "read_etbench_submission", "SPAN_TASKS",
    "stage_submission", "write_etbench_stages",
    "timechat_tvg_spans", "timechat_tvg_predictions", "timechat_tvg_gt",
    "write_timechat_tvg", "read_timechat_tvg_predictions", "read_timechat_tvg_gt",
    "timechat_dvc_events", "timechat_dvc_predictions", "timechat_dvc_gt", "pure_cap",
    "write_timechat_dvc", "write_timechat_dvc_gt", "read_timechat_dvc_predictions", "read_timechat_dvc_gt",
]

TIMECHAT_SPLITS = ("train", "val", "test")  # eval_dvc.py: smap = {'train': 1, 'val': 2, 'test': 3}
_REQUIRED_RECORD_KEYS = ("idx", "task", "source", "video", "q")


class FormatError(ValueError):
    """A file or object does not have the layout its evaluator reads."""


# --------------------------------------------------------------------------------------------------
# JSON I/O
# --------------------------------------------------------------------------------------------------
def json_safe(obj: Any) -> Any:
    """A JSON-safe copy: NaN/inf → None, numpy scalars → Python numbers, tuples → lists, keys → str.

    >>> import numpy as np
    >>> json_safe({1: (np.float32(0.5), float("nan"), np.bool_(True))})
    {'1': [0.5, None, True]}
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):  # numpy scalars
        return json_safe(obj.item())
    return obj


def write_json(obj: Any, path: str | os.PathLike, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict, ASCII-escaped JSON plus a final newline, atomically
    (:func:`d2lib.core.io.write_json`; the previous file is kept if anything fails). ``NaN`` and
    ``±inf`` raise ``ValueError`` (``allow_nan=False``) instead of writing invalid JSON. Returns ``path``.
    """
    return io.write_json(path, obj, newline=True, indent=indent, ensure_ascii=True, allow_nan=False)


def read_json(path: str | os.PathLike) -> Any:
    """Load a ``.json`` file, or a ``.jsonl`` file as a list of its lines' objects."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def video_id(video: str) -> str:
    """The id TimeChat/TimeIT use for a video: the file's basename (``"videos/v0.mp4"`` → ``"v0.mp4"``).

    >>> video_id("videos/val_00003.mp4")
    'val_00003.mp4'
    """
    return str(video).replace("\\", "/").split("/")[-1]


def _answers(records: Sequence[Mapping], answers: Sequence[str | None] | None) -> list[str | None]:
    if answers is None:
        return [r.get("a") for r in records]
    answers = list(answers)
    if len(answers) != len(records):
        raise FormatError(f"{len(answers)} answers for {len(records)} records")
    return answers


def _span(value, where: str) -> list[float]:
    """``[start, end]`` of two finite numbers (within float range), else :class:`FormatError` naming ``where``."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise FormatError(f"{where}: expected [start, end] numbers, got {value!r}")
    if not all(_finite(v) for v in value):
        raise FormatError(f"{where}: span ends must be finite numbers within float range, got {value!r}")
    return list(value)


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)  # an int too large for a float raises
    except OverflowError:
        return False


def _unique(values: Iterable, what: str) -> None:
    seen: set = set()
    for v in values:
        if v in seen:
            raise FormatError(f"duplicate {what} {v!r}: the evaluator joins on it, so it must be unique")
        seen.add(v)


# --------------------------------------------------------------------------------------------------
# E.T. Bench submission
# --------------------------------------------------------------------------------------------------
def etbench_submission(records: Sequence[Mapping], answers: Sequence[str | None] | None = None) -> list[dict]:
    """Copies of ``records`` with ``a`` set (from ``answers``, aligned with the records, or the records'
    own ``a``); ``None`` and any non-string answer (``5``, ``[1, 2]``, ``nan``: a model that returned no
    text) become ``""`` — the official script calls ``a.lower()``, and ``""`` is the parse failure it
    counts. Raises :class:`FormatError` on a record without the keys the official script groups by, or
    a repeated ``(task, source, idx)``.

    >>> etbench_submission([{"idx": 0, "task": "rar", "source": "s", "video": "v.mp4", "q": "?"}], ["(A)"])
    [{'idx': 0, 'task': 'rar', 'source': 's', 'video': 'v.mp4', 'q': '?', 'a': '(A)'}]
    >>> [r["a"] for r in etbench_submission([{"idx": 1, "task": "tvg", "source": "s", "video": "v", "q": "?"}],
    ...                                     [float("nan")])]
    ['']
    """
    answers = _answers(records, answers)
    out = []
    for i, (r, a) in enumerate(zip(records, answers)):
        missing = [k for k in _REQUIRED_RECORD_KEYS if k not in r]
        if missing:
            raise FormatError(f"record {i}: missing {', '.join(missing)}")
        out.append({**r, "a": a if isinstance(a, str) else ""})
    _unique(((r["task"], r["source"], r["idx"]) for r in out), "(task, source, idx)")
    return out


def write_etbench_submission(path: str | os.PathLike, records: Sequence[Mapping],
                             answers: Sequence[str | None] | None = None) -> Path:
    """:func:`etbench_submission` written atomically to one JSON file (its name may not contain "metrics")."""
    if "metrics" in Path(path).name:
        raise FormatError(f"{path}: compute_metrics.py skips files whose path contains 'metrics'")
    return write_json(etbench_submission(records, answers), path)


SPAN_TASKS = ("tvg", "epm", "tem", "tal")  # E.T. Bench tasks whose answer is spans only (no option, no caption)


def stage_submission(records: Sequence[Mapping], part: str, answers: Sequence[str | None] | None = None,
                     delimiter: str = EVIDENCE_DELIMITER) -> list[dict]:
    """One stage of ground-then-answer responses as its own E.T. Bench submission, for an evaluator that reads
    the first spans of an answer (E.T. Bench's ``compute_metrics.py``): on the full response it would read the
    evidence prefix. Each answer is cut at ``delimiter`` (:func:`d2lib.core.parsing.split_evidence`):

    * ``"answer"``: the text after the last delimiter, every record. An answer without the delimiter keeps its
      text when the record has options (the option is read from the whole text, as this project and D²VLM's
      evaluator do) and becomes ``""`` otherwise (its grounding counts as failed, as theirs does).
    * ``"evidence"``: the text before the first delimiter, for the span-only tasks (:data:`SPAN_TASKS`) only —
      an evidence prefix has no option or caption for the other tasks' parsers to read.

    >>> recs = [{"idx": 0, "task": "tvg", "source": "s", "video": "v", "q": "?"},
    ...         {"idx": 1, "task": "tvg", "source": "s", "video": "v", "q": "?"}]
    >>> full = ["21 - 27 </evi> The event happens in 8 - 25.", "It happens in 3 - 7."]
    >>> [r["a"] for r in stage_submission(recs, "answer", full)]
    [' The event happens in 8 - 25.', '']
    >>> [r["a"] for r in stage_submission(recs, "evidence", full)]
    ['21 - 27 ', '']
    """
    if part not in ("answer", "evidence"):
        raise ValueError(f"part must be 'answer' or 'evidence', got {part!r}")
    out_recs, out_answers = [], []
    for r, a in zip(records, _answers(records, answers)):
        evidence, answer, ok = split_evidence(a, delimiter)
        if part == "evidence":
            if r["task"] in SPAN_TASKS:
                out_recs.append(r)
                out_answers.append(evidence)
        else:
            out_recs.append(r)
            out_answers.append(answer if ok or r.get("o") else "")
    return etbench_submission(out_recs, out_answers)


def write_etbench_stages(folder: str | os.PathLike, records: Sequence[Mapping],
                         answers: Sequence[str | None] | None = None,
                         delimiter: str = EVIDENCE_DELIMITER) -> dict[str, Path]:
    """The two single-stage submissions (:func:`stage_submission`) of ground-then-answer responses, next to the
    full one: ``answer/submission.json`` and ``evidence/submission.json`` under ``folder``. Scored by E.T. Bench's
    ``compute_metrics.py``, the first gives the answer-stage numbers this project reports (``F1``, ``mIoU``, …),
    the second the evidence-stage ones (``F1_evi``, … of the span-only tasks); the full-response file is for
    D²VLM's evaluator, which splits at ``</evi>`` itself."""
    out = {}
    for part in ("answer", "evidence"):
        path = Path(folder) / part / "submission.json"
        if "metrics" in path.name:
            raise FormatError(f"{path}: compute_metrics.py skips files whose path contains 'metrics'")
        out[part] = write_json(stage_submission(records, part, answers, delimiter), path)
    return out


def read_etbench_submission(path: str | os.PathLike) -> list[dict]:
    """Records with answers from a ``.json``/``.jsonl`` file, or from every such file in a folder whose
    name does not contain "metrics" (sorted by name), as the official script loads a submission."""
    path = Path(path)
    files = ([path] if path.is_file() else
             sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and "metrics" not in p.name))
    records: list[dict] = []
    for p in files:
        data = read_json(p)
        if not isinstance(data, list):
            raise FormatError(f"{p}: expected a JSON list of records")
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                raise FormatError(f"{p}[{i}]: expected an object")
            missing = [k for k in _REQUIRED_RECORD_KEYS + ("a",) if k not in r]
            if missing:
                raise FormatError(f"{p}[{i}]: missing {', '.join(missing)}")
            if not isinstance(r["a"], str):
                raise FormatError(f"{p}[{i}]: 'a' must be a string")
        records += data
    return records


# --------------------------------------------------------------------------------------------------
# TimeChat / TimeIT temporal grounding (Charades-STA)
# --------------------------------------------------------------------------------------------------
def timechat_tvg_spans(answer: str | None, delimiter: str | None = None,
                       evidence_fallback: bool = True) -> list[list[float]]:
    """The span list written for one answer: ``[[s, e]]`` (its first span) or ``[]`` if none parses.

    The same reading as :func:`d2lib.evaluation.metrics.charades_sta_from_text`: the whole answer, or with
    ``delimiter`` the part after ``</evi>`` falling back to the evidence part; no delimiter → ``[]``.

    >>> timechat_tvg_spans("3 - 7</evi>Sorry.", delimiter="</evi>"), timechat_tvg_spans("no idea")
    ([[3.0, 7.0]], [])
    """
    if delimiter is None:
        spans, _ = parse_spans(answer)
        return [spans[0]] if spans else []
    evidence, part, ok = split_evidence(answer, delimiter)
    if not ok:
        return []
    spans, _ = parse_spans(part)
    if not spans and evidence_fallback:
        spans, _ = parse_spans(evidence)
    return [spans[0]] if spans else []


def _tvg_query(r: Mapping) -> str:
    g = r.get("g")
    return g[0] if g else r.get("q", "")


def timechat_tvg_predictions(records: Sequence[Mapping], answers: Sequence[str | None] | None = None, *,
                             spans: Sequence[Sequence | None] | None = None, delimiter: str | None = None,
                             evidence_fallback: bool = True) -> dict[str, dict]:
    """TimeChat tvg predictions ``{str(idx): {"timestamp": [[s, e]] | [], "query", "vid"}}``, one entry
    per record. Spans come from ``spans`` (one ``[s, e]`` or ``None`` per record, already parsed) or from
    the answers via :func:`timechat_tvg_spans`. ``query`` is the record's ``g[0]`` (else ``q``)."""
    if spans is None:
        stamps = [timechat_tvg_spans(a, delimiter, evidence_fallback) for a in _answers(records, answers)]
    else:
        if len(spans) != len(records):
            raise FormatError(f"{len(spans)} spans for {len(records)} records")
        stamps = [[] if s is None else [order_span(_span(s, f"spans[{i}]"))[0]] for i, s in enumerate(spans)]
    _unique((str(r["idx"]) for r in records), "idx")
    return {str(r["idx"]): {"timestamp": ts, "query": _tvg_query(r), "vid": video_id(r["video"])}
            for r, ts in zip(records, stamps)}


def timechat_tvg_gt(records: Sequence[Mapping]) -> dict[str, list[dict]]:
    """TimeIT COCO-style grounding GT ``{"annotations": [{"image_id", "caption", "timestamp", "id"}]}``
    from ``tvg`` records (``timestamp`` = ``tgt``, ``id`` = ``idx``, ``caption`` = ``g[0]``)."""
    ann = []
    for i, r in enumerate(records):
        if not isinstance(r.get("idx"), int):
            raise FormatError(f"record {i}: 'idx' must be an int (TimeChat keys queries by int id)")
        ann.append({"image_id": video_id(r["video"]), "caption": _tvg_query(r),
                    "timestamp": _span(r.get("tgt"), f"record {i} tgt"), "id": r["idx"]})
    _unique((a["id"] for a in ann), "id")
    return {"annotations": ann}


def write_timechat_tvg(pred_path: str | os.PathLike, gt_path: str | os.PathLike | None,
                       records: Sequence[Mapping], answers: Sequence[str | None] | None = None,
                       **kwargs) -> tuple[Path, Path | None]:
    """Write :func:`timechat_tvg_predictions` (and, unless ``gt_path`` is ``None``, :func:`timechat_tvg_gt`)."""
    pred = write_json(timechat_tvg_predictions(records, answers, **kwargs), pred_path)
    gt = write_json(timechat_tvg_gt(records), gt_path) if gt_path is not None else None
    return pred, gt


def _check_tvg_predictions(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected an object {{id: {{timestamp, query, vid}}}}")
    for k, v in obj.items():
        try:
            int(k)
        except ValueError:
            raise FormatError(f"{where}: key {k!r} is not an integer id (eval_tvg.py calls int(qid))") from None
        if not isinstance(v, dict) or "timestamp" not in v:
            raise FormatError(f"{where}[{k!r}]: expected an object with a 'timestamp' list")
        ts = v["timestamp"]
        if not isinstance(ts, list):
            raise FormatError(f"{where}[{k!r}]: 'timestamp' must be a list of [s, e]")
        for j, s in enumerate(ts):
            _span(s, f"{where}[{k!r}].timestamp[{j}]")
    return obj


def read_timechat_tvg_predictions(path: str | os.PathLike) -> dict[str, dict]:
    """A TimeChat tvg predictions file, checked (integer keys, ``timestamp`` a list of ``[s, e]``)."""
    return _check_tvg_predictions(read_json(path), str(path))


def read_timechat_tvg_gt(path: str | os.PathLike) -> dict[str, list[dict]]:
    """A TimeIT COCO-style grounding GT file, checked (``image_id``, ``caption``, ``timestamp``, int ``id``)."""
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        raise FormatError(f"{path}: expected {{'annotations': [...]}}")
    for i, a in enumerate(obj["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(a, dict) or any(k not in a for k in ("image_id", "caption", "timestamp", "id")):
            raise FormatError(f"{where}: needs image_id, caption, timestamp, id")
        _span(a["timestamp"], where + ".timestamp")
        if not isinstance(a["id"], int):
            raise FormatError(f"{where}: 'id' must be an int")
    _unique((a["id"] for a in obj["annotations"]), f"id in {path}")
    return obj


# --------------------------------------------------------------------------------------------------
# TimeChat / TimeIT dense video captioning (YouCook2)
# --------------------------------------------------------------------------------------------------
def timechat_dvc_events(answer: str | None, delimiter: str | None = None) -> list[dict]:
    """``[{"timestamp": [s, e], "caption": str}, ...]`` from one answer (:func:`parse_dense_captions`,
    on the part after ``</evi>`` when ``delimiter`` is given); ``[]`` when nothing parses.

    >>> timechat_dvc_events("0 - 5, a man cuts onions. 5 - 12, he fries them.")[1]
    {'timestamp': [5.0, 12.0], 'caption': 'he fries them.'}
    """
    if delimiter is not None:
        _, answer, ok = split_evidence(answer, delimiter)
        if not ok:
            return []
    spans, caps, _ = parse_dense_captions(answer)
    if not spans:
        return []
    return [{"timestamp": list(s), "caption": c} for s, c in zip(spans, caps)]


def timechat_dvc_predictions(records: Sequence[Mapping], answers: Sequence[str | None] | None = None, *,
                             events: Sequence[tuple[Sequence, Sequence[str]] | None] | None = None,
                             delimiter: str | None = None) -> dict[str, list[dict]]:
    """TimeChat dvc predictions ``{video_id: [{"timestamp": [s, e], "caption"}, ...]}``, one entry per
    record (``[]`` when nothing parsed: TimeChat scores it 0, like a missing video, and its paragraph
    metrics stay aligned). Events come from ``events`` (``(spans, captions)`` or ``None`` per record)
    or from the answers via :func:`timechat_dvc_events`."""
    if events is None:
        rows = [timechat_dvc_events(a, delimiter) for a in _answers(records, answers)]
    else:
        if len(events) != len(records):
            raise FormatError(f"{len(events)} event lists for {len(records)} records")
        rows = []
        for i, ev in enumerate(events):
            if ev is None:
                rows.append([])
                continue
            spans, caps = ev
            if len(spans) != len(caps):
                raise FormatError(f"events[{i}]: {len(spans)} spans for {len(caps)} captions")
            rows.append([{"timestamp": order_span(_span(s, f"events[{i}]"))[0], "caption": str(c)}
                         for s, c in zip(spans, caps)])
    keys = [video_id(r["video"]) for r in records]
    _unique(keys, "video id")
    return dict(zip(keys, rows))


def pure_cap(captions: Sequence[str]) -> str:
    """TimeIT's ``pure_cap``: captions without trailing periods joined by ``". "`` (TimeChat splits it
    back at ``". "``). Raises :class:`FormatError` for an empty caption or one containing ``". "``.

    >>> pure_cap(["cut the onions.", "fry them"])
    'cut the onions. fry them'
    """
    out = []
    for c in captions:
        c = str(c).strip().rstrip(".").rstrip()
        if not c:
            raise FormatError(f"empty caption in {list(captions)!r}")
        if ". " in c:
            raise FormatError(f"caption {c!r} contains '. ', which TimeChat would split into two captions")
        out.append(c)
    return ". ".join(out)


def timechat_dvc_gt(records: Sequence[Mapping]) -> dict[str, list[dict]]:
    """TimeIT-style dvc GT ``{"annotations": [{"image_id", "duration", "segments", "pure_cap", "id"}]}``
    from ``dvc`` records (``segments`` = ``tgt``, captions ``g`` via :func:`pure_cap`, ``id`` = ``idx``)."""
    ann = []
    for i, r in enumerate(records):
        segs = [_span(s, f"record {i} tgt[{j}]") for j, s in enumerate(r.get("tgt") or [])]
        caps = list(r.get("g") or [])
        if not segs or len(segs) != len(caps):
            raise FormatError(f"record {i}: needs aligned non-empty 'tgt' and 'g' ({len(segs)} vs {len(caps)})")
        ann.append({"image_id": video_id(r["video"]), "duration": r["duration"], "segments": segs,
                    "pure_cap": pure_cap(caps), "id": r["idx"]})
    _unique((a["image_id"] for a in ann), "video id")
    return {"annotations": ann}


def _check_gt_name(gt_path: str | os.PathLike) -> None:
    split = Path(gt_path).name.split(".")[0]
    if split not in TIMECHAT_SPLITS:
        raise FormatError(f"{gt_path}: TimeChat's eval_dvc.py takes the split from the file name before the "
                          f"first '.', which must be one of {TIMECHAT_SPLITS} (e.g. 'val.caption_coco_format.json')")


def write_timechat_dvc_gt(gt_path: str | os.PathLike, records: Sequence[Mapping]) -> Path:
    """:func:`timechat_dvc_gt` written atomically; the file name must start with ``train.``/``val.``/``test.``."""
    _check_gt_name(gt_path)
    return write_json(timechat_dvc_gt(records), gt_path)


def write_timechat_dvc(pred_path: str | os.PathLike, gt_path: str | os.PathLike | None,
                       records: Sequence[Mapping], answers: Sequence[str | None] | None = None,
                       **kwargs) -> tuple[Path, Path | None]:
    """Write :func:`timechat_dvc_predictions` (and, unless ``gt_path`` is ``None``, the GT)."""
    if gt_path is not None:
        _check_gt_name(gt_path)
    pred = write_json(timechat_dvc_predictions(records, answers, **kwargs), pred_path)
    gt = write_timechat_dvc_gt(gt_path, records) if gt_path is not None else None
    return pred, gt


def read_timechat_dvc_predictions(path: str | os.PathLike) -> dict[str, list[dict]]:
    """A TimeChat dvc predictions file, checked (``{video: [{timestamp: [s, e], caption: str}]}``)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected an object {{video: [events]}}")
    for vid, items in obj.items():
        if not isinstance(items, list):
            raise FormatError(f"{path}[{vid!r}]: expected a list of events")
        for j, e in enumerate(items):
            where = f"{path}[{vid!r}][{j}]"
            if not isinstance(e, dict) or not isinstance(e.get("caption"), str):
                raise FormatError(f"{where}: expected {{'timestamp': [s, e], 'caption': str}}")
            _span(e.get("timestamp"), where + ".timestamp")
    return obj


def read_timechat_dvc_gt(path: str | os.PathLike, check_name: bool = True) -> dict[str, list[dict]]:
    """A TimeIT dvc GT file, checked as ``eval_dvc.py`` reads it: ``image_id``, ``segments`` and
    ``pure_cap`` with ``len(pure_cap.split(". ")) == len(segments)``, and (``check_name``) a split
    TimeChat knows in the file name."""
    if check_name:
        _check_gt_name(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        raise FormatError(f"{path}: expected {{'annotations': [...]}}")
    for i, a in enumerate(obj["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(a, dict) or any(k not in a for k in ("image_id", "segments", "pure_cap")):
            raise FormatError(f"{where}: needs image_id, segments, pure_cap")
        segs = [_span(s, f"{where}.segments[{j}]") for j, s in enumerate(a["segments"])]
        n_caps = len(str(a["pure_cap"]).split(". "))
        if n_caps != len(segs):
            raise FormatError(f"{where}: pure_cap splits into {n_caps} captions for {len(segs)} segments")
    _unique((video_id(a["image_id"]) for a in obj["annotations"]), f"video id in {path}")
    return obj
