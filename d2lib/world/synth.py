"""The Shapes world: procedural videos with exact event spans, rendered to real H.264 files.

Taught in lesson ``01_video_data``. A video is a :class:`VideoSpec`: 1–3 objects
(shape × colour) and 2–6 events with integer ``[start, end]`` seconds. It is rendered with numpy
at ``world.render_fps`` / ``world.render_size``, encoded with libx264 (byte-identical for a seed on
one ffmpeg build), and turned into E.T. Bench records for the tasks tvg, dvc, rar, gvq and tal
(docs/CONTRACTS.md).

World rules (they keep every question answerable):
- Each object does one thing at a time; events of different objects may overlap.
- An object does each kind of event at most once, so every caption names exactly one event.
- Descriptions are unique: two objects of one shape never share a colour, ever (colour changes
  included), so "the red circle" names one object at any time.
- ``appear`` is an object's first event (it is invisible before), ``disappear`` its last.
- Circles do not spin (it would be invisible). Event ends are ``<= duration - 1`` so every span
  endpoint is a decoded frame at 1 fps (frame ``t`` = second ``t``).
- A *distractor* is an extra event with the same action as the one just planned but another
  object ("the blue circle slides left" next to "the red circle slides left").

Seeds: video ``k`` of a split rendered with base seed ``S`` uses ``np.random.default_rng(S + k)``
and stores ``S + k`` in meta.json. The benchmark uses ``S = benchmark.seed`` for val and
``benchmark.seed + SPLIT_STRIDE`` for test; ``benchmark.seed >= TRAIN_SEED_LIMIT`` (1,000,000)
and training seeds (``S + k``) stay below ``TRAIN_SEED_LIMIT``, so no two splits share a video.

>>> spec = sample_video(0, WorldConfig())
>>> 16 <= spec.duration <= 64 and 2 <= len(spec.events) <= 6
True
>>> all(0 <= e.start < e.end <= spec.duration - 1 for e in spec.events)
True
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2lib.core import config, io
from d2lib.core.spans import format_span

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 50, 50), "green": (40, 190, 70), "blue": (50, 100, 235), "yellow": (235, 210, 40)}
BACKGROUND = (28, 28, 32)
KINDS = ("appear", "disappear", "move_left", "move_right", "move_up", "move_down",
         "change_colour", "grow", "shrink", "spin")
MOVES = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}  # y is down

# Paraphrases of each event as a verb phrase; a caption is "the {colour} {shape} {phrase}".
PHRASES = {
    "appear": ("appears", "shows up", "fades in"),
    "disappear": ("disappears", "vanishes", "fades out"),
    "move_left": ("moves to the left", "slides to the left", "moves left"),
    "move_right": ("moves to the right", "slides to the right", "moves right"),
    "move_up": ("moves up", "slides upward", "rises"),
    "move_down": ("moves down", "slides downward", "sinks"),
    "change_colour": ("turns {target}", "changes colour to {target}", "becomes {target}"),
    "grow": ("grows", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "contracts"),
    "spin": ("spins", "rotates", "spins around"),
}
# Action names for tal ("Find every moment when a shape is {name}").
ACTION_NAMES = {
    "appear": "appearing", "disappear": "disappearing", "move_left": "moving to the left",
    "move_right": "moving to the right", "move_up": "moving up", "move_down": "moving down",
    "change_colour": "changing colour", "grow": "growing", "shrink": "shrinking", "spin": "spinning",
}
LETTERS = "ABCD"

# Prompts (E.T. Bench style: the question, then the answer format).
FMT = "with times in seconds."
Q_TVG = "Find the moment in the video when {caption}. Answer in the format 'The event happens in <start> - <end>', " + FMT
Q_DVC = ("Find every event in the video and describe it. Answer in the format "
         "'<start> - <end>, <event>. <start> - <end>, <event>.', " + FMT)
Q_TAL = ("Find every moment when a shape is {action}. Answer in the format "
         "'<start> - <end>, <start> - <end>', " + FMT)
Q_RAR = ("What happens in the video during {span} seconds? Options: {options}. "
         "Answer with the best option in the format '(<letter>) <option>.'")
Q_GVQ = ("{question} Options: {options}. Answer with the best option and its evidence in the format "
         "'(<letter>) <option>. The evidence is in <start> - <end>.', " + FMT)
GVQ_WHICH = "Which shape {phrase}?"
GVQ_COLOUR = "What colour is the {shape} that {phrase}?"
GVQ_WHAT = ("What does the {obj} do?", "What does the {obj} do first?", "What does the {obj} do last?")
RESPONSES = ("The event happens in 0 - 1.", "(A) x. The evidence is in 0 - 1.", "0 - 1, x. 0 - 1, x.")

# Geometry, as fractions of the frame side. A shape's size is its "radius" r; polygons are drawn
# with apothem APOTHEM[shape] * r and reach out to CIRCUM[shape] * r.
APOTHEM = {"circle": 1.0, "square": 0.85, "triangle": 0.62}
CIRCUM = {"circle": 1.0, "square": 0.85 * 2 ** 0.5, "triangle": 1.24}
SCALE_RANGE = (0.7, 1.6)  # size relative to world.object_size over a whole video
MOVE_RANGE = (0.2, 0.35)  # distance of one move
GROW_RANGE = (1.4, 1.7)  # factor of one grow / shrink
SPIN_SPEED = 45.0  # degrees per second (not a multiple of 90 or 120, so spinning shows at 1 fps)

TRAIN_SEED_LIMIT = 1_000_000  # training videos use seeds below this; the benchmark at or above it
SPLIT_STRIDE = 100_000  # test seeds start this far after val seeds


# ----------------------------------------------------------------------------- params

@dataclass(frozen=True)
class WorldConfig:
    """params.yaml section ``world``: how Shapes videos look and how hard they are."""

    render_fps: int = 4
    render_size: int = 64  # pixels, square; even (yuv420p)
    min_duration: int = 16  # seconds
    max_duration: int = 64
    min_objects: int = 1
    max_objects: int = 3
    min_events: int = 2
    max_events: int = 6
    min_event_len: int = 2  # seconds
    max_event_len: int = 8
    distractor_rate: float = 0.5  # P(an event gets a same-action event on another object)
    noise: float = 2.0  # std of Gaussian pixel noise, 0-255 scale
    object_size: float = 0.11  # base radius, fraction of the frame side
    crf: int = 23  # libx264 quality (0 lossless .. 51 worst)

    def __post_init__(self):
        c = config.check
        c(1 <= self.render_fps <= 60, "world.render_fps", f"must be in [1, 60], got {self.render_fps}")
        c(16 <= self.render_size <= 1024 and self.render_size % 2 == 0, "world.render_size",
          f"must be even and in [16, 1024], got {self.render_size}")
        c(4 <= self.min_duration <= self.max_duration, "world.min_duration",
          f"need 4 <= min_duration <= max_duration, got {self.min_duration}, {self.max_duration}")
        c(1 <= self.min_objects <= self.max_objects <= 6, "world.max_objects",
          f"need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}, {self.max_objects}")
        c(1 <= self.min_events <= self.max_events <= 9, "world.max_events",
          f"need 1 <= min_events <= max_events <= 9, got {self.min_events}, {self.max_events}")
        c(1 <= self.min_event_len <= self.max_event_len, "world.min_event_len",
          f"need 1 <= min_event_len <= max_event_len, got {self.min_event_len}, {self.max_event_len}")
        c(self.max_events * self.min_event_len <= self.min_duration - 1, "world.max_events",
          f"{self.max_events} events of >= {self.min_event_len} s must fit in the shortest video "
          f"({self.min_duration} s, events end by second {self.min_duration - 1})")
        c(0.0 <= self.distractor_rate <= 1.0, "world.distractor_rate", f"must be in [0, 1], got {self.distractor_rate}")
        c(0.0 <= self.noise <= 64.0, "world.noise", f"must be in [0, 64], got {self.noise}")
        c(0.02 <= self.object_size <= 0.15, "world.object_size", f"must be in [0.02, 0.15], got {self.object_size}")
        c(0 <= self.crf <= 51, "world.crf", f"must be in [0, 51], got {self.crf}")


@dataclass(frozen=True)
class BenchmarkConfig:
    """params.yaml section ``benchmark``: the seeded val/test videos tracked by ``data.dvc``."""

    seed: int = TRAIN_SEED_LIMIT
    n_val: int = 48
    n_test: int = 96

    def __post_init__(self):
        config.check(self.seed >= TRAIN_SEED_LIMIT, "benchmark.seed",
                     f"must be >= {TRAIN_SEED_LIMIT} (training seeds live below), got {self.seed}")
        for key in ("n_val", "n_test"):
            n = getattr(self, key)
            config.check(0 <= n <= SPLIT_STRIDE, f"benchmark.{key}", f"must be in [0, {SPLIT_STRIDE}], got {n}")


def split_seed(bench: BenchmarkConfig, split: str) -> int:
    """Base seed of a benchmark split (video ``k`` uses ``base + k``).

    >>> split_seed(BenchmarkConfig(), "val"), split_seed(BenchmarkConfig(), "test")
    (1000000, 1100000)
    """
    return {"val": bench.seed, "test": bench.seed + SPLIT_STRIDE}[split]


# ----------------------------------------------------------------------------- the world

@dataclass(frozen=True)
class ObjectSpec:
    id: int
    shape: str
    colour: str  # colour at t = 0
    x: float  # centre at t = 0, fraction of the frame width (0 = left)
    y: float  # fraction of the frame height (0 = top)
    size: float  # radius at t = 0, fraction of the frame side
    angle: float = 0.0  # degrees at t = 0


@dataclass(frozen=True)
class EventSpec:
    kind: str  # one of KINDS
    object: int  # ObjectSpec.id
    start: int  # seconds
    end: int
    caption: str
    distractor: bool = False
    target: str | None = None  # the new colour of change_colour
    amount: float = 0.0  # move: distance (frame fraction); grow/shrink: factor > 1; spin: degrees


@dataclass(frozen=True)
class VideoSpec:
    duration: int  # seconds; the video has duration * render_fps frames
    objects: tuple[ObjectSpec, ...]
    events: tuple[EventSpec, ...]  # sorted by (start, end, object)
    seed: int | None = None

    def to_meta(self, video: str) -> dict:
        """The meta.json entry (docs/CONTRACTS.md) — enough to re-render the video."""
        return {"video": video, "duration": self.duration, "seed": self.seed,
                "objects": [dataclasses.asdict(o) for o in self.objects],
                "events": [dataclasses.asdict(e) for e in self.events]}

    @classmethod
    def from_meta(cls, meta: dict) -> "VideoSpec":
        return cls(duration=int(meta["duration"]), seed=meta.get("seed"),
                   objects=tuple(ObjectSpec(**o) for o in meta["objects"]),
                   events=tuple(EventSpec(**e) for e in meta["events"]))

    def object(self, oid: int) -> ObjectSpec:
        return next(o for o in self.objects if o.id == oid)

    def events_of(self, oid: int) -> list[EventSpec]:
        return [e for e in self.events if e.object == oid]

    def colour_at(self, oid: int, t: float) -> str:
        """Colour of an object at second ``t`` (a colour change counts once it has ended)."""
        for e in self.events_of(oid):
            if e.kind == "change_colour" and e.end <= t:
                return e.target
        return self.object(oid).colour

    def describe(self, oid: int, t: float) -> str:
        """'red circle': the object's unique description at second ``t``."""
        return f"{self.colour_at(oid, t)} {self.object(oid).shape}"


def phrase(kind: str, target: str | None = None, variant: int = 0) -> str:
    """Verb phrase of an event.

    >>> phrase("move_left", variant=1), phrase("change_colour", "blue")
    ('slides to the left', 'turns blue')
    """
    return PHRASES[kind][variant].format(target=target)


def caption(obj: str, kind: str, target: str | None = None, variant: int = 0) -> str:
    """Caption of an event: "the {obj} {phrase}".

    >>> caption("red circle", "move_left", variant=1)
    'the red circle slides to the left'
    """
    return f"the {obj} {phrase(kind, target, variant)}"


def _phrase_table() -> dict[str, tuple[str, str | None]]:
    table = {}
    for kind, variants in PHRASES.items():
        for target in (COLOURS if kind == "change_colour" else (None,)):
            for v in range(len(variants)):
                table[phrase(kind, target, v)] = (kind, target)
    return table


def parse_phrase(text: str) -> tuple[str, str | None] | None:
    """``(kind, target)`` of a verb phrase in any paraphrase, or None.

    >>> parse_phrase("changes colour to blue"), parse_phrase("rises"), parse_phrase("dances")
    (('change_colour', 'blue'), ('move_up', None), None)
    """
    return _phrase_table().get(text.strip().rstrip("."))


def parse_caption(text: str) -> tuple[str, str, str, str | None] | None:
    """``(colour, shape, kind, target)`` of a caption in any paraphrase, or None.

    >>> parse_caption("the red circle slides to the left")
    ('red', 'circle', 'move_left', None)
    """
    m = re.fullmatch(r"the (\w+) (\w+) (.+)", text.strip().rstrip("."))
    if not m or m[1] not in COLOURS or m[2] not in SHAPES:
        return None
    kt = parse_phrase(m[3])
    return (m[1], m[2], *kt) if kt else None


# ----------------------------------------------------------------------------- sampling

def _pick(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _sample_looks(rng, n: int) -> list[tuple[str, str]]:
    """n distinct (shape, colour) pairs."""
    all_looks = [(s, c) for s in SHAPES for c in COLOURS]
    order = rng.permutation(len(all_looks))[:n]
    return [all_looks[i] for i in order]


def _plan_events(rng, looks, n_events: int, distractor_rate: float) -> list[dict]:
    """Which object does which kind of event (no timing yet); distractors follow their event."""
    colours = [{c} for _, c in looks]  # every colour each object ever has
    used: set[tuple[int, str]] = set()

    def free_colours(i):
        taken = set().union(*(colours[j] for j in range(len(looks)) if looks[j][0] == looks[i][0]))
        return [c for c in COLOURS if c not in taken]

    def allowed(i, kind):
        if (i, kind) in used or (kind == "spin" and looks[i][0] == "circle"):
            return False
        return kind != "change_colour" or bool(free_colours(i))

    def add(i, kind, distractor):
        target = _pick(rng, free_colours(i)) if kind == "change_colour" else None
        if target:
            colours[i].add(target)
        used.add((i, kind))
        plan.append({"object": i, "kind": kind, "target": target, "distractor": distractor})

    plan: list[dict] = []
    while len(plan) < n_events:
        kinds = [k for k in KINDS if any(allowed(i, k) for i in range(len(looks)))]
        if not kinds:
            break
        kind = _pick(rng, kinds)
        i = _pick(rng, [i for i in range(len(looks)) if allowed(i, kind)])
        add(i, kind, False)
        if len(plan) < n_events and rng.random() < distractor_rate:
            others = [j for j in range(len(looks)) if j != i and allowed(j, kind)]
            if others:
                add(_pick(rng, others), kind, True)
    return plan


def _schedule(rng, plan: list[dict], n_objects: int, duration: int, cfg: WorldConfig) -> list[dict]:
    """Give each object's events consecutive, non-overlapping [start, end] in [0, duration-1]."""
    out = []
    for i in range(n_objects):
        mine = [plan[j] for j in rng.permutation(len(plan)) if plan[j]["object"] == i]
        mine.sort(key=lambda p: {"appear": 0, "disappear": 2}.get(p["kind"], 1))  # stable
        if not mine:
            continue
        lens = rng.integers(cfg.min_event_len, cfg.max_event_len + 1, size=len(mine))
        budget = duration - 1
        while lens.sum() > budget and lens.max() > 1:
            lens[int(np.argmax(lens))] -= 1
        if lens.sum() > budget:
            raise ValueError(f"{len(mine)} events do not fit in a {duration}-s video")
        cuts = np.sort(rng.integers(0, budget - lens.sum() + 1, size=len(mine)))
        gaps = np.diff(cuts, prepend=0)  # idle seconds before each event
        t = 0
        for p, gap, n in zip(mine, gaps, lens):
            t += int(gap)
            out.append({**p, "start": t, "end": t + int(n)})
            t += int(n)
    return out


def _amounts(rng, timed: list[dict]) -> list[float]:
    def one(p):
        if p["kind"] in MOVES:
            return float(rng.uniform(*MOVE_RANGE))
        if p["kind"] in ("grow", "shrink"):
            return float(rng.uniform(*GROW_RANGE))
        if p["kind"] == "spin":
            return float(_pick(rng, (-1, 1)) * SPIN_SPEED * (p["end"] - p["start"]))
        return 0.0

    return [one(p) for p in timed]


def _start_range(steps: list[float], lo: float, hi: float) -> tuple[float, float, float]:
    """Where a path of signed ``steps`` can start so it stays in [lo, hi]; returns
    ``(first, last, shrink)`` where ``shrink <= 1`` scales the steps when the room is too small."""
    pos = np.concatenate([[0.0], np.cumsum(steps)])
    span = pos.max() - pos.min()
    shrink = min(1.0, (hi - lo) / span) if span > 0 else 1.0
    pos = pos * shrink
    return lo - pos.min(), hi - pos.max(), shrink


def _place(rng, looks, timed, amounts, cfg: WorldConfig, duration: int, tries: int = 16):
    """Initial size, position and angle of each object so its whole path stays in the frame.

    Sizes first, then ``tries`` random position draws; keep the one whose objects overlap least."""
    amounts = list(amounts)
    sizes, ranges = [], []
    for i, (shape, _) in enumerate(looks):
        idx = [j for j, p in enumerate(timed) if p["object"] == i]  # chronological
        logf = [np.log(amounts[j]) * (1 if timed[j]["kind"] == "grow" else -1)
                for j in idx if timed[j]["kind"] in ("grow", "shrink")]
        a, b, _ = _start_range(logf, np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1]))
        s0 = float(np.exp(rng.uniform(a, b)))
        peak = s0 * float(np.exp(np.max(np.concatenate([[0.0], np.cumsum(logf)]))))
        margin = cfg.object_size * peak * CIRCUM[shape] + 0.02
        sizes.append(cfg.object_size * s0)
        axes = []
        for axis in (0, 1):
            steps = [MOVES[timed[j]["kind"]][axis] * amounts[j] for j in idx if timed[j]["kind"] in MOVES]
            first, last, shrink = _start_range(steps, margin, 1 - margin)
            for j in idx:
                if timed[j]["kind"] in MOVES and MOVES[timed[j]["kind"]][axis]:
                    amounts[j] *= shrink
            axes.append((first, last))
        ranges.append(axes)
    angles = [float(rng.uniform(0, 360)) if s != "circle" else 0.0 for s, _ in looks]
    best, best_cost = None, np.inf
    for _ in range(tries):
        xy = [(rng.uniform(*ax[0]), rng.uniform(*ax[1])) for ax in ranges]
        objects = tuple(ObjectSpec(i, s, c, round(float(x), 4), round(float(y), 4), round(sizes[i], 4), round(angles[i], 2))
                        for i, ((s, c), (x, y)) in enumerate(zip(looks, xy)))
        cost = _overlap(objects, timed, amounts, duration)
        if cost < best_cost:
            best, best_cost = objects, cost
        if cost == 0:
            break
    return best, amounts


def _overlap(objects, timed, amounts, duration: int) -> float:
    """Sum over whole seconds of how far visible objects intrude into each other."""
    events = tuple(EventSpec(p["kind"], p["object"], p["start"], p["end"], "", p["distractor"], p["target"], a)
                   for p, a in zip(timed, amounts))
    spec = VideoSpec(duration, objects, events)
    t = np.arange(duration, dtype=np.float64)
    tracks = [track(spec, o.id, t) for o in objects]
    cost = 0.0
    for i in range(len(objects)):
        for j in range(i):
            a, b = tracks[i], tracks[j]
            dist = np.hypot(a["x"] - b["x"], a["y"] - b["y"])
            reach = a["r"] * CIRCUM[objects[i].shape] + b["r"] * CIRCUM[objects[j].shape]
            cost += float(np.sum(np.clip(reach - dist, 0, None) * np.minimum(a["alpha"], b["alpha"])))
    return cost


def sample_video(rng: np.random.Generator | int, cfg: WorldConfig, duration: int | None = None) -> VideoSpec:
    """Sample one Shapes video. ``rng``: a Generator, or an int seed (then stored as ``spec.seed``)."""
    seed = None
    if isinstance(rng, (int, np.integer)):
        seed, rng = int(rng), np.random.default_rng(int(rng))
    d = int(duration) if duration is not None else int(rng.integers(cfg.min_duration, cfg.max_duration + 1))
    looks = _sample_looks(rng, int(rng.integers(cfg.min_objects, cfg.max_objects + 1)))
    plan = _plan_events(rng, looks, int(rng.integers(cfg.min_events, cfg.max_events + 1)), cfg.distractor_rate)
    timed = _schedule(rng, plan, len(looks), d, cfg)
    objects, amounts = _place(rng, looks, timed, _amounts(rng, timed), cfg, d)
    events = [EventSpec(p["kind"], p["object"], p["start"], p["end"], "", p["distractor"], p["target"],
                        round(float(a), 4)) for p, a in zip(timed, amounts)]
    spec = VideoSpec(d, objects, tuple(events), seed)  # uncaptioned: to know colours over time
    events = [dataclasses.replace(e, caption=caption(spec.describe(e.object, e.start), e.kind, e.target,
                                                     int(rng.integers(len(PHRASES[e.kind])))))
              for e in events]
    events.sort(key=lambda e: (e.start, e.end, e.object))
    return VideoSpec(d, objects, tuple(events), seed)


# ----------------------------------------------------------------------------- rendering

def track(spec: VideoSpec, oid: int, t: np.ndarray) -> dict[str, np.ndarray]:
    """State of one object at times ``t`` (seconds, shape ``(N,)``): ``x, y, r, angle, alpha``
    of shape ``(N,)`` and ``rgb`` of shape ``(N, 3)``. Events interpolate linearly over
    [start, end] (size geometrically); afterwards the new state holds."""
    o = spec.object(oid)
    t = np.asarray(t, dtype=np.float64)
    x, y = np.full_like(t, o.x), np.full_like(t, o.y)
    log_r, angle, alpha = np.full_like(t, np.log(o.size)), np.full_like(t, o.angle), np.ones_like(t)
    rgb = np.tile(np.asarray(COLOURS[o.colour], dtype=np.float64), (len(t), 1))
    for e in spec.events_of(oid):
        u = np.clip((t - e.start) / max(e.end - e.start, 1e-9), 0.0, 1.0)  # progress 0 -> 1
        if e.kind in MOVES:
            dx, dy = MOVES[e.kind]
            x, y = x + dx * e.amount * u, y + dy * e.amount * u
        elif e.kind in ("grow", "shrink"):
            log_r = log_r + (1 if e.kind == "grow" else -1) * np.log(e.amount) * u
        elif e.kind == "spin":
            angle = angle + e.amount * u
        elif e.kind == "appear":
            alpha = alpha * u
        elif e.kind == "disappear":
            alpha = alpha * (1 - u)
        elif e.kind == "change_colour":
            new = np.asarray(COLOURS[e.target], dtype=np.float64)
            rgb = rgb + (new - rgb) * u[:, None]
    return {"x": x, "y": y, "r": np.exp(log_r), "angle": angle, "alpha": alpha, "rgb": rgb}


def _coverage(shape: str, tr: dict, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one object in every frame, shape ``(N, len(ys), len(xs))``.

    ``xs``, ``ys``: pixel-centre coordinates (in pixels) of the window to draw. Signed distance
    ``d`` in pixels (negative inside); coverage = clip(0.5 - d, 0, 1)."""
    col = lambda v: np.asarray(v, dtype=np.float32)[:, None, None] * size  # (N,) -> (N,1,1) pixels
    dx = xs[None, None, :] - col(tr["x"])  # (N, 1, w)
    dy = ys[None, :, None] - col(tr["y"])  # (N, h, 1)
    r = col(tr["r"])
    if shape == "circle":
        d = np.sqrt(dx ** 2 + dy ** 2) - r
    else:
        k = {"square": 4, "triangle": 3}[shape]
        theta = np.deg2rad(np.asarray(tr["angle"], dtype=np.float64))[:, None, None]  # (N, 1, 1)
        # edge normals; the first points down (+y), so an unrotated triangle points up.
        # Trig in float64 on N values; per-pixel maths is + * max only (same bits on any CPU).
        normals = [theta + np.pi / 2 + 2 * np.pi * i / k for i in range(k)]
        d = np.max([dx * np.cos(a).astype(np.float32) + dy * np.sin(a).astype(np.float32) for a in normals],
                   axis=0) - r * APOTHEM[shape]
    return np.clip(0.5 - d, 0.0, 1.0)


def _window(tr: dict, shape: str, size: int) -> tuple[slice, slice]:
    """Pixel rows/columns an object can touch over the whole clip (its track's bounding box)."""
    reach = tr["r"] * CIRCUM[shape] * size + 1.5
    box = lambda c: slice(max(0, int(np.floor((c * size - reach).min()))),
                          min(size, int(np.ceil((c * size + reach).max()))))
    return box(tr["y"]), box(tr["x"])


def _spec_rng(spec: VideoSpec, stream: int) -> np.random.Generator:
    """A generator that is a pure function of the spec's content (and ``stream``)."""
    text = json.dumps(spec.to_meta(""), sort_keys=True)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng([digest, stream])


def render_frames(spec: VideoSpec, cfg: WorldConfig) -> np.ndarray:
    """All frames of a video: ``uint8 (duration * render_fps, S, S, 3)``, frame i at second i/render_fps."""
    n, size = spec.duration * cfg.render_fps, cfg.render_size
    t = np.arange(n) / cfg.render_fps
    img = np.empty((n, size, size, 3), np.float32)
    img[:] = np.asarray(BACKGROUND, np.float32)
    for o in spec.objects:  # later objects are drawn on top
        tr = track(spec, o.id, t)
        rows, cols = _window(tr, o.shape, size)  # draw only where the object can be
        xs = np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5
        ys = np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5
        a = _coverage(o.shape, tr, xs, ys, size) * tr["alpha"].astype(np.float32)[:, None, None]  # (N, h, w)
        a = a[..., None]  # (N, h, w, 1)
        win = img[:, rows, cols]  # (N, h, w, 3) view
        win += a * (tr["rgb"].astype(np.float32)[:, None, None, :] - win)
    if cfg.noise > 0:
        img += _spec_rng(spec, 1).standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


X264_PRESET = "veryfast"  # ~2x faster than "medium" on 64x64 clips, ~20% larger files


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int, crf: int = 23) -> None:
    """Encode ``uint8 (N, H, W, 3)`` RGB frames as H.264 (libx264, yuv420p) at ``fps``.

    Fixed encoder settings, one thread and bit-exact muxing without metadata, so the same frames
    give the same bytes (on one ffmpeg/x264 build). Written atomically (:func:`d2lib.core.io.write_with`:
    ffmpeg writes a temporary file that replaces ``path`` only once it is complete)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    n, h, w, _ = frames.shape
    if n == 0 or h % 2 or w % 2:
        raise ValueError(f"need >= 1 frame with even height and width, got shape {frames.shape}")
    path = Path(path)

    def encode(tmp: Path) -> None:
        cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
               "-an", "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-threads", "1", "-map_metadata", "-1", "-bitexact", "-fflags", "+bitexact",
               "-flags:v", "+bitexact", "-f", "mp4", str(tmp)]
        res = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
        if res.returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {res.stderr.decode(errors='replace')[-500:]}")

    io.write_with(path, encode)


# ----------------------------------------------------------------------------- records

def _options(opts: list[str]) -> str:
    return " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))


def _mcq(rng, correct: str, wrong: list[str]) -> tuple[list[str], int]:
    """Four options (correct + 3 wrong) in random order and the index of the correct one."""
    opts = [correct, *wrong[:3]]
    order = rng.permutation(4)
    return [opts[i] for i in order], int(np.argmax(order == 0))


def _choose_wrong(rng, pools: list[list], n: int = 3) -> list:
    """One item from each non-empty pool (in order), then the rest at random; no repeats."""
    out = []
    for pool in pools:
        pool = [p for p in pool if p not in out]
        if pool and len(out) < n:
            out.append(_pick(rng, pool))
    rest = [p for pool in pools for p in pool if p not in out]
    rest = list(dict.fromkeys(rest))
    while len(out) < n and rest:
        out.append(rest.pop(int(rng.integers(len(rest)))))
    if len(out) < n:
        raise ValueError("not enough distinct wrong options")
    return out


def _other_target(rng, colour: str, avoid: str | None = None) -> str:
    return _pick(rng, [c for c in COLOURS if c not in (colour, avoid)])


def _rar(rng, spec: VideoSpec, ev: EventSpec) -> tuple[list[str], int]:
    """Options for 'what happens during ev's span': keys (desc, kind, target) that are false then."""
    o = spec.object(ev.object)
    desc = spec.describe(o.id, ev.start)
    key = (desc, ev.kind, ev.target)
    near = {(spec.describe(e.object, e.start), e.kind, e.target)
            for e in spec.events if e.start <= ev.end and e.end >= ev.start}  # true around the span
    own_colours = {o.colour} | {e.target for e in spec.events_of(o.id) if e.target}

    def tgt(d, k):  # a colour-change target that differs from the object's colour
        if k != "change_colour":
            return None
        colour = d.split()[0]
        return ev.target if ev.target and ev.target != colour else _other_target(rng, colour)

    binding = [(spec.describe(p.id, ev.start), ev.kind, tgt(spec.describe(p.id, ev.start), ev.kind))
               for p in spec.objects if p.id != o.id and not (ev.kind == "spin" and p.shape == "circle")]
    actions = [(desc, k, _other_target(rng, desc.split()[0], ev.target) if k == "change_colour" else None)
               for k in KINDS if k != ev.kind and not (k == "spin" and o.shape == "circle")]
    looks = [(f"{c} {o.shape}", ev.kind, tgt(f"{c} {o.shape}", ev.kind)) for c in COLOURS if c not in own_colours]
    looks += [(f"{desc.split()[0]} {s}", ev.kind, ev.target) for s in SHAPES
              if s != o.shape and not (ev.kind == "spin" and s == "circle")]
    pools = [[k for k in pool if k != key and k not in near] for pool in (binding, actions, looks)]
    wrong = _choose_wrong(rng, pools)
    say = lambda k: caption(k[0], k[1], k[2], int(rng.integers(len(PHRASES[k[1]]))))
    return _mcq(rng, say(key), [say(k) for k in wrong])


def _gvq(rng, spec: VideoSpec) -> tuple[str, list[str], int, list[int]]:
    """A grounded question: (question, options, answer index, evidence span)."""
    evs = list(spec.events)
    sig = lambda e: (e.kind, e.target)
    shape_of = lambda e: spec.object(e.object).shape
    kinds = [sig(e) for e in evs]
    which = [e for e in evs if kinds.count(sig(e)) == 1]
    colour = [e for e in evs if e.kind != "change_colour"
              and sum(sig(f) == sig(e) and shape_of(f) == shape_of(e) for f in evs) == 1]
    owners = sorted({e.object for e in evs})
    qtype = _pick(rng, [q for q, ok in (("which", which), ("colour", colour), ("what", owners)) if ok])
    vp = lambda k, t: phrase(k, t, int(rng.integers(len(PHRASES[k]))))
    if qtype == "which":  # Which shape slides to the left? -> the red circle
        e = _pick(rng, which)
        o = spec.object(e.object)
        right = spec.describe(o.id, e.start)
        own = {o.colour} | {f.target for f in spec.events_of(o.id) if f.target}
        others = [spec.describe(p.id, e.start) for p in spec.objects if p.id != o.id]
        looks = [f"{c} {s}" for s in SHAPES for c in COLOURS if not (s == o.shape and c in own)]
        wrong = _choose_wrong(rng, [others, looks])
        opts, p = _mcq(rng, f"the {right}", [f"the {w}" for w in wrong])
        return GVQ_WHICH.format(phrase=vp(e.kind, e.target)), opts, p, [e.start, e.end]
    if qtype == "colour":  # What colour is the circle that slides to the left? -> red
        e = _pick(rng, colour)
        right = spec.colour_at(e.object, e.start)
        opts, p = _mcq(rng, right, [c for c in COLOURS if c != right])
        q = GVQ_COLOUR.format(shape=shape_of(e), phrase=vp(e.kind, e.target))
        return q, opts, p, [e.start, e.end]
    oid = _pick(rng, owners)  # What does the red circle do first? -> slides to the left
    mine = spec.events_of(oid)
    pos = 0 if len(mine) == 1 else _pick(rng, (1, 2))
    e = mine[-1] if pos == 2 else mine[0]
    shape = spec.object(oid).shape
    colour_now = spec.colour_at(oid, e.start)
    others = [sig(f) for f in mine if f is not e]
    alts = [(k, _other_target(rng, colour_now, e.target) if k == "change_colour" else None)
            for k in KINDS if k != e.kind and not (k == "spin" and shape == "circle")]
    wrong = _choose_wrong(rng, [others, alts])
    opts, p = _mcq(rng, vp(e.kind, e.target), [vp(*w) for w in wrong])
    q = GVQ_WHAT[pos].format(obj=spec.describe(oid, e.start))
    return q, opts, p, [e.start, e.end]


def make_records(spec: VideoSpec, video_rel: str, start_idx: int = 0) -> list[dict]:
    """E.T. Bench records for one video: one ``tvg`` query per event (every caption names exactly
    one event), then one record each for dvc, rar, gvq and tal; ``idx`` runs from ``start_idx``.
    Deterministic: a pure function of the spec."""
    rng = _spec_rng(spec, 2)
    evs = sorted(spec.events, key=lambda e: (e.start, e.end, e.object))
    base = lambda k, task: {"idx": start_idx + k, "task": task, "source": "shapes",
                            "video": video_rel, "duration": spec.duration}
    span = lambda e: [e.start, e.end]
    out = [{**base(k, "tvg"), "tgt": span(e), "g": [e.caption], "q": Q_TVG.format(caption=e.caption)}
           for k, e in enumerate(evs)]
    n = len(out)
    out.append({**base(n, "dvc"), "tgt": [span(e) for e in evs], "g": [e.caption for e in evs], "q": Q_DVC})
    e = _pick(rng, evs)
    opts, p = _rar(rng, spec, e)
    out.append({**base(n + 1, "rar"), "src": span(e), "p": p, "o": opts,
                "q": Q_RAR.format(span=format_span(span(e)), options=_options(opts))})
    question, opts, p, ev_span = _gvq(rng, spec)
    out.append({**base(n + 2, "gvq"), "tgt": ev_span, "p": p, "o": opts,
                "q": Q_GVQ.format(question=question, options=_options(opts))})
    kind = _pick(rng, sorted({e.kind for e in evs}, key=KINDS.index))
    out.append({**base(n + 3, "tal"), "tgt": [span(e) for e in evs if e.kind == kind], "g": [ACTION_NAMES[kind]],
                "q": Q_TAL.format(action=ACTION_NAMES[kind])})
    return out


def vocabulary(cfg: WorldConfig | None = None) -> list[str]:
    """Every token the templates can produce (words, numbers 0..max_duration, letters A–D and
    punctuation), split as ``re.findall(r"\\w+|[^\\w\\s]", text)``; sorted, case kept."""
    cfg = cfg or WorldConfig()
    texts = [Q_TVG, Q_DVC, Q_TAL, Q_RAR, Q_GVQ, GVQ_WHICH, GVQ_COLOUR, *GVQ_WHAT, *RESPONSES, *ACTION_NAMES.values(),
             "the", *SHAPES, *COLOURS, *LETTERS, *(p for ps in PHRASES.values() for p in ps)]
    words = {w for t in texts for w in tokenize(re.sub(r"\{\w+\}", " ", t))}
    words |= {str(i) for i in range(cfg.max_duration + 1)}
    return sorted(words)


def tokenize(text: str) -> list[str]:
    """The split :func:`vocabulary` assumes: words/numbers and single punctuation marks.

    >>> tokenize("(A) the red circle. The event happens in 3 - 7.")
    ['(', 'A', ')', 'the', 'red', 'circle', '.', 'The', 'event', 'happens', 'in', '3', '-', '7', '.']
    """
    return re.findall(r"\w+|[^\w\s]", text)


# ----------------------------------------------------------------------------- splits and exports

def _vid(video_rel: str) -> str:
    return Path(video_rel).stem


def export_charades(records: list[dict]) -> list[str]:
    """Charades-STA lines ``"VID s e##sentence"`` from the tvg records (VID = video file stem).

    >>> export_charades([{"task": "tvg", "video": "videos/val_00001.mp4", "tgt": [3, 8], "g": ["the red circle grows"]}])
    ['val_00001 3.0 8.0##the red circle grows']
    """
    return [f"{_vid(r['video'])} {r['tgt'][0]:.1f} {r['tgt'][1]:.1f}##{r['g'][0]}"
            for r in records if r["task"] == "tvg"]


def export_youcook2(records: list[dict], metas: list[dict] | None = None, subset: str = "validation") -> dict:
    """Official YouCook2 layout from the dvc records:
    ``{"database": {vid: {"duration", "subset", "annotations": [{"id", "segment", "sentence"}]}}}``.

    ``metas`` (optional) are checked to cover every video with the same duration."""
    by_video = {m["video"]: m for m in metas} if metas is not None else None
    db = {}
    for r in records:
        if r["task"] != "dvc":
            continue
        if by_video is not None and by_video.get(r["video"], {}).get("duration") != r["duration"]:
            raise ValueError(f"{r['video']}: no meta entry with duration {r['duration']}")
        ann = [{"id": i, "segment": [float(s), float(e)], "sentence": g}
               for i, ((s, e), g) in enumerate(zip(r["tgt"], r["g"]))]
        db[_vid(r["video"])] = {"duration": float(r["duration"]), "subset": subset, "annotations": ann}
    return {"database": db}


SUBSETS = {"train": "training", "val": "validation", "test": "testing"}


def _render_video(job: tuple[str, str, int, WorldConfig]) -> dict:
    """Sample, render and encode one video; returns its meta entry. (A worker-process job.)"""
    out_dir, rel, seed, cfg = job
    spec = sample_video(seed, cfg)
    write_mp4(render_frames(spec, cfg), Path(out_dir) / rel, cfg.render_fps, cfg.crf)
    return spec.to_meta(rel)


def render_split(out_dir: str | os.PathLike, n_videos: int, seed: int, cfg: WorldConfig, name: str,
                 progress: bool = False, workers: int = 1) -> tuple[list[dict], list[dict]]:
    """Render ``n_videos`` videos (video k from seed ``seed + k``) into ``out_dir``:
    ``videos/{name}_{k:05d}.mp4``, ``annotations.json``, ``meta.json``, ``charades.txt``,
    ``youcook2.json``. Returns ``(records, metas)``. Stale ``{name}_*.mp4`` files are removed.
    ``workers > 1`` renders in that many processes (same bytes as one process)."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), f"videos/{name}_{k:05d}.mp4", seed + k, cfg) for k in range(n_videos)]
    if workers > 1 and n_videos > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork where available: no re-import of the caller's __main__ (scripts without a main guard)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        metas_iter = pool.map(_render_video, jobs, chunksize=4)
    else:
        pool, metas_iter = None, map(_render_video, jobs)
    if progress:
        from tqdm.auto import tqdm

        metas_iter = tqdm(metas_iter, total=n_videos, desc=f"render {name}")
    try:
        metas = list(metas_iter)
    finally:
        if pool is not None:
            pool.shutdown()
    records = []
    for m in metas:
        records += make_records(VideoSpec.from_meta(m), m["video"], len(records))
    keep = {Path(m["video"]).name for m in metas}
    for f in (out / "videos").glob(f"{name}_*.mp4"):
        if f.name not in keep:
            f.unlink()
    io.write_json(out / "annotations.json", records, indent=1)
    io.write_json(out / "meta.json", metas, indent=1)
    io.write_text(out / "charades.txt", "".join(line + "\n" for line in export_charades(records)))
    io.write_json(out / "youcook2.json", export_youcook2(records, metas, SUBSETS.get(name, name)), indent=1)
    return records, metas


def render_benchmark(out_dir: str | os.PathLike, world: WorldConfig, bench: BenchmarkConfig,
                     progress: bool = True, workers: int = 1) -> dict[str, int]:
    """Render the val and test splits into ``out_dir/{val,test}``; returns videos per split."""
    sizes = {"val": bench.n_val, "test": bench.n_test}
    for split, n in sizes.items():
        render_split(Path(out_dir) / split, n, split_seed(bench, split), world, split, progress, workers)
    return sizes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m d2lib.world.synth", description="Render Shapes videos.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("benchmark", help="render the seeded val/test benchmark (params: world, benchmark)")
    b.add_argument("--out", default=None, help="output folder (default: <repo>/data/shapes)")
    b.add_argument("--params", default=None, help="params.yaml (default: the repo's)")
    b.add_argument("--profile", default=None, help="params profile, e.g. smoke")
    b.add_argument("--workers", type=int, default=1, help="render in this many processes (same bytes)")
    args = ap.parse_args(argv)
    from d2lib.core import paths

    world = config.load_section("world", args.params, args.profile)
    bench = config.load_section("benchmark", args.params, args.profile)
    out = Path(args.out) if args.out else paths.data_dir() / "shapes"
    sizes = render_benchmark(out, world, bench, workers=args.workers)
    print(f"wrote {sizes} videos under {out}")


if __name__ == "__main__":
    main()
