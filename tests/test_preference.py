"""d2lib.training.preference: every perturbation gives a well-formed, plausible, *wrong* record that differs
from the chosen one in the labelled way only; determinism; same response layout as the chosen."""
import copy
import doctest
import re
from collections import Counter

import numpy as np
import pytest

from d2lib.core import parsing
from d2lib.training import preference
from d2lib.world import synth
from d2lib.vlm import tokens
from d2lib.training.preference import TASK_TYPES, TYPES, make_pairs, perturb
from d2lib.core.spans import iou
from d2lib.vlm.tokens import EVI, EVI_END

N_VIDEOS = 24
VOCAB = set(synth.vocabulary())


@pytest.fixture(scope="module")
def world():
    """(records, spec of each record's video) for N_VIDEOS Shapes videos (no rendering)."""
    recs, specs = [], {}
    for seed in range(N_VIDEOS):
        spec = synth.sample_video(seed, synth.WorldConfig())
        rel = f"videos/t_{seed:05d}.mp4"
        specs[rel] = spec
        recs += synth.make_records(spec, rel, len(recs))
    return recs, specs


@pytest.fixture(scope="module")
def recs(world):
    return world[0]


def _events(rec):
    sp = tokens.record_spans(rec)
    caps = rec["g"] if rec["task"] == "dvc" else [None] * len(sp)
    return [(tuple(s), c) for s, c in zip(sp, caps)]


def _well_formed(chosen, rej):
    assert set(rej) == set(chosen) | {"perturbation"}
    for key in ("idx", "task", "source", "video", "duration", "q", "o"):
        assert rej.get(key) == chosen.get(key), key  # the prompt is shared
    flat = lambda r: all(isinstance(v, (int, float)) for v in r["tgt"])  # noqa: E731
    assert flat(rej) == flat(chosen)
    spans = tokens.record_spans(rej)
    assert spans, "a rejected record keeps at least one event"
    for s, e in spans:
        assert 0 <= s <= e <= rej["duration"]
    ints = all(isinstance(v, int) for sp in (rej["tgt"] if flat(rej) else rej["tgt"]) for v in
               ([sp] if flat(rej) else sp))
    assert ints, "Shapes spans stay integer seconds"
    if rej["task"] in ("dvc", "tal") and rej["perturbation"]["type"] != "shift":  # a shift keeps its place
        assert [s for s, _ in spans] == sorted(s for s, _ in spans), "sorted by start like the GT"
    if rej["task"] == "dvc":
        assert len(rej["g"]) == len(spans)
    for text in rej.get("g") or []:
        assert set(synth.tokenize(text)) <= VOCAB, text
        if rej["task"] == "dvc":
            assert synth.parse_caption(text) is not None, text
    meta = rej["perturbation"]
    assert meta["family"] == TYPES[meta["type"]]


def _false_for_video(cap, spec):
    """World truth: no event of the video is described by ``cap`` (its object with any of its colours)."""
    colour, shape, kind, target = synth.parse_caption(cap)
    for ev in spec.events:
        obj = spec.object(ev.object)
        colours = {obj.colour} | {e.target for e in spec.events_of(obj.id) if e.target}
        if obj.shape == shape and ev.kind == kind and colour in colours:
            return False
    return True


def _check_difference(kind, chosen, rej, spec):
    a, b = Counter(_events(chosen)), Counter(_events(rej))
    gone, new = list((a - b).elements()), list((b - a).elements())
    meta = rej["perturbation"]
    K = len(_events(chosen))
    if kind == "shift":
        assert len(gone) == len(new) == 1 and gone[0][1] == new[0][1], "one span moved, caption kept"
        (old, _), (moved, _) = gone[0], new[0]
        assert moved[1] - moved[0] == old[1] - old[0] and iou(old, moved) < 0.3
        if chosen["task"] == "tal":
            assert all(iou(moved, s) < 0.3 for s, _ in _events(chosen))
        assert rej.get("p") == chosen.get("p")
        assert rej.get("g") == chosen.get("g") and meta["event"] == meta["rejected_event"], "moved in place"
        assert meta["event"] is not None and _events(chosen)[meta["event"]] == gone[0]
        assert _events(rej)[meta["rejected_event"]] == new[0]
    elif kind == "wrong_attribute":
        assert rej["tgt"] == chosen["tgt"], "no span changes"
        if chosen["task"] == "gvq":
            assert rej["p"] != chosen["p"] and rej["o"][rej["p"]] != chosen["o"][chosen["p"]]
            return
        diff = [k for k, (x, y) in enumerate(zip(chosen["g"], rej["g"])) if x != y]
        assert diff == [meta["event"]] == [meta["rejected_event"]], "exactly one caption changes"
        old, cap = synth.parse_caption(chosen["g"][diff[0]]), synth.parse_caption(rej["g"][diff[0]])
        assert sum(x != y for x, y in zip(old[:3], cap[:3])) == 1, "one of colour/shape/action swapped"
        assert _false_for_video(cap=rej["g"][diff[0]], spec=spec)
    elif kind == "drop":
        assert len(gone) == 1 and not new and len(_events(rej)) == K - 1
        assert _events(chosen)[meta["event"]] == gone[0] and meta["rejected_event"] is None
    elif kind == "add":
        assert len(new) == 1 and not gone and len(_events(rej)) == K + 1
        span, cap = new[0]
        if chosen["task"] == "tal":  # a dvc event is wrong by its caption; it may overlap in a crowded video
            assert all(iou(span, s) < 0.3 for s, _ in _events(chosen))
        assert span[1] - span[0] in {s[1] - s[0] for s, _ in _events(chosen)}, "a GT-like length"
        if chosen["task"] == "dvc":
            assert cap not in chosen["g"] and _false_for_video(cap, spec)
        assert meta["event"] is None and _events(rej)[meta["rejected_event"]] == new[0]
    elif kind == "merge":
        assert len(gone) == 2 and len(new) == 1 and len(_events(rej)) == K - 1
        (s1, c1), (s2, c2) = gone
        assert list(new[0][0]) == [min(s1[0], s2[0]), max(s1[1], s2[1])], "the hull of the two"
        assert new[0][1] in (c1, c2)
        order = sorted(range(K), key=lambda i: _events(chosen)[i][0])
        pos = sorted(order.index(_events(chosen).index(g)) for g in gone)
        assert pos[1] == pos[0] + 1, "neighbours in start order"
    elif kind == "repeat":
        assert len(new) == 1 and not gone and new[0] in a and len(_events(rej)) == K + 1
        k = meta["rejected_event"]
        assert rej["g"][k] == rej["g"][k - 1] and rej["tgt"][k] == rej["tgt"][k - 1], "said twice in a row"
    else:
        raise AssertionError(kind)


def test_doctests():
    assert doctest.testmod(preference).failed == 0


def test_task_table_and_families():
    assert set(TYPES.values()) == {"grounding", "text"}
    assert TASK_TYPES["tvg"] == ("shift",) and set(TASK_TYPES["dvc"]) == set(TYPES)
    assert "rar" not in TASK_TYPES
    assert {t for ts in TASK_TYPES.values() for t in ts} == set(TYPES)


@pytest.mark.parametrize("kind", list(TYPES))
def test_every_type_is_well_formed_and_wrong_in_the_labelled_way(world, kind):
    recs, specs = world
    rng = np.random.default_rng(0)
    made, skipped = Counter(), 0
    for rec in recs:
        if kind not in preference.applicable_types(rec):
            continue
        before = copy.deepcopy(rec)
        rej = perturb(rec, kind, rng)
        assert rec == before, "the chosen record is not mutated"
        if rej is None:
            skipped += 1
            continue
        _well_formed(rec, rej)
        assert rej["perturbation"]["type"] == kind
        _check_difference(kind, rec, rej, specs[rec["video"]])
        made[rec["task"]] += 1
    assert set(made) == {t for t, ts in TASK_TYPES.items() if kind in ts}, made
    assert skipped <= 0.05 * (sum(made.values()) + skipped), (kind, skipped, made)


def test_not_applicable():
    tvg = {"idx": 0, "task": "tvg", "duration": 20, "q": "?", "tgt": [3, 6], "g": ["the red circle grows"]}
    with pytest.raises(ValueError, match="does not apply"):
        perturb(tvg, "add", 0)
    with pytest.raises(ValueError, match="unknown"):
        perturb(tvg, "swap", 0)
    tal = {"idx": 1, "task": "tal", "duration": 20, "q": "?", "tgt": [[3, 6]], "g": ["growing"]}
    assert perturb(tal, "drop", 0) is None and perturb(tal, "merge", 0) is None
    assert preference.applicable_types(tal) == ("shift", "add")
    nested = {**tal, "tgt": [[2, 10], [4, 6]]}  # merging a span inside another is just a drop
    assert perturb(nested, "merge", 0) is None
    whole = {**tvg, "tgt": [0, 19]}  # no room to move the span
    assert perturb(whole, "shift", 0) is None


def test_shift_stays_inside_video_and_uses_both_scales(recs):
    rng = np.random.default_rng(3)
    moved = []
    for rec in recs:
        if rec["task"] == "tvg":
            rej = perturb(rec, "shift", rng, end_margin=1.0)
            assert 0 <= rej["tgt"][0] and rej["tgt"][1] <= rec["duration"] - 1
            moved.append(abs(rej["tgt"][0] - rec["tgt"][0]))
    assert min(moved) >= 1 and max(moved) > 8  # length-scale and video-scale moves both occur
    strict = perturb(recs[0], "shift", 0, max_iou=0.01)
    assert iou(strict["tgt"], recs[0]["tgt"]) == 0.0


def test_make_pairs_deterministic_and_mix(recs):
    a = make_pairs(recs, np.random.default_rng(7))
    b = make_pairs(recs, np.random.default_rng(7))
    assert [(p.type, p.rejected) for p in a] == [(p.type, p.rejected) for p in b]
    c = make_pairs(recs, np.random.default_rng(8))
    assert [p.rejected for p in a] != [p.rejected for p in c]
    assert make_pairs(recs, 7)[0].rejected == a[0].rejected  # an int seed works like a Generator
    grounded = [r for r in recs if r["task"] in TASK_TYPES]
    assert len(a) == len(grounded), "one pair per grounded record (rar skipped)"
    for p in a:
        assert p.family == TYPES[p.type] == p.rejected["perturbation"]["family"]
        assert p.chosen is not p.rejected and p.event == p.rejected["perturbation"]["event"]
    assert set(preference.type_counts(a)) == set(TYPES)

    text = make_pairs(recs, 0, {"wrong_attribute": 1.0, "repeat": 1.0})
    assert {p.chosen["task"] for p in text} == {"dvc", "gvq"} and {p.family for p in text} == {"text"}
    only = make_pairs(recs, 0, {"shift": 1.0, "drop": 0.0})
    assert {p.type for p in only} == {"shift"} and len(only) == len(grounded)
    heavy = preference.type_counts(make_pairs([r for r in recs if r["task"] == "dvc"] * 8, 0,
                                              {"merge": 9.0, "repeat": 1.0}))
    assert heavy["merge"] > 3 * heavy["repeat"]
    many = make_pairs([r for r in recs if r["task"] == "dvc"], 0, per_record=3)
    assert len(many) == 3 * N_VIDEOS
    for k in range(0, len(many), 3):
        assert len({p.type for p in many[k:k + 3]}) == 3, "distinct types per record"
    with pytest.raises(ValueError, match="unknown"):
        make_pairs(recs, 0, {"shfit": 1.0})
    with pytest.raises(ValueError, match="weights"):
        make_pairs(recs, 0, {"shift": -1.0})


VARIANTS = {
    "full": dict(prefix=True, answer_evidence="evi", head="span"),
    "factorized": dict(prefix=True, answer_evidence="text", head="span"),
    "coupled": dict(prefix=False, answer_evidence="evi", head="span"),
    "frame_level": dict(prefix=True, answer_evidence="evi", head="frame"),
    "text_timestamps": dict(prefix=False, answer_evidence="text", head="none"),
}


def _skeleton(resp, rec):
    """The response with its captions, option letter and times blanked: the layout."""
    text = resp.text
    for cap in sorted(set(rec.get("g") or []) | set(rec.get("o") or []), key=len, reverse=True):
        text = text.replace(cap, "CAP")
    text = re.sub(r"\([A-H]\)", "(X)", text)
    return parsing._RANGE.sub("S - E", text)


def _roundtrip(rec, resp):
    """The rendered rejected response reads back (with the metric parsers) as the rejected record."""
    values = [sp[0] if role == tokens.ROLE_START else sp[1] if role == tokens.ROLE_END else sp
              for sp, role in zip(resp.spans, resp.roles)]  # a frame-level token is one time
    shown = tokens.render_response(resp.text, values)
    _, answer, _ = parsing.split_evidence(shown)
    spans = [list(map(float, s)) for s in tokens.record_spans(rec)]
    if rec["task"] == "dvc":
        got_spans, caps, path = parsing.parse_dense_captions(answer)
        assert path == "range" and got_spans == spans
        assert [c.rstrip(".") for c in caps] == [g.lower() for g in rec["g"]]
    elif rec["task"] == "gvq":
        assert parsing.parse_option(answer)[0] == rec["p"] and parsing.parse_spans(answer)[0] == spans
    else:
        assert parsing.parse_spans(answer)[0] == spans


@pytest.mark.parametrize("name", list(VARIANTS))
def test_rejected_renders_with_the_chosen_layout(recs, name):
    from types import SimpleNamespace

    v = SimpleNamespace(**VARIANTS[name])
    for p in make_pairs(recs, np.random.default_rng(1), per_record=6):
        rc, rr = tokens.build_response(p.chosen, v), tokens.build_response(p.rejected, v)
        kc, kr = len(tokens.record_spans(p.chosen)), len(tokens.record_spans(p.rejected))
        per_event = Counter(rc.events)
        assert set(per_event) == set(range(kc)) or v.head == "none"
        n = set(per_event.values()) | set(Counter(rr.events).values())
        assert len(n) <= 1, "same number of <evi> per event in chosen and rejected"
        assert rr.text.count(EVI) == len(rr.spans) == (n.pop() * kr if n else 0)
        assert rr.text.count(EVI_END) == rc.text.count(EVI_END)
        assert sorted(set(rr.stages)) == sorted(set(rc.stages))
        assert Counter(rr.stages)[tokens.STAGE_PREFIX] == (kr * (2 if v.head == "frame" else 1) if v.prefix else 0)
        if kr == kc:  # shift / wrong_attribute: the very same layout, only spans or one caption differ
            assert _skeleton(rr, p.rejected) == _skeleton(rc, p.chosen)
            if p.type == "shift" and v.answer_evidence == "evi":
                assert rr.text == rc.text and rr.spans != rc.spans, "a shift lives in the grounding only"
        _roundtrip(p.rejected, rr)
