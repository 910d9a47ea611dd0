"""d2lib.world.video: frame t of a 1-fps decode is second t; resize/crop; clear errors naming the file."""
import subprocess

import numpy as np
import pytest

from d2lib.world import synth, video
from d2lib.world.video import VideoError

FPS = 4


def _coded_frames(n: int, size: int = 32) -> np.ndarray:
    """Frame i is flat gray 3*i, so the decoded level tells the index (gray survives the
    RGB -> YUV 4:2:0 -> RGB round trip within +-1)."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[:] = (3 * np.arange(n))[:, None, None, None]
    return frames


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A 20-s, 4-fps clip (80 frames) with the frame index coded in its colour."""
    path = tmp_path_factory.mktemp("video") / "coded.mp4"
    synth.write_mp4(_coded_frames(20 * FPS), path, fps=FPS, crf=10)
    return path


def _decoded_index(frames: np.ndarray) -> np.ndarray:
    return np.rint(frames.reshape(len(frames), -1).mean(1) / 3).astype(int)


def test_probe(coded):
    info = video.probe(coded)
    assert (info.n_frames, info.width, info.height) == (80, 32, 32)
    assert info.fps == pytest.approx(4.0) and info.duration == pytest.approx(20.0)


def test_one_fps_frame_t_is_second_t(coded):
    frames = video.read_frames(coded, fps=1.0)
    assert frames.shape == (20, 32, 32, 3) and frames.dtype == np.uint8
    assert _decoded_index(frames).tolist() == [FPS * t for t in range(20)]


def test_other_rates_and_size(coded):
    frames = video.read_frames(coded, fps=2.0, size=16)
    assert frames.shape == (40, 16, 16, 3)
    assert _decoded_index(frames).tolist() == [2 * t for t in range(40)]
    assert _decoded_index(video.read_frames(coded, fps=4.0)).tolist() == list(range(80))


def test_shapes_video_decodes_to_rendered_seconds(tmp_path):
    cfg = synth.WorldConfig(noise=0.0)
    spec = synth.sample_video(3, cfg, duration=16)
    rendered = synth.render_frames(spec, cfg)  # (64, 64, 64, 3) at 4 fps
    synth.write_mp4(rendered, tmp_path / "s.mp4", cfg.render_fps, crf=cfg.crf)
    frames = video.read_frames(tmp_path / "s.mp4")
    assert frames.shape == (16, 64, 64, 3)
    err = np.abs(frames.astype(float) - rendered[:: cfg.render_fps].astype(float)).mean(axis=(1, 2, 3))
    assert err.max() < 4.0


def test_pyav_fallback_only_when_decord_cannot_open(coded, monkeypatch):
    ref = video.read_frames(coded)

    def refuse(path, *a, **k):
        raise VideoError(f"{path}: decord says no")

    monkeypatch.setattr(video, "_open_decord", refuse)
    frames = video.read_frames(coded)  # PyAV fallback
    assert frames.shape == ref.shape and np.abs(frames.astype(int) - ref).max() <= 3
    monkeypatch.setattr(video, "_pyav_info", lambda path: None)  # PyAV fails too -> decord's error
    with pytest.raises(VideoError, match="decord says no"):
        video.read_frames(coded)


def test_sample_indices():
    assert video.sample_indices(160, 4.0).tolist() == list(range(0, 160, 4))
    assert video.sample_indices(161, 4.0).tolist()[-1] == 160  # second 40 exists
    assert len(video.sample_indices(300, 29.97)) == 10  # last frame is at 9.98 s: seconds 0..9
    assert len(video.sample_indices(301, 29.97)) == 11  # frame 300 is second 10.01 -> rounds to it
    assert video.sample_indices(0, 4.0).size == 0
    assert video.sample_indices(100, 3.9999, 4.0).tolist() == list(range(100))  # fps rounding slack
    with pytest.raises(VideoError, match="above the source fps"):
        video.sample_indices(100, 4.0, 5.0)


def test_index_seconds_roundtrip():
    t = video.frame_times(12, fps=4.0)
    assert video.seconds_to_index(t, fps=4.0).tolist() == list(range(12))
    assert video.seconds_to_index(0.125, fps=4.0) == 1  # halves round up
    assert video.seconds_to_index([-3, 50], fps=1.0, n_frames=10).tolist() == [0, 9]


def test_resize_and_crop():
    frames = np.zeros((3, 48, 96, 3), np.uint8)
    frames[:, :, 24:72] = 200  # centre half of the width is bright
    out = video.resize_frames(frames, 32)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert out[:, :, 1:-1].min() == 200  # the crop kept only the bright centre (edges: antialias blur)
    squashed = video.resize_frames(frames, 32, crop=False)
    assert squashed.shape == (3, 32, 32, 3) and squashed[:, :, 0].max() < 50  # edges stay dark
    tall = video.resize_frames(np.zeros((1, 100, 40, 3), np.uint8), 20)
    assert tall.shape == (1, 20, 20, 3)
    assert video.resize_frames(np.zeros((0, 8, 8, 3), np.uint8), 4).shape == (0, 4, 4, 3)


# ----------------------------------------------------------------------------- bad inputs

def _ffmpeg(*args):
    subprocess.run([synth._ffmpeg(), "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def _bad_files(tmp_path, coded):
    data = coded.read_bytes()
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    _ffmpeg("-i", coded, "-c", "copy", "-movflags", "+faststart", tmp_path / "fast.mp4")
    fast = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "fast_truncated.mp4").write_bytes(fast[: len(fast) // 2])  # index intact, data cut
    src = ["-f", "lavfi", "-i", "color=c=red:s=32x32:r=4", "-frames:v", "0", "-c:v", "libx264"]
    _ffmpeg(*src, tmp_path / "zero_frames.mp4")  # mp4 without a video stream
    _ffmpeg(*src, tmp_path / "zero_frames.avi")  # a video stream with no frames
    return {
        "missing.mp4": "not found", "random.mp4": "corrupt", "truncated.mp4": "truncated",
        "empty.mp4": "corrupt", "fast_truncated.mp4": "truncated",
        "zero_frames.mp4": "zero frames", "zero_frames.avi": "zero frames",
    }


def test_bad_inputs_raise_video_error_naming_the_file(tmp_path, coded):
    for name, reason in _bad_files(tmp_path, coded).items():
        with pytest.raises(VideoError) as e:
            video.read_frames(tmp_path / name)
        assert name in str(e.value) and reason in str(e.value), (name, str(e.value))
        if name != "fast_truncated.mp4":  # probe decodes only frame 0, which survives there
            with pytest.raises(VideoError, match=name):
                video.probe(tmp_path / name)


def test_fps_above_source_names_the_file(coded):
    with pytest.raises(VideoError, match=r"coded\.mp4.*above the source fps"):
        video.read_frames(coded, fps=8.0)
