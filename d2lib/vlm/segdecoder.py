"""The ``<seg>`` mask decoder: an LLM hidden state → one mask per frame (VideoGLaMM / LISA style).

Taught in lesson 09, pixel grounding. D²VLM answers *when* with ``<evi>`` tokens; a ``<seg>`` token
answers *where*: the LLM's hidden state at ``<seg>`` is mapped by an L→V adapter to the query of a
small mask decoder that looks at every frame's patch features and returns per-frame mask logits.

Two streams of the same vision tower feed the model (VideoGLaMM's dual encoder, with one tower):

- the **temporal stream**, one token per frame (``D2VLM.frame_tokens``: the patches attention-pooled,
  mixed over time, projected to the LM) — what the LLM reads;
- the **spatial stream**, the tower's per-patch features before pooling (:func:`patch_features`,
  ``(B, T, P, S·Dv)`` on an ``h × w`` patch grid) — what the mask decoder reads.

The pieces (shapes: N = ``<seg>`` tokens, T = frames, P = h·w patches, C = ``width``, H = W = ``out_size``):

1. :class:`LtoVAdapter` — LISA's ``text_hidden_fcs``: Linear → ReLU → Linear, LLM width → C.
2. :class:`MaskDecoder` — the query, **shared over frames** (copied to each frame), cross-attends over
   that frame's patches (+ a fixed 2-D sine-cosine position embedding) in ``layers`` pre-norm layers;
   low-res logits ``(N, T, h, w)`` = per-patch mask embedding · query / √C; then an upsampling head
   (transposed convs on ``mask embedding ⊙ query``, plus a small conv on the frame's pixels — the early
   high-resolution features HQ-SAM fuses) refines their bilinear upsampling → logits ``(N, T, H, W)``.
   The query-free work (patch embeddings, pixel conv) runs once per video however many ``<seg>`` read it.
   Why shared and not a learned frame-time embedding: what the ``<seg>`` names (the object) does not
   change with time, only where it is; each frame answers "where" from its own patches. A time
   embedding would tie the query to absolute frame index (videos are 16–64 s, late indices are
   seen rarely), and *when* is already the job of the ``<evi>`` spans — frames outside the grounded
   span are left out of the loss by the per-frame validity mask instead.
3. Losses as pure functions: :func:`mask_bce`, :func:`mask_dice` (soft Dice per frame),
   :func:`mask_loss` = ``bce_weight·BCE + dice_weight·Dice`` (LISA's weights 2.0 / 0.5), each
   averaged over the valid frames (``valid (..., T)`` bool; None: all).
4. :func:`decode_masks`: logits → bool masks (``logit > threshold``, i.e. p > 0.5 at 0).

Dice's ``eps`` is additive smoothing in pixels: ``1 − (2Σpy + eps) / (Σp + Σy + eps)``. LISA's
``scale=1000, eps=1e-6`` is the same formula with eps = 1e-3 px; with eps = 1 (the default) a frame
whose object is absent (empty target) costs ``Σp / (Σp + 1)``, ≈ 0 once the prediction is empty, instead
of ≈ 1 for any prediction that is not exactly zero.

>>> import torch
>>> cfg = SegDecoderConfig(out_size=32)
>>> dec, ad = MaskDecoder(cfg, vision_dim=64, grid=(4, 4)), LtoVAdapter(128, cfg.width)
>>> out = dec(ad(torch.randn(2, 128)), torch.randn(2, 5, 16, 64), torch.zeros(2, 5, 32, 32, 3, dtype=torch.uint8))
>>> tuple(out.low_res.shape), tuple(out.logits.shape)
((2, 5, 4, 4), (2, 5, 32, 32))
>>> y = torch.zeros(1, 2, 4, 4); y[0, :, 1:3, 1:3] = 1
>>> round(mask_dice(20 * (2 * y - 1), y).item(), 4), round(mask_dice(-20 * (2 * y - 1), y).item(), 4)
(0.0, 0.9412)
>>> decode_masks(torch.tensor([[-1.0, 0.5]])).tolist()
[[False, True]]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from d2lib.core.config import check

__all__ = ["SegDecoderConfig", "patch_grid", "patch_dim", "patch_features", "LtoVAdapter", "MaskDecoder", "MaskOutput",
           "sincos_2d", "mask_bce", "mask_dice", "mask_loss", "decode_masks"]


# --- params ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegDecoderConfig:
    """The mask decoder's knobs (tiny by default: 24 k parameters for the 64-wide tiny tower, plus
    21 k in the adapter at LLM width 128).

    ``width`` C of the query and patch embeddings (a multiple of 4: the 2-D sine-cosine embedding);
    ``layers`` cross-attention layers with ``heads`` heads and an MLP of ``mlp_ratio·C``;
    ``up_channels`` of the transposed-conv upsampling head; ``skip_channels`` of the conv on the frame's
    pixels (0: none, the head sees the patch features only); ``out_size`` the mask side (=
    ``prepare.decode_size``); loss weights and Dice smoothing (module docstring)."""

    width: int = 32
    layers: int = 2
    heads: int = 2
    mlp_ratio: int = 2
    up_channels: int = 8
    skip_channels: int = 8
    out_size: int = 32
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    dice_eps: float = 1.0

    def __post_init__(self):
        for k in ("width", "layers", "heads", "mlp_ratio", "up_channels", "out_size"):
            check(getattr(self, k) > 0, f"segdecoder.{k}", f"must be > 0, got {getattr(self, k)}")
        check(self.width % 4 == 0, "segdecoder.width", f"must be a multiple of 4 (2-D sin-cos), got {self.width}")
        check(self.width % self.heads == 0, "segdecoder.heads", f"must divide width {self.width}, got {self.heads}")
        check(self.skip_channels >= 0, "segdecoder.skip_channels", f"must be >= 0 (0: off), got {self.skip_channels}")
        check(self.bce_weight >= 0 and self.dice_weight >= 0, "segdecoder.bce_weight",
              f"loss weights must be >= 0, got {self.bce_weight}, {self.dice_weight}")
        check(self.bce_weight + self.dice_weight > 0, "segdecoder.dice_weight", "bce_weight + dice_weight must be > 0")
        check(self.dice_eps > 0, "segdecoder.dice_eps", f"must be > 0, got {self.dice_eps}")


# --- the spatial stream ---------------------------------------------------------------------
def patch_grid(model) -> tuple[int, int]:
    """(h, w) patch grid of a D²VLM's SigLIP tower: image_size // patch_size on each side
    (tiny preset: 32 // 8 = 4 × 4; SigLIP-base: 224 // 16 = 14 × 14). SigLIP has no CLS token."""
    c = model.tower.config
    return c.image_size // c.patch_size, c.image_size // c.patch_size


def patch_dim(model) -> int:
    """Width of :func:`patch_features`: streams × tower width (tiny: 1 × 64; second_pass: 2 × Dv)."""
    return model.n_streams * model.tower.config.hidden_size


def patch_features(model, frames: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                   tower_feats: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """The spatial stream of a :class:`d2lib.vlm.model.D2VLM`: per-frame per-patch features and the grid.

    ``frames`` (B, T, H, W, 3) uint8 go through ``model.encode_tower`` (same pixels, motion channels
    and tower as the frame tokens the LLM reads); or pass its cached output ``tower_feats``
    (B, T, S, P, Dv). Returns ``(feats, (h, w))`` with feats (B, T, P, S·Dv) — the S streams (RGB and
    the motion pass of ``second_pass``) side by side per patch; ``feats.flatten(0, 1)`` is the
    (B·T, P, D) per-frame view. A single video (T, ...) gives (T, P, S·Dv). Wrap in ``torch.no_grad()``
    for a frozen tower. ValueError when P is not the tower's h·w grid.
    """
    if tower_feats is None:
        tower_feats = model.encode_tower(frames, frame_mask)  # (B, T, S, P, Dv) or (T, S, P, Dv)
    h, w = patch_grid(model)
    if tower_feats.shape[-2] != h * w:
        raise ValueError(f"tower features have {tower_feats.shape[-2]} patches, the {h}x{w} grid needs {h * w}")
    x = tower_feats.transpose(-3, -2)  # (..., T, P, S, Dv)
    return x.flatten(-2), (h, w)  # (..., T, P, S·Dv)


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (P = h·w, dim) in row-major patch order: the first
    half of the channels encodes the row, the second the column (dim % 4 == 0).

    >>> pe = sincos_2d(4, 4, 8); tuple(pe.shape), pe[0, :4].tolist()
    ((16, 8), [0.0, 0.0, 1.0, 1.0])
    """
    q = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float32, device=device) / q))  # (q,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    ay, ax = ys.reshape(-1, 1) * freq, xs.reshape(-1, 1) * freq  # (P, q) each
    return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)  # (P, dim)


# --- modules --------------------------------------------------------------------------------
class LtoVAdapter(nn.Module):
    """LLM hidden state at ``<seg>`` (N, H_llm) → decoder query (N, C): Linear → ReLU → Linear
    (LISA's ``text_hidden_fcs``, hidden width = the LLM's)."""

    def __init__(self, llm_hidden: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(llm_hidden, llm_hidden), nn.ReLU(), nn.Linear(llm_hidden, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class CrossLayer(nn.Module):
    """One decoder layer for M queries over their frames' patches: q (M, 1, C) attends over keys
    k (M, P, C) (patches + position) with values v (M, P, C); then an MLP. Pre-norm, residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kn = self.norm_kv(k)
        q = q + self.attn(self.norm_q(q), kn, self.norm_kv(v), need_weights=False)[0]  # (M, 1, C)
        return q + self.mlp(self.norm_mlp(q))


class MaskOutput(NamedTuple):
    """What :meth:`MaskDecoder.forward` returns."""

    logits: torch.Tensor  # (N, T, H, W) at out_size
    low_res: torch.Tensor  # (N, T, h, w) on the patch grid


class MaskDecoder(nn.Module):
    """Query (N, C) + patch features (N, T, P, Dv) → :class:`MaskOutput`.

    ``vision_dim``: the width of the patch features (:func:`patch_dim`); ``grid`` (h, w) their patch
    grid (:func:`patch_grid`), P = h·w. ``frames`` (N, T, H, W, 3)
    uint8 (or float in [0, 1]) feed the pixel skip when ``cfg.skip_channels > 0`` (required then).
    """

    def __init__(self, cfg: SegDecoderConfig, vision_dim: int, grid: tuple[int, int]):
        super().__init__()
        c = cfg.width
        self.cfg, self.grid = cfg, (int(grid[0]), int(grid[1]))
        self.proj = nn.Sequential(nn.LayerNorm(vision_dim), nn.Linear(vision_dim, c))  # patches → C
        self.layers = nn.ModuleList(CrossLayer(c, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.norm_q = nn.LayerNorm(c)
        self.mask_embed = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))
        u, n_up = cfg.up_channels, max(0, int(math.log2(cfg.out_size / max(grid))))  # ×2 stages that fit
        self.up = nn.Sequential(nn.Conv2d(c, u, 1), nn.ReLU(),  # ReLU in the conv path: cheap on CPU
                                *[m for _ in range(n_up) for m in (nn.ConvTranspose2d(u, u, 2, stride=2), nn.ReLU())])
        s = cfg.skip_channels
        self.skip = (nn.Sequential(nn.Conv2d(3, s, 3, padding=1), nn.ReLU(), nn.Conv2d(s, s, 3, padding=1), nn.ReLU())
                     if s else None)
        self.head = nn.Sequential(nn.Conv2d(u + s, u, 1), nn.ReLU(), nn.Conv2d(u, 1, 3, padding=1))

    def _upsample(self, z: torch.Tensor) -> torch.Tensor:
        """(M, C, h, w) → (M, u, H, W): 1×1 conv, the ×2 stages, then bilinear to exactly out_size
        (a no-op when out_size / h is a power of 2, e.g. 32 / 4)."""
        x = self.up(z)
        size = self.cfg.out_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (M, H, W, 3) uint8 / [0, 1] float → (M, skip_channels, out, out)."""
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        x = x.permute(0, 3, 1, 2) - 0.5  # (M, 3, H, W)
        size = self.cfg.out_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.skip(x.to(self.proj[1].weight.dtype))

    def forward(self, query: torch.Tensor, patches: torch.Tensor, frames: torch.Tensor | None = None,
                video_index: torch.Tensor | None = None) -> MaskOutput:
        """``query`` (N, C); ``patches`` (N, T, P, Dv) and ``frames`` (N, T, H, W, 3) — or, with
        ``video_index`` (N,) long, one per distinct video (U, T, ...): query n reads video
        ``video_index[n]`` (the query-free work, patch embeddings and pixel skip, runs once per video)."""
        U, T, P, _ = patches.shape
        h, w = self.grid
        if P != h * w:
            raise ValueError(f"{P} patches do not fill the {h}x{w} grid")
        if self.skip is not None and frames is None:
            raise ValueError("skip_channels > 0: pass the frames (N, T, H, W, 3)")
        idx = torch.arange(U, device=patches.device) if video_index is None else video_index  # (N,)
        N, c = len(idx), self.cfg.width
        x = self.proj(patches)  # (U, T, P, C)
        k = x + sincos_2d(h, w, c, x.device).to(x.dtype)  # keys carry the position
        e = self.mask_embed(k)[idx].flatten(0, 1)  # (M, P, C) per-patch mask embedding, M = N·T
        x, k = x[idx].flatten(0, 1), k[idx].flatten(0, 1)  # (M, P, C)
        q = query.repeat_interleave(T, dim=0)[:, None]  # (M, 1, C): shared over the frames
        for layer in self.layers:
            q = layer(q, k, x)  # (M, 1, C): frame t's query after reading frame t
        q = self.norm_q(q[:, 0])  # (M, C)
        low = torch.einsum("mpc,mc->mp", e, q).reshape(-1, 1, h, w) / math.sqrt(c)  # (M, 1, h, w)
        z = (e * q[:, None]).transpose(1, 2).reshape(-1, c, h, w)  # (M, C, h, w): sums to √C·low
        y = self._upsample(z)  # (M, u, H, W)
        if self.skip is not None:
            pix = self._pixels(frames.flatten(0, 1)).unflatten(0, (U, T))[idx].flatten(0, 1)  # (M, s, H, W)
            y = torch.cat([y, pix], dim=1)  # (M, u + s, H, W)
        base = F.interpolate(low, size=y.shape[-2:], mode="bilinear", align_corners=False)
        hi = base + self.head(y)  # (M, 1, H, W): the coarse logit, refined
        return MaskOutput(hi.reshape(N, T, *hi.shape[-2:]), low.reshape(N, T, h, w))


# --- losses ---------------------------------------------------------------------------------
def _frame_mean(per_frame: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-frame values (..., T) over the valid frames (0, still in the graph, when none)."""
    if valid is None:
        return per_frame.mean()
    v = valid.to(per_frame.dtype).expand_as(per_frame)
    return (per_frame * v).sum() / v.sum().clamp(min=1.0)


def _check(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> None:
    if logits.shape != target.shape or logits.dim() < 3:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         "must be the same (..., T, H, W)")
    if valid is not None and tuple(valid.shape) != tuple(logits.shape[:-2]):
        raise ValueError(f"valid {tuple(valid.shape)} must be the frames {tuple(logits.shape[:-2])}")


def mask_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel BCE-with-logits, averaged over each frame's pixels then over the valid frames.
    ``logits``, ``target`` (..., T, H, W) (target 0/1 or soft); ``valid`` (..., T) bool. Scalar.

    >>> round(mask_bce(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)).item(), 6), round(math.log(2), 6)
    (0.693147, 0.693147)
    """
    _check(logits, target, valid)
    per = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return _frame_mean(per.mean((-2, -1)), valid)  # (..., T) → scalar


def mask_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
              eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per frame, ``1 − (2Σσ(x)y + eps) / (Σσ(x) + Σy + eps)`` over the frame's pixels,
    averaged over the valid frames. Shapes as :func:`mask_bce`. ~0 for confident correct logits,
    → 1 for inverted ones; ``eps`` (pixels) smooths empty frames (module docstring)."""
    _check(logits, target, valid)
    p, y = logits.sigmoid().flatten(-2), target.to(logits.dtype).flatten(-2)  # (..., T, H·W)
    dice = 1.0 - (2.0 * (p * y).sum(-1) + eps) / (p.sum(-1) + y.sum(-1) + eps)  # (..., T)
    return _frame_mean(dice, valid)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
              bce_weight: float = 2.0, dice_weight: float = 0.5, eps: float = 1.0) -> torch.Tensor:
    """The mask objective: ``bce_weight·mask_bce + dice_weight·mask_dice`` (LISA / VideoGLaMM: 2.0, 0.5)."""
    return bce_weight * mask_bce(logits, target, valid) + dice_weight * mask_dice(logits, target, valid, eps)


def decode_masks(logits: torch.Tensor, threshold: float = 0.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (..., H, W) → bool masks ``logits > threshold`` (0: probability > 0.5); frames with
    ``valid`` (...) false are emptied (outside the grounded span)."""
    m = logits > threshold
    return m if valid is None else m & valid[..., None, None].to(torch.bool)
