"""d2lib.core.losses: each loss against its formula written out by hand, masks, and gradients."""
import math

import torch

from d2lib.core import losses
from d2lib.core.spans import soft_targets


def test_grounding_bce_formula_and_mask():
    torch.manual_seed(0)
    s = torch.randn(3, 5)
    y = soft_targets([[1, 2], [0, 0], [4, 4]], 5)
    p = torch.sigmoid(s)
    manual = -(y * p.log() + (1 - y) * (1 - p).log())
    assert torch.allclose(losses.grounding_bce(s, y), manual.mean(), atol=1e-6)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 3:] = False
    assert torch.allclose(losses.grounding_bce(s, y, mask), manual[:, :3].mean(), atol=1e-6)
    s2 = s.clone()
    s2[:, 3:] = 1e4  # padded frames: anything goes
    assert torch.allclose(losses.grounding_bce(s2, y, mask), losses.grounding_bce(s, y, mask))


def _loglik_by_hand(s, y, frames):
    p = torch.sigmoid(s.detach()).tolist()
    y = y.tolist()
    return torch.tensor([sum(math.log(y[k][t] * p[k][t] + (1 - y[k][t]) * (1 - p[k][t]) + 1e-10) for t in frames)
                         for k in range(len(p))])


def test_grounding_loglik_matches_paper_form():
    torch.manual_seed(0)
    s = torch.randn(2, 6, requires_grad=True)
    y = soft_targets([[1, 3], [5, 5]], 6)
    ll = losses.grounding_loglik(s, y)
    assert ll.shape == (2,) and torch.allclose(ll, _loglik_by_hand(s, y, range(6)), atol=1e-5)
    hard = (y == 1).float()  # inside the span y = 1 → the paper's product of Bernoullis
    p = torch.sigmoid(s)
    expect = torch.where(hard.bool(), p, 1 - p).log().sum(-1)
    assert torch.allclose(losses.grounding_loglik(s, hard), expect, atol=1e-5)
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    assert torch.allclose(losses.grounding_loglik(s, y, mask), _loglik_by_hand(s, y, range(4)), atol=1e-5)
    ll.sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_consistency_l1():
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    loss = losses.consistency_l1(a, b)
    assert torch.allclose(loss, (a - b).abs().mean())
    loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # both sides carry gradient
    assert losses.consistency_l1(a, a).item() == 0.0


def test_frame_ce_masks_padding():
    s = torch.tensor([[1.0, 2.0, 50.0]])
    mask = torch.tensor([[True, True, False]])
    expect = -torch.log_softmax(torch.tensor([1.0, 2.0]), -1)[1]
    assert torch.allclose(losses.frame_ce(s, torch.tensor([1]), mask), expect)
    assert losses.frame_ce(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_sequence_logprob_and_lm_loss_agree():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    logp = torch.log_softmax(logits, -1)
    manual = torch.stack([logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 1], logp[1, 0, 2] + logp[1, 1, 2]])
    assert torch.allclose(losses.sequence_logprob(logits, labels), manual, atol=1e-6)
    n = (labels[:, 1:] != -100).sum()
    assert torch.allclose(losses.lm_loss(logits, labels), -manual.sum() / n, atol=1e-6)
