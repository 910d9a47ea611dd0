"""Everything an SFT cell draws at random comes from its seed — including a peer's new module, whose
initial weights must not depend on what loading the aligned model left in the random generator."""
import copy

import torch

from d2lib.core import config
from d2lib.stages import sft
from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM, ModelConfig, Variant


def _base():
    recs = [{"idx": 0, "task": "tvg", "video": "a", "tgt": [1, 3], "q": "When does the red circle grow?"}]
    tok = tokens.train_word_tokenizer(tokens.record_texts(recs), max_seconds=8)
    torch.manual_seed(0)
    return D2VLM.build(ModelConfig(), Variant(), tok)


def test_a_time_embedding_and_lora_are_drawn_from_the_seed_whatever_came_before():
    cfg = config.load_section("sft", profile="smoke")
    timechat = Variant(prefix=False, answer_evidence="text", head="none", injection=False, consistency=False,
                       time_embedding=True)
    base = _base()
    states = []
    for noise in (1, 7):
        torch.manual_seed(1234 + noise)
        torch.rand(noise)  # a different generator state, as loading leaves it
        m = sft.prepare_model(copy.deepcopy(base), cfg, timechat, seed=3)
        states.append({k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad})
    assert any(k.startswith("time_embed.") for k in states[0])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = sft.prepare_model(copy.deepcopy(base), cfg, timechat, seed=4)
    assert not torch.equal(other.time_embed.proj.weight, states[0]["time_embed.proj.weight"])
