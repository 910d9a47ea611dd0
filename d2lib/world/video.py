"""Video decoding: probe a file, sample one frame per second, resize + centre-crop.

Taught in lesson ``01_video_data``. Decoding uses decord (``VideoReader.get_batch`` decodes a
whole batch of frame indices in one call); PyAV is a fallback used only when decord cannot open
a file that PyAV can read.

Conventions: at ``fps=1`` output frame ``t`` *is* second ``t`` of the video — it is
the source frame with index ``round(t * src_fps)``. Frames are ``uint8`` arrays of shape
``(T, H, W, 3)`` (RGB). Every failure is a :class:`VideoError` whose message names the file.

>>> sample_indices(n_frames=10, src_fps=4.0).tolist()   # a 2.5-s clip at 4 fps -> seconds 0, 1, 2
[0, 4, 8]
>>> frame_times(3, fps=1.0).tolist()
[0.0, 1.0, 2.0]
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FPS_TOLERANCE = 1e-3  # container fps values are often 3.9999..., not 4


class VideoError(Exception):
    """A video that cannot be read as asked; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reports about a video file."""

    n_frames: int
    fps: float
    duration: float  # seconds, n_frames / fps
    width: int
    height: int


# ----------------------------------------------------------------------------- index <-> seconds

def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.round rounds half to even (2.5 -> 2); times want 2.5 -> 3.
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def frame_times(n: int, fps: float) -> np.ndarray:
    """Time in seconds of frames ``0..n-1`` of a stream at ``fps``; shape ``(n,)``.

    >>> frame_times(4, fps=2.0).tolist()
    [0.0, 0.5, 1.0, 1.5]
    """
    return np.arange(n, dtype=np.float64) / fps


def seconds_to_index(seconds, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Nearest frame index of each time (``round(s * fps)``, halves up), clipped to
    ``[0, n_frames - 1]`` when ``n_frames`` is given. Same shape as ``seconds``.

    >>> seconds_to_index([0, 1.5, 2.49, 99], fps=4.0, n_frames=20).tolist()
    [0, 6, 10, 19]
    """
    idx = _round_half_up(np.asarray(seconds, dtype=np.float64) * fps)
    if n_frames is not None:
        idx = np.clip(idx, 0, n_frames - 1)
    return idx


def sample_indices(n_frames: int, src_fps: float, target_fps: float = 1.0) -> np.ndarray:
    """Source frame indices for resampling a ``src_fps`` stream to ``target_fps``; shape ``(T,)``.

    Output frame ``t`` is time ``t / target_fps`` (at 1 fps: second ``t``), taken from source
    index ``round(t * src_fps / target_fps)``. Every time whose index exists is kept, so a
    40-s clip at 4 fps (160 frames) gives ``T = 40`` at 1 fps.

    >>> sample_indices(160, 4.0).shape
    (40,)
    >>> sample_indices(9, 3.0, target_fps=2.0).tolist()   # times 0, 0.5, 1, ... -> 0, 1.5->2, 3, ...
    [0, 2, 3, 5, 6, 8]
    >>> sample_indices(10, 1.0, target_fps=2.0)
    Traceback (most recent call last):
    ...
    d2lib.world.video.VideoError: requested fps 2 is above the source fps 1
    """
    if target_fps <= 0 or src_fps <= 0:
        raise VideoError(f"fps must be positive (target {target_fps}, source {src_fps})")
    if target_fps > src_fps + FPS_TOLERANCE:
        raise VideoError(f"requested fps {target_fps:g} is above the source fps {src_fps:g}")
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    step = src_fps / target_fps  # source frames per output frame, >= 1
    n_out = int(np.floor((n_frames - 0.5) / step)) + 1  # last t with round(t*step) <= n_frames-1
    idx = _round_half_up(np.arange(n_out) * step)
    return idx[idx < n_frames]


# ----------------------------------------------------------------------------- transforms

def interpolate(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """The decoder's resampling filter on float ``(N, C, H, W)`` -> ``(N, C, out_h, out_w)``: bilinear with
    antialiasing and half-pixel centres. :func:`resize_frames` applies it to frames, :mod:`d2lib.world.masks` to
    each object's share of every pixel, so masks and frames go through the same filter.

    >>> interpolate(torch.ones(1, 1, 8, 8), 4, 4).shape
    torch.Size([1, 1, 4, 4])
    """
    return F.interpolate(x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)


def resize_frames(frames: np.ndarray, size: int, crop: bool = True) -> np.ndarray:
    """Resize ``uint8 (N, H, W, 3)`` frames to ``uint8 (N, size, size, 3)``.

    ``crop=True``: scale the short side to ``size`` (keeping the aspect ratio), then take the
    centre ``size x size`` square. ``crop=False``: scale both sides to ``size`` (squash).
    Bilinear with antialiasing (``F.interpolate``), so downscaling does not alias.

    >>> resize_frames(np.zeros((2, 48, 64, 3), np.uint8), 32).shape
    (2, 32, 32, 3)
    >>> resize_frames(np.full((1, 8, 8, 3), 200, np.uint8), 4)[0, :, :, 0].tolist()
    [[200, 200, 200, 200], [200, 200, 200, 200], [200, 200, 200, 200], [200, 200, 200, 200]]
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {frames.shape}")
    n, h, w, _ = frames.shape
    if (h, w) == (size, size) or n == 0:
        return frames.astype(np.uint8, copy=False) if n else np.zeros((0, size, size, 3), np.uint8)
    if crop:
        scale = size / min(h, w)
        out_h, out_w = max(size, round(h * scale)), max(size, round(w * scale))
    else:
        out_h, out_w = size, size
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    x = interpolate(x, out_h, out_w)
    top, left = (out_h - size) // 2, (out_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]  # (N, 3, size, size)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ----------------------------------------------------------------------------- decoding

def _decord():
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # silences FFmpeg's own log lines
    return decord


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError(f"{path}: file not found")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")


def _short(err: Exception) -> str:
    """The last line of a (multi-line, C++-flavoured) decord error, trimmed."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def _open_decord(path: str, num_threads: int = 1):
    """A decord ``VideoReader``; raises :class:`VideoError` (with the decord error chained)."""
    decord = _decord()
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as e:  # decord raises RuntimeError / DECORDError with C++ text
        raise VideoError(
            f"{path}: cannot open as a video (corrupt, truncated or not a video file): {_short(e)}"
        ) from e
    if len(vr) == 0:
        raise VideoError(f"{path}: video has zero frames")
    return vr


def _pyav_info(path: str) -> VideoInfo | None:
    """VideoInfo read by PyAV, or None when PyAV cannot open the file either.

    Raises :class:`VideoError` for a file PyAV opens but that has no video frames."""
    try:
        import av

        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: video has zero frames (no video stream)")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            n = sum(1 for _ in c.decode(s))  # stream.frames is unreliable; count by decoding
            w, h = s.codec_context.width, s.codec_context.height
    except VideoError:
        raise
    except Exception:
        return None
    if n == 0:
        raise VideoError(f"{path}: video has zero frames")
    return VideoInfo(n_frames=n, fps=fps, duration=n / fps if fps else 0.0, width=w, height=h)


def _pyav_frames(path: str, indices: np.ndarray) -> np.ndarray:
    """Frames at sorted ``indices`` decoded sequentially with PyAV; ``uint8 (len(indices), H, W, 3)``."""
    import av

    want, out = list(indices), []
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(video=0)):
            while want and want[0] == i:  # an index may repeat
                out.append(frame.to_ndarray(format="rgb24"))
                want.pop(0)
            if not want:
                break
    if want:
        raise VideoError(f"{path}: PyAV decoded fewer frames than expected (truncated file?)")
    return np.stack(out)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps, duration and frame size of a video (decord; PyAV if decord fails).

    Decodes one frame to learn the size."""
    path = str(path)
    _check_exists(path)
    try:
        vr = _open_decord(path)
    except VideoError as e:
        info = _pyav_info(path)
        if info is None:
            raise e
        return info
    try:
        h, w, _ = vr[0].shape
    except Exception as e:
        raise VideoError(f"{path}: decoding failed (corrupt or truncated file?): {_short(e)}") from e
    n, fps = len(vr), float(vr.get_avg_fps())
    return VideoInfo(n_frames=n, fps=fps, duration=n / fps, width=int(w), height=int(h))


def read_frames(path: str | os.PathLike, fps: float = 1.0, size: int | None = None,
                crop: bool = True, num_threads: int = 1) -> np.ndarray:
    """Decode a video at ``fps`` frames per second: ``uint8 (T, H, W, 3)``, frame ``t`` = time ``t/fps``.

    With ``size``, frames are resized (short side) and centre-cropped to ``size x size``
    (see :func:`resize_frames`). Decoding is one decord ``get_batch`` call over the indices
    from :func:`sample_indices`. Raises :class:`VideoError` (naming the file) for a missing,
    corrupt, truncated or zero-frame file and for ``fps`` above the source fps.
    """
    path = str(path)
    _check_exists(path)
    try:
        vr = _open_decord(path, num_threads)
    except VideoError as e:  # decord cannot open it: PyAV fallback, only if PyAV can
        info = _pyav_info(path)
        if info is None:
            raise e
        idx = _indices_for(path, info.n_frames, info.fps, fps)
        frames = _pyav_frames(path, idx)
    else:
        idx = _indices_for(path, len(vr), float(vr.get_avg_fps()), fps)
        try:
            frames = vr.get_batch(idx.tolist()).asnumpy()  # (T, H, W, 3) uint8
        except Exception as e:
            raise VideoError(f"{path}: decoding failed (corrupt or truncated file?): {_short(e)}") from e
    if size is not None:
        frames = resize_frames(frames, size, crop=crop)
    return frames


def _indices_for(path: str, n_frames: int, src_fps: float, fps: float) -> np.ndarray:
    """:func:`sample_indices` with the file named in its errors."""
    try:
        idx = sample_indices(n_frames, src_fps, fps)
    except VideoError as e:
        raise VideoError(f"{path}: {e}") from None
    if idx.size == 0:
        raise VideoError(f"{path}: video has zero frames")
    return idx

