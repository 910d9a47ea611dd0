"""d2lib.world.synth: world rules, byte-identical rendering per seed, E.T. Bench records, exports, CLI."""
import json
import re

import numpy as np
import pytest

from d2lib.core import config
from d2lib.world import synth, video
from d2lib.core.config import ConfigError
from d2lib.world.synth import WorldConfig

CFG = WorldConfig()
SEEDS = range(60)
ALL_TASKS = ["tvg", "dvc", "rar", "gvq", "tal"]


def _key(spec, e):
    """What an event means: (colour at its start, shape, kind, target)."""
    return (spec.colour_at(e.object, e.start), spec.object(e.object).shape, e.kind, e.target)


# ----------------------------------------------------------------------------- params

@pytest.mark.parametrize("bad", [
    {"render_size": 63}, {"min_duration": 70}, {"max_objects": 0}, {"min_events": 7},
    {"distractor_rate": 1.5}, {"noise": -1.0}, {"crf": 60}, {"max_events": 9, "min_event_len": 2},
])
def test_world_config_range_checks_name_the_key(bad):
    with pytest.raises(ConfigError, match=r"world\."):
        config.from_dict(WorldConfig, bad, "world")


def test_benchmark_seeds_disjoint_from_training_and_each_other():
    b = synth.BenchmarkConfig()
    val = set(range(synth.split_seed(b, "val"), synth.split_seed(b, "val") + b.n_val))
    test = set(range(synth.split_seed(b, "test"), synth.split_seed(b, "test") + b.n_test))
    assert not val & test and min(val | test) >= synth.TRAIN_SEED_LIMIT
    with pytest.raises(ConfigError, match=r"benchmark\.seed"):
        synth.BenchmarkConfig(seed=123)
    with pytest.raises(ConfigError, match=r"benchmark\.n_val"):
        synth.BenchmarkConfig(n_val=synth.SPLIT_STRIDE + 1)


# ----------------------------------------------------------------------------- world rules

@pytest.mark.parametrize("cfg", [CFG, WorldConfig(max_objects=1), WorldConfig(min_objects=3, distractor_rate=1.0)])
def test_world_rules(cfg):
    for seed in SEEDS:
        spec = synth.sample_video(seed, cfg)
        assert spec.seed == seed
        assert cfg.min_duration <= spec.duration <= cfg.max_duration
        assert cfg.min_objects <= len(spec.objects) <= cfg.max_objects
        assert cfg.min_events <= len(spec.events) <= cfg.max_events
        assert list(spec.events) == sorted(spec.events, key=lambda e: (e.start, e.end, e.object))
        for o in spec.objects:
            mine = spec.events_of(o.id)
            assert all(a.end <= b.start for a, b in zip(mine, mine[1:])), "one thing at a time"
            kinds = [e.kind for e in mine]
            assert len(set(kinds)) == len(kinds), "each kind at most once per object"
            assert "appear" not in kinds[1:] and "disappear" not in kinds[:-1]
            assert not (o.shape == "circle" and "spin" in kinds)
        for e in spec.events:
            assert isinstance(e.start, int) and isinstance(e.end, int)
            assert 0 <= e.start < e.end <= spec.duration - 1
            assert cfg.min_event_len <= e.end - e.start <= cfg.max_event_len
            assert synth.parse_caption(e.caption) == _key(spec, e)
        # descriptions are unique for the whole video: per shape, colour sets are disjoint
        seen = set()
        for o in spec.objects:
            colours = {o.colour} | {e.target for e in spec.events_of(o.id) if e.target}
            looks = {(o.shape, c) for c in colours}
            assert not looks & seen
            seen |= looks


def test_objects_stay_in_frame():
    for seed in SEEDS:
        spec = synth.sample_video(seed, CFG)
        t = np.arange(0, spec.duration, 0.25)
        for o in spec.objects:
            tr = synth.track(spec, o.id, t)
            reach = tr["r"] * synth.CIRCUM[o.shape]
            assert np.all(tr["x"] - reach >= -1e-3) and np.all(tr["x"] + reach <= 1 + 1e-3)
            assert np.all(tr["y"] - reach >= -1e-3) and np.all(tr["y"] + reach <= 1 + 1e-3)


def test_distractors_present_at_rate_one():
    cfg = WorldConfig(min_objects=2, distractor_rate=1.0)
    for seed in range(20):
        spec = synth.sample_video(seed, cfg)
        distractors = [e for e in spec.events if e.distractor]
        assert distractors
        for d in distractors:  # same action, another object
            assert any(e.kind == d.kind and e.object != d.object and not e.distractor for e in spec.events)
    none = [synth.sample_video(s, WorldConfig(distractor_rate=0.0)) for s in range(20)]
    assert not any(e.distractor for spec in none for e in spec.events)


def test_meta_roundtrip():
    spec = synth.sample_video(5, CFG, duration=20)
    meta = json.loads(json.dumps(spec.to_meta("videos/x.mp4")))
    assert set(meta) == {"video", "duration", "seed", "objects", "events"}
    assert set(meta["events"][0]) >= {"kind", "object", "start", "end", "caption", "distractor"}
    assert synth.VideoSpec.from_meta(meta) == spec


# ----------------------------------------------------------------------------- rendering

def test_render_frames_shape_and_motion():
    cfg = WorldConfig(noise=0.0)
    spec = synth.sample_video(1, cfg, duration=16)
    frames = synth.render_frames(spec, cfg)
    assert frames.shape == (16 * cfg.render_fps, 64, 64, 3) and frames.dtype == np.uint8
    for e in spec.events:  # every event changes the picture between its start and end
        a, b = frames[e.start * cfg.render_fps], frames[e.end * cfg.render_fps]
        mid = frames[(e.start + e.end) * cfg.render_fps // 2]
        assert np.abs(a.astype(int) - b).sum() + np.abs(a.astype(int) - mid).sum() > 0, e


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    cfg = WorldConfig(min_duration=16, max_duration=16)
    paths = []
    for name, seed in [("a", 11), ("b", 11), ("c", 12)]:
        spec = synth.sample_video(seed, cfg)
        synth.write_mp4(synth.render_frames(spec, cfg), tmp_path / f"{name}.mp4", cfg.render_fps, cfg.crf)
        paths.append((tmp_path / f"{name}.mp4").read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- records

def _check_record(r, spec):
    assert set(r) <= {"idx", "task", "source", "video", "duration", "src", "tgt", "p", "o", "g", "q", "a"}
    assert r["source"] == "shapes" and r["duration"] == spec.duration and isinstance(r["q"], str)
    spans = {"tvg": [r.get("tgt")], "gvq": [r.get("tgt")], "rar": [r.get("src")]}.get(r["task"], r.get("tgt"))
    assert spans
    for s, e in spans:
        assert 0 <= s <= e <= r["duration"]
    events = {(e.start, e.end): e for e in spec.events}
    if r["task"] in ("rar", "gvq"):
        assert len(r["o"]) == 4 and len(set(r["o"])) == 4 and 0 <= r["p"] < 4
        assert "Options: (A) " in r["q"] and " (B) " in r["q"] and " (D) " in r["q"]
    if r["task"] == "tvg":
        assert len(r["g"]) == 1 and "The event happens in <start> - <end>" in r["q"]
        assert sum(e.caption == r["g"][0] for e in spec.events) == 1
        assert events[tuple(r["tgt"])].caption == r["g"][0]
    elif r["task"] == "dvc":
        assert len(r["g"]) == len(r["tgt"]) == len(spec.events)
        assert r["tgt"] == sorted(r["tgt"])
    elif r["task"] == "tal":
        kind = {v: k for k, v in synth.ACTION_NAMES.items()}[r["g"][0]]
        assert sorted(r["tgt"]) == sorted([e.start, e.end] for e in spec.events if e.kind == kind)
    elif r["task"] == "rar":
        ev = events[tuple(r["src"])]
        assert synth.parse_caption(r["o"][r["p"]]) == _key(spec, ev)
        near = {_key(spec, e) for e in spec.events if e.start <= ev.end and e.end >= ev.start}
        for i, o in enumerate(r["o"]):
            if i != r["p"]:
                assert synth.parse_caption(o) not in near, o
    elif r["task"] == "gvq":
        assert tuple(r["tgt"]) in events and "The evidence is in <start> - <end>" in r["q"]


def test_records_follow_the_schema():
    vocab = set(synth.vocabulary())
    for seed in SEEDS:
        spec = synth.sample_video(seed, WorldConfig(distractor_rate=0.8))
        recs = synth.make_records(spec, "videos/val_00001.mp4", start_idx=10)
        n_ev = len(spec.events)
        assert [r["task"] for r in recs] == ["tvg"] * n_ev + [t for t in ALL_TASKS if t != "tvg"]
        assert [r["idx"] for r in recs] == list(range(10, 14 + n_ev))
        assert sorted(tuple(r["tgt"]) for r in recs[:n_ev]) == sorted((e.start, e.end) for e in spec.events)
        assert recs == synth.make_records(spec, "videos/val_00001.mp4", start_idx=10)  # deterministic
        for r in recs:
            _check_record(r, spec)
            for text in [r["q"], *r.get("g", []), *r.get("o", [])]:
                assert set(synth.tokenize(text)) <= vocab, text


def test_gvq_answers_are_right():
    for seed in SEEDS:
        spec = synth.sample_video(seed, CFG)
        r = next(r for r in synth.make_records(spec, "v.mp4") if r["task"] == "gvq")
        question, answer = r["q"].split(" Options:")[0], r["o"][r["p"]]
        ev = next(e for e in spec.events if [e.start, e.end] == r["tgt"])
        if m := re.fullmatch(r"Which shape (.+)\?", question):
            assert synth.parse_phrase(m[1]) == (ev.kind, ev.target)
            assert answer == f"the {spec.describe(ev.object, ev.start)}"
            assert sum((e.kind, e.target) == (ev.kind, ev.target) for e in spec.events) == 1
        elif m := re.fullmatch(r"What colour is the (\w+) that (.+)\?", question):
            assert (m[1], synth.parse_phrase(m[2])) == (spec.object(ev.object).shape, (ev.kind, ev.target))
            assert answer == spec.colour_at(ev.object, ev.start)
        else:
            m = re.fullmatch(r"What does the (\w+ \w+) do( first| last)?\?", question)
            assert m and m[1] == spec.describe(ev.object, ev.start)
            mine = spec.events_of(ev.object)
            assert ev is {" first": mine[0], " last": mine[-1], None: mine[0]}[m[2]]
            assert synth.parse_phrase(answer) == (ev.kind, ev.target)


# ----------------------------------------------------------------------------- splits, exports, CLI

def test_render_split_and_exports(tmp_path):
    cfg = WorldConfig(min_duration=16, max_duration=18)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "val_00007.mp4").write_bytes(b"stale")
    records, metas = synth.render_split(tmp_path, 2, seed=1_000_000, cfg=cfg, name="val")
    assert len(records) == sum(4 + len(m["events"]) for m in metas) and len(metas) == 2
    assert json.loads((tmp_path / "annotations.json").read_text()) == records
    assert json.loads((tmp_path / "meta.json").read_text()) == metas
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["val_00000.mp4", "val_00001.mp4"]
    assert not list(tmp_path.rglob("*.tmp"))
    for m in metas:
        assert m["seed"] in (1_000_000, 1_000_001)
        frames = video.read_frames(tmp_path / m["video"], size=32)
        assert frames.shape == (m["duration"], 32, 32, 3)  # frame t = second t

    lines = (tmp_path / "charades.txt").read_text().splitlines()
    assert lines == synth.export_charades(records) and len(lines) == sum(len(m["events"]) for m in metas)
    tvg = [r for r in records if r["task"] == "tvg"]
    for line, r in zip(lines, tvg):
        m = re.fullmatch(r"(\S+) (\d+\.\d+) (\d+\.\d+)##(.+)", line)
        assert m and m[1] == r["video"].split("/")[-1][:-4]
        assert [float(m[2]), float(m[3])] == r["tgt"] and m[4] == r["g"][0]

    yc = json.loads((tmp_path / "youcook2.json").read_text())
    assert set(yc) == {"database"} and set(yc["database"]) == {"val_00000", "val_00001"}
    for r in (r for r in records if r["task"] == "dvc"):
        entry = yc["database"][r["video"].split("/")[-1][:-4]]
        assert set(entry) == {"duration", "subset", "annotations"} and entry["subset"] == "validation"
        assert [a["segment"] for a in entry["annotations"]] == r["tgt"]
        assert [a["sentence"] for a in entry["annotations"]] == r["g"]
        assert all(set(a) == {"id", "segment", "sentence"} for a in entry["annotations"])


def test_render_split_workers_give_same_bytes(tmp_path):
    cfg = WorldConfig(min_duration=16, max_duration=16)
    one = synth.render_split(tmp_path / "one", 2, seed=7, cfg=cfg, name="train")
    two = synth.render_split(tmp_path / "two", 2, seed=7, cfg=cfg, name="train", workers=2)
    assert one == two
    for m in one[1]:
        assert (tmp_path / "one" / m["video"]).read_bytes() == (tmp_path / "two" / m["video"]).read_bytes()


def test_cli_benchmark(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("world:\n  min_duration: 16\n  max_duration: 16\nbenchmark:\n  n_val: 1\n  n_test: 1\n")
    synth.main(["benchmark", "--out", str(tmp_path / "shapes"), "--params", str(params)])
    for split, seed in [("val", 1_000_000), ("test", 1_100_000)]:
        d = tmp_path / "shapes" / split
        assert {p.name for p in d.iterdir()} == {"videos", "annotations.json", "meta.json", "charades.txt", "youcook2.json"}
        assert json.loads((d / "meta.json").read_text())[0]["seed"] == seed
        assert (d / "videos" / f"{split}_00000.mp4").stat().st_size > 0
