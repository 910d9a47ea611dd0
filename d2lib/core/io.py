"""Atomic writes: one helper for every file and folder the library writes.

A reader — the next stage, a resumed run, DVC hashing an output — must never see half a file. Every
writer here writes to a temporary name in the target folder, flushes and fsyncs it, and moves it into
place with ``os.replace`` (atomic on one file system); if anything fails, the temporary is removed and
the previous file, if any, is untouched. The serialisation itself is the caller's (``json.dumps``
arguments, ``DataFrame.to_csv`` arguments, ``savefig`` arguments), so moving a writer here never
changes the bytes it writes.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_json(d / "a.json", {"b": 1}, indent=1).read_text()
'{\\n "b": 1\\n}'
>>> sorted(p.name for p in d.iterdir())  # no temporary left behind
['a.json']
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_file", "atomic_dir", "file_sha256", "write_text", "write_bytes", "write_json", "write_csv",
           "save_torch", "save_figure", "write_with"]


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is fsynced and moved onto ``path``.

    The temporary's name ends in ``.tmp``: a writer that infers a format from the file name
    (``savefig``) must be given the format explicitly (:func:`save_figure` does). The file gets the
    permissions a plain ``open`` would give it (``mkstemp`` alone makes it private).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder ``<path>.tmp``; on a clean exit it replaces ``path``.

    A folder that already exists at ``path`` is moved aside first and removed only after the new one is
    in place, so a crash leaves either the old folder or the new one (plus, at worst, a ``.old`` or
    ``.tmp`` folder that the next run removes).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` → ``path`` atomically. Returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) → ``path`` atomically. Returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, newline: bool = False, **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` (plus a final newline if ``newline``) → ``path`` atomically."""
    return write_text(path, json.dumps(obj, **dumps) + ("\n" if newline else ""))


def write_csv(df: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """``df.to_csv(tmp, **to_csv)`` moved onto ``path`` (``index=False`` unless given). Returns ``path``."""
    to_csv.setdefault("index", False)
    with atomic_file(path) as tmp:
        df.to_csv(tmp, **to_csv)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically, with the bytes a plain ``torch.save(obj, path)`` writes.

    torch names the archive inside the file after the file's name, so the object is saved under
    ``path``'s own name in a temporary folder beside it and that file is moved into place.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        torch.save(obj, tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def save_figure(fig: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """``fig.savefig`` atomically, the format taken from ``path``'s suffix. Returns ``path``."""
    path = Path(path)
    savefig.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, **savefig)
    return path


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Any writer that takes a path (``writer(tmp)``), made atomic. Returns ``path``."""
    with atomic_file(path) as tmp:
        writer(tmp)
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint markers, the pinned MiniLM weights)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
