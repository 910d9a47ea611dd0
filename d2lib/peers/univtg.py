"""A UniVTG-style grounding specialist (lesson ``08_peers``): the strongest simple non-LLM baseline.

UniVTG (Lin et al., ICCV 2023) grounds a text query in a video without a language model: a small
text encoder and a few attention layers fuse the query with **per-frame** features, and three heads read
every frame ``t``:

* **foreground** ``p_t`` — is frame ``t`` inside the queried event? (BCE on every frame);
* **boundary offsets** ``(d_s, d_e)`` — seconds from ``t`` back to the event's start and on to its end
  (L1, on foreground frames only): every foreground frame proposes the span ``[t − d_s, t + d_e]``;
* **saliency** ``s_t`` — how well frame ``t`` matches the query (a hinge ranking loss: every frame inside
  the event should beat every frame outside it by a margin).

Inference: each frame proposes ``[t − d_s, t + d_e]`` scored by ``p_t`` (optionally ``p_t · σ(s_t)``);
the best proposal, clipped to the video, is the answer (R@1 needs no NMS; :func:`proposals` gives the
NMS'd top-k for the lesson's pictures). Spans are seconds (frame ``t`` = second ``t / fps``).

**Frame features (honest and fast).** The specialist reads the *same* frames as the D²VLM: the vision
tower of the aligned model (stage ``align``), **frozen**. Training reads align's cached tower outputs
(``artifacts/align/features_train.safetensors``, the same tensors the frozen tower would compute); at test
time the tower runs on the uint8 frames (``artifacts/prepare/frames_test.npz``) and that time counts as
inference. ``frame_input`` chooses what of the tower the specialist sees per frame:

* ``"frame_tokens"`` — the frozen align model's own frame tokens (attention pool → temporal mixer →
  projector): one ``model.hidden_size`` vector per frame, exactly what the align LM reads;
* ``"patches"`` — the tower's patch tokens (S·P of width ``vision_hidden`` per frame), pooled by a
  *query-conditioned* attention of the specialist (it can look for "the red circle" in the frame).

The D²VLM rows of the comparison fine-tune the tower during SFT (``sft.train_tower``); this specialist
never does — it is a head on frozen features, like UniVTG on frozen CLIP/SlowFast features.

Query words: the align tokenizer (``artifacts/align/tokenizer``, word-level over the Shapes vocabulary)
encodes the query caption ``g[0]`` (:func:`d2lib.evaluation.baselines.query_text`); the specialist learns its own
word embeddings from scratch.

>>> fg, off = targets([3, 6], 10)
>>> fg.tolist()
[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
>>> off[4].tolist()  # frame 4: 1 s after the start, 2 s before the end
[1.0, 2.0]
>>> decode(fg, off, duration=10)  # every foreground frame proposes the GT span exactly
[3.0, 6.0]
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from d2lib.core.config import check

ROW = "univtg"  # the row name of the specialist in params `peers.specialists` and artifacts/peers/


# ------------------------------------------------------------------------------------------------
# params
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UniVTGConfig:
    """params ``peers.univtg`` (stage ``peers_univtg``, lesson ``08_peers``).

    ``frame_input``: ``pixels`` | ``frame_tokens`` | ``patches`` (module docstring); ``dim``: width of the specialist;
    ``query_layers``/``layers``: transformer layers over the query words / over the fused frames;
    ``heads``, ``dropout``; training: ``steps`` AdamW steps of ``batch_size`` queries (train tvg records),
    ``lr`` (linear warm-up over ``warmup_ratio`` then cosine), ``weight_decay``, ``grad_clip``; loss weights
    ``fg_weight`` (BCE), ``offset_weight`` (L1 in seconds, foreground frames), ``saliency_weight`` (hinge with
    ``saliency_margin``); inference ``score``: ``fg`` (UniVTG's foreground score) or ``fg_saliency``
    (``p_t · σ(s_t)``); ``batch_size_eval``; ``num_threads``: torch threads (0 leaves torch's setting).
    """

    frame_input: Literal["pixels", "frame_tokens", "patches"] = "pixels"
    dim: int = 64
    query_layers: int = 1
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    steps: int = 400
    batch_size: int = 32
    lr: float = 0.002
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    fg_weight: float = 1.0
    offset_weight: float = 0.2
    saliency_weight: float = 1.0
    saliency_margin: float = 0.2
    score: Literal["fg", "fg_saliency"] = "fg"
    batch_size_eval: int = 64
    num_threads: int = 0

    def __post_init__(self):
        k = "peers.univtg"
        for name in ("dim", "layers", "heads", "steps", "batch_size", "batch_size_eval"):
            check(getattr(self, name) >= 1, f"{k}.{name}", f"must be >= 1, got {getattr(self, name)}")
        check(self.query_layers >= 0, f"{k}.query_layers", f"must be >= 0, got {self.query_layers}")
        check(self.dim % self.heads == 0, f"{k}.heads", f"must divide dim={self.dim}, got {self.heads}")
        check(0.0 <= self.dropout < 1.0, f"{k}.dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.lr > 0, f"{k}.lr", f"must be > 0, got {self.lr}")
        check(0.0 <= self.warmup_ratio < 1.0, f"{k}.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.weight_decay >= 0, f"{k}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.grad_clip >= 0, f"{k}.grad_clip", f"must be >= 0 (0: off), got {self.grad_clip}")
        for name in ("fg_weight", "offset_weight", "saliency_weight", "saliency_margin"):
            check(getattr(self, name) >= 0, f"{k}.{name}", f"must be >= 0, got {getattr(self, name)}")
        check(self.fg_weight > 0, f"{k}.fg_weight", "must be > 0: inference ranks proposals by foreground")
        check(self.num_threads >= 0, f"{k}.num_threads", f"must be >= 0, got {self.num_threads}")


# ------------------------------------------------------------------------------------------------
# targets and decoding (pure functions)
# ------------------------------------------------------------------------------------------------
def targets(span: Sequence[float], n_frames: int, fps: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame targets of one GT span (seconds) for a video of ``n_frames`` frames: foreground
    ``fg`` (T,) ∈ {0, 1} (frames of :func:`d2lib.core.spans.span_to_frames`, inclusive) and offsets ``off``
    (T, 2) = (t − start, end − t) in seconds (meaningful on foreground frames only, clamped ≥ 0)."""
    from d2lib.core.spans import span_to_frames

    first, last = span_to_frames(span, n_frames, fps)
    t = torch.arange(n_frames, dtype=torch.float32) / fps
    fg = ((torch.arange(n_frames) >= first) & (torch.arange(n_frames) <= last)).float()
    off = torch.stack([t - float(span[0]), float(span[1]) - t], -1).clamp_min(0.0)
    return fg, off


def frame_proposals(off: torch.Tensor, fps: float = 1.0) -> torch.Tensor:
    """Offsets (T, 2) → one span per frame (T, 2): ``[t − d_s, t + d_e]`` in seconds."""
    t = torch.arange(len(off), dtype=off.dtype, device=off.device) / fps
    return torch.stack([t - off[:, 0], t + off[:, 1]], -1)


def decode(score: torch.Tensor, off: torch.Tensor, duration: float, fps: float = 1.0) -> list[float]:
    """The top-1 span: the proposal of the best-scoring frame, clipped to ``[0, duration]``.
    ``score`` (T,), ``off`` (T, 2) → ``[start, end]`` seconds."""
    t = int(torch.argmax(score))
    s, e = frame_proposals(off, fps)[t].tolist()
    s, e = max(0.0, min(s, duration)), max(0.0, min(e, duration))
    return [float(min(s, e)), float(max(s, e))]


def proposals(score: torch.Tensor, off: torch.Tensor, duration: float, top_k: int = 5, nms_iou: float = 0.5,
              fps: float = 1.0) -> list[tuple[list[float], float]]:
    """Top-``top_k`` proposals after greedy NMS at ``nms_iou`` (:func:`d2lib.core.spans.nms`):
    ``[(span, score), ...]`` best first. ``score`` (T,), ``off`` (T, 2); each frame's span
    (:func:`frame_proposals`) is clipped to ``[0, duration]``; equal scores keep the earlier frame, so
    the first proposal is :func:`decode`'s span."""
    from d2lib.core.spans import nms

    spans = frame_proposals(off, fps).clamp(0.0, float(duration)).tolist()
    scores = score.tolist()
    return [(spans[t], float(scores[t])) for t in nms(spans, scores, nms_iou, top_k)]


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def _encoder(cfg: UniVTGConfig, n_layers: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


class FrameCNN(nn.Module):
    """The specialist's own tiny frame encoder (``frame_input="pixels"``): uint8 frames (V, T, H, W, 3) →
    RGB + 4·(frame_t − frame_{t−1}) as 6 channels (motion, like the tiny tower's input) → three stride-2
    3×3 convolutions (16, 32, ``dim`` channels) → a patch map (V, T, P, dim), P = (H/8)·(W/8)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(6, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
                                 nn.Conv2d(32, dim, 3, 2, 1), nn.GELU())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float().div(255.0).permute(0, 1, 4, 2, 3)  # (V, T, 3, H, W)
        diff = torch.zeros_like(x)
        diff[:, 1:] = 4.0 * (x[:, 1:] - x[:, :-1])
        V, T = x.shape[:2]
        y = self.net(torch.cat([x - 0.14, diff], 2).flatten(0, 1))  # (V·T, dim, h, w)
        return y.flatten(2).transpose(1, 2).unflatten(0, (V, T))


class UniVTG(nn.Module):
    """Query encoder + frame fusion + three per-frame heads.

    ``forward(feats, vid, frame_mask, words, word_mask)``: ``feats`` the V distinct videos of the batch —
    (V, T, Df) frame features, (V, T, P, Dp) patch features (``patches``) or (V, T, H, W, 3) uint8 frames
    (``pixels``: encoded by :class:`FrameCNN`); ``vid`` (B,) the video of each query; ``frame_mask`` (B, T)
    bool; ``words`` (B, W) token ids, ``word_mask`` (B, W) bool →
    ``{"fg": (B, T) logits, "off": (B, T, 2) seconds ≥ 0, "sal": (B, T)}``.
    """

    def __init__(self, cfg: UniVTGConfig, vocab_size: int, feat_dim: int, max_frames: int = 256):
        super().__init__()
        self.cfg, self.feat_dim, self.max_frames = cfg, feat_dim, max_frames
        d = cfg.dim
        self.word = nn.Embedding(vocab_size, d)
        self.word_pos = nn.Embedding(64, d)
        self.query = _encoder(cfg, cfg.query_layers) if cfg.query_layers else nn.Identity()
        self.cnn = FrameCNN(d) if cfg.frame_input == "pixels" else None
        in_dim = d if self.cnn is not None else feat_dim
        self.frame_in = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d))
        self.frame_pos = nn.Embedding(max_frames, d)
        self.cross = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.fuse = _encoder(cfg, cfg.layers)
        self.norm = nn.LayerNorm(d)
        self.fg_head = nn.Linear(d, 1)
        self.off_head = nn.Linear(d, 2)
        self.sal_head = nn.Linear(d, 1)

    def encode_query(self, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """(B, W) ids → (B, W, d) word states."""
        pos = torch.arange(words.shape[1], device=words.device).clamp_max(self.word_pos.num_embeddings - 1)
        x = self.word(words) + self.word_pos(pos)
        return self.query(x, src_key_padding_mask=~word_mask) if self.cfg.query_layers else x

    def frames_in(self, feats: torch.Tensor, vid: torch.Tensor, q: torch.Tensor,
                  word_mask: torch.Tensor) -> torch.Tensor:
        """Per-video inputs (V, T, ...) → per-query frame states (B, T, d). Patch maps (from the CNN or the
        tower) are pooled by attention with the query's mean word state as the attention query (+ their mean)."""
        x = self.cnn(feats) if self.cnn is not None else feats.float()
        x = self.frame_in(x)[vid]
        if x.dim() == 4:
            qm = (q * word_mask[..., None]).sum(1) / word_mask.sum(1, keepdim=True).clamp_min(1)  # (B, d)
            a = torch.einsum("btpd,bd->btp", x, qm) / math.sqrt(x.shape[-1])
            x = (a.softmax(-1)[..., None] * x).sum(2) + x.mean(2)
        return x

    def forward(self, feats, vid, frame_mask, words, word_mask) -> dict[str, torch.Tensor]:
        q = self.encode_query(words, word_mask)
        x = self.frames_in(feats, vid, q, word_mask)
        T = x.shape[1]
        x = x + self.frame_pos(torch.arange(T, device=x.device).clamp_max(self.max_frames - 1))
        x = x + self.cross(x, q, q, key_padding_mask=~word_mask, need_weights=False)[0]
        h = self.norm(self.fuse(x, src_key_padding_mask=~frame_mask))
        return {"fg": self.fg_head(h).squeeze(-1), "off": F.softplus(self.off_head(h)),
                "sal": self.sal_head(h).squeeze(-1)}


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
def saliency_hinge(sal: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over queries of the mean over (inside, outside) frame pairs of ``max(0, m + s_out − s_in)``.
    ``sal``/``fg``/``mask``: (B, T); queries without an outside (or inside) frame are skipped."""
    pos = (fg > 0.5) & mask
    neg = (fg <= 0.5) & mask
    pair = pos[:, :, None] & neg[:, None, :]  # (B, T_in, T_out)
    h = F.relu(margin + sal[:, None, :] - sal[:, :, None]) * pair
    n = pair.flatten(1).sum(1)
    ok = n > 0
    if not bool(ok.any()):
        return sal.sum() * 0.0
    return (h.flatten(1).sum(1)[ok] / n[ok]).mean()


def losses(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], cfg: UniVTGConfig) -> dict:
    """The three UniVTG terms and their weighted sum ``loss`` (scalars)."""
    m, fg = batch["frame_mask"], batch["fg"]
    bce = F.binary_cross_entropy_with_logits(out["fg"], fg, reduction="none")
    l_fg = (bce * m).sum() / m.sum().clamp_min(1)
    on = (fg > 0.5) & m
    l1 = (out["off"] - batch["off"]).abs().sum(-1)
    l_off = (l1 * on).sum() / on.sum().clamp_min(1)
    l_sal = saliency_hinge(out["sal"], fg, m, cfg.saliency_margin)
    total = cfg.fg_weight * l_fg + cfg.offset_weight * l_off + cfg.saliency_weight * l_sal
    return {"loss": total, "fg_loss": l_fg, "offset_loss": l_off, "saliency_loss": l_sal}


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def query_ids(tokenizer, text: str) -> list[int]:
    """Word ids of a query (no special tokens; at least one id)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids or [tokenizer.unk_token_id or 0]


def make_examples(records: Sequence[Mapping], feats: Mapping[str, torch.Tensor], tokenizer,
                  fps: float = 1.0) -> list[dict]:
    """One example per tvg record: ``video``, ``words`` (W,), ``fg`` (T,), ``off`` (T, 2), ``duration``."""
    from d2lib.evaluation.baselines import query_text

    out = []
    for r in records:
        if r["task"] != "tvg":
            continue
        T = len(feats[r["video"]])
        fg, off = targets(r["tgt"], T, fps) if r.get("tgt") is not None else (torch.zeros(T), torch.zeros(T, 2))
        out.append({"video": r["video"], "words": torch.tensor(query_ids(tokenizer, query_text(r))),
                    "fg": fg, "off": off, "duration": float(r["duration"]), "idx": r.get("idx")})
    return out


def collate(examples: Sequence[Mapping], feats: Mapping[str, torch.Tensor], pad_id: int = 0) -> dict:
    """Batch (right-padded): ``feats`` (V, T, ...) of the V distinct videos, ``vid`` (B,) each query's video,
    ``frame_mask`` (B, T), ``words`` (B, W), ``word_mask``, ``fg`` (B, T), ``off`` (B, T, 2)."""
    from d2lib.vlm.tokens import _pad_stack

    videos = list(dict.fromkeys(e["video"] for e in examples))
    pos = {v: i for i, v in enumerate(videos)}
    T = max(len(feats[v]) for v in videos)
    W = max(len(e["words"]) for e in examples)
    B = len(examples)
    words = torch.full((B, W), pad_id, dtype=torch.long)
    wmask = torch.zeros(B, W, dtype=torch.bool)
    fmask = torch.zeros(B, T, dtype=torch.bool)
    for b, e in enumerate(examples):
        words[b, : len(e["words"])] = e["words"]
        wmask[b, : len(e["words"])] = True
        fmask[b, : len(feats[e["video"]])] = True
    return {"feats": _pad_stack([feats[v] for v in videos], T),
            "vid": torch.tensor([pos[e["video"]] for e in examples], dtype=torch.long), "frame_mask": fmask,
            "words": words, "word_mask": wmask, "fg": _pad_stack([e["fg"] for e in examples], T),
            "off": _pad_stack([e["off"] for e in examples], T)}


def _forward(model: UniVTG, batch: Mapping[str, torch.Tensor]) -> dict:
    return model(batch["feats"], batch["vid"], batch["frame_mask"], batch["words"], batch["word_mask"])


# ------------------------------------------------------------------------------------------------
# frame features from the frozen align model
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def frame_inputs(align_model, tower_feats: Mapping[str, torch.Tensor], frame_input: str) -> dict[str, torch.Tensor]:
    """What the specialist reads per video from the frozen align tower's outputs ``{video: (T, S, P, Dv)}``:
    ``frame_tokens`` → ``{video: (T, H)}`` (the align model's pool → temporal mixer → projector);
    ``patches`` → ``{video: (T, S·P, Dv)}``. (``pixels`` reads the uint8 frames, not the tower.)"""
    if frame_input == "pixels":
        raise ValueError("frame_input 'pixels' reads uint8 frames (data.load_frames), not tower features")
    if frame_input == "patches":
        return {v: f.flatten(1, 2).float() for v, f in tower_feats.items()}
    was = align_model.training
    align_model.eval()
    try:
        out = {}
        for v, f in tower_feats.items():
            mask = torch.ones(1, f.shape[0], dtype=torch.bool)
            out[v] = align_model.frame_tokens(f[None], mask)[0].float()
        return out
    finally:
        align_model.train(was)


def load_inputs(split: str, videos, align_model, frame_input: str, align_dir=None) -> dict[str, torch.Tensor]:
    """The specialist's inputs for ``videos`` of a train/val split: uint8 frames (``pixels``) or, from align's
    cached tower outputs, :func:`frame_inputs`."""
    from d2lib.training import data

    if frame_input == "pixels":
        return data.load_frames(split, videos)
    return frame_inputs(align_model, data.load_features(data.features_path(split, align_dir), videos), frame_input)


def encode_videos(align_model, frames: Mapping[str, torch.Tensor], frame_input: str) -> dict[str, torch.Tensor]:
    """uint8 frames ``{video: (T, H, W, 3)}`` → the specialist's inputs (the frozen tower runs here, unless
    ``pixels``: the frames themselves)."""
    from d2lib.training import data

    if frame_input == "pixels":
        return dict(frames)
    return frame_inputs(align_model, data.tower_features(align_model, frames), frame_input)


# ------------------------------------------------------------------------------------------------
# training and inference
# ------------------------------------------------------------------------------------------------
def _lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    warm = max(1, int(round(warmup_ratio * total)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def sample_batch(groups: Sequence[Sequence[int]], batch_size: int, gen: torch.Generator) -> list[int]:
    """About ``batch_size`` example indices: whole videos (all their queries) in a random order until the
    batch is full — the queries of one video share its frame encoding (and are each other's negatives).

    >>> sample_batch([[0, 1], [2], [3, 4, 5]], 3, torch.Generator().manual_seed(0))
    [3, 4, 5]
    """
    out: list[int] = []
    for g in torch.randperm(len(groups), generator=gen).tolist():
        out += list(groups[g])
        if len(out) >= batch_size:
            break
    return out[:batch_size]


def fit(model: UniVTG, examples: Sequence[Mapping], feats: Mapping[str, torch.Tensor], cfg: UniVTGConfig,
        seed: int = 0, pad_id: int = 0, log_every: int = 50) -> list[dict]:
    """Train ``model`` for ``cfg.steps`` AdamW steps on batches of ``examples`` (:func:`sample_batch`, seeded); returns the
    loss log ``[{step, loss, fg_loss, offset_loss, saliency_loss}, ...]`` every ``log_every`` steps."""
    if not examples:
        raise ValueError("univtg.fit: no training examples (no tvg records?)")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e["video"], []).append(i)
    groups_list = list(groups.values())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.steps, cfg.warmup_ratio))
    model.train()
    log, acc = [], {}
    for step in range(cfg.steps):
        idx = sample_batch(groups_list, cfg.batch_size, gen)
        batch = collate([examples[i] for i in idx], feats, pad_id)
        terms = losses(_forward(model, batch), batch, cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        for k, v in terms.items():
            acc[k] = acc.get(k, 0.0) + float(v.detach())
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            n = (step % log_every) + 1
            log.append({"step": step + 1, **{k: v / n for k, v in acc.items()}})
            acc = {}
    model.eval()
    return log


@torch.no_grad()
def predict_scores(model: UniVTG, examples: Sequence[Mapping], feats: Mapping[str, torch.Tensor],
                   cfg: UniVTGConfig, pad_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per example ``{"fg": (T,) prob, "sal": (T,), "off": (T, 2), "score": (T,)}`` (eval mode)."""
    model.eval()
    out = []
    for i in range(0, len(examples), cfg.batch_size_eval):
        chunk = examples[i:i + cfg.batch_size_eval]
        batch = collate(chunk, feats, pad_id)
        o = _forward(model, batch)
        for b, e in enumerate(chunk):
            T = len(feats[e["video"]])
            fg = o["fg"][b, :T].sigmoid()
            sal = o["sal"][b, :T]
            score = fg * sal.sigmoid() if cfg.score == "fg_saliency" else fg
            out.append({"fg": fg, "sal": sal, "off": o["off"][b, :T], "score": score})
    return out


def predict(model: UniVTG, records: Sequence[Mapping], feats: Mapping[str, torch.Tensor], tokenizer,
            cfg: UniVTGConfig, fps: float = 1.0) -> list[dict]:
    """Copies of the tvg ``records`` with ``a`` = ``"The event happens in s - e."`` (the top-1 span)."""
    from d2lib.stages.evaluate import tvg_answer

    tvg = [r for r in records if r["task"] == "tvg"]
    exs = make_examples(tvg, feats, tokenizer, fps)
    preds = predict_scores(model, exs, feats, cfg, tokenizer.pad_token_id or 0)
    return [{**r, "a": tvg_answer(decode(p["score"], p["off"], float(r["duration"]), fps))}
            for r, p in zip(tvg, preds)]


def save(model: UniVTG, folder: str | Path) -> Path:
    """``folder/univtg.pt`` (state dict + config + sizes), written atomically — small enough to keep in the cell."""
    from d2lib.core import io

    p = Path(folder) / "univtg.pt"
    obj = {"cfg": dataclasses.asdict(model.cfg), "vocab_size": model.word.num_embeddings,
           "feat_dim": model.feat_dim, "max_frames": model.max_frames, "state": model.state_dict()}
    return io.save_torch(obj, p)


def load(folder: str | Path) -> UniVTG:
    """The model :func:`save` wrote (eval mode)."""
    obj = torch.load(Path(folder) / "univtg.pt", map_location="cpu", weights_only=True)
    model = UniVTG(UniVTGConfig(**obj["cfg"]), obj["vocab_size"], obj["feat_dim"], obj["max_frames"])
    model.load_state_dict(obj["state"])
    return model.eval()


# ------------------------------------------------------------------------------------------------
# the whole run (train on train tvg, val scores) — the peers cell calls this
# ------------------------------------------------------------------------------------------------
@dataclass
class UniVTGResult:
    """What :func:`run` returns: the trained model, the align model and tokenizer it read features with,
    the loss log, the metrics (val tvg scores; no wall time) and the wall times in seconds (the peers
    cell logs them: :mod:`d2lib.core.timing`)."""

    model: UniVTG
    align_model: object
    tokenizer: object
    log: list
    metrics: dict
    seconds: dict


def tvg_scores(answered: Sequence[Mapping]) -> dict:
    """Charades-STA R@1@{0.3,0.5,0.7}, mIoU of answered tvg records (:func:`d2lib.vlm.infer.tvg_scores`)."""
    from d2lib.vlm.infer import tvg_scores as _tvg

    return _tvg(answered, delimiter=None)


def run(cfg: UniVTGConfig, seed: int = 0, align_dir: str | Path | None = None, fps: float = 1.0,
        progress: bool = False) -> UniVTGResult:
    """Train the specialist on the train tvg records (align's cached tower features) with ``seed``; score the
    val tvg records (R@1, mIoU) for the record. ``align_dir``: default ``artifacts/align``."""
    from d2lib.stages import align
    from d2lib.training import data

    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    align_model, tok = align.load(align_dir)
    for p in align_model.parameters():
        p.requires_grad_(False)
    root = Path(align_dir) if align_dir else None
    train_recs = data.load_records("train", ["tvg"])
    val_recs = data.load_records("val", ["tvg"])
    feats = load_inputs("train", {r["video"] for r in train_recs}, align_model, cfg.frame_input, root)
    val_feats = load_inputs("val", {r["video"] for r in val_recs}, align_model, cfg.frame_input, root)
    examples = make_examples(train_recs, feats, tok, fps)
    feat_dim = next(iter(feats.values())).shape[-1]
    secs["setup"] = time.perf_counter() - t0
    torch.manual_seed(seed)
    max_frames = int(getattr(align_model.cfg, "max_frames", 256))
    model = UniVTG(cfg, len(tok), feat_dim, max_frames=max(max_frames, 256))
    t0 = time.perf_counter()
    log = fit(model, examples, feats, cfg, seed=seed, pad_id=tok.pad_token_id or 0)
    secs["train"] = time.perf_counter() - t0
    val = tvg_scores(predict(model, val_recs, val_feats, tok, cfg, fps))
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {"seed": seed, "steps": cfg.steps, "examples": len(examples), "val_tvg": val,
               "train": {k: v for k, v in log[-1].items() if k != "step"}, "params": n_params,
               "frame_input": cfg.frame_input, "feat_dim": int(feat_dim)}
    return UniVTGResult(model, align_model, tok, log, metrics, secs)


__all__ = ["ROW", "UniVTGConfig", "UniVTG", "UniVTGResult", "targets", "frame_proposals", "decode", "proposals",
           "saliency_hinge", "losses", "query_ids", "make_examples", "collate", "frame_inputs", "load_inputs", "encode_videos", "sample_batch", "FrameCNN",
           "fit", "predict_scores", "predict", "save", "load", "tvg_scores", "run"]
