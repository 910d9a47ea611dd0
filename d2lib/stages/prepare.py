"""Stage ``prepare`` (lesson ``01_video_data``): render the training split, decode every video once.

The val/test benchmark comes from ``data/shapes`` (tracked by ``data.dvc``); the training split is
rendered here from params (``world`` + ``prepare``) with seeds below the benchmark's. Each split's
videos are then decoded once at ``prepare.decode_fps`` and resized to ``prepare.decode_size``
into ``artifacts/prepare/frames_{split}.npz`` — later stages never touch video again.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from d2lib.world import datasets, synth
from d2lib.core import timing


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    """Write JSON via a temp file in the same folder + ``os.replace`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def render_train_split(world: "synth.WorldConfig", prep: "datasets.PrepareConfig", progress: bool = True) -> Path:
    """Render ``prep.train_videos`` training videos into ``artifacts/prepare/train`` (fresh folder)."""
    out = datasets.shapes_split_dir("train")
    if out.exists():
        shutil.rmtree(out)
    synth.render_split(out, prep.train_videos, prep.train_seed, world, "train", progress=progress,
                       workers=prep.resolved_workers())
    return out


def run(world: "synth.WorldConfig", prep: "datasets.PrepareConfig", progress: bool = True) -> dict:
    """Render the training split, build the three frame caches; return a summary for metrics.

    Returns ``{split: {videos, records, tasks, frames, repairs}}``: only what the same params and data
    reproduce. The wall times (``render_s``, ``decode_s``) go to the timing log ``prepare``
    (:mod:`d2lib.core.timing`), which DVC does not hash.
    """
    summary: dict = {}
    with timing.timer() as render:
        render_train_split(world, prep, progress)
    with timing.timer() as decode:
        for split in datasets.SPLITS:
            loaded = datasets.load_shapes(datasets.shapes_split_dir(split))
            out = datasets.build_frame_cache(
                loaded.records, loaded.root, datasets.frame_cache_path(split), fps=prep.decode_fps,
                size=prep.decode_size, tolerance=prep.frame_tolerance, compress=prep.cache_compress,
                progress=progress)
            cache = datasets.load_frame_cache(out)
            frames = sum(len(cache[v]) for v in cache)
            summary[split] = {
                "videos": len(loaded.metas),
                "records": len(loaded.records),
                "tasks": dict(Counter(r["task"] for r in loaded.records)),
                "frames": frames,
                "repairs": dict(loaded.report.repairs),
            }
    timing.log("prepare", render_s=render.seconds, decode_s=decode.seconds, workers=prep.resolved_workers())
    return summary
