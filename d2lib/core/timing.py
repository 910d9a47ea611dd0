"""Wall times and throughput of the stages, kept out of everything DVC hashes.

A stage's outputs must be a pure function of code, params, data and the numeric environment, so a
duration never goes into a metrics file, a ``loss.csv`` or an executed notebook. It goes here instead:
``artifacts/logs/timing/<name>.json``, a folder no stage declares (DVC neither hashes nor removes it),
which ``python -m d2lib.tools.bench`` reads.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> _ = log("ablation/full/0", root=d, train_s=12.5)
>>> _ = log("ablation/full/0", root=d, eval_s=3.25)
>>> read("ablation/full/0", root=d)["train_s"], read("ablation/full/0", root=d)["eval_s"]
(12.5, 3.25)
>>> sorted(read_all("ablation", root=d))
['ablation/full/0']
>>> with timer() as t:
...     pass
>>> t.seconds >= 0
True
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def folder(root: str | os.PathLike | None = None) -> Path:
    """``artifacts/logs/timing`` of the project (or ``root``)."""
    if root is not None:
        return Path(root)
    from d2lib.core import paths
    return paths.artifacts("logs", "timing", mkdir=False)


def path(name: str, root: str | os.PathLike | None = None) -> Path:
    """The log of ``name`` (a stage, a lesson notebook's stem, or ``<study>/<row>/<seed>`` for a cell)."""
    parts = [p for p in str(name).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"timing log name {name!r}: expected names like 'align' or 'ablation/full/0'")
    return folder(root).joinpath(*parts[:-1], parts[-1] + ".json")


def read(name: str, root: str | os.PathLike | None = None) -> dict:
    """What was logged for ``name`` ({} if nothing)."""
    p = path(name, root)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def log(name: str, root: str | os.PathLike | None = None, **values) -> Path:
    """Merge ``values`` (seconds, steps per second, ...; rounded to 4 decimals) into ``name``'s log,
    with the time they were logged; written atomically. Never call it on a path a stage declares."""
    p = path(name, root)
    p.parent.mkdir(parents=True, exist_ok=True)
    rec = read(name, root)
    rec.update({k: round(float(v), 4) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                for k, v in values.items()})
    rec["logged_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    from d2lib.evaluation.formats import write_json

    write_json(dict(sorted(rec.items())), p)
    return p


def read_all(prefix: str = "", root: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{name: log}`` of every log under ``prefix`` (e.g. ``"ablation"`` for its cells)."""
    base = folder(root)
    top = base.joinpath(*[p for p in prefix.split("/") if p])
    out = {}
    for p in sorted(top.rglob("*.json")) if top.is_dir() else []:
        name = p.relative_to(base).with_suffix("").as_posix()
        try:
            out[name] = json.loads(p.read_text())
        except ValueError:
            continue
    return out


def seconds(name: str, root: str | os.PathLike | None = None) -> dict[str, float]:
    """The wall times logged for ``name`` as ``{part: seconds}`` (``train_s`` → ``train``), the
    ``seconds`` dict of a stage result read back from disk (rates such as ``steps_per_s`` are not times).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = log("align", root=d, train_s=60.0, steps_per_s=1.5)
    >>> seconds("align", root=d)
    {'train': 60.0}
    """
    return {k[:-2]: v for k, v in read(name, root).items() if k.endswith("_s") and not k.endswith("_per_s")}


class timer:
    """``with timer() as t: ...`` then ``t.seconds`` (wall time, ``time.perf_counter``)."""

    def __enter__(self):
        self.t0, self.seconds = time.perf_counter(), 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


__all__ = ["log", "read", "read_all", "seconds", "timer", "path", "folder"]
