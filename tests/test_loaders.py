"""d2lib.loaders: the real benchmarks' files (E.T. Bench, Charades-STA, TimeIT, YouCook2) read into
records — repairs counted and logged, bad input named by file and record — and the Shapes split's own
Charades/YouCook2 exports read back."""
import json
import logging

import pytest

from d2lib.loaders.charades import durations_from_metas, load_charades_txt, load_timeit_tvg
from d2lib.loaders.etbench import load_etbench
from d2lib.loaders.youcook2 import load_youcook2
from d2lib.world.records import DatasetError, DatasetFileNotFound, load_shapes, records_by_task
from records_fixture import dvc, mcq, tvg, write_json

# ----------------------------------------------------------------------------- E.T. Bench


def test_load_etbench_file_and_report(tmp_path, caplog):
    f = write_json(tmp_path / "etbench_txt_v1.0.json", [tvg(0), tvg(1, tgt=[9, 4]), dvc(2, tgt=[[1, 5], [8, 99]]),
                                                       mcq("rar", 3)])
    with caplog.at_level(logging.INFO, logger="d2lib.loaders.etbench"):
        records, report = load_etbench(f)
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
    records, report = load_etbench(d)
    assert [r["task"] for r in records] == ["dvc", "tvg", "tvg"] and report.n_records == 3
    write_json(d / "tvg_more.json", [tvg(1)])
    with pytest.raises(DatasetError, match=r"tvg_more\.json.*duplicate"):
        load_etbench(d)


def test_load_etbench_file_errors(tmp_path):
    with pytest.raises(DatasetFileNotFound, match="nope.json"):
        load_etbench(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"idx": 0,\n  "task": "tvg",,}]')
    with pytest.raises(DatasetError, match=r"bad\.json: invalid JSON at line 2, column"):
        load_etbench(bad)
    write_json(bad, {"idx": 0})
    with pytest.raises(DatasetError, match=r"bad\.json: expected a JSON list"):
        load_etbench(bad)
    write_json(bad, [tvg(0), tvg(5, g=[""])])
    with pytest.raises(DatasetError, match=r"bad\.json \[1\] \(idx 5, task tvg\): empty caption"):
        load_etbench(bad)
    write_json(bad, [tvg(0)])
    with pytest.raises(DatasetFileNotFound, match=r"1 video file\(s\) missing.*v0\.mp4"):
        load_etbench(bad, video_root=tmp_path)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v0.mp4").write_bytes(b"")
    assert len(load_etbench(bad, video_root=tmp_path).records) == 1


# ----------------------------------------------------------------------------- Charades-STA / TimeIT


CHARADES = """3MSZA 24.3 30.4##person turn a light on.
3MSZA 0.0 6.9##person opening a door.

AO8RW 12.0 40.0##a person is putting a book on a shelf.
AO8RW 9.5 3.0##person reversed.
"""


def test_load_charades_txt(tmp_path, caplog):
    f = tmp_path / "charades_sta_test.txt"
    f.write_text(CHARADES)
    with caplog.at_level(logging.WARNING, logger="d2lib.loaders.charades"):
        records, report = load_charades_txt(f, {"3MSZA": 32.0, "AO8RW": 33.5})
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
    assert load_charades_txt(f, csv).records == records


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
        load_charades_txt(f, {"3MSZA": 32.0})


def test_charades_missing_files(tmp_path):
    with pytest.raises(DatasetFileNotFound, match="missing.txt"):
        load_charades_txt(tmp_path / "missing.txt", {})
    f = tmp_path / "t.txt"
    f.write_text(CHARADES)
    with pytest.raises(DatasetFileNotFound, match="nope.csv"):
        load_charades_txt(f, tmp_path / "nope.csv")
    csv = tmp_path / "d.csv"
    csv.write_text("id,length\n3MSZA,abc\n")
    with pytest.raises(DatasetError, match=r"d\.csv:2: duration 'abc' is not a number"):
        load_charades_txt(f, csv)


def test_load_timeit_tvg(tmp_path):
    f = write_json(tmp_path / "test.caption_coco_format.json", {"annotations": [
        {"image_id": "3MSZA.mp4", "caption": "person turn a light on.", "timestamp": [24.3, 30.4], "id": 0},
        {"image_id": "AO8RW.mp4", "caption": "person sits.", "timestamp": [30.0, 36.0], "id": 1},
    ]})
    records, report = load_timeit_tvg(f, {"3MSZA": 32.0, "AO8RW.mp4": 33.5})
    assert [(r["idx"], r["video"], r["tgt"]) for r in records] == [(0, "3MSZA.mp4", [24.3, 30.4]),
                                                                     (1, "AO8RW.mp4", [30.0, 33.5])]
    assert dict(report.repairs) == {"span_clipped": 1}
    write_json(f, {"annotations": [{"image_id": "3MSZA.mp4", "caption": "x", "id": 0}]})
    with pytest.raises(DatasetError, match=r"caption_coco_format\.json: annotations\[0\]: missing key 'timestamp'"):
        load_timeit_tvg(f, {"3MSZA": 32.0})
    write_json(f, {"annotations": [{"image_id": "3MSZA.mp4", "caption": "", "timestamp": [1, 2], "id": 0}]})
    with pytest.raises(DatasetError, match=r"annotations\[0\]: empty caption"):
        load_timeit_tvg(f, {"3MSZA": 32.0})
    write_json(f, [1, 2])
    with pytest.raises(DatasetError, match=r"caption_coco_format\.json: expected an object with an 'annotations'"):
        load_timeit_tvg(f, {})


def test_charades_zero_length_query_is_flagged(tmp_path):
    f = tmp_path / "charades_sta_test.txt"
    f.write_text("3MSZA 24.3 30.4##person turn a light on.\n3MSZA 12.0 12.0##person sneezes.\n")
    records, report = load_charades_txt(f, {"3MSZA": 32.0})
    assert records[1]["tgt"] == [12.0, 12.0]
    assert dict(report.repairs) == {"span_zero_length": 1} and report.records_repaired == 1
    assert report.examples == [f"{f}:2: span_zero_length tgt: [12.0, 12.0] -> [12.0, 12.0]"]


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
    records, report = load_youcook2(f)
    assert len(records) == 1
    r = records[0]
    assert (r["task"], r["source"], r["video"], r["duration"]) == ("dvc", "youcook2", "xHr8X2Wpmno.mp4", 207.0)
    assert r["tgt"] == [[47, 60], [67, 89], [190, 207.0]]
    assert r["g"] == ["pick the ends off the verdalago", "combine lemon juice and oil", "serve"]
    assert dict(report.repairs) == {"span_clipped": 1, "events_sorted": 1}
    assert len(load_youcook2(f, subset=None).records) == 2
    with pytest.raises(DatasetError, match=r"trainval\.json: no videos in subset 'testing'"):
        load_youcook2(f, subset="testing")
    bad = json.loads(json.dumps(YC2))
    bad["database"]["xHr8X2Wpmno"]["annotations"][2]["sentence"] = ""
    write_json(f, bad)
    with pytest.raises(DatasetError, match=r"trainval\.json: database\['xHr8X2Wpmno'\].*empty caption g\[2\]"):
        load_youcook2(f)


def test_load_youcook2_timeit(tmp_path):
    f = write_json(tmp_path / "val.caption_coco_format.json", {"annotations": [
        {"image_id": "xHr8X2Wpmno.mp4", "duration": 207.0, "segments": [[47, 60], [67, 89]],
         "pure_cap": "pick the ends off the verdalago. combine lemon juice and oil.", "id": 0}]})
    (r,), _ = load_youcook2(f)
    assert r["video"] == "xHr8X2Wpmno.mp4" and r["tgt"] == [[47, 60], [67, 89]]
    assert r["g"] == ["pick the ends off the verdalago", "combine lemon juice and oil."]
    write_json(f, {"annotations": [{"image_id": "a.mp4", "duration": 9.0, "segments": [[1, 2], [3, 4]],
                                    "pure_cap": "only one", "id": 0}]})
    with pytest.raises(DatasetError, match=r"annotations\[0\].*len\(g\) = 1 but 'tgt' has 2"):
        load_youcook2(f)


@pytest.mark.parametrize("annotations, shown", [(None, "null"), ({"segment": [1, 2]}, '{"segment"'), ("cut", '"cut"')])
def test_youcook2_annotations_not_a_list_names_file_and_video(tmp_path, annotations, shown):
    bad = json.loads(json.dumps(YC2))
    bad["database"]["xHr8X2Wpmno"]["annotations"] = annotations
    f = write_json(tmp_path / "youcookii_annotations_trainval.json", bad)
    with pytest.raises(DatasetError) as e:
        load_youcook2(f)
    assert str(e.value).startswith(f"{f}: database['xHr8X2Wpmno']: 'annotations' must be a list")
    assert f"got {shown}" in str(e.value)
    assert len(load_youcook2(f, subset="training").records) == 1  # the other subset's videos still load


# ----------------------------------------------------------------------------- the Shapes split's exports


def test_shapes_render_load_cache_and_exports(tmp_path):
    """The whole Shapes path: render → load_shapes → frame cache; the split's Charades/YouCook2
    exports load back to the same spans and captions."""
    from d2lib.world import synth
    from d2lib.world.framecache import build_frame_cache, load_frame_cache

    root = tmp_path / "train"
    synth.render_split(root, 2, 0, synth.WorldConfig(), "train")
    records, metas, report, _ = load_shapes(root)
    assert report.total_repairs == 0 and set(records_by_task(records)) == {"tvg", "dvc", "rar", "gvq", "tal"}
    out = build_frame_cache(records, root, tmp_path / "frames_train.npz", progress=False)
    cache = load_frame_cache(out, fps=1.0, size=32)
    assert {v: a.shape for v, a in cache.items()} == {v: (m["duration"], 32, 32, 3) for v, m in metas.items()}
    tvgs = [r for r in records if r["task"] == "tvg"]
    ch, _ = load_charades_txt(root / "charades.txt", durations_from_metas(metas),
                                       source="shapes", video_template="videos/{vid}.mp4")
    assert [(r["video"], r["duration"], r["tgt"], r["g"]) for r in ch] == \
        [(r["video"], r["duration"], r["tgt"], r["g"]) for r in tvgs]
    ch_probed, _ = load_charades_txt(root / "charades.txt", root, video_template="videos/{vid}.mp4")
    assert [r["duration"] for r in ch_probed] == [r["duration"] for r in tvgs]
    yc, _ = load_youcook2(root / "youcook2.json", subset="training", source="shapes",
                                   video_template="videos/{vid}.mp4")
    dvcs = [r for r in records if r["task"] == "dvc"]
    assert [(r["video"], r["tgt"], r["g"]) for r in yc] == [(r["video"], r["tgt"], r["g"]) for r in dvcs]
