"""How many frame tokens reach the LM — the token budgets of the peer systems (lesson ``08_peers``).

D²VLM gives the LM one token per second. The peers spend fewer, and each is a switch on
:class:`d2lib.vlm.model.Variant` (defaults off; at most one per row):

- **VideoLLaMA3 DiffFP** (``frame_select="diff"``): drop a frame whose mean absolute pixel difference
  to the previous *kept* frame is below ``diff_threshold`` (:func:`diff_keep_mask`); decided from the
  pixels, so the data path computes the mask (:func:`keep_masks`).
- **MovieChat** (``merge_budget``): merge the most cosine-similar adjacent frame tokens (size-weighted
  average) until ``merge_budget`` tokens are left (:func:`merge_adjacent`); decided by the model.
- **VideoLLaMA2 STC** (``stc_stride``): a strided 1-D convolution over time (:class:`STCPool`).

Each is a :class:`d2lib.vlm.tokens.TokenBudget` (:class:`DiffFP`, :class:`MovieChat`, :class:`STC`):
:func:`for_variant` is what the core resolves a variant with a budget switch on to
(:data:`d2lib.vlm.tokens.BUDGET_PLUGIN`).

Times stay in seconds: the grounding heads and their targets are per second, and each second t maps
to the frame token that covers it — ``token_of_frame`` (T,) long. The model reads the LM's states of
the frame tokens, gathers them back per second (a second reads its covering token), and scores
(N, T) / targets / span decoding / evidence injection work on seconds exactly as before (injection
averages the covering tokens' states, each weighted by the seconds it covers).

>>> token_map(_demo_variant(stc_stride=2), 5).tolist(), n_tokens(_demo_variant(merge_budget=3), 5)
([0, 0, 1, 1, 2], 3)
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from d2lib.vlm.tokens import PLAIN, TokenBudget


def _demo_variant(**kw):  # a duck-typed variant for the doctests (the real one is d2lib.vlm.model.Variant)
    base = dict(frame_select="all", diff_threshold=0.02, merge_budget=0, stc_stride=1, time_separators=False)
    return SimpleNamespace(**{**base, **kw})


def _sw(variant, name, default):
    return getattr(variant, name, default)


# --------------------------------------------------------------------------------------------
# DiffFP: drop static frames
# --------------------------------------------------------------------------------------------
def frame_diffs(frames) -> np.ndarray:
    """Mean |Δpixel| in [0, 1] of each frame to the one before: frames (T, H, W, 3) uint8 → (T−1,)."""
    f = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float32) / 255.0
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def diff_keep_mask(frames, threshold: float) -> torch.Tensor:
    """VideoLLaMA3's DiffFP: (T,) bool, frame 0 always kept; frame t is kept iff its mean absolute
    pixel difference (in [0, 1]) to the previous **kept** frame is >= ``threshold``.

    >>> v = np.zeros((5, 4, 4, 3), np.uint8); v[3:] = 255
    >>> diff_keep_mask(v, 0.02).tolist()
    [True, False, False, True, False]
    """
    f = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float32) / 255.0
    if f.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, C), got shape {f.shape}")
    keep = np.zeros(len(f), dtype=bool)
    if len(f):
        keep[0] = True
        ref = f[0]
        for t in range(1, len(f)):
            if float(np.abs(f[t] - ref).mean()) >= threshold:
                keep[t], ref = True, f[t]
    return torch.from_numpy(keep)


def map_from_keep(keep: torch.Tensor) -> torch.Tensor:
    """(T,) bool kept frames → (T,) long token of each second: a dropped second is covered by the
    last kept frame before it (its timestamp is kept, the frame token is not).

    >>> map_from_keep(torch.tensor([True, False, True, True, False])).tolist()
    [0, 0, 1, 2, 2]
    """
    keep = torch.as_tensor(keep, dtype=torch.bool)
    if len(keep) and not bool(keep[0]):
        raise ValueError("frame 0 must be kept")
    return keep.long().cumsum(0) - 1


# --------------------------------------------------------------------------------------------
# MovieChat: merge the most similar adjacent tokens
# --------------------------------------------------------------------------------------------
def merge_adjacent(tokens: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MovieChat's memory consolidation: tokens (T, D) → (merged (T', D), group (T,) long) with
    T' = min(T, budget). Repeatedly the most cosine-similar adjacent pair is replaced by its
    size-weighted average (a merged token counts the frames in it); ``group[t]`` is the merged token
    that covers frame t (non-decreasing). Differentiable in ``tokens``.

    >>> x = torch.tensor([[1., 0], [1., 0.1], [0., 1], [0., 1]])
    >>> m, g = merge_adjacent(x, 2)
    >>> g.tolist(), m.shape
    ([0, 0, 1, 1], torch.Size([2, 2]))
    """
    if budget < 1:
        raise ValueError(f"merge budget must be >= 1, got {budget}")
    T = tokens.shape[0]
    group = torch.arange(T, device=tokens.device)
    if T <= budget:
        return tokens, group
    x = tokens.float()
    with torch.no_grad():  # which pairs merge is a discrete choice; the average below carries gradients
        feats, sizes = x.detach().clone(), torch.ones(T, device=x.device)
        members = [[t] for t in range(T)]
        while len(feats) > budget:
            i = int(nn.functional.cosine_similarity(feats[:-1], feats[1:], dim=-1).argmax())
            n = sizes[i] + sizes[i + 1]
            merged_i = (feats[i] * sizes[i] + feats[i + 1] * sizes[i + 1]) / n
            feats = torch.cat([feats[:i], merged_i[None], feats[i + 2:]])
            sizes = torch.cat([sizes[:i], n[None], sizes[i + 2:]])
            members[i] += members.pop(i + 1)
        for k, mem in enumerate(members):
            group[mem] = k
    w = nn.functional.one_hot(group, len(members)).to(tokens.dtype)  # (T, T')
    merged = (w.T @ tokens) / w.sum(0)[:, None]
    return merged, group


# --------------------------------------------------------------------------------------------
# VideoLLaMA2 STC: strided temporal convolution
# --------------------------------------------------------------------------------------------
class STCPool(nn.Module):
    """VideoLLaMA2's spatial-temporal connector, reduced to time: a Conv1d with kernel = stride =
    ``stride`` over the frame tokens, (B, T, D) → (B, ceil(T / stride), D). Initialised as average
    pooling (each tap ``I / stride``) so trained frame tokens keep their meaning; the last window of
    a video is zero-padded (frames past a video's end must be zeroed by the caller)."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.conv = nn.Conv1d(dim, dim, kernel_size=stride, stride=stride)
        with torch.no_grad():
            self.conv.weight.zero_()
            for k in range(stride):
                self.conv.weight[:, :, k] = torch.eye(dim) / stride
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        pad = (-T) % self.stride
        x = nn.functional.pad(x, (0, 0, 0, pad))
        return self.conv(x.transpose(1, 2).to(self.conv.weight.dtype)).transpose(1, 2).to(x.dtype)


def stc_map(n_frames: int, stride: int) -> torch.Tensor:
    """(T,) long: second t is covered by STC token t // stride."""
    return torch.arange(n_frames) // max(stride, 1)


# --------------------------------------------------------------------------------------------
# The mechanisms behind the core's token-budget hooks
# --------------------------------------------------------------------------------------------
class _Fixed(TokenBudget):
    """A budget whose layout is fixed before the model runs: the slots are those of ``token_map``."""

    plain = False

    def n_tokens(self, n_frames: int, keep=None) -> int:
        tmap = self.token_map(n_frames, keep)
        return int(tmap.max()) + 1 if len(tmap) else 0


class DiffFP(_Fixed):
    """VideoLLaMA3's DiffFP: one slot per kept frame; a dropped second reads the last kept one.
    ``keep`` (:meth:`keep_masks`, from the pixels) decides the layout."""

    reads_pixels = True

    def __init__(self, threshold: float):
        self.threshold = threshold

    def token_map(self, n_frames: int, keep=None) -> torch.Tensor:
        if keep is None:
            raise ValueError("params key 'variants.*.frame_select': 'diff' needs the keep mask of the video's "
                             "frames (d2lib.peers.tokenbudget.diff_keep_mask): give uint8 frames, not tower features")
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if len(keep) != n_frames:
            raise ValueError(f"keep mask has {len(keep)} frames, the video {n_frames}")
        return map_from_keep(keep)

    def keep_masks(self, videos: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for v, f in videos.items():
            if torch.as_tensor(f).dtype != torch.uint8:
                raise ValueError("params key 'variants.*.frame_select': 'diff' compares pixels — pass uint8 frames "
                                 f"(video {v!r} holds {torch.as_tensor(f).dtype} features)")
            out[v] = diff_keep_mask(f, self.threshold)
        return out


class STC(_Fixed):
    """VideoLLaMA2's STC: slot k pools seconds [k·stride, (k+1)·stride) with the model's ``stc``
    (:class:`STCPool`)."""

    module_name = "stc"

    def __init__(self, stride: int):
        self.stride = stride

    def token_map(self, n_frames: int, keep=None) -> torch.Tensor:
        return stc_map(n_frames, self.stride)

    def module(self, dim: int, current=None):
        return current if getattr(current, "stride", None) == self.stride else STCPool(dim, self.stride)

    def slot_tokens(self, frame_tok, frame_mask, n_slots, token_of_frame=None, module=None):
        if token_of_frame is None:
            raise ValueError("this layout needs token_of_frame (from d2lib.vlm.tokens.collate)")
        x = frame_tok * frame_mask[..., None].to(frame_tok.dtype)  # a video's last window: zeros, not padding
        return module(x)[:, :n_slots], token_of_frame


class MovieChat(TokenBudget):
    """MovieChat: ``budget`` slots per video (fewer seconds: one each); which seconds a slot covers is
    decided in the model by merging similar adjacent frame tokens (:func:`merge_adjacent`)."""

    plain = False

    def __init__(self, budget: int):
        self.budget = budget

    def token_map(self, n_frames: int, keep=None) -> None:
        return None

    def n_tokens(self, n_frames: int, keep=None) -> int:
        return min(n_frames, self.budget)

    def slot_tokens(self, frame_tok, frame_mask, n_slots, token_of_frame=None, module=None):
        B, T, H = frame_tok.shape
        out = frame_tok.new_zeros(B, n_slots, H)
        tof = torch.zeros(B, T, dtype=torch.long, device=frame_tok.device)
        for b in range(B):
            n = int(frame_mask[b].sum())
            merged, group = merge_adjacent(frame_tok[b, :n], self.budget)
            out[b, : len(merged)] = merged
            tof[b, :n] = group
        return out, tof


# --------------------------------------------------------------------------------------------
# Per-variant layout: how many tokens, and which covers each second
# --------------------------------------------------------------------------------------------
def mechanism(variant) -> str:
    """The token-budget mechanism of a variant: ``"all"``, ``"diff"``, ``"merge"`` or ``"stc"``."""
    if _sw(variant, "frame_select", "all") == "diff":
        return "diff"
    if _sw(variant, "merge_budget", 0) > 0:
        return "merge"
    if _sw(variant, "stc_stride", 1) > 1:
        return "stc"
    return "all"


def for_variant(variant) -> TokenBudget:
    """The token budget of ``variant`` (the core's :data:`d2lib.vlm.tokens.PLAIN` for ``"all"``).

    >>> type(for_variant(_demo_variant(stc_stride=2))).__name__, for_variant(_demo_variant()) is PLAIN
    ('STC', True)
    """
    mech = mechanism(variant)
    if mech == "diff":
        return DiffFP(variant.diff_threshold)
    if mech == "merge":
        return MovieChat(variant.merge_budget)
    if mech == "stc":
        return STC(variant.stc_stride)
    return PLAIN


def needs_pixels(variant) -> bool:
    """True when the layout depends on pixels (DiffFP) or the pixels change (NumPro): such a row must
    read uint8 frames, not a tower-feature cache computed from other pixels."""
    from d2lib.vlm.tokens import reads_pixels

    return reads_pixels(variant)


def token_map(variant, n_frames: int, keep=None) -> torch.Tensor | None:
    """(T,) long token of each second when the layout is fixed before the model runs; ``None`` for
    MovieChat (the model merges by similarity). DiffFP needs ``keep`` (:func:`diff_keep_mask`)."""
    return for_variant(variant).token_map(n_frames, keep)


def n_tokens(variant, n_frames: int, keep=None) -> int:
    """How many frame tokens of a video of ``n_frames`` seconds reach the LM (``<video>`` slots)."""
    return for_variant(variant).n_tokens(n_frames, keep)


def keep_masks(variant, videos: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``{video: (T,) bool}`` DiffFP keep masks of uint8 frame caches, or ``None`` when the variant
    does not select frames."""
    return for_variant(variant).keep_masks(videos)


def tokens_kept(variant, videos: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Lesson ``08_peers``'s budget report: ``{video: frame tokens the LM reads}`` for ``variant``
    (``videos``: uint8 frames — DiffFP needs pixels — or anything with a length for the others).

    >>> tokens_kept(_demo_variant(stc_stride=4), {"a": torch.zeros(10, 2, 2, 3, dtype=torch.uint8)})
    {'a': 3}
    """
    keep = keep_masks(variant, videos) or {}
    return {v: n_tokens(variant, len(f), keep.get(v)) for v, f in videos.items()}


def budget_summary(variant, videos: Mapping[str, torch.Tensor]) -> dict:
    """Seconds vs tokens over ``videos``: ``{videos, seconds, tokens, ratio}`` (totals; ratio = tokens / seconds)."""
    kept = tokens_kept(variant, videos)
    secs = sum(len(f) for f in videos.values())
    toks = sum(kept.values())
    return {"videos": len(kept), "seconds": secs, "tokens": toks, "ratio": toks / secs if secs else math.nan}


__all__ = ["frame_diffs", "diff_keep_mask", "map_from_keep", "merge_adjacent", "STCPool", "stc_map", "DiffFP", "STC",
           "MovieChat", "mechanism", "for_variant", "needs_pixels", "token_map", "n_tokens", "keep_masks", "tokens_kept",
           "budget_summary"]
