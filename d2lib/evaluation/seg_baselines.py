"""Mask baselines for the ``<seg>`` tasks: what a mask decoder must beat.

Part of lesson 09, pixel grounding. A model that answers ``rvos`` / ``stg`` records
(:mod:`d2lib.world.seg_records`) with ``<seg>`` masks is only interesting if it beats answers that need no
model at all. Two such answers, both made of the decoded frames (``uint8 (T, H, W, 3)``, as
:func:`d2lib.world.video.read_frames` returns them) and nothing learnt:

* :func:`whole_frame_masks` — every pixel is the object. Its J on a frame is the object's share of
  the frame (0 where the object is invisible): the floor any answer must clear.
* :func:`colour_threshold_masks` — a heuristic that is *told the query's colour* (parsed from the
  record's text by :func:`query_colour`) and keeps the pixels of that palette colour. In the Shapes
  world it is strong, because objects are flat colours on a flat background; it shows how much of the
  task is colour lookup, and so what a model must add: telling apart two objects of one colour (their
  shape), following an object whose colour changes, and the moment (``stg``'s "when").

Scoring: :func:`score_rvos` (J, F, J&F of :mod:`d2lib.evaluation.mask_metrics`), :func:`score_stg` (vIoU and the
temporal IoU of the spans) and :func:`baseline_table`, both baselines over a list of records.

>>> frames = np.zeros((1, 4, 4, 3), np.uint8); frames[:] = synth.BACKGROUND
>>> frames[0, 1:3, 1:3] = synth.COLOURS["red"]                 # a 2 x 2 red object
>>> gt = np.zeros((1, 4, 4), bool); gt[0, 1:3, 1:3] = True
>>> score_rvos(colour_threshold_masks(frames, "red"), gt)
{'J': 1.0, 'F': 1.0, 'J&F': 1.0}
>>> score_rvos(whole_frame_masks(1, 4, 4), gt)["J"]            # 4 of 16 pixels
0.25
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from d2lib.evaluation import mask_metrics
from d2lib.world import synth
from d2lib.world.seg_records import answer_masks

__all__ = [
    "BASELINES", "whole_frame_masks", "colour_threshold_masks", "largest_component", "query_colour",
    "score_rvos", "score_stg", "baseline_table",
]

BASELINES = ("whole_frame", "colour")  # the rows of baseline_table
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: diagonal neighbours join a component


# ----------------------------------------------------------------------------------------- baselines

def whole_frame_masks(T: int, H: int, W: int) -> np.ndarray:
    """The trivial answer: every pixel of every frame is the object; ``bool (T, H, W)``, all True.

    Its J on a frame is ``object area / (H * W)`` (0 where the object is invisible). Its F is 0 on
    frames where the object is visible (a full mask has no outline) but 1 where it is not: DAVIS
    scores two empty outlines as a perfect match, so F rewards this baseline on invisible frames.

    >>> whole_frame_masks(2, 3, 4).shape, bool(whole_frame_masks(2, 3, 4).all())
    ((2, 3, 4), True)
    """
    for name, v in (("T", T), ("H", H), ("W", W)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return np.ones((int(T), int(H), int(W)), bool)


def _check_frames(frames) -> np.ndarray:
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3 or 0 in f.shape:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) as the decoder returns them, got {f.dtype} {f.shape}")
    return f


def largest_component(mask) -> np.ndarray:
    """The largest 8-connected component of an ``(H, W)`` mask (the first in label order on a tie);
    an empty mask stays empty.

    >>> m = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], bool)
    >>> largest_component(m).astype(int).tolist()
    [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    """
    m = np.asarray(mask, bool)
    labels, n = ndimage.label(m, structure=_EIGHT)
    if n <= 1:
        return m.copy()
    sizes = np.bincount(labels.ravel())[1:]  # pixels of components 1..n
    return labels == 1 + int(np.argmax(sizes))


def colour_threshold_masks(frames, colour: str, margin: float | None = None,
                           keep_largest: bool = False) -> np.ndarray:
    """Pixels of the palette colour ``colour``: ``bool (T, H, W)`` from ``uint8 (T, H, W, 3)`` frames.

    A pixel is kept when, among the world's palette colours (:data:`d2lib.world.synth.COLOURS`), its RGB is
    nearest (Euclidean) to ``colour``, and it lies farther than ``margin`` from the background colour
    (:data:`d2lib.world.synth.BACKGROUND`). ``margin`` (RGB units) defaults to half the distance from the
    background to ``colour``: for a pixel blended from the object and the background that is the mask
    rule of :mod:`d2lib.world.masks` (at least half the colour is the object's). ``keep_largest``: keep only
    each frame's largest connected component (:func:`largest_component`), dropping stray pixels.

    Why it is strong here: Shapes objects are flat palette colours on a flat dark background, with
    little noise, so colour alone finds most pixels of the named object, edges included.
    Where it must fail — what a model has to add:

    * **two objects of the same colour** (a red circle and a red square): both are kept, J < 1;
      ``keep_largest`` keeps the bigger one, which may be the wrong one;
    * **colour changes mid-video**: the query names the colour an object *starts* with (``rvos``) or
      has when its event starts (``stg``); after a ``change_colour`` the object is lost, and another
      object that takes on that colour is found instead;
    * **fades** (``appear`` / ``disappear``): a half-faded object is half background, so its pixels
      drop below the margin (the ground truth drops them at the same point, but codec blur and noise
      make the boundary ragged), and blends of other colours with the background can sit nearer this
      colour than their own (a half-faded yellow pixel is nearest red);
    * **occlusion** splits an object, and ``keep_largest`` then keeps one part only.

    >>> f = np.zeros((1, 2, 3, 3), np.uint8); f[:] = synth.BACKGROUND
    >>> f[0, 0, 0] = synth.COLOURS["red"]; f[0, 1, 2] = (200, 60, 60); f[0, 0, 1] = synth.COLOURS["blue"]
    >>> colour_threshold_masks(f, "red").astype(int).tolist()
    [[[1, 0, 0], [0, 0, 1]]]
    """
    f = _check_frames(frames)
    if colour not in synth.COLOURS:
        raise ValueError(f"colour must be one of the world's colours {list(synth.COLOURS)}, got {colour!r}")
    names = list(synth.COLOURS)
    palette = np.asarray([synth.COLOURS[c] for c in names], np.float32)  # (K, 3)
    bg = np.asarray(synth.BACKGROUND, np.float32)
    target = palette[names.index(colour)]
    if margin is None:
        margin = 0.5 * float(np.linalg.norm(target - bg))
    if not (isinstance(margin, (int, float, np.integer, np.floating)) and np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0 (RGB units), got {margin!r}")
    x = f.astype(np.float32)
    d2 = ((x[..., None, :] - palette) ** 2).sum(-1)  # (T, H, W, K)
    keep = (d2.argmin(-1) == names.index(colour)) & (((x - bg) ** 2).sum(-1) > float(margin) ** 2)
    if keep_largest:
        keep = np.stack([largest_component(m) for m in keep])
    return keep


def query_colour(text: str) -> str:
    """The first of the world's colour names in ``text``: the colour of the object a query names.

    For ``rvos`` expressions ("the red circle") and ``stg`` captions ("the red circle turns blue") the
    first colour is the subject's; a later one is an event's target. ValueError when there is none.

    >>> query_colour("the red circle turns blue")
    'red'
    >>> query_colour("the big circle")
    Traceback (most recent call last):
    ...
    ValueError: no colour name (red, green, blue, yellow) in 'the big circle': the colour baseline needs one
    """
    for w in re.findall(r"[a-z]+", str(text).lower()):
        if w in synth.COLOURS:
            return w
    raise ValueError(f"no colour name ({', '.join(synth.COLOURS)}) in {text!r}: the colour baseline needs one")


# ----------------------------------------------------------------------------------------- scores

def score_rvos(pred, gt, bound_th: float = 0.008) -> dict:
    """J, F and J&F of one ``rvos`` answer: ``pred``, ``gt`` ``(T, H, W)`` masks over every frame
    (:func:`d2lib.evaluation.mask_metrics.j_and_f`; ``bound_th`` the boundary tolerance, 1 px at 32 px).

    >>> gt = np.zeros((2, 4, 4), bool); gt[:, :2, :2] = True
    >>> score_rvos(gt, gt)
    {'J': 1.0, 'F': 1.0, 'J&F': 1.0}
    """
    return mask_metrics.j_and_f(pred, gt, bound_th)


class _Full(dict):
    """A tube that is one full 1 x 1 mask at every frame (for the temporal IoU)."""

    def __missing__(self, t):
        return np.ones((1, 1), bool)


def score_stg(pred_masks, pred_span, gt_masks, gt_span, frames: Iterable[int] | None = None) -> dict:
    """vIoU and temporal IoU of one ``stg`` answer.

    ``pred_masks``, ``gt_masks``: tubes indexed by frame (``(T, H, W)`` arrays over the video's
    frames, or ``{frame: (H, W) mask}``) holding every frame both spans cover; ``pred_span``,
    ``gt_span``: ``(start, end)`` frame indices, ends included; ``frames``: the frames evaluated (see
    :func:`d2lib.evaluation.mask_metrics.viou`). Returns ``{"vIoU", "tIoU"}``: ``tIoU = |S_p ∩ S_g| / |S_p ∪ S_g|``
    is the vIoU two perfect tubes would get, so ``vIoU = tIoU × mean IoU over the shared frames``.

    >>> gt = np.zeros((4, 2, 2), bool); gt[:, 0, 0] = True
    >>> score_stg(gt, (0, 1), gt, (1, 2))    # one shared frame of three, perfect there
    {'vIoU': 0.3333333333333333, 'tIoU': 0.3333333333333333}
    """
    frames = None if frames is None else list(frames)
    v = mask_metrics.viou(pred_masks, gt_masks, pred_span, gt_span, frames)
    t = mask_metrics.viou(_Full(), _Full(), pred_span, gt_span, frames)
    return {"vIoU": v, "tIoU": t}


# ----------------------------------------------------------------------------------------- table

def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def baseline_table(records: Iterable[Mapping], frames_of: Callable[[str], np.ndarray],
                   masks_of: Callable[[str], np.ndarray], fps: float, bound_th: float = 0.008,
                   margin: float | None = None, keep_largest: bool = False) -> dict:
    """Both baselines over ``rvos`` / ``stg`` records: ``{baseline: {metric: value}}``.

    ``frames_of(video)``: the decoded frames ``uint8 (T, S, S, 3)`` of a record's ``video``;
    ``masks_of(video)``: its ground-truth masks ``bool (n_objects, T, S, S)``
    (:func:`d2lib.world.masks.video_masks` or the mask cache); ``fps``: the decode rate, frame ``k`` is second
    ``k / fps``. Each is called once per video. Other tasks (``gcap``) are skipped.

    Metrics per baseline (:data:`BASELINES`): ``rvos_J``, ``rvos_F``, ``rvos_J&F`` — means over the
    ``rvos`` records of :func:`score_rvos`; ``stg_m_vIoU``, ``stg_vIoU@0.3``, ``stg_vIoU@0.5``
    (:func:`d2lib.evaluation.mask_metrics.viou_summary` of :func:`score_stg`); ``n_rvos``, ``n_stg``. A task
    without records gets NaN. **Both baselines answer ``stg`` with the ground-truth span**: they only
    say *where* (a mask per frame), not *when*, so their tIoU is 1 and their vIoU is the mean mask IoU
    inside the true span — an upper bound on what they would score if they also had to find the moment.
    The colour baseline's colour is :func:`query_colour` of the record's ``g[0]``; ``margin`` and
    ``keep_largest`` go to :func:`colour_threshold_masks`. ``pandas.DataFrame(table).T`` gives one
    row per baseline.
    """
    by_video: dict[str, list[Mapping]] = defaultdict(list)
    for rec in records:
        if rec["task"] in ("rvos", "stg"):
            by_video[rec["video"]].append(rec)
    rvos: dict[str, list[dict]] = {b: [] for b in BASELINES}
    stg: dict[str, list[float]] = {b: [] for b in BASELINES}
    for video, recs in by_video.items():
        frames = _check_frames(frames_of(video))
        masks = np.asarray(masks_of(video))
        T, H, W = frames.shape[:3]
        if masks.ndim != 4 or masks.shape[1:] != (T, H, W):
            raise ValueError(f"{video}: masks {masks.shape} do not match frames {frames.shape} "
                             f"(want (n_objects, {T}, {H}, {W}))")
        times = np.arange(T, dtype=np.float64) / fps
        whole = whole_frame_masks(T, H, W)
        by_colour: dict[str, np.ndarray] = {}
        for rec in recs:
            colour = query_colour(rec["g"][0])
            if colour not in by_colour:
                by_colour[colour] = colour_threshold_masks(frames, colour, margin, keep_largest)
            preds = {"whole_frame": whole, "colour": by_colour[colour]}
            if rec["task"] == "rvos":
                gt = masks[rec["obj"]]
                for b, p in preds.items():
                    rvos[b].append(score_rvos(p, gt, bound_th))
                continue
            inside = answer_masks(rec, masks, times)[0]["frames"]
            if len(inside) == 0:
                raise ValueError(f"{video} (idx {rec.get('idx', '?')}): span {rec['tgt']} holds no frame at {fps} fps")
            span = (int(inside[0]), int(inside[-1]))
            for b, p in preds.items():  # the ground-truth span for both: "where", not "when"
                stg[b].append(score_stg(p, span, masks[rec["obj"]], span, range(T))["vIoU"])
    table = {}
    for b in BASELINES:
        row = {f"rvos_{k}": _mean([s[k] for s in rvos[b]]) for k in ("J", "F", "J&F")}
        summary = mask_metrics.viou_summary(stg[b]) if stg[b] else {"m_vIoU": np.nan, "vIoU@0.3": np.nan,
                                                                   "vIoU@0.5": np.nan}
        row.update({f"stg_{k}": float(v) for k, v in summary.items()})
        row.update(n_rvos=len(rvos[b]), n_stg=len(stg[b]))
        table[b] = row
    return table
