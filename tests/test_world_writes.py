"""The Shapes world's writers (d2lib.world.synth, d2lib.world.masks) go through d2lib.core.io: a failed write
leaves the previous file untouched and no temporary behind, and the files hold the same bytes as before
(JSON with ``indent=1`` and no final newline, as the versioned benchmark in data.dvc was written)."""
import json
import shutil

import numpy as np
import pytest

from d2lib.world import masks, synth


def test_write_mp4_failure_keeps_the_old_video(tmp_path, monkeypatch):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    monkeypatch.setattr(synth, "_ffmpeg", lambda: shutil.which("false"))  # an encoder that always fails
    with pytest.raises(RuntimeError, match=r"ffmpeg failed writing .*v\.mp4"):
        synth.write_mp4(np.zeros((2, 16, 16, 3), np.uint8), out, fps=1)
    assert out.read_bytes() == b"old video" and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_mask_cache_failure_keeps_the_old_cache(tmp_path, monkeypatch):
    out = tmp_path / "masks.npz"
    out.write_bytes(b"old cache")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # even an interrupt midway leaves no partial file

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        masks.write_mask_cache(out, {"v.mp4": np.ones((1, 2, 8, 8), bool)})
    assert out.read_bytes() == b"old cache" and [p.name for p in tmp_path.iterdir()] == ["masks.npz"]
    monkeypatch.undo()
    masks.write_mask_cache(out, {"v.mp4": np.ones((1, 2, 8, 8), bool)})  # the next write replaces it
    assert masks.read_mask_cache(out).masks["v.mp4"].all() and [p.name for p in tmp_path.iterdir()] == ["masks.npz"]


def test_render_split_files_keep_their_bytes(tmp_path):
    cfg = synth.WorldConfig(min_duration=8, max_duration=8, min_events=2, max_events=2)
    records, metas = synth.render_split(tmp_path, 1, 3, cfg, "val")
    assert (tmp_path / "annotations.json").read_text() == json.dumps(records, indent=1)
    assert (tmp_path / "meta.json").read_text() == json.dumps(metas, indent=1)
    yc = synth.export_youcook2(records, metas, synth.SUBSETS["val"])
    assert (tmp_path / "youcook2.json").read_text() == json.dumps(yc, indent=1)
    lines = synth.export_charades(records)
    assert lines and (tmp_path / "charades.txt").read_text() == "".join(line + "\n" for line in lines)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        ["annotations.json", "charades.txt", "meta.json", "val_00000.mp4", "youcook2.json"]
