"""d2lib.peers.univtg (the UniVTG-style specialist of lesson 08_peers) and d2lib.study.peers: targets and decoding round-trip,
the losses, a toy the specialist must learn, config validation, the peers aggregate on fixture cells, and one
real (tiny) specialist cell end to end."""
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ablation_fixture import fake_cells, fake_records, mini_project
from d2lib.study import ablation, peer_table, peers
from d2lib.core import config, headline, timing
from d2lib.peers import univtg
from d2lib.core.config import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


# ------------------------------------------------------------------------------ targets and decoding
@pytest.mark.parametrize("span,T", [([0, 0], 5), ([3, 7], 12), ([9, 11], 12), ([0, 19], 20), ([4, 5], 30)])
def test_every_foreground_frame_proposes_the_gt_span_exactly(span, T):
    fg, off = univtg.targets(span, T)
    first, last = span
    assert fg.tolist() == [float(first <= t <= last) for t in range(T)]
    props = univtg.frame_proposals(off)
    for t in range(first, last + 1):
        assert props[t].tolist() == [float(first), float(last)]
    assert univtg.decode(fg, off, duration=T) == [float(first), float(last)]
    assert (off >= 0).all()


def test_decode_clips_to_the_video_and_proposals_apply_nms():
    off = torch.tensor([[5.0, 1.0], [0.0, 9.0], [1.0, 1.0]])
    assert univtg.decode(torch.tensor([0.9, 0.1, 0.2]), off, duration=4) == [0.0, 1.0]  # [-5, 1] → [0, 1]
    assert univtg.decode(torch.tensor([0.1, 0.9, 0.2]), off, duration=4) == [1.0, 4.0]  # [1, 10] → [1, 4]
    score = torch.tensor([0.9, 0.8, 0.7])
    off = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.0, 0.5]])  # spans [0,2], [0,2], [2,2.5]
    props = univtg.proposals(score, off, duration=10, top_k=3, nms_iou=0.5)
    assert [p for p, _ in props] == [[0.0, 2.0], [2.0, 2.5]] and props[0][1] == pytest.approx(0.9)


def _proposals_by_torch_order(score, off, duration, top_k, nms_iou, order=None):
    """Greedy NMS written out, visiting frames in ``order`` (default: ``torch.argsort(descending=True)``,
    stable for T <= 16)."""
    from d2lib.core.spans import iou

    spans = univtg.frame_proposals(off).clamp(0.0, float(duration)).tolist()
    out = []
    for t in order if order is not None else torch.argsort(score, descending=True).tolist():
        if all(iou(spans[t], s) <= nms_iou for s, _ in out):
            out.append((spans[t], float(score[t])))
        if len(out) >= top_k:
            break
    return out


def test_proposals_hand_checked_with_ties():
    # frames 0..4 propose [0, 4], [0, 4], [2, 4], [3, 7], [3, 6] (offsets clipped to [0, 10])
    off = torch.tensor([[1.0, 4.0], [1.0, 3.0], [0.0, 2.0], [0.0, 4.0], [1.0, 2.0]])
    score = torch.tensor([0.5, 0.9, 0.9, 0.5, 0.7])
    # order 1, 2 (tie: earlier frame), 4, 0, 3; [2, 4] vs [0, 4] = 1/2 (kept at 0.5), [3, 6] vs [2, 4] = 1/4
    props = univtg.proposals(score, off, duration=10, top_k=5, nms_iou=0.5)
    assert props == [([0.0, 4.0], pytest.approx(0.9)), ([2.0, 4.0], pytest.approx(0.9)),
                     ([3.0, 6.0], pytest.approx(0.7))]
    assert [p for p, _ in univtg.proposals(score, off, duration=10, top_k=5, nms_iou=0.2)] == [[0.0, 4.0], [3.0, 6.0]]
    assert [p for p, _ in univtg.proposals(score, off, duration=10, top_k=2, nms_iou=1.0)] == [[0.0, 4.0], [2.0, 4.0]]
    assert props[0][0] == univtg.decode(score, off, duration=10)  # the first proposal is the answer
    # the same as greedy NMS in torch's order (stable for up to 16 frames)
    for top_k, nms_iou in ((5, 0.5), (5, 0.2), (2, 1.0), (1, 0.0)):
        assert univtg.proposals(score, off, 10, top_k, nms_iou) == _proposals_by_torch_order(score, off, 10, top_k, nms_iou)


def test_proposals_ties_keep_the_earlier_frame_at_any_length():
    gen = torch.Generator().manual_seed(0)
    for T in (5, 16, 40, 200):
        score = torch.randint(0, 3, (T,), generator=gen).float() / 2  # many ties
        off = torch.rand(T, 2, generator=gen) * 4
        props = univtg.proposals(score, off, duration=T, top_k=T, nms_iou=0.3)
        assert props[0][0] == univtg.decode(score, off, duration=T)
        by_score_then_frame = sorted(range(T), key=lambda t: (-float(score[t]), t))
        assert props == _proposals_by_torch_order(score, off, T, T, 0.3, by_score_then_frame)
        if T <= 16:  # torch's own sort is stable there: the same proposals as before
            assert props == _proposals_by_torch_order(score, off, T, T, 0.3)


def test_saliency_hinge_is_zero_when_inside_beats_outside_by_the_margin():
    fg = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    good = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert float(univtg.saliency_hinge(good, fg, mask, margin=0.5)) == 0.0
    bad = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert float(univtg.saliency_hinge(bad, fg, mask, margin=0.5)) == pytest.approx(1.5)
    # padding and queries without negatives are ignored
    assert float(univtg.saliency_hinge(bad, torch.ones(1, 4), mask, 0.5)) == 0.0
    assert float(univtg.saliency_hinge(bad, fg, torch.tensor([[False, True, True, False]]), 0.5)) == 0.0


# ------------------------------------------------------------------------------ a toy it must learn
class _Tok:
    """Query words: 'a' → id 2, 'b' → id 3 (pad 0)."""

    pad_token_id, unk_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [{"a": 2, "b": 3}.get(w, 1) for w in text.split()]}


def _toy(n_videos: int, seed: int, T: int = 20, D: int = 8):
    """Videos with two events (channel 0 lights up during event a, channel 1 during b) + noise; one query
    per event: the query word names the event."""
    rng = np.random.default_rng(seed)
    feats, records = {}, []
    for k in range(n_videos):
        x = rng.normal(0, 0.3, size=(T, D)).astype(np.float32)
        a0 = int(rng.integers(0, T // 2 - 4))
        b0 = int(rng.integers(T // 2, T - 4))
        spans = {"a": [a0, a0 + int(rng.integers(2, 4))], "b": [b0, b0 + int(rng.integers(2, 4))]}
        for ch, w in enumerate("ab"):
            s, e = spans[w]
            x[s:e + 1, ch] += 1.0
        v = f"v{k}"
        feats[v] = torch.from_numpy(x)
        for w in "ab":
            records.append({"task": "tvg", "video": v, "duration": T, "tgt": spans[w], "g": [w], "idx": len(records)})
    return feats, records


def test_specialist_learns_which_event_the_query_names():
    cfg = univtg.UniVTGConfig(frame_input="frame_tokens", dim=32, layers=1, query_layers=1, heads=4, dropout=0.0,
                              steps=400, batch_size=16, lr=3e-3)
    tok = _Tok()
    feats, recs = _toy(48, seed=0)
    test_feats, test_recs = _toy(16, seed=1)
    torch.manual_seed(0)
    model = univtg.UniVTG(cfg, vocab_size=4, feat_dim=8, max_frames=32)
    log = univtg.fit(model, univtg.make_examples(recs, feats, tok), feats, cfg, seed=0, log_every=50)
    assert log[-1]["loss"] < log[0]["loss"]
    answered = univtg.predict(model, test_recs, test_feats, tok, cfg)
    scores = univtg.tvg_scores(answered)
    # a model that ignores the query finds the named event in at most half of the queries (two per video)
    from d2lib.core.parsing import parse_spans

    centre = [np.mean(parse_spans(r["a"])[0]) for r in answered]
    found = np.mean([r["tgt"][0] - 0.5 <= c <= r["tgt"][1] + 0.5 for r, c in zip(test_recs, centre)])
    assert found > 0.8 and scores["R1@0.3"] > 0.75 and scores["R1@0.5"] > 0.5, (found, scores)
    assert answered[0]["a"].startswith("The event happens in ")


def test_pixels_mode_encodes_frames_with_its_own_cnn():
    cfg = univtg.UniVTGConfig(frame_input="pixels", dim=16, layers=1, heads=2, steps=1)
    model = univtg.UniVTG(cfg, vocab_size=4, feat_dim=3)
    frames = torch.randint(0, 255, (2, 5, 32, 32, 3), dtype=torch.uint8)
    assert model.cnn(frames).shape == (2, 5, 16, 16)  # (V, T, P = 4·4, dim)
    out = model(frames, torch.tensor([0, 1, 1]), torch.ones(3, 5, dtype=torch.bool),
                torch.tensor([[2, 0], [3, 2], [2, 0]]), torch.tensor([[True, False], [True, True], [True, False]]))
    assert out["fg"].shape == (3, 5) and out["off"].shape == (3, 5, 2) and (out["off"] >= 0).all()


def test_save_and_load_round_trip(tmp_path):
    cfg = univtg.UniVTGConfig(frame_input="frame_tokens", dim=16, layers=1, heads=2)
    model = univtg.UniVTG(cfg, vocab_size=5, feat_dim=8).eval()
    univtg.save(model, tmp_path)
    back = univtg.load(tmp_path)
    x = torch.randn(1, 6, 8)
    args = (x, torch.tensor([0]), torch.ones(1, 6, dtype=torch.bool), torch.tensor([[2, 3]]), torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(model(*args)["fg"], back(*args)["fg"])
    # the bytes of a plain torch.save to univtg.pt (torch names the zip's folder after the file), no temporaries
    obj = {"cfg": dataclasses.asdict(cfg), "vocab_size": 5, "feat_dim": 8, "max_frames": model.max_frames,
           "state": model.state_dict()}
    (tmp_path / "plain").mkdir()
    torch.save(obj, tmp_path / "plain" / "univtg.pt")
    assert (tmp_path / "univtg.pt").read_bytes() == (tmp_path / "plain" / "univtg.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "univtg.pt"]


# ------------------------------------------------------------------------------ params
def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"peers\.univtg\.heads"):
        univtg.UniVTGConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match=r"peers\.univtg\.steps"):
        univtg.UniVTGConfig(steps=0)
    with pytest.raises(ConfigError, match=r"peers\.rows"):
        peers.PeersConfig(rows=("full", "univtg"))
    with pytest.raises(ConfigError, match=r"peers\.baseline"):
        peers.PeersConfig(rows=("text_timestamps",))
    with pytest.raises(ConfigError, match=r"peers\.seeds"):
        peers.PeersConfig(seeds=())
    with pytest.raises(ConfigError, match=r"peers\.univtg\.frame_input"):
        config.from_dict(peers.PeersConfig, {"univtg": {"frame_input": "clip"}}, "peers")
    with pytest.raises(ConfigError, match=r"peers\.from_ablation"):
        peers.PeersConfig(rows=("full", "numpro"), from_ablation=("full",))
    with pytest.raises(ConfigError, match=r"peers\.from_ablation"):
        peers.PeersConfig(from_ablation=("univtg",))
    assert peers.PeersConfig(rows=("numpro",), from_ablation=("full",)).baseline == "full"  # baseline may be reused
    repo = config.load_section("peers")
    assert repo.baseline in repo.all_rows() and "univtg" in repo.specialists and len(repo.seeds) >= 1
    assert set(repo.rows) | set(repo.from_ablation) <= set(config.load_section("variants").names())
    abl = config.load_section("ablation")  # the reused rows are ablation rows trained with the peers budget
    assert set(repo.from_ablation) <= set(abl.variants) and set(repo.seeds) <= set(abl.seeds)
    assert all(getattr(repo, k) == abl.schedule()[k] for k in peers.SHARED_SCHEDULE)
    assert set(repo.eval_tasks) <= set(abl.eval_tasks)
    assert not set(repo.cells()) & {(r, s) for r in repo.from_ablation for s in repo.seeds}  # never trained twice
    smoke = config.load_section("peers", profile="smoke")
    assert smoke.univtg.steps < repo.univtg.steps and smoke.eval_max_videos <= 3
    a = repo.ablation_config()
    assert (a.sft_steps, a.eval_max_videos, a.preference) == (repo.sft_steps, repo.eval_max_videos, ())


# ------------------------------------------------------------------------------ the aggregate
def _fixture_cells(root):
    records, _ = fake_records()
    cells = fake_cells(root, {"full": 0.7, "text_timestamps": 0.2, "univtg": 0.9}, seeds=(0,), records=records)
    # frame tokens per video, frames per video, training steps, trainable parameters (LLM rows: LoRA + heads)
    costs = {"full": (8.0, 40.0, 200, 5000), "text_timestamps": (40.0, 40.0, 200, 4000), "univtg": (40.0, 40.0, 300, 900)}
    for (row, seed), c in cells.items():
        d = peers.cell_dir(row, seed, root)
        tokens, frames, steps, params = costs[row]
        c["metrics"] = {"inference": {"n_queries": 10, "frame_tokens": tokens, "frames_per_video": frames}}
        c["train"] = ({"steps": steps, "params": params} if row == "univtg" else
                      {"steps": steps, "trainable": {"trainable": params, "total": 10 * params}})
        if row == "univtg":
            c["kind"] = "specialist"
            rec = pd.read_csv(d / "records.csv")
            rec[rec.task == "tvg"].to_csv(d / "records.csv", index=False)
            c["values"] = {k: (v if k.startswith(("charades.", "tvg.")) else None) for k, v in c["values"].items()}
        (d / "metrics.json").write_text(json.dumps(c))
    return cells


def test_aggregate_writes_the_table_comparisons_and_statement(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))  # the aggregate's timing log goes under tmp_path/artifacts
    root = tmp_path / "peers"
    cells = _fixture_cells(root)
    pcfg = peers.PeersConfig(rows=("full", "text_timestamps"), specialists=("univtg",), seeds=(0,), n_boot=200)
    out = peer_table.aggregate(pcfg, root=root, metrics_path=tmp_path / "m" / "peers.json", plots_dir=tmp_path / "p")
    table = out["table"].set_index("row")
    assert list(table.index) == ["full", "text_timestamps", "univtg"]
    for row in table.index:
        v = cells[(row, 0)]["values"]
        assert table.loc[row, "R@1@0.5"] == pytest.approx(v["charades.R1@0.5"])
        assert table.loc[row, "mIoU"] == pytest.approx(v["charades.mIoU"])
        assert math.isnan(table.loc[row, "R@1@0.5_low"])  # one seed: no t-interval
        assert table.loc[row, "R@1@0.5_boot_low"] <= table.loc[row, "R@1@0.5"] <= table.loc[row, "R@1@0.5_boot_high"]
        assert table.loc[row, "seeds"] == "0" and table.loc[row, "n_seeds"] == 1
    assert math.isnan(table.loc["univtg", "dvc F1"])  # not applicable, not 0
    assert table.loc["univtg", "frame_tokens"] == 40.0 and table.loc["univtg", "trainable_params"] == 900
    assert table.loc["full", "trainable_params"] == 5000 and table.loc["univtg", "train_steps"] == 300
    assert not {"train_s", "infer_s_per_query"} & set(table.columns)  # wall times: the timing logs, via bench
    shown = peer_table.display_table(out["table"])
    assert shown.loc["UniVTG-style specialist", "dvc F1"] == "n/a" and shown.loc["D²VLM (full)", "seeds"] == "1 (0)"
    assert shown.loc["D²VLM (full)", "trainable params"] == "5,000" and shown.loc["D²VLM (full)", "train steps"] == "200"
    assert {"train s", "inference ms / query"}.isdisjoint(shown.columns)
    saved = pd.read_csv(tmp_path / "p" / "peers_table.csv")
    assert np.allclose(saved["R@1@0.5"], out["table"]["R@1@0.5"])
    j = json.loads((tmp_path / "results" / "peers.json").read_text())  # everything, beside the headline
    head = json.loads((tmp_path / "m" / "peers.json").read_text())
    assert head == headline.headline("peers", j) and head["rows_higher"] + head["rows_lower"] + head["rows_unresolved"] == 2
    assert head["baseline_R1@0.5"] == pytest.approx(cells[("full", 0)]["values"]["charades.R1@0.5"])
    assert j["baseline"] == "full" and j["rows"]["univtg"]["metrics"]["F1(cap)"]["mean"] is None
    assert j["rows"]["univtg"]["cost"]["seeds"] == [0] and j["not_applicable"] == {"univtg": ["F1(cap)"]}
    comp = j["comparisons"]["univtg/charades.R1@0.5"]
    diff = cells[("univtg", 0)]["values"]["charades.R1@0.5"] - cells[("full", 0)]["values"]["charades.R1@0.5"]
    assert comp["diff"] == pytest.approx(diff) and comp["verdict"] in ("higher", "lower", "not resolved")
    assert j["comparisons"]["text_timestamps/charades.R1@0.5"]["verdict"] == "lower"  # 0.2 vs 0.7 on every video
    assert "UniVTG-style specialist vs D²VLM (full): R@1@0.5 " in j["statement"]
    assert f"{100 * diff:+.1f}" in j["statement"] and "1 seed(s)" in j["statement"]
    assert "900 vs 5,000 trainable parameters" in j["statement"] and "300 vs 200 training steps" in j["statement"]
    assert " ms" not in j["statement"] and "timing" not in j and j["rows"]["full"]["cost"]["trainable_params"] == 5000
    assert timing.read("peers_aggregate", root=tmp_path / "artifacts" / "logs" / "timing")["seconds"] >= 0
    with pytest.raises(FileNotFoundError, match="missing peers cell"):
        peer_table.aggregate(dataclasses.replace(pcfg, seeds=(0, 1)), root=root, metrics_path=tmp_path / "x.json",
                        plots_dir=tmp_path / "q")


def test_from_ablation_rows_are_read_from_the_ablation_cells_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))
    records, _ = fake_records()
    abl_root, root = tmp_path / "ablation", tmp_path / "peers"
    reused = fake_cells(abl_root, {"full": 0.7}, seeds=(0,), records=records)
    own = fake_cells(root, {"text_timestamps": 0.3}, seeds=(0,), records=records, seed=1)
    sched = ablation.AblationConfig().schedule()
    pcfg = peers.PeersConfig(rows=("text_timestamps",), from_ablation=("full",), specialists=(), seeds=(0,),
                             n_boot=100, **{k: sched[k] for k in peers.SHARED_SCHEDULE})
    assert pcfg.cells() == [("text_timestamps", 0)] and pcfg.table_cells()[0] == ("full", 0)
    out = peer_table.aggregate(pcfg, root=root, ablation_root=abl_root, metrics_path=tmp_path / "metrics" / "m.json",
                          plots_dir=tmp_path / "p")
    table = out["table"].set_index("row")
    assert list(table.index) == ["full", "text_timestamps"]
    assert table.loc["full", "source"] == "ablation" and table.loc["text_timestamps", "source"] == "peers"
    assert table.loc["full", "R@1@0.5"] == pytest.approx(reused[("full", 0)]["values"]["charades.R1@0.5"])
    assert set(out["records"]["task"]) == set(pcfg.eval_tasks)  # the ablation's other tasks are dropped
    assert peer_table.display_table(out["table"]).loc["D²VLM (full)", "cells"] == "ablation's"
    j = json.loads((tmp_path / "results" / "m.json").read_text())
    assert j["from_ablation"]["rows"] == ["full"] and "timing" not in j
    assert table.loc["text_timestamps", "R@1@0.5"] == pytest.approx(own[("text_timestamps", 0)]["values"]["charades.R1@0.5"])
    assert "text_timestamps/charades.R1@0.5" in j["comparisons"]
    kw = dict(root=root, ablation_root=abl_root, metrics_path=tmp_path / "x.json", plots_dir=tmp_path / "q")
    with pytest.raises(ConfigError, match=r"peers\.from_ablation.*sft_steps"):
        peer_table.aggregate(dataclasses.replace(pcfg, sft_steps=sched["sft_steps"] + 1), **kw)
    with pytest.raises(FileNotFoundError, match="missing ablation cell"):
        peer_table.aggregate(dataclasses.replace(pcfg, seeds=(0, 1)), **kw)


# ------------------------------------------------------------------------------ one real (tiny) specialist cell
def test_univtg_cell_trains_and_scores_on_a_mini_project(tmp_path, monkeypatch):
    root = mini_project(tmp_path / "proj")
    monkeypatch.setenv("D2LIB_ROOT", str(root))
    pcfg = peers.PeersConfig(seeds=(0,), eval_max_videos=2, n_boot=20,
                             univtg=univtg.UniVTGConfig(steps=3, batch_size=4, dim=16, heads=2, layers=1))
    p = peers.run_univtg_cell(0, pcfg)
    d = root / "artifacts" / "peers" / "univtg" / "0"
    assert p["kind"] == "specialist" and p["values"]["F1(cap)"] is None
    assert p["values"]["charades.R1@0.5"] is not None and p["n_videos"] == 2
    assert p["metrics"]["inference"]["frame_tokens"] == p["metrics"]["inference"]["frames_per_video"] > 0
    rows = pd.read_csv(d / "records.csv")
    assert set(rows["task"]) == {"tvg"} and len(rows) == p["n_records"]
    assert (d / "univtg.pt").is_file() and (d / "metrics.json").is_file() and (d / "loss.csv").is_file()
    assert univtg.load(d).cfg.steps == 3
    assert not {"seconds", "seconds_parts"} & set(p) and "seconds" not in p["train"]
    assert "seconds" not in p["metrics"]["inference"] and str(root) not in (d / "metrics.json").read_text()
    log = timing.read("peers/univtg/0", root=root / "artifacts" / "logs" / "timing")
    assert log["seconds"] > 0 and {"train_s", "evaluate_s", "infer_s", "infer_s_per_query", "univtg_setup_s",
                                   "univtg_train_s"} <= set(log)
