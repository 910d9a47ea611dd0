"""FPO / DPO losses (d2lib.core.losses, lesson 05_fpo): golden values worked out by hand.

Notation: β = 0.1, softplus(x) = log(1 + e^x), −log σ(x) = softplus(−x) = log(1 + e^−x).
"""
import math

import pytest
import torch

from d2lib.core import losses
from d2lib.core.spans import soft_targets

BETA = 0.1
nll_sigmoid = lambda x: math.log1p(math.exp(-x))  # −log σ(x)  # noqa: E731

# Two pairs. Pair 0: a text error (the rejected text is less likely) and a grounding error.
# Pair 1: a pure grounding error (a shifted span: identical text, so the text terms are equal).
TEXT_W = torch.tensor([-5.0, -7.0])
TEXT_L = torch.tensor([-12.0, -7.0])
GND_W = torch.tensor([-3.0, -2.0])
GND_L = torch.tensor([-6.0, -12.0])


def test_response_logprob_adds_the_grounding_term_only_for_fpo():
    # FPO: log π(R) = text + grounding = [-5-3, -7-2] = [-8, -9]; [-12-6, -7-12] = [-18, -19]
    assert losses.response_logprob(TEXT_W, GND_W, True).tolist() == [-8.0, -9.0]
    assert losses.response_logprob(TEXT_L, GND_L, True).tolist() == [-18.0, -19.0]
    # DPO: the text term alone; the grounding term is not even needed
    assert losses.response_logprob(TEXT_W, GND_W, False).tolist() == [-5.0, -7.0]
    assert losses.response_logprob(TEXT_W, None, False).tolist() == [-5.0, -7.0]
    with pytest.raises(ValueError):
        losses.response_logprob(TEXT_W, None, True)


def test_fpo_loss_reference_free_golden():
    pol_w = losses.response_logprob(TEXT_W, GND_W, True)  # [-8, -9]
    pol_l = losses.response_logprob(TEXT_L, GND_L, True)  # [-18, -19]
    loss, margin = losses.fpo_loss(pol_w, pol_l, beta=BETA)
    # Δ = [-8 - (-18), -9 - (-19)] = [10, 10];  β·Δ = [1, 1]
    # loss = mean(−log σ(1), −log σ(1)) = log(1 + e^−1) = 0.3132617
    assert margin.tolist() == pytest.approx([1.0, 1.0])
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert loss.item() == pytest.approx(nll_sigmoid(1.0), abs=1e-6)
    assert loss.dim() == 0 and margin.shape == (2,) and not margin.requires_grad


def test_fpo_loss_with_reference_golden():
    pol_w, pol_l = torch.tensor([-8.0, -9.0]), torch.tensor([-18.0, -19.0])
    ref_w, ref_l = torch.tensor([-9.0, -8.0]), torch.tensor([-14.0, -8.0])
    loss, margin = losses.fpo_loss(pol_w, pol_l, ref_w, ref_l, beta=BETA)
    # policy Δ = [10, 10]; reference Δ = [-9 - (-14), -8 - (-8)] = [5, 0]
    # h = [10 - 5, 10 - 0] = [5, 10];  β·h = [0.5, 1.0]
    # loss = mean(log(1 + e^−0.5), log(1 + e^−1)) = mean(0.4740770, 0.3132617) = 0.3936693
    assert margin.tolist() == pytest.approx([0.5, 1.0])
    assert loss.item() == pytest.approx(0.3936693, abs=1e-6)
    assert loss.item() == pytest.approx((nll_sigmoid(0.5) + nll_sigmoid(1.0)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="both"):
        losses.fpo_loss(pol_w, pol_l, ref_w, None)


def test_dpo_loss_ignores_the_grounding_term():
    loss, margin = losses.dpo_loss(TEXT_W, TEXT_L, beta=BETA)
    # text Δ = [-5 - (-12), -7 - (-7)] = [7, 0];  β·Δ = [0.7, 0]
    # loss = mean(log(1 + e^−0.7), log 2) = mean(0.4031860, 0.6931472) = 0.5481666
    # pair 1 (a shift: same text) gives DPO nothing to learn from — its loss is log 2 whatever happens
    assert margin.tolist() == pytest.approx([0.7, 0.0])
    assert loss.item() == pytest.approx(0.5481666, abs=1e-6)
    # DPO = FPO with the grounding term off, whatever the grounding terms are
    for g_w, g_l in ((GND_W, GND_L), (GND_L, GND_W), (torch.zeros(2), torch.full((2,), -50.0))):
        off, _ = losses.fpo_loss(losses.response_logprob(TEXT_W, g_w, False),
                                 losses.response_logprob(TEXT_L, g_l, False), beta=BETA)
        assert off.item() == pytest.approx(loss.item(), abs=1e-7)
    fpo, _ = losses.fpo_loss(losses.response_logprob(TEXT_W, GND_W, True),
                             losses.response_logprob(TEXT_L, GND_L, True), beta=BETA)
    assert fpo.item() < loss.item()  # here the grounding term makes the preference clearer
    # with a reference: h = [7 - (-1 - (-3)), 0 - 0] = [5, 0]  → mean(log(1 + e^−0.5), log 2)
    ref_loss, ref_margin = losses.dpo_loss(TEXT_W, TEXT_L, torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -4.0]))
    assert ref_margin.tolist() == pytest.approx([0.5, 0.0])
    assert ref_loss.item() == pytest.approx((nll_sigmoid(0.5) + math.log(2)) / 2, abs=1e-6)


def test_margin_sign_and_accuracy():
    pol_w, pol_l = torch.tensor([-8.0, -9.0]), torch.tensor([-18.0, -19.0])
    good, m_good = losses.fpo_loss(pol_w, pol_l)
    bad, m_bad = losses.fpo_loss(pol_l, pol_w)  # the pair the wrong way round
    assert (m_good > 0).all() and (m_bad < 0).all()
    # −log σ(−1) = log(1 + e^1) = 1.3132617 > log 2 > 0.3132617 = −log σ(1)
    assert bad.item() == pytest.approx(1.3132617, abs=1e-6)
    assert good.item() < math.log(2) < bad.item()
    tie, m_tie = losses.fpo_loss(pol_w, pol_w)
    assert tie.item() == pytest.approx(math.log(2)) and m_tie.tolist() == [0.0, 0.0]
    assert losses.preference_accuracy(pol_w, pol_l) == 1.0
    assert losses.preference_accuracy(pol_l, pol_w) == 0.0
    assert losses.preference_accuracy(TEXT_W, TEXT_L) == 0.5  # a tie (pair 1) is not a win
    assert losses.preference_accuracy(m_good, torch.zeros(2)) == 1.0  # on reward margins


def test_gradient_pushes_chosen_up_and_rejected_down():
    pol_w = torch.tensor([-8.0, -9.0], requires_grad=True)
    pol_l = torch.tensor([-18.0, -19.0], requires_grad=True)
    ref_w, ref_l = torch.tensor([-1.0, -1.0], requires_grad=True), torch.tensor([-2.0, -2.0], requires_grad=True)
    loss, _ = losses.fpo_loss(pol_w, pol_l, ref_w, ref_l, beta=BETA)
    loss.backward()
    # h = 10 - 1 = 9 per pair; dL/dlogπ(R_w) = −β·σ(−β·h)/B = −0.1·σ(−0.9)/2
    g = -BETA / (1 + math.exp(0.9)) / 2
    assert pol_w.grad.tolist() == pytest.approx([g, g], abs=1e-7)
    assert pol_l.grad.tolist() == pytest.approx([-g, -g], abs=1e-7)
    assert ref_w.grad is None and ref_l.grad is None, "the reference model gets no gradient"


def test_grounding_loglik_three_frames_and_a_shift_pair():
    # scores s = [0, ln 3, −ln 3]  →  σ(s) = [1/2, 3/4, 1/4]  (the model sees the event at frame 1)
    s = torch.tensor([0.0, math.log(3.0), -math.log(3.0)]).expand(3, 3)
    y = soft_targets([[1, 1], [1, 2], [0, 0]], 3)  # y_t = 2^−d(t, span)
    assert y.tolist() == [[0.5, 1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 0.5, 0.25]]
    ll = losses.grounding_loglik(s, y)
    # per frame: y·σ + (1 − y)·(1 − σ)
    # [1,1]: 0.5·0.5 + 0.5·0.5 = 0.5 | 1·0.75 = 0.75 | 0.5·0.25 + 0.5·0.75 = 0.5    → log 0.1875  = −1.6739764
    # [1,2]: 0.5                     | 0.75          | 1·0.25 = 0.25                  → log 0.09375 = −2.3671236
    # [0,0]: 1·0.5 = 0.5             | 0.5·0.75 + 0.5·0.25 = 0.5 | 0.25·0.25 + 0.75·0.75 = 0.625 → log 0.15625
    assert ll.tolist() == pytest.approx([math.log(0.1875), math.log(0.09375), math.log(0.15625)], abs=1e-6)
    assert ll.tolist() == pytest.approx([-1.6739764, -2.3671236, -1.8562980], abs=1e-6)

    # A shift pair on one video: chosen span [1,1], rejected [1,2], identical text (−5 both).
    # Sum the (N,) <evi> log-likelihoods per sample the way the training step does (index_add by sample).
    evi_batch = torch.tensor([0, 1])
    gnd = torch.zeros(2).index_add(0, evi_batch, ll[:2])  # [log 0.1875, log 0.09375]
    text = torch.tensor([-5.0, -5.0])
    pol = losses.response_logprob(text, gnd, True)
    loss, margin = losses.fpo_loss(pol[:1], pol[1:], beta=BETA)
    # Δ = log 0.1875 − log 0.09375 = log 2;  loss = log(1 + e^(−0.1·log 2)) = log(1 + 2^−0.1) = 0.6590903
    assert margin.item() == pytest.approx(0.1 * math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(math.log1p(2 ** -0.1), abs=1e-6)
    dpo, dpo_margin = losses.dpo_loss(text[:1], text[1:], beta=BETA)
    assert dpo_margin.item() == 0.0 and dpo.item() == pytest.approx(math.log(2))  # DPO is blind to it
