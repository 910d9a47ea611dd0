"""d2lib.world.framecache: every video decoded once into one .npz — frames are seconds, stale or corrupt
caches are named, a failed build leaves nothing behind, and the same frames give the same bytes."""
import os
import zipfile

import numpy as np
import pytest

from d2lib.world.framecache import CACHE_DATE, CACHE_META, build_frame_cache, load_frame_cache
from d2lib.world.records import DatasetError, DatasetFileNotFound
from records_fixture import dvc, tvg, write_mp4


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_mp4(root / "videos" / "a.mp4", seconds=4)
    write_mp4(root / "videos" / "b.mp4", seconds=3)
    return root


def test_frame_cache_round_trip(clips, tmp_path):
    recs = [tvg(0, video="videos/a.mp4", duration=4, tgt=[1, 2]), tvg(1, video="videos/b.mp4", duration=3, tgt=[0, 1]),
            dvc(2, video="videos/a.mp4", duration=4, tgt=[[0, 1], [2, 3]])]
    out = build_frame_cache(recs, clips, tmp_path / "cache" / "frames_val.npz", fps=1.0, size=32,
                                     progress=False)
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["frames_val.npz"]
    with load_frame_cache(out) as cache:
        assert sorted(cache) == ["videos/a.mp4", "videos/b.mp4"]
        a = cache["videos/a.mp4"]
        assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8 and isinstance(a, np.memmap)
        # frame t is second t: the source frame 4t has brightness 40 t (H.264 is lossy: ±4)
        assert np.abs(a.reshape(4, -1).mean(1) - [0, 40, 80, 120]).max() < 4
        assert cache["videos/b.mp4"].shape[0] == 3 and cache.meta["fps"] == 1.0
        with pytest.raises(KeyError, match="nope"):
            cache["nope"]
    with pytest.raises(DatasetError, match=r"frames_val\.npz: cache was decoded with size=32, expected 64"):
        load_frame_cache(out, fps=1.0, size=64)
    eager = load_frame_cache(out, mmap=False, fps=1.0, size=32)
    np.testing.assert_array_equal(eager["videos/a.mp4"], a)
    with np.load(out) as z:  # plain numpy can read it too
        np.testing.assert_array_equal(z["videos/b.mp4"], eager["videos/b.mp4"])
    # bare video names: durations are probed
    out2 = build_frame_cache(["videos/b.mp4"], clips, tmp_path / "f2.npz", size=16, compress=True,
                                      progress=False)
    assert load_frame_cache(out2)["videos/b.mp4"].shape == (3, 16, 16, 3)


def test_frame_cache_frame_count_mismatch(clips, tmp_path):
    recs = [tvg(0, video="videos/a.mp4", duration=8, tgt=[1, 2])]
    with pytest.raises(DatasetError, match=r"a\.mp4: decoded 4 frames .* = 8"):
        build_frame_cache(recs, clips, tmp_path / "f.npz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_frame_cache_missing_video_names_file_and_leaves_nothing(clips, tmp_path):
    from d2lib.world.video import VideoError

    recs = [tvg(0, video="videos/a.mp4", duration=4), tvg(1, video="videos/gone.mp4", duration=4)]
    with pytest.raises(VideoError, match="gone.mp4"):
        build_frame_cache(recs, clips, tmp_path / "f.npz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_frame_cache_atomic_on_midway_failure(clips, tmp_path, monkeypatch):
    from d2lib.world import video

    out = tmp_path / "frames_train.npz"
    out.write_bytes(b"old cache")  # an existing cache survives a failed rebuild untouched
    real, calls = video.read_frames, []

    def flaky(path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # even an interrupt leaves no partial file
        return real(path, **kw)

    monkeypatch.setattr(video, "read_frames", flaky)
    recs = [tvg(0, video="videos/a.mp4", duration=4), tvg(1, video="videos/b.mp4", duration=3)]
    with pytest.raises(KeyboardInterrupt):
        build_frame_cache(recs, clips, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["frames_train.npz"] and out.read_bytes() == b"old cache"


def test_load_frame_cache_missing_or_corrupt(clips, tmp_path):
    with pytest.raises(DatasetFileNotFound, match="frames_val.npz"):
        load_frame_cache(tmp_path / "frames_val.npz")
    bad = tmp_path / "frames_test.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match=r"frames_test\.npz: not a readable frame cache"):
        load_frame_cache(bad)
    good = build_frame_cache([tvg(0, video="videos/b.mp4", duration=3)], clips, tmp_path / "g.npz",
                                      progress=False)
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: the zip directory is gone
    with pytest.raises(DatasetError, match=r"frames_test\.npz"):
        load_frame_cache(bad)
    assert zipfile.is_zipfile(good) and os.path.getsize(good) > 3 * 32 * 32 * 3


def test_frame_cache_built_twice_is_byte_identical(clips, tmp_path, monkeypatch):
    """No wall clock in the file: the same frames give the same bytes (and the same DVC hash), whatever the
    time of the build — including the metadata entry, the one a plain ``writestr`` would stamp."""
    import time
    import zipfile
    recs = [tvg(0, video="videos/a.mp4", duration=4, tgt=[1, 2]), tvg(1, video="videos/b.mp4", duration=3, tgt=[0, 1])]
    for compress in (False, True):
        first = build_frame_cache(recs, clips, tmp_path / f"one_{compress}.npz", compress=compress, progress=False)
        later = time.time() + 3 * 3600  # a build three hours later
        monkeypatch.setattr(time, "time", lambda: later)
        monkeypatch.setattr(time, "localtime", lambda t=None: time.gmtime(later))
        second = build_frame_cache(recs, clips, tmp_path / f"two_{compress}.npz", compress=compress, progress=False)
        monkeypatch.undo()
        assert first.read_bytes() == second.read_bytes()
        with zipfile.ZipFile(first) as zf:
            assert {i.date_time for i in zf.infolist()} == {CACHE_DATE}
            assert CACHE_META in zf.namelist()
