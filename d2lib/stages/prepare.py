"""Stage ``prepare`` (lesson ``01_video_data``): render the training split, decode every video once.

The val/test benchmark comes from ``data/shapes`` (tracked by ``data.dvc``); the training split is
rendered here from params (``world`` + ``prepare``) with seeds below the benchmark's. Each split's
videos are then decoded once at ``prepare.decode_fps`` and resized to ``prepare.decode_size``
into ``artifacts/prepare/frames_{split}.npz`` (:mod:`d2lib.world.framecache`) — later stages never
touch video again. The stage's params section ``prepare`` is :class:`PrepareConfig`.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from d2lib.core import config, timing
from d2lib.world import framecache, records, synth
from d2lib.world.synth import TRAIN_SEED_LIMIT  # training seeds live below it, the benchmark's at or above


@dataclass(frozen=True)
class PrepareConfig:
    """params.yaml section ``prepare`` (stage 01_video_data: render train split, decode, cache).

    ``train_videos``: Shapes videos rendered for training; ``train_seed``: base seed of the training
    split — video ``k`` uses seed ``train_seed + k`` (``d2lib.world.synth.render_split``), and every such
    seed must stay below ``TRAIN_SEED_LIMIT`` (1,000,000), where the benchmark's val/test seeds
    start, so no training video is a benchmark video; ``decode_fps``/``decode_size``: frames per second and square
    side in pixels read back with decord (frame t = second t at 1 fps); ``frame_tolerance``: allowed
    difference between decoded frames and ``floor(duration * fps)``; ``cache_compress``: zip-deflate
    the cache (smaller, but no memory mapping); ``workers``: processes rendering the training split
    (0: one per core this process may use; the videos are the same bytes for any number).
    """

    train_videos: int = 600
    train_seed: int = 0
    decode_fps: float = 1.0
    decode_size: int = 32
    frame_tolerance: int = 1
    cache_compress: bool = False
    workers: int = 0

    def resolved_workers(self) -> int:
        """``workers``, with 0 = the stage's declared cores (``OMP_NUM_THREADS``, which ``d2lib.core.numenv``
        sets from the stage's command), else the cores this process may run on. Any number renders
        the same bytes; this only keeps the stage within the cores the runner reserved for it."""
        declared = os.environ.get("OMP_NUM_THREADS", "")
        if declared.isdigit() and int(declared) > 0:
            return self.workers or int(declared)
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def __post_init__(self):
        config.check(1 <= self.train_videos <= 1_000_000, "prepare.train_videos",
                     f"must be in [1, 1000000], got {self.train_videos}")
        config.check(0 <= self.train_seed and self.train_seed + self.train_videos <= TRAIN_SEED_LIMIT,
                     "prepare.train_seed",
                     f"training seeds train_seed + k (k < train_videos = {self.train_videos}) must lie in "
                     f"[0, {TRAIN_SEED_LIMIT}); seeds >= {TRAIN_SEED_LIMIT} belong to the benchmark; "
                     f"got train_seed = {self.train_seed}")
        config.check(0 < self.decode_fps <= 30, "prepare.decode_fps", f"must be in (0, 30], got {self.decode_fps}")
        config.check(8 <= self.decode_size <= 1024, "prepare.decode_size",
                     f"must be in [8, 1024] pixels, got {self.decode_size}")
        config.check(0 <= self.frame_tolerance <= 10, "prepare.frame_tolerance",
                     f"must be in [0, 10], got {self.frame_tolerance}")
        config.check(0 <= self.workers <= 256, "prepare.workers", f"must be in [0, 256] (0: one per core), got {self.workers}")


def render_train_split(world: "synth.WorldConfig", prep: PrepareConfig, progress: bool = True) -> Path:
    """Render ``prep.train_videos`` training videos into ``artifacts/prepare/train`` (fresh folder)."""
    out = records.shapes_split_dir("train")
    if out.exists():
        shutil.rmtree(out)
    synth.render_split(out, prep.train_videos, prep.train_seed, world, "train", progress=progress,
                       workers=prep.resolved_workers())
    return out


def run(world: "synth.WorldConfig", prep: PrepareConfig, progress: bool = True) -> dict:
    """Render the training split, build the three frame caches; return a summary for metrics.

    Returns ``{split: {videos, records, tasks, frames, repairs}}``: only what the same params and data
    reproduce. The wall times (``render_s``, ``decode_s``) go to the timing log ``prepare``
    (:mod:`d2lib.core.timing`), which DVC does not hash.
    """
    summary: dict = {}
    with timing.timer() as render:
        render_train_split(world, prep, progress)
    with timing.timer() as decode:
        for split in records.SPLITS:
            loaded = records.load_shapes(records.shapes_split_dir(split))
            out = framecache.build_frame_cache(
                loaded.records, loaded.root, records.frame_cache_path(split), fps=prep.decode_fps,
                size=prep.decode_size, tolerance=prep.frame_tolerance, compress=prep.cache_compress,
                progress=progress)
            cache = framecache.load_frame_cache(out)
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
