"""The variant's mechanisms (lessons 02_model and 08_peers): D²VLM's rows run on the core alone (nothing of
d2lib.peers is imported), every params row resolves its time representation and token budget through the
hook points of d2lib.vlm.tokens, and mechanisms defined outside the core plug in through those hooks alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM, ModelConfig, Variant
from test_model import T_FRAMES, batch_for, build, make_samples

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, vision_hidden=32, vision_layers=1,
            vision_heads=2, vision_ffn=64)
TEXT = Variant(prefix=False, answer_evidence="text", head="none", injection=False, consistency=False)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

# A D²VLM row end to end — examples, a training forward, KV-cached generation — in a fresh interpreter.
CORE_RUN = """
import sys, torch
from d2lib.training import data
from d2lib.vlm import infer, tokens
from d2lib.vlm.model import D2VLM, ModelConfig, VariantsConfig
torch.set_num_threads(1)
rec = {"idx": 0, "task": "tvg", "tgt": [1, 3], "q": "When does the red square appear?", "video": "v"}
videos = {"v": torch.randint(0, 255, (6, 32, 32, 3), dtype=torch.uint8)}
tok = tokens.train_word_tokenizer(tokens.record_texts([rec]), max_seconds=8)
torch.manual_seed(0)
m = D2VLM.build(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, vision_hidden=32,
                            vision_layers=1, vision_heads=2, vision_ffn=64), VariantsConfig().get("full"), tok)
exs = data.make_examples([rec], videos, m.variant, tok)
loss = m(**data.Collator(videos, tok.pad_token_id, kind="frames")(exs)).loss
answered = infer.predict(m, [rec], videos, tok, max_new_tokens=4)
assert torch.isfinite(loss) and isinstance(answered[0]["a"], str)
print(sorted(k for k in sys.modules if k.startswith("d2lib.peers")))
"""


def test_the_core_imports_nothing_of_the_peers():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    imports = "import sys, d2lib.vlm.model, d2lib.vlm.tokens, d2lib.training.data; " \
              "print(sorted(k for k in sys.modules if k.startswith('d2lib.peers')))"
    for code in (imports, CORE_RUN):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_row_resolves_to_its_mechanisms(rows):
    from d2lib.peers import timerep, tokenbudget

    want = {  # row: (time representation, its module, token budget, its module)
        "numpro": (timerep.PeerTimes, None, tokens.TokenBudget, None),
        "timemarker": (timerep.PeerTimes, None, tokens.TokenBudget, None),
        "timechat": (timerep.PeerTimes, "time_embed", tokens.TokenBudget, None),
        "vtimellm": (timerep.PeerTimes, None, tokens.TokenBudget, None),
        "vtgllm": (timerep.PeerTimes, None, tokens.TokenBudget, None),
        "diff_fp": (tokens.TimeRep, None, tokenbudget.DiffFP, None),
        "moviechat": (tokens.TimeRep, None, tokenbudget.MovieChat, None),
        "stc": (tokens.TimeRep, None, tokenbudget.STC, "stc"),
    }
    for name in rows.names():
        v = rows.get(name)
        t, b = tokens.time_rep(v), tokens.token_budget(v)
        got = (type(t), t.module_name, type(b), b.module_name)
        assert got == want.get(name, (tokens.TimeRep, None, tokens.TokenBudget, None)), name
        if name not in want:  # a D²VLM row: the core's own objects
            assert t is tokens.SECONDS and b is tokens.PLAIN
    assert tokens.token_budget(rows.get("stc")).stride == rows.get("stc").stc_stride
    assert tokens.token_budget(rows.get("diff_fp")).threshold == rows.get("diff_fp").diff_threshold


def test_mechanism_modules_follow_the_variant():
    recs, _ = make_samples()
    tok = tokens.train_word_tokenizer(tokens.record_texts(recs), max_seconds=T_FRAMES)
    both = Variant(prefix=False, answer_evidence="text", head="none", injection=False, consistency=False,
                   time_embedding=True, stc_stride=2)
    m = build(tok, both, **TINY)
    assert m.mechanism_modules() == ["time_embed", "stc"] and list(m._modules)[-2:] == ["time_embed", "stc"]
    stc = m.stc
    m.variant = Variant(prefix=False, answer_evidence="text", head="none", injection=False, consistency=False,
                        stc_stride=2)
    assert m.mechanism_modules() == ["stc"] and m.stc is stc and not hasattr(m, "time_embed")  # kept as it fits
    m.variant = Variant(stc_stride=3)
    assert m.stc is not stc and m.stc.stride == 3  # another stride: a new module
    m.variant = Variant()
    assert m.mechanism_modules() == [] and not any(k.startswith(("stc.", "time_embed.")) for k in m.state_dict())


# --- mechanisms defined outside the core plug in through the hooks alone -------------------------
class Shift(nn.Module):
    """A per-frame embedding: tokens + seconds · w."""

    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.ones(dim))

    def forward(self, x, seconds):
        return x + seconds.to(x.dtype)[:, None] * self.w


class Stamped(tokens.TimeRep):
    """Times written "at s until e"; a prompt prefix; a per-frame embedding ``shift``."""

    module_name = "shift"

    def __init__(self, variant=None):
        pass

    def format_span(self, span, duration=None, fps=1.0):
        return f"at {span[0]:g} until {span[1]:g}"

    def read_times(self, text, duration=None, fps=1.0):
        return text.replace("at 3 until 7", "3 - 7")

    def question(self, question):
        return "Stamped. " + question

    def module(self, dim, current=None):
        return current if isinstance(current, Shift) else Shift(dim)


class Halves(tokens.TokenBudget):
    """Every second frame token: slot k covers seconds 2k and 2k + 1 (and reads second 2k)."""

    plain = False

    def __init__(self, variant=None):
        pass

    def token_map(self, n_frames, keep=None):
        return torch.arange(n_frames) // 2

    def n_tokens(self, n_frames, keep=None):
        return (n_frames + 1) // 2


def test_a_time_representation_plugs_in(monkeypatch):
    monkeypatch.setattr(tokens, "TIME_PLUGIN", f"{__name__}:Stamped")
    v = Variant(prefix=False, answer_evidence="text", head="none", injection=False, consistency=False,
                time_embedding=True)  # a time switch on: the variant resolves to the plugin
    assert isinstance(tokens.time_rep(v), Stamped) and tokens.time_rep(TEXT) is tokens.SECONDS
    rec = {"task": "tvg", "tgt": [3, 7], "q": "When?"}
    assert tokens.build_response(rec, v).text == "The event happens in at 3 until 7."
    assert tokens.question_text("When?", v) == "Stamped. When?"
    shown = "The event happens in at 3 until 7."
    assert tokens.render_response(shown, [], times=Stamped()) == "The event happens in 3 - 7."
    assert tokens.render_response(shown, [], times=tokens.SECONDS) == shown

    recs, vids = make_samples()
    tok = tokens.train_word_tokenizer(tokens.record_texts(recs), max_seconds=T_FRAMES)
    m = build(tok, TEXT, **TINY)
    feats, mask = m.encode_tower(vids[0][None]), torch.ones(1, T_FRAMES, dtype=torch.bool)
    plain = m.frame_tokens(feats, mask)
    m.variant = v
    assert m.mechanism_modules() == ["shift"] and "shift.w" in m.state_dict()
    delta = m.frame_tokens(feats, mask) - plain
    assert torch.allclose(delta[0, :, 0], torch.arange(T_FRAMES, dtype=delta.dtype))  # second t moved by t
    m.variant = TEXT
    assert not hasattr(m, "shift")


def test_a_token_budget_plugs_in(monkeypatch):
    monkeypatch.setattr(tokens, "BUDGET_PLUGIN", f"{__name__}:Halves")
    v = Variant(stc_stride=2)  # a budget switch on: the variant resolves to the plugin
    assert isinstance(tokens.token_budget(v), Halves)
    recs, vids = make_samples()
    tok = tokens.train_word_tokenizer(tokens.record_texts(recs), max_seconds=T_FRAMES)
    b = batch_for(recs[:2], [vids[0], vids[1][:9]], v, tok)
    video = tok.convert_tokens_to_ids(tokens.VIDEO)
    assert (b["input_ids"] == video).sum(1).tolist() == [6, 5] and b["token_mask"].sum(1).tolist() == [6, 5]
    assert b["token_of_frame"][1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 0, 0, 0]
    m = build(tok, v, **TINY)
    assert m.mechanism_modules() == []  # Halves adds no module (and STC's is not built)
    with torch.no_grad():
        out = m(**b)
    assert torch.isfinite(out.loss) and out.scores.shape[1] == T_FRAMES  # heads stay per second
    f = out.frame_feats
    assert torch.equal(f[0, 0], f[0, 1]) and not torch.equal(f[0, 1], f[0, 2])  # a slot covers two seconds
