"""d2lib.vlm.tokens: word-level tokenizer, special tokens, response layouts per variant (CONTRACTS.md),
example encoding/collation and rendering."""

import pytest
import torch

from d2lib.vlm import tokens
from d2lib.vlm.model import VariantsConfig
from d2lib.vlm.tokens import EVI, IGNORE_INDEX

TVG = {"idx": 0, "task": "tvg", "tgt": [3, 7], "g": ["the red circle grows"], "q": "When does the red circle grow?"}
DVC = {"idx": 1, "task": "dvc", "tgt": [[1, 4], [6, 9]], "g": ["cap1", "cap2."], "q": "Describe the video."}
GVQ = {"idx": 2, "task": "gvq", "tgt": [2, 5], "o": ["a", "option", "c", "d"], "p": 1, "q": "Which one?"}
RAR = {"idx": 3, "task": "rar", "src": [2, 5], "o": ["a", "b", "option", "d"], "p": 2, "q": "What happens in 2 - 5?"}
TAL = {"idx": 4, "task": "tal", "tgt": [[1, 3], [8, 10]], "g": ["spins"], "q": "Find every spin."}
RECS = [TVG, DVC, GVQ, RAR, TAL]
V = VariantsConfig()


@pytest.fixture(scope="module")
def tok():
    return tokens.train_word_tokenizer(tokens.record_texts(RECS), max_seconds=12)


def test_contract_layouts_full():
    full = V.get("full")
    assert tokens.build_response(TVG, full).text == "<evi></evi>The event happens in <evi>."
    assert tokens.build_response(DVC, full).text == "<evi><evi></evi><evi>, cap1. <evi>, cap2."
    assert tokens.build_response(GVQ, full).text == "<evi></evi>(B) option. The evidence is in <evi>."
    assert tokens.build_response(RAR, full).text == "</evi>(C) option."
    assert tokens.build_response(TAL, full).text == "<evi><evi></evi><evi>, <evi>"
    r = tokens.build_response(DVC, full)
    assert r.spans == [[1, 4], [6, 9], [1, 4], [6, 9]]
    assert (r.events, r.stages, r.roles) == ([0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0])


def test_layouts_other_variants():
    assert tokens.build_response(TVG, V.get("coupled")).text == "The event happens in <evi>."
    assert tokens.build_response(DVC, V.get("factorized")).text == "<evi><evi></evi>1 - 4, cap1. 6 - 9, cap2."
    assert tokens.build_response(GVQ, V.get("text_timestamps")).text == "(B) option. The evidence is in 2 - 5."
    assert tokens.build_response(RAR, V.get("coupled")).text == "(C) option."
    fl = tokens.build_response(TVG, V.get("frame_level"))
    assert fl.text == "<evi> - <evi></evi>The event happens in <evi> - <evi>."
    assert fl.roles == [tokens.ROLE_START, tokens.ROLE_END] * 2 and fl.stages == [0, 0, 1, 1]
    for name in V.names():  # every variant has a layout for every task
        for r in RECS:
            resp = tokens.build_response(r, V.get(name))
            assert resp.text.count(EVI) == len(resp.spans)
    with pytest.raises(ValueError, match="no response template"):
        tokens.build_response({"task": "xyz", "q": ""}, V.get("full"))


def test_record_spans_formats():
    assert tokens.record_spans({"tgt": [1, 2, 5, 6]}) == [[1, 2], [5, 6]]
    with pytest.raises(ValueError):
        tokens.record_spans({"tgt": [1, 2, 3]})


def test_tokenizer_specials_and_round_trip(tok, tmp_path):
    for t in tokens.EXTRA_SPECIALS + [tokens.PAD]:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [t]
    text = "<|user|>\n<video>\nWhen does the red circle grow?<|end|>\n<|assistant|>\n<evi></evi>The event happens in 3 - 12."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[-6:] == ["happens", "in", "3", "-", "12", "."]
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    tok.save_pretrained(tmp_path / "tok")
    tok2 = tokens.load_tokenizer(tmp_path / "tok")
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids
    assert tokens.special_ids(tok2) == tokens.special_ids(tok) and tok2.pad_token_id == tok.pad_token_id
    assert tok2.decode(ids) == tok.decode(ids)


def test_add_special_tokens_to_a_pretrained_style_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "<|end|>": 2}, unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    lm_tok = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="<unk>")
    lm_tok.add_special_tokens({"extra_special_tokens": ["<|end|>"]})
    new = tokens.add_special_tokens(lm_tok)
    assert sorted(lm_tok.convert_ids_to_tokens(new)) == sorted(
        [t for t in tokens.EXTRA_SPECIALS if t != "<|end|>"] + [tokens.PAD])
    assert lm_tok.convert_tokens_to_ids("<|end|>") == 2  # existing tokens keep their ids
    assert len(lm_tok("hello<evi>", add_special_tokens=False)["input_ids"]) == 2


def test_encode_example(tok):
    full = V.get("full")
    ex = tokens.encode_example(DVC, 10, full, tok)
    ids, labels = ex["input_ids"], ex["labels"]
    video = tok.convert_tokens_to_ids(tokens.VIDEO)
    fs = ex["frame_start"]
    assert (ids[fs : fs + 10] == video).all() and (ids == video).sum() == 10
    resp = (labels != IGNORE_INDEX).nonzero().flatten()
    assert resp.tolist() == list(range(int(resp[0]), len(ids)))  # labels = the response, contiguous
    assert tok.decode(ids[resp]).startswith("<evi> <evi> </evi>") and ids[-1] == tok.convert_tokens_to_ids("<|end|>")
    assert (ids[ex["evi_tok_pos"]] == tok.convert_tokens_to_ids(EVI)).all()
    assert torch.equal(ex["evi_pred_pos"], ex["evi_tok_pos"] - 1)
    assert ex["evi_frames"].tolist() == [[1, 4], [6, 9], [1, 4], [6, 9]]
    assert ex["evi_event"].tolist() == [0, 1, 0, 1] and ex["evi_stage"].tolist() == [0, 0, 1, 1]
    assert tokens.consistency_pairs(ex) == [(0, 2), (1, 3)]
    short = tokens.encode_example(TVG, 5, full, tok)  # span clipped to a 5-frame video
    assert short["evi_frames"].tolist() == [[3, 4], [3, 4]]
    prompt = tokens.encode_prompt(DVC, 10, full, tok)
    assert torch.equal(prompt["input_ids"], ids[: int(resp[0])]) and len(prompt["evi_tok_pos"]) == 0
    assert tok.convert_ids_to_tokens(prompt["input_ids"].tolist())[-1] == "<|assistant|>"


def test_collate_left_and_right(tok):
    full = V.get("full")
    exs = [tokens.encode_example(TVG, 6, full, tok), tokens.encode_example(DVC, 9, full, tok)]
    frames = [torch.zeros(6, 8, 8, 3, dtype=torch.uint8), torch.ones(9, 8, 8, 3, dtype=torch.uint8)]
    evi = tok.convert_tokens_to_ids(EVI)
    video = tok.convert_tokens_to_ids(tokens.VIDEO)
    for side in ("right", "left"):
        b = tokens.collate(exs, tok.pad_token_id, padding_side=side, frames=frames)
        B, L = b["input_ids"].shape
        assert b["frames"].shape == (2, 9, 8, 8, 3) and b["frame_mask"].sum(1).tolist() == [6, 9]
        assert (b["input_ids"][b["evi_batch"], b["evi_tok_pos"]] == evi).all()
        for r in range(B):
            fs, n = int(b["frame_start"][r]), int(b["frame_mask"][r].sum())
            assert (b["input_ids"][r, fs : fs + n] == video).all()
        assert b["evi_pairs"].tolist() == [[0, 1], [2, 4], [3, 5]]
        pad_col = 0 if side == "left" else L - 1
        assert b["attention_mask"][0, pad_col] == 0 and b["labels"][0, pad_col] == IGNORE_INDEX


def test_render_response(tok):
    assert tokens.render_response("<evi><evi></evi><evi>, cap1. <evi>, cap2.", [[1, 4], [6, 9], [1, 4], [6, 9.5]]) \
        == "1 - 4 6 - 9 </evi> 1 - 4, cap1. 6 - 9.5, cap2."
    assert tokens.render_response("<evi> - <evi></evi>In <evi> - <evi>.", [2, 5.0, 2, 5]) == "2 - 5 </evi> In 2 - 5."
    resp = tokens.build_response(GVQ, V.get("full"))
    ids = tok(resp.text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|end|>")]
    assert tokens.render_response(ids, [[2, 5], [2, 5]], tok) == "2 - 5 </evi> (B) option. The evidence is in 2 - 5."
    assert tokens.render_response("</evi>(C) option.", []) == "</evi> (C) option."
    assert tokens.render_response("a <evi> b", []) == "a <evi> b"  # no span: left as is


@pytest.mark.parametrize("raw", ["a ( b ) c .", "3 . 5 - 7 . 0 </evi>.", "x</evi>)y", "(</evi> . 1 . 2 . 3",
                                 " [ </evi> ] , </evi>; 4 . 5 . 6 ?", "<t1> <t.> <t0> - <t4> <t.> <t0> ."])
def test_tidy_is_idempotent(raw):
    """render_response tidies a read-back text only when the time representation changed it: the same
    as tidying it always, because a tidy text stays as it is."""
    once = tokens._tidy(raw)
    assert tokens._tidy(once) == once
    assert tokens.render_response(raw, [], times=tokens.SECONDS) == once == tokens.render_response(raw, [])
