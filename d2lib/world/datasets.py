"""Records, loaders, splits and the frame cache — the data side of lesson ``01_video_data``.

Every dataset becomes a list of **records** in E.T. Bench's schema::

    {idx, task, source, video, duration, src?, tgt?, p?, o?, g?, q, a?}

so the Shapes benchmark and real benchmarks (E.T. Bench, Charades-STA, YouCook2) go through the
same model and metric code. Spans are ``[start, end]`` seconds.

Loading validates every record (:func:`validate_record`):

* a span outside ``[0, duration]`` is **clipped**, a span with ``start > end`` is **swapped**; both
  are counted in a :class:`LoadReport` that is logged and returned (Charades-STA's test split has
  562 queries that end after the video);
* a missing required key, an empty caption/prompt, ``p`` out of range, captions not aligned with
  spans, a malformed line or invalid JSON raise :class:`DatasetError` naming the file (and line or
  record ``idx``).

Nothing is dropped or repaired silently.

Loaders return ``(records, report)`` (:class:`Loaded`); :func:`load_shapes` also returns the
per-video world descriptions. The frame cache (each video decoded once) is one ``.npz``
holding a uint8 ``(T, H, W, 3)`` array per video, keyed by the record's ``video`` field.

>>> rec = {"idx": 0, "task": "tvg", "source": "demo", "video": "v.mp4", "duration": 10,
...        "tgt": [12, 4], "g": ["a red circle appears"], "q": "When?"}
>>> fixed, repairs = validate_record(rec, "demo.json")
>>> fixed["tgt"], [r.kind for r in repairs]
([4.0, 10.0], ['span_swapped', 'span_clipped'])
"""
from __future__ import annotations

import collections
import csv
import json
import logging
import math
import numbers
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from d2lib.core import config, paths
from d2lib.core.spans import clip_span, order_span
from d2lib.world.synth import TRAIN_SEED_LIMIT  # training seeds live below it, the benchmark's at or above

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Errors and reports
# --------------------------------------------------------------------------------------------


class DatasetError(ValueError):
    """A data problem that cannot be repaired safely; the message names the file (and line or
    record idx) and the problem."""


class DatasetFileNotFound(DatasetError, FileNotFoundError):
    """A dataset file or folder that does not exist (catchable as either base class)."""


@dataclass(frozen=True)
class Repair:
    """One logged repair: ``kind`` (``span_clipped``, ``span_swapped``, ...), the field path
    (e.g. ``tgt[2]``) and the values before/after."""

    kind: str
    field: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.kind} {self.field}: {self.before} -> {self.after}"


@dataclass
class LoadReport:
    """What a loader read and repaired.

    ``repairs`` counts repairs per kind; ``records_repaired`` counts records with ≥ 1 repair;
    ``examples`` keeps the first few repairs verbatim (with where they happened).

    >>> r = LoadReport("x.json")
    >>> r.add("x.json #0", "tvg", [Repair("span_clipped", "tgt", [0, 40], [0.0, 30.0])])
    >>> r.n_records, dict(r.repairs), r.records_repaired
    (1, {'span_clipped': 1}, 1)
    """

    source: str
    n_records: int = 0
    records_repaired: int = 0
    repairs: collections.Counter = field(default_factory=collections.Counter)
    tasks: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, where: str, task: str, repairs: Sequence[Repair]) -> None:
        """Account for one validated record and its repairs."""
        self.n_records += 1
        self.tasks[task] += 1
        if repairs:
            self.records_repaired += 1
        for r in repairs:
            self.repairs[r.kind] += 1
            if len(self.examples) < self.max_examples:
                self.examples.append(f"{where}: {r}")

    def count(self, kind: str, where: str = "", detail: str = "") -> None:
        """Count a repair that is not about a record field (e.g. a skipped blank line)."""
        self.repairs[kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {kind} {detail}".rstrip())

    @property
    def total_repairs(self) -> int:
        return sum(self.repairs.values())

    def summary(self) -> str:
        """One line for logs, e.g. ``charades.txt: 3720 records (tvg 3720); repairs: span_clipped 562``."""
        tasks = ", ".join(f"{t} {n}" for t, n in sorted(self.tasks.items()))
        reps = ", ".join(f"{k} {n}" for k, n in sorted(self.repairs.items())) or "none"
        return f"{self.source}: {self.n_records} records ({tasks}); repairs: {reps}"

    def log(self, logger: logging.Logger | None = None) -> "LoadReport":
        """Log the summary (WARNING when anything was repaired, else INFO) and the examples."""
        logger = logger or log
        if self.total_repairs:
            logger.warning("%s", self.summary())
            for ex in self.examples:
                logger.warning("  e.g. %s", ex)
        else:
            logger.info("%s", self.summary())
        return self

    def to_dict(self) -> dict:
        """Plain data (for metrics/*.json)."""
        return {
            "source": self.source,
            "n_records": self.n_records,
            "records_repaired": self.records_repaired,
            "repairs": dict(self.repairs),
            "tasks": dict(self.tasks),
            "examples": list(self.examples),
        }

    __str__ = summary


class Loaded(NamedTuple):
    """``(records, report)`` returned by the loaders."""

    records: list[dict]
    report: LoadReport


class ShapesSplit(NamedTuple):
    """A Shapes split: records, per-video world descriptions keyed by ``video``, the report and
    the split folder (record ``video`` paths are relative to it)."""

    records: list[dict]
    metas: dict[str, dict]
    report: LoadReport
    root: Path


# --------------------------------------------------------------------------------------------
# Record schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """Schema of one E.T. Bench task.

    ``tgt``: ``"span"`` (one ``[s, e]``), ``"spans"`` (list of ``[s, e]``), ``"nested"`` (spans
    or per-annotator lists of spans, vhd), ``"any"`` (optional, span or spans).
    ``g``: ``"aligned"`` (one caption per span, required), ``"one"`` (one caption for the whole
    target), ``"one_or_aligned"``, ``"free"`` (any non-empty captions).
    ``mcq``: needs options ``o`` and the answer index ``p``.
    """

    tgt: str
    tgt_required: bool
    g: str
    mcq: bool = False


TASKS: dict[str, TaskSpec] = {
    # referring (multiple choice)
    "rar": TaskSpec(tgt="any", tgt_required=False, g="free", mcq=True),
    "eca": TaskSpec(tgt="any", tgt_required=False, g="free", mcq=True),
    "rvq": TaskSpec(tgt="any", tgt_required=False, g="free", mcq=True),
    # grounding
    "tvg": TaskSpec(tgt="span", tgt_required=True, g="one"),
    "epm": TaskSpec(tgt="span", tgt_required=True, g="one"),
    "tal": TaskSpec(tgt="spans", tgt_required=True, g="one_or_aligned"),
    "evs": TaskSpec(tgt="spans", tgt_required=True, g="free"),
    "vhd": TaskSpec(tgt="nested", tgt_required=True, g="free"),
    # dense captioning
    "dvc": TaskSpec(tgt="spans", tgt_required=True, g="aligned"),
    "slc": TaskSpec(tgt="spans", tgt_required=True, g="aligned"),
    # complex
    "tem": TaskSpec(tgt="spans", tgt_required=True, g="free"),
    "gvq": TaskSpec(tgt="span", tgt_required=True, g="free", mcq=True),
}
REQUIRED_KEYS = ("idx", "task", "source", "video", "duration", "q")
ALIGNED_SORTED = ("dvc", "slc")  # GT spans sorted by start (captions move with their spans)


def _is_number(x: Any) -> bool:
    """A finite real number (numpy scalars included, booleans excluded)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _plain(obj: Any) -> Any:
    """Deep copy into plain JSON types: tuples → lists, numpy scalars → Python numbers.

    >>> _plain({"a": (np.int64(1), [np.float32(0.5)])})
    {'a': [1, [0.5]]}
    """
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _is_span(x: Any) -> bool:
    """``[s, e]`` with two finite numbers.

    >>> _is_span([1, 2.5]), _is_span([1]), _is_span([[1, 2]]), _is_span([True, 2])
    (True, False, False, False)
    """
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_is_number(v) for v in x)


def _fail(where: str, rec: Mapping, msg: str) -> DatasetError:
    idx = rec.get("idx", "?") if isinstance(rec, Mapping) else "?"
    task = rec.get("task", "?") if isinstance(rec, Mapping) else "?"
    return DatasetError(f"{where} (idx {idx}, task {task}): {msg}")


def _same(a: float, b: Any) -> Any:
    """Keep the original value (e.g. an ``int``) when a repair left it unchanged."""
    return b if float(b) == a else a


def repair_span(span: Sequence[float], duration: float, fld: str) -> tuple[list, list[Repair]]:
    """Order then clip one span; returns ``(span, repairs)``. Unchanged ends keep their type.

    >>> repair_span([3, 8], 10, "tgt")
    ([3, 8], [])
    >>> s, r = repair_span([-2, 40.5], 30, "tgt"); s, [x.kind for x in r]
    ([0.0, 30.0], ['span_clipped'])
    >>> s, r = repair_span([40, 35], 30, "tgt"); s, [x.kind for x in r]
    ([30.0, 30.0], ['span_swapped', 'span_clipped', 'span_collapsed'])
    """
    before = list(span)
    repairs: list[Repair] = []
    ordered, swapped = order_span(span)
    if swapped:
        repairs.append(Repair("span_swapped", fld, before, ordered))
    clipped, changed = clip_span(ordered, float(duration))
    if changed:
        repairs.append(Repair("span_clipped", fld, ordered, clipped))
        if clipped[0] == clipped[1] and ordered[0] < ordered[1]:
            repairs.append(Repair("span_collapsed", fld, ordered, clipped))
    if not repairs:
        return before, []
    return [_same(clipped[0], span[0]), _same(clipped[1], span[1])] if not swapped else clipped, repairs


def _repair_spans(obj: Any, duration: float, fld: str, shape: str, where: str, rec: Mapping):
    """Validate and repair spans of a given shape (see :class:`TaskSpec`); returns ``(obj, repairs)``."""
    if shape == "span":
        if not _is_span(obj):
            raise _fail(where, rec, f"'{fld}' must be one [start, end] pair of numbers, got {obj!r}")
        return repair_span(obj, duration, fld)
    if shape == "spans":
        if not isinstance(obj, (list, tuple)) or not all(_is_span(s) for s in obj):
            raise _fail(where, rec, f"'{fld}' must be a list of [start, end] pairs, got {obj!r}")
        out, reps = [], []
        for i, s in enumerate(obj):
            s2, r = repair_span(s, duration, f"{fld}[{i}]")
            out.append(s2)
            reps += r
        return out, reps
    if shape == "nested":  # spans, or per-annotator lists of spans
        if isinstance(obj, (list, tuple)) and obj and all(isinstance(a, (list, tuple)) and not _is_span(a) for a in obj):
            out, reps = [], []
            for i, a in enumerate(obj):
                a2, r = _repair_spans(a, duration, f"{fld}[{i}]", "spans", where, rec)
                out.append(a2)
                reps += r
            return out, reps
        return _repair_spans(obj, duration, fld, "spans", where, rec)
    if shape == "any":  # one span or a list of spans
        return _repair_spans(obj, duration, fld, "span" if _is_span(obj) else "spans", where, rec)
    if shape == "src":  # spans quoted in the prompt: a span, spans, or single timestamps
        if _is_span(obj):
            return repair_span(obj, duration, fld)
        if not isinstance(obj, (list, tuple)):
            raise _fail(where, rec, f"'{fld}' must be a list, got {obj!r}")
        out, reps = [], []
        for i, s in enumerate(obj):
            f = f"{fld}[{i}]"
            if _is_number(s):
                c = min(max(float(s), 0.0), float(duration))
                if c != s:
                    reps.append(Repair("time_clipped", f, s, c))
                out.append(s if c == s else c)
            else:
                s2, r = _repair_spans(s, duration, f, "any", where, rec)
                out.append(s2)
                reps += r
        return out, reps
    raise ValueError(f"unknown span shape {shape!r}")


def _nonempty_text(x: Any) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _n_spans(tgt: Any) -> int:
    return 1 if _is_span(tgt) else len(tgt)


def _check_captions(rec: dict, spec: TaskSpec, where: str) -> None:
    g = rec.get("g")
    if g is None:
        if spec.g == "aligned":
            raise _fail(where, rec, "missing required key 'g' (captions aligned with 'tgt')")
        return
    if not isinstance(g, (list, tuple)):
        raise _fail(where, rec, f"'g' must be a list of captions, got {g!r}")
    for i, c in enumerate(g):
        if not _nonempty_text(c):
            raise _fail(where, rec, f"empty caption g[{i}] = {c!r}")
    if "tgt" not in rec:
        return
    n = _n_spans(rec["tgt"])
    ok = {
        "aligned": len(g) == n,
        "one": len(g) == 1,
        "one_or_aligned": len(g) in (1, n),
        "free": True,
    }[spec.g]
    if not ok:
        want = {"aligned": f"{n} (one per span)", "one": "1", "one_or_aligned": f"1 or {n}"}[spec.g]
        raise _fail(where, rec, f"len(g) = {len(g)} but 'tgt' has {n} span(s); expected {want}")


def _check_options(rec: dict, spec: TaskSpec, where: str, repairs: list[Repair]) -> None:
    o, p = rec.get("o"), rec.get("p")
    if spec.mcq:
        for k in ("o", "p"):
            if k not in rec:
                raise _fail(where, rec, f"missing required key '{k}' for a multiple-choice task")
    if o is not None:
        if not isinstance(o, (list, tuple)) or len(o) == 0:
            raise _fail(where, rec, f"'o' must be a non-empty list of options, got {o!r}")
        opts = list(o)
        for i, opt in enumerate(opts):
            if _is_span(opt):  # time options (eca)
                opts[i], r = repair_span(opt, rec["duration"], f"o[{i}]")
                repairs += r
            elif not _nonempty_text(opt):
                raise _fail(where, rec, f"empty option o[{i}] = {opt!r}")
        rec["o"] = opts
    if p is not None:
        if not _is_int(p):
            raise _fail(where, rec, f"'p' must be an integer option index, got {p!r}")
        n = len(rec["o"]) if o is not None else None
        if p < 0 or (n is not None and p >= n):
            raise _fail(where, rec, f"'p' = {p} is out of range for {n} options")


def validate_record(rec: Mapping, where: str) -> tuple[dict, list[Repair]]:
    """Check one record against the E.T. Bench schema; repair what is safe to repair.

    Repairs (returned, never silent): spans outside ``[0, duration]`` are clipped
    (``span_clipped``; ``span_collapsed`` when nothing is left), reversed spans swapped
    (``span_swapped``), a single-span target written as ``[[s, e]]`` unwrapped (``tgt_unwrapped``),
    dvc/slc spans sorted by start with their captions (``events_sorted``).
    Errors (:class:`DatasetError` naming ``where`` and the record idx): missing required keys,
    unknown task, bad types, empty captions/options/prompt, ``p`` out of range, ``len(g)``
    not matching ``tgt``.

    ``rec`` is not modified; the returned record is a copy. Unknown keys are kept.

    >>> r = {"idx": 3, "task": "dvc", "source": "s", "video": "v.mp4", "duration": 20, "q": "?",
    ...      "tgt": [[10, 12], [1, 4]], "g": ["b", "a"]}
    >>> fixed, reps = validate_record(r, "f.json")
    >>> fixed["tgt"], fixed["g"], [x.kind for x in reps]
    ([[1, 4], [10, 12]], ['a', 'b'], ['events_sorted'])
    >>> validate_record({**r, "g": ["b", ""]}, "f.json")
    Traceback (most recent call last):
    ...
    d2lib.world.datasets.DatasetError: f.json (idx 3, task dvc): empty caption g[1] = ''
    """
    if not isinstance(rec, Mapping):
        raise DatasetError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    rec = _plain(rec)  # a deep copy in plain JSON types
    for k in REQUIRED_KEYS:
        if k not in rec:
            raise _fail(where, rec, f"missing required key '{k}'")
    if rec["task"] not in TASKS:
        raise _fail(where, rec, f"unknown task {rec['task']!r} (known: {', '.join(TASKS)})")
    spec = TASKS[rec["task"]]
    if not _is_int(rec["idx"]):
        raise _fail(where, rec, f"'idx' must be an integer, got {rec['idx']!r}")
    for k in ("source", "video"):
        if not _nonempty_text(rec[k]):
            raise _fail(where, rec, f"'{k}' must be a non-empty string, got {rec[k]!r}")
    if not _is_number(rec["duration"]) or rec["duration"] <= 0:
        raise _fail(where, rec, f"'duration' must be a positive number of seconds, got {rec['duration']!r}")
    if not _nonempty_text(rec["q"]):
        raise _fail(where, rec, f"empty prompt 'q' = {rec['q']!r}")
    if rec.get("a") is not None and not isinstance(rec["a"], str):
        raise _fail(where, rec, f"'a' (model answer) must be a string, got {rec['a']!r}")

    repairs: list[Repair] = []
    duration = rec["duration"]
    if "tgt" in rec:
        tgt = rec["tgt"]
        if spec.tgt == "span" and isinstance(tgt, list) and len(tgt) == 1 and _is_span(tgt[0]):
            repairs.append(Repair("tgt_unwrapped", "tgt", tgt, tgt[0]))
            tgt = tgt[0]
        if spec.tgt_required and isinstance(tgt, (list, tuple)) and len(tgt) == 0:
            raise _fail(where, rec, "'tgt' is empty (the task needs at least one span)")
        rec["tgt"], r = _repair_spans(tgt, duration, "tgt", spec.tgt, where, rec)
        repairs += r
    elif spec.tgt_required:
        raise _fail(where, rec, "missing required key 'tgt'")
    if "src" in rec:
        rec["src"], r = _repair_spans(rec["src"], duration, "src", "src", where, rec)
        repairs += r
    _check_captions(rec, spec, where)
    _check_options(rec, spec, where, repairs)
    if rec["task"] in ALIGNED_SORTED:
        order = sorted(range(len(rec["tgt"])), key=lambda i: (rec["tgt"][i][0], rec["tgt"][i][1]))
        if order != list(range(len(order))):
            repairs.append(Repair("events_sorted", "tgt", rec["tgt"], [rec["tgt"][i] for i in order]))
            rec["tgt"] = [rec["tgt"][i] for i in order]
            rec["g"] = [rec["g"][i] for i in order]
    return rec, repairs


def validate_records(records: Iterable[Any], where: str, report: LoadReport | None = None,
                     where_of: Callable[[int], str] | None = None) -> Loaded:
    """Validate a list of records (:func:`validate_record`); duplicate ``(task, source, idx)``
    is an error. ``where_of(i)`` names record ``i`` in messages (default ``"{where} [i]"``)."""
    report = report or LoadReport(where)
    out, seen = [], {}
    for i, rec in enumerate(records):
        w = where_of(i) if where_of else f"{where} [{i}]"
        fixed, reps = validate_record(rec, w)
        key = (fixed["task"], fixed["source"], fixed["idx"])
        if key in seen:
            raise _fail(w, fixed, f"duplicate (task, source, idx) = {key}; first seen at {seen[key]}")
        seen[key] = w
        report.add(w, fixed["task"], reps)
        out.append(fixed)
    return Loaded(out, report)


# --------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DatasetFileNotFound(f"{p}: {what} not found")
    return p


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing file or invalid JSON raises :class:`DatasetError` naming the
    file and, for invalid JSON, the line/column."""
    p = _existing(path, what)
    if p.is_dir():
        raise DatasetError(f"{p}: expected a {what}, found a folder")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: invalid JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not UTF-8 text (byte {e.start}): {e.reason}") from None


def video_path(rec_or_video: Mapping | str, video_root: str | os.PathLike) -> Path:
    """Where a record's video lives: ``video_root / rec['video']``."""
    v = rec_or_video["video"] if isinstance(rec_or_video, Mapping) else rec_or_video
    return Path(video_root) / v


def distinct_videos(records: Iterable[Mapping]) -> list[str]:
    """The distinct ``video`` values in first-seen order.

    >>> distinct_videos([{"video": "b"}, {"video": "a"}, {"video": "b"}])
    ['b', 'a']
    """
    return list(dict.fromkeys(r["video"] for r in records))


def check_videos_exist(records: Iterable[Mapping], video_root: str | os.PathLike, where: str) -> None:
    """Raise :class:`DatasetError` listing (up to 5) videos missing under ``video_root``."""
    missing = [v for v in distinct_videos(records) if not video_path(v, video_root).is_file()]
    if missing:
        shown = ", ".join(str(video_path(v, video_root)) for v in missing[:5])
        raise DatasetFileNotFound(f"{where}: {len(missing)} video file(s) missing under {video_root}: {shown}"
                                  + (" ..." if len(missing) > 5 else ""))


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def load_records_json(json_path: str | os.PathLike, report: LoadReport | None = None) -> Loaded:
    """One JSON file holding a list of records (E.T. Bench or our ``annotations.json``)."""
    p = Path(json_path)
    data = read_json(p, "annotation file")
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
    return validate_records(data, str(p), report)


def load_etbench(json_path: str | os.PathLike, video_root: str | os.PathLike | None = None) -> Loaded:
    """E.T. Bench annotations: one JSON list (e.g. ``etbench_txt_v1.0.json``) or a folder of them
    (e.g. ``annotations/txt/``; every ``*.json`` except ``metrics*``, sorted by name).

    With ``video_root`` every referenced video must exist there (error listing the missing ones).
    Returns ``(records, report)``; the report is logged.
    """
    p = _existing(json_path, "E.T. Bench annotations")
    report = LoadReport(str(p))
    if p.is_dir():
        files = sorted(f for f in p.glob("*.json") if not f.name.startswith("metrics"))
        if not files:
            raise DatasetError(f"{p}: folder holds no *.json annotation files")
        records: list[dict] = []
        seen: dict[tuple, str] = {}
        for f in files:
            recs, _ = load_records_json(f, report)
            for i, r in enumerate(recs):
                key = (r["task"], r["source"], r["idx"])
                if key in seen:
                    raise _fail(f"{f} [{i}]", r, f"duplicate (task, source, idx) = {key}; also in {seen[key]}")
                seen[key] = str(f)
            records += recs
    else:
        records, _ = load_records_json(p, report)
    if video_root is not None:
        check_videos_exist(records, video_root, str(p))
    return Loaded(records, report.log())


def load_shapes(split_dir: str | os.PathLike, check_videos: bool = True) -> ShapesSplit:
    """One split of our Shapes benchmark: ``annotations.json`` (records) + ``meta.json`` (a list of
    per-video world descriptions ``{video, duration, seed, objects, events}``).

    Every record's video must have a meta entry with the same duration; with ``check_videos`` the
    video files must exist under ``split_dir``. Returns ``(records, metas, report, root)`` with
    ``metas`` keyed by ``video``.
    """
    root = _existing(split_dir, "Shapes split folder")
    ann = root / "annotations.json"
    records, report = load_records_json(_existing(ann, "Shapes annotations"), LoadReport(str(root)))
    meta_path = _existing(root / "meta.json", "Shapes world descriptions")
    raw = read_json(meta_path)
    if not isinstance(raw, list):
        raise DatasetError(f"{meta_path}: expected a JSON list of video descriptions, got {type(raw).__name__}")
    metas: dict[str, dict] = {}
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "video" not in m or "duration" not in m:
            raise DatasetError(f"{meta_path} [{i}]: a video description needs 'video' and 'duration'")
        if m["video"] in metas:
            raise DatasetError(f"{meta_path} [{i}]: duplicate video {m['video']!r}")
        metas[m["video"]] = m
    for i, r in enumerate(records):
        m = metas.get(r["video"])
        if m is None:
            raise _fail(f"{ann} [{i}]", r, f"video {r['video']!r} has no entry in {meta_path}")
        if not math.isclose(float(m["duration"]), float(r["duration"]), abs_tol=1e-6):
            raise _fail(f"{ann} [{i}]", r, f"duration {r['duration']} differs from {meta_path}: {m['duration']}")
    if check_videos:
        check_videos_exist(records, root, str(ann))
    return ShapesSplit(records, metas, report.log(), root)


# ---- durations for files that do not carry them (Charades-STA, TimeIT tvg) -----------------

Durations = Mapping[str, float] | str | os.PathLike


def read_durations_csv(csv_path: str | os.PathLike) -> dict[str, float]:
    """Video durations from a CSV with an id column (``id``/``video``/``video_id``) and a duration
    column (``length`` as in Charades_v1_*.csv, or ``duration``). Errors name file:line."""
    p = _existing(csv_path, "durations CSV")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        id_col = next((c for c in ("id", "video", "video_id") if c in cols), None)
        dur_col = next((c for c in ("length", "duration") if c in cols), None)
        if id_col is None or dur_col is None:
            raise DatasetError(f"{p}: needs an id column (id/video/video_id) and a duration column "
                               f"(length/duration); found {cols}")
        out: dict[str, float] = {}
        for row in reader:
            line = reader.line_num
            try:
                d = float(row[dur_col])
            except (TypeError, ValueError):
                raise DatasetError(f"{p}:{line}: duration {row[dur_col]!r} is not a number") from None
            if not math.isfinite(d) or d <= 0:
                raise DatasetError(f"{p}:{line}: duration {d} must be positive")
            out[row[id_col].strip()] = d
    return out


def _probe_duration(path: Path) -> float:
    from d2lib.world import video  # lazy: decord is only needed when probing

    info = video.probe(path)
    d = info["duration"] if isinstance(info, Mapping) else getattr(info, "duration")
    return float(d)


class DurationLookup:
    """Duration of a video id from a dict, a CSV file, or by probing files under a video folder.

    Ids are tried as given and without their extension (``3MSZA.mp4`` → ``3MSZA``); probing tries
    ``root/video`` (the record's video path, when given), ``root/id`` then ``root/id.mp4``.
    """

    def __init__(self, durations: Durations):
        self.root: Path | None = None
        self.table: dict[str, float] = {}
        if isinstance(durations, Mapping):
            self.table = {str(k): float(v) for k, v in durations.items()}
            self.what = "the given durations"
        else:
            p = _existing(durations, "durations source (dict, CSV file or video folder)")
            if p.is_dir():
                self.root, self.what = p, f"videos under {p}"
            else:
                self.table, self.what = read_durations_csv(p), str(p)

    def __call__(self, vid: str, video: str | None = None) -> float | None:
        for k in dict.fromkeys((vid, Path(vid).stem if Path(vid).suffix else vid)):
            if k in self.table:
                return self.table[k]
        if self.root is not None:
            cands = ([self.root / video] if video else []) + [self.root / vid, self.root / f"{vid}.mp4"]
            for cand in cands:
                if cand.is_file():
                    d = _probe_duration(cand)
                    self.table[vid] = d
                    return d
        return None


def durations_from_metas(metas: Mapping[str, Mapping] | Iterable[Mapping]) -> dict[str, float]:
    """``{video stem: duration}`` from Shapes world descriptions — the ``durations`` argument for
    the split's own ``charades.txt`` (whose ids are the video file stems).

    >>> durations_from_metas([{"video": "videos/val_00001.mp4", "duration": 17}])
    {'val_00001': 17.0}
    """
    items = metas.values() if isinstance(metas, Mapping) else metas
    return {Path(m["video"]).stem: float(m["duration"]) for m in items}


def tvg_prompt(query: str) -> str:
    """The grounding prompt for a query (trailing period dropped), asking for the contract's
    answer format.

    >>> tvg_prompt("person turn a light on.")
    "Find the moment in the video described by the sentence: 'person turn a light on'. The format of your response should be: 'The event happens in <start time> - <end time>'."
    """
    q = query.strip().rstrip(".").strip()
    return (f"Find the moment in the video described by the sentence: '{q}'. The format of your "
            "response should be: 'The event happens in <start time> - <end time>'.")


def _tvg_record(idx: int, source: str, video: str, duration: float, span: list, sentence: str) -> dict:
    return {"idx": idx, "task": "tvg", "source": source, "video": video, "duration": duration,
            "tgt": span, "g": [sentence], "q": tvg_prompt(sentence)}


def parse_charades_line(line: str, where: str) -> tuple[str, float, float, str]:
    """``"VID s e##sentence"`` → ``(vid, s, e, sentence)``; malformed → :class:`DatasetError`.

    >>> parse_charades_line("3MSZA 24.3 30.4##person turn a light on.", "f:1")
    ('3MSZA', 24.3, 30.4, 'person turn a light on.')
    """
    head, sep, sentence = line.partition("##")
    if not sep:
        raise DatasetError(f"{where}: expected 'VID START END##sentence', no '##' in {line.strip()!r}")
    parts = head.split()
    if len(parts) != 3:
        raise DatasetError(f"{where}: expected 'VID START END' before '##', got {head.strip()!r}")
    try:
        s, e = float(parts[1]), float(parts[2])
    except ValueError:
        raise DatasetError(f"{where}: start/end must be numbers, got {parts[1]!r} {parts[2]!r}") from None
    if not (math.isfinite(s) and math.isfinite(e)):
        raise DatasetError(f"{where}: start/end must be finite, got {parts[1]!r} {parts[2]!r}")
    sentence = sentence.strip()
    if not sentence:
        raise DatasetError(f"{where}: empty sentence")
    return parts[0], s, e, sentence


def load_charades_txt(txt_path: str | os.PathLike, durations: Durations, source: str = "charades_sta",
                      video_template: str = "{vid}.mp4") -> Loaded:
    """Charades-STA txt (``VID START END##sentence`` per line) → ``tvg`` records.

    ``durations``: a dict ``{vid: seconds}``, a CSV (Charades ``id``/``length`` columns) or a
    folder of videos to probe. ``video`` = ``video_template.format(vid=VID)``. Ends after the
    video are clipped and counted (562 in the official test split); reversed spans swapped and
    counted; blank lines skipped and counted. ``idx`` = query number (0-based).
    """
    p = _existing(txt_path, "Charades-STA txt")
    lookup = DurationLookup(durations)
    report = LoadReport(str(p))
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not UTF-8 text (byte {e.start})") from None
    raw, wheres = [], []
    for n, line in enumerate(lines, start=1):
        where = f"{p}:{n}"
        if not line.strip():
            report.count("blank_line_skipped", where)
            continue
        vid, s, e, sentence = parse_charades_line(line, where)
        video = video_template.format(vid=vid)
        d = lookup(vid, video)
        if d is None:
            raise DatasetError(f"{where}: no duration for video {vid!r} in {lookup.what}")
        raw.append(_tvg_record(len(raw), source, video, d, [s, e], sentence))
        wheres.append(where)
    if not raw:
        raise DatasetError(f"{p}: no queries found")
    records, _ = validate_records(raw, str(p), report, where_of=wheres.__getitem__)
    return Loaded(records, report.log())


def load_timeit_tvg(json_path: str | os.PathLike, durations: Durations, source: str = "charades_sta",
                    video_template: str = "{vid}") -> Loaded:
    """TimeIT/TimeChat COCO-style grounding JSON → ``tvg`` records.

    Layout: ``{"annotations": [{"image_id": "3MSZA.mp4", "caption": ..., "timestamp": [s, e],
    "id": 0}, ...]}``. ``idx`` = ``id``; ``video`` = ``video_template.format(vid=image_id)``;
    durations as in :func:`load_charades_txt`.
    """
    p = Path(json_path)
    data = read_json(p, "TimeIT grounding JSON")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{p}: expected an object with an 'annotations' list (TimeIT COCO style)")
    lookup = DurationLookup(durations)
    report = LoadReport(str(p))
    raw = []
    for i, a in enumerate(data["annotations"]):
        where = f"{p}: annotations[{i}]"
        if not isinstance(a, dict):
            raise DatasetError(f"{where}: expected an object, got {type(a).__name__}")
        for k in ("image_id", "caption", "timestamp", "id"):
            if k not in a:
                raise DatasetError(f"{where}: missing key '{k}'")
        if not _is_span(a["timestamp"]):
            raise DatasetError(f"{where}: 'timestamp' must be [start, end], got {a['timestamp']!r}")
        if not _nonempty_text(a["caption"]):
            raise DatasetError(f"{where}: empty caption {a['caption']!r}")
        video = video_template.format(vid=a["image_id"])
        d = lookup(str(a["image_id"]), video)
        if d is None:
            raise DatasetError(f"{where}: no duration for video {a['image_id']!r} in {lookup.what}")
        raw.append(_tvg_record(a["id"], source, video, d, list(a["timestamp"]), a["caption"].strip()))
    records, _ = validate_records(raw, str(p), report, where_of=lambda i: f"{p}: annotations[{i}]")
    return Loaded(records, report.log())


DVC_PROMPT = ("Localize a series of activity events in the video, output the start and end timestamp "
              "for each event, and describe each event with sentences.")


def _dvc_record(idx: int, source: str, video: str, duration: float, spans: list, caps: list) -> dict:
    return {"idx": idx, "task": "dvc", "source": source, "video": video, "duration": duration,
            "tgt": spans, "g": caps, "q": DVC_PROMPT}


def load_youcook2(json_path: str | os.PathLike, subset: str | None = "validation", source: str = "youcook2",
                  video_template: str = "{vid}.mp4") -> Loaded:
    """YouCook2 → ``dvc`` records (spans sorted by start, captions aligned).

    Accepts the official layout ``{"database": {vid: {duration, subset, annotations: [{segment,
    sentence}]}}}`` (filtered by ``subset``; ``None`` keeps all; ``video`` =
    ``video_template.format(vid=vid)``) and TimeIT's COCO style ``{"annotations": [{image_id,
    duration, segments, pure_cap}]}`` (captions = ``pure_cap.split(". ")``; ``subset`` ignored,
    ``video`` = ``image_id``). ``idx`` = position in the file (videos sorted as in the file).
    """
    p = Path(json_path)
    data = read_json(p, "YouCook2 annotations")
    report = LoadReport(str(p))
    raw, wheres = [], []
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        for vid, v in data["database"].items():
            where = f"{p}: database[{vid!r}]"
            if not isinstance(v, dict):
                raise DatasetError(f"{where}: expected an object")
            if subset is not None and v.get("subset") != subset:
                continue
            for k in ("duration", "annotations"):
                if k not in v:
                    raise DatasetError(f"{where}: missing key '{k}'")
            spans, caps = [], []
            for j, a in enumerate(v["annotations"]):
                if not isinstance(a, dict) or "segment" not in a or "sentence" not in a:
                    raise DatasetError(f"{where}.annotations[{j}]: needs 'segment' and 'sentence'")
                spans.append(a["segment"])
                caps.append(a["sentence"].strip() if isinstance(a["sentence"], str) else a["sentence"])
            if not spans:
                raise DatasetError(f"{where}: no annotated segments")
            raw.append(_dvc_record(len(raw), source, video_template.format(vid=vid), v["duration"], spans, caps))
            wheres.append(where)
        if not raw:
            found = sorted({str(v.get("subset")) for v in data["database"].values() if isinstance(v, dict)})
            raise DatasetError(f"{p}: no videos in subset {subset!r} (subsets present: {', '.join(found)})")
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        for i, a in enumerate(data["annotations"]):
            where = f"{p}: annotations[{i}]"
            if not isinstance(a, dict):
                raise DatasetError(f"{where}: expected an object")
            for k in ("image_id", "duration", "segments", "pure_cap"):
                if k not in a:
                    raise DatasetError(f"{where}: missing key '{k}'")
            caps = [c.strip() for c in str(a["pure_cap"]).split(". ")]  # TimeChat's convention
            raw.append(_dvc_record(a.get("id", i), source, a["image_id"], a["duration"], a["segments"], caps))
            wheres.append(where)
    else:
        raise DatasetError(f"{p}: expected the official YouCook2 layout ({{'database': ...}}) or TimeIT's "
                           "({'annotations': [...]})")
    records, _ = validate_records(raw, str(p), report, where_of=wheres.__getitem__)
    return Loaded(records, report.log())


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
BENCHMARK_SPLITS = ("val", "test")  # rendered once, tracked by data.dvc


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise ``ValueError``.

    >>> check_split("val")
    'val'
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return split


def shapes_split_dir(split: str) -> Path:
    """``data/shapes/{val,test}`` (the versioned benchmark) or ``artifacts/prepare/train``."""
    check_split(split)
    if split == "train":
        return paths.artifacts("prepare", "train", mkdir=False)
    return paths.data_dir() / "shapes" / split


def frame_cache_path(split: str) -> Path:
    """``artifacts/prepare/frames_{split}.npz`` (CONTRACTS: Files on disk)."""
    return paths.artifacts("prepare", f"frames_{check_split(split)}.npz", mkdir=False)


def records_by_task(records: Iterable[Mapping]) -> dict[str, list]:
    """Group records by ``task``, keeping their order (tasks in first-seen order).

    >>> g = records_by_task([{"task": "tvg", "idx": 0}, {"task": "dvc", "idx": 1}, {"task": "tvg", "idx": 2}])
    >>> {t: [r["idx"] for r in rs] for t, rs in g.items()}
    {'tvg': [0, 2], 'dvc': [1]}
    """
    out: dict[str, list] = {}
    for r in records:
        out.setdefault(r["task"], []).append(r)
    return out


def records_by_video(records: Iterable[Mapping]) -> dict[str, list]:
    """Group records by ``video`` (first-seen order)."""
    out: dict[str, list] = {}
    for r in records:
        out.setdefault(r["video"], []).append(r)
    return out


# --------------------------------------------------------------------------------------------
# Stage config
# --------------------------------------------------------------------------------------------



@dataclass(frozen=True)
class PrepareConfig:
    """params.yaml section ``prepare`` (stage 01_video_data: render train split, decode, cache).

    ``train_videos``: Shapes videos rendered for training; ``train_seed``: base seed of the training
    split — video ``k`` uses seed ``train_seed + k`` (``d2lib.world.synth.render_split``), and every such
    seed must stay below ``TRAIN_SEED_LIMIT`` (1,000,000), where the benchmark's val/test seeds
    start, so no training video is a benchmark video; ``decode_fps``/``decode_size``: frames per second and square
    side in pixels read back with decord (frame t = second t at 1 fps); ``frame_tolerance``: allowed
    difference between decoded frames and ``floor(duration * fps)``; ``cache_compress``: zip-deflate
    the cache (smaller, but no memory mapping); ``workers``: processes rendering the training split
    (0: one per core this process may use; the videos are the same bytes for any number).
    """

    train_videos: int = 600
    train_seed: int = 0
    decode_fps: float = 1.0
    decode_size: int = 32
    frame_tolerance: int = 1
    cache_compress: bool = False
    workers: int = 0

    def resolved_workers(self) -> int:
        """``workers``, with 0 = the stage's declared cores (``OMP_NUM_THREADS``, which ``d2lib.core.numenv``
        sets from the stage's command), else the cores this process may run on. Any number renders
        the same bytes; this only keeps the stage within the cores the runner reserved for it."""
        declared = os.environ.get("OMP_NUM_THREADS", "")
        if declared.isdigit() and int(declared) > 0:
            return self.workers or int(declared)
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def __post_init__(self):
        config.check(1 <= self.train_videos <= 1_000_000, "prepare.train_videos",
                     f"must be in [1, 1000000], got {self.train_videos}")
        config.check(0 <= self.train_seed and self.train_seed + self.train_videos <= TRAIN_SEED_LIMIT,
                     "prepare.train_seed",
                     f"training seeds train_seed + k (k < train_videos = {self.train_videos}) must lie in "
                     f"[0, {TRAIN_SEED_LIMIT}); seeds >= {TRAIN_SEED_LIMIT} belong to the benchmark; "
                     f"got train_seed = {self.train_seed}")
        config.check(0 < self.decode_fps <= 30, "prepare.decode_fps", f"must be in (0, 30], got {self.decode_fps}")
        config.check(8 <= self.decode_size <= 1024, "prepare.decode_size",
                     f"must be in [8, 1024] pixels, got {self.decode_size}")
        config.check(0 <= self.frame_tolerance <= 10, "prepare.frame_tolerance",
                     f"must be in [0, 10], got {self.frame_tolerance}")
        config.check(0 <= self.workers <= 256, "prepare.workers", f"must be in [0, 256] (0: one per core), got {self.workers}")


# --------------------------------------------------------------------------------------------
# Frame cache
# --------------------------------------------------------------------------------------------

CACHE_META = "__cache_meta__.json"
CACHE_DATE = (1980, 1, 1, 0, 0, 0)  # every entry's zip timestamp (numpy's .npy entries get this one too)


def expected_frames(duration: float, fps: float) -> int:
    """Frames a decode at ``fps`` should give: ``floor(duration * fps)`` (tiny float slack).

    >>> expected_frames(16, 1.0), expected_frames(29.97, 1.0), expected_frames(3.0, 0.1)
    (16, 29, 0)
    """
    return int(math.floor(duration * fps + 1e-6))


def check_frame_count(video: str, n_frames: int, duration: float, fps: float, tolerance: int = 1) -> None:
    """Raise :class:`DatasetError` naming ``video`` unless ``|n_frames - floor(duration*fps)| <= tolerance``."""
    want = expected_frames(duration, fps)
    if abs(n_frames - want) > tolerance:
        raise DatasetError(f"{video}: decoded {n_frames} frames at {fps} fps but duration {duration} s implies "
                           f"floor({duration} * {fps}) = {want} (tolerance ±{tolerance})")


def _videos_and_durations(items: Sequence[Mapping | str], video_root: Path) -> dict[str, float | None]:
    """``{video: duration}`` for records (durations must agree) or bare video names (``None``)."""
    out: dict[str, float | None] = {}
    for it in items:
        if isinstance(it, Mapping):
            v, d = it["video"], float(it["duration"])
            if v in out and out[v] is not None and not math.isclose(out[v], d, abs_tol=1e-6):
                raise DatasetError(f"{video_path(v, video_root)}: records disagree on its duration ({out[v]} vs {d})")
            out[v] = d
        else:
            out.setdefault(str(it), None)
    return out


def _write_npy(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    with zf.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def build_frame_cache(items: Sequence[Mapping | str], video_root: str | os.PathLike, out_path: str | os.PathLike,
                      fps: float = 1.0, size: int | None = 32, tolerance: int = 1, compress: bool = False,
                      progress: bool = True) -> Path:
    """Decode every distinct video once and write one ``.npz`` — uint8 ``(T, H, W, 3)`` per video,
    keyed by the record's ``video`` field (plus a small JSON entry with fps/size).

    ``items``: records (their ``duration`` is checked against the decoded frame count, see
    :func:`check_frame_count`) or bare video names (durations probed). The file is written to a
    temporary name in the same folder and moved into place with ``os.replace``: a failure midway
    leaves no partial cache. A missing/corrupt video raises ``d2lib.world.video.VideoError``.
    Stored uncompressed by default so :func:`load_frame_cache` can memory-map it.
    """
    from tqdm import tqdm

    from d2lib.world import video  # lazy: decord is needed only here

    root, out = Path(video_root), Path(out_path)
    want = _videos_and_durations(list(items), root)
    if not want:
        raise DatasetError(f"{out}: nothing to cache (no videos given)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    try:
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
            shapes = {}
            for v, d in tqdm(want.items(), desc=f"decode → {out.name}", unit="video", disable=not progress):
                path = video_path(v, root)
                frames = video.read_frames(path, fps=fps, size=size)
                if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                    raise DatasetError(f"{path}: read_frames returned {frames.dtype} {frames.shape}, "
                                       "expected uint8 (T, H, W, 3)")
                if d is None:
                    d = _probe_duration(path)
                check_frame_count(str(path), len(frames), d, fps, tolerance)
                _write_npy(zf, v, frames)
                shapes[v] = list(frames.shape)
            meta = {"fps": fps, "size": size, "n_videos": len(shapes), "shapes": shapes}
            # a ZipInfo of its own: ``writestr(name, ...)`` would stamp the entry with the wall clock, and
            # the same frames would give another file (and another DVC hash) on every run
            zf.writestr(zipfile.ZipInfo(CACHE_META, date_time=CACHE_DATE), json.dumps(meta, sort_keys=True),
                        compress_type=method)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("frame cache %s: %d videos at %s fps, size %s", out, len(want), fps, size)
    return out


class FrameCache(Mapping):
    """Read-only ``{video: uint8 (T, H, W, 3)}`` view of a cache file; arrays are loaded lazily
    (memory-mapped when stored uncompressed). ``meta`` holds ``fps``, ``size`` and shapes."""

    def __init__(self, path: Path, mmap: bool = True):
        self.path = path
        self._mmap = mmap
        self._arrays: dict[str, np.ndarray] = {}
        try:
            self._zf = zipfile.ZipFile(path)
            infos = self._zf.infolist()
            self.meta = json.loads(self._zf.read(CACHE_META)) if CACHE_META in self._zf.namelist() else {}
        except (zipfile.BadZipFile, OSError, KeyError, json.JSONDecodeError, EOFError) as e:
            raise DatasetError(f"{path}: not a readable frame cache (corrupt or truncated?): {e}") from None
        self._infos = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}

    def __getitem__(self, video: str) -> np.ndarray:
        if video in self._arrays:
            return self._arrays[video]
        info = self._infos.get(video)
        if info is None:
            raise KeyError(f"{video!r} is not in frame cache {self.path} ({len(self)} videos)")
        try:
            arr = self._memmap(info) if self._mmap and info.compress_type == zipfile.ZIP_STORED else None
            if arr is None:
                with self._zf.open(info) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f"{self.path}: entry {video!r} is corrupt: {e}") from None
        self._arrays[video] = arr
        return arr

    def _memmap(self, info: zipfile.ZipInfo) -> np.ndarray:
        """Map a stored ``.npy`` entry: skip the zip local header, parse the npy header."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            hdr = f.read(30)
            if len(hdr) < 30 or hdr[:4] != b"PK\x03\x04":
                raise ValueError("bad local zip header")
            name_len, extra_len = struct.unpack("<HH", hdr[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        if offset + int(np.prod(shape)) * dtype.itemsize > os.path.getsize(self.path):
            raise ValueError("entry is truncated")
        return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> "FrameCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FrameCache({self.path.name!r}, {len(self)} videos, fps={self.meta.get('fps')}, size={self.meta.get('size')})"


def load_frame_cache(path: str | os.PathLike, mmap: bool = True, fps: float | None = None,
                     size: int | None = None) -> FrameCache:
    """Open a cache written by :func:`build_frame_cache` as a lazy ``{video: (T, H, W, 3) uint8}``
    mapping. A missing or corrupt file raises :class:`DatasetError` naming it; so does a cache
    decoded at another ``fps``/``size`` than the ones given (a stale cache)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetFileNotFound(f"{p}: frame cache not found (run the prepare stage: dvc repro prepare)")
    cache = FrameCache(p, mmap=mmap)
    for key, want in (("fps", fps), ("size", size)):
        if want is not None and cache.meta.get(key) != want:
            cache.close()
            raise DatasetError(f"{p}: cache was decoded with {key}={cache.meta.get(key)!r}, expected {want!r} "
                               "(stale cache: rebuild it)")
    return cache


__all__ = [
    "DatasetError", "DatasetFileNotFound", "Repair", "LoadReport", "Loaded", "ShapesSplit", "TaskSpec", "TASKS",
    "validate_record", "validate_records", "repair_span", "read_json", "video_path", "distinct_videos",
    "check_videos_exist", "load_records_json", "load_etbench", "load_shapes", "read_durations_csv",
    "DurationLookup", "durations_from_metas", "tvg_prompt", "parse_charades_line", "load_charades_txt", "load_timeit_tvg",
    "load_youcook2", "SPLITS", "check_split", "shapes_split_dir", "frame_cache_path", "records_by_task",
    "records_by_video", "TRAIN_SEED_LIMIT", "PrepareConfig", "expected_frames", "check_frame_count", "build_frame_cache",
    "FrameCache", "load_frame_cache",
]
