"""d2lib.stages.evaluate: the evaluate stage's library — oracle answers score perfectly, a tiny untrained model
and the baselines write every file in its evaluator's format, metrics have the expected keys."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from d2lib.core import config, headline, timing
from d2lib.training import data
from d2lib.stages import evaluate as ev
from d2lib.evaluation import formats
from d2lib.world import synth
from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM, ModelConfig, VariantsConfig

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, vision_hidden=32, vision_layers=1,
            vision_heads=2, vision_ffn=64)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def split():
    """Records, metas and random 1-fps frames of 3 Shapes videos (no rendering), plus train records."""
    cfg = synth.WorldConfig(min_events=2, max_events=4, max_duration=20)
    records, metas, frames = [], {}, {}
    for k in range(3):
        spec = synth.sample_video(100 + k, cfg, duration=20 - 2 * k)
        name = f"videos/e_{k:02d}.mp4"
        records += synth.make_records(spec, name, start_idx=len(records))
        metas[name] = spec.to_meta(name)
        frames[name] = torch.from_numpy(np.random.default_rng(k).integers(0, 255, (spec.duration, 32, 32, 3),
                                                                            dtype=np.uint8))
    train = []
    for k in range(4):
        spec = synth.sample_video(200 + k, cfg, duration=18)
        train += synth.make_records(spec, f"videos/tr_{k}.mp4", start_idx=len(train))
    return records, metas, frames, train


@pytest.fixture(scope="module")
def tiny_model(split, tmp_path_factory):
    records, _, _, train = split
    root = tmp_path_factory.mktemp("tiny")
    tok = data.train_tokenizer(records + train, max_seconds=32)
    tok.save_pretrained(str(root / "tokenizer"))
    torch.manual_seed(0)
    D2VLM.build(ModelConfig(**TINY), VariantsConfig().get("full"), tok).save_pretrained(root / "final")
    return root


def _cfg(**kw):
    base = dict(caption_metrics=False, n_boot=100, max_new_tokens=12, batch_size=8)
    base.update(kw)
    return ev.EvaluateConfig(**base)


def oracle(records):
    """The answers a perfect full-variant model writes: GT spans in both stages."""
    v = VariantsConfig().get("full")
    out = []
    for r in records:
        resp = tokens.build_response(r, v)
        out.append({**r, "a": tokens.render_response(resp.text, resp.spans)})
    return out


def test_oracle_answers_score_perfectly(split, tmp_path):
    records, metas, _, _ = split
    res = ev.evaluate_system("oracle", "model", oracle(records), "</evi>", metas, _cfg(), tmp_path)
    m = res.metrics
    merged, tasks = m["etbench"]["merged"], m["etbench"]["tasks"]
    for k in ("F1(gnd)", "F1(gnd)_evi", "Acc(ref)", "F1(cap)", "F1(cap)_evi", "Rec(com)", "Rec(com)_evi"):
        assert merged[k] == pytest.approx(1.0), k
    assert tasks["tvg"]["F1"] == tasks["tvg"]["F1_evi"] == pytest.approx(1.0) and tasks["tvg"]["Failed"] == 0
    assert m["charades"]["R1@0.7"] == m["charades"]["mIoU"] == 1.0 and m["charades"]["parse_failure_rate"] == 0
    assert m["youcook2"]["F1"] == pytest.approx(1.0)
    assert m["youcook2"]["METEOR"] is None and m["youcook2"]["SODA_c"] is None  # caption_metrics off: not computed
    for k, ci in m["ci"].items():
        assert ci["estimate"] == pytest.approx(1.0) and ci["low"] == pytest.approx(1.0), k
    rows = pd.DataFrame(res.rows)
    assert (rows["score"] == 1.0).all() and rows.loc[rows.task == "tvg", "iou"].eq(1.0).all()
    assert rows.loc[rows.task.isin(["rar", "gvq"]), "correct"].all()


def test_per_record_scores_match_the_protocols(split, tmp_path):
    """The CSV's per-record ``score`` averages to the protocol's number (so the CIs are of that number)."""
    records, metas, _, _ = split
    rng = np.random.default_rng(0)
    answered = []
    for r in oracle(records):  # corrupt some answers: shifted spans, a wrong option, a missing </evi>
        a = r["a"]
        if r["task"] == "tvg" and rng.random() < 0.6:
            s, e = r["tgt"]
            a = f"{s} - {e}</evi>The event happens in {s + 2} - {e + 3}."
        elif r["task"] in ("rar", "gvq") and rng.random() < 0.5:
            a = a.replace(f"({'ABCD'[r['p']]})", f"({'ABCD'[(r['p'] + 1) % 4]})")
        elif rng.random() < 0.2:
            a = a.replace("</evi>", "")
        answered.append({**r, "a": a})
    res = ev.evaluate_system("mixed", "model", answered, "</evi>", metas, _cfg(), tmp_path)
    rows, tasks = pd.DataFrame(res.rows), res.metrics["etbench"]["tasks"]
    mean = rows.groupby("task")["score"].mean()
    assert mean["tvg"] == pytest.approx(tasks["tvg"]["F1"])
    assert mean["tal"] == pytest.approx(tasks["tal"]["F1"])
    assert mean["rar"] == pytest.approx(tasks["rar"]["Acc"])
    assert mean["gvq"] == pytest.approx(tasks["gvq"]["mRec"])
    assert mean["dvc"] == pytest.approx(res.metrics["youcook2"]["F1"])
    tvg = rows[rows.task == "tvg"]
    assert (tvg["iou_charades"] >= 0.5).mean() == pytest.approx(res.metrics["charades"]["R1@0.5"])
    assert res.metrics["ci"]["tvg.F1"]["estimate"] == pytest.approx(tasks["tvg"]["F1"])


def test_run_tiny_model_and_baselines_write_every_file(split, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))  # the stage's timing log goes under tmp_path/artifacts
    records, metas, frames, train = split
    cfg = _cfg(models=(str(tiny_model),), tfvtg=ev.TFVTGConfig(model=str(tiny_model), min_len=2))
    res = ev.run(cfg, out_root=tmp_path / "evaluate", records=records, frames=frames, metas=metas,
                 train_records=train)
    name = tiny_model.name
    assert list(res) == [name, "random", "prior", "whole", "tfvtg"]
    mpath, rpath = ev.write_outputs(res, cfg, tmp_path / "metrics" / "evaluate.json", tmp_path / "plots" / "rows.csv")
    # the model: every task answered, every format readable by its reader
    d = tmp_path / "evaluate" / name
    sub = formats.read_etbench_submission(d / "etbench")
    assert len(sub) == len(records) and all(isinstance(r["a"], str) for r in sub)
    tvg = [r for r in records if r["task"] == "tvg"]
    dvc = [r for r in records if r["task"] == "dvc"]
    assert set(formats.read_timechat_tvg_predictions(d / "timechat" / "tvg_pred.json")) == {str(r["idx"]) for r in tvg}
    assert len(formats.read_timechat_tvg_gt(d / "timechat" / "tvg_gt.json")["annotations"]) == len(tvg)
    assert len(formats.read_timechat_dvc_predictions(d / "timechat" / "dvc_pred.json")) == len(dvc)
    assert len(formats.read_timechat_dvc_gt(d / "timechat" / "test.caption_coco_format.json")["annotations"]) == len(dvc)
    details = json.loads((d / "details.json").read_text())
    assert set(details["scores"]) == {"etbench", "charades", "youcook2"}
    # files relative to the system's folder in details.json (absolute in memory)
    assert details["files"]["etbench"] == "etbench/submission.json" and str(tmp_path) not in (d / "details.json").read_text()
    assert all((d / f).is_file() for f in details["files"].values()) and res[name].files["etbench"] == str(d / "etbench" / "submission.json")
    # the full model answers ground-then-answer: one submission per stage next to the full one, the answer
    # stage for every record, the evidence stage for the span-only tasks
    stage_subs = {p: formats.read_etbench_submission(d / details["files"][f"etbench_{p}"]) for p in ("answer", "evidence")}
    assert len(stage_subs["answer"]) == len(records)
    assert {r["task"] for r in stage_subs["evidence"]} == {r["task"] for r in records} & set(formats.SPAN_TASKS)
    assert not any("</evi>" in r["a"] for sub in stage_subs.values() for r in sub)
    # baselines: tvg + tal only, no evidence stage, no dvc files
    for b in ev.BASELINES:
        assert not (tmp_path / "evaluate" / b / "etbench_stages").exists()
        bsub = formats.read_etbench_submission(tmp_path / "evaluate" / b / "etbench" / "submission.json")
        assert {r["task"] for r in bsub} == {"tvg", "tal"}
        assert not (tmp_path / "evaluate" / b / "timechat" / "dvc_pred.json").exists()
    # the full results (returned) and, beside them, the headline metrics: expected keys
    assert mpath == tmp_path / "results" / "evaluate.json"
    m = json.loads(mpath.read_text())
    head = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert head == headline.headline("evaluate", m) and len(head) == 4
    assert head["F1(gnd)"] == m["systems"][name]["etbench"]["merged"]["F1(gnd)"]
    assert m["split"] == "test" and set(m["systems"]) == {name, *ev.BASELINES}
    assert not any("seconds" in sm for sm in m["systems"].values())  # wall times: the timing log only
    log = timing.read("evaluate", root=tmp_path / "artifacts" / "logs" / "timing")
    assert set(log) >= {f"{s}_s" for s in m["systems"]} and log[f"{name}_s"] == pytest.approx(res[name].seconds, abs=1e-3)
    sm = m["systems"][name]
    assert {"F1(gnd)", "F1(gnd)_evi", "Acc(ref)", "F1(cap)", "Sim(cap)", "Rec(com)"} <= set(sm["etbench"]["merged"])
    assert set(sm["etbench"]["tasks"]) == set(ev.TASKS)
    assert {"F1", "F1_evi", "Failed", "Failed_evi", "n"} <= set(sm["etbench"]["tasks"]["tvg"])
    assert {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "parse_failure_rate"} <= set(sm["charades"])
    assert {"F1", "CIDEr_simpletok", "METEOR", "SODA_c"} <= set(sm["youcook2"])
    assert {"F1(gnd)", "tvg.F1", "charades.R1@0.5", "charades.mIoU", "youcook2.F1", "rar.Acc", "gvq.mRec"} <= set(sm["ci"])
    assert sm["evidence_stage"] is True and sm["variant"]["prefix"] is True
    bm = m["systems"]["tfvtg"]
    assert set(bm["etbench"]["tasks"]) == {"tvg", "tal"} and "F1(gnd)_evi" not in bm["etbench"]["merged"]
    assert 0.0 <= bm["etbench"]["merged"]["F1(gnd)"] <= 1.0 and bm["charades"]["parse_failure_rate"] == 0.0
    # per-record CSV
    rows = pd.read_csv(rpath)
    assert len(rows) == len(records) + len(ev.BASELINES) * sum(r["task"] in ("tvg", "tal") for r in records)
    for col in ("system", "task", "idx", "iou", "pred", "event_len", "n_events", "distractor", "score"):
        assert col in rows
    table = ev.results_table(m)
    assert list(table.index) == [name, *ev.BASELINES] and table.loc["tfvtg", "F1(cap)"] != table.loc["tfvtg", "F1(cap)"]


def test_tfvtg_similarity_shapes(split, tiny_model):
    records, _, frames, _ = split
    model, tok, _ = ev.load_model(str(tiny_model))
    recs = [r for r in records if r["task"] in ("tvg", "tal")][:4]
    for measure, layer in (("cosine", -2), ("cosine", 0), ("attention", 1), ("attention", -1), ("heads", -2)):
        sims = ev.baselines.frame_text_similarity(model, tok, recs, frames, layer=layer, measure=measure)
        assert [len(s) for s in sims] == [len(frames[r["video"]]) for r in recs]
        assert all(np.isfinite(s).all() for s in sims)
    assert model.lm.config._attn_implementation == "sdpa"  # restored after the attention pass
    with pytest.raises(ValueError):
        ev.baselines.frame_text_similarity(model, tok, recs, frames, layer=0, measure="attention")


def test_baseline_answers_parse_and_prior_uses_training_spans(split):
    records, _, _, train = split
    recs = [r for r in records if r["task"] in ("tvg", "tal", "dvc")]
    rnd = ev.random_answers(recs, seed=1)
    assert [r["task"] for r in rnd] == [r["task"] for r in recs if r["task"] != "dvc"]
    assert rnd == ev.random_answers(recs, seed=1)
    priors = ev.train_priors(train)
    assert len(priors["tvg"]) == sum(r["task"] == "tvg" for r in train)
    pri = ev.prior_answers(recs, priors)
    tvg = [r for r in pri if r["task"] == "tvg"]
    spans = [ev._stage_spans(r["a"], None, "answer")[0] for r in tvg]
    rel = {round(s / r["duration"], 2) for s, r in zip([sp[0] for sp in spans], tvg)}
    assert len(rel) <= 2  # the same relative start for every video (up to 0.1 s rounding)


def test_select_records_and_distractors():
    metas = {"v": {"events": [
        {"kind": "move_left", "object": 0, "start": 1, "end": 4, "caption": "the red circle moves left", "distractor": False},
        {"kind": "move_left", "object": 1, "start": 6, "end": 9, "caption": "the blue square moves left", "distractor": True},
        {"kind": "grow", "object": 0, "start": 10, "end": 12, "caption": "the red circle grows", "distractor": False}]}}
    tvg = lambda s, e, c: {"task": "tvg", "video": "v", "tgt": [s, e], "g": [c]}  # noqa: E731
    assert ev.distractor_info(tvg(1, 4, "the red circle moves left"), metas["v"]) == \
        {"distractor": True, "distractor_event": False}
    assert ev.distractor_info(tvg(6, 9, "the blue square moves left"), metas["v"])["distractor_event"] is True
    assert ev.distractor_info(tvg(10, 12, "the red circle grows"), metas["v"])["distractor"] is False
    assert ev.distractor_info({"task": "dvc", "video": "v"}, metas["v"])["distractor"] is True
    assert ev.distractor_info(tvg(0, 1, "nothing"), metas["v"]) == {"distractor": None, "distractor_event": None}


def test_params_section_and_smoke_profile():
    cfg = config.load_section("evaluate")
    assert cfg.split == "test" and "sft" in cfg.models and set(cfg.baselines) <= set(ev.BASELINES)
    smoke = config.load_section("evaluate", profile="smoke")
    assert smoke.max_videos > 0 and not smoke.caption_metrics
    with pytest.raises(config.ConfigError, match="evaluate.tfvtg.nope"):
        config.from_dict(ev.EvaluateConfig, {"tfvtg": {"nope": 1}}, "evaluate")
    with pytest.raises(config.ConfigError, match="baseline"):
        ev.EvaluateConfig(models=("random",))
    with pytest.raises(FileNotFoundError, match="evaluate.models"):
        ev.model_dir("/nonexistent/model")


def test_heads_similarity_is_the_align_contrastive_score(split, tiny_model):
    """measure="heads" equals e·f_t/√d of d2lib.training.videotext (frame features and caption features)."""
    from d2lib.training import videotext

    records, _, frames, _ = split
    model, tok, _ = ev.load_model(str(tiny_model))
    recs = [r for r in records if r["task"] == "tvg"][:3]
    sims = ev.baselines.frame_text_similarity(model, tok, recs, frames, measure="heads")
    f = videotext.frame_features(model, {r["video"]: frames[r["video"]] for r in recs}, tok)
    for r, s in zip(recs, sims):
        ids, mask = videotext.pad_ids([torch.tensor(tok(r["g"][0], add_special_tokens=False)["input_ids"])],
                                      tok.pad_token_id)
        e = videotext.caption_features(model, ids, mask)[0].float()
        ref = (f[r["video"]] @ e / np.sqrt(len(e))).detach().numpy()
        np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-5)


def test_whole_video_baseline_iou_is_the_event_share(split, tmp_path):
    records, metas, _, _ = split
    res = ev.evaluate_system("whole", "baseline", ev.whole_answers(records), None, metas, _cfg(), tmp_path)
    tvg = [r for r in res.rows if r["task"] == "tvg"]
    for row, r in zip(tvg, [r for r in records if r["task"] == "tvg"]):
        assert row["iou"] == pytest.approx((r["tgt"][1] - r["tgt"][0]) / r["duration"])


ODD_ANSWERS = [None, 5, [1, 2], {"a": "3 - 7"}, float("nan"), float("inf"),
               "The event happens in 0 - " + "9" * 400 + ".", "1e3 - 2e3</evi>1e3 - 2e3, a man.",
               "0:99 - 1:99</evi>The event happens in 0:99 - 1:99."]


def test_odd_answers_never_stop_the_stage_and_its_files_are_strict_json(split, tmp_path):
    records, metas, _, _ = split
    answered = [{**r, "a": ODD_ANSWERS[i % len(ODD_ANSWERS)]} for i, r in enumerate(records)]
    res = ev.evaluate_system("odd", "model", answered, "</evi>", metas, _cfg(), tmp_path / "evaluate")
    results, rows_csv = ev.write_outputs({"odd": res}, _cfg(), tmp_path / "metrics" / "evaluate.json",
                                         tmp_path / "rows.csv")
    tasks = res.metrics["etbench"]["tasks"]
    n = {t: sum(r["task"] == t for r in records) for t in tasks}
    for t in ("tvg", "tal", "dvc", "rar"):  # nothing is readable: every record is a counted failure
        assert tasks[t]["Failed"] == n[t], t
    assert res.metrics["charades"]["parse_failure_rate"] == 1.0 and res.metrics["youcook2"]["F1"] == 0.0
    assert not any(pd.DataFrame(res.rows)["parsed"])

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    files = sorted((tmp_path / "evaluate").rglob("*.json")) + [results, tmp_path / "metrics" / "evaluate.json"]
    assert len(files) == 10  # submission + its 2 stage files, tvg + dvc pred/gt, details; results + headline
    for f in files:
        json.loads(f.read_text(), parse_constant=refuse)
    sub = json.loads((tmp_path / "evaluate" / "odd" / "etbench" / "submission.json").read_text())
    assert [r["a"] for r in sub[:6]] == [""] * 6  # not text -> "", a parse failure for compute_metrics.py too
    assert len(pd.read_csv(rows_csv)) == len(records) and not list(tmp_path.glob("*.tmp"))
