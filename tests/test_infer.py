"""d2lib.vlm.infer: predict fills answers, eval_tvg / eval_mcq / random_tvg return the protocol's keys."""
import re

import pytest
import torch

from d2lib.training import data
from d2lib.vlm import infer, tokens
from d2lib.vlm.model import D2VLM, ModelConfig, VariantsConfig

from shapes_fixture import tiny_split



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

@pytest.fixture(scope="module")
def setup():
    records, frames = tiny_split()
    tok = data.train_tokenizer(records, max_seconds=16)
    torch.manual_seed(0)
    model = D2VLM.build(ModelConfig(), VariantsConfig().get("full"), tok).eval()
    return records, frames, tok, model


def _force(model, tok, text):
    """Make the LM emit ``text`` + <|end|>, whatever it has learnt: a hook overwrites the logits of
    the last position at every generation step (the heads still decode the spans themselves)."""
    target = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(tokens.END)]
    state = {"step": 0}

    def hook(module, args, kwargs, out):
        if out.logits.shape[1] > 1:  # the prefill
            state["step"] = 0
        t = target[min(state["step"], len(target) - 1)]
        out.logits[:, -1] = -1e4
        out.logits[:, -1, t] = 1e4
        state["step"] += 1
        return out

    return model.lm.register_forward_hook(hook, with_kwargs=True)


def test_predict_fills_parseable_answers(setup):
    records, frames, tok, model = setup
    tvg = [r for r in records if r["task"] == "tvg"]
    raw = infer.predict(model, tvg, frames, tok, batch_size=3, max_new_tokens=6)
    assert len(raw) == len(tvg) and all(isinstance(r["a"], str) for r in raw)
    assert [r["idx"] for r in raw] == [r["idx"] for r in tvg] and "a" not in tvg[0]
    handle = _force(model, tok, "<evi></evi>The event happens in <evi>.")
    try:
        out, gens = infer.predict(model, tvg, frames, tok, batch_size=3, return_generations=True)
    finally:
        handle.remove()
    for r, g in zip(out, gens):
        assert re.fullmatch(r"\d+ - \d+ </evi> The event happens in \d+ - \d+\.", r["a"]), r["a"]
        assert len(infer.spans_of(g)) == 2 and g.probs.shape == (2, len(frames[r["video"]]))
    scores = infer.tvg_scores(out)
    assert scores["parse_failure_rate"] == 0.0 and scores["n"] == len(tvg)


def test_eval_tvg_keys(setup):
    records, frames, tok, model = setup
    out = infer.eval_tvg(model, records, frames, tok, batch_size=4, max_new_tokens=4, max_queries=3)
    assert set(infer.TVG_KEYS) <= set(out) and {f"evi_{k}" for k in infer.TVG_KEYS} <= set(out)
    assert out["n"] == 3 and all(0.0 <= out[k] <= 1.0 for k in infer.TVG_KEYS)
    rnd = infer.random_tvg([r for r in records if r["task"] == "tvg"], seed=0)
    assert set(infer.TVG_KEYS) <= set(rnd) and rnd == infer.random_tvg(records, seed=0)


def test_mcq_and_loss(setup):
    records, frames, tok, model = setup
    mcq = [r for r in records if r["task"] in ("rar", "gvq")]
    answered = [{**r, "a": f"({'ABCD'[r['p']]}) x."} for r in mcq]
    assert infer.mcq_accuracy(answered) == {"acc_gvq": 1.0, "acc_rar": 1.0}
    assert infer.mcq_accuracy([{**answered[0], "a": "no idea"}])[f"acc_{answered[0]['task']}"] == 0.0
    model.variant = data.ALIGN_VARIANT
    try:
        acc = infer.eval_mcq(model, [data.align_record(r) for r in mcq], frames, tok, max_new_tokens=4)
        loss = infer.eval_loss(model, [data.align_record(r) for r in mcq], frames, tok, batch_size=2)
    finally:
        model.variant = VariantsConfig().get("full")
    assert set(acc) == {"acc_rar", "acc_gvq"}
    assert loss["val_loss"] > 0 and loss["val_grounding_loss"] == 0.0
    assert infer.limit(list(range(10)), 4) == infer.limit(list(range(10)), 4) and len(infer.limit(list(range(10)), 4)) == 4


def test_evidence_similarity(setup):
    records, frames, tok, model = setup
    out = infer.evidence_similarity(model, records, frames, tok, batch_size=5)
    assert set(out) == {"cos_same_video", "cos_other_video"} and all(-1.0 <= v <= 1.0 for v in out.values())
