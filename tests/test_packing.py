"""Packed multi-query training (d2lib.vlm.tokens.pack_examples): one sequence per video — frames once,
then one segment per query — must give the same scores, logits and losses as one sequence per query,
evidence injection and the consistency pairs included."""
import numpy as np
import pytest
import torch

from d2lib.training import data
from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM, ModelConfig, Variant, VariantsConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

T = 14
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230)}


def video(seed=0):
    rng = np.random.default_rng(seed)
    v = (rng.random((T, 32, 32, 3)) * 40).astype(np.uint8)
    for k, (c, s, e) in enumerate([("red", 1, 4), ("green", 6, 10), ("blue", 9, 13)]):
        v[s:e + 1, 4 + 8 * k:12 + 8 * k, 4:14] = COLOURS[c]
    return torch.from_numpy(v)


RECORDS = [  # four queries of one video, different lengths and tasks
    {"idx": 0, "task": "tvg", "video": "a", "tgt": [1, 4], "q": "When does the red square appear?"},
    {"idx": 1, "task": "tvg", "video": "a", "tgt": [6, 10], "q": "Find the green square appears ."},
    {"idx": 2, "task": "gvq", "video": "a", "tgt": [9, 13], "o": ["red", "green", "blue", "yellow"], "p": 2,
     "q": "Which colour appears last? (A) red (B) green (C) blue (D) yellow"},
    {"idx": 3, "task": "dvc", "video": "a", "tgt": [[1, 4], [6, 10]], "g": ["red square appears", "green square appears"],
     "q": "Describe every event."},
    {"idx": 4, "task": "tvg", "video": "b", "tgt": [2, 3], "q": "When does the blue square appear?"},
]


@pytest.fixture(scope="module")
def setup():
    tok = tokens.train_word_tokenizer(tokens.record_texts(RECORDS), max_seconds=T)
    videos = {"a": video(0), "b": video(1)[:11]}
    return tok, videos


def build(tok, variant):
    torch.manual_seed(0)
    return D2VLM.build(ModelConfig(), variant, tok).eval()


def per_query_and_packed(model, tok, videos, records):
    exs = data.make_examples(records, videos, model.variant, tok)
    packed = data.pack_by_video(exs)
    col = data.Collator(videos, tok.pad_token_id, kind="frames")
    with torch.no_grad():
        single = [model(**col([e])) for e in exs]
        both = model(**col(packed))
    return exs, packed, single, both


@pytest.mark.parametrize("name", ["full", "coupled", "frame_level", "text_timestamps", "no_visual_injection"])
def test_packed_equals_per_query(setup, name):
    tok, videos = setup
    model = build(tok, VariantsConfig().get(name))
    exs, packed, single, both = per_query_and_packed(model, tok, videos, RECORDS)
    assert [p["n_queries"] for p in packed] == [4, 1]
    # scores of every <evi>, in the same order (packing keeps the example order within a video)
    pad = lambda x: torch.nn.functional.pad(x, (0, T - x.shape[1]))  # noqa: E731
    s_single = torch.cat([pad(o.scores) for o in single])
    assert both.scores.shape == s_single.shape
    valid = torch.cat([pad(o.score_mask) for o in single])
    assert torch.equal(valid, both.score_mask)
    assert (len(s_single) > 0) == (name != "text_timestamps")
    assert torch.allclose(both.scores[valid], s_single[valid], atol=1e-5)
    # logits on every labelled position of every segment
    for b, p in enumerate(packed):
        seg = p["segment_ids"]
        members = [e for e in exs if e["video"] == p["video"]]
        for i, e in enumerate(members, start=1):
            lab = e["labels"] != -100
            k = int(next(j for j, o in enumerate(exs) if o is e))
            ref = single[k].logits[0, : len(e["input_ids"])][lab]
            n0 = tokens.shared_prefix_len(e)
            got = both.logits[b, : len(seg)][seg == i][lab[n0:]]
            assert torch.allclose(got, ref, atol=1e-5), (name, i)
    # losses: the grounding BCE is a mean over valid (<evi>, frame) entries (the frame head's CE over <evi>),
    # so the packed loss is the per-query losses weighted by their counts; the consistency L1 likewise per pair
    n_ent = [int(o.score_mask.sum()) if name != "frame_level" else len(o.scores) for o in single]  # CE: over <evi>
    if sum(n_ent):
        g = sum(float(o.grounding_loss) * k for o, k in zip(single, n_ent)) / sum(n_ent)
        assert abs(float(both.grounding_loss) - g) < 1e-5
    pairs = [len(tokens.consistency_pairs(e)) for e in exs]
    if sum(pairs) and model.variant.consistency:
        c = sum(float(o.consistency_loss) * k for o, k in zip(single, pairs)) / sum(pairs)
        assert abs(float(both.consistency_loss) - c) < 1e-5


def test_packed_text_loss_equals_token_weighted_mean(setup):
    tok, videos = setup
    model = build(tok, Variant())
    exs, packed, single, both = per_query_and_packed(model, tok, videos, RECORDS)
    n_tok = [int((e["labels"][1:] != -100).sum()) for e in exs]  # shifted labels, as lm_loss counts them
    ref = sum(float(o.lm_loss) * n for o, n in zip(single, n_tok)) / sum(n_tok)
    assert abs(float(both.lm_loss) - ref) < 1e-5


def test_packed_gradients_match(setup):
    tok, videos = setup
    model = build(tok, Variant()).train()
    for m in model.modules():  # no dropout: the two passes must see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    exs = data.make_examples(RECORDS[:2], videos, model.variant, tok)
    col = data.Collator(videos, tok.pad_token_id, kind="frames")
    model.zero_grad()
    model(**col(data.pack_by_video(exs))).grounding_loss.backward()
    g_packed = model.evi_head[1].weight.grad.clone()
    model.zero_grad()
    out = model(**col(exs))  # the two queries as two rows: the same mean over <evi>
    out.grounding_loss.backward()
    assert torch.allclose(g_packed, model.evi_head[1].weight.grad, atol=1e-6)


def test_mask_isolates_segments():
    from d2lib.vlm.model import attention_mask_4d

    valid = torch.ones(1, 7, dtype=torch.bool)
    is_frame = torch.tensor([[False, True, True, False, False, False, False]])
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2]])
    m = attention_mask_4d(valid, is_frame, 7, torch.float32, seg)[0, 0] == 0  # visible
    assert m[4].tolist() == [True, True, True, True, True, False, False]
    assert m[6].tolist() == [True, True, True, False, False, True, True]
    assert m[1].tolist() == [True, True, True, False, False, False, False]  # frames: bidirectional, prefix only


def test_unpackable_layout_says_so(setup):
    tok, videos = setup
    exs = data.make_examples(RECORDS[:2], videos, Variant(), tok)
    exs[1]["input_ids"] = exs[1]["input_ids"].clone()
    exs[1]["input_ids"][0] += 1  # a prompt that differs before the frames
    with pytest.raises(tokens.NotPackable, match="do not share the prompt"):
        tokens.pack_examples(exs)


def test_training_examples_reports_layout(setup):
    tok, videos = setup
    packed, how = data.training_examples(RECORDS, videos, Variant(), tok, pack=True)
    assert how == "packed" and len(packed) == 2
    single, how = data.training_examples(RECORDS, videos, Variant(), tok, pack=False)
    assert how == "per-query" and len(single) == 5


def test_collate_refuses_left_padding_for_packed(setup):
    tok, videos = setup
    packed = data.pack_by_video(data.make_examples(RECORDS[:2], videos, Variant(), tok))
    with pytest.raises(ValueError, match="right padding"):
        tokens.collate(packed, tok.pad_token_id, padding_side="left", frames=[videos["a"]])
