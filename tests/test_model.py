"""d2lib.vlm.model: shapes, the 4-D mask, gradients, overfitting, KV-cached generation, variants,
the phi3-mini preset at reduced depth, and save/load. Self-contained tiny frames + records."""
import dataclasses
import time

import numpy as np
import pytest
import torch

from d2lib.core import config
from d2lib.vlm import tokens
from d2lib.core.config import ConfigError
from d2lib.vlm.model import D2VLM, ModelConfig, Variant, VariantsConfig, attention_mask_4d, position_ids
from d2lib.core.spans import decode_span, soft_targets

T_FRAMES = 12
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 30)}


# --- tiny Shapes-like fixture ---------------------------------------------------------------
def make_video(T, events, seed=0):
    """(T, 32, 32, 3) uint8: a coloured square is visible during each event [s, e]."""
    rng = np.random.default_rng(seed)
    v = (rng.random((T, 32, 32, 3)) * 20).astype(np.uint8)
    for k, (colour, s, e) in enumerate(events):
        y, x = 4 + 14 * (k % 2), 4 + 12 * k
        v[s : e + 1, y : y + 10, x : x + 10] = COLOURS[colour]
    return torch.from_numpy(v)


def make_samples():
    """8 records (6 tvg, 2 dvc) and their videos."""
    tvg = [("red", 1, 4), ("green", 6, 10), ("blue", 0, 2), ("yellow", 3, 8),
           ("red", 8, 11), ("blue", 5, 6), ("green", 2, 3), ("yellow", 9, 11)]
    recs, vids = [], []
    for i, (c, s, e) in enumerate(tvg[:6]):
        recs.append({"idx": i, "task": "tvg", "tgt": [s, e], "g": [f"the {c} square appears"],
                     "q": f"Find the event: the {c} square appears."})
        vids.append(make_video(T_FRAMES, [(c, s, e)], seed=i))
    for i, ((c1, s1, e1), (c2, s2, e2)) in enumerate([(tvg[0], tvg[1]), (tvg[6], tvg[7])]):
        recs.append({"idx": 6 + i, "task": "dvc", "tgt": [[s1, e1], [s2, e2]],
                     "g": [f"the {c1} square appears", f"the {c2} square appears"],
                     "q": "Describe every event."})
        vids.append(make_video(T_FRAMES, [(c1, s1, e1), (c2, s2, e2)], seed=10 + i))
    return recs, vids


EXTRA = [  # one record per task, for the variant sweep
    {"idx": 20, "task": "gvq", "tgt": [2, 5], "o": ["red", "green", "blue", "yellow"], "p": 1,
     "q": "Which colour appears? (A) red (B) green (C) blue (D) yellow"},
    {"idx": 21, "task": "rar", "src": [2, 5], "o": ["grows", "shrinks", "spins", "appears"], "p": 3,
     "q": "What happens in 2 - 5?"},
    {"idx": 22, "task": "tal", "tgt": [[1, 3], [7, 9]], "g": ["appears"], "q": "Find every appearance."},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def data():
    recs, vids = make_samples()
    tok = tokens.train_word_tokenizer(tokens.record_texts(recs + EXTRA), max_seconds=T_FRAMES)
    return recs, vids, tok


def batch_for(recs, vids, variant, tok, with_response=True, padding_side="right", n_frames=None):
    exs = [tokens.encode_example(r, n_frames or len(v), variant, tok, with_response=with_response)
           for r, v in zip(recs, vids)]
    return tokens.collate(exs, tok.pad_token_id, padding_side=padding_side, frames=list(vids))


def build(tok, variant="full", seed=0, **cfg):
    torch.manual_seed(seed)
    v = VariantsConfig().get(variant) if isinstance(variant, str) else variant
    return D2VLM.build(ModelConfig(**cfg), v, tok).eval()


# --- params ---------------------------------------------------------------------------------
def test_config_defaults_and_errors():
    c = ModelConfig()
    assert (c.hidden_size, c.num_layers, c.num_heads, c.ffn_size) == (128, 4, 4, 512)
    assert (c.grounding_alpha, c.decode_ratio, c.grounding_weight, c.consistency_weight) == (2.0, 0.6, 10.0, 10.0)
    assert c.motion_mode == "channels" and ModelConfig(preset="phi3-mini").motion_mode == "second_pass"
    with pytest.raises(ConfigError, match="model.hidden_sise"):
        config.from_dict(ModelConfig, {"hidden_sise": 64}, "model")
    with pytest.raises(ConfigError, match="model.decode_ratio"):
        config.from_dict(ModelConfig, {"decode_ratio": 1.5}, "model")
    with pytest.raises(ConfigError, match="model.preset"):
        config.from_dict(ModelConfig, {"preset": "huge"}, "model")


def test_variants_config():
    vc = VariantsConfig()
    assert vc.names()[:8] == ["coupled", "factorized", "factorized_interleaved", "full", "consistency_from_start",
                              "no_visual_injection", "frame_level", "text_timestamps"]
    assert vc.get("factorized+interleaved") == Variant(consistency=False)
    assert vc.get("full") == Variant(prefix=True, answer_evidence="evi", head="span", injection=True, consistency=True,
                                     consistency_start=0.5)
    assert vc.get("consistency_from_start") == dataclasses.replace(vc.get("full"), consistency_start=0.0)
    assert vc.get("coupled").prefix is False and vc.get("text_timestamps").head == "none"
    with pytest.raises(KeyError, match="unknown variant"):
        vc.get("nope")
    loaded = config.from_dict(VariantsConfig, {"full": {"consistency": False},
                                               "extra": {"mine": {"head": "frame", "consistency": False}}}, "variants")
    assert loaded.full.consistency is False and loaded.get("mine").head == "frame"
    with pytest.raises(ConfigError, match="variants.full.heads"):
        config.from_dict(VariantsConfig, {"full": {"heads": "span"}}, "variants")
    with pytest.raises(ConfigError, match="variants.nope"):
        config.from_dict(VariantsConfig, {"nope": {}}, "variants")
    with pytest.raises(ConfigError, match="consistency"):
        Variant(prefix=False, consistency=True)
    with pytest.raises(ConfigError):
        Variant(head="none")  # a prefix of <evi> needs a head


# --- shapes and plumbing --------------------------------------------------------------------
def test_shapes_and_cached_tower(data):
    recs, vids, tok = data
    m = build(tok)
    b = batch_for(recs[:3], [vids[0], vids[1][:9], vids[2]], m.variant, tok)
    feats = m.encode_tower(b["frames"])
    B, T = b["frame_mask"].shape
    assert feats.shape == (B, T, 1, 16, 64)  # 1 stream, (32/8)^2 patches, width 64
    assert m.encode_tower(vids[0]).shape == (T_FRAMES, 1, 16, 64)
    assert m.frame_tokens(feats, b["frame_mask"]).shape == (B, T, 128)
    with torch.no_grad():
        out = m(**b)
        cached = m(**{k: v for k, v in b.items() if k != "frames"}, tower_feats=feats)
    N = len(b["evi_batch"])
    assert N == 6 and out.scores.shape == (N, T) and out.evi_feats.shape == (N, 128)
    assert out.logits.shape == (*b["input_ids"].shape, len(tok))
    assert torch.allclose(out.loss, cached.loss) and torch.allclose(out.scores, cached.scores)
    assert not out.score_mask[b["evi_batch"] == 1, 9:].any()  # padded frames of the 9-frame video


def test_tower_skips_padded_frames_and_dedupes_videos(data):
    """encode_tower(frame_mask) gives the valid frames' features of the unmasked call and zeros for
    padding; a batch holding each video once plus video_index (Collator(dedupe=True)) trains and
    generates exactly like the batch with one copy per example."""
    recs, vids, tok = data
    m = build(tok)
    b = batch_for(recs[:3], [vids[0], vids[1][:9], vids[2]], m.variant, tok)
    with torch.no_grad():
        full, masked = m.encode_tower(b["frames"]), m.encode_tower(b["frames"], b["frame_mask"])
    fm = b["frame_mask"]
    assert torch.allclose(full[fm], masked[fm], atol=1e-5) and not masked[~fm].any()
    # three queries on two videos: video 0 twice (with different targets), video 2 once
    qs = [recs[0], {**recs[0], "idx": 90, "tgt": [6, 9]}, recs[2]]
    shown = [vids[0], vids[0], vids[2]]
    exs = [tokens.encode_example(r, len(v), m.variant, tok) for r, v in zip(qs, shown)]
    per_example = tokens.collate(exs, tok.pad_token_id, frames=shown)
    deduped = tokens.collate(exs, tok.pad_token_id, frames=[vids[0], vids[2]], video_index=[0, 0, 1])
    assert deduped["frames"].shape[0] == 2 and deduped["video_index"].tolist() == [0, 0, 1]
    with torch.no_grad():
        a, d = m(**per_example), m(**deduped)
    assert torch.allclose(a.loss, d.loss, atol=1e-5) and torch.allclose(a.scores, d.scores, atol=1e-5)
    exs = [tokens.encode_example(r, len(v), m.variant, tok, with_response=False) for r, v in zip(qs, shown)]
    gen_a = m.generate(**tokens.collate(exs, tok.pad_token_id, "left", frames=shown), max_new_tokens=6)
    gen_d = m.generate(**tokens.collate(exs, tok.pad_token_id, "left", frames=[vids[0], vids[2]],
                                        video_index=[0, 0, 1]), max_new_tokens=6)
    assert [g.ids for g in gen_a] == [g.ids for g in gen_d]
    with pytest.raises(ValueError, match="unused"):
        m(**{**deduped, "video_index": torch.tensor([0, 0, 0])})


def test_frame_norm_and_pool_query_knobs(data, tmp_path):
    """model.frame_norm=embed puts frame tokens at the text-embedding scale (and survives save/load);
    model.pool_query_std sets the pooling query's init scale (None: width^-0.5, the default)."""
    recs, vids, tok = data
    b = batch_for(recs[:2], vids[:2], VariantsConfig().full, tok)
    m = build(tok, frame_norm="embed", pool_query_std=1.0)
    with torch.no_grad():
        ft = m.frame_tokens(m.encode_tower(b["frames"]), b["frame_mask"])
    text = m.lm.get_input_embeddings().weight.norm(dim=-1).mean()
    assert 0.5 < float(ft.norm(dim=-1).mean() / text) < 2.0
    assert 0.7 < float(m.pool.query.std()) < 1.3
    assert abs(float(build(tok).pool.query.std()) * 8 - 1) < 0.3  # default: 64^-0.5
    m.save_pretrained(tmp_path / "m")
    again = D2VLM.from_pretrained(tmp_path / "m")
    assert again.cfg.frame_norm == "embed" and torch.equal(again.projector[-1].weight, m.projector[-1].weight)
    with pytest.raises(ConfigError):
        ModelConfig(pool_query_std=0.0)


def test_early_states_equal_injection_layer_hidden_states(data):
    recs, vids, tok = data
    m = build(tok, "no_visual_injection")
    b = batch_for(recs[:2], vids[:2], m.variant, tok)
    with torch.no_grad():
        emb = m.embed(b["input_ids"], m.frame_tokens(m.encode_tower(b["frames"]), b["frame_mask"]),
                      b["frame_start"], b["frame_mask"])
        L = emb.shape[1]
        valid = b["attention_mask"].bool()
        mask = attention_mask_4d(valid, m._is_frame(b["frame_start"], b["frame_mask"], L), L, emb.dtype)
        pos = position_ids(valid)
        full = m.lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        early = m.early_states(emb[:, :30], mask[:, :, :30, :30], pos[:, :30])
    assert m.injection_layer == 1  # round(4 / 5)
    assert torch.allclose(early, full.hidden_states[m.injection_layer][:, :30], atol=1e-5)


# --- the 4-D mask, through the model --------------------------------------------------------
def _hidden(m, b, frames):
    with torch.no_grad():
        feats = m.encode_tower(frames)
        emb = m.embed(b["input_ids"], m.frame_tokens(feats, b["frame_mask"]), b["frame_start"], b["frame_mask"])
        L = emb.shape[1]
        valid = b["attention_mask"].bool()
        mask = attention_mask_4d(valid, m._is_frame(b["frame_start"], b["frame_mask"], L), L, emb.dtype)
        out = m.lm(inputs_embeds=emb, attention_mask=mask, position_ids=position_ids(valid), output_hidden_states=True)
    return out.hidden_states[-1][0]  # (L, H)


def test_mask_frames_bidirectional_text_causal(data):
    recs, vids, tok = data
    m = build(tok, "no_visual_injection", temporal_kernel=0)  # no conv: mixing only via attention
    b = batch_for(recs[:1], vids[:1], m.variant, tok)
    fs, T = int(b["frame_start"][0]), T_FRAMES
    h0 = _hidden(m, b, b["frames"])
    later_frame = b["frames"].clone()
    later_frame[0, T - 1] = 255 - later_frame[0, T - 1]
    h1 = _hidden(m, b, later_frame)
    assert (h1[fs] - h0[fs]).abs().max() > 1e-4, "frame 0 must see the last frame (bidirectional)"
    assert torch.allclose(h1[:fs], h0[:fs], atol=1e-6), "text before the video must not see frames"
    # perturb a later text token: every earlier position is unchanged, text stays causal
    p = int(b["evi_tok_pos"][-1]) + 1
    b2 = dict(b, input_ids=b["input_ids"].clone())
    b2["input_ids"][0, p] = tok.convert_tokens_to_ids("red")
    h2 = _hidden(m, b2, b["frames"])
    assert torch.allclose(h2[:p], h0[:p], atol=1e-6) and (h2[p] - h0[p]).abs().max() > 1e-4


def test_padding_invisible(data):
    """An example alone and inside a padded batch (right: training; left: prompts) agree."""
    recs, vids, tok = data
    m = build(tok)
    batch = batch_for([recs[0], recs[6]], [vids[0][:10], vids[6]], m.variant, tok)
    alone = batch_for(recs[:1], [vids[0][:10]], m.variant, tok)
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # row 0 is padded
    with torch.no_grad():
        a, b = m(**alone), m(**batch)
    k = int((batch["evi_batch"] == 0).sum())
    assert torch.allclose(a.scores, b.scores[:k, :10], atol=1e-5)
    n = alone["input_ids"].shape[1]
    assert torch.allclose(a.logits[0], b.logits[0, :n], atol=1e-5)
    # left padding (generation): the same prompt alone or padded gives the same tokens and spans
    g1 = m.generate(**batch_for(recs[:1], [vids[0][:10]], m.variant, tok, False, "left"), max_new_tokens=6)
    g2 = m.generate(**batch_for([recs[0], recs[6]], [vids[0][:10], vids[6]], m.variant, tok, False, "left"),
                    max_new_tokens=6)
    assert g1[0].ids == g2[0].ids


# --- gradients ------------------------------------------------------------------------------
def test_grounding_and_consistency_gradients_reach_heads_and_attention(data):
    recs, vids, tok = data
    m = build(tok).train()
    b = batch_for(recs[5:8], vids[5:8], m.variant, tok)
    out = m(**b)
    targets = {"frm_head": m.frm_head[1].weight, "evi_head": m.evi_head[1].weight,
               "qkv_proj": m.lm.model.layers[0].self_attn.qkv_proj.weight,
               "o_proj": m.lm.model.layers[1].self_attn.o_proj.weight}
    for name, loss in [("grounding", out.grounding_loss), ("consistency", out.consistency_loss)]:
        grads = torch.autograd.grad(loss, list(targets.values()), retain_graph=True, allow_unused=True)
        for (pname, _), g in zip(targets.items(), grads):
            if name == "consistency" and pname == "frm_head":
                assert g is None or g.abs().sum() == 0  # e_k does not read frame features
                continue
            assert g is not None and g.abs().sum() > 0, f"{name} loss does not reach {pname}"
    # the injection pass lets the LM loss reach the injection-layer frame states (and the tower)
    g = torch.autograd.grad(out.lm_loss, m.tower.embeddings.patch_embedding.weight)[0]
    assert g.abs().sum() > 0


# --- overfitting, generation ----------------------------------------------------------------
def _grounding_floor(b, T, alpha=2.0):
    """The BCE of a perfect predictor (σ(s) = y): the soft targets' entropy — excess is what can fall."""
    y = soft_targets(b["evi_frames"].tolist(), T, alpha).clamp(1e-6, 1 - 1e-6)
    mask = b["frame_mask"][b["evi_batch"]]
    return float(((-(y * y.log() + (1 - y) * (1 - y).log())) * mask).sum() / mask.sum())


def _all_decoded(out, b) -> bool:
    """Does every <evi>'s teacher-forced score decode to its GT frames?"""
    probs = out.scores.detach().sigmoid()
    return all(decode_span(p[m]) == tuple(f) for p, m, f in
               zip(probs, out.score_mask, b["evi_frames"].tolist()))


@pytest.fixture(scope="module")
def overfit(data):
    """The tiny model trained on the 8 samples (full variant)."""
    recs, vids, tok = data
    torch.manual_seed(0)
    m = build(tok, "full").train()
    b = batch_for(recs, vids, m.variant, tok)
    with torch.no_grad():
        feats = m.encode_tower(b["frames"])
    b = {k: v for k, v in b.items() if k != "frames"}
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("tower.")], lr=3e-3)
    floor, hist, streak, t0 = _grounding_floor(b, T_FRAMES), [], 0, time.time()
    for step in range(300):  # ≈ 140 steps at lr 3e-3; ~0.1 s/step on one thread
        out = m(**b, tower_feats=feats)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        hist.append((out.lm_loss.item(), out.grounding_loss.item() - floor, out.consistency_loss.item()))
        ok = hist[-1][0] < 0.05 * hist[0][0] and hist[-1][1] < 0.05 * hist[0][1] and _all_decoded(out, b)
        streak = streak + 1 if ok else 0
        if streak == 10:  # stable, not just touched once
            break
    return m.eval(), hist, time.time() - t0


def test_overfit_eight_samples(data, overfit):
    recs, vids, tok = data
    m, hist, secs = overfit
    (lm0, g0, _), (lm1, g1, _) = hist[0], hist[-1]
    assert lm1 <= 0.1 * lm0, f"LM loss {lm0:.3f} → {lm1:.3f}"
    assert g1 <= 0.1 * g0, f"grounding excess over the targets' entropy {g0:.3f} → {g1:.3f}"
    gens = m.generate(**batch_for(recs, vids, m.variant, tok, False, "left"), tokenizer=tok)
    for r, g in zip(recs, gens):
        resp = tokens.build_response(r, m.variant)
        assert g.ids == tok(resp.text, add_special_tokens=False)["input_ids"] + [m.ids["end"]]
        assert g.values == resp.spans, f"record {r['idx']}: decoded {g.values} vs GT {resp.spans}"
        assert g.text == tokens.render_response(resp.text, resp.spans)
        assert g.probs.shape == (len(resp.spans), T_FRAMES)


def test_cached_generation_equals_recomputation(data, overfit):
    recs, vids, tok = data
    m = overfit[0]
    b = batch_for(recs[4:8], [vids[4][:9], *vids[5:8]], m.variant, tok, False, "left")
    fast, slow = m.generate(**b, use_cache=True), m.generate(**b, use_cache=False)
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert [g.evi_frames for g in fast] == [g.evi_frames for g in slow]
    assert any(g.evi_frames for g in fast)
    for f, s in zip(fast, slow):
        assert torch.allclose(f.probs, s.probs, atol=1e-5)


def _force_evi(m, prompt_len):
    """A logits hook (a function of absolute position only) that makes a random model emit <evi>
    every third step and <|end|> after 9 — so cached/uncached injection paths are exercised."""

    def hook(module, args, kwargs, out):
        pos = kwargs["position_ids"]  # (B, Lq): the position each logit row sits at
        rel = pos - (prompt_len - 1)
        out.logits[..., m.ids["evi"]] += 100.0 * ((rel >= 0) & (rel % 3 == 0)).to(out.logits.dtype)
        out.logits[..., m.ids["end"]] += 200.0 * (rel >= 9).to(out.logits.dtype)
        return out

    return m.lm.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("variant", VariantsConfig().names())
def test_every_variant_forward_and_generate(data, variant):
    recs, vids, tok = data
    m = build(tok, variant)
    rs, vs = [recs[0], recs[6], *EXTRA], [vids[0], vids[6], vids[1], vids[2][:10], vids[3]]
    b = batch_for(rs, vs, m.variant, tok)
    out = m.train()(**b)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    m.eval()
    if m.variant.head == "none":
        assert len(out.scores) == 0 and out.grounding_loss == 0
    if not m.variant.consistency:
        assert out.consistency_loss == 0
    pb = batch_for(rs, vs, m.variant, tok, False, "left")
    handle = _force_evi(m, int(pb["attention_mask"].sum(1).max()))
    try:
        fast, slow = m.generate(**pb, tokenizer=tok), m.generate(**pb, tokenizer=tok, use_cache=False)
    finally:
        handle.remove()
    assert [g.ids for g in fast] == [g.ids for g in slow]
    assert [g.values for g in fast] == [g.values for g in slow]
    for g in fast:
        assert g.ids[-1] == m.ids["end"] and "<evi>" not in g.text or m.variant.head == "none"
        if m.variant.head != "none":
            assert len(g.values) == g.ids.count(m.ids["evi"]) > 0


# --- presets and checkpoints ----------------------------------------------------------------
def test_phi3_mini_preset_reduced_depth_runs(data):
    recs, vids, tok = data
    cfg = ModelConfig(preset="phi3-mini", random_init=True, lm_path="/nonexistent", vision_path="/nonexistent",
                      lm_overrides={"num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128,
                                    "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 16},
                      vision_overrides={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 64, "image_size": 32, "patch_size": 16})
    torch.manual_seed(0)
    m = D2VLM.build(cfg, VariantsConfig().get("full"), tok)
    assert m.n_streams == 2 and m.tower.config.num_channels == 3  # RGB pass + motion pass
    assert m.lm.config.vocab_size == len(tok) and m.lm.config.num_hidden_layers == 3
    assert m.lm.config.rope_parameters is not None  # Phi-3-mini config otherwise
    b = batch_for(recs[5:8], vids[5:8], m.variant, tok)
    assert m.encode_tower(b["frames"]).shape[2:] == (2, 4, 32)
    out = m(**b)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    gens = m.eval().generate(**batch_for(recs[5:7], vids[5:7], m.variant, tok, False, "left"), max_new_tokens=4)
    assert all(len(g.ids) <= 4 for g in gens)


def test_mean_init_rows():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    lm = Phi3ForCausalLM(Phi3Config(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    tokens.mean_init_rows(lm, [20, 21])
    w = lm.get_input_embeddings().weight
    assert w.shape[0] == 22
    assert torch.allclose(w[20], w[:20].mean(0)) and torch.allclose(w[21], w[:20].mean(0))
    assert torch.allclose(lm.get_output_embeddings().weight[21], lm.get_output_embeddings().weight[:20].mean(0))


def test_save_load_round_trip(data, tmp_path):
    recs, vids, tok = data
    m = build(tok, "frame_level", num_layers=2, hidden_size=64, ffn_size=128)
    m.save_pretrained(tmp_path / "ckpt")
    m2 = D2VLM.from_pretrained(tmp_path / "ckpt").eval()
    assert m2.variant == m.variant and m2.cfg == m.cfg and m2.ids == m.ids
    sd1, sd2 = m.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    b = batch_for(recs[:2], vids[:2], m.variant, tok)
    with torch.no_grad():
        assert torch.equal(m(**b).loss, m2(**b).loss)


def test_eager_attention_equals_sdpa(data):
    recs, vids, tok = data
    b = batch_for([recs[0], recs[6]], [vids[0][:10], vids[6]], Variant(), tok)
    with torch.no_grad():
        a = build(tok, "full")(**b)
        e = build(tok, "full", attn_implementation="eager")(**b)
    assert torch.allclose(a.logits, e.logits, atol=1e-4) and torch.allclose(a.scores, e.scores, atol=1e-4)


def test_lora_wrapped_lm(data, tmp_path):
    """peft LoRA on qkv_proj/o_proj (+ embed_tokens/lm_head saved): forward, gradients, generate."""
    from peft import LoraConfig, get_peft_model

    recs, vids, tok = data
    m = build(tok, "full")
    m.lm = get_peft_model(m.lm, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj"],
                                           modules_to_save=["embed_tokens", "lm_head"]))
    b = batch_for(recs[5:8], vids[5:8], m.variant, tok)
    out = m.train()(**b)
    out.loss.backward()
    lora = [p for n, p in m.lm.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora) and m.evi_head[1].weight.grad is not None
    gens = m.eval().generate(**batch_for(recs[5:7], vids[5:7], m.variant, tok, False, "left"), max_new_tokens=4)
    assert len(gens) == 2
    with torch.no_grad():  # give LoRA's B (zero-initialised) some weight, then save merged
        for n, p in m.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        before = m(**b)
    m.save_pretrained(tmp_path / "merged")
    m2 = D2VLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        after = m2(**b)
    assert torch.allclose(before.logits, after.logits, atol=1e-4)
    assert torch.allclose(before.scores, after.scores, atol=1e-4)


def test_phi3_mini_from_local_pretrained(data, tmp_path):
    """The pretrained path: from_pretrained on local folders (stand-ins for the hub checkpoints),
    our special tokens added to the LM's tokenizer, new embedding rows mean-initialised."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast, SiglipVisionConfig, SiglipVisionModel

    recs, vids, _ = data
    words = sorted({w for r in recs for w in tokens.prompt_text(r["q"])[1].replace(".", " . ").split()} |
                   {"The", "event", "happens", "in", "Describe", ".", ",", "-", "square", "appears", "the"} |
                   {str(i) for i in range(T_FRAMES)} | set(COLOURS))
    vocab = {w: i for i, w in enumerate(["<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", *words])}
    base = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    tok = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="<unk>",
                                  extra_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])
    n_old = len(tok)
    torch.manual_seed(0)
    Phi3ForCausalLM(Phi3Config(vocab_size=n_old, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
                    ).save_pretrained(tmp_path / "lm")
    SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "vit")
    tok.save_pretrained(tmp_path / "lm")  # the LM folder holds its tokenizer, as on the hub
    cfg = ModelConfig(preset="phi3-mini", lm_path=str(tmp_path / "lm"), vision_path=str(tmp_path / "vit"))
    tok, new = tokens.make_tokenizer(cfg)
    assert min(new) == n_old and len(new) == 4  # <video>, <evi>, </evi>, <pad>
    m = D2VLM.build(cfg, VariantsConfig().get("full"), tok, new_token_ids=new)
    w = m.lm.get_input_embeddings().weight
    assert w.shape[0] == len(tok) and torch.allclose(w[new[0]], w[:n_old].mean(0))
    assert m.n_streams == 2 and not m.tower.config.vision_use_head
    b = batch_for(recs[:2], vids[:2], m.variant, tok)
    out = m(**b)
    assert torch.isfinite(out.loss) and out.scores.shape[0] == 4  # two tvg: prefix + answer each
