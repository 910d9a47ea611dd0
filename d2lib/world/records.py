"""Records: the one schema every dataset becomes, its validation, and the Shapes splits.

Taught in lesson ``01_video_data``. Every dataset becomes a list of **records** in E.T. Bench's schema::

    {idx, task, source, video, duration, src?, tgt?, p?, o?, g?, q, a?}

so the Shapes benchmark and real benchmarks (E.T. Bench, Charades-STA, YouCook2; their readers are in
:mod:`d2lib.loaders`) go through the same model and metric code. Spans are ``[start, end]`` seconds.

Loading validates every record (:func:`validate_record`):

* a span outside ``[0, duration]`` is **clipped**, a span with ``start > end`` is **swapped**; both
  are counted in a :class:`LoadReport` that is logged and returned (Charades-STA's test split has
  562 queries that end after the video);
* a zero-length span (``start == end``) is kept but **flagged** (``span_zero_length``): no
  prediction can reach an IoU threshold on it, so the report says how many there are;
* a missing required key, an empty caption/prompt, ``p`` out of range, captions not aligned with
  spans, a malformed line or invalid JSON raise :class:`DatasetError` naming the file (and line or
  record ``idx``).

Nothing is dropped or repaired silently.

Loaders return ``(records, report)`` (:class:`Loaded`); :func:`load_shapes` also returns the
per-video world descriptions. The split helpers at the end say where each Shapes split and its frame
cache (:mod:`d2lib.world.framecache`) live.

>>> rec = {"idx": 0, "task": "tvg", "source": "demo", "video": "v.mp4", "duration": 10,
...        "tgt": [12, 4], "g": ["a red circle appears"], "q": "When?"}
>>> fixed, repairs = validate_record(rec, "demo.json")
>>> fixed["tgt"], [r.kind for r in repairs]
([4.0, 10.0], ['span_swapped', 'span_clipped'])
"""
from __future__ import annotations

import collections
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from d2lib.core import paths
from d2lib.core.spans import clip_span, order_span

__all__ = [
    "DatasetError", "DatasetFileNotFound", "Repair", "LoadReport", "Loaded", "ShapesSplit", "TaskSpec", "TASKS",
    "REQUIRED_KEYS", "validate_record", "validate_records", "repair_span", "read_json", "video_path",
    "distinct_videos", "check_videos_exist", "probe_duration", "load_records_json", "load_shapes", "SPLITS",
    "BENCHMARK_SPLITS", "check_split", "shapes_split_dir", "frame_cache_path", "records_by_task",
    "records_by_video",
]

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

    ``repairs`` counts repairs per kind (flags that change nothing, such as ``span_zero_length``,
    included); ``records_repaired`` counts records with ≥ 1 repair;
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

    A span that is zero-length as given (``start == end``) cannot be repaired — its true extent is
    unknown — and no prediction can reach an IoU threshold on it, so it is kept as it is and flagged
    with a ``span_zero_length`` entry (``before == after``) that the :class:`LoadReport` counts and
    logs. A span that clipping leaves zero-length is flagged ``span_collapsed`` instead.

    >>> repair_span([3, 8], 10, "tgt")
    ([3, 8], [])
    >>> s, r = repair_span([-2, 40.5], 30, "tgt"); s, [x.kind for x in r]
    ([0.0, 30.0], ['span_clipped'])
    >>> s, r = repair_span([40, 35], 30, "tgt"); s, [x.kind for x in r]
    ([30.0, 30.0], ['span_swapped', 'span_clipped', 'span_collapsed'])
    >>> s, r = repair_span([5, 5], 30, "tgt"); s, [str(x) for x in r]
    ([5, 5], ['span_zero_length tgt: [5, 5] -> [5, 5]'])
    """
    before = list(span)
    repairs: list[Repair] = []
    ordered, swapped = order_span(span)
    if ordered[0] == ordered[1]:
        repairs.append(Repair("span_zero_length", fld, before, before))
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
    dvc/slc spans sorted by start with their captions (``events_sorted``). A zero-length span
    (``start == end``, in ``tgt``, ``src`` or a time option) is kept and flagged ``span_zero_length``
    (see :func:`repair_span`).
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
    d2lib.world.records.DatasetError: f.json (idx 3, task dvc): empty caption g[1] = ''
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


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of a video file (``n_frames / fps``, as :func:`d2lib.world.video.probe` reads it):
    for files that do not state their videos' durations (bare names in a frame cache, Charades-STA)."""
    from d2lib.world import video  # lazy: decord is only needed when probing

    info = video.probe(path)
    d = info["duration"] if isinstance(info, Mapping) else getattr(info, "duration")
    return float(d)


# --------------------------------------------------------------------------------------------
# Loading: one JSON list of records, a Shapes split
# --------------------------------------------------------------------------------------------


def load_records_json(json_path: str | os.PathLike, report: LoadReport | None = None) -> Loaded:
    """One JSON file holding a list of records (E.T. Bench or our ``annotations.json``)."""
    p = Path(json_path)
    data = read_json(p, "annotation file")
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
    return validate_records(data, str(p), report)


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
