"""The public evaluators' formats (d2lib.evaluation.formats, lesson 06_evaluation): round trips, the keys and types
each evaluator reads, atomic writes. Pure Python, no model, no Java."""
import json
import os

import pytest

from d2lib.loaders import charades, youcook2
from d2lib.core import io
from d2lib.evaluation import formats as F
from d2lib.evaluation import metrics as M

TVG = [
    {"idx": 0, "task": "tvg", "source": "s", "video": "videos/v0.mp4", "duration": 30, "tgt": [4, 9],
     "g": ["the red square grows"], "q": "Find ...", "a": "The event happens in 5 - 9."},
    {"idx": 7, "task": "tvg", "source": "s", "video": "videos/v0.mp4", "duration": 30, "tgt": [12, 20],
     "g": ["the blue circle sinks"], "q": "Find ...", "a": "The event happens in 21 - 13."},
    {"idx": 9, "task": "tvg", "source": "s", "video": "videos/v1.mp4", "duration": 40, "tgt": [1, 3],
     "g": ["a star appears"], "q": "Find ...", "a": "I do not know."},
]
DVC = [
    {"idx": 3, "task": "dvc", "source": "s", "video": "videos/v0.mp4", "duration": 30,
     "tgt": [[4, 9], [12, 20]], "g": ["the red square grows", "the blue circle sinks."], "q": "Find ...",
     "a": "4 - 9, the red square grows. 12 - 19, the blue circle sinks."},
    {"idx": 8, "task": "dvc", "source": "s", "video": "videos/v1.mp4", "duration": 40,
     "tgt": [[1, 3]], "g": ["a star appears"], "q": "Find ...", "a": "Nothing happens."},
]


# ------------------------------------------------------------------------------------------ atomic JSON
def test_write_json_atomic_and_ascii(tmp_path):
    path = F.write_json({"caption": "café", "x": [1, 2.5]}, tmp_path / "sub" / "a.json")
    assert path == tmp_path / "sub" / "a.json" and F.read_json(path) == {"caption": "café", "x": [1, 2.5]}
    assert path.read_bytes().isascii()  # evaluators open files with the locale's encoding
    assert os.listdir(path.parent) == ["a.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not a temp file's 0600


def test_write_json_failure_keeps_old_file(tmp_path, monkeypatch):
    path = F.write_json({"v": 1}, tmp_path / "a.json")
    with pytest.raises(TypeError):  # not serialisable: fails while writing the temporary file
        F.write_json({"v": object()}, path)
    with pytest.raises(ValueError):  # NaN is not JSON
        F.write_json({"v": float("nan")}, path)

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", boom)  # the atomic writer of d2lib.core.io
    with pytest.raises(OSError):
        F.write_json({"v": 2}, path)
    assert F.read_json(path) == {"v": 1} and os.listdir(tmp_path) == ["a.json"]


def test_read_json_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    assert F.read_json(tmp_path / "a.jsonl") == [{"x": 1}, {"x": 2}]


# ------------------------------------------------------------------------------------- E.T. Bench
def test_etbench_submission_round_trip(tmp_path):
    answers = ["(A)", None, "3 - 4"]
    sub = F.etbench_submission(TVG, answers)
    assert [r["a"] for r in sub] == ["(A)", "", "3 - 4"]  # None -> "" (the script calls a.lower())
    assert all(r[k] == t[k] for r, t in zip(sub, TVG) for k in t if k != "a") and TVG[0]["a"] != "(A)"
    path = F.write_etbench_submission(tmp_path / "pred.json", TVG, answers)
    assert F.read_etbench_submission(path) == sub
    assert isinstance(json.loads(path.read_text()), list)  # one JSON list, as compute_metrics.py loads


def test_etbench_folder_like_compute_metrics(tmp_path):
    F.write_etbench_submission(tmp_path / "a.json", TVG[:2])
    (tmp_path / "b.jsonl").write_text(json.dumps(F.etbench_submission(TVG[2:])[0]) + "\n")
    F.write_json({"tvg": {}}, tmp_path / "metrics.json")  # the script's own output is skipped
    assert [r["idx"] for r in F.read_etbench_submission(tmp_path)] == [0, 7, 9]


def test_etbench_submission_errors(tmp_path):
    with pytest.raises(F.FormatError, match="duplicate"):
        F.etbench_submission([TVG[0], TVG[0]])
    with pytest.raises(F.FormatError, match="missing"):
        F.etbench_submission([{"idx": 0, "task": "tvg"}], ["x"])
    with pytest.raises(F.FormatError, match="2 answers for 3"):
        F.etbench_submission(TVG, ["a", "b"])
    with pytest.raises(F.FormatError, match="metrics"):
        F.write_etbench_submission(tmp_path / "metrics_run1.json", TVG)
    (tmp_path / "bad.json").write_text(json.dumps([{**TVG[0], "a": None}]))
    with pytest.raises(F.FormatError, match="'a' must be a string"):
        F.read_etbench_submission(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------- TimeChat tvg
def test_tvg_files_as_eval_tvg_reads_them(tmp_path):
    pred_p, gt_p = F.write_timechat_tvg(tmp_path / "pred.json", tmp_path / "gt.json", TVG)
    pred, gt = json.loads(pred_p.read_text()), json.loads(gt_p.read_text())
    assert pred == {"0": {"timestamp": [[5.0, 9.0]], "query": "the red square grows", "vid": "v0.mp4"},
                    "7": {"timestamp": [[13.0, 21.0]], "query": "the blue circle sinks", "vid": "v0.mp4"},
                    "9": {"timestamp": [], "query": "a star appears", "vid": "v1.mp4"}}
    assert all(set(a) == {"image_id", "caption", "timestamp", "id"} and isinstance(a["id"], int)
               for a in gt["annotations"])
    # eval_tvg.py: gt keyed by jterm["id"], predictions by int(qid), and it asserts equal sizes
    gt_ts = {a["id"]: a["timestamp"] for a in gt["annotations"]}
    pred_ts = {int(q): p["timestamp"] for q, p in pred.items()}
    assert gt_ts.keys() == pred_ts.keys() and gt_ts == {0: [4, 9], 7: [12, 20], 9: [1, 3]}
    assert F.read_timechat_tvg_predictions(pred_p) == pred and F.read_timechat_tvg_gt(gt_p) == gt
    # our loader reads the GT back into the same records
    back = charades.load_timeit_tvg(gt_p, {"v0": 30, "v1": 40}, source="s", video_template="videos/{vid}").records
    assert [(r["idx"], r["tgt"], r["g"], r["video"]) for r in back] == [
        (r["idx"], r["tgt"], r["g"], r["video"]) for r in TVG]
    # and the metric on the files equals the metric on the answers
    files = M.charades_sta_timechat(F.read_timechat_tvg_predictions(pred_p), F.read_timechat_tvg_gt(gt_p))
    direct = M.charades_sta_from_text([r["a"] for r in TVG], [r["tgt"] for r in TVG])
    assert {k: files[k] for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")} == {
        k: direct[k] for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")}


def test_tvg_spans_and_delimiter():
    by_spans = F.timechat_tvg_predictions(TVG, spans=[[9, 5], None, [1, 2.5]])
    assert [v["timestamp"] for v in by_spans.values()] == [[[5, 9]], [], [[1, 2.5]]]
    evi = ["3 - 7</evi>The event happens in 4 - 8.", "3 - 7</evi>Sorry.", "The event happens in 1 - 2."]
    got = F.timechat_tvg_predictions(TVG, evi, delimiter="</evi>")
    assert [v["timestamp"] for v in got.values()] == [[[4.0, 8.0]], [[3.0, 7.0]], []]  # answer, evidence, none
    assert F.timechat_tvg_predictions(TVG, evi, delimiter="</evi>", evidence_fallback=False)["7"]["timestamp"] == []
    with pytest.raises(F.FormatError, match="duplicate"):
        F.timechat_tvg_gt([TVG[0], TVG[0]])
    with pytest.raises(F.FormatError, match=r"\[start, end\]"):
        F.timechat_tvg_gt([{**TVG[0], "tgt": [[4, 9]]}])


def test_tvg_readers_reject_what_eval_tvg_cannot_read(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"q1": {"timestamp": []}}))
    with pytest.raises(F.FormatError, match="int"):
        F.read_timechat_tvg_predictions(tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps({"1": {"timestamp": [5, 9]}}))
    with pytest.raises(F.FormatError, match=r"\[start, end\]"):
        F.read_timechat_tvg_predictions(tmp_path / "p.json")
    (tmp_path / "g.json").write_text(json.dumps({"annotations": [{"image_id": "v", "caption": "c",
                                                                  "timestamp": [1, 2], "id": "0"}]}))
    with pytest.raises(F.FormatError, match="int"):
        F.read_timechat_tvg_gt(tmp_path / "g.json")


# ------------------------------------------------------------------------------------- TimeChat dvc
def test_dvc_files_as_eval_dvc_reads_them(tmp_path):
    pred_p, gt_p = F.write_timechat_dvc(tmp_path / "pred.json", tmp_path / "val.caption_coco_format.json", DVC)
    pred, gt = json.loads(pred_p.read_text()), json.loads(gt_p.read_text())
    assert pred == {"v0.mp4": [{"timestamp": [4.0, 9.0], "caption": "the red square grows."},
                               {"timestamp": [12.0, 19.0], "caption": "the blue circle sinks."}],
                    "v1.mp4": []}  # unparsed: an empty list, scored 0 like a missing video
    ann = gt["annotations"]
    assert [set(a) for a in ann] == [{"image_id", "duration", "segments", "pure_cap", "id"}] * 2
    assert ann[0]["pure_cap"] == "the red square grows. the blue circle sinks"  # TimeIT: no final period
    # eval_dvc.py: key = image_id basename, captions = pure_cap.split(". ") + ".", split from the file name
    for a, r in zip(ann, DVC):
        caps = [c + "." for c in a["pure_cap"].split(". ")]
        assert len(caps) == len(a["segments"]) and a["segments"] == r["tgt"]
        assert caps == [c.rstrip(".") + "." for c in r["g"]] and a["image_id"].split("/")[-1] in pred
    assert gt_p.name.split(".")[0] == "val"
    assert F.read_timechat_dvc_predictions(pred_p) == pred and F.read_timechat_dvc_gt(gt_p) == gt
    # our readers: metrics' TimeIT GT and the dataset loader
    yc = M.youcook2_gt_from_timeit(gt)
    assert yc["v0.mp4"] == {"timestamps": [[4.0, 9.0], [12.0, 20.0]],
                            "sentences": ["the red square grows.", "the blue circle sinks."], "duration": 30.0}
    back = youcook2.load_youcook2(gt_p).records
    assert [(r["tgt"], r["g"]) for r in back] == [(r["tgt"], [c.rstrip(".") for c in r["g"]]) for r in DVC]


def test_dvc_events_and_errors(tmp_path):
    ev = F.timechat_dvc_predictions(DVC, events=[([[9, 4]], ["grows"]), None])
    assert ev == {"v0.mp4": [{"timestamp": [4, 9], "caption": "grows"}], "v1.mp4": []}
    evi = ["4 - 9</evi>4 - 9, the red square grows.", "no delimiter 1 - 3, a star appears."]
    got = F.timechat_dvc_predictions(DVC, evi, delimiter="</evi>")
    assert got == {"v0.mp4": [{"timestamp": [4.0, 9.0], "caption": "the red square grows."}], "v1.mp4": []}
    with pytest.raises(F.FormatError, match="split"):
        F.pure_cap(["cut it. then fry it"])
    with pytest.raises(F.FormatError, match="empty"):
        F.pure_cap(["..."])
    with pytest.raises(F.FormatError, match="file name"):
        F.write_timechat_dvc_gt(tmp_path / "youcook2_gt.json", DVC)
    with pytest.raises(F.FormatError, match="duplicate"):
        F.timechat_dvc_gt([DVC[0], {**DVC[0], "video": "other/v0.mp4"}])
    with pytest.raises(F.FormatError, match="aligned"):
        F.timechat_dvc_gt([{**DVC[0], "g": ["one caption"]}])
    F.write_json(F.timechat_dvc_gt(DVC), tmp_path / "gt.json")  # a name TimeChat cannot take a split from
    with pytest.raises(F.FormatError, match="file name"):
        F.read_timechat_dvc_gt(tmp_path / "gt.json")
    assert len(F.read_timechat_dvc_gt(tmp_path / "gt.json", check_name=False)["annotations"]) == 2
    (tmp_path / "val.bad.json").write_text(json.dumps({"annotations": [
        {"image_id": "v.mp4", "segments": [[0, 1], [1, 2]], "pure_cap": "one caption only"}]}))
    with pytest.raises(F.FormatError, match="2 segments"):
        F.read_timechat_dvc_gt(tmp_path / "val.bad.json")
    (tmp_path / "p.json").write_text(json.dumps({"v.mp4": [{"timestamp": [0, 1]}]}))
    with pytest.raises(F.FormatError, match="caption"):
        F.read_timechat_dvc_predictions(tmp_path / "p.json")


# ------------------------------------------------------------------------------ odd answers, strict JSON
def _strict_json(path):
    """Read a file as a strict JSON reader does: NaN / Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(encoding="ascii"), parse_constant=refuse)


ODD_ANSWERS = [None, 5, [1, 2], {"a": 1}, float("nan"), float("inf"),
               "The event happens in 0 - " + "9" * 400 + ".", "1e3 - 2e3, a man cuts onions.",
               "0:99 - 1:99, a man cuts onions.", "-5 - -1, a man cuts onions."]


def test_writer_byte_format_is_unchanged(tmp_path):
    obj = {"b": [1, 2.5, None, True], "a": "café", "c": {"d": 1e-7, "e": 10**20, "f": 0.1 + 0.2}}
    assert F.write_json(obj, tmp_path / "a.json").read_bytes() == (
        json.dumps(obj, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
    assert F.write_json(obj, tmp_path / "b.json", indent=None).read_bytes() == (
        json.dumps(obj, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
    for bad in (float("nan"), float("inf"), -float("inf")):  # never written: strict JSON or nothing
        with pytest.raises(ValueError):
            F.write_json({"v": bad}, tmp_path / "a.json")
    assert _strict_json(tmp_path / "a.json") == obj


def test_odd_answers_give_failures_and_strict_json_files(tmp_path):
    n = len(ODD_ANSWERS)
    tvg = [{**TVG[0], "idx": i, "video": f"videos/t{i}.mp4"} for i in range(n)]
    dvc = [{**DVC[0], "idx": 100 + i, "video": f"videos/d{i}.mp4"} for i in range(n)]
    sub = F.write_etbench_submission(tmp_path / "sub.json", tvg + dvc, ODD_ANSWERS * 2)
    assert [r["a"] for r in _strict_json(sub)][:6] == [""] * 6  # not text -> "" (a failure for the script)
    assert F.read_etbench_submission(sub)[6]["a"] == ODD_ANSWERS[6]  # text is kept as written
    pred, _ = F.write_timechat_tvg(tmp_path / "tvg_pred.json", tmp_path / "tvg_gt.json", tvg, ODD_ANSWERS)
    assert [v["timestamp"] for v in _strict_json(pred).values()] == [[]] * n  # nothing readable
    dpred, _ = F.write_timechat_dvc(tmp_path / "dvc_pred.json", tmp_path / "val.dvc_gt.json", dvc, ODD_ANSWERS)
    # "-5 - -1, a man ..." is no range; the line fallback reads its two numbers (a minus is never read)
    assert list(_strict_json(dpred).values()) == [[]] * (n - 1) + [
        [{"timestamp": [1.0, 5.0], "caption": "-5 - -1, a man cuts onions."}]]
    assert M.charades_sta_timechat(F.read_timechat_tvg_predictions(pred),
                                   F.read_timechat_tvg_gt(tmp_path / "tvg_gt.json"))["n_failed"] == n


def test_spans_given_directly_must_be_finite(tmp_path):
    with pytest.raises(F.FormatError, match=r"spans\[1\].*finite"):
        F.timechat_tvg_predictions(TVG, spans=[[1, 2], [0, float("nan")], None])
    with pytest.raises(F.FormatError, match=r"events\[0\].*finite"):
        F.timechat_dvc_predictions(DVC, events=[([[0, float("inf")]], ["grows"]), None])
    with pytest.raises(F.FormatError, match=r"spans\[0\].*finite"):  # no float holds it: not OverflowError
        F.timechat_tvg_predictions(TVG[:1], spans=[[0, 10**400]])
    (tmp_path / "p.json").write_text('{"1": {"timestamp": [[0, NaN]]}}')  # Python's reader takes NaN
    with pytest.raises(F.FormatError, match="finite"):
        F.read_timechat_tvg_predictions(tmp_path / "p.json")
