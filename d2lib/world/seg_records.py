"""Records of the pixel-grounding tasks: referring segmentation, spatio-temporal grounding, grounded captions.

Part of lesson 09, pixel grounding. The three tasks answer with ``<seg>`` masks; their records use the
E.T. Bench schema of :mod:`d2lib.world.records` (``idx, task, source, video, duration, q``, spans ``tgt``
in seconds, captions ``g``) plus an object id wherever a mask is the answer. Masks are never stored
in a record: a record names the object, and the answer is that object's masks in its ``video``
(:func:`d2lib.world.masks.video_masks` / the mask cache, ``masks[obj]``), restricted to the frames the task
grounds (:func:`answer_masks`).

* ``rvos`` — referring video object segmentation (Ref-YouTube-VOS style). ``g = [expression]``
  ("the red circle"), ``obj``: the object it names; the answer is its mask in **every** frame (empty
  where it is invisible). Object descriptions are unique for the whole video (the world never gives
  two objects of one shape the same colour), so the colour an object starts with names it throughout.
* ``stg`` — spatio-temporal video grounding (VidSTG style). ``g = [caption]`` of one event,
  ``tgt = [start, end]`` its span, ``obj`` its actor; the answer is the span and the actor's masks at
  the frames inside it. A declarative query quotes the caption; an interrogative one ("Which shape
  rises?") is added for events whose action is done by no other object. Inside an ``appear`` /
  ``disappear`` span the actor is faded, so some of its masks there are empty (unlike VidSTG's tubes).
* ``gcap`` — grounded captions (GLaMM's GCG, per event). ``tgt`` / ``g``: the events and their captions,
  aligned and sorted as in ``dvc``; ``refs[i]``: the object phrases of caption ``g[i]``, each
  ``{"phrase": "the red circle", "obj": 0}``; a phrase's answer is its object's masks inside ``tgt[i]``.

Validation (:func:`validate_seg_record`, :func:`validate_seg_records`) is strict — nothing is repaired:
an unknown task or key, a missing field, an object id out of range, a span outside the video or
reversed, captions not aligned with spans, a phrase that is not in its caption all raise
:class:`d2lib.world.records.DatasetError` (a ``ValueError``) naming the file/record and the problem.

>>> from d2lib.world import synth
>>> recs = make_seg_records(synth.sample_video(3, synth.WorldConfig()), "videos/demo.mp4")
>>> sorted({r["task"] for r in recs}), all(validate_seg_record(r, "demo") for r in recs)
(['gcap', 'rvos', 'stg'], True)
>>> validate_seg_record({**recs[0], "obj": 7}, "demo.json", n_objects=2)
Traceback (most recent call last):
...
d2lib.world.records.DatasetError: demo.json (idx 0, task rvos): 'obj' = 7 is out of range: the video has 2 objects (ids 0..1)
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from d2lib.world import synth
from d2lib.world.records import REQUIRED_KEYS, DatasetError, _fail, _is_int, _is_number, _is_span, _nonempty_text, _plain
from d2lib.world.synth import FMT, VideoSpec

__all__ = [
    "SEG", "SEG_TASKS", "Q_RVOS", "Q_STG", "Q_STG_WHICH", "Q_GCAP", "make_seg_records", "validate_seg_record",
    "validate_seg_records", "answer_masks", "vocabulary",
]

SEG = "<seg>"  # the answer token that decodes to a mask
ANSWER_SEG = f"It is {SEG}."
Q_RVOS = "Segment {expression} in every frame of the video. Answer in the format '" + ANSWER_SEG + "'"
_STG_FORMAT = "Answer in the format 'The event happens in <start> - <end>. " + ANSWER_SEG + "', " + FMT
Q_STG = ("Find the moment in the video when {caption}, and segment the shape that does it in every frame of "
         "that moment. " + _STG_FORMAT)
Q_STG_WHICH = ("{question} Find the moment in the video when it happens, and segment that shape in every frame "
               "of the moment. " + _STG_FORMAT)
Q_GCAP = ("Find every event in the video and describe it, writing " + SEG + " after each shape you name. "
          "Answer in the format '<start> - <end>, <event>. <start> - <end>, <event>.', " + FMT)

# task -> the fields it requires beyond REQUIRED_KEYS (and allows: besides these, only "a")
SEG_TASKS: dict[str, tuple[str, ...]] = {
    "rvos": ("g", "obj"),
    "stg": ("tgt", "g", "obj"),
    "gcap": ("tgt", "g", "refs"),
}
OPTIONAL_KEYS = ("a",)  # the model's answer, added at inference


# ----------------------------------------------------------------------------------------- builders

def _describe(spec: VideoSpec, oid: int) -> str:
    """'the red circle': the object's description with the colour it starts with."""
    o = spec.object(oid)
    return f"the {o.colour} {o.shape}"


def _caption(spec: VideoSpec, e: synth.EventSpec) -> str:
    return e.caption or synth.caption(spec.describe(e.object, e.start), e.kind, e.target)


def make_seg_records(spec: VideoSpec, video_rel: str, start_idx: int = 0) -> list[dict]:
    """The ``rvos``, ``stg`` and ``gcap`` records of one video; ``idx`` runs from ``start_idx``.

    One ``rvos`` record per object (in ``spec.objects`` order), one declarative ``stg`` record per
    event plus an interrogative one for each event whose ``(action, target)`` no other event shares,
    one ``gcap`` record. Deterministic: a pure function of the spec (paraphrases are drawn from a
    generator seeded by the spec's content).
    """
    rng = synth._spec_rng(spec, 3)  # streams 1 (pixel noise) and 2 (make_records) are taken
    evs = sorted(spec.events, key=lambda e: (e.start, e.end, e.object))
    out: list[dict] = []

    def add(task: str, **fields) -> None:
        out.append({"idx": start_idx + len(out), "task": task, "source": "shapes", "video": video_rel,
                    "duration": spec.duration, **fields})

    for o in spec.objects:
        expr = _describe(spec, o.id)
        add("rvos", g=[expr], obj=o.id, q=Q_RVOS.format(expression=expr))
    sig = [(e.kind, e.target) for e in evs]
    for e in evs:
        cap = _caption(spec, e)
        add("stg", tgt=[e.start, e.end], g=[cap], obj=e.object, q=Q_STG.format(caption=cap))
    for e, s in zip(evs, sig):
        if sig.count(s) == 1:
            vp = synth.phrase(e.kind, e.target, int(rng.integers(len(synth.PHRASES[e.kind]))))
            question = synth.GVQ_WHICH.format(phrase=vp)
            add("stg", tgt=[e.start, e.end], g=[_caption(spec, e)], obj=e.object,
                q=Q_STG_WHICH.format(question=question))
    if evs:
        refs = [[{"phrase": f"the {spec.describe(e.object, e.start)}", "obj": e.object}] for e in evs]
        add("gcap", tgt=[[e.start, e.end] for e in evs], g=[_caption(spec, e) for e in evs], refs=refs, q=Q_GCAP)
    return out


# ----------------------------------------------------------------------------------------- validation

def _check_obj(x: Any, fld: str, n_objects: int | None, where: str, rec: Mapping) -> None:
    if not _is_int(x):
        raise _fail(where, rec, f"'{fld}' must be an integer object id, got {x!r}")
    if x < 0 or (n_objects is not None and x >= n_objects):
        have = f"the video has {n_objects} objects (ids 0..{n_objects - 1})" if n_objects else "ids start at 0"
        raise _fail(where, rec, f"'{fld}' = {x} is out of range: {have}")


def _check_span(x: Any, fld: str, duration: float, where: str, rec: Mapping) -> None:
    if not _is_span(x):
        raise _fail(where, rec, f"'{fld}' must be one [start, end] pair of numbers, got {x!r}")
    s, e = x
    if s > e:
        raise _fail(where, rec, f"'{fld}' = {list(x)} is reversed (start > end)")
    if s < 0 or e > duration:
        raise _fail(where, rec, f"'{fld}' = {list(x)} lies outside the video [0, {duration}]")


def _check_captions(g: Any, n: int | None, where: str, rec: Mapping) -> None:
    if not isinstance(g, list) or not g:
        raise _fail(where, rec, f"'g' must be a non-empty list of captions, got {g!r}")
    for i, c in enumerate(g):
        if not _nonempty_text(c):
            raise _fail(where, rec, f"empty caption g[{i}] = {c!r}")
    if n is not None and len(g) != n:
        raise _fail(where, rec, f"len(g) = {len(g)} but expected {n}")


def validate_seg_record(rec: Mapping, where: str, n_objects: int | None = None) -> dict:
    """Check one ``rvos`` / ``stg`` / ``gcap`` record; return a plain-JSON copy (nothing is repaired).

    ``n_objects``: how many objects the record's video has (object ids must be below it); without it
    ids need only be integers >= 0. Raises :class:`d2lib.world.records.DatasetError` naming ``where``, the
    record's idx and task, and the problem.

    >>> r = {"idx": 4, "task": "stg", "source": "shapes", "video": "v.mp4", "duration": 20, "q": "?",
    ...      "tgt": [9, 3], "g": ["the red circle rises"], "obj": 0}
    >>> validate_seg_record(r, "seg.json")
    Traceback (most recent call last):
    ...
    d2lib.world.records.DatasetError: seg.json (idx 4, task stg): 'tgt' = [9, 3] is reversed (start > end)
    """
    if not isinstance(rec, Mapping):
        raise DatasetError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    rec = _plain(rec)
    if "task" not in rec:
        raise _fail(where, rec, "missing required key 'task'")
    task = rec["task"]
    if task not in SEG_TASKS:
        raise _fail(where, rec, f"unknown task {task!r} (pixel-grounding tasks: {', '.join(SEG_TASKS)})")
    for k in (*REQUIRED_KEYS, *SEG_TASKS[task]):
        if k not in rec:
            raise _fail(where, rec, f"missing required key '{k}'")
    extra = sorted(set(rec) - set(REQUIRED_KEYS) - set(SEG_TASKS[task]) - set(OPTIONAL_KEYS))
    if extra:
        raise _fail(where, rec, f"unexpected key(s) {', '.join(map(repr, extra))} for task {task}")
    if not _is_int(rec["idx"]):
        raise _fail(where, rec, f"'idx' must be an integer, got {rec['idx']!r}")
    for k in ("source", "video", "q"):
        if not _nonempty_text(rec[k]):
            raise _fail(where, rec, f"'{k}' must be a non-empty string, got {rec[k]!r}")
    duration = rec["duration"]
    if not _is_number(duration) or duration <= 0:
        raise _fail(where, rec, f"'duration' must be a positive number of seconds, got {duration!r}")
    if rec.get("a") is not None and not isinstance(rec["a"], str):
        raise _fail(where, rec, f"'a' (model answer) must be a string, got {rec['a']!r}")
    if n_objects is not None and (not _is_int(n_objects) or n_objects < 1):
        raise ValueError(f"{where}: n_objects must be an integer >= 1, got {n_objects!r}")

    if task == "rvos":
        _check_captions(rec["g"], 1, where, rec)
        _check_obj(rec["obj"], "obj", n_objects, where, rec)
    elif task == "stg":
        _check_span(rec["tgt"], "tgt", duration, where, rec)
        _check_captions(rec["g"], 1, where, rec)
        _check_obj(rec["obj"], "obj", n_objects, where, rec)
    else:  # gcap
        tgt = rec["tgt"]
        if not isinstance(tgt, list) or not tgt:
            raise _fail(where, rec, f"'tgt' must be a non-empty list of [start, end] spans, got {tgt!r}")
        for i, s in enumerate(tgt):
            _check_span(s, f"tgt[{i}]", duration, where, rec)
        if any(tuple(a) > tuple(b) for a, b in zip(tgt, tgt[1:])):
            raise _fail(where, rec, "'tgt' spans are not sorted by (start, end)")
        _check_captions(rec["g"], len(tgt), where, rec)
        refs = rec["refs"]
        if not isinstance(refs, list) or len(refs) != len(tgt):
            raise _fail(where, rec, f"'refs' must be a list with one entry per caption ({len(tgt)}), got {refs!r}")
        for i, (caption, phrases) in enumerate(zip(rec["g"], refs)):
            if not isinstance(phrases, list) or not phrases:
                raise _fail(where, rec, f"refs[{i}] must be a non-empty list of {{phrase, obj}}, got {phrases!r}")
            for j, ref in enumerate(phrases):
                fld = f"refs[{i}][{j}]"
                if not isinstance(ref, dict) or set(ref) != {"phrase", "obj"}:
                    raise _fail(where, rec, f"{fld} must be {{'phrase': str, 'obj': int}}, got {ref!r}")
                if not _nonempty_text(ref["phrase"]):
                    raise _fail(where, rec, f"{fld}: empty phrase {ref['phrase']!r}")
                if ref["phrase"] not in caption:
                    raise _fail(where, rec, f"{fld}: phrase {ref['phrase']!r} is not in caption g[{i}] = {caption!r}")
                _check_obj(ref["obj"], f"{fld}.obj", n_objects, where, rec)
    return rec


def validate_seg_records(records: Iterable[Any], where: str, metas: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Validate a list of records (:func:`validate_seg_record`); duplicate ``(task, source, idx)`` is an
    error. ``metas``: ``{video: meta.json entry}`` (as :func:`d2lib.world.records.load_shapes` returns them):
    every record's video must have one, with the record's duration, and object ids are checked against
    its objects."""
    out, seen = [], {}
    for i, rec in enumerate(records):
        w = f"{where} [{i}]"
        n_objects = None
        if metas is not None and isinstance(rec, Mapping) and "video" in rec:
            m = metas.get(rec["video"])
            if m is None:
                raise _fail(w, rec, f"video {rec['video']!r} has no world description (meta.json entry)")
            if _is_number(rec.get("duration")) and not math.isclose(float(m["duration"]), float(rec["duration"]),
                                                                      abs_tol=1e-6):
                raise _fail(w, rec, f"duration {rec['duration']} differs from the video's {m['duration']}")
            n_objects = len(m["objects"])
        fixed = validate_seg_record(rec, w, n_objects)
        key = (fixed["task"], fixed["source"], fixed["idx"])
        if key in seen:
            raise _fail(w, fixed, f"duplicate (task, source, idx) = {key}; first seen at {seen[key]}")
        seen[key] = w
        out.append(fixed)
    return out


# ----------------------------------------------------------------------------------------- answers

def _frames_in(times: np.ndarray, span: Sequence[float] | None) -> np.ndarray:
    if span is None:
        return np.arange(len(times))
    return np.flatnonzero((times >= span[0]) & (times <= span[1]))


def answer_masks(rec: Mapping, masks: np.ndarray, times: Sequence[float]) -> list[dict]:
    """The ground-truth masks a record asks for, from its video's masks.

    ``masks``: ``bool (n_objects, T, S, S)`` and ``times``: ``(T,)`` seconds of the video's decoded
    frames (:func:`d2lib.world.masks.video_masks`, or a mask-cache entry). Returns one item per grounded
    object — one for ``rvos`` and ``stg``, one per phrase for ``gcap`` — as ``{"phrase", "obj",
    "frames", "masks"}``: ``frames`` the indices of the frames inside the grounded span (every frame for
    ``rvos``; ends included), ``masks`` of shape ``(len(frames), S, S)``.

    >>> m = np.zeros((2, 4, 8, 8), bool); m[1, 2, 3, 3] = True
    >>> rec = {"task": "stg", "tgt": [1, 2], "g": ["the red circle rises"], "obj": 1}
    >>> [(a["obj"], a["frames"].tolist(), int(a["masks"].sum())) for a in answer_masks(rec, m, [0, 1, 2, 3])]
    [(1, [1, 2], 1)]
    """
    masks = np.asarray(masks)
    times = np.asarray(times, dtype=np.float64)
    if masks.ndim != 4 or masks.shape[1] != len(times):
        raise ValueError(f"masks must be (n_objects, T, S, S) with T = len(times) = {len(times)}, got {masks.shape}")

    def item(phrase: str, obj: int, span) -> dict:
        if not 0 <= obj < len(masks):
            raise ValueError(f"{rec.get('video', 'record')} (idx {rec.get('idx', '?')}): object {obj} is not "
                             f"among the video's {len(masks)} objects")
        frames = _frames_in(times, span)
        return {"phrase": phrase, "obj": obj, "frames": frames, "masks": masks[obj, frames]}

    task = rec["task"]
    if task == "rvos":
        return [item(rec["g"][0], rec["obj"], None)]
    if task == "stg":
        return [item(rec["g"][0], rec["obj"], rec["tgt"])]
    if task == "gcap":
        return [item(ref["phrase"], ref["obj"], span) for span, refs in zip(rec["tgt"], rec["refs"]) for ref in refs]
    raise ValueError(f"unknown task {task!r} (pixel-grounding tasks: {', '.join(SEG_TASKS)})")


def vocabulary(cfg: synth.WorldConfig | None = None) -> list[str]:
    """:func:`d2lib.world.synth.vocabulary` plus every token of the pixel-grounding prompts (same split,
    :func:`d2lib.world.synth.tokenize`; ``<seg>`` is ``<``, ``seg``, ``>``); sorted."""
    import re

    texts = [Q_RVOS, Q_STG, Q_STG_WHICH, Q_GCAP, ANSWER_SEG]
    words = {w for t in texts for w in synth.tokenize(re.sub(r"\{\w+\}", " ", t))}
    return sorted(set(synth.vocabulary(cfg)) | words)
