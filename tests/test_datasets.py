"""d2lib.world.datasets: schema validation (repairs counted, errors name the file), loaders for
E.T. Bench / Shapes / Charades-STA / TimeIT / YouCook2, PrepareConfig, and the frame cache."""
import json
import logging
import os
import zipfile

import numpy as np
import pytest

from d2lib.core import config
from d2lib.world import datasets
from d2lib.core.config import ConfigError
from d2lib.world.datasets import DatasetError, DatasetFileNotFound, validate_record

# ----------------------------------------------------------------------------- helpers


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


# ----------------------------------------------------------------------------- validate_record


def test_valid_record_unchanged_and_copied():
    rec = tvg()
    fixed, repairs = validate_record(rec, "a.json")
    assert fixed == rec and repairs == [] and fixed is not rec
    assert isinstance(fixed["tgt"][0], int)  # unchanged values keep their type


def test_span_outside_clipped_and_counted():
    fixed, repairs = validate_record(tvg(tgt=[25, 41.5]), "a.json")
    assert fixed["tgt"] == [25, 30.0]
    assert [r.kind for r in repairs] == ["span_clipped"]
    fixed, repairs = validate_record(dvc(tgt=[[-2, 5], [8, 12]]), "a.json")
    assert fixed["tgt"] == [[0.0, 5], [8, 12]] and [r.kind for r in repairs] == ["span_clipped"]


def test_start_after_end_swapped_and_counted():
    fixed, repairs = validate_record(tvg(tgt=[9, 4]), "a.json")
    assert fixed["tgt"] == [4.0, 9.0] and [r.kind for r in repairs] == ["span_swapped"]


def test_other_repairs_are_reported():
    fixed, reps = validate_record(tvg(tgt=[[4, 9]]), "a.json")
    assert fixed["tgt"] == [4, 9] and [r.kind for r in reps] == ["tgt_unwrapped"]
    fixed, reps = validate_record(dvc(tgt=[[8, 12], [1, 5]], g=["b spins", "a appears"]), "a.json")
    assert fixed["tgt"] == [[1, 5], [8, 12]] and fixed["g"] == ["a appears", "b spins"]
    assert [r.kind for r in reps] == ["events_sorted"]
    fixed, reps = validate_record(mcq(src=[28, 35]), "a.json")
    assert fixed["src"] == [28, 30.0] and [r.kind for r in reps] == ["span_clipped"]
    fixed, reps = validate_record(tvg(tgt=[np.int64(2), np.float32(5.0)], idx=np.int64(7)), "a.json")
    assert fixed["tgt"] == [2, 5.0] and type(fixed["idx"]) is int and reps == []  # numpy → plain


@pytest.mark.parametrize("bad, match", [
    (tvg(g=[""]), r"empty caption g\[0\]"),
    (dvc(g=["a appears", "   "]), r"empty caption g\[1\]"),
    (dvc(g=["only one"]), r"len\(g\) = 1 but 'tgt' has 2 span"),
    (tvg(g=["a", "b"]), r"len\(g\) = 2"),
    (mcq(p=4), r"'p' = 4 is out of range for 4 options"),
    (mcq(p=-1), r"'p' = -1 is out of range"),
    (mcq(p=True), r"'p' must be an integer"),
    (mcq(o=["a", ""]), r"empty option o\[1\]"),
    ({k: v for k, v in mcq().items() if k != "p"}, r"missing required key 'p'"),
    ({k: v for k, v in tvg().items() if k != "video"}, r"missing required key 'video'"),
    ({k: v for k, v in tvg().items() if k != "tgt"}, r"missing required key 'tgt'"),
    ({k: v for k, v in dvc().items() if k != "g"}, r"missing required key 'g'"),
    (tvg(task="nope"), r"unknown task 'nope'"),
    (tvg(duration=0), r"'duration' must be a positive"),
    (tvg(q=" "), r"empty prompt"),
    (tvg(tgt=[1, float("nan")]), r"'tgt' must be one \[start, end\]"),
    (tvg(tgt=[[1, 2], [3, 4]]), r"'tgt' must be one \[start, end\]"),
    (dvc(tgt=[1, 2]), r"'tgt' must be a list of \[start, end\] pairs"),
    (dvc(tgt=[], g=[]), r"'tgt' is empty"),
])
def test_bad_records_raise_naming_file_and_idx(bad, match):
    with pytest.raises(DatasetError, match=match) as e:
        validate_record(bad, "ann/tvg_demo.json [3]")
    assert "ann/tvg_demo.json [3]" in str(e.value)
    if "idx" in bad:
        assert f"idx {bad['idx']}" in str(e.value)


def test_all_tasks_known_and_mcq_shapes():
    assert {"tvg", "epm", "tem", "tal", "evs", "vhd", "dvc", "slc", "rar", "eca", "rvq", "gvq"} <= set(datasets.TASKS)
    validate_record(mcq("gvq"), "a.json")
    fixed, reps = validate_record(mcq("eca", o=[[1, 4], [20, 40]], p=1), "a.json")  # time options
    assert fixed["o"][1] == [20, 30.0] and [r.kind for r in reps] == ["span_clipped"]
    vhd = {"idx": 0, "task": "vhd", "source": "qvh", "video": "v.mp4", "duration": 10, "q": "?",
           "tgt": [[[0, 2], [4, 12]], [[1, 3]]]}  # per-annotator lists
    fixed, reps = validate_record(vhd, "a.json")
    assert fixed["tgt"][0][1] == [4, 10.0] and len(reps) == 1


# ----------------------------------------------------------------------------- E.T. Bench


def test_load_etbench_file_and_report(tmp_path, caplog):
    f = write_json(tmp_path / "etbench_txt_v1.0.json", [tvg(0), tvg(1, tgt=[9, 4]), dvc(2, tgt=[[1, 5], [8, 99]]),
                                                       mcq("rar", 3)])
    with caplog.at_level(logging.INFO, logger="d2lib.world.datasets"):
        records, report = datasets.load_etbench(f)
    assert [r["idx"] for r in records] == [0, 1, 2, 3]
    assert records[1]["tgt"] == [4.0, 9.0] and records[2]["tgt"][1] == [8, 30.0]
    assert dict(report.repairs) == {"span_swapped": 1, "span_clipped": 1}
    assert report.n_records == 4 and report.records_repaired == 2
    assert dict(report.tasks) == {"tvg": 2, "dvc": 1, "rar": 1}
    assert "span_clipped 1" in caplog.text and "etbench_txt_v1.0.json" in caplog.text
    assert json.dumps(report.to_dict())


def test_load_etbench_folder(tmp_path):
    d = tmp_path / "txt"
    d.mkdir()
    write_json(d / "tvg_demo.json", [tvg(0), tvg(1)])
    write_json(d / "dvc_demo.json", [dvc(0)])
    write_json(d / "metrics.json", {"not": "records"})  # E.T. Bench's script output is skipped
    records, report = datasets.load_etbench(d)
    assert [r["task"] for r in records] == ["dvc", "tvg", "tvg"] and report.n_records == 3
    write_json(d / "tvg_more.json", [tvg(1)])
    with pytest.raises(DatasetError, match=r"tvg_more\.json.*duplicate"):
        datasets.load_etbench(d)


def test_load_etbench_file_errors(tmp_path):
    with pytest.raises(DatasetFileNotFound, match="nope.json"):
        datasets.load_etbench(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"idx": 0,\n  "task": "tvg",,}]')
    with pytest.raises(DatasetError, match=r"bad\.json: invalid JSON at line 2, column"):
        datasets.load_etbench(bad)
    write_json(bad, {"idx": 0})
    with pytest.raises(DatasetError, match=r"bad\.json: expected a JSON list"):
        datasets.load_etbench(bad)
    write_json(bad, [tvg(0), tvg(5, g=[""])])
    with pytest.raises(DatasetError, match=r"bad\.json \[1\] \(idx 5, task tvg\): empty caption"):
        datasets.load_etbench(bad)
    write_json(bad, [tvg(0)])
    with pytest.raises(DatasetFileNotFound, match=r"1 video file\(s\) missing.*v0\.mp4"):
        datasets.load_etbench(bad, video_root=tmp_path)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v0.mp4").write_bytes(b"")
    assert len(datasets.load_etbench(bad, video_root=tmp_path).records) == 1


# ----------------------------------------------------------------------------- Shapes


def make_shapes_split(root, records, durations):
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "annotations.json", records)
    write_json(root / "meta.json", [{"video": v, "duration": d, "seed": i, "objects": [], "events": []}
                                    for i, (v, d) in enumerate(durations.items())])
    return root


def test_load_shapes(tmp_path):
    root = make_shapes_split(tmp_path / "val", [tvg(0), dvc(1), mcq("gvq", 2)],
                             {"videos/v0.mp4": 30, "videos/v1.mp4": 30, "videos/v2.mp4": 30})
    records, metas, report, split_root = datasets.load_shapes(root, check_videos=False)
    assert len(records) == 3 and set(metas) == {"videos/v0.mp4", "videos/v1.mp4", "videos/v2.mp4"}
    assert split_root == root and report.total_repairs == 0
    with pytest.raises(DatasetFileNotFound, match=r"annotations\.json.*3 video file\(s\) missing"):
        datasets.load_shapes(root)
    make_shapes_split(root, [tvg(0)], {"videos/v0.mp4": 31})
    with pytest.raises(DatasetError, match=r"annotations\.json \[0\].*differs from .*meta\.json"):
        datasets.load_shapes(root, check_videos=False)
    make_shapes_split(root, [tvg(0)], {"videos/other.mp4": 30})
    with pytest.raises(DatasetError, match=r"no entry in .*meta\.json"):
        datasets.load_shapes(root, check_videos=False)
    (root / "meta.json").unlink()
    with pytest.raises(DatasetFileNotFound, match=r"meta\.json"):
        datasets.load_shapes(root, check_videos=False)


# ----------------------------------------------------------------------------- Charades-STA / TimeIT

CHARADES = """3MSZA 24.3 30.4##person turn a light on.
3MSZA 0.0 6.9##person opening a door.

AO8RW 12.0 40.0##a person is putting a book on a shelf.
AO8RW 9.5 3.0##person reversed.
"""


def test_load_charades_txt(tmp_path, caplog):
    f = tmp_path / "charades_sta_test.txt"
    f.write_text(CHARADES)
    with caplog.at_level(logging.WARNING, logger="d2lib.world.datasets"):
        records, report = datasets.load_charades_txt(f, {"3MSZA": 32.0, "AO8RW": 33.5})
    assert [r["idx"] for r in records] == [0, 1, 2, 3]
    r0 = records[0]
    assert (r0["task"], r0["source"], r0["video"], r0["duration"]) == ("tvg", "charades_sta", "3MSZA.mp4", 32.0)
    assert r0["tgt"] == [24.3, 30.4] and r0["g"] == ["person turn a light on."]
    assert "'person turn a light on'" in r0["q"] and "The event happens in" in r0["q"]
    assert records[2]["tgt"] == [12.0, 33.5] and records[3]["tgt"] == [3.0, 9.5]
    assert dict(report.repairs) == {"span_clipped": 1, "span_swapped": 1, "blank_line_skipped": 1}
    assert "span_clipped 1" in caplog.text and "charades_sta_test.txt:4" in caplog.text
    # durations from a Charades-style CSV give the same records
    csv = tmp_path / "Charades_v1_test.csv"
    csv.write_text("id,subject,length\n3MSZA,x,32.0\nAO8RW,y,33.5\n")
    assert datasets.load_charades_txt(f, csv).records == records


@pytest.mark.parametrize("line, match", [
    ("3MSZA 24.3 30.4 person turn a light on.", r"test\.txt:2: expected 'VID START END##sentence'"),
    ("3MSZA 24.3##person", r"test\.txt:2: expected 'VID START END' before"),
    ("3MSZA a 30.4##person", r"test\.txt:2: start/end must be numbers"),
    ("3MSZA 1 3##  ", r"test\.txt:2: empty sentence"),
    ("ZZZZZ 1 3##person sits", r"test\.txt:2: no duration for video 'ZZZZZ'"),
])
def test_charades_malformed_lines(tmp_path, line, match):
    f = tmp_path / "test.txt"
    f.write_text("3MSZA 0.0 6.9##person opening a door.\n" + line + "\n")
    with pytest.raises(DatasetError, match=match):
        datasets.load_charades_txt(f, {"3MSZA": 32.0})


def test_charades_missing_files(tmp_path):
    with pytest.raises(DatasetFileNotFound, match="missing.txt"):
        datasets.load_charades_txt(tmp_path / "missing.txt", {})
    f = tmp_path / "t.txt"
    f.write_text(CHARADES)
    with pytest.raises(DatasetFileNotFound, match="nope.csv"):
        datasets.load_charades_txt(f, tmp_path / "nope.csv")
    csv = tmp_path / "d.csv"
    csv.write_text("id,length\n3MSZA,abc\n")
    with pytest.raises(DatasetError, match=r"d\.csv:2: duration 'abc' is not a number"):
        datasets.load_charades_txt(f, csv)


def test_load_timeit_tvg(tmp_path):
    f = write_json(tmp_path / "test.caption_coco_format.json", {"annotations": [
        {"image_id": "3MSZA.mp4", "caption": "person turn a light on.", "timestamp": [24.3, 30.4], "id": 0},
        {"image_id": "AO8RW.mp4", "caption": "person sits.", "timestamp": [30.0, 36.0], "id": 1},
    ]})
    records, report = datasets.load_timeit_tvg(f, {"3MSZA": 32.0, "AO8RW.mp4": 33.5})
    assert [(r["idx"], r["video"], r["tgt"]) for r in records] == [(0, "3MSZA.mp4", [24.3, 30.4]),
                                                                     (1, "AO8RW.mp4", [30.0, 33.5])]
    assert dict(report.repairs) == {"span_clipped": 1}
    write_json(f, {"annotations": [{"image_id": "3MSZA.mp4", "caption": "x", "id": 0}]})
    with pytest.raises(DatasetError, match=r"caption_coco_format\.json: annotations\[0\]: missing key 'timestamp'"):
        datasets.load_timeit_tvg(f, {"3MSZA": 32.0})
    write_json(f, {"annotations": [{"image_id": "3MSZA.mp4", "caption": "", "timestamp": [1, 2], "id": 0}]})
    with pytest.raises(DatasetError, match=r"annotations\[0\]: empty caption"):
        datasets.load_timeit_tvg(f, {"3MSZA": 32.0})
    write_json(f, [1, 2])
    with pytest.raises(DatasetError, match=r"caption_coco_format\.json: expected an object with an 'annotations'"):
        datasets.load_timeit_tvg(f, {})


# ----------------------------------------------------------------------------- YouCook2

YC2 = {"database": {
    "xHr8X2Wpmno": {"duration": 207.0, "subset": "validation", "recipe_type": "113", "annotations": [
        {"id": 1, "segment": [67, 89], "sentence": "combine lemon juice and oil"},
        {"id": 0, "segment": [47, 60], "sentence": "pick the ends off the verdalago"},
        {"id": 2, "segment": [190, 215], "sentence": "serve"}]},
    "train0001": {"duration": 100.0, "subset": "training", "annotations": [
        {"id": 0, "segment": [1, 5], "sentence": "cut"}]},
}}


def test_load_youcook2_official(tmp_path):
    f = write_json(tmp_path / "youcookii_annotations_trainval.json", YC2)
    records, report = datasets.load_youcook2(f)
    assert len(records) == 1
    r = records[0]
    assert (r["task"], r["source"], r["video"], r["duration"]) == ("dvc", "youcook2", "xHr8X2Wpmno.mp4", 207.0)
    assert r["tgt"] == [[47, 60], [67, 89], [190, 207.0]]
    assert r["g"] == ["pick the ends off the verdalago", "combine lemon juice and oil", "serve"]
    assert dict(report.repairs) == {"span_clipped": 1, "events_sorted": 1}
    assert len(datasets.load_youcook2(f, subset=None).records) == 2
    with pytest.raises(DatasetError, match=r"trainval\.json: no videos in subset 'testing'"):
        datasets.load_youcook2(f, subset="testing")
    bad = json.loads(json.dumps(YC2))
    bad["database"]["xHr8X2Wpmno"]["annotations"][2]["sentence"] = ""
    write_json(f, bad)
    with pytest.raises(DatasetError, match=r"trainval\.json: database\['xHr8X2Wpmno'\].*empty caption g\[2\]"):
        datasets.load_youcook2(f)


def test_load_youcook2_timeit(tmp_path):
    f = write_json(tmp_path / "val.caption_coco_format.json", {"annotations": [
        {"image_id": "xHr8X2Wpmno.mp4", "duration": 207.0, "segments": [[47, 60], [67, 89]],
         "pure_cap": "pick the ends off the verdalago. combine lemon juice and oil.", "id": 0}]})
    (r,), _ = datasets.load_youcook2(f)
    assert r["video"] == "xHr8X2Wpmno.mp4" and r["tgt"] == [[47, 60], [67, 89]]
    assert r["g"] == ["pick the ends off the verdalago", "combine lemon juice and oil."]
    write_json(f, {"annotations": [{"image_id": "a.mp4", "duration": 9.0, "segments": [[1, 2], [3, 4]],
                                    "pure_cap": "only one", "id": 0}]})
    with pytest.raises(DatasetError, match=r"annotations\[0\].*len\(g\) = 1 but 'tgt' has 2"):
        datasets.load_youcook2(f)


# ----------------------------------------------------------------------------- config, splits


def test_prepare_config():
    cfg = config.from_dict(datasets.PrepareConfig, {}, "prepare")
    assert (cfg.train_videos, cfg.train_seed, cfg.decode_fps, cfg.decode_size) == (600, 0, 1.0, 32)
    with pytest.raises(ConfigError, match=r"prepare\.train_seed.*belong to the benchmark"):
        config.from_dict(datasets.PrepareConfig, {"train_seed": 1_000_000}, "prepare")
    with pytest.raises(ConfigError, match=r"prepare\.train_seed"):  # the last training seeds would collide
        config.from_dict(datasets.PrepareConfig, {"train_seed": 999_500}, "prepare")
    assert config.from_dict(datasets.PrepareConfig, {"train_seed": 999_400}, "prepare").train_seed == 999_400
    assert cfg.workers == 0 and cfg.resolved_workers() >= 1
    assert config.from_dict(datasets.PrepareConfig, {"workers": 3}, "prepare").resolved_workers() == 3
    for key, val in [("train_videos", 0), ("decode_fps", 0.0), ("decode_size", 4), ("train_seed", -1), ("workers", -1)]:
        with pytest.raises(ConfigError, match=rf"prepare\.{key}"):
            config.from_dict(datasets.PrepareConfig, {key: val}, "prepare")
    assert config.section_class("prepare") is datasets.PrepareConfig


def test_split_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))
    assert datasets.shapes_split_dir("val") == tmp_path / "data" / "shapes" / "val"
    assert datasets.shapes_split_dir("test") == tmp_path / "data" / "shapes" / "test"
    assert datasets.shapes_split_dir("train") == tmp_path / "artifacts" / "prepare" / "train"
    assert datasets.frame_cache_path("val") == tmp_path / "artifacts" / "prepare" / "frames_val.npz"
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        datasets.shapes_split_dir("dev")
    groups = datasets.records_by_task([tvg(0), dvc(1), tvg(2)])
    assert {t: [r["idx"] for r in rs] for t, rs in groups.items()} == {"tvg": [0, 2], "dvc": [1]}


# ----------------------------------------------------------------------------- frame cache


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_mp4(root / "videos" / "a.mp4", seconds=4)
    write_mp4(root / "videos" / "b.mp4", seconds=3)
    return root


def test_frame_cache_round_trip(clips, tmp_path):
    recs = [tvg(0, video="videos/a.mp4", duration=4, tgt=[1, 2]), tvg(1, video="videos/b.mp4", duration=3, tgt=[0, 1]),
            dvc(2, video="videos/a.mp4", duration=4, tgt=[[0, 1], [2, 3]])]
    out = datasets.build_frame_cache(recs, clips, tmp_path / "cache" / "frames_val.npz", fps=1.0, size=32,
                                     progress=False)
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["frames_val.npz"]
    with datasets.load_frame_cache(out) as cache:
        assert sorted(cache) == ["videos/a.mp4", "videos/b.mp4"]
        a = cache["videos/a.mp4"]
        assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8 and isinstance(a, np.memmap)
        # frame t is second t: the source frame 4t has brightness 40 t (H.264 is lossy: ±4)
        assert np.abs(a.reshape(4, -1).mean(1) - [0, 40, 80, 120]).max() < 4
        assert cache["videos/b.mp4"].shape[0] == 3 and cache.meta["fps"] == 1.0
        with pytest.raises(KeyError, match="nope"):
            cache["nope"]
    with pytest.raises(DatasetError, match=r"frames_val\.npz: cache was decoded with size=32, expected 64"):
        datasets.load_frame_cache(out, fps=1.0, size=64)
    eager = datasets.load_frame_cache(out, mmap=False, fps=1.0, size=32)
    np.testing.assert_array_equal(eager["videos/a.mp4"], a)
    with np.load(out) as z:  # plain numpy can read it too
        np.testing.assert_array_equal(z["videos/b.mp4"], eager["videos/b.mp4"])
    # bare video names: durations are probed
    out2 = datasets.build_frame_cache(["videos/b.mp4"], clips, tmp_path / "f2.npz", size=16, compress=True,
                                      progress=False)
    assert datasets.load_frame_cache(out2)["videos/b.mp4"].shape == (3, 16, 16, 3)


def test_frame_cache_frame_count_mismatch(clips, tmp_path):
    recs = [tvg(0, video="videos/a.mp4", duration=8, tgt=[1, 2])]
    with pytest.raises(DatasetError, match=r"a\.mp4: decoded 4 frames .* = 8"):
        datasets.build_frame_cache(recs, clips, tmp_path / "f.npz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_frame_cache_missing_video_names_file_and_leaves_nothing(clips, tmp_path):
    from d2lib.world.video import VideoError

    recs = [tvg(0, video="videos/a.mp4", duration=4), tvg(1, video="videos/gone.mp4", duration=4)]
    with pytest.raises(VideoError, match="gone.mp4"):
        datasets.build_frame_cache(recs, clips, tmp_path / "f.npz", progress=False)
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
        datasets.build_frame_cache(recs, clips, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["frames_train.npz"] and out.read_bytes() == b"old cache"


def test_load_frame_cache_missing_or_corrupt(clips, tmp_path):
    with pytest.raises(DatasetFileNotFound, match="frames_val.npz"):
        datasets.load_frame_cache(tmp_path / "frames_val.npz")
    bad = tmp_path / "frames_test.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match=r"frames_test\.npz: not a readable frame cache"):
        datasets.load_frame_cache(bad)
    good = datasets.build_frame_cache([tvg(0, video="videos/b.mp4", duration=3)], clips, tmp_path / "g.npz",
                                      progress=False)
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: the zip directory is gone
    with pytest.raises(DatasetError, match=r"frames_test\.npz"):
        datasets.load_frame_cache(bad)
    assert zipfile.is_zipfile(good) and os.path.getsize(good) > 3 * 32 * 32 * 3


def test_shapes_render_load_cache_and_exports(tmp_path):
    """The whole Shapes path: render → load_shapes → frame cache; the split's Charades/YouCook2
    exports load back to the same spans and captions."""
    from d2lib.world import synth

    root = tmp_path / "train"
    synth.render_split(root, 2, 0, synth.WorldConfig(), "train")
    records, metas, report, _ = datasets.load_shapes(root)
    assert report.total_repairs == 0 and set(datasets.records_by_task(records)) == {"tvg", "dvc", "rar", "gvq", "tal"}
    out = datasets.build_frame_cache(records, root, tmp_path / "frames_train.npz", progress=False)
    cache = datasets.load_frame_cache(out, fps=1.0, size=32)
    assert {v: a.shape for v, a in cache.items()} == {v: (m["duration"], 32, 32, 3) for v, m in metas.items()}
    tvgs = [r for r in records if r["task"] == "tvg"]
    ch, _ = datasets.load_charades_txt(root / "charades.txt", datasets.durations_from_metas(metas),
                                       source="shapes", video_template="videos/{vid}.mp4")
    assert [(r["video"], r["duration"], r["tgt"], r["g"]) for r in ch] == \
        [(r["video"], r["duration"], r["tgt"], r["g"]) for r in tvgs]
    ch_probed, _ = datasets.load_charades_txt(root / "charades.txt", root, video_template="videos/{vid}.mp4")
    assert [r["duration"] for r in ch_probed] == [r["duration"] for r in tvgs]
    yc, _ = datasets.load_youcook2(root / "youcook2.json", subset="training", source="shapes",
                                   video_template="videos/{vid}.mp4")
    dvcs = [r for r in records if r["task"] == "dvc"]
    assert [(r["video"], r["tgt"], r["g"]) for r in yc] == [(r["video"], r["tgt"], r["g"]) for r in dvcs]


def test_frame_cache_built_twice_is_byte_identical(clips, tmp_path, monkeypatch):
    """No wall clock in the file: the same frames give the same bytes (and the same DVC hash), whatever the
    time of the build — including the metadata entry, the one a plain ``writestr`` would stamp."""
    import time
    import zipfile
    recs = [tvg(0, video="videos/a.mp4", duration=4, tgt=[1, 2]), tvg(1, video="videos/b.mp4", duration=3, tgt=[0, 1])]
    for compress in (False, True):
        first = datasets.build_frame_cache(recs, clips, tmp_path / f"one_{compress}.npz", compress=compress, progress=False)
        later = time.time() + 3 * 3600  # a build three hours later
        monkeypatch.setattr(time, "time", lambda: later)
        monkeypatch.setattr(time, "localtime", lambda t=None: time.gmtime(later))
        second = datasets.build_frame_cache(recs, clips, tmp_path / f"two_{compress}.npz", compress=compress, progress=False)
        monkeypatch.undo()
        assert first.read_bytes() == second.read_bytes()
        with zipfile.ZipFile(first) as zf:
            assert {i.date_time for i in zf.infolist()} == {datasets.CACHE_DATE}
            assert datasets.CACHE_META in zf.namelist()
