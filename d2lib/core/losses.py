"""Losses of D²VLM as pure functions over tensors.

Taught in lesson ``02_model`` (LM cross-entropy, grounding BCE, consistency L1, E.T. Chat's
frame-level CE) and used again by the preference lesson (``grounding_loglik`` and
``sequence_logprob`` are the two halves of log π(R) in FPO; the FPO/DPO losses themselves
live next to them once that lesson exists).

Shapes: ``K`` = number of ``<evi>`` tokens, ``T`` = frames, ``D`` = feature width,
``B`` = batch, ``L`` = sequence length, ``V`` = vocabulary.

>>> s = torch.tensor([[4.0, 4.0, -4.0]])
>>> y = torch.tensor([[1.0, 1.0, 0.0]])
>>> round(grounding_bce(s, y).item(), 4)
0.0181
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is true (0 when nothing is valid)."""
    if mask is None:
        return x.mean() if x.numel() else x.sum()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def grounding_bce(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """D²VLM grounding loss: BCE-with-logits between similarity logits and soft targets.

    ``scores``: (K, T) logits s_kt = e_k·f_t/√d. ``targets``: (K, T) soft targets
    y_kt = α^(−d(t, span_k)). ``mask``: (K, T) bool, false on padded frames.
    Returns the mean over valid (k, t) entries, a scalar.

    >>> grounding_bce(torch.zeros(2, 3), torch.ones(2, 3)).item() == torch.log(torch.tensor(2.0)).item()
    True
    >>> m = torch.tensor([[True, False]])
    >>> grounding_bce(torch.tensor([[0.0, 50.0]]), torch.tensor([[0.0, 0.0]]), m).item()  # padded frame ignored
    0.6931471824645996
    """
    loss = F.binary_cross_entropy_with_logits(scores.float(), targets.float(), reduction="none")  # (K, T)
    return _masked_mean(loss, mask)


def consistency_l1(e_ground: torch.Tensor, e_answer: torch.Tensor) -> torch.Tensor:
    """D²VLM consistency constraint: mean |e_ground − e_answer| over pairs and features.

    ``e_ground``: (M, D) ``evi_head`` features of the grounding-stage (prefix) ``<evi>`` tokens;
    ``e_answer``: (M, D) their answer-stage partners (same event). Both sides carry gradient,
    as in the paper's code. A scalar; 0 when there are no pairs.

    >>> consistency_l1(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item()
    1.5
    >>> consistency_l1(torch.zeros(0, 4), torch.zeros(0, 4)).item()
    0.0
    """
    if e_ground.numel() == 0:
        return e_ground.sum() * 0.0
    return F.l1_loss(e_ground.float(), e_answer.float())


def consistency_scores(s_ground: torch.Tensor, s_answer: torch.Tensor, mask: torch.Tensor | None = None,
                       frame_level: bool = False) -> torch.Tensor:
    """Consistency on what the two stages *predict* rather than on their raw features: mean
    |p_ground − p_answer| over pairs and valid frames, p = σ(s) per frame (span head) or the softmax
    over frames (``frame_level``). Both sides carry gradient. Unlike :func:`consistency_l1`, it is
    zero for two different features that score the frames alike, and it cannot be met by making
    both features constant unless their frame scores agree.

    ``s_ground``, ``s_answer``: (M, T) similarity logits of paired ``<evi>``; ``mask`` (M, T) bool.

    >>> s = torch.tensor([[0.0, 0.0]])
    >>> consistency_scores(s, s).item(), round(consistency_scores(s, torch.tensor([[0.0, 50.0]])).item(), 4)
    (0.0, 0.25)
    """
    if s_ground.numel() == 0:
        return s_ground.sum() * 0.0
    if frame_level:
        neg = torch.finfo(torch.float32).min
        fill = (lambda s: s.float().masked_fill(~mask, neg)) if mask is not None else (lambda s: s.float())
        pg, pa = fill(s_ground).softmax(-1), fill(s_answer).softmax(-1)
    else:
        pg, pa = s_ground.float().sigmoid(), s_answer.float().sigmoid()
    return _masked_mean((pg - pa).abs(), mask)


def frame_ce(scores: torch.Tensor, target_idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """E.T. Chat-style frame-level matching: softmax over frames, cross-entropy to one frame.

    ``scores``: (K, T) logits; ``target_idx``: (K,) long, the GT frame of each token;
    ``mask``: (K, T) bool, false on padded frames (they get −inf). Mean over K.

    >>> frame_ce(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item() == torch.log(torch.tensor(2.0)).item()
    True
    """
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    s = scores.float()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(s, target_idx)


def grounding_loglik(scores: torch.Tensor, soft_targets: torch.Tensor, mask: torch.Tensor | None = None,
                     eps: float = 1e-10) -> torch.Tensor:
    """Probabilistic grounding log-likelihood per ``<evi>`` (FPO's grounding term of log π(R)).

    log p_g(k) = Σ_t log( y_kt·σ(s_kt) + (1 − y_kt)·(1 − σ(s_kt)) + eps ).
    ``scores``, ``soft_targets``: (K, T); ``mask``: (K, T) bool (padded frames add 0).
    Returns (K,) sums over frames (not length-normalised, as in the paper's code).

    >>> grounding_loglik(torch.zeros(1, 4), torch.ones(1, 4)).mul(-1).exp().item()  # 0.5 ** -4
    16.0
    """
    p = torch.sigmoid(scores.float())
    y = soft_targets.float()
    ll = torch.log(y * p + (1.0 - y) * (1.0 - p) + eps)  # (K, T)
    if mask is not None:
        ll = ll * mask.to(ll.dtype)
    return ll.sum(-1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Σ of log-probabilities of the labelled tokens of each sequence (text term of log π(R)).

    ``logits``: (B, L, V) — position i predicts token i+1 (the usual causal shift is done here);
    ``labels``: (B, L) with ``ignore_index`` outside the response. Returns (B,).

    >>> logits = torch.zeros(1, 3, 4)              # uniform over 4 tokens
    >>> labels = torch.tensor([[-100, 2, 3]])      # two labelled tokens
    >>> round(sequence_logprob(logits, labels).item(), 4) == round(2 * -torch.log(torch.tensor(4.0)).item(), 4)
    True
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    valid = labels != ignore_index
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    return (picked * valid).sum(-1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token cross-entropy averaged over labelled tokens (the SFT text loss).

    ``logits``: (B, L, V); ``labels``: (B, L). Shifted here like :func:`sequence_logprob`.

    >>> lm_loss(torch.zeros(1, 3, 4), torch.tensor([[-100, 2, 3]])).item() == torch.log(torch.tensor(4.0)).item()
    True
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    if (labels != ignore_index).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index)


# --- preference optimisation (lesson 05_fpo) --------------------------------------------------
# log π(R) = text term (sequence_logprob) + grounding term (grounding_loglik summed over the
# response's <evi>); FPO compares chosen and rejected responses with both, DPO with the text only.

def response_logprob(text_logp: torch.Tensor, ground_loglik: torch.Tensor | None,
                     use_grounding: bool = True) -> torch.Tensor:
    """log π(R) of whole responses: the text term, plus the grounding term when ``use_grounding``.

    ``text_logp``: (B,) Σ of response-token log-probs (:func:`sequence_logprob`; it includes the
    ``<evi>``, ``</evi>`` and ``<|end|>`` tokens, as the paper's code). ``ground_loglik``: (B,) Σ of
    :func:`grounding_loglik` over each response's ``<evi>`` tokens (a batch's (N,) values summed per
    sample: ``torch.zeros(B).index_add(0, evi_batch, ll)``); may be None when ``use_grounding`` is
    False. FPO: ``use_grounding=True``; DPO: False. Returns (B,) float.

    >>> response_logprob(torch.tensor([-5.0]), torch.tensor([-3.0])).tolist()
    [-8.0]
    >>> response_logprob(torch.tensor([-5.0]), torch.tensor([-3.0]), use_grounding=False).tolist()
    [-5.0]
    """
    text_logp = text_logp.float()
    if not use_grounding:
        return text_logp
    if ground_loglik is None:
        raise ValueError("use_grounding=True needs ground_loglik (B,)")
    return text_logp + ground_loglik.float()


def fpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor,
             ref_chosen: torch.Tensor | None = None, ref_rejected: torch.Tensor | None = None,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Factorized Preference Optimization loss (D²VLM), mean over the batch.

    L = −log σ(β·Δ),  Δ = [log π(R_w) − log π(R_l)] − [log π_ref(R_w) − log π_ref(R_l)],

    where the reference bracket is used only when ``ref_*`` are given. D²VLM's released code is
    reference-free (β = 0.1); with a reference (the SFT model: the LoRA adapter disabled) it is the
    standard DPO form. ``pol_*``: (B,) log π of whole responses from :func:`response_logprob` (text +
    grounding terms); ``ref_*``: (B,) the same under the reference — detached here (no gradient).

    Returns ``(loss, reward_margin)``: a scalar, and (B,) β·Δ detached — the implicit reward margin,
    positive when the chosen response is preferred.

    >>> loss, margin = fpo_loss(torch.tensor([-8.0]), torch.tensor([-18.0]))  # β·Δ = 0.1·10 = 1
    >>> round(loss.item(), 4), round(margin.item(), 4)                       # −log σ(1) = log(1 + e^−1)
    (0.3133, 1.0)
    >>> t = torch.tensor
    >>> loss, margin = fpo_loss(t([-8.0]), t([-18.0]), t([-9.0]), t([-14.0]))  # reference Δ = 5
    >>> round(loss.item(), 4), round(margin.item(), 4)                         # β·(10 − 5) = 0.5
    (0.4741, 0.5)
    """
    if (ref_chosen is None) != (ref_rejected is None):
        raise ValueError("pass both ref_chosen and ref_rejected, or neither (reference-free)")
    delta = pol_chosen.float() - pol_rejected.float()
    if ref_chosen is not None:
        delta = delta - (ref_chosen.float() - ref_rejected.float()).detach()
    logits = beta * delta
    return -F.logsigmoid(logits).mean(), logits.detach()


def dpo_loss(text_chosen: torch.Tensor, text_rejected: torch.Tensor,
             ref_text_chosen: torch.Tensor | None = None, ref_text_rejected: torch.Tensor | None = None,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO = FPO with the grounding term off: :func:`fpo_loss` over text-only log π(R).

    ``text_*``, ``ref_text_*``: (B,) Σ of response-token log-probs (:func:`sequence_logprob`). The
    grounding heads' likelihood never enters, so a pure grounding error (a shifted span, same text)
    is visible to DPO only through the evidence injected into the text. Same returns as
    :func:`fpo_loss`.

    >>> loss, margin = dpo_loss(torch.tensor([-7.0]), torch.tensor([-7.0]))  # same text: Δ = 0
    >>> round(loss.item(), 4), margin.item()                                   # log 2
    (0.6931, 0.0)
    """
    return fpo_loss(response_logprob(text_chosen, None, use_grounding=False),
                    response_logprob(text_rejected, None, use_grounding=False),
                    ref_text_chosen, ref_text_rejected, beta)


def preference_accuracy(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor) -> float:
    """Fraction of pairs whose chosen response scores strictly higher (ties count as misses).

    ``chosen_logp``, ``rejected_logp``: (B,) log π (or implicit rewards: with a reference, pass
    ``reward_margin`` and zeros). NaN for an empty batch.

    >>> preference_accuracy(torch.tensor([-1.0, -5.0, -2.0]), torch.tensor([-3.0, -4.0, -2.0]))
    0.3333333432674408
    """
    if chosen_logp.numel() == 0:
        return float("nan")
    return (chosen_logp.float() > rejected_logp.float()).float().mean().item()
