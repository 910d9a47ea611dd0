"""Reference baselines for temporal grounding: a random span, a duration prior and a training-free
TFVTG-style scorer over the aligned model's frame–text similarities.

Taught in lesson ``06_evaluation``: a metric means little until you know what chance, a
"same span for every query" prior, and a zero-training similarity scorer score on it. All scoring
functions are pure; randomness comes only from the ``numpy.random.Generator`` passed in. Only
:func:`frame_text_similarity` touches a model.

**TFVTG-style scorer** (Zheng et al., ECCV 2024, "Training-free Video Temporal Grounding using
Large-scale Pre-trained Models"; code ``minghangz/TFVTG``). Given a per-frame query similarity
curve ``sim`` (T,), every candidate span ``[s, e]`` (frames, inclusive) gets

* a **static** score: ``mean(sim[s..e]) − mean(sim outside [s, e])`` — the event should be more
  query-like inside than outside (TFVTG's static score, same formula);
* a **dynamic** score: the rise of the smoothed curve ``g`` entering the span plus its fall leaving
  it, ``rise(s) + fall(e)`` with ``rise(s) = mean(g[s:s+w]) − mean(g[s−w:s])`` and
  ``fall(e) = mean(g[e−w+1:e+1]) − mean(g[e+1:e+1+w])`` (0 where the video has no frames before/after):
  the similarity should *change* at the boundaries;

and the answer is the span maximising ``static + λ·dynamic`` (:func:`tfvtg_scores`, :func:`tfvtg_span`).

What is and is not TFVTG here:

* **same**: static score (inside minus outside mean); the idea of a dynamic score from the smoothed
  curve's first difference (Gaussian smoothing); proposals limited to a fraction of the video
  (TFVTG's ``max_stride_factor``, 0.5 on Charades-STA); NMS between proposals (:func:`tfvtg_proposals`).
* **different**: (1) the similarity is not BLIP-2 image–text matching but the cosine between the
  aligned D²VLM's hidden states of the query tokens and of each frame token at one LM layer, the
  attention the query tokens pay to each frame, or the grounding heads' frame–caption score that
  stage ``align``'s contrastive objective trains (:func:`frame_text_similarity`); (2) **no LLM query decomposition** — TFVTG asks GPT-4 to split a
  query into sub-events and their relation (simultaneous / sequential) and merges the sub-event
  proposals; we score the whole query only (TFVTG's "VLM-only" setting); (3) every span of ``min_len`` frames
  or more at 1-frame granularity, instead of windows at multiples of a stride (TFVTG's shortest window); (4) the dynamic score is added to the ranking
  score with weight λ and uses both boundaries — TFVTG's released code ranks by the static score and
  uses the rise only to move each proposal's *start* back to the onset of the rising run; (5) no
  0.2 similarity floor (our cosines have another scale; centring the frame states per video plays
  that role); (6) one answer (top-1) for tvg; tal keeps every NMS survivor scoring at least
  ``keep_ratio`` × the best.

>>> import numpy as np
>>> s, e = random_span(30.0, np.random.default_rng(0))
>>> 0.0 <= s <= e <= 30.0
True
>>> prior_span(60.0, [(0, 10, 40), (10, 30, 40)])
[7.5, 30.0]
>>> tfvtg_span([0, 0, 0, 1, 1, 1, 1, 0, 0, 0])  # a plateau: its frames 3..6 are the answer
[3.0, 6.0]
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from d2lib.core.spans import nms

__all__ = ["random_span", "normalised_mean_span", "prior_span",
           "gaussian_smooth", "static_scores", "boundary_scores", "tfvtg_scores", "tfvtg_proposals",
           "tfvtg_span", "query_text", "frame_text_similarity", "similarity_curves"]


def random_span(duration: float, rng: np.random.Generator) -> list[float]:
    """A random span in ``[0, duration]``: two independent uniform times, sorted (start <= end).

    Under this law the span length has mean ``duration / 3``.

    >>> random_span(10.0, np.random.default_rng(1)) == random_span(10.0, np.random.default_rng(1))
    True
    >>> random_span(0.0, np.random.default_rng(0))
    [0.0, 0.0]
    """
    if duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    a, b = rng.uniform(0.0, float(duration), size=2)
    return [float(min(a, b)), float(max(a, b))]


def normalised_mean_span(train_spans: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Mean of ``(start / duration, end / duration)`` over training GT, each clipped to ``[0, 1]``.

    ``train_spans``: sequence of ``(start, end, video_duration)``; reversed spans are reordered and
    zero-duration videos skipped. Clipping handles annotations that end past the video (Charades-STA
    has hundreds).

    >>> normalised_mean_span([(0, 10, 40), (10, 30, 40)])
    (0.125, 0.5)
    >>> normalised_mean_span([(20, 35, 30)])  # end past the video: clipped to 1
    (0.6666666666666666, 1.0)
    """
    rows = []
    for s, e, d in train_spans:
        if d <= 0:
            continue
        s, e = (s, e) if s <= e else (e, s)
        rows.append((min(max(s / d, 0.0), 1.0), min(max(e / d, 0.0), 1.0)))
    if not rows:
        raise ValueError("no training spans with a positive duration")
    arr = np.asarray(rows, dtype=float)
    return float(arr[:, 0].mean()), float(arr[:, 1].mean())


def prior_span(duration: float, train_spans: Sequence[Sequence[float]]) -> list[float]:
    """The duration prior: :func:`normalised_mean_span` of the training GT scaled to ``duration``.

    ``train_spans``: sequence of ``(start, end, video_duration)``. The same relative span for every
    query — what a grounding model scores if it ignores the video and the query.

    >>> prior_span(30.0, [(0, 10, 40), (10, 30, 40)])
    [3.75, 15.0]
    """
    ns, ne = normalised_mean_span(train_spans)
    return [ns * float(duration), ne * float(duration)]


# --------------------------------------------------------------------------------------------------
# TFVTG-style training-free scorer (see the module docstring for what is and is not TFVTG)
# --------------------------------------------------------------------------------------------------
def gaussian_smooth(x: Sequence[float], sigma: float = 1.0) -> np.ndarray:
    """Convolve a curve with a normalised Gaussian (radius ``ceil(3σ)``), edges padded by repetition,
    same length; ``sigma <= 0`` returns a copy.

    >>> gaussian_smooth([0, 0, 3, 0, 0], sigma=1.0).round(2).tolist()
    [0.16, 0.73, 1.2, 0.73, 0.16]
    >>> gaussian_smooth([1, 1, 1], sigma=2.0).tolist()  # a constant stays constant
    [1.0, 1.0, 1.0]
    """
    x = np.asarray(x, dtype=float)
    if sigma <= 0 or x.size == 0:
        return x.copy()
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")


def _span_mask(T: int, min_len: int, max_len: int | None) -> np.ndarray:
    """(T, T) bool: ``[s, e]`` (frames, inclusive) is a candidate when ``min_len <= e−s+1 <= max_len``."""
    s, e = np.arange(T)[:, None], np.arange(T)[None, :]
    n = e - s + 1
    return (n >= max(1, min_len)) & (n <= (T if max_len is None else max(1, max_len)))


def static_scores(sim: Sequence[float], min_len: int = 1, max_len: int | None = None) -> np.ndarray:
    """TFVTG's static score of every span: ``S[s, e] = mean(sim[s..e]) − mean(sim outside)``, frames
    inclusive; ``-inf`` for non-candidates (``e < s`` or a length outside ``[min_len, max_len]``).
    A span covering the whole video has no outside: its score is 0.

    >>> S = static_scores([0, 1, 1, 0])
    >>> float(S[1, 2]), float(S[0, 3]), float(S[2, 1])
    (1.0, 0.0, -inf)
    """
    x = np.asarray(sim, dtype=float)
    T = x.size
    c = np.concatenate([[0.0], np.cumsum(x)])
    s, e = np.arange(T)[:, None], np.arange(T)[None, :]
    n_in = (e - s + 1).astype(float)
    inside = c[np.clip(e + 1, 0, T)] - c[s]
    n_out = T - n_in
    with np.errstate(divide="ignore", invalid="ignore"):
        out_mean = np.where(n_out > 0, (c[T] - inside) / np.where(n_out > 0, n_out, 1), 0.0)
        in_mean = inside / np.where(n_in > 0, n_in, 1)
    score = np.where(n_out > 0, in_mean - out_mean, 0.0)
    return np.where(_span_mask(T, min_len, max_len), score, -np.inf)


def boundary_scores(sim: Sequence[float], width: int = 2, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(rise, fall)`` per frame of the smoothed curve ``g`` (:func:`gaussian_smooth`):
    ``rise[s] = mean(g[s:s+w]) − mean(g[s−w:s])`` (how much the curve goes up when a span starts at
    frame s) and ``fall[e] = mean(g[e−w+1:e+1]) − mean(g[e+1:e+1+w])`` (how much it goes down after a
    span ends at e); windows are cut at the video's edges, and a boundary at the very start (rise) or
    end (fall) of the video scores 0 — there is no change to see there.

    >>> rise, fall = boundary_scores([0, 0, 1, 1, 0, 0], width=1, sigma=0)
    >>> rise.tolist(), fall.tolist()
    ([0.0, 0.0, 1.0, 0.0, -1.0, 0.0], [0.0, -1.0, 0.0, 1.0, 0.0, 0.0])
    """
    g = gaussian_smooth(sim, sigma)
    T = g.size
    w = max(1, int(width))
    rise, fall = np.zeros(T), np.zeros(T)
    for t in range(T):
        if t > 0:
            rise[t] = g[t:t + w].mean() - g[max(0, t - w):t].mean()
        if t < T - 1:
            fall[t] = g[max(0, t - w + 1):t + 1].mean() - g[t + 1:t + 1 + w].mean()
    return rise, fall


def tfvtg_scores(sim: Sequence[float], min_len: int = 1, max_len: int | None = None,
                 dynamic_weight: float = 1.0, width: int = 2, sigma: float = 1.0) -> np.ndarray:
    """``(T, T)`` proposal scores ``static[s, e] + λ·(rise[s] + fall[e])`` (``-inf`` off-candidate).

    >>> S = tfvtg_scores([0, 0, 1, 1, 0, 0], dynamic_weight=1.0, width=1, sigma=0)
    >>> float(S[2, 3]), [int(i) for i in np.unravel_index(np.argmax(S), S.shape)]
    (3.0, [2, 3])
    """
    S = static_scores(sim, min_len, max_len)
    if dynamic_weight:
        rise, fall = boundary_scores(sim, width, sigma)
        S = S + dynamic_weight * (rise[:, None] + fall[None, :])
    return S


def tfvtg_proposals(sim: Sequence[float], top_k: int = 5, nms_iou: float = 0.3, fps: float = 1.0,
                    **score_kwargs) -> list[tuple[list[float], float]]:
    """Ranked proposals ``[([start_s, end_s], score), ...]`` after greedy NMS (:func:`d2lib.core.spans.nms`):
    a proposal is dropped when its IoU with a better kept one exceeds ``nms_iou`` (TFVTG keeps 0.3). The
    candidates are the spans with a finite score (:func:`tfvtg_scores`); the IoU is taken on inclusive
    frames as ``[s, e + 1)``, so one-frame spans have a length. Frames ``s..e`` become seconds
    ``[s/fps, e/fps]`` (frame t = second t at 1 fps). ``score_kwargs`` → :func:`tfvtg_scores`.
    Ties keep the earlier (shorter) span.

    >>> [p for p, _ in tfvtg_proposals([0, 1, 1, 0, 0, 0, 0, 1, 1, 0], top_k=2, sigma=0, width=1)]
    [[1.0, 2.0], [7.0, 8.0]]
    """
    S = tfvtg_scores(sim, **score_kwargs)
    s, e = np.nonzero(np.isfinite(S))  # row-major: ties in score keep (start, end) order
    keep = nms(np.stack([s, e + 1], 1), S[s, e], nms_iou, top_k)
    return [([int(s[k]) / fps, int(e[k]) / fps], float(S[s[k], e[k]])) for k in keep]


def tfvtg_span(sim: Sequence[float], fps: float = 1.0, **score_kwargs) -> list[float]:
    """The top-1 span ``[start, end]`` in seconds of :func:`tfvtg_scores` (the tvg answer).

    >>> tfvtg_span([0.1, 0.1, 0.9, 0.8, 0.9, 0.1], sigma=0)
    [2.0, 4.0]
    """
    props = tfvtg_proposals(sim, top_k=1, fps=fps, **score_kwargs)
    if not props:
        raise ValueError("tfvtg_span needs a non-empty similarity curve")
    return props[0][0]


def query_text(record: Mapping) -> str:
    """The text to localise: the query caption ``g[0]`` (tvg: the event; tal: the action phrase),
    else the prompt ``q``.

    >>> query_text({"g": ["the red circle grows"], "q": "Find ..."})
    'the red circle grows'
    """
    g = record.get("g")
    return str(g[0]) if g else str(record.get("q", ""))


def _find_sub(seq: list[int], sub: list[int]) -> int:
    """Start of the last occurrence of ``sub`` in ``seq`` (−1 if absent)."""
    n = len(sub)
    for i in range(len(seq) - n, -1, -1):
        if n and seq[i:i + n] == sub:
            return i
    return -1


def frame_text_similarity(model, tokenizer, records: Sequence[Mapping], videos: Mapping, layer: int = -2,
                          pool: str = "mean", center: bool = True, batch_size: int = 16,
                          measure: str = "cosine") -> list[np.ndarray]:
    """Per-frame query similarity curves ``(T,)`` of ``records`` from a D²VLM (e.g. stage ``align``'s).

    For each record the model reads its chat prompt with the video and **only the query text**
    (:func:`query_text`) as the question. At ``hidden_states[layer]`` of the LM (0 = embeddings,
    −1 = last; the grounding heads read −2) we take each frame token's state ``f_t`` and the query
    tokens' states, pooled (``"mean"`` over the query tokens, or the ``"last"`` one, which has read
    the whole query), giving ``q``; the curve is ``cos(q, f_t − m)`` with ``m`` the mean frame state
    of the video when ``center`` (what all frames share is removed, so the curve follows what is
    *special* about frame t) and ``m = 0`` otherwise. Frame states never see the text (frames precede
    it; the mask is causal for text), so the query enters only through ``q``.
    ``videos``: ``{video: uint8 frames (T, H, W, 3)}`` or cached tower features.

    ``measure="attention"`` instead reads how much the query tokens *look at* each frame: the
    attention probabilities from the query tokens to the frame tokens in decoder block ``layer``
    (1-based: block ℓ produces ``hidden_states[ℓ]``; negative counts from the end), averaged over heads
    and query tokens (or the last query token with ``pool="last"``); ``center`` subtracts the video's
    mean. It runs the LM with eager attention (sdpa returns no weights).

    ``measure="heads"`` reads the grounding heads' score ``e·f_t/√d`` with ``f_t = frm_head`` of frame t
    (``hidden_states[-2]``) and ``e = evi_head`` of the query's last token, the LM run on the query text
    alone — the frame–caption similarity that stage ``align``'s contrastive objective trains
    (:func:`d2lib.training.videotext.caption_features`; the closest analogue of TFVTG's BLIP-2 scores). ``layer``,
    ``pool`` and ``center`` do not apply (a per-video constant does not change the TFVTG scores).
    """
    return similarity_curves(model, tokenizer, records, videos, [layer], [pool], center, batch_size,
                             measure)[(layer, pool)]


def similarity_curves(model, tokenizer, records: Sequence[Mapping], videos: Mapping, layers: Sequence[int],
                      pools: Sequence[str] = ("mean",), center: bool = True, batch_size: int = 16,
                      measure: str = "cosine") -> dict[tuple[int, str], list[np.ndarray]]:
    """:func:`frame_text_similarity` for several layers and poolings from **one** pass over the data:
    ``{(layer, pool): [curve per record]}`` (a layer sweep costs one forward per batch)."""
    import math

    import torch

    from d2lib.vlm import tokens
    from d2lib.vlm.model import attention_mask_4d, position_ids

    for pool in pools:
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be 'mean' or 'last', got {pool!r}")
    if measure not in ("cosine", "attention", "heads"):
        raise ValueError(f"measure must be 'cosine', 'attention' or 'heads', got {measure!r}")
    n_layers = model.lm.config.num_hidden_layers
    blocks = {}
    for layer in layers:
        if measure == "attention":
            block = (layer if layer > 0 else n_layers + 1 + layer) - 1  # index into outputs.attentions
            if not 0 <= block < n_layers:
                raise ValueError(f"attention needs a decoder block 1..{n_layers} (or -1..-{n_layers}), got layer={layer}")
            blocks[layer] = block
        elif measure == "cosine" and not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"hidden_states has {n_layers + 1} entries, got layer={layer}")
    first = next(iter(videos.values())) if len(videos) else None
    kind = "frames" if first is not None and first.dtype == torch.uint8 else "tower_feats"
    device = next(model.parameters()).device
    exs, qpos = [], []
    for r in records:
        q = query_text(r)
        n = len(videos[r["video"]])
        ex = tokens.encode_prompt({"q": q, "task": r.get("task"), "idx": r.get("idx")}, n, model.variant, tokenizer)
        ids = ex["input_ids"].tolist()
        tail = ex["frame_start"] + n
        sub = tokenizer(q, add_special_tokens=False)["input_ids"]
        at = _find_sub(ids[tail:], sub)
        if at < 0:  # context-dependent tokenisation: fall back to the non-special tokens after the video
            special = set(tokenizer.all_special_ids)
            span = [tail + i for i, t in enumerate(ids[tail:]) if t not in special]
        else:
            span = list(range(tail + at, tail + at + len(sub)))
        if not span:
            raise ValueError(f"record {r.get('idx')}: the query {q!r} has no tokens")
        ex["video"] = r["video"]
        exs.append(ex)
        qpos.append(span)
    out: dict[tuple[int, str], list] = {(layer, pool): [None] * len(exs) for layer in layers for pool in pools}
    was_training = model.training
    model.eval()
    attn_impl = model.lm.config._attn_implementation
    if measure == "attention":
        model.lm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            if measure == "heads":  # e: the LM on each query alone, evi_head at its last token
                from d2lib.training.videotext import caption_features, pad_ids

                cap = [torch.tensor(tokenizer(query_text(r), add_special_tokens=False)["input_ids"]) for r in records]
                evec = []
                for i in range(0, len(cap), batch_size):
                    ids, cmask = pad_ids(cap[i:i + batch_size], tokenizer.pad_token_id)
                    evec.append(caption_features(model, ids.to(device), cmask.to(device)).float())
                evec = torch.cat(evec) if evec else None
            for i in range(0, len(exs), batch_size):
                chunk = list(range(i, min(i + batch_size, len(exs))))
                batch = tokens.collate([exs[j] for j in chunk], tokenizer.pad_token_id, padding_side="right",
                                       **{kind: [videos[exs[j]["video"]] for j in chunk]})
                batch = {k: v.to(device) for k, v in batch.items()}
                feats = batch.get("tower_feats")
                if feats is None:
                    feats = model.encode_tower(batch["frames"])
                fmask, fstart = batch["frame_mask"], batch["frame_start"]
                emb = model.embed(batch["input_ids"], model.frame_tokens(feats, fmask), fstart, fmask)
                valid = batch["attention_mask"].bool()
                L = emb.shape[1]
                mask = attention_mask_4d(valid, model._is_frame(fstart, fmask, L), L, emb.dtype)
                res = model.lm(inputs_embeds=emb, attention_mask=mask, position_ids=position_ids(valid),
                               output_hidden_states=measure != "attention", output_attentions=measure == "attention",
                               use_cache=False)
                for b, j in enumerate(chunk):
                    n, f0 = int(fmask[b].sum()), int(fstart[b])
                    if measure == "heads":
                        f = model.frm_head(res.hidden_states[-2][b, f0:f0 + n]).float()  # (T, D)
                        sim = f @ evec[j] / math.sqrt(f.shape[-1])
                        for key in out:
                            out[key][j] = sim.cpu().numpy().astype(float)
                        continue
                    for layer in layers:
                        if measure == "attention":
                            a = res.attentions[blocks[layer]][b].float().mean(0)[qpos[j], f0:f0 + n]  # (Q, T)
                        else:
                            hs = res.hidden_states[layer][b].float()
                            f, qs = hs[f0:f0 + n], hs[qpos[j]]  # (T, H), (Q, H)
                            m = f.mean(0) if center else torch.zeros_like(f[0])
                        for pool in pools:
                            if measure == "attention":
                                sim = a.mean(0) if pool == "mean" else a[-1]
                                sim = sim - sim.mean() if center else sim
                            else:
                                q = qs.mean(0) if pool == "mean" else qs[-1]
                                sim = torch.nn.functional.cosine_similarity(f - m, q[None], dim=-1)
                            out[(layer, pool)][j] = sim.cpu().numpy().astype(float)
    finally:
        if measure == "attention":
            model.lm.set_attn_implementation(attn_impl)
        model.train(was_training)
    return out
