"""The D²VLM model: frames → frame tokens → Phi-3 LM with evidence tokens, heads and injection.

Taught in lesson ``02_model``. The pieces, in the order data flows through them:

1. ``encode_tower``: uint8 frames (B, T, H, W, 3) → SigLIP patch tokens (B, T, S, P, Dv). The tiny
   tower is trained from scratch and sees motion: each frame is fed with its RGB and
   ``diff_scale·(frame_t − frame_{t−1})`` as 6 channels (``motion="channels"``). A pretrained
   3-channel tower instead runs a second pass on the difference image (``motion="second_pass"``,
   S = 2 streams). The tower can be frozen and its outputs cached (``tower_feats=``).
2. ``frame_tokens``: a learned query per stream attention-pools the P patches → a residual temporal
   Conv1d mixes neighbouring frames → an MLP projects to the LM width: one token per frame.
3. The frame tokens replace the ``<video>`` placeholders in the LM input. An explicit 4-D additive
   mask lets frames attend to each other bidirectionally; text stays causal; padding is invisible.
4. Heads on ``hidden_states[-2]``: f_t = frm_head(frame t), e_k = evi_head(position predicting the
   k-th ``<evi>``); s_kt = e_k·f_t/√d. Span head: sigmoid + BCE to soft targets, decoded with
   ``decode_span``. Frame head (E.T. Chat): softmax over frames, CE to one frame, argmax.
5. Evidence injection: the input embedding of each ``<evi>`` += mean over its span of the frame
   tokens' hidden states at ``injection_layer``. Training: GT spans, the frame states come from a
   partial pass over the prompt (gradients flow). Generation: the span decoded at that step.
6. ``generate``: greedy decoding with the KV cache, heads and injection inside the loop.

Variants (the ablation rows) are orthogonal switches — see :class:`Variant`.

Mechanisms: where other systems plug in. Two things D²VLM does one way are hook points, each an object
the variant's switches resolve to (:mod:`d2lib.vlm.tokens`):

- a **time representation** (:class:`~d2lib.vlm.tokens.TimeRep`, :func:`~d2lib.vlm.tokens.time_rep`):
  how a span is written as text and read back, the question's wording, text before each frame token,
  the frames as the tower sees them, an optional per-frame embedding module;
- a **token budget** (:class:`~d2lib.vlm.tokens.TokenBudget`, :func:`~d2lib.vlm.tokens.token_budget`):
  how many frame tokens a video of T seconds gets, which one covers each second, per-video keep masks
  from the pixels, and the frame tokens that fill the slots (with an optional pooling module).

D²VLM's own (seconds as text, one token per second) live in the core; a variant that switches a peer's
mechanism on resolves, by a ``"module:name"`` path imported only then, to an implementation in
``d2lib.peers`` (lesson ``08_peers``) — a D²VLM row never imports it. A mechanism's module is held by the
model under the mechanism's ``module_name`` (created when the variant switches it on, see
:attr:`D2VLM.variant`). A token budget or separators move the frame tokens (:class:`FrameLayout`),
while heads, targets and decoding stay per second.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from d2lib.core import config as _config
from d2lib.core.config import check
from d2lib.core.losses import consistency_l1, consistency_scores, frame_ce, grounding_bce, lm_loss
from d2lib.core.spans import decode_span, soft_targets
from d2lib.vlm.tokens import ROLE_END, ROLE_START, render_response, special_ids, time_rep, token_budget


# --- params ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One ablation row as orthogonal switches (add new mechanisms as new switches).

    - ``prefix``: grounding stage ``<evi>×K </evi>`` before the answer (factorized generation);
    - ``answer_evidence``: the answer refers to events with ``<evi>`` ("evi") or "s - e" text, or not
      at all ("none": captions/options only — the grounding-free response mode of stage ``align``);
    - ``head``: "span" (D²VLM: sigmoid per frame, BCE, span decoding), "frame" (E.T. Chat: softmax
      over frames, one frame per token, so an event is a start and an end token), "none" (no heads,
      no ``<evi>``: times are text tokens);
    - ``injection``: add the span's frame states to each ``<evi>`` input embedding;
    - ``consistency``: tie the grounding-stage and answer-stage ``<evi>`` of the same event, in the form
      ``consistency_form``: "l1" the paper's |e_ground − e_answer| on the raw features (both sides
      trained), "l1_detached" |sg(e_ground) − e_answer| (only the answer stage follows the grounding
      stage), "scores" |p_ground − p_answer| on the per-frame probabilities
      (:func:`d2lib.core.losses.consistency_scores`); ``consistency_start``: the fraction of the SFT steps
      trained without it (0: from the first step, as the paper; e.g. 0.5: switched on half-way, once the
      heads ground — :func:`d2lib.stages.sft.consistency_hook`);
    - ``prompt``: "short" (default) drops the question's answer-format sentence
      (:func:`d2lib.vlm.tokens.short_question`) — fewer tokens between the question and the ``<evi>``
      read-out, the format is learned from the targets (measured: ~40% fewer tokens per packed sequence,
      the same val R@1@0.5); "full" asks the record's question as written.

    The peers' mechanisms (lesson ``08_peers``; all off by default, and with all off nothing of
    ``d2lib.peers`` is used — :func:`d2lib.vlm.tokens.time_rep` / :func:`~d2lib.vlm.tokens.token_budget`
    resolve the switches below to a mechanism). Time representation (:mod:`d2lib.peers.timerep`):
    ``time_format`` — how times are written as text where times are text (``answer_evidence: text``
    or ``head: none``): "seconds", "relative" (VTimeLLM 00–99),
    "time_tokens" (VTG-LLM ``<t1><t2><t.><t0>``), "frame_number" (NumPro "from x to y");
    ``frame_numbers`` (NumPro: numbers drawn on the frames + one prompt line); ``time_separators``
    (TimeMarker ``second{t}`` before each frame token); ``time_embedding`` (TimeChat: a timestamp
    embedding added to each frame token). Token budget (:mod:`d2lib.peers.tokenbudget`, one per row):
    ``frame_select: diff`` with ``diff_threshold`` (VideoLLaMA3 DiffFP), ``merge_budget`` > 0
    (MovieChat: frame tokens kept), ``stc_stride`` > 1 (VideoLLaMA2 STC).
    """

    prefix: bool = True
    answer_evidence: Literal["evi", "text", "none"] = "evi"
    prompt: Literal["full", "short"] = "short"
    consistency_form: Literal["l1", "l1_detached", "scores"] = "l1"
    consistency_start: float = 0.0
    head: Literal["span", "frame", "none"] = "span"
    injection: bool = True
    consistency: bool = True
    time_format: Literal["seconds", "relative", "time_tokens", "frame_number"] = "seconds"
    frame_numbers: bool = False
    time_separators: bool = False
    time_embedding: bool = False
    frame_select: Literal["all", "diff"] = "all"
    diff_threshold: float = 0.02
    merge_budget: int = 0
    stc_stride: int = 1

    def __post_init__(self):
        none = self.head == "none"
        check(not (none and self.prefix), "variants.*.prefix", "a grounding prefix needs head span|frame")
        check(not (none and self.answer_evidence == "evi"), "variants.*.answer_evidence",
              "answer_evidence 'evi' needs head span|frame")
        check(not (none and self.injection), "variants.*.injection", "injection needs head span|frame")
        check(not self.consistency or (self.prefix and self.answer_evidence == "evi"),
              "variants.*.consistency", "consistency needs prefix: true and answer_evidence: evi")
        check(self.time_format == "seconds" or self.answer_evidence == "text" or none,
              "variants.*.time_format", "a time format other than seconds needs times as text "
              "(answer_evidence: text or head: none)")
        check(0.0 <= self.diff_threshold <= 1.0, "variants.*.diff_threshold",
              f"mean |Δpixel| threshold must be in [0, 1], got {self.diff_threshold}")
        check(self.merge_budget >= 0, "variants.*.merge_budget", f"must be >= 0 (0 = off), got {self.merge_budget}")
        check(self.stc_stride >= 1, "variants.*.stc_stride", f"must be >= 1 (1 = off), got {self.stc_stride}")
        check(0.0 <= self.consistency_start < 1.0, "variants.*.consistency_start",
              f"must be in [0, 1), got {self.consistency_start}")
        n_budget = (self.frame_select == "diff") + (self.merge_budget > 0) + (self.stc_stride > 1)
        check(n_budget <= 1, "variants.*.merge_budget",
              "one token-budget mechanism per row (frame_select: diff, merge_budget or stc_stride)")
        check(not (self.time_separators and self.merge_budget > 0), "variants.*.time_separators",
              "separators need a token layout fixed before the model runs; merge_budget decides it in the model")


@dataclass(frozen=True)
class VariantsConfig:
    """params section ``variants``: the rows of the ablation (``+`` in a name is written ``_``) —
    ``consistency_from_start`` is ``full`` with the paper's consistency L1 on from the first step — plus any
    user-defined rows under ``extra``. Look one up with :meth:`get`."""

    coupled: Variant = Variant(prefix=False, answer_evidence="evi", consistency=False)
    factorized: Variant = Variant(prefix=True, answer_evidence="text", consistency=False)
    factorized_interleaved: Variant = Variant(prefix=True, answer_evidence="evi", consistency=False)
    full: Variant = Variant(consistency_start=0.5)
    consistency_from_start: Variant = Variant()
    no_visual_injection: Variant = Variant(injection=False, consistency_start=0.5)
    frame_level: Variant = Variant(head="frame", consistency_start=0.5)
    text_timestamps: Variant = Variant(prefix=False, answer_evidence="text", head="none",
                                       injection=False, consistency=False)
    extra: dict[str, Variant] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name != "extra"] + list(self.extra)

    def get(self, name: str) -> Variant:
        """A variant by name; ``factorized+interleaved`` and ``factorized_interleaved`` both work."""
        key = name.replace("+", "_").replace("-", "_")
        if key in self.extra or name in self.extra:
            return self.extra.get(name) or self.extra[key]
        if key not in self.names():
            raise KeyError(f"unknown variant {name!r} (known: {', '.join(self.names())})")
        return getattr(self, key)


@dataclass(frozen=True)
class ModelConfig:
    """params section ``model``. Sizes marked *tiny* are used by the tiny preset only; the
    phi3-mini preset reads its sizes from ``lm_path``/``vision_path``. ``lm_overrides`` /
    ``vision_overrides`` patch either preset's transformers config (tests shrink phi3-mini)."""

    preset: Literal["tiny", "phi3-mini"] = "tiny"
    # tiny: a shrunken Phi-3 LM and a shrunken SigLIP tower, both trained from scratch
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_size: int = 512
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_ffn: int = 256
    # phi3-mini: pretrained weights (local dir or hub id); random_init builds them untrained
    lm_path: str = "microsoft/Phi-3-mini-4k-instruct"
    vision_path: str = "google/siglip-base-patch16-224"
    random_init: bool = False
    lm_overrides: dict[str, Any] = field(default_factory=dict)
    vision_overrides: dict[str, Any] = field(default_factory=dict)
    # frames
    motion: Literal["auto", "channels", "second_pass", "none"] = "auto"
    diff_scale: float = 4.0
    temporal_kernel: int = 3
    # frame-token scale: "embed" ends the projector with a LayerNorm whose gain starts at the text
    # embeddings' std (frame and text tokens enter the LM at the same scale); "none": the raw MLP output.
    # Measured (tiny, at init): with "embed" the bidirectional frame attention averages the frame states
    # (frame-to-frame variation at hidden_states[-2] 0.12 vs 0.38 with "none"); no grounding gain seen.
    frame_norm: Literal["embed", "none"] = "none"
    pool_query_std: float | None = None  # init std of AttnPool's learned query (logits = k·q/√d); None: dim^-0.5
    pool_queries: int = 1  # learned pooling queries per stream, concatenated into one frame token
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_frames: int = 64
    # the D²VLM mechanism
    injection_layer: int | None = None  # None: round(L/5), paper 6 of 32
    grounding_alpha: float = 2.0
    decode_ratio: float = 0.6
    grounding_weight: float = 10.0
    consistency_weight: float = 10.0
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    def __post_init__(self):
        for k in ("hidden_size", "num_layers", "num_heads", "ffn_size", "image_size", "patch_size",
                  "vision_hidden", "vision_layers", "vision_heads", "vision_ffn", "max_frames"):
            check(getattr(self, k) > 0, f"model.{k}", f"must be > 0, got {getattr(self, k)}")
        check(self.num_layers >= 2, "model.num_layers", "heads read hidden_states[-2]: need >= 2 layers")
        check(self.hidden_size % self.num_heads == 0, "model.num_heads", "must divide hidden_size")
        check(self.vision_hidden % self.vision_heads == 0, "model.vision_heads", "must divide vision_hidden")
        check(self.image_size % self.patch_size == 0, "model.patch_size", "must divide image_size")
        check(self.injection_layer is None or self.injection_layer >= 1, "model.injection_layer", "must be >= 1")
        check(self.grounding_alpha > 1.0, "model.grounding_alpha", "must be > 1")
        check(0.0 < self.decode_ratio <= 1.0, "model.decode_ratio", "must be in (0, 1]")
        check(self.grounding_weight >= 0 and self.consistency_weight >= 0, "model.grounding_weight",
              "loss weights must be >= 0")
        check(self.pool_query_std is None or self.pool_query_std > 0, "model.pool_query_std", "must be > 0 or null")
        check(self.pool_queries >= 1, "model.pool_queries", f"must be >= 1, got {self.pool_queries}")
        check(self.temporal_kernel >= 0 and self.temporal_kernel % 2 == 1 or self.temporal_kernel == 0,
              "model.temporal_kernel", "must be 0 (off) or odd")
        check(not (self.preset == "phi3-mini" and self.motion == "channels" and not self.random_init),
              "model.motion", "a pretrained 3-channel tower cannot take 6 channels; use second_pass")

    @property
    def motion_mode(self) -> str:
        if self.motion != "auto":
            return self.motion
        return "channels" if self.preset == "tiny" else "second_pass"


# --- building blocks ------------------------------------------------------------------------
def mlp_head(width: int, hidden: int) -> nn.Sequential:
    """D²VLM head: LayerNorm → Linear → GELU → Linear (width → hidden → width)."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class AttnPool(nn.Module):
    """Q learned queries per stream attend over patch tokens: (N, S, P, D) → (N, S·Q, D). With Q > 1
    a frame token can describe several objects (each query free to look at a different place)."""

    def __init__(self, dim: int, n_streams: int, query_std: float | None = None, n_queries: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.n_queries = n_queries
        std = dim ** -0.5 if query_std is None else query_std
        self.query = nn.Parameter(torch.randn(n_streams * n_queries, dim) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_queries > 1:
            x = x.repeat_interleave(self.n_queries, dim=1)  # (N, S·Q, P, D): each stream once per query
        k = self.key(self.norm(x))  # (N, S, P, D)
        w = torch.einsum("nspd,sd->nsp", k, self.query) / math.sqrt(x.shape[-1])
        return torch.einsum("nsp,nspd->nsd", w.softmax(-1), x)


class TemporalMix(nn.Module):
    """Residual Conv1d over time, x + conv(x): (B, T, C) → (B, T, C). Padded frames are zeroed
    first so a video's tokens do not depend on how much padding its batch has."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2) if kernel else None

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        x = x * frame_mask[..., None].to(x.dtype)
        if self.conv is None:
            return x
        return x + self.conv(x.transpose(1, 2)).transpose(1, 2)


def attention_mask_4d(valid: torch.Tensor, is_frame: torch.Tensor, n_query: int, dtype,
                      segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Additive mask (B, 1, n_query, Lk) for the last ``n_query`` of Lk positions.

    Key j is visible to query i iff it is valid (not padding) and ``j <= i`` (causal) or both are
    frame tokens (bidirectional video block); every position sees itself (no empty rows).
    ``valid``, ``is_frame``: (B, Lk) bool. ``segment_ids`` (B, Lk) long, for packed sequences
    (:func:`d2lib.vlm.tokens.pack_examples`): a key of segment s > 0 is seen only by its own segment;
    segment 0 (the shared prompt and frames) by every segment — the block mask of packing.
    """
    B, Lk = valid.shape
    qpos = torch.arange(Lk - n_query, Lk, device=valid.device)  # (Q,)
    kpos = torch.arange(Lk, device=valid.device)  # (Lk,)
    causal = kpos[None, :] <= qpos[:, None]  # (Q, Lk)
    bidir = is_frame[:, -n_query:, None] & is_frame[:, None, :]  # (B, Q, Lk)
    causal = causal[None]
    if segment_ids is not None:  # (B, Q, Lk): the shared prefix or the query's own segment
        sk, sq = segment_ids[:, None, :], segment_ids[:, -n_query:, None]
        causal = causal & ((sk == 0) | (sk == sq))
    allowed = (causal | bidir) & valid[:, None, :]
    allowed |= (kpos[None, :] == qpos[:, None])[None]
    mask = torch.zeros(B, 1, n_query, Lk, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def default_position_ids(valid: torch.Tensor) -> torch.Tensor:
    """RoPE positions that skip left padding: (B, L) long."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


position_ids = default_position_ids  # the name other modules import


def frame_positions(frame_start: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B, T) sequence position of every frame slot (frame t of row b at frame_start[b] + t)."""
    return frame_start[:, None] + torch.arange(n_frames, device=frame_start.device)[None]


@dataclass
class FrameLayout:
    """Where the frame tokens sit and which one covers each second (lesson ``08_peers``).

    ``pos`` (B, K) sequence position of each frame-token slot, ``mask`` (B, K) bool valid slots,
    ``tof`` (B, T) long the slot covering second t. The plain layout (one token per second, back to
    back from ``frame_start``) is ``pos = frame_start + t``, ``mask = frame_mask``, ``tof = t``.
    """

    pos: torch.Tensor
    mask: torch.Tensor
    tof: torch.Tensor

    @classmethod
    def plain(cls, frame_start: torch.Tensor, frame_mask: torch.Tensor) -> "FrameLayout":
        T = frame_mask.shape[1]
        tof = torch.arange(T, device=frame_mask.device)[None].expand(frame_mask.shape[0], -1)
        return cls(frame_positions(frame_start, T), frame_mask, tof)

    def second_positions(self) -> torch.Tensor:
        """(B, T) position of the token each second reads."""
        return self.pos.gather(1, self.tof)

    def end(self) -> int:
        """One past the last frame-token position of the batch (the prompt part frames need)."""
        return int(self.pos.masked_fill(~self.mask, 0).max()) + 1


def span_mean(states: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` (N, T, H) over the inclusive frame range [first, last] (N,) → (N, H)."""
    t = torch.arange(states.shape[1], device=states.device)
    w = ((t[None] >= first[:, None]) & (t[None] <= last[:, None])).to(states.dtype)  # (N, T)
    return torch.einsum("nt,nth->nh", w / w.sum(1, keepdim=True).clamp(min=1), states)


@dataclass
class D2Output:
    """What :meth:`D2VLM.forward` returns. N = ``<evi>`` tokens in the batch, T = max frames."""

    loss: torch.Tensor  # lm + grounding_weight·grounding + consistency_weight·consistency
    lm_loss: torch.Tensor
    grounding_loss: torch.Tensor
    consistency_loss: torch.Tensor
    logits: torch.Tensor  # (B, L, V)
    scores: torch.Tensor  # (N, T) similarity logits s_kt
    score_mask: torch.Tensor  # (N, T) bool, false on padded frames
    evi_feats: torch.Tensor  # (N, D) e_k
    frame_feats: torch.Tensor  # (B, T, D) f_t


@dataclass
class Generation:
    """One generated response. K = ``<evi>`` tokens generated, T = the video's frames."""

    ids: list[int] = field(default_factory=list)  # generated ids (up to and including <|end|>)
    evi_frames: list[tuple[int, int]] = field(default_factory=list)  # decoded frames per <evi>
    values: list = field(default_factory=list)  # per <evi>: [s, e] s (span head) or t s (frame head)
    probs: torch.Tensor | None = None  # (K, T) sigmoid (span) / softmax (frame) at each <evi>
    text: str | None = None  # rendered: each <evi> replaced by its value (needs a tokenizer)


# --- the model ------------------------------------------------------------------------------

@contextlib.contextmanager
def no_progress_bars():
    """transformers' progress bars ("Loading weights", "Writing model shards") off inside the block, restored
    after: an executed lesson must not hold a bar, whose items-per-second text differs from run to run."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


class D2VLM(nn.Module):
    """Vision tower + frame pooling/projector + Phi-3 LM + D²VLM heads (lesson 02_model)."""

    def __init__(self, cfg: ModelConfig, variant: Variant, lm: nn.Module, tower: nn.Module, ids: dict):
        super().__init__()
        self.cfg, self.ids = cfg, dict(ids)
        self.lm, self.tower = lm, tower
        self.n_streams = 2 if cfg.motion_mode == "second_pass" else 1
        dv, h = tower.config.hidden_size, lm.config.hidden_size
        self.pool = AttnPool(dv, self.n_streams, cfg.pool_query_std, cfg.pool_queries)
        width = self.n_streams * cfg.pool_queries * dv  # pooled features per frame
        self.temporal = TemporalMix(width, cfg.temporal_kernel)
        proj = [nn.Linear(width, h), nn.GELU(), nn.Linear(h, h)]
        if cfg.frame_norm == "embed":  # frame tokens at the text embeddings' scale
            norm = nn.LayerNorm(h)
            with torch.no_grad():
                norm.weight.fill_(float(lm.get_input_embeddings().weight.float().std()))
            proj.append(norm)
        self.projector = nn.Sequential(*proj)
        self.frm_head = mlp_head(h, max(h // 2, 1))
        self.evi_head = mlp_head(h, max(h // 2, 1))
        n_layers = lm.config.num_hidden_layers
        self.injection_layer = min(cfg.injection_layer or max(1, round(n_layers / 5)), n_layers - 1)
        self.variant = variant  # builds the modules of its mechanisms (none for a D²VLM row)

    # -- the variant and the modules its mechanisms need -------------------------------------
    @property
    def variant(self) -> Variant:
        return self._variant

    @variant.setter
    def variant(self, v: Variant) -> None:
        """Switch the response layout/mechanisms. The module of each mechanism (its ``module_name``,
        e.g. TimeChat's ``time_embed``, STC's ``stc``) is created (on the projector's device and dtype)
        when switched on — time representation first, then token budget — and removed when off, so
        :meth:`save_pretrained`/:meth:`from_pretrained` hold exactly the variant's parameters."""
        object.__setattr__(self, "_variant", v)
        ref = self.projector[0].weight
        h = self.lm.config.hidden_size
        mechs = [m for m in (time_rep(v), token_budget(v)) if m.module_name]
        for name in getattr(self, "_mechanism_names", []):
            if name not in [m.module_name for m in mechs]:
                delattr(self, name)
        for m in mechs:
            current = getattr(self, m.module_name, None)
            new = m.module(h, current)
            if new is not current:
                setattr(self, m.module_name, new.to(ref.device, ref.dtype))
        object.__setattr__(self, "_mechanism_names", [m.module_name for m in mechs])

    def mechanism_modules(self) -> list[str]:
        """Names of the submodules the variant's mechanisms added (trained fully in SFT)."""
        return list(self._mechanism_names)

    def _mechanism_module(self, mech) -> nn.Module | None:
        return getattr(self, mech.module_name) if mech.module_name else None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: ModelConfig, variant: Variant, tokenizer, new_token_ids=()) -> "D2VLM":
        """A fresh model for ``tokenizer``. tiny: random init. phi3-mini: ``from_pretrained``
        (or random weights with ``random_init``); ``new_token_ids`` (from
        :func:`d2lib.vlm.tokens.add_special_tokens`) get mean-initialised embedding rows."""
        from d2lib.vlm.tokens import mean_init_rows

        ids = special_ids(tokenizer)
        lm = _build_lm(cfg, len(tokenizer), ids)
        if cfg.preset == "phi3-mini" and not cfg.random_init:
            mean_init_rows(lm, list(new_token_ids))
        return cls(cfg, variant, lm, _build_tower(cfg), ids)

    def save_pretrained(self, path: str | Path) -> None:
        """HF-format directory: ``lm/`` and ``vision/`` (``save_pretrained``), ``d2vlm.safetensors``
        (pooling, projector, heads) and ``d2vlm.json`` (model config, variant, special ids).
        A peft-wrapped LM is saved merged (LoRA folded into a copy of the weights), so the folder
        loads without peft; keep the adapter itself with ``self.lm.save_pretrained`` if needed."""
        import copy

        from safetensors.torch import save_file

        from d2lib.core import io

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lm = copy.deepcopy(self.lm).merge_and_unload() if hasattr(self.lm, "peft_config") else self.lm
        with no_progress_bars():
            lm.save_pretrained(path / "lm")
            self.tower.save_pretrained(path / "vision")
        own = {k: v.detach().contiguous() for k, v in self.state_dict().items()
               if not k.startswith(("lm.", "tower."))}
        io.write_with(path / "d2vlm.safetensors", lambda tmp: save_file(own, str(tmp)))
        meta = {"model": _config.to_dict(self.cfg), "variant": dataclasses.asdict(self.variant), "ids": self.ids}
        io.write_json(path / "d2vlm.json", meta, indent=2)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "D2VLM":
        """Load a directory written by :meth:`save_pretrained`. A missing part is a ``FileNotFoundError``
        and a part that cannot be loaded (cut short, not the format) an ``OSError``, each naming the file
        or folder; weights that do not fit the model are a ``ValueError`` naming ``d2vlm.safetensors``."""
        from safetensors.torch import load_file
        from transformers import Phi3ForCausalLM, SiglipVisionModel

        path = Path(path)
        parts = {"d2vlm.json": "the model config", "lm": "the language model folder",
                 "vision": "the vision tower folder", "d2vlm.safetensors": "the pooling, projector and head weights"}
        for part, what in parts.items():
            if not (path / part).exists():
                raise FileNotFoundError(f"{path / part}: missing — {what} of a D2VLM folder (D2VLM.save_pretrained "
                                        f"writes {', '.join(parts)})")

        def read(part: str, reader):
            try:
                return reader(path / part)
            except Exception as e:  # noqa: BLE001  (re-raised with the file's name)
                raise OSError(f"{path / part}: cannot be loaded as {parts[part]} ({type(e).__name__}: {e})") from e

        meta = read("d2vlm.json", lambda f: json.loads(f.read_text()))
        cfg, variant, ids = read("d2vlm.json", lambda f: (_config.from_dict(ModelConfig, meta["model"], "model"),
                                                         _config.from_dict(Variant, meta["variant"], "variant"),
                                                         meta["ids"]))
        with no_progress_bars():
            lm = read("lm", lambda f: Phi3ForCausalLM.from_pretrained(f, attn_implementation=cfg.attn_implementation))
            tower = read("vision", SiglipVisionModel.from_pretrained)
        model = cls(cfg, variant, lm, tower, ids)
        state = read("d2vlm.safetensors", lambda f: load_file(str(f)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(("lm.", "tower."))]
        if missing or unexpected:
            raise ValueError(f"{path / 'd2vlm.safetensors'}: does not fit the model: missing {missing}, "
                             f"unexpected {unexpected}")
        return model

    # -- frames ------------------------------------------------------------------------------
    def pixel_streams(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Frames (B, T, H, W, 3) uint8 (or float in [0, 1]) → tower inputs, one per stream,
        each (B·T, C, image, image): RGB (+ motion channels) or RGB and motion separately."""
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        B, T = x.shape[:2]
        x = x.permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
        size = self.tower.config.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = nn.functional.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False).unflatten(0, (B, T))
        diff = torch.zeros_like(x)
        diff[:, 1:] = self.cfg.diff_scale * (x[:, 1:] - x[:, :-1])  # frame 0 has no motion
        mean = torch.tensor(self.cfg.pixel_mean, device=x.device)[:, None, None]
        std = torch.tensor(self.cfg.pixel_std, device=x.device)[:, None, None]
        rgb = (x - mean) / std
        mode = self.cfg.motion_mode
        if mode == "channels":
            streams = [torch.cat([rgb, diff], dim=2)]
        elif mode == "second_pass":
            streams = [rgb, diff.clamp(-1.0, 1.0)]  # motion shown to the tower as an image
        else:
            streams = [rgb]
        dtype = next(self.tower.parameters()).dtype
        return [s.flatten(0, 1).to(dtype) for s in streams]

    def encode_tower(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None,
                     chunk: int = 512) -> torch.Tensor:
        """Vision tower outputs to cache: frames (B, T, H, W, 3) or (T, H, W, 3) → patch tokens
        (B, T, S, P, Dv) or (T, S, P, Dv). Wrap in ``torch.no_grad()`` when the tower is frozen.

        ``frame_mask`` (B, T) bool: the tower runs on the valid frames only and padded slots get
        zeros (a batch of 16-64 s videos padded to the longest is ~40% padding); the valid frames'
        features are the same as without the mask (motion channels are computed before selecting)."""
        single = frames.dim() == 4
        frames = frames[None] if single else frames
        B, T = frames.shape[:2]
        frames = time_rep(self.variant).draw_frames(frames)  # e.g. NumPro: the tower sees the numbers
        keep = None if frame_mask is None or bool(frame_mask.all()) else frame_mask.reshape(-1)
        outs = []
        for s in self.pixel_streams(frames):
            s = s if keep is None else s[keep]
            parts = [self.tower(pixel_values=s[i:i + chunk]).last_hidden_state for i in range(0, len(s), chunk)]
            x = torch.cat(parts)  # (N, P, Dv), N = B·T or the valid frames
            if keep is not None:
                x = x.new_zeros(B * T, *x.shape[1:]).index_put((keep.nonzero()[:, 0],), x)
            outs.append(x)  # (B·T, P, Dv)
        feats = torch.stack(outs, 1).unflatten(0, (B, T))  # (B, T, S, P, Dv)
        return feats[0] if single else feats

    def batch_tower_feats(self, frames, tower_feats, frame_mask, video_index=None) -> torch.Tensor:
        """Tower features (B, T, S, P, Dv) of a batch: ``tower_feats`` if cached, else the tower on
        ``frames``. With ``video_index`` (B,) both hold each distinct video once (U, T, ...): the
        tower runs once per video and row b gets video ``video_index[b]``."""
        if video_index is None:
            return tower_feats if tower_feats is not None else self.encode_tower(frames, frame_mask)
        if tower_feats is None:
            U = frames.shape[0]
            first = torch.full((U,), -1, dtype=torch.long, device=frame_mask.device)
            first = first.scatter_reduce(0, video_index, torch.arange(len(video_index), device=frame_mask.device),
                                         reduce="amax")  # an example showing each video
            if bool((first < 0).any()):
                raise ValueError("video_index leaves a video of the batch unused")
            tower_feats = self.encode_tower(frames, frame_mask[first])
        return tower_feats[video_index]

    def frame_tokens(self, tower_feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, T, S, P, Dv) → frame tokens (B, T, H) at the LM width, one per second
        (a time representation's per-frame embedding, e.g. TimeChat's, is added: frame t = second t)."""
        B, T = tower_feats.shape[:2]
        pooled = self.pool(tower_feats.flatten(0, 1).to(self.pool.query.dtype))  # (B·T, S, Dv)
        x = self.temporal(pooled.reshape(B, T, -1), frame_mask)  # (B, T, S·Dv)
        x = self.projector(x)
        embed = self._mechanism_module(time_rep(self.variant))
        if embed is not None:
            x = embed(x, torch.arange(T, device=x.device))
        return x

    def frame_layout(self, frame_tok, frame_start, frame_mask, frame_pos=None, token_mask=None,
                     token_of_frame=None) -> tuple[torch.Tensor, FrameLayout]:
        """Per-second frame tokens (B, T, H) → the tokens the LM reads (B, K, H) and their
        :class:`FrameLayout`. Without ``frame_pos`` (the plain layout) the tokens pass unchanged;
        otherwise the variant's token budget fills the K slots
        (:meth:`d2lib.vlm.tokens.TokenBudget.slot_tokens`, with its module)."""
        if frame_pos is None:
            return frame_tok, FrameLayout.plain(frame_start, frame_mask)
        K = frame_pos.shape[1]
        token_mask = token_mask if token_mask is not None else torch.ones_like(frame_pos, dtype=torch.bool)
        budget = token_budget(self.variant)
        out, tof = budget.slot_tokens(frame_tok, frame_mask, K, token_of_frame, self._mechanism_module(budget))
        return out, FrameLayout(frame_pos, token_mask, tof)

    # -- sequence plumbing -------------------------------------------------------------------
    def _decoder(self):
        return self.lm.get_decoder()

    def embed(self, input_ids, frame_tok, frame_start, frame_mask, frame_pos=None) -> torch.Tensor:
        """Token embeddings (B, L, H) with frame tokens (B, K, H) written over the ``<video>`` slots:
        slot k of row b at ``frame_pos[b, k]`` (default ``frame_start[b] + k``), where ``frame_mask``
        (B, K) is true."""
        emb = self.lm.get_input_embeddings()(input_ids)
        b, t = frame_mask.nonzero(as_tuple=True)
        pos = frame_pos[b, t] if frame_pos is not None else frame_start[b] + t
        if not bool((input_ids[b, pos] == self.ids["video"]).all()):
            raise ValueError("frame_start/frame_mask do not point at <video> placeholders")
        return emb.index_put((b, pos), frame_tok[b, t].to(emb.dtype))

    def _is_frame(self, frame_start, frame_mask, L: int, frame_pos=None) -> torch.Tensor:
        """(B, L) bool: which positions hold frame tokens."""
        is_frame = torch.zeros(frame_mask.shape[0], L, dtype=torch.bool, device=frame_mask.device)
        b, t = frame_mask.nonzero(as_tuple=True)
        is_frame[b, frame_pos[b, t] if frame_pos is not None else frame_start[b] + t] = True
        return is_frame

    def _frame_rows(self, states, frame_start, n_frames: int, layout: FrameLayout | None = None) -> torch.Tensor:
        """Gather the frame positions of states (B, L, H) → (B, T, H), one row per second (with a
        ``layout``: the row of the token covering it; pad slots clamp, masked later)."""
        pos = layout.second_positions() if layout is not None else frame_positions(frame_start, n_frames)
        pos = pos.clamp(max=states.shape[1] - 1)
        return states.gather(1, pos[..., None].expand(-1, -1, states.shape[-1]))

    def early_states(self, emb, mask4d, pos) -> torch.Tensor:
        """Hidden states after the first ``injection_layer`` decoder blocks (= hidden_states[l]).
        Only the prompt needs to run: frame states never see later tokens."""
        dec = self._decoder()
        h = emb
        pe = dec.rotary_emb(h, position_ids=pos)
        for layer in dec.layers[: self.injection_layer]:
            h = layer(h, attention_mask=mask4d, position_ids=pos, position_embeddings=pe)
        return h

    def _injection(self, V, evi_batch, evi_frames, evi_role) -> torch.Tensor:
        """Injected vectors (N, H): mean of frame states V (B, T, H) over each ``<evi>``'s frames
        (its span; a frame-level start/end token uses its single frame)."""
        first = torch.where(evi_role == ROLE_END, evi_frames[:, 1], evi_frames[:, 0])
        last = torch.where(evi_role == ROLE_START, evi_frames[:, 0], evi_frames[:, 1])
        return span_mean(V[evi_batch], first, last)

    def similarity(self, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """s_kt = e_k·f_t/√d: e (N, D), f (N, T, D) → (N, T)."""
        return torch.einsum("nd,ntd->nt", e, f) / math.sqrt(e.shape[-1])

    # -- training forward --------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, frame_start, frame_mask, labels=None, frames=None,
                tower_feats=None, evi_batch=None, evi_tok_pos=None, evi_pred_pos=None, evi_role=None,
                evi_frames=None, evi_pairs=None, frame_pos=None, token_mask=None, token_of_frame=None,
                video_index=None, segment_ids=None, position_ids=None, **_unused) -> D2Output:
        """Teacher-forced pass over a batch from :func:`d2lib.vlm.tokens.collate` (right padding).

        Give ``frames`` (B, T, H, W, 3) uint8 or cached ``tower_feats`` (B, T, S, P, Dv) — or one per
        distinct video (U, ...) with ``video_index`` (B,) (``Collator(dedupe=True)``).
        Returns :class:`D2Output`; ``loss`` is the SFT objective of the model's variant.
        ``frame_pos``/``token_mask``/``token_of_frame``: the peers' layouts (:meth:`frame_layout`).
        ``segment_ids``/``position_ids`` (B, L): packed sequences (:func:`d2lib.vlm.tokens.pack_examples`),
        several queries of one video after its frames, each computed as if alone.
        """
        tower_feats = self.batch_tower_feats(frames, tower_feats, frame_mask, video_index)
        B, L = input_ids.shape
        T = frame_mask.shape[1]
        if T > self.cfg.max_frames:
            raise ValueError(f"{T} frames > model.max_frames={self.cfg.max_frames}")
        ftok, lay = self.frame_layout(self.frame_tokens(tower_feats, frame_mask), frame_start, frame_mask,
                                      frame_pos, token_mask, token_of_frame)
        emb = self.embed(input_ids, ftok, frame_start, lay.mask, lay.pos)
        valid = attention_mask.bool()
        is_frame = self._is_frame(frame_start, lay.mask, L, lay.pos)
        mask = attention_mask_4d(valid, is_frame, L, emb.dtype, segment_ids)
        pos = position_ids if position_ids is not None else default_position_ids(valid)
        n_evi = 0 if evi_batch is None or self.variant.head == "none" else len(evi_batch)
        if n_evi and self.variant.injection:  # pass 1: frame states at the injection layer
            cut = lay.end()
            V = self.early_states(emb[:, :cut], mask[:, :, :cut, :cut], pos[:, :cut])
            inj = self._injection(self._frame_rows(V, frame_start, T, lay), evi_batch, evi_frames, evi_role)
            emb = emb.index_put((evi_batch, evi_tok_pos), inj.to(emb.dtype), accumulate=True)
        out = self.lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                      output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-2]  # (B, L, H): before the last decoder block
        f = self.frm_head(self._frame_rows(h, frame_start, T, lay))  # (B, T, D), per second
        zero = out.logits.sum() * 0.0
        text = lm_loss(out.logits, labels) if labels is not None else zero
        if n_evi:
            e = self.evi_head(h[evi_batch, evi_pred_pos])  # (N, D)
            scores, smask = self.similarity(e, f[evi_batch]), frame_mask[evi_batch]
            ground = self._grounding_loss(scores, smask, evi_frames, evi_role)
            cons = (self._consistency(e, scores, smask, evi_pairs)
                    if self.variant.consistency and evi_pairs is not None and len(evi_pairs) else zero)
        else:
            e, scores = f.new_zeros(0, f.shape[-1]), f.new_zeros(0, T)
            smask, ground, cons = frame_mask.new_zeros(0, T), zero, zero
        w_c = self.cfg.consistency_weight * getattr(self, "consistency_scale", 1.0)  # 0 before consistency_start
        total = text + self.cfg.grounding_weight * ground + w_c * cons
        return D2Output(total, text, ground, cons, out.logits, scores, smask, e, f)

    def _consistency(self, e, scores, smask, pairs) -> torch.Tensor:
        """The consistency term between the grounding-stage and answer-stage ``<evi>`` of the same
        event (``pairs`` (M, 2) into the batch's ``<evi>``), in the variant's ``consistency_form``."""
        g, a = pairs[:, 0], pairs[:, 1]
        form = getattr(self.variant, "consistency_form", "l1")
        if form == "scores":
            return consistency_scores(scores[g], scores[a], smask[g], frame_level=self.variant.head == "frame")
        return consistency_l1(e[g].detach() if form == "l1_detached" else e[g], e[a])

    def _grounding_loss(self, scores, smask, evi_frames, evi_role) -> torch.Tensor:
        if self.variant.head == "frame":
            target = torch.where(evi_role == ROLE_END, evi_frames[:, 1], evi_frames[:, 0])
            return frame_ce(scores, target, smask)
        y = soft_targets(evi_frames.tolist(), scores.shape[1], self.cfg.grounding_alpha).to(scores.device)
        return grounding_bce(scores, y, smask)

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids, attention_mask, frame_start, frame_mask, frames=None, tower_feats=None,
                 tokenizer=None, max_new_tokens: int = 64, use_cache: bool = True, fps: float = 1.0,
                 frame_pos=None, token_mask=None, token_of_frame=None, video_index=None,
                 **_unused) -> list[Generation]:
        """Greedy decoding for a left-padded prompt batch (``collate(..., padding_side="left")``).

        Prefill once (caching the frame features f_t and injection-layer frame states V), then per
        step: score the current position against f_t; when ``<evi>`` is emitted decode its span
        (or frame) and add mean V over it to that token's input embedding for the next step.
        ``use_cache=False`` recomputes the full sequence every step (the reference for tests).
        """
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs left-padded prompts (collate(..., padding_side='left'))")
        tower_feats = self.batch_tower_feats(frames, tower_feats, frame_mask, video_index)
        B, L = input_ids.shape
        T = frame_mask.shape[1]
        ftok, lay = self.frame_layout(self.frame_tokens(tower_feats, frame_mask), frame_start, frame_mask,
                                      frame_pos, token_mask, token_of_frame)
        emb = self.embed(input_ids, ftok, frame_start, lay.mask, lay.pos)
        valid, is_frame = attention_mask.bool(), self._is_frame(frame_start, lay.mask, L, lay.pos)
        pos = default_position_ids(valid)
        step = _Stepper(self, frame_start, T, use_cache, lay)
        h, logits = step.prefill(emb, valid, is_frame, pos)
        ids = self.ids
        blocked = torch.tensor([ids[k] for k in ("video", "pad", "system", "user", "assistant") if k in ids],
                               device=logits.device)  # never generated
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        gens = [Generation() for _ in range(B)]
        probs: list[list[torch.Tensor]] = [[] for _ in range(B)]
        for _ in range(max_new_tokens):
            logits[:, blocked] = float("-inf")
            nxt = torch.where(done, ids["pad"], logits.argmax(-1))  # (B,)
            inj = torch.zeros(B, emb.shape[-1], dtype=emb.dtype, device=emb.device)
            if self.variant.head != "none" and bool((nxt == ids["evi"]).any()):
                scores = self.similarity(self.evi_head(h), step.F)  # (B, T)
                for b in (nxt == ids["evi"]).nonzero().flatten().tolist():
                    inj[b] = self._decode_evi(gens[b], probs[b], scores[b, : int(frame_mask[b].sum())],
                                              step.V[b], fps)
            for b in (~done).nonzero().flatten().tolist():
                gens[b].ids.append(int(nxt[b]))
            done |= nxt == ids["end"]
            if bool(done.all()):
                break
            new = self.lm.get_input_embeddings()(nxt) + inj  # (B, H)
            h, logits = step.next(new)
        for b, (g, p) in enumerate(zip(gens, probs)):
            g.probs = torch.stack(p) if p else torch.zeros(0, 0)
            if tokenizer is not None:  # text times read back with the video's length as the model sees it
                g.text = render_response(g.ids, g.values, tokenizer, duration=int(frame_mask[b].sum()) / fps,
                                         times=time_rep(self.variant), fps=fps)
        return gens

    def _decode_evi(self, gen: Generation, probs_out: list, scores: torch.Tensor, V: torch.Tensor,
                    fps: float) -> torch.Tensor:
        """Decode one emitted ``<evi>`` from its scores (T,), record it, return its injection (H,)."""
        if self.variant.head == "frame":
            probs = scores.softmax(-1)
            first = last = int(scores.argmax())
            gen.values.append(first / fps)
        else:
            probs = scores.sigmoid()
            first, last = decode_span(probs, self.cfg.decode_ratio)
            gen.values.append([first / fps, last / fps])
        gen.evi_frames.append((first, last))
        probs_out.append(probs.float().cpu())
        if not self.variant.injection:
            return torch.zeros_like(V[0])
        return V[first : last + 1].mean(0)


class _Stepper:
    """Runs the LM during generation, with the KV cache or by full recomputation.

    Keeps the frame features ``F`` (B, T, D) and injection-layer frame states ``V`` (B, T, H);
    each call returns the last position's ``hidden_states[-2]`` (B, H) and logits (B, V).
    """

    def __init__(self, model: D2VLM, frame_start, T: int, use_cache: bool, layout: FrameLayout | None = None):
        self.m, self.frame_start, self.T, self.use_cache = model, frame_start, T, use_cache
        self.layout = layout

    def _run(self, emb, n_query: int, past=None):
        mask = attention_mask_4d(self.valid, self.is_frame, n_query, emb.dtype)
        out = self.m.lm(inputs_embeds=emb, attention_mask=mask, position_ids=self.pos[:, -n_query:],
                        past_key_values=past, use_cache=self.use_cache, output_hidden_states=True)
        self.past = out.past_key_values if self.use_cache else None
        return out

    def _read_frames(self, out) -> None:
        hs = out.hidden_states
        self.V = self.m._frame_rows(hs[self.m.injection_layer], self.frame_start, self.T, self.layout)
        self.F = self.m.frm_head(self.m._frame_rows(hs[-2], self.frame_start, self.T, self.layout))

    def prefill(self, emb, valid, is_frame, pos):
        self.emb, self.valid, self.is_frame, self.pos = emb, valid, is_frame, pos
        out = self._run(emb, emb.shape[1])
        self._read_frames(out)
        return out.hidden_states[-2][:, -1], out.logits[:, -1].float()

    def next(self, new_emb):
        ones = torch.ones_like(self.valid[:, :1])
        self.valid = torch.cat([self.valid, ones], 1)
        self.is_frame = torch.cat([self.is_frame, ~ones], 1)
        self.pos = torch.cat([self.pos, self.pos[:, -1:] + 1], 1)
        if self.use_cache:
            out = self._run(new_emb[:, None], 1, self.past)
        else:  # reference path: recompute everything, frame features included
            self.emb = torch.cat([self.emb, new_emb[:, None]], 1)
            out = self._run(self.emb, self.emb.shape[1])
            self._read_frames(out)
        return out.hidden_states[-2][:, -1], out.logits[:, -1].float()


# --- transformers models for each preset ----------------------------------------------------
def _local_dir(path: str) -> bool:
    return Path(path).expanduser().is_dir()


def _build_lm(cfg: ModelConfig, vocab_size: int, ids: dict):
    from transformers import Phi3Config, Phi3ForCausalLM

    common = {"pad_token_id": ids["pad"], "eos_token_id": ids["end"], "bos_token_id": None}
    if cfg.preset == "tiny":
        lm_cfg = Phi3Config(vocab_size=vocab_size, hidden_size=cfg.hidden_size,
                            intermediate_size=cfg.ffn_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                            max_position_embeddings=4096, tie_word_embeddings=False, **common)
    elif cfg.random_init:  # phi3-mini wiring without downloads: its config, untrained weights
        lm_cfg = Phi3Config.from_pretrained(cfg.lm_path) if _local_dir(cfg.lm_path) else Phi3Config()
    else:
        lm = Phi3ForCausalLM.from_pretrained(cfg.lm_path, attn_implementation=cfg.attn_implementation,
                                             **cfg.lm_overrides)
        if lm.get_input_embeddings().weight.shape[0] < vocab_size:
            lm.resize_token_embeddings(vocab_size, mean_resizing=False)  # rows set by mean_init_rows
        lm.config.pad_token_id, lm.config.eos_token_id = ids["pad"], ids["end"]
        return lm
    for k, v in {**cfg.lm_overrides, **common}.items():
        setattr(lm_cfg, k, v)
    lm_cfg.vocab_size = max(lm_cfg.vocab_size if cfg.preset != "tiny" else 0, vocab_size)
    lm_cfg._attn_implementation = cfg.attn_implementation
    return Phi3ForCausalLM(lm_cfg)


def _build_tower(cfg: ModelConfig):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if cfg.preset == "tiny":
        v_cfg = SiglipVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size,
                                   hidden_size=cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
                                   num_attention_heads=cfg.vision_heads, intermediate_size=cfg.vision_ffn)
    elif cfg.random_init:
        v_cfg = SiglipVisionConfig.from_pretrained(cfg.vision_path) if _local_dir(cfg.vision_path) else SiglipVisionConfig()
    else:
        return SiglipVisionModel.from_pretrained(cfg.vision_path, vision_use_head=False, **cfg.vision_overrides)
    for k, v in cfg.vision_overrides.items():
        setattr(v_cfg, k, v)
    v_cfg.num_channels = 6 if cfg.motion_mode == "channels" else 3
    v_cfg.vision_use_head = False  # we pool with our own learned query
    return SiglipVisionModel(v_cfg)
