"""Video–text contrastive alignment: pre-training the vision tower — lesson ``03_align``.

Captioning alone teaches a from-scratch vision tower very slowly: the LM first learns the captions'
language and for a long time ignores the frames (lesson 03 measures it: the loss barely changes when the
video is swapped for another one). A real tower (CLIP, SigLIP, EVA) arrives pre-trained the contrastive
way, on image–caption pairs; our tiny tower gets the Shapes equivalent here. Frame features
``f_jt = frm_head(frame t of video j)`` and caption features ``e_i = evi_head(last caption token)`` (the
LM run on the caption alone) are scored ``s_ijt = e_i · f_jt / √d`` across the whole batch, and one of two
pairings is contrasted (``align.contrastive_pairs``):

* ``frame`` — CLIP-style frame–caption pairs: the frames shown while the event happens are the caption's
  positives, every other frame of the batch (other videos, other moments) a negative
  (:func:`frame_nce`). This is how the tower learns *what an event looks like in a frame*; it uses the
  event times the way image–text pre-training uses "this image shows this caption";
* ``video`` — multiple-instance learning without any time (:func:`mil_scores`, :func:`info_nce`): a
  caption only has to score higher on its own video (soft maximum over frames) than on the others.

Either way no ``<evi>`` token, no span decoding and no LM pointing is trained: that is what SFT adds. The
aligned model's frame–text similarities also give a training-free grounding baseline
(:func:`zero_shot_tvg`, TFVTG-style), which the align lesson tracks.

>>> S = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
>>> round(float(info_nce(S, torch.eye(2, dtype=torch.bool))), 4)
0.1269
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


def caption_features(model, cap_ids: torch.Tensor, cap_mask: torch.Tensor) -> torch.Tensor:
    """``e_i`` (N, D): ``evi_head`` of ``hidden_states[-2]`` at each caption's last token, the LM run
    on the caption tokens alone (right-padded ``cap_ids`` (N, Lc), ``cap_mask`` (N, Lc))."""
    out = model.lm(input_ids=cap_ids, attention_mask=cap_mask, output_hidden_states=True, use_cache=False)
    last = cap_mask.long().sum(1) - 1
    h = out.hidden_states[-2][torch.arange(len(cap_ids), device=cap_ids.device), last]
    return model.evi_head(h)


def mil_scores(e: torch.Tensor, f: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """``S`` (N, B): log-mean-exp over each video's valid frames of ``e_i · f_jt / √d``.

    ``e`` (N, D) caption features, ``f`` (B, T, D) frame features, ``frame_mask`` (B, T) bool.

    >>> e, f = torch.ones(1, 4), torch.zeros(1, 3, 4)
    >>> mil_scores(e, f, torch.tensor([[True, True, False]])).tolist()
    [[0.0]]
    """
    s = torch.einsum("nd,btd->nbt", e, f) / math.sqrt(e.shape[-1])  # (N, B, T)
    s = s.masked_fill(~frame_mask[None], float("-inf"))
    n = frame_mask.sum(1).clamp(min=1).to(s.dtype)  # (B,)
    return torch.logsumexp(s, dim=-1) - torch.log(n)[None]


def frame_nce(e: torch.Tensor, f: torch.Tensor, frame_mask: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """CLIP-style frame–caption InfoNCE over a batch: ``e`` (N, D) captions, ``f`` (B, T, D) frames,
    ``frame_mask`` (B, T), ``positive`` (N, B, T) bool — the frames that show caption i's event.

    Caption → frames: softmax over every valid frame of the batch, the positives share the target mass;
    frame → captions: for each frame that is a positive of some caption, softmax over the captions.

    >>> f = torch.zeros(1, 3, 2); f[0, 1, 0] = 9.0
    >>> e = torch.tensor([[1.0, 0.0]])
    >>> pos = torch.tensor([[[False, True, False]]])
    >>> float(frame_nce(e, f, torch.ones(1, 3, dtype=torch.bool), pos)) < 0.05
    True
    """
    N, (B, T) = len(e), frame_mask.shape
    s = torch.einsum("nd,btd->nbt", e, f) / math.sqrt(e.shape[-1])
    valid = frame_mask[None].expand(N, B, T)
    pos = (positive & valid).to(s.dtype)
    logp = s.masked_fill(~valid, float("-inf")).reshape(N, -1).log_softmax(-1).reshape(N, B, T)
    keep = pos.flatten(1).sum(-1) > 0
    c2f = -((logp.masked_fill(~valid, 0.0) * pos).flatten(1).sum(-1) / pos.flatten(1).sum(-1).clamp(min=1))[keep].mean()
    logq = s.log_softmax(0)  # over captions, per frame
    fkeep = pos.sum(0) > 0  # (B, T)
    f2c = -((logq * pos).sum(0)[fkeep] / pos.sum(0)[fkeep]).mean()
    return 0.5 * (c2f + f2c)


def info_nce(S: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE over a score matrix ``S`` (N captions × B videos); ``positive``
    (N, B) bool marks the caption's own video(s). Mean of caption→video and video→caption terms."""
    pos = positive.to(S.dtype)

    def one_side(s, p):
        log_p = s.log_softmax(-1)
        keep = p.sum(-1) > 0
        return -((log_p * p).sum(-1) / p.sum(-1).clamp(min=1))[keep].mean()

    return 0.5 * (one_side(S, pos) + one_side(S.T, pos.T))


@dataclass
class AlignOutput:
    """What :class:`AlignObjective` returns to :func:`d2lib.training.train.fit` (``parts`` are logged)."""

    loss: torch.Tensor
    parts: dict = field(default_factory=dict)


class AlignObjective(nn.Module):
    """Stage align's training objective around a :class:`d2lib.vlm.model.D2VLM`:
    ``L = CE(response) + weight · contrastive`` with ``pairs`` = ``"frame"`` (:func:`frame_nce`) or
    ``"video"`` (:func:`info_nce` over :func:`mil_scores`); the scores are multiplied by a learnable
    scale (CLIP's inverse temperature, ``init_scale``), which lives here and is not part of the model.

    The batch is :func:`d2lib.vlm.tokens.collate`'s plus ``cap_ids``/``cap_mask`` (one caption per example,
    of its own video), ``cap_video`` (N,) / ``video_id`` (B,) integer video ids and ``cap_frames`` (N, 2)
    the inclusive frames of each caption's event. With ``weight == 0`` it is plain captioning/QA.
    """

    def __init__(self, model, weight: float = 1.0, pairs: str = "frame", init_scale: float = 10.0):
        super().__init__()
        if pairs not in ("frame", "video"):
            raise ValueError(f"pairs must be 'frame' or 'video', got {pairs!r}")
        self.model, self.weight, self.pairs = model, float(weight), pairs
        # CLIP's learnable temperature: logits = exp(log_scale) · e·f/√d. Without it the heads would first
        # have to grow their outputs before a softmax over hundreds of frames can put mass anywhere.
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, cap_ids=None, cap_mask=None, cap_video=None, video_id=None, cap_frames=None,
                **batch) -> AlignOutput:
        out = self.model(**batch)
        parts = {"lm_loss": out.lm_loss}
        loss = out.lm_loss
        if self.weight > 0 and cap_ids is not None:
            e = caption_features(self.model, cap_ids, cap_mask) * self.log_scale.clamp(max=math.log(100.0)).exp()
            same = cap_video[:, None] == video_id[None, :]  # (N, B)
            if self.pairs == "video":
                nce = info_nce(mil_scores(e, out.frame_feats, batch["frame_mask"]), same)
            else:
                t = torch.arange(batch["frame_mask"].shape[1], device=e.device)
                inside = (t[None] >= cap_frames[:, :1]) & (t[None] <= cap_frames[:, 1:])  # (N, T)
                nce = frame_nce(e, out.frame_feats, batch["frame_mask"], same[:, :, None] & inside[:, None, :])
            parts["contrastive_loss"] = nce
            loss = loss + self.weight * nce
        return AlignOutput(loss, parts)


def pad_ids(seqs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of 1-D id tensors → ``(ids (N, L), mask (N, L))``."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def frame_features(model, videos, tokenizer, batch_size: int = 16) -> dict:
    """``{video: f (T, D)}``: ``frm_head`` features of every frame. Frames attend only to the system
    prompt and each other, never to the question after them, so ``f_t`` does not depend on the query."""
    from d2lib.training import data

    names = list(videos)
    recs = [{"idx": i, "task": "dvc", "video": v, "q": data.ALIGN_DVC_PROMPT} for i, v in enumerate(names)]
    exs = data.make_examples(recs, videos, data.ALIGN_VARIANT, tokenizer, with_response=False)
    collate = data.Collator(videos, tokenizer.pad_token_id, kind=data.video_kind(videos))
    device = next(model.parameters()).device
    out = {}
    for i in range(0, len(exs), batch_size):
        batch = {k: v.to(device) for k, v in collate(exs[i:i + batch_size]).items()}
        f = model(**batch).frame_feats
        for b, ex in enumerate(exs[i:i + batch_size]):
            out[ex["video"]] = f[b, : ex["n_frames"]].float().cpu()
    return out


@torch.no_grad()
def zero_shot_tvg(model, records, videos, tokenizer, ratio: float = 0.6) -> dict:
    """Training-free grounding from frame–caption similarity (TFVTG-style): for each tvg query, softmax
    over frames of ``e·f_t/√d``, decoded like the span head (:func:`d2lib.core.spans.decode_span`).
    Scored with the Charades-STA protocol; keys prefixed ``zs_``."""
    from d2lib.evaluation import metrics
    from d2lib.core import spans

    was_training = model.training
    model.eval()
    try:
        tvg = [r for r in records if r["task"] == "tvg"]
        f = frame_features(model, {r["video"]: videos[r["video"]] for r in tvg}, tokenizer)
        ids = [torch.tensor(tokenizer(r["g"][0], add_special_tokens=False)["input_ids"]) for r in tvg]
        cap_ids, cap_mask = pad_ids(ids, tokenizer.pad_token_id)
        device = next(model.parameters()).device
        e = caption_features(model, cap_ids.to(device), cap_mask.to(device)).float().cpu()
        pred = []
        for r, ek in zip(tvg, e):
            s = f[r["video"]] @ ek / math.sqrt(len(ek))
            first, last = spans.decode_span(s.softmax(-1), ratio)
            pred.append(spans.frames_to_span(first, last))
        out = metrics.charades_sta(pred, [r["tgt"] for r in tvg])
    finally:
        model.train(was_training)
    return {f"zs_{k}": float(out[k]) for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")}
