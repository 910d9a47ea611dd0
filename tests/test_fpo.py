"""d2lib.stages.fpo: the FPO step equals SFT + w·fpo_loss computed by hand from two forward passes; DPO
(use_grounding false) ignores the grounding term; the reference (peft ``disable_adapter`` + frozen
head copies, or a frozen copy without LoRA) scores like the model we started from; a few dozen FPO
steps on 4 pairs (both families) raise their preference accuracy. Tiny model, real Shapes records."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2lib.core import config
from d2lib.stages import fpo, sft
from d2lib.training import preference, train
from d2lib.world import synth
from d2lib.vlm import tokens
from d2lib.core.config import ConfigError
from d2lib.stages.fpo import FPOConfig, PairCollator, PreferenceModel, pair_examples
from d2lib.vlm.lora import LoraSettings
from d2lib.vlm.model import D2VLM, ModelConfig, Variant

WORLD = synth.WorldConfig(render_fps=1, render_size=32, min_duration=12, max_duration=14,
                          min_events=2, max_events=3, max_objects=2)
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, ffn_size=128, vision_hidden=32, vision_layers=1,
            vision_heads=2, vision_ffn=64, max_frames=16)
BETA = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def world():
    """Two rendered Shapes videos (1 fps, 32 px), their records, a tokenizer and 4 pairs: tvg shift,
    dvc add (grounding family), dvc wrong_attribute, dvc repeat (text family)."""
    recs, videos = [], {}
    for seed in (3, 5):
        spec = synth.sample_video(seed, WORLD)
        rel = f"videos/v{seed}.mp4"
        recs += synth.make_records(spec, rel, len(recs))
        videos[rel] = torch.from_numpy(synth.render_frames(spec, WORLD))
    tok = tokens.train_word_tokenizer([*tokens.record_texts(recs), " ".join(synth.vocabulary())],
                                      max_seconds=WORLD.max_duration)
    tvg = next(r for r in recs if r["task"] == "tvg")
    dvc = [r for r in recs if r["task"] == "dvc"]
    pairs = []
    for rec, typ in ((tvg, "shift"), (dvc[0], "add"), (dvc[0], "wrong_attribute"), (dvc[1], "repeat")):
        rej = preference.perturb(rec, typ, 0)
        assert rej is not None, typ
        pairs.append(preference.Pair(rec, rej, preference.TYPES[typ], typ))
    return recs, videos, tok, pairs


def make_cfg(**kw) -> FPOConfig:
    base = dict(steps=40, batch_size=4, lr=3e-3, lr_lora=3e-3, lr_heads=3e-3, warmup_ratio=0.0, log_every=1,
                save_every=0, num_threads=1, lora=LoraSettings(r=4, alpha=8.0, dropout=0.0), beta=BETA)
    return FPOConfig(**{**base, **kw})


def build_policy(tok, cfg: FPOConfig, seed: int = 0):
    """``(policy with LoRA as stage fpo prepares it, untouched copy of the model it started from)``."""
    torch.manual_seed(seed)
    base = D2VLM.build(ModelConfig(**TINY), Variant(), tok).eval()
    orig = copy.deepcopy(base)
    return sft.prepare_model(base, cfg, Variant(), seed), orig


def batch_of(world, idx=(0, 1, 2, 3)):
    _, videos, tok, pairs = world
    exs = pair_examples([pairs[i] for i in idx], videos, Variant(), tok)
    return PairCollator(videos, tok.pad_token_id, kind="frames")(exs), exs


def shake(model, scale=0.05, seed=1):
    """Move every trainable tensor (as training would), so the policy differs from where it started."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------- log π by hand
def logp_by_hand(model, batch, alpha=2.0):
    """(text (B,), grounding (B,), output): loops over tokens, <evi> and frames, no library helpers."""
    out = model(**batch)
    B = batch["input_ids"].shape[0]
    text = torch.zeros(B)
    for b in range(B):
        for i in range(1, batch["input_ids"].shape[1]):
            y = int(batch["labels"][b, i])
            if y != -100:
                text[b] += torch.log_softmax(out.logits[b, i - 1].float(), -1)[y]
    ground = torch.zeros(B)
    for n in range(len(batch["evi_batch"])):
        b = int(batch["evi_batch"][n])
        first, last = batch["evi_frames"][n].tolist()
        for t in range(int(batch["frame_mask"][b].sum())):
            d = max(first - t, 0, t - last)
            y = alpha ** -d
            p = torch.sigmoid(out.scores[n, t].float())
            ground[b] += torch.log(y * p + (1 - y) * (1 - p) + 1e-10)
    return text, ground, out


def test_rejected_is_teacher_forced_with_its_own_spans(world):
    _, videos, tok, pairs = world
    b, exs = batch_of(world)
    for p, e in zip(pairs, exs):
        n = e["chosen"]["n_frames"]
        own = [list(tokens.span_to_frames(s, n)) for s in tokens.build_response(p.rejected, Variant()).spans]
        assert e["rejected"]["evi_frames"].tolist() == own
        assert e["rejected"]["evi_frames"].tolist() != e["chosen"]["evi_frames"].tolist() or p.type == "wrong_attribute"
    assert b["family"].tolist() == [fpo.FAMILIES.index(p.family) for p in pairs]
    assert b["type"].tolist() == [fpo.TYPES.index(p.type) for p in pairs]


@pytest.mark.parametrize("use_grounding", [True, False])
def test_loss_is_sft_plus_weighted_fpo_by_hand(world, use_grounding):
    _, _, tok, _ = world
    cfg = make_cfg()
    policy, _ = build_policy(tok, cfg)
    shake(policy)  # LoRA B is 0 at the start: make the adapters matter
    pm = PreferenceModel(policy, beta=BETA, fpo_weight=0.7, sft_weight=1.3, use_grounding=use_grounding).eval()
    batch, _ = batch_of(world)
    got = pm(**batch)

    tc, gc, out_c = logp_by_hand(policy, batch["chosen"])
    tr, gr, _ = logp_by_hand(policy, batch["rejected"])
    pc = tc + gc if use_grounding else tc
    pr = tr + gr if use_grounding else tr
    pref = -F.logsigmoid(BETA * (pc - pr)).mean()
    want = 1.3 * out_c.loss + 0.7 * pref
    assert torch.allclose(got.loss, want, rtol=1e-4, atol=1e-4), (got.loss.item(), want.item())
    assert torch.allclose(got.parts["fpo_loss"], pref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(got.parts["sft_loss"], out_c.loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.reward_margin, BETA * (pc - pr), rtol=1e-4, atol=1e-4)
    assert torch.allclose(got.logp_chosen, pc, rtol=1e-4, atol=1e-3)
    assert math.isclose(got.parts["ground_margin"].item(), (gc - gr).mean().item(), rel_tol=1e-4, abs_tol=1e-3)
    assert (gc != 0).all()  # every response has <evi>: the grounding term is really there
    assert got.loss.requires_grad


def test_dpo_ignores_the_grounding_term(world):
    """The frame head reads the LM's hidden states but feeds nothing back into it: changing it moves
    the grounding term only. FPO's preference loss moves with it, DPO's does not."""
    _, _, tok, _ = world
    batch, _ = batch_of(world)
    losses = {}
    for ug in (True, False):
        policy, _ = build_policy(tok, make_cfg())
        pm = PreferenceModel(policy, beta=BETA, use_grounding=ug).eval()
        with torch.no_grad():
            a = pm(**batch).parts["fpo_loss"].item()
            for p in policy.frm_head.parameters():
                p.mul_(-3.0)
            b = pm(**batch).parts["fpo_loss"].item()
        losses[ug] = (a, b)
    assert losses[True][0] != pytest.approx(losses[True][1], abs=1e-4)
    assert losses[False][0] == pytest.approx(losses[False][1], abs=1e-6)
    assert losses[False][0] != pytest.approx(losses[True][0], abs=1e-4)


@pytest.mark.parametrize("use_lora", [True, False])
def test_reference_scores_like_the_starting_model(world, use_lora):
    _, _, tok, _ = world
    cfg = make_cfg(lora=LoraSettings(r=4, alpha=8.0, dropout=0.0, enabled=use_lora))
    policy, orig = build_policy(tok, cfg)
    pm = PreferenceModel(policy, beta=BETA, use_reference=True).eval()
    shake(policy)  # "training" moves LoRA, embeddings/lm_head copies and the heads
    batch, _ = batch_of(world)
    with torch.no_grad():
        t0, g0, _ = fpo.response_logps(orig, batch["chosen"])
        t1, g1, _ = fpo.response_logps(policy, batch["chosen"])
        with pm.reference() as ref:
            if use_lora:
                assert ref is policy  # the same weights, adapter disabled, heads swapped
            tr, gr, _ = fpo.response_logps(ref, batch["chosen"])
        t2, g2, _ = fpo.response_logps(policy, batch["chosen"])
    assert not torch.allclose(t0, t1, atol=1e-3) and not torch.allclose(g0, g1, atol=1e-3)
    assert torch.allclose(tr, t0, atol=1e-4) and torch.allclose(gr, g0, atol=1e-4)
    assert torch.allclose(t2, t1) and torch.allclose(g2, g1)  # the policy is restored afterwards
    if use_lora:
        assert policy.frm_head is not pm.ref_modules["frm_head"]

    # in the loss: β·([Δ policy] − [Δ reference])
    with torch.no_grad():
        got = pm(**batch)
        pc = sum(fpo.response_logps(policy, batch["chosen"])[:2])
        pr = sum(fpo.response_logps(policy, batch["rejected"])[:2])
        rc = sum(fpo.response_logps(orig, batch["chosen"])[:2])
        rr = sum(fpo.response_logps(orig, batch["rejected"])[:2])
    assert torch.allclose(got.reward_margin, BETA * ((pc - pr) - (rc - rr)), atol=1e-3)


def test_reference_gets_no_gradient(world):
    _, _, tok, _ = world
    policy, _ = build_policy(tok, make_cfg())
    pm = PreferenceModel(policy, beta=BETA, use_reference=True).train()
    batch, _ = batch_of(world)
    pm(**batch).loss.backward()
    assert all(p.grad is None for p in pm.ref_modules.parameters())
    assert any(p.grad is not None for n, p in policy.named_parameters() if "lora_" in n)


def _fit(world, tmp_path, seed=0, **kw):
    """Train a fresh tiny policy on the 4 pairs through d2lib.training.train.fit (the stage's loop); returns the
    val rows before/after, the fit result and the policy."""
    _, videos, tok, pairs = world
    cfg = make_cfg(steps=40)
    policy, _ = build_policy(tok, cfg, seed=seed)
    exs = pair_examples(pairs, videos, Variant(), tok)
    before = fpo.score_pairs(policy, exs, videos, tok.pad_token_id)
    pm = PreferenceModel(policy, beta=BETA, **kw)
    res = train.fit(pm, exs, cfg, tmp_path / "run", PairCollator(videos, tok.pad_token_id, kind="frames"),
                    export_fn=fpo.export_policy, progress=False)
    return before, fpo.score_pairs(policy, exs, videos, tok.pad_token_id), res, policy


def test_fit_raises_preference_accuracy_on_four_pairs(world, tmp_path):
    """A few dozen steps of the stage's loss (SFT + FPO) overfit 4 pairs of both families. The untrained
    model already prefers the shorter chosen response of the add/repeat pairs (more tokens, more <evi>:
    lower log π), but not the shift (same text) nor the wrong-attribute pair."""
    before, after, res, policy = _fit(world, tmp_path, seed=0)
    acc0, acc1 = fpo.pair_accuracy(before, True, BETA), fpo.pair_accuracy(after, True, BETA)
    assert acc0["acc"] <= 0.5 and acc0["acc_shift"] == 0.0, acc0
    assert acc1["acc_grounding"] == 1.0 and acc1["acc_text"] == 1.0, acc1
    cols = res.history[-1]
    for k in ("sft_loss", "fpo_loss", "reward_margin", "acc_grounding", "acc_text", "text_margin", "ground_margin"):
        assert k in cols, k
    assert res.history[-1]["fpo_loss"] < res.history[0]["fpo_loss"]
    worst = lambda rows: min(r["text_c"] + r["ground_c"] - r["text_r"] - r["ground_r"] for r in rows)  # noqa: E731
    assert worst(after) > max(worst(before), 0.0)  # (the mean margin may fall: add/repeat lose their length bonus)
    final = res.out_dir / "final"
    assert (final / "d2vlm.json").is_file() and (final / "adapter").is_dir()  # merged policy + adapter
    reloaded = D2VLM.from_pretrained(final).eval()
    b, _ = batch_of(world)
    with torch.no_grad():
        assert torch.allclose(fpo.response_logps(reloaded, b["chosen"])[1],
                              fpo.response_logps(policy.eval(), b["chosen"])[1], atol=1e-3)


def test_grounding_term_fixes_the_shift_pair_dpo_cannot(world, tmp_path):
    """Preference term alone (sft_weight 0): FPO opens a large grounding margin on the shift pair; DPO
    sees only the text, which a shift leaves identical, so the grounding heads' preference stays where it
    was. (DPO can still open a *text* margin: the tokens after the moved <evi> see other frame states
    through the evidence injection, and the trainable frame projector lets it exploit that.)"""
    margins = {}
    for ug in (True, False):
        before, after, _, _ = _fit(world, tmp_path / str(ug), seed=0, sft_weight=0.0, use_grounding=ug)
        b, a = before[0], after[0]
        assert b["type"] == "shift" and b["text_c"] == pytest.approx(b["text_r"], abs=0.05)
        margins[ug] = (a["ground_c"] - a["ground_r"], a["text_c"] - a["text_r"])
    assert margins[True][0] > 10.0, margins
    assert abs(margins[False][0]) < 0.1 * margins[True][0], margins


def test_pair_accuracy_and_table():
    rows = [{"task": "tvg", "family": "grounding", "type": "shift", "text_c": -5.0, "text_r": -5.0,
             "ground_c": -1.0, "ground_r": -3.0},
            {"task": "dvc", "family": "text", "type": "repeat", "text_c": -5.0, "text_r": -4.0,
             "ground_c": -1.0, "ground_r": -1.5}]
    full, text = fpo.pair_accuracy(rows, True), fpo.pair_accuracy(rows, False)
    assert full["acc"] == 0.5 and full["acc_shift"] == 1.0 and full["acc_repeat"] == 0.0
    assert text["acc"] == 0.0  # the shift pair ties on text: a tie is a miss
    assert full["margin"] == pytest.approx(0.1 * (2.0 - 0.5) / 2)
    table = {r["type"]: r for r in fpo.accuracy_table(rows)}
    assert table["shift"]["acc"] == 1.0 and table["shift"]["acc_text"] == 0.0 and table["shift"]["n"] == 1


def test_config_section_and_errors():
    cfg = config.load_section("fpo")
    assert isinstance(cfg, FPOConfig) and cfg.section == "fpo"
    smoke = config.load_section("fpo", profile="smoke")
    assert smoke.steps < cfg.steps
    assert FPOConfig(tasks=("tvg",)).mix["shift"] > 0
    with pytest.raises(ConfigError, match="fpo.mix"):
        config.from_dict(FPOConfig, {"mix": {"swap": 1.0}}, "fpo")
    with pytest.raises(ConfigError, match="fpo.tasks"):
        config.from_dict(FPOConfig, {"tasks": ["rar"]}, "fpo")
    with pytest.raises(ConfigError, match="fpo.mix"):  # no type with weight applies to tvg
        config.from_dict(FPOConfig, {"tasks": ["tvg"], "mix": {"shift": 0.0, "repeat": 1.0}}, "fpo")
    with pytest.raises(ConfigError, match="fpo.beta"):
        config.from_dict(FPOConfig, {"beta": 0.0}, "fpo")
    with pytest.raises(ConfigError, match="fpo.lora.r"):
        config.from_dict(FPOConfig, {"lora": {"r": 0}}, "fpo")


def test_make_pairs_deterministic_and_val_pairs_cover_all_tasks(world):
    recs = world[0]
    cfg = make_cfg(tasks=("tvg",))
    a, b = fpo.make_pairs(recs, cfg, 0), fpo.make_pairs(recs, cfg, 0)
    assert [p.rejected for p in a] == [p.rejected for p in b]
    assert {p.type for p in a} == {"shift"}
    v = fpo.val_pairs(recs, cfg)  # every pair task, whatever fpo.tasks is
    assert {p.chosen["task"] for p in v} == {"tvg", "tal", "dvc", "gvq"}
    capped = fpo.val_pairs(recs, make_cfg(val_pairs_per_type=1))
    assert sorted(p.type for p in capped) == sorted({p.type for p in v})
    assert {p.type for p in v} >= {"shift", "add", "wrong_attribute", "repeat"}  # every type a record allows
