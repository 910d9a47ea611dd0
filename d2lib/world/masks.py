"""Exact per-object masks of Shapes videos, aligned with the decoded frames, and a compact mask cache.

Part of lesson 09, pixel grounding: the answers of the ``<seg>`` tasks (:mod:`d2lib.world.seg_records`) are
masks, and in the Shapes world they need no annotator — they follow from the world description
(:class:`d2lib.world.synth.VideoSpec`) with the very geometry the renderer draws.

**Which frames.** :func:`d2lib.world.synth.render_frames` draws frame ``i`` at second ``i / render_fps``
(``render_size`` pixels square). The frame sampler of :mod:`d2lib.world.video` decodes at ``decode_fps`` by
taking, for output frame ``k`` (time ``k / decode_fps``), the rendered frame with index
``round(k * render_fps / decode_fps)`` (halves up), keeping every ``k`` whose index exists. With the
default params (render 4 fps, decode 1 fps) decoded frame ``k`` *is* rendered frame ``4k``, the
state at exactly second ``k``; a 49-s video gives 49 decoded frames. :func:`object_masks` maps each
requested time to its nearest rendered frame the same way (``round(t * render_fps)``), so masks at the
decoded frames' times are the masks of exactly the frames the model sees; :func:`decoded_frame_times`
and :func:`video_masks` give those times / masks straight from the sampler. A time belongs to the
video when it is ``>= 0`` and its nearest rendered frame exists (the sampler's rule), else ValueError.

**Which pixels.** The renderer blends each object over the frame in ``spec.objects`` order (later
objects on top) with opacity ``a = coverage * alpha``: ``coverage`` is the anti-aliased shape coverage
of :func:`d2lib.world.synth._coverage` and ``alpha`` the fade of ``appear`` / ``disappear``. A pixel's colour
is therefore a weighted sum of the background and the objects' colours, object ``i`` weighing
``w_i = a_i * prod_{j drawn after i} (1 - a_j)`` (:func:`object_weights`). Decoding resizes the
``render_size`` frame to ``decode_size`` with antialiased bilinear filtering
(:func:`d2lib.world.video.resize_frames`; the frame is square, so its centre crop removes nothing), a linear
filter, so the decoded pixel is the same weighted sum with the weights filtered the same way — which
is what :func:`object_weights` does when ``size != render_size``.

The **mask rule**: a pixel belongs to object ``i`` when at least half of its colour is object
``i``'s, ``w_i >= 0.5``. The mask is thus the object's *visible* pixels: an object covered by one
drawn later loses the covered pixels, an object fading in joins its mask once it is half opaque, an
invisible object (before its ``appear``, after its ``disappear``) has an empty mask. For one opaque
object at render size the rule is ``coverage >= 0.5``, i.e. the pixel centre lies inside the shape.
The weights of all objects and the background sum to 1, so two objects can both reach 0.5 only on an
exact tie; the pixel then goes to the object drawn later, and the masks never overlap. At the decode
size the filter spreads each rendered pixel over its neighbours, so a corner or a thin triangle tip
whose decoded pixels are less than half the object's colour stays out of the mask (the square below
loses its four corner pixels): the mask describes the decoded frame, not the ideal shape.

What the rule cannot see: the Gaussian pixel noise (``world.noise``), H.264 (``crf``, 4:2:0 chroma at
half resolution) and uint8 rounding act on the decoded frames but not on the masks; they blur the
colours of edge pixels whose weight is close to 0.5.

Storage: :func:`pack_masks` / :func:`unpack_masks` (``np.packbits``, 8 pixels a byte) and
:func:`write_mask_cache` / :func:`read_mask_cache`, one ``.npz`` written atomically with the same bytes
for the same masks (numpy's ``savez`` stamps every zip entry with the fixed date 1980-01-01 and entries
are written in sorted order).

>>> from d2lib.world.synth import ObjectSpec, VideoSpec, WorldConfig
>>> spec = VideoSpec(duration=4, objects=(ObjectSpec(0, "square", "red", 0.5, 0.5, 0.1),), events=())
>>> m = object_masks(spec, WorldConfig(), [0, 3], size=32)
>>> m.shape, m.dtype, int(m[0, 0].sum())   # 5.4 px across at 32 px: 6 x 6 less the 4 blurred corners
((1, 2, 32, 32), dtype('bool'), 32)
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from d2lib.core import io
from d2lib.world import video as videolib
from d2lib.world.synth import VideoSpec, WorldConfig, _coverage, _window, track

__all__ = [
    "MIN_SIZE", "MASK_THRESHOLD", "decoded_frame_times", "render_indices", "object_weights", "object_masks",
    "video_masks", "pack_masks", "unpack_masks", "MaskCache", "write_mask_cache", "read_mask_cache",
    "build_mask_cache",
]

MIN_SIZE = 8  # smallest mask side (the smallest prepare.decode_size)
MASK_THRESHOLD = 0.5  # a pixel is an object's when at least this share of its colour is the object's
CACHE_META = "__meta__"
_SEP = "::"  # npz key = video + _SEP + field


def _name(spec: VideoSpec, video: str | None) -> str:
    """How errors name a video: its path when given, else its seed."""
    return video if video else f"video with seed {spec.seed}"


# ----------------------------------------------------------------------------------------- frames

def decoded_frame_times(duration: float, cfg: WorldConfig, fps: float = 1.0) -> np.ndarray:
    """Times (seconds) of the frames :func:`d2lib.world.video.read_frames` returns at ``fps`` for a Shapes
    video of ``duration`` seconds rendered with ``cfg``: frame ``k`` is time ``k / fps``; shape ``(T,)``.

    >>> decoded_frame_times(5, WorldConfig()).tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0]
    >>> decoded_frame_times(3, WorldConfig(), fps=2.0).tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    """
    n = int(round(duration * cfg.render_fps))
    return np.arange(len(videolib.sample_indices(n, cfg.render_fps, fps)), dtype=np.float64) / fps


def render_indices(spec: VideoSpec, cfg: WorldConfig, times, video: str | None = None) -> np.ndarray:
    """Index of the rendered frame at each time: ``round(t * render_fps)``, halves up, as the frame
    sampler picks them; shape ``(T,)``. ValueError (naming the video) for a time that is not finite,
    negative, or whose nearest frame lies past the last one.

    >>> spec = VideoSpec(duration=4, objects=(), events=())
    >>> render_indices(spec, WorldConfig(), [0, 1, 2.5, 3.8]).tolist()   # frames at 0, 0.25, ..., 3.75 s
    [0, 4, 10, 15]
    >>> render_indices(spec, WorldConfig(), [3.9], video="v.mp4")
    Traceback (most recent call last):
    ...
    ValueError: v.mp4: time 3.9 s is outside the video (16 frames at 4 fps: times in [0, 3.875) s map to a frame)
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"{_name(spec, video)}: times must be a 1-D list of seconds, got shape {t.shape}")
    n = spec.duration * cfg.render_fps
    finite = np.isfinite(t)
    idx = videolib.seconds_to_index(np.where(finite, t, 0.0), cfg.render_fps)
    bad = ~finite | (t < 0) | (idx > n - 1)
    if bad.any():
        raise ValueError(f"{_name(spec, video)}: time {t[bad][0]:g} s is outside the video ({n} frames at "
                         f"{cfg.render_fps} fps: times in [0, {(n - 0.5) / cfg.render_fps:g}) s map to a frame)")
    return idx


# ----------------------------------------------------------------------------------------- masks

def _check_size(spec: VideoSpec, size, video: str | None) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"{_name(spec, video)}: mask size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    return int(size)


def _check_objects(spec: VideoSpec, objects, video: str | None) -> list[int]:
    """Positions in ``spec.objects`` of the requested object ids (all when None)."""
    ids = [o.id for o in spec.objects]
    if objects is None:
        return list(range(len(ids)))
    out = []
    for oid in objects:
        if isinstance(oid, bool) or not isinstance(oid, (int, np.integer)) or int(oid) not in ids:
            have = ", ".join(f"{o.id} ({o.colour} {o.shape})" for o in spec.objects) or "none"
            raise ValueError(f"{_name(spec, video)}: no object with id {oid!r} (its objects: {have})")
        out.append(ids.index(int(oid)))
    return out


def _resize(w: np.ndarray, size: int) -> np.ndarray:
    """``float32 (..., R, R)`` -> ``(..., size, size)`` with the decoder's filter
    (:func:`d2lib.world.video.interpolate`, as :func:`d2lib.world.video.resize_frames` uses it; a square frame needs no crop)."""
    import torch

    from d2lib.world.video import interpolate

    lead, r = w.shape[:-2], w.shape[-1]
    x = torch.from_numpy(np.ascontiguousarray(w.reshape(-1, 1, r, r), dtype=np.float32))
    return interpolate(x, size, size).numpy().reshape(*lead, size, size)


def _weights_at(spec: VideoSpec, cfg: WorldConfig, idx: np.ndarray, size: int) -> np.ndarray:
    """Colour weight of every object: ``float32 (n_objects, T, size, size)`` at rendered frames ``idx``."""
    r = cfg.render_size
    t = np.asarray(idx, dtype=np.int64) / cfg.render_fps  # the very floats render_frames uses
    opacity = np.zeros((len(spec.objects), len(t), r, r), np.float32)
    for k, o in enumerate(spec.objects):  # exactly render_frames' arithmetic
        tr = track(spec, o.id, t)
        rows, cols = _window(tr, o.shape, r)
        xs = np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5
        ys = np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5
        opacity[k][:, rows, cols] = _coverage(o.shape, tr, xs, ys, r) * tr["alpha"].astype(np.float32)[:, None, None]
    weights = np.empty_like(opacity)
    rest = np.ones(opacity.shape[1:], np.float32)  # share of the colour not yet taken by objects on top
    for k in range(len(spec.objects) - 1, -1, -1):  # top (drawn last) down
        weights[k] = opacity[k] * rest
        rest *= 1.0 - opacity[k]
    return weights if size == r else _resize(weights, size)


def object_weights(spec: VideoSpec, cfg: WorldConfig, times, size: int, objects: Sequence[int] | None = None,
                   video: str | None = None) -> np.ndarray:
    """Share of each pixel's colour that is each object's: ``float32 (n_objects, T, size, size)`` in [0, 1].

    Frame ``t`` is the rendered frame nearest ``times[t]`` (:func:`render_indices`); at ``size !=
    render_size`` the weights are filtered like a decoded frame (module docstring). Objects in the order
    of ``objects`` (ids; default every object in ``spec.objects`` order). What the objects leave is the
    background's share; a pixel's noise-free colour is ``sum_i w_i rgb_i + (1 - sum_i w_i) background``.

    >>> from d2lib.world.synth import ObjectSpec
    >>> spec = VideoSpec(2, (ObjectSpec(0, "circle", "red", 0.5, 0.5, 0.1),), ())
    >>> w = object_weights(spec, WorldConfig(), [0.0], size=64)
    >>> w.shape, float(w[0, 0, 32, 32]), float(w[0, 0, 0, 0])
    ((1, 1, 64, 64), 1.0, 0.0)
    """
    size = _check_size(spec, size, video)
    pick = _check_objects(spec, objects, video)
    idx = render_indices(spec, cfg, times, video)
    return _weights_at(spec, cfg, idx, size)[pick]


def _threshold(weights: np.ndarray) -> np.ndarray:
    """``w >= 0.5``; an exact tie between two objects goes to the later one (masks never overlap)."""
    masks = weights >= MASK_THRESHOLD
    taken = np.zeros(masks.shape[1:], bool)
    for k in range(len(masks) - 1, -1, -1):
        masks[k] &= ~taken
        taken |= masks[k]
    return masks


def object_masks(spec: VideoSpec, cfg: WorldConfig, times, size: int, objects: Sequence[int] | None = None,
                 video: str | None = None) -> np.ndarray:
    """Visible-pixel masks of the objects: ``bool (n_objects, T, size, size)``.

    ``times`` (seconds, shape ``(T,)``) pick the rendered frames as the frame sampler does (nearest frame,
    halves up), so at the decoded frames' times (:func:`decoded_frame_times`) mask frame ``t`` lines up
    with decoded frame ``t``; ``size`` is the decoded frame side (``prepare.decode_size``; ``>= 8``).
    A pixel is object ``i``'s when at least half of its colour is (``w_i >= 0.5``, see
    :func:`object_weights` and the module docstring): objects drawn later hide earlier ones, an
    invisible object has an empty mask, and no pixel belongs to two objects. ``objects``: the ids to
    return, in that order (default all, in ``spec.objects`` order); ``video`` names the video in errors.
    Raises ValueError for an unknown object id, a time outside the video or ``size < 8``.

    >>> from d2lib.world.synth import ObjectSpec, EventSpec
    >>> spec = VideoSpec(8, (ObjectSpec(0, "circle", "red", 0.5, 0.5, 0.1),),
    ...                  (EventSpec("appear", 0, 2, 4, "the red circle appears"),))
    >>> object_masks(spec, WorldConfig(), [0, 2, 3.5, 4], size=32).sum(axis=(2, 3)).tolist()  # alpha 0, 0, 3/4, 1
    [[0, 0, 32, 32]]
    >>> object_masks(spec, WorldConfig(), [0], size=32, objects=[3], video="v.mp4")
    Traceback (most recent call last):
    ...
    ValueError: v.mp4: no object with id 3 (its objects: 0 (red circle))
    """
    size = _check_size(spec, size, video)
    pick = _check_objects(spec, objects, video)
    idx = render_indices(spec, cfg, times, video)
    return _threshold(_weights_at(spec, cfg, idx, size))[pick]


def video_masks(spec: VideoSpec, cfg: WorldConfig, fps: float = 1.0, size: int = 32,
                video: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Masks of every object at every decoded frame: ``(masks bool (n_objects, T, size, size), times (T,))``.

    The frames are the sampler's own (:func:`d2lib.world.video.sample_indices` at ``fps``), so ``masks[:, k]``
    belongs to frame ``k`` of the frame cache built with ``decode_fps = fps``, ``decode_size = size``.
    """
    size = _check_size(spec, size, video)
    n = spec.duration * cfg.render_fps
    idx = videolib.sample_indices(n, cfg.render_fps, fps)
    times = np.arange(len(idx), dtype=np.float64) / fps
    return _threshold(_weights_at(spec, cfg, idx, size)), times


# ----------------------------------------------------------------------------------------- storage

def pack_masks(masks) -> np.ndarray:
    """Boolean masks of any shape -> ``uint8 (ceil(n_pixels / 8),)``, 8 pixels a byte (C order,
    ``np.packbits``, big-endian bit order; the unused bits of the last byte are 0).

    >>> m = np.zeros((2, 3, 4), bool); m[1, 2, 3] = m[0, 0, 0] = True
    >>> p = pack_masks(m); p.tolist()
    [128, 0, 1]
    >>> bool((unpack_masks(p, m.shape) == m).all())
    True
    """
    a = np.asarray(masks)
    if a.dtype != bool:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)) or not np.isin(a, (0, 1)).all():
            raise ValueError(f"masks must be boolean (or hold only 0/1), got dtype {a.dtype}")
        a = a.astype(bool)
    return np.packbits(a, axis=None)


def unpack_masks(packed, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pack_masks`: ``bool`` array of ``shape``. ValueError when ``packed`` is not a
    1-D ``uint8`` array of exactly ``ceil(prod(shape) / 8)`` bytes."""
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must hold sizes >= 0, got {shape}")
    p = np.asarray(packed)
    n = math.prod(shape)
    if p.dtype != np.uint8 or p.ndim != 1 or len(p) != (n + 7) // 8:
        raise ValueError(f"packed masks must be uint8 of shape ({(n + 7) // 8},) for masks of shape {shape}, "
                         f"got {p.dtype} {p.shape}")
    return np.unpackbits(p, count=n).astype(bool).reshape(shape)


class MaskCache(NamedTuple):
    """What :func:`read_mask_cache` returns: ``masks`` (video -> ``bool (n_objects, T, S, S)``),
    ``times`` (video -> ``float64 (T,)`` seconds, for the videos stored with times) and ``meta``."""

    masks: dict[str, np.ndarray]
    times: dict[str, np.ndarray]
    meta: dict


def write_mask_cache(path: str | os.PathLike, masks: Mapping[str, np.ndarray],
                     times: Mapping[str, Sequence[float]] | None = None, meta: Mapping | None = None) -> Path:
    """Write ``{video: bool (n_objects, T, S, S)}`` masks (packed) to one uncompressed ``.npz``.

    Entries per video: ``{video}::bits`` (:func:`pack_masks`), ``{video}::shape`` and, when ``times``
    has the video, ``{video}::times`` (one per frame); plus ``__meta__``, a JSON string holding ``meta``
    (JSON-able, e.g. fps and size) and the list of videos. Videos are written in sorted order and
    numpy stamps every entry with the fixed zip date 1980-01-01, so the same input gives the same bytes.
    Written atomically (:func:`d2lib.core.io.atomic_file`): a reader never sees half a cache.
    """
    path = Path(path)
    times = dict(times or {})
    arrays: dict[str, np.ndarray] = {}
    for v in sorted(masks):
        if not isinstance(v, str) or not v or _SEP in v or v == CACHE_META:
            raise ValueError(f"{path}: bad video key {v!r} (a non-empty string without {_SEP!r})")
        m = np.asarray(masks[v])
        if m.ndim != 4 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"{path}: masks of {v} must be shaped (n_objects, T, S, S), got {m.shape}")
        arrays[f"{v}{_SEP}bits"] = pack_masks(m)
        arrays[f"{v}{_SEP}shape"] = np.asarray(m.shape, dtype=np.int64)
        if v in times:
            t = np.asarray(times[v], dtype=np.float64)
            if t.shape != (m.shape[1],):
                raise ValueError(f"{path}: {v} has {m.shape[1]} mask frames but {t.shape} times")
            arrays[f"{v}{_SEP}times"] = t
    unknown = sorted(set(times) - set(masks))
    if unknown:
        raise ValueError(f"{path}: times given for videos without masks: {unknown[:3]}")
    info = {"meta": dict(meta or {}), "videos": sorted(masks)}
    arrays[CACHE_META] = np.asarray(json.dumps(info, sort_keys=True))
    with io.atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez(f, allow_pickle=False, **arrays)
    return path


def read_mask_cache(path: str | os.PathLike) -> MaskCache:
    """Read a cache written by :func:`write_mask_cache`. ValueError naming the file for a missing,
    corrupt or inconsistent one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: mask cache not found")
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive")
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z[CACHE_META]))
            masks, times = {}, {}
            for v in info["videos"]:
                shape = tuple(int(s) for s in z[f"{v}{_SEP}shape"])
                try:
                    masks[v] = unpack_masks(z[f"{v}{_SEP}bits"], shape)
                except ValueError as e:
                    raise ValueError(f"entry {v!r}: {e}") from None
                if f"{v}{_SEP}times" in z.files:
                    times[v] = z[f"{v}{_SEP}times"]
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError, TypeError) as e:
        raise ValueError(f"{path}: not a readable mask cache (corrupt or truncated?): {e}") from None
    return MaskCache(masks, times, info["meta"])


def build_mask_cache(path: str | os.PathLike, specs: Mapping[str, VideoSpec], cfg: WorldConfig,
                     fps: float = 1.0, size: int = 32) -> Path:
    """Masks of every object at every decoded frame (:func:`video_masks`) of each ``{video: spec}``,
    written with :func:`write_mask_cache`; ``meta`` records fps, size and the render settings."""
    masks, times = {}, {}
    for v, spec in specs.items():
        masks[v], times[v] = video_masks(spec, cfg, fps, size, video=v)
    meta = {"fps": fps, "size": size, "render_fps": cfg.render_fps, "render_size": cfg.render_size}
    return write_mask_cache(path, masks, times, meta)
