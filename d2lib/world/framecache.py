"""The frame cache: every video of a split decoded once, into one ``.npz`` that later stages read.

Taught in lesson ``01_video_data`` (stage ``prepare`` builds the caches, :mod:`d2lib.stages.prepare`).
A cache holds a uint8 ``(T, H, W, 3)`` array per video, keyed by the record's ``video`` field, plus a
small JSON entry (:data:`CACHE_META`) with the decode ``fps``/``size`` and the shapes. It is a zip of
``.npy`` entries with fixed timestamps, so the same frames always give the same bytes (and the same
DVC hash); stored uncompressed, :class:`FrameCache` memory-maps each array instead of reading it.
Frame ``t`` is second ``t / fps``; :func:`check_frame_count` makes sure the decode agrees with the
record's ``duration``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from d2lib.core import io
from d2lib.world.records import DatasetError, DatasetFileNotFound, probe_duration, video_path

__all__ = ["CACHE_META", "CACHE_DATE", "expected_frames", "check_frame_count", "build_frame_cache", "FrameCache",
           "load_frame_cache"]

log = logging.getLogger(__name__)

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
    :func:`check_frame_count`) or bare video names (durations probed). The file is written
    atomically (:func:`d2lib.core.io.atomic_file`): a failure midway leaves no partial cache and an
    existing one untouched. A missing/corrupt video raises ``d2lib.world.video.VideoError``.
    Stored uncompressed by default so :func:`load_frame_cache` can memory-map it.
    """
    from tqdm import tqdm

    from d2lib.world import video  # lazy: decord is needed only here

    root, out = Path(video_root), Path(out_path)
    want = _videos_and_durations(list(items), root)
    if not want:
        raise DatasetError(f"{out}: nothing to cache (no videos given)")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with io.atomic_file(out) as tmp, zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
        shapes = {}
        for v, d in tqdm(want.items(), desc=f"decode → {out.name}", unit="video", disable=not progress):
            path = video_path(v, root)
            frames = video.read_frames(path, fps=fps, size=size)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DatasetError(f"{path}: read_frames returned {frames.dtype} {frames.shape}, "
                                   "expected uint8 (T, H, W, 3)")
            if d is None:
                d = probe_duration(path)
            check_frame_count(str(path), len(frames), d, fps, tolerance)
            _write_npy(zf, v, frames)
            shapes[v] = list(frames.shape)
        meta = {"fps": fps, "size": size, "n_videos": len(shapes), "shapes": shapes}
        # a ZipInfo of its own: ``writestr(name, ...)`` would stamp the entry with the wall clock, and
        # the same frames would give another file (and another DVC hash) on every run
        zf.writestr(zipfile.ZipInfo(CACHE_META, date_time=CACHE_DATE), json.dumps(meta, sort_keys=True),
                    compress_type=method)
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
