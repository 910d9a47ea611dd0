"""d2lib.peers.timerep (lesson 08_peers): the peers' time representations as Variant switches — NumPro digits are
readable at the Shapes frame size, text time formats read back to seconds, TimeMarker's separators and
TimeChat's embedding change only what they name, and every time row trains and generates end to end."""
import re

import numpy as np
import pytest
import torch

from d2lib.core import config
from d2lib.peers import timerep
from d2lib.vlm import tokens
from d2lib.core.config import ConfigError
from d2lib.vlm.model import Variant
from d2lib.stages.sft import prepare_vocabulary
from test_model import EXTRA, T_FRAMES, batch_for, build, make_samples

TIME_ROWS = ["numpro", "timemarker", "timechat", "vtimellm", "vtgllm"]
TEXT = Variant(prefix=False, answer_evidence="text", head="none", injection=False, consistency=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def samples():
    recs, vids = make_samples()
    return recs, vids


def fresh_tok(recs):
    return tokens.train_word_tokenizer(tokens.record_texts(recs + EXTRA), max_seconds=T_FRAMES)


# --- NumPro ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64, 224])
def test_numpro_digits_render_red_bottom_right_and_read_back(size):
    rng = np.random.default_rng(0)
    T = 64 if size == 32 else 12
    frames = rng.integers(0, 200, (T, size, size, 3), dtype=np.uint8)
    frames[..., 0] = np.minimum(frames[..., 0], 150)  # no accidental pure red in the background
    drawn = timerep.draw_frame_numbers(frames)
    assert drawn.dtype == np.uint8 and drawn.shape == frames.shape
    assert [timerep.read_frame_number(f, max_number=T) for f in drawn] == list(range(T))
    assert all(timerep.read_frame_number(f, max_number=T) is None for f in frames[:5])  # nothing drawn, nothing read
    changed = (drawn != frames).any(-1)  # (T, H, W)
    rows_, cols_ = np.nonzero(changed.any(0))
    assert rows_.min() >= size * 0.75 and cols_.min() >= size * 0.5  # bottom-right corner only
    assert (drawn[changed] == timerep.RED).all()
    h = timerep.number_mask(7, timerep.digit_scale(size, size)).shape[0]
    assert h == 5 * max(1, size // 32)  # the digits scale with the frame


def test_numpro_torch_and_float_frames_and_wrong_count():
    f = torch.zeros(3, 32, 32, 3, dtype=torch.uint8)
    d = timerep.draw_frame_numbers(f, numbers=[5, 17, 42])
    assert isinstance(d, torch.Tensor) and f.sum() == 0  # a copy
    assert [timerep.read_frame_number(x) for x in d] == [5, 17, 42]
    fl = timerep.draw_frame_numbers(torch.zeros(2, 32, 32, 3))
    assert fl.max() == 1.0 and timerep.read_frame_number(fl[1]) == 1
    with pytest.raises(ValueError, match="2 numbers for 3 frames"):
        timerep.draw_frame_numbers(f, numbers=[1, 2])
    with pytest.raises(ValueError, match="does not fit"):
        timerep.draw_frame_numbers(np.zeros((1, 6, 6, 3), np.uint8), numbers=[123])


def test_numpro_model_tower_sees_numbers_and_prompt_says_so(samples, rows):
    recs, vids = samples
    tok = fresh_tok(recs)
    numpro = rows.get("numpro")
    m = build(tok, TEXT)
    feats_plain = m.encode_tower(vids[0][None])
    m.variant = numpro
    feats_num = m.encode_tower(vids[0][None])
    drawn = timerep.draw_frame_numbers(vids[0])
    m.variant = TEXT
    assert torch.allclose(m.encode_tower(drawn[None]), feats_num)  # = drawing, then the plain tower
    assert not torch.allclose(feats_plain, feats_num)
    prepare_vocabulary(m, tok, numpro)
    ex = tokens.encode_example(recs[0], T_FRAMES, numpro, tok)
    text = tok.decode(ex["input_ids"].tolist())
    assert timerep.NUMPRO_LINE.rstrip(".") in text and tok.unk_token not in text
    assert ex["response"] == "The event happens in from 1 to 4."  # frame numbers, 1 fps


# --- text time formats ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", timerep.TIME_FORMATS)
def test_formats_read_back_to_seconds(fmt):
    rng = np.random.default_rng(1)
    for _ in range(50):
        d = float(rng.integers(10, 64))
        s = float(rng.integers(0, d - 1))
        e = float(rng.integers(s + 1, d + 1))
        written = timerep.format_span_as([s, e], fmt, duration=d)
        back = timerep.to_seconds_text(f"in {written}.", fmt, duration=d)
        got = [float(x) for x in back[3:-1].split(" - ")]
        tol = d / (2 * timerep.REL_MAX) + 0.05 if fmt == "relative" else 1e-9
        assert abs(got[0] - s) <= tol and abs(got[1] - e) <= tol, (fmt, s, e, d, written, back)


def test_relative_indices_are_two_digits_00_to_99():
    assert timerep.format_span_as([0, 30], "relative", duration=30) == "from 00 to 99"
    assert timerep.to_relative([0.2, 29.9], 30) == (1, 99)
    with pytest.raises(ValueError, match="duration"):
        timerep.to_relative([1, 2], 0)
    with pytest.raises(ValueError, match="duration"):
        timerep.to_seconds_text("from 10 to 20", "relative")


def test_variant_validation_names_the_key():
    with pytest.raises(ConfigError, match="variants.*.time_format"):
        Variant(time_format="relative")  # full: times are <evi>, not text
    with pytest.raises(ConfigError, match="variants.extra.x.time_format"):
        config.from_dict(Variant, {"time_format": "minutes"}, "variants.extra.x")
    with pytest.raises(ConfigError, match="diff_threshold"):
        Variant(diff_threshold=2.0)
    with pytest.raises(ConfigError, match="one token-budget mechanism"):
        Variant(stc_stride=2, merge_budget=8)
    assert Variant() == Variant(time_format="seconds", frame_numbers=False, time_separators=False,
                                time_embedding=False, frame_select="all", merge_budget=0, stc_stride=1)


def test_time_tokens_are_special_tokens_of_the_tokenizer(samples, rows):
    recs, vids = samples
    tok = fresh_tok(recs)
    m = build(tok, TEXT)
    n_old, emb_old = len(tok), m.lm.get_input_embeddings().weight.detach().clone()
    new = prepare_vocabulary(m, tok, rows.get("vtgllm"))
    assert len(new) == len(timerep.TIME_TOKENS) and set(timerep.TIME_TOKENS) <= set(tok.all_special_tokens)
    w = m.lm.get_input_embeddings().weight
    assert w.shape[0] == len(tok) == n_old + 11
    assert torch.allclose(w[:n_old], emb_old) and torch.allclose(w[new[0]], emb_old.mean(0), atol=1e-6)
    ex = tokens.encode_example(recs[0], T_FRAMES, rows.get("vtgllm"), tok)
    assert ex["response"] == "The event happens in <t1><t.><t0> - <t4><t.><t0>."
    resp_ids = ex["input_ids"][ex["labels"] != tokens.IGNORE_INDEX].tolist()
    assert {tok.convert_tokens_to_ids(t) for t in ("<t1>", "<t4>", "<t.>", "<t0>")} <= set(resp_ids)
    assert tok.unk_token_id not in resp_ids
    times = tokens.time_rep(rows.get("vtgllm"))
    assert isinstance(times, timerep.PeerTimes)
    assert tokens.render_response(resp_ids, [], tok, times=times) == "The event happens in 1 - 4."
    assert tokens.render_response(resp_ids, [], tok) != "The event happens in 1 - 4."  # not read back: time tokens
    assert prepare_vocabulary(m, tok, rows.get("vtgllm")) == []  # idempotent


# --- TimeMarker and TimeChat change only what they name --------------------------------------
def test_timemarker_separators_layout(samples, rows):
    recs, vids = samples
    tok = fresh_tok(recs)
    tm = rows.get("timemarker")
    m = build(tok, TEXT)
    prepare_vocabulary(m, tok, tm)
    plain, sep = (tokens.encode_example(recs[6], T_FRAMES, v, tok) for v in (TEXT, tm))
    video = tok.convert_tokens_to_ids(tokens.VIDEO)
    assert len(sep["frame_pos"]) == T_FRAMES and (sep["input_ids"][sep["frame_pos"]] == video).all()
    assert int((sep["input_ids"] == video).sum()) == T_FRAMES
    for t in range(T_FRAMES):  # the tokens before slot t spell second{t}
        start = sep["frame_pos"][t - 1] + 1 if t else sep["frame_start"]
        assert tok.decode(sep["input_ids"][start:sep["frame_pos"][t]].tolist()).replace(" ", "") == f"second{{{t}}}"
    # the response and the prompt text around the video are unchanged
    assert sep["response"] == plain["response"]
    n_resp = int((plain["labels"] != tokens.IGNORE_INDEX).sum())
    assert sep["input_ids"][-n_resp:].tolist() == plain["input_ids"][-n_resp:].tolist()
    last = int(sep["frame_pos"][-1]) + 1
    assert sep["input_ids"][last:].tolist() == plain["input_ids"][plain["frame_start"] + T_FRAMES:].tolist()
    assert "frame_pos" not in plain  # the plain layout adds no keys (every other row is unchanged)


def test_timechat_changes_frame_tokens_not_prompt_ids(samples, rows):
    recs, vids = samples
    tok = fresh_tok(recs)
    tc = rows.get("timechat")
    m = build(tok, TEXT)
    b_plain, b_tc = (batch_for(recs[:2], vids[:2], v, tok) for v in (TEXT, tc))
    assert b_plain.keys() == b_tc.keys() and all(torch.equal(b_plain[k], b_tc[k]) for k in b_plain if k != "frames")
    feats = m.encode_tower(b_plain["frames"])
    f0 = m.frame_tokens(feats, b_plain["frame_mask"])
    m.variant = tc
    f1 = m.frame_tokens(feats, b_plain["frame_mask"])
    delta = f1 - f0
    assert not torch.allclose(f0, f1)
    assert torch.allclose(delta[0], delta[1], atol=1e-6)  # a function of the second only, the same in every video
    assert not torch.allclose(delta[0, 0], delta[0, 1])  # different seconds, different embeddings
    m.variant = TEXT
    assert not hasattr(m, "time_embed")  # switched off: its module is gone (save/load stay exact)


# --- every time row end to end ----------------------------------------------------------------
def _force_ids(m, prompt_len, target):
    """A logits hook that makes the model emit ``target`` ids in order (then <|end|>)."""
    seq = list(target) + [m.ids["end"]]

    def hook(module, args, kwargs, out):
        rel = kwargs["position_ids"] - (prompt_len - 1)  # (B, Lq)
        for i, t in enumerate(seq):
            out.logits[..., t] += 1000.0 * (rel == i).to(out.logits.dtype)
        return out

    return m.lm.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("row", TIME_ROWS)
def test_time_row_trains_and_generates_in_seconds(samples, rows, row, tmp_path):
    from d2lib.vlm.model import D2VLM

    recs, vids = samples
    tok = fresh_tok(recs)
    v = rows.get(row)
    m = build(tok, TEXT, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, vision_hidden=32,
              vision_layers=1, vision_heads=2, vision_ffn=64)
    prepare_vocabulary(m, tok, v)
    m.variant = v
    rs, vs = [recs[0], recs[6], EXTRA[2]], [vids[0], vids[6], vids[3][:10]]
    b = batch_for(rs, vs, v, tok)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    m.train()
    losses = []
    for _ in range(4):
        out = m(**b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    if v.time_embedding:
        assert m.time_embed.proj.weight.grad is not None and m.time_embed.proj.weight.grad.abs().sum() > 0
    m.eval()
    # force the target response through KV-cached generation: what people read is in seconds
    for r, vid in zip(rs, vs):
        pb = batch_for([r], [vid], v, tok, False, "left")
        ex = tokens.encode_example(r, len(vid), v, tok)
        target = ex["input_ids"][ex["labels"] != tokens.IGNORE_INDEX].tolist()[:-1]
        handle = _force_ids(m, int(pb["attention_mask"].sum()), target)
        try:
            fast, slow = m.generate(**pb, tokenizer=tok), m.generate(**pb, tokenizer=tok, use_cache=False)
        finally:
            handle.remove()
        assert fast[0].ids == slow[0].ids == target + [m.ids["end"]]
        plain = tokens.build_response(r, TEXT).text
        if v.time_format == "relative":  # 00-99 quantises time: within duration/198 (+ rounding to 0.1 s)
            got = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", fast[0].text)]
            want = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", plain)]
            assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) <= len(vid) / 198 + 0.05
        else:
            assert fast[0].text == plain, (row, fast[0].text, plain)
    # the trained row saves and loads with its mechanism (TimeChat's embedding)
    m.save_pretrained(tmp_path / "m")
    back = D2VLM.from_pretrained(tmp_path / "m").eval()
    assert back.variant == v
    with torch.no_grad():
        assert torch.allclose(back(**b).loss, m(**b).loss, atol=1e-5)
