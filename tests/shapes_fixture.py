"""A tiny in-memory Shapes split for unit tests: real records (``synth.make_records``) and random
uint8 frames at 1 fps, 32×32 — no rendering, no artifacts, no video decoding."""
import numpy as np
import torch

from d2lib.world import synth


def tiny_split(n_videos: int = 3, duration: int = 16, seed: int = 7):
    """``(records, frames)``: every task of ``n_videos`` Shapes videos and ``{video: (T, 32, 32, 3)}``."""
    cfg = synth.WorldConfig(min_events=2, max_events=3, max_duration=duration)
    records, frames = [], {}
    for k in range(n_videos):
        spec = synth.sample_video(seed + k, cfg, duration=duration - k)  # different lengths
        name = f"videos/t_{k:02d}.mp4"
        records += synth.make_records(spec, name, start_idx=len(records))
        rng = np.random.default_rng(seed + k)
        frames[name] = torch.from_numpy(rng.integers(0, 255, (spec.duration, 32, 32, 3), dtype=np.uint8))
    return records, frames
