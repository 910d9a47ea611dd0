"""Preference pairs for FPO: rejected responses made by event-level perturbations of the GT.

Taught in lesson ``05_fpo``. D²VLM's factorized preference data keeps the
chosen response = the ground truth and builds each rejected response by corrupting *one* event, so
the cause of the error is known and labelled (no human filtering):

==================  =========  =================================================================
type                family     what changes (everything else is copied from the chosen record)
==================  =========  =================================================================
``shift``           grounding  one span moves (same length) by a fraction of its length or of
                               the video; stays inside ``[0, duration − end_margin]`` and its IoU
                               with the original (tal: with every GT span) is below ``max_iou``
``add``             grounding  one extra event: a GT-like length placed away from the GT spans
                               (IoU < ``max_iou``); dvc also gets a caption that is false for the
                               video (an object of the video doing something it never does), and
                               in a video too crowded for that placement it may overlap GT events
``drop``            grounding  one event removed (needs >= 2 events)
``merge``           grounding  two neighbouring events (in start order) become one span covering
                               both, with the caption of one of them (needs >= 2 events)
``wrong_attribute`` text       dvc: one caption gets its colour, shape or action swapped for
                               another in-vocabulary value that makes it false for the video;
                               gvq: the answer becomes another of the options (all false by
                               construction, see ``synth._gvq``)
``repeat``          text       dvc: one sentence (span + caption) is said twice in a row
==================  =========  =================================================================

Which types apply to which task (:data:`TASK_TYPES`) follows from the response templates of
:func:`d2lib.vlm.tokens.build_response` — a rejected record must render with the same layout rules:

- ``tvg``: ``shift`` only. The text is fixed by the template ("The event happens in <evi>.")
  and the caption is the query, so the only thing that can be wrong is the span; the template
  also holds exactly one event (no add/drop/merge/repeat).
- ``gvq``: ``shift`` (wrong evidence) and ``wrong_attribute`` (wrong option). One event.
- ``tal``: ``shift``, ``add``, ``drop``, ``merge``. The answer is spans only — no text to corrupt.
- ``dvc``: all six.
- ``rar`` (no grounded event in the response) is not used.

A rejected record has the chosen record's schema (same ``idx``, ``q``, ``video``, ``duration``:
the prompt is shared) with ``tgt``/``g``/``p`` changed, integer seconds when the GT's are integers,
plus ``record["perturbation"] = {family, type, event, rejected_event, detail}`` (``event``: index
of the corrupted event in the chosen record, None for ``add``; ``rejected_event``: its index in the
rejected record, None for ``drop``; ``detail``: a readable note such as ``"3 - 7 -> 12 - 16"``).

Event order: the other events keep the GT order; an added event goes where its start puts it, a
merged one takes the earlier event's place, a repeated sentence follows the original. A *shifted*
event keeps its place even when its new start is out of order, so the rejected text is exactly the
chosen text and a shift is a pure grounding error (its text log-probabilities differ only through
the evidence injected at the moved ``<evi>``). That is the factorization FPO relies on — and why
DPO, which sees the text term only, can hardly learn from shift pairs.

Everything is deterministic for a ``numpy.random.Generator`` state (or an int seed).

>>> rec = {"idx": 0, "task": "dvc", "video": "v.mp4", "duration": 30, "q": "?",
...        "tgt": [[2, 6], [10, 14]], "g": ["the red circle grows", "the blue square spins"]}
>>> rej = perturb(rec, "drop", 0)
>>> rej["tgt"], rej["g"], rej["perturbation"]["family"]
([[2, 6]], ['the red circle grows'], 'grounding')
>>> [p.type for p in make_pairs([rec], 0, {"shift": 1.0})]
['shift']
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from d2lib.core.spans import format_span, iou
from d2lib.world.synth import COLOURS, KINDS, PHRASES, SHAPES, caption as make_caption, parse_caption, phrase

TYPES: dict[str, str] = {"shift": "grounding", "add": "grounding", "drop": "grounding", "merge": "grounding",
                         "wrong_attribute": "text", "repeat": "text"}
"""Perturbation type → family."""

TASK_TYPES: dict[str, tuple[str, ...]] = {
    "tvg": ("shift",),
    "gvq": ("shift", "wrong_attribute"),
    "tal": ("shift", "add", "drop", "merge"),
    "dvc": ("shift", "add", "drop", "merge", "wrong_attribute", "repeat"),
}
"""Task → the perturbation types its response template can express (see the module docstring)."""

DEFAULT_MIX: dict[str, float] = {t: 1.0 for t in TYPES}
ATTRIBUTES = ("colour", "shape", "action")


@dataclass
class Pair:
    """One preference pair: ``chosen`` is the GT record, ``rejected`` the perturbed one."""

    chosen: dict
    rejected: dict
    family: str  # "grounding" | "text"
    type: str  # a key of TYPES
    event: int | None = None  # index of the corrupted event in ``chosen`` (None for ``add``)


# ----------------------------------------------------------------------------- record plumbing

def _flat(record: dict) -> bool:
    tgt = record.get("tgt")
    return bool(tgt) and all(isinstance(v, (int, float)) for v in tgt)


def _spans(record: dict) -> list[list]:
    """Spans as a list of ``[s, e]`` with the record's own numbers (ints stay ints)."""
    tgt = record.get("tgt") or []
    if _flat(record):
        return [list(tgt[i:i + 2]) for i in range(0, len(tgt), 2)]
    return [list(sp) for sp in tgt]


def _integer(spans: Sequence[Sequence[float]]) -> bool:
    return all(float(v).is_integer() for sp in spans for v in sp)


def _num(x: float, integer: bool):
    return int(round(x)) if integer else float(x)


def _events(record: dict) -> list[dict]:
    """``[{span, caption, src}]`` — ``caption`` only for dvc, ``src`` = index in the chosen record."""
    spans = _spans(record)
    caps = list(record.get("g") or []) if record["task"] == "dvc" else [None] * len(spans)
    if len(caps) != len(spans):
        raise ValueError(f"record {record.get('idx')}: {len(caps)} captions for {len(spans)} spans")
    return [{"span": sp, "caption": c, "src": k} for k, (sp, c) in enumerate(zip(spans, caps))]


def _key(ev: dict) -> tuple[float, float]:
    return float(ev["span"][0]), float(ev["span"][1])


def _rebuild(chosen: dict, events: list[dict], meta: dict, marker: dict | None) -> dict:
    """The rejected record: ``chosen`` with ``events`` written back in the given order;
    ``marker`` is the corrupted event (its rejected index goes into meta)."""
    rec = copy.deepcopy({k: v for k, v in chosen.items() if k != "perturbation"})
    if _flat(chosen):  # tvg/gvq: [s, e] (a flat [s1, e1, s2, e2, ...] stays flat too)
        rec["tgt"] = [v for ev in events for v in ev["span"]]
    else:
        rec["tgt"] = [list(ev["span"]) for ev in events]
    if rec["task"] == "dvc":
        rec["g"] = [ev["caption"] for ev in events]
    rejected_event = next((i for i, ev in enumerate(events) if ev is marker), None)
    rec["perturbation"] = {"family": TYPES[meta["type"]], **meta, "rejected_event": rejected_event}
    return rec


# ----------------------------------------------------------------------------- captions (dvc)

def _parse(cap: str):
    """``(colour, shape, kind, target, variant)`` of a Shapes caption, or None."""
    key = parse_caption(cap)
    if key is None:
        return None
    colour, shape, kind, target = key
    rest = cap.strip().rstrip(".").split(" ", 3)[3]
    variant = next((v for v in range(len(PHRASES[kind])) if phrase(kind, target, v) == rest), 0)
    return colour, shape, kind, target, variant


class _Facts:
    """What a dvc record says about its video (dvc lists *every* event of a Shapes video)."""

    def __init__(self, captions: Sequence[str]):
        self.keys = [k for k in (_parse(c) for c in captions) if k is not None]
        self.ok = len(self.keys) == len(captions)
        self.kinds = {(s, k) for _, s, k, _, _ in self.keys}  # (shape, kind) that happen
        self.looks: dict[str, set[str]] = {s: set() for s in SHAPES}  # colours each shape ever has
        for c, s, k, t, _ in self.keys:
            self.looks[s].add(c)
            if k == "change_colour" and t:
                self.looks[s].add(t)
        self.objects = sorted({(c, s) for c, s, _, _, _ in self.keys})

    def surely_false(self, colour: str, shape: str, kind: str) -> bool:
        """A caption is false for the video when no object of that shape does that kind of event,
        or no object of that shape ever has that colour (descriptions are unique, synth rules).
        Conservative: a caption that might describe a true event by another colour is refused."""
        if kind == "spin" and shape == "circle":  # circles never spin (implausible, not just false)
            return False
        return (shape, kind) not in self.kinds or colour not in self.looks[shape]


def _target(rng, kind: str, colour: str):
    if kind != "change_colour":
        return None
    others = [c for c in COLOURS if c != colour]
    return others[int(rng.integers(len(others)))]


# ----------------------------------------------------------------------------- span placement

def _place(rng, length: float, hi: float, ok, integer: bool, propose, tries: int = 32):
    """A span ``[s, s+length]`` inside ``[0, hi]`` with ``ok(span)``: ``propose()`` start values
    first (random), then a uniform pick among all valid integer (or 0.5 s grid) starts."""
    if length > hi:
        return None
    top = hi - length
    for _ in range(tries):
        s = min(max(propose(), 0.0), top)
        s = _num(s, integer)
        cand = [s, _num(s + length, integer)]
        if cand[1] <= hi and ok(cand):
            return cand
    step = 1.0 if integer else 0.5
    grid = [_num(i * step, integer) for i in range(int(np.floor(top / step)) + 1)]
    valid = [[s, _num(s + length, integer)] for s in grid if ok([s, _num(s + length, integer)])]
    return valid[int(rng.integers(len(valid)))] if valid else None


# ----------------------------------------------------------------------------- perturbations

def _shift(rec, evs, rng, k, *, hi, integer, max_iou, shift_len_frac, shift_video_frac, p_video):
    orig = evs[k]["span"]
    s, e = float(orig[0]), float(orig[1])
    length = e - s
    others = [ev["span"] for i, ev in enumerate(evs) if i != k] if rec["task"] == "tal" else []

    def ok(c):
        return (c[0] != s or c[1] != e) and iou(c, orig) < max_iou and all(iou(c, o) < max_iou for o in others)

    def propose():
        if rng.random() < p_video:
            mag = rng.uniform(*shift_video_frac) * float(rec["duration"])
        else:
            mag = rng.uniform(*shift_len_frac) * max(length, 1.0)
        return s + (mag if rng.integers(2) else -mag)

    new = _place(rng, length, hi, ok, integer, propose)
    if new is None:
        return None
    moved = {**evs[k], "span": new}
    out = evs[:k] + [moved] + evs[k + 1:]
    return out, moved, k, f"{format_span(orig)} -> {format_span(new)}"


def _add(rec, evs, rng, *, hi, integer, max_iou):
    cap = None
    if rec["task"] == "dvc":
        facts = _Facts([ev["caption"] for ev in evs])
        if not facts.ok:
            return None
        cands = [(c, s, kind) for c, s in facts.objects for kind in KINDS if facts.surely_false(c, s, kind)]
        if not cands:
            return None
        c, s, kind = cands[int(rng.integers(len(cands)))]
        cap = make_caption(f"{c} {s}", kind, _target(rng, kind, c), int(rng.integers(len(PHRASES[kind]))))
    lengths = [float(ev["span"][1]) - float(ev["span"][0]) for ev in evs]
    length = lengths[int(rng.integers(len(lengths)))]
    gts = [ev["span"] for ev in evs]
    propose = lambda: rng.uniform(0.0, max(hi - length, 0.0))  # noqa: E731
    new = _place(rng, length, hi, lambda c: all(iou(c, g) < max_iou for g in gts), integer, propose)
    if new is None and cap is not None:  # a crowded video: a dvc event is wrong by its caption anyway
        new = _place(rng, length, hi, lambda c: True, integer, propose)
    if new is None:
        return None
    added = {"span": new, "caption": cap, "src": None}
    at = next((i for i, ev in enumerate(evs) if _key(ev) > _key(added)), len(evs))  # where its start puts it
    return evs[:at] + [added] + evs[at:], added, None, f"+ {format_span(new)}" + (f", {cap}" if cap else "")


def _drop(evs, rng):
    if len(evs) < 2:
        return None
    k = int(rng.integers(len(evs)))
    gone = evs[k]
    detail = f"- {format_span(gone['span'])}" + (f", {gone['caption']}" if gone["caption"] else "")
    return evs[:k] + evs[k + 1:], None, k, detail


def _merge(evs, rng):
    order = sorted(range(len(evs)), key=lambda i: _key(evs[i]))
    pairs = []
    for a, b in zip(order, order[1:]):
        sa, sb = evs[a]["span"], evs[b]["span"]
        m = [min(sa[0], sb[0]), max(sa[1], sb[1])]
        if m != list(sa) and m != list(sb):  # a span inside the other would just be a drop
            pairs.append((a, b, m))
    if not pairs:
        return None
    a, b, m = pairs[int(rng.integers(len(pairs)))]
    keep = (a, b)[int(rng.integers(2))]
    merged = {"span": m, "caption": evs[keep]["caption"], "src": keep}
    first, second = min(a, b), max(a, b)  # the merged event takes the earlier one's place
    out = evs[:first] + [merged] + evs[first + 1:second] + evs[second + 1:]
    detail = f"{format_span(evs[a]['span'])} + {format_span(evs[b]['span'])} -> {format_span(m)}"
    return out, merged, min(a, b), detail


def _swap_caption(key, facts: _Facts, rng, others: set[str]):
    """A false, in-vocabulary variant of one caption: one attribute swapped. ``(caption, what)``."""
    colour, shape, kind, target, variant = key
    options: dict[str, list] = {"colour": [], "shape": [], "action": []}
    for c in COLOURS:
        if c != colour and facts.surely_false(c, shape, kind) and not (kind == "change_colour" and c == target):
            options["colour"].append((c, shape, kind, target))
    for s in SHAPES:
        if s != shape and facts.surely_false(colour, s, kind):
            options["shape"].append((colour, s, kind, target))
    for k2 in KINDS:
        if k2 != kind and facts.surely_false(colour, shape, k2):
            options["action"].append((colour, shape, k2, None))
    attrs = [a for a in ATTRIBUTES if options[a]]
    while attrs:
        attr = attrs.pop(int(rng.integers(len(attrs))))
        c, s, k2, t = options[attr][int(rng.integers(len(options[attr])))]
        if attr == "action":
            t = _target(rng, k2, c)
        v = variant if variant < len(PHRASES[k2]) else 0  # keep the paraphrase when it exists
        new = make_caption(f"{c} {s}", k2, t, v)
        if new not in others:
            was = {"colour": colour, "shape": shape, "action": kind}[attr]
            now = {"colour": c, "shape": s, "action": k2}[attr]
            return new, f"{attr}: {was} -> {now}"
    return None


def _wrong_attribute(rec, evs, rng):
    if rec["task"] == "gvq":
        p = int(rec["p"])
        opts = [str(o).strip().rstrip(".").strip() for o in rec["o"]]
        wrong = [i for i in range(len(opts)) if opts[i] != opts[p]]
        if not wrong:
            return None
        return "gvq", wrong[int(rng.integers(len(wrong)))]
    facts = _Facts([ev["caption"] for ev in evs])
    if not facts.ok:
        return None
    order = list(rng.permutation(len(evs)))
    for k in order:
        k = int(k)
        got = _swap_caption(_parse(evs[k]["caption"]), facts, rng, {ev["caption"] for ev in evs})
        if got is not None:
            new = {**evs[k], "caption": got[0]}
            return evs[:k] + [new] + evs[k + 1:], new, k, f"{got[1]} ({evs[k]['caption']!r} -> {got[0]!r})"
    return None


def _repeat(evs, rng):
    k = int(rng.integers(len(evs)))
    copy_ = {**evs[k], "span": list(evs[k]["span"])}
    return evs[:k + 1] + [copy_] + evs[k + 1:], copy_, k, f"repeat {format_span(evs[k]['span'])}, {evs[k]['caption']}"


# ----------------------------------------------------------------------------- public API

def applicable_types(record: dict) -> tuple[str, ...]:
    """The types that can corrupt ``record`` (task template and event count; a type may still find
    no valid placement for an unusual record — :func:`perturb` then returns None)."""
    types = TASK_TYPES.get(record.get("task"), ())
    n = len(_spans(record))
    return tuple(t for t in types if n >= 1 and not (t in ("drop", "merge") and n < 2))


def perturb(record: dict, type: str, rng: np.random.Generator | int, *,
            shift_len_frac: tuple[float, float] = (1.0, 2.5),
            shift_video_frac: tuple[float, float] = (0.15, 0.5),
            p_video: float = 0.5,
            max_iou: float = 0.3,
            end_margin: float = 1.0) -> dict | None:
    """A rejected record: ``record`` corrupted by one perturbation of ``type``, or None when that
    type finds nothing to corrupt (too few events, no room to move a span, unparsable captions).

    Knobs: ``shift`` moves a span by ``shift_len_frac`` × its length (min 1 s) or, with probability
    ``p_video``, by ``shift_video_frac`` × the duration; moved/added spans keep IoU < ``max_iou``
    with the original (tal: with every GT span) and stay inside ``[0, duration − end_margin]``
    (``end_margin = 1``: every endpoint is a decoded 1-fps frame, as in the Shapes world).
    Raises ``ValueError`` for an unknown type or one the task's template cannot express."""
    if type not in TYPES:
        raise ValueError(f"unknown perturbation type {type!r} (known: {', '.join(TYPES)})")
    task = record.get("task")
    if type not in TASK_TYPES.get(task, ()):
        raise ValueError(f"perturbation {type!r} does not apply to task {task!r} (see TASK_TYPES)")
    if not 0.0 < max_iou <= 1.0:
        raise ValueError(f"max_iou must be in (0, 1], got {max_iou}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    evs = _events(record)
    if not evs:
        return None
    hi = float(record["duration"]) - end_margin
    integer = _integer([ev["span"] for ev in evs])
    place = {"hi": hi, "integer": integer, "max_iou": max_iou}
    if type == "shift":
        got = _shift(record, evs, rng, int(rng.integers(len(evs))), shift_len_frac=shift_len_frac,
                     shift_video_frac=shift_video_frac, p_video=p_video, **place)
    elif type == "add":
        got = _add(record, evs, rng, **place)
    elif type == "drop":
        got = _drop(evs, rng)
    elif type == "merge":
        got = _merge(evs, rng) if len(evs) >= 2 else None
    elif type == "wrong_attribute":
        got = _wrong_attribute(record, evs, rng)
        if got is not None and got[0] == "gvq":
            p_old, p_new = int(record["p"]), got[1]
            rej = _rebuild(record, evs, {"type": type, "event": 0, "detail": f"option {p_old} -> {p_new}"}, evs[0])
            rej["p"] = p_new
            return rej
    else:  # repeat
        got = _repeat(evs, rng)
    if got is None:
        return None
    new_evs, marker, event, detail = got
    return _rebuild(record, new_evs, {"type": type, "event": event, "detail": detail}, marker)


def make_pairs(records: Sequence[dict], rng: np.random.Generator | int,
               mix: Mapping[str, float] | None = None, *, per_record: int = 1, **knobs) -> list[Pair]:
    """Preference pairs for every record of a task in :data:`TASK_TYPES` (others are skipped).

    For each record, ``per_record`` distinct types are drawn with probabilities ∝ ``mix[type]``
    among the types that apply to it (:func:`applicable_types`); a type that finds nothing to
    corrupt is replaced by another draw. ``mix`` defaults to equal weights (:data:`DEFAULT_MIX`);
    a type missing from ``mix`` or with weight 0 is never used. The paper uses one rejected
    response per sample (``per_record = 1``). ``knobs`` go to :func:`perturb`.
    Deterministic for a seed: the same ``records``, ``rng`` state and ``mix`` give the same pairs.
    """
    mix = dict(DEFAULT_MIX if mix is None else mix)
    bad = [t for t in mix if t not in TYPES]
    if bad:
        raise ValueError(f"unknown perturbation types in mix: {bad} (known: {', '.join(TYPES)})")
    if any(w < 0 or not np.isfinite(w) for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix weights must be finite, >= 0 and not all 0, got {mix}")
    if per_record < 1:
        raise ValueError(f"per_record must be >= 1, got {per_record}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pairs = []
    for rec in records:
        types = [t for t in applicable_types(rec) if mix.get(t, 0.0) > 0]
        made = 0
        while types and made < per_record:
            w = np.array([mix[t] for t in types], dtype=float)
            t = types.pop(int(rng.choice(len(types), p=w / w.sum())))
            rej = perturb(rec, t, rng, **knobs)
            if rej is not None:
                pairs.append(Pair(rec, rej, TYPES[t], t, rej["perturbation"]["event"]))
                made += 1
    return pairs


def type_counts(pairs: Sequence[Pair]) -> dict[str, int]:
    """How many pairs of each type (for logs and the lesson)."""
    out: dict[str, int] = {}
    for p in pairs:
        out[p.type] = out.get(p.type, 0) + 1
    return out
