"""d2lib.world.seg_records: rvos / stg / gcap records built from world specs validate; every error fires."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from d2lib.world import masks as M
from d2lib.world import seg_records as S
from d2lib.world import synth
from d2lib.world.records import DatasetError, validate_record

CFG = synth.WorldConfig()
VAL = Path(__file__).resolve().parents[1] / "data" / "shapes" / "val"


@pytest.fixture(scope="module")
def spec():
    return synth.sample_video(9, CFG)  # 36 s, 3 objects, 6 events: fades, moves


@pytest.fixture(scope="module")
def recs(spec):
    return S.make_seg_records(spec, "videos/seg_00009.mp4", start_idx=10)


def by_task(recs, task):
    return [r for r in recs if r["task"] == task]


# ----------------------------------------------------------------------------------------- builders

def test_builders_make_valid_records(spec, recs):
    assert [r["idx"] for r in recs] == list(range(10, 10 + len(recs)))
    for r in recs:
        assert S.validate_seg_record(r, "built", n_objects=len(spec.objects)) == r
        assert json.loads(json.dumps(r)) == r  # plain JSON
    assert S.validate_seg_records(recs, "built", {"videos/seg_00009.mp4": spec.to_meta("videos/seg_00009.mp4")}) == recs
    assert recs == S.make_seg_records(spec, "videos/seg_00009.mp4", start_idx=10)  # deterministic


def test_rvos_names_each_object(spec, recs):
    rvos = by_task(recs, "rvos")
    assert [r["obj"] for r in rvos] == [o.id for o in spec.objects]
    for r in rvos:
        o = spec.object(r["obj"])
        assert r["g"] == [f"the {o.colour} {o.shape}"] and r["g"][0] in r["q"] and S.SEG in r["q"]
        assert "tgt" not in r


def test_stg_covers_every_event_with_its_actor(spec, recs):
    stg = by_task(recs, "stg")
    declared = [(tuple(r["tgt"]), r["obj"], r["g"][0]) for r in stg if r["g"][0] in r["q"]]
    assert sorted(declared) == sorted(((e.start, e.end), e.object, e.caption) for e in spec.events)
    for r in stg:
        if r["g"][0] not in r["q"]:  # interrogative: its action is done by no other event
            e = next(e for e in spec.events if [e.start, e.end] == r["tgt"] and e.object == r["obj"])
            assert sum((f.kind, f.target) == (e.kind, e.target) for f in spec.events) == 1
            assert r["q"].startswith("Which shape ")


def test_gcap_matches_the_dvc_record(spec, recs):
    """Same events, spans and captions as synth.make_records' dvc record; each phrase opens its caption
    and names the event's actor."""
    (gcap,) = by_task(recs, "gcap")
    (dvc,) = [r for r in synth.make_records(spec, "videos/seg_00009.mp4") if r["task"] == "dvc"]
    assert gcap["tgt"] == dvc["tgt"] and gcap["g"] == dvc["g"]
    validate_record({**gcap, "task": "dvc", "refs": None}, "as dvc")  # the shared fields pass the base schema
    for cap, refs, span in zip(gcap["g"], gcap["refs"], gcap["tgt"]):
        (ref,) = refs
        assert cap.startswith(ref["phrase"] + " ")
        e = next(e for e in spec.events if [e.start, e.end] == span and e.caption == cap)
        assert ref["obj"] == e.object


def test_benchmark_specs_build_valid_records():
    if not (VAL / "meta.json").is_file():
        pytest.skip("data/shapes is not checked out (make data)")
    metas = {m["video"]: m for m in json.loads((VAL / "meta.json").read_text())}
    records = []
    for v, m in metas.items():
        records += S.make_seg_records(synth.VideoSpec.from_meta(m), v, start_idx=len(records))
    got = S.validate_seg_records(records, "val seg", metas)
    tasks = {t: sum(r["task"] == t for r in got) for t in S.SEG_TASKS}
    assert tasks["gcap"] == len(metas) and tasks["rvos"] == sum(len(m["objects"]) for m in metas.values())
    assert tasks["stg"] >= sum(len(m["events"]) for m in metas.values())


def test_answer_masks_follow_the_record(spec, recs):
    masks, times = M.video_masks(spec, CFG, fps=1.0, size=32)
    (rvos,) = [r for r in by_task(recs, "rvos") if r["obj"] == 1]
    (a,) = S.answer_masks(rvos, masks, times)
    assert a["obj"] == 1 and np.array_equal(a["frames"], np.arange(spec.duration)) and np.array_equal(a["masks"], masks[1])
    move = next(e for e in spec.events if e.kind in synth.MOVES)
    (stg,) = [r for r in by_task(recs, "stg") if r["tgt"] == [move.start, move.end] and r["obj"] == move.object][:1]
    (a,) = S.answer_masks(stg, masks, times)
    assert a["frames"].tolist() == list(range(move.start, move.end + 1))  # frame t = second t, ends included
    assert a["masks"].any(axis=(1, 2)).all()  # a moving object is visible throughout its move
    (gcap,) = by_task(recs, "gcap")
    items = S.answer_masks(gcap, masks, times)
    assert [(i["phrase"], i["obj"]) for i in items] == [(r[0]["phrase"], r[0]["obj"]) for r in gcap["refs"]]
    with pytest.raises(ValueError, match="object 7 is not among the video's 3 objects"):
        S.answer_masks({**stg, "obj": 7}, masks, times)
    with pytest.raises(ValueError, match="T = len"):
        S.answer_masks(stg, masks, times[:-1])


def test_vocabulary_covers_the_prompts():
    v = set(S.vocabulary(CFG))
    assert set(synth.vocabulary(CFG)) <= v
    for r in S.make_seg_records(synth.sample_video(9, CFG), "v.mp4"):
        assert set(synth.tokenize(r["q"])) <= v, r["q"]


# ----------------------------------------------------------------------------------------- validation errors

def _first(recs, task):
    return copy.deepcopy(by_task(recs, task)[0])


def _set(path, value):
    def f(r):
        d = r
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _drop(key):
    return lambda r: r.pop(key)


BROKEN = [
    # (task, mutation, expected message)
    ("rvos", _set(["task"], "seg"), "unknown task 'seg'"),
    ("rvos", _drop("task"), "missing required key 'task'"),
    ("rvos", _drop("obj"), "missing required key 'obj'"),
    ("rvos", _drop("g"), "missing required key 'g'"),
    ("rvos", _drop("q"), "missing required key 'q'"),
    ("stg", _drop("tgt"), "missing required key 'tgt'"),
    ("gcap", _drop("refs"), "missing required key 'refs'"),
    ("rvos", _set(["tgt"], [0, 3]), "unexpected key(s) 'tgt' for task rvos"),
    ("rvos", _set(["obj"], 3), "'obj' = 3 is out of range: the video has 3 objects (ids 0..2)"),
    ("rvos", _set(["obj"], -1), "'obj' = -1 is out of range"),
    ("rvos", _set(["obj"], True), "'obj' must be an integer object id"),
    ("rvos", _set(["obj"], 1.0), "'obj' must be an integer object id"),
    ("rvos", _set(["g"], ["the red circle", "the blue square"]), "len(g) = 2 but expected 1"),
    ("rvos", _set(["g"], [" "]), "empty caption g[0]"),
    ("rvos", _set(["q"], ""), "'q' must be a non-empty string"),
    ("rvos", _set(["idx"], "3"), "'idx' must be an integer"),
    ("rvos", _set(["duration"], 0), "'duration' must be a positive number"),
    ("rvos", _set(["a"], 5), "'a' (model answer) must be a string"),
    ("stg", _set(["tgt"], [10, 4]), "'tgt' = [10, 4] is reversed (start > end)"),
    ("stg", _set(["tgt"], [-1, 4]), "'tgt' = [-1, 4] lies outside the video"),
    ("stg", _set(["tgt"], [3, 999]), "'tgt' = [3, 999] lies outside the video"),
    ("stg", _set(["tgt"], [[3, 5]]), "'tgt' must be one [start, end] pair"),
    ("stg", _set(["obj"], 5), "'obj' = 5 is out of range"),
    ("gcap", _set(["tgt", 0], [9, 2]), "'tgt[0]' = [9, 2] is reversed"),
    ("gcap", _set(["tgt", 1], [0, 500]), "'tgt[1]' = [0, 500] lies outside the video"),
    ("gcap", lambda r: r["tgt"].reverse(), "not sorted by (start, end)"),
    ("gcap", lambda r: r["g"].pop(), "len(g) = 5 but expected 6"),
    ("gcap", lambda r: r["refs"].pop(), "'refs' must be a list with one entry per caption (6)"),
    ("gcap", _set(["refs", 0], []), "refs[0] must be a non-empty list"),
    ("gcap", _set(["refs", 2, 0, "phrase"], "the purple hexagon"), "refs[2][0]: phrase 'the purple hexagon' is not in caption g[2]"),
    ("gcap", _set(["refs", 1, 0, "obj"], 3), "'refs[1][0].obj' = 3 is out of range"),
    ("gcap", _set(["refs", 1, 0], {"phrase": "the"}), "refs[1][0] must be {'phrase': str, 'obj': int}"),
    ("gcap", _set(["refs", 1, 0, "phrase"], ""), "refs[1][0]: empty phrase"),
]


@pytest.mark.parametrize("task,mutate,message", BROKEN, ids=[m for _, _, m in BROKEN])
def test_each_validation_error_fires(spec, recs, task, mutate, message):
    rec = _first(recs, task)
    S.validate_seg_record(rec, "seg.json", n_objects=len(spec.objects))  # the intact copy passes
    mutate(rec)
    with pytest.raises(DatasetError) as err:
        S.validate_seg_record(rec, "seg.json [4]", n_objects=len(spec.objects))
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert msg.startswith("seg.json [4] (idx ") and message in msg, msg


def test_not_a_record():
    with pytest.raises(DatasetError, match="x.json: a record must be a JSON object, got list"):
        S.validate_seg_record([], "x.json")


def test_ids_without_n_objects_need_only_be_non_negative(recs):
    rec = {**_first(recs, "rvos"), "obj": 40}
    assert S.validate_seg_record(rec, "x")["obj"] == 40
    with pytest.raises(DatasetError, match="'obj' = -2 is out of range: ids start at 0"):
        S.validate_seg_record({**rec, "obj": -2}, "x")


def test_record_list_errors(spec, recs):
    v = "videos/seg_00009.mp4"
    metas = {v: spec.to_meta(v)}
    with pytest.raises(DatasetError, match=r"seg \[1\] .*duplicate \(task, source, idx\)"):
        S.validate_seg_records([recs[0], recs[0]], "seg", metas)
    with pytest.raises(DatasetError, match="has no world description"):
        S.validate_seg_records(recs, "seg", {})
    with pytest.raises(DatasetError, match=f"duration 7 differs from the video's {spec.duration}"):
        S.validate_seg_records([{**recs[0], "duration": 7}], "seg", metas)
    with pytest.raises(DatasetError, match="out of range: the video has 3 objects"):  # ids checked against meta
        S.validate_seg_records([{**recs[0], "obj": 3}], "seg", metas)
