"""Records for the data tests (tests/test_records.py, test_loaders.py, test_framecache.py): one
valid record per task family, written as JSON or as a tiny H.264 clip."""
import json

import numpy as np


def tvg(idx=0, **kw):
    rec = {"idx": idx, "task": "tvg", "source": "demo", "video": f"videos/v{idx}.mp4", "duration": 30,
           "tgt": [4, 9], "g": ["the red circle slides to the left"], "q": "When does it happen?"}
    rec.update(kw)
    return rec


def dvc(idx=0, **kw):
    rec = {"idx": idx, "task": "dvc", "source": "demo", "video": f"videos/v{idx}.mp4", "duration": 30,
           "tgt": [[1, 5], [8, 12]], "g": ["a appears", "b spins"], "q": "Describe the events."}
    rec.update(kw)
    return rec


def mcq(task="rar", idx=0, **kw):
    rec = {"idx": idx, "task": task, "source": "demo", "video": f"videos/v{idx}.mp4", "duration": 30,
           "src": [3, 8], "o": ["a", "b", "c", "d"], "p": 2, "q": "What happens in 3 - 8?"}
    if task == "gvq":
        rec["tgt"] = [3, 8]
    rec.update(kw)
    return rec


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def write_mp4(path, seconds=4, fps=4, size=64):
    """A tiny H.264 clip whose frame t has brightness 10 * t (so decoded seconds are checkable)."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    w = imageio_ffmpeg.write_frames(str(path), (size, size), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                    macro_block_size=16, ffmpeg_log_level="error")
    w.send(None)
    for t in range(seconds * fps):
        w.send(np.full((size, size, 3), (10 * t) % 256, np.uint8))
    w.close()
    return path
