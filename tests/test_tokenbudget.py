"""d2lib.peers.tokenbudget (lesson 08_peers): DiffFP drops exactly the static frames and keeps the seconds, MovieChat
reaches its budget, STC pools by its stride; each row changes only the frame tokens the LM reads (the
response, the heads and the targets stay per second), trains, generates with the KV cache, and runs
through sft.run and an ablation cell."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from d2lib.core import config
from d2lib.peers import tokenbudget
from d2lib.vlm import tokens
from d2lib.vlm.model import Variant
from test_model import EXTRA, _force_evi, build, data  # noqa: F401 (data: test_model's module fixture, shared)

BUDGET_ROWS = ["diff_fp", "moviechat", "stc"]
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, vision_hidden=32, vision_layers=1,
            vision_heads=2, vision_ffn=64)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def batch_for(recs, vids, variant, tok, with_response=True, padding_side="right"):
    """test_model's batch_for with each video's DiffFP keep mask computed from its pixels."""
    keep = [tokenbudget.keep_masks(variant, {"v": v}) for v in vids]
    exs = [tokens.encode_example(r, len(v), variant, tok, with_response=with_response, keep=k and k["v"])
           for r, v, k in zip(recs, vids, keep)]
    return tokens.collate(exs, tok.pad_token_id, padding_side=padding_side, frames=list(vids))


def static_clip(seed=0):
    """(12, 32, 32, 3): scenes change at seconds 0, 4, 5 and 9; the other frames repeat the one before with
    ±1 noise (mean |Δ| ≈ 0.003 < 0.02)."""
    rng = np.random.default_rng(seed)
    scenes = {0: 40, 4: 120, 5: 200, 9: 90}
    v = np.zeros((12, 32, 32, 3), np.int16)
    level = 0
    for t in range(12):
        level = scenes.get(t, level)
        v[t] = level + rng.integers(-1, 2, (32, 32, 3))
    return torch.from_numpy(np.clip(v, 0, 255).astype(np.uint8))


# --- DiffFP -----------------------------------------------------------------------------------
def test_diff_fp_drops_exactly_the_static_frames_and_keeps_the_seconds(data):
    clip = static_clip()
    keep = tokenbudget.diff_keep_mask(clip, 0.02)
    assert torch.nonzero(keep).flatten().tolist() == [0, 4, 5, 9]
    tmap = tokenbudget.map_from_keep(keep)
    assert tmap.tolist() == [0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3]  # a dropped second reads the last kept frame
    # the previous *kept* frame is the reference: a slow drift is kept once it has accumulated
    drift = torch.stack([torch.full((8, 8, 3), 100 + 2 * t, dtype=torch.uint8) for t in range(10)])
    assert torch.nonzero(tokenbudget.diff_keep_mask(drift, 0.02)).flatten().tolist() == [0, 3, 6, 9]
    v = Variant(frame_select="diff")
    recs, vids, tok = data
    ex = tokens.encode_example(recs[0], 12, v, tok, keep=keep)
    video = tok.convert_tokens_to_ids(tokens.VIDEO)
    assert int((ex["input_ids"] == video).sum()) == 4 and ex["token_of_frame"].tolist() == tmap.tolist()
    # seconds stay seconds: the GT frames of each <evi> are those of the full row
    full = tokens.encode_example(recs[0], 12, Variant(), tok)
    assert torch.equal(ex["evi_frames"], full["evi_frames"]) and ex["response"] == full["response"]
    with pytest.raises(ValueError, match="variants.*frame_select"):
        tokens.encode_example(recs[0], 12, v, tok)  # no pixels, no keep mask
    assert tokenbudget.tokens_kept(v, {"a": clip}) == {"a": 4}


# --- MovieChat --------------------------------------------------------------------------------
def test_moviechat_merge_reaches_the_budget():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 16, generator=g)
    for budget in (1, 5, 19, 20, 30):
        merged, group = tokenbudget.merge_adjacent(x, budget)
        assert merged.shape == (min(20, budget), 16)
        assert group.tolist() == sorted(group.tolist()) and set(group.tolist()) == set(range(len(merged)))
        for k in range(len(merged)):  # size-weighted average = the mean of the frames it covers
            assert torch.allclose(merged[k], x[group == k].mean(0), atol=1e-5)
    # the most similar neighbours merge first: three constant stretches → exactly three tokens
    a, b, c = torch.eye(3)
    stretches = torch.stack([a] * 4 + [b] * 3 + [c] * 5) + 0.01 * torch.randn(12, 3, generator=g)
    _, group = tokenbudget.merge_adjacent(stretches, 3)
    assert group.tolist() == [0] * 4 + [1] * 3 + [2] * 5
    x.requires_grad_()
    merged, group = tokenbudget.merge_adjacent(x, 4)
    merged.sum().backward()  # d(mean of its group)/d(frame) = 1 / group size: gradients reach every frame
    sizes = torch.bincount(group).float()
    assert torch.allclose(x.grad, (1 / sizes[group])[:, None].expand(-1, 16))


# --- STC --------------------------------------------------------------------------------------
def test_stc_pools_by_the_stride():
    pool = tokenbudget.STCPool(8, 3)
    x = torch.randn(2, 10, 8)
    y = pool(x)
    assert y.shape == (2, math.ceil(10 / 3), 8)
    assert torch.allclose(y[:, 0], x[:, :3].mean(1), atol=1e-6)  # initialised as average pooling
    assert torch.allclose(y[:, 3], x[:, 9] / 3, atol=1e-6)  # the last window is zero-padded
    assert tokenbudget.stc_map(7, 3).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert tokenbudget.n_tokens(Variant(stc_stride=3), 10) == 4 and tokenbudget.n_tokens(Variant(), 10) == 10
    assert [tokenbudget.n_tokens(Variant(merge_budget=6), n) for n in (10, 4)] == [6, 4]


# --- each row changes only what it names ---------------------------------------------------------
def expected_slots(row, vid):
    if row == "diff_fp":
        return int(tokenbudget.diff_keep_mask(vid, 0.004).sum())
    if row == "moviechat":
        return min(len(vid), 24)
    return math.ceil(len(vid) / 2)


@pytest.mark.parametrize("row", BUDGET_ROWS)
def test_budget_row_changes_only_the_frame_tokens(data, rows, row):
    recs, vids, tok = data
    v, full = rows.get(row), rows.get("full")
    vids = [static_clip(1) if row == "diff_fp" else vid for vid in vids]  # a clip with static frames
    rs, vs = [recs[0], recs[6], *EXTRA], [vids[0], vids[6], vids[1], vids[2][:9], vids[3]]
    if row == "moviechat":  # a budget below the 12 seconds of these clips
        v = Variant(merge_budget=5)
    b, bf = batch_for(rs, vs, v, tok), batch_for(rs, vs, full, tok)
    video = tok.convert_tokens_to_ids(tokens.VIDEO)
    slots = (b["input_ids"] == video).sum(1).tolist()
    want = [min(len(x), 5) if row == "moviechat" else expected_slots(row, x) for x in vs]
    assert slots == want and b["token_mask"].sum(1).tolist() == want
    assert all(s < len(x) for s, x in zip(slots, vs))
    # everything but the <video> slots is the full row's: prompt text, response, per-second targets
    for k in ("labels", "evi_frames", "evi_role", "evi_batch", "evi_pairs", "frame_mask"):
        if k == "labels":
            strip = lambda t: [x for x in t.tolist() if x != tokens.IGNORE_INDEX]  # noqa: E731
            assert [strip(r) for r in b[k]] == [strip(r) for r in bf[k]]
        else:
            assert torch.equal(b[k], bf[k]), k
    no_video = lambda ids: [[x for x in r.tolist() if x not in (video, tok.pad_token_id)] for r in ids]  # noqa: E731
    assert no_video(b["input_ids"]) == no_video(bf["input_ids"])

    m = build(tok, v, **TINY).train()
    out = m(**b)
    N, T = len(b["evi_batch"]), b["frame_mask"].shape[1]
    assert out.scores.shape == (N, T) and out.frame_feats.shape[:2] == (len(rs), T)  # per second
    assert torch.isfinite(out.loss) and out.grounding_loss > 0
    out.loss.backward()
    if row == "stc":
        assert m.stc.conv.weight.grad.abs().sum() > 0
    # a second's frame features are those of the token covering it
    if row != "moviechat":
        tof = b["token_of_frame"]
        f = out.frame_feats
        for bb in range(len(rs)):
            n = int(b["frame_mask"][bb].sum())
            for t in range(1, n):
                if tof[bb, t] == tof[bb, t - 1]:
                    assert torch.allclose(f[bb, t], f[bb, t - 1])
    m.eval()
    pb = batch_for(rs, vs, v, tok, False, "left")
    handle = _force_evi(m, int(pb["attention_mask"].sum(1).max()))
    try:
        fast, slow = m.generate(**pb, tokenizer=tok), m.generate(**pb, tokenizer=tok, use_cache=False)
    finally:
        handle.remove()
    assert [g.ids for g in fast] == [g.ids for g in slow] and [g.values for g in fast] == [g.values for g in slow]
    for g, x in zip(fast, vs):
        assert g.values and all(0 <= s <= e <= len(x) for s, e in g.values)  # decoded in seconds
        assert g.probs.shape[1] == len(x)


@pytest.mark.parametrize("row", BUDGET_ROWS)
def test_budget_row_a_video_does_not_depend_on_its_batch(data, rows, row):
    recs, vids, tok = data
    v = Variant(merge_budget=5) if row == "moviechat" else rows.get(row)
    m = build(tok, v, **TINY)
    short = vids[0][:7]
    with torch.no_grad():
        alone = m(**batch_for([recs[0]], [short], v, tok))
        both = m(**batch_for([recs[0], recs[6]], [short, vids[6]], v, tok))
    n = len(alone.scores)
    assert torch.allclose(alone.scores[:, :7], both.scores[:n, :7], atol=1e-4)


def test_tokens_kept_report(rows):
    clips = {"a": static_clip(0), "b": static_clip(1)[:6]}
    assert tokenbudget.tokens_kept(rows.get("full"), clips) == {"a": 12, "b": 6}
    assert tokenbudget.tokens_kept(rows.get("stc"), clips) == {"a": 6, "b": 3}
    assert tokenbudget.tokens_kept(Variant(merge_budget=5), clips) == {"a": 5, "b": 5}
    kept = tokenbudget.tokens_kept(Variant(frame_select="diff"), clips)
    assert kept == {"a": 4, "b": 3}
    s = tokenbudget.budget_summary(Variant(frame_select="diff"), clips)
    assert s == {"videos": 2, "seconds": 18, "tokens": 7, "ratio": 7 / 18}
    with pytest.raises(ValueError, match="uint8"):
        tokenbudget.tokens_kept(Variant(frame_select="diff"), {"a": torch.zeros(4, 1, 2, 8)})


# --- the real stage functions ------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from ablation_fixture import mini_project

    return mini_project(tmp_path_factory.mktemp("peers_project"))


@pytest.mark.parametrize("row", ["numpro", "timemarker", "timechat", "vtimellm", "vtgllm", *BUDGET_ROWS])
def test_rows_run_through_sft_and_an_ablation_cell(project, monkeypatch, row):
    from d2lib.stages import evaluate
    from d2lib.study import ablation

    monkeypatch.setenv("D2LIB_ROOT", str(project))
    variants = config.load_section("variants")
    acfg, sft_cfg = ablation.load_config(), config.load_section("sft")
    out = project / "artifacts" / "ablation" / row / "0"
    payload = ablation.run_sft_cell(row, 0, acfg, sft_cfg, variants, out_dir=out)
    assert payload["train"]["steps"] == acfg.sft_steps and payload["n_records"] > 0
    inf = payload["metrics"]["inference"]
    if row in ("diff_fp", "stc"):
        assert inf["frame_tokens"] < inf["frames_per_video"]  # fewer tokens than seconds reached the LM
    else:  # (moviechat's budget of 24 is above these 12-second clips)
        assert inf["frame_tokens"] == inf["frames_per_video"]
    if row == "vtgllm":  # the grown vocabulary is saved where the later stages look for it
        tok = tokens.load_tokenizer(out / "tokenizer")
        assert "<t.>" in tok.get_vocab() and evaluate.tokenizer_dir(out / "final") == out / "tokenizer"
    answers = pd.read_csv(out / "records.csv")["answer"].astype(str).tolist()
    assert not any("<t" in a or " from " in f" {a} " for a in answers)  # people read seconds
