"""d2lib.world.records: the record schema's validation (repairs counted, errors name the file and record),
the Shapes split loader and the split helpers (lesson 01_video_data)."""
import numpy as np
import pytest

from d2lib.world.records import (TASKS, DatasetError, DatasetFileNotFound, frame_cache_path, load_shapes,
                                 records_by_task, shapes_split_dir, validate_record)
from records_fixture import dvc, mcq, tvg, write_json

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
    assert {"tvg", "epm", "tem", "tal", "evs", "vhd", "dvc", "slc", "rar", "eca", "rvq", "gvq"} <= set(TASKS)
    validate_record(mcq("gvq"), "a.json")
    fixed, reps = validate_record(mcq("eca", o=[[1, 4], [20, 40]], p=1), "a.json")  # time options
    assert fixed["o"][1] == [20, 30.0] and [r.kind for r in reps] == ["span_clipped"]
    vhd = {"idx": 0, "task": "vhd", "source": "qvh", "video": "v.mp4", "duration": 10, "q": "?",
           "tgt": [[[0, 2], [4, 12]], [[1, 3]]]}  # per-annotator lists
    fixed, reps = validate_record(vhd, "a.json")
    assert fixed["tgt"][0][1] == [4, 10.0] and len(reps) == 1




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
    records, metas, report, split_root = load_shapes(root, check_videos=False)
    assert len(records) == 3 and set(metas) == {"videos/v0.mp4", "videos/v1.mp4", "videos/v2.mp4"}
    assert split_root == root and report.total_repairs == 0
    with pytest.raises(DatasetFileNotFound, match=r"annotations\.json.*3 video file\(s\) missing"):
        load_shapes(root)
    make_shapes_split(root, [tvg(0)], {"videos/v0.mp4": 31})
    with pytest.raises(DatasetError, match=r"annotations\.json \[0\].*differs from .*meta\.json"):
        load_shapes(root, check_videos=False)
    make_shapes_split(root, [tvg(0)], {"videos/other.mp4": 30})
    with pytest.raises(DatasetError, match=r"no entry in .*meta\.json"):
        load_shapes(root, check_videos=False)
    (root / "meta.json").unlink()
    with pytest.raises(DatasetFileNotFound, match=r"meta\.json"):
        load_shapes(root, check_videos=False)



def test_split_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))
    assert shapes_split_dir("val") == tmp_path / "data" / "shapes" / "val"
    assert shapes_split_dir("test") == tmp_path / "data" / "shapes" / "test"
    assert shapes_split_dir("train") == tmp_path / "artifacts" / "prepare" / "train"
    assert frame_cache_path("val") == tmp_path / "artifacts" / "prepare" / "frames_val.npz"
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        shapes_split_dir("dev")
    groups = records_by_task([tvg(0), dvc(1), tvg(2)])
    assert {t: [r["idx"] for r in rs] for t, rs in groups.items()} == {"tvg": [0, 2], "dvc": [1]}


# ----------------------------------------------------------------------------- frame cache
