"""Inference and validation scores during training — lessons ``03_align`` and ``04_sft_lora``.

* :func:`predict` fills each record's ``a`` (the answer as people read it: every ``<evi>`` replaced
  by its decoded span) by greedy, KV-cached generation in batches (prompts sorted by length, left
  padding), evidence injection included;
* :func:`eval_tvg` is the Charades-STA protocol on the answer part (after ``</evi>``) of tvg
  answers — R@1 at IoU 0.3/0.5/0.7 and mIoU over *all* queries (:mod:`d2lib.metrics`), the
  ``eval_fn`` of :func:`d2lib.train.fit` in stage ``sft``;
* :func:`eval_mcq` is multiple-choice accuracy (rar/gvq), the ``eval_fn`` of stage ``align``;
* :func:`random_tvg` is the random-span baseline on the same queries (:mod:`d2lib.baselines`).

>>> random_tvg([{"tgt": [0, 10], "duration": 10}], seed=0)["n"]
1
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from . import baselines, metrics
from .data import Collator, make_examples, video_kind
from .parsing import EVIDENCE_DELIMITER, parse_option, split_evidence

TVG_KEYS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")


@torch.no_grad()
def predict(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
            batch_size: int = 32, max_new_tokens: int = 48, return_generations: bool = False, keep=None):
    """Copies of ``records`` with ``a`` = the model's rendered answer (same order).

    ``videos``: frames or cached tower features per video (:func:`d2lib.data.video_kind`). The
    prompt layout follows ``model.variant``. With ``return_generations`` also returns the
    :class:`d2lib.model.Generation` of each record (token ids, decoded spans, per-frame probabilities).
    ``keep``: DiffFP keep masks when ``videos`` are features (:func:`d2lib.tokenbudget.keep_masks`).
    """
    was_training = model.training
    model.eval()
    exs = make_examples(records, videos, model.variant, tokenizer, with_response=False, keep=keep)
    collate = Collator(videos, tokenizer.pad_token_id, kind=video_kind(videos), padding_side="left", dedupe=True)
    order = sorted(range(len(exs)), key=lambda i: len(exs[i]["input_ids"]))
    gens: list = [None] * len(exs)
    device = next(model.parameters()).device
    try:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = {k: v.to(device) for k, v in collate([exs[j] for j in idx]).items()}
            for j, g in zip(idx, model.generate(**batch, tokenizer=tokenizer, max_new_tokens=max_new_tokens)):
                gens[j] = g
    finally:
        model.train(was_training)
    out = [{**r, "a": g.text} for r, g in zip(records, gens)]
    return (out, gens) if return_generations else out


def answer_delimiter(variant) -> str | None:
    """``"</evi>"`` for variants with a grounding prefix (the answer follows it), else ``None``."""
    return EVIDENCE_DELIMITER if variant.prefix else None


def tvg_scores(answered: Sequence[Mapping], delimiter: str | None = EVIDENCE_DELIMITER) -> dict:
    """Charades-STA on answered tvg records: the first span of the answer part (after ``delimiter``;
    no fallback to the evidence part). With a delimiter, the evidence stage's scores are added with
    an ``evi_`` prefix (the first span before ``</evi>``)."""
    gts = [r["tgt"] for r in answered]
    out = metrics.charades_sta_from_text([r["a"] for r in answered], gts, delimiter=delimiter,
                                         evidence_fallback=False)
    res = {k: float(out[k]) for k in TVG_KEYS}
    res["parse_failure_rate"] = float(out["parse_failure_rate"])
    res["n"] = int(out["n"])
    if delimiter is not None:
        evi = [split_evidence(r["a"], delimiter)[0] if delimiter in (r["a"] or "") else None for r in answered]
        ev = metrics.charades_sta_from_text(evi, gts, delimiter=None)
        res.update({f"evi_{k}": float(ev[k]) for k in TVG_KEYS})
    return res


def limit(records: Sequence[Mapping], max_queries: int = 0, seed: int = 0) -> list:
    """All records (``max_queries == 0``) or a fixed random subset of ``max_queries`` (order kept)."""
    if not max_queries or max_queries >= len(records):
        return list(records)
    keep = np.sort(np.random.default_rng(seed).choice(len(records), max_queries, replace=False))
    return [records[i] for i in keep]


def eval_tvg(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
             batch_size: int = 32, max_new_tokens: int = 48, max_queries: int = 0) -> dict:
    """Val tvg scores of ``model`` (:func:`tvg_scores` over :func:`predict`); non-tvg records are
    skipped, ``max_queries`` > 0 scores a fixed subset."""
    tvg = limit([r for r in records if r["task"] == "tvg"], max_queries)
    answered = predict(model, tvg, videos, tokenizer, batch_size, max_new_tokens)
    return tvg_scores(answered, answer_delimiter(model.variant))


def mcq_accuracy(answered: Sequence[Mapping]) -> dict:
    """Accuracy per multiple-choice task (``acc_rar``, ``acc_gvq``): the option letter parsed from
    the answer part; an unparsable answer is wrong."""
    hits: dict[str, list[bool]] = {}
    for r in answered:
        text = r["a"] or ""
        if EVIDENCE_DELIMITER in text:
            text = split_evidence(text)[1]
        choice, _ = parse_option(text, n_options=len(r["o"]))
        hits.setdefault(r["task"], []).append(choice == r["p"])
    return {f"acc_{t}": float(np.mean(h)) for t, h in sorted(hits.items())}


def eval_mcq(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
             batch_size: int = 32, max_new_tokens: int = 48, max_queries: int = 0) -> dict:
    """Multiple-choice accuracy (rar, gvq records of ``records``; others skipped)."""
    mcq = limit([r for r in records if r["task"] in ("rar", "gvq")], max_queries)
    return mcq_accuracy(predict(model, mcq, videos, tokenizer, batch_size, max_new_tokens))


@torch.no_grad()
def eval_loss(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
              batch_size: int = 32) -> dict:
    """Teacher-forced losses on ``records`` in ``model.variant``'s layout, averaged over batches."""
    was_training = model.training
    model.eval()
    exs = make_examples(records, videos, model.variant, tokenizer)
    collate = Collator(videos, tokenizer.pad_token_id, kind=video_kind(videos))
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    try:
        for i in range(0, len(exs), batch_size):
            batch = {k: v.to(device) for k, v in collate(exs[i:i + batch_size]).items()}
            out = model(**batch)
            for k in ("loss", "lm_loss", "grounding_loss", "consistency_loss"):
                sums[k] = sums.get(k, 0.0) + float(getattr(out, k)) * len(batch["input_ids"])
    finally:
        model.train(was_training)
    return {f"val_{k}": v / max(len(exs), 1) for k, v in sums.items()}


def random_tvg(records: Sequence[Mapping], seed: int = 0) -> dict:
    """The random-span baseline (:func:`d2lib.baselines.random_span`) on the tvg queries of
    ``records``, scored like :func:`tvg_scores`."""
    rng = np.random.default_rng(seed)
    tvg = [r for r in records if r.get("task", "tvg") == "tvg"]
    pred = [baselines.random_span(r["duration"], rng) for r in tvg]
    out = metrics.charades_sta(pred, [r["tgt"] for r in tvg])
    return {**{k: float(out[k]) for k in TVG_KEYS}, "n": int(out["n"])}


@torch.no_grad()
def evidence_similarity(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
                        batch_size: int = 32) -> dict:
    """Does the grounding query depend on the question? Mean cosine similarity of the first ``<evi>``
    feature e_1 (teacher-forced) between tvg queries of the **same** video and of **different** videos.
    Values near 1 for both mean e_1 ignores the query: every query of a video gets the same span (the
    "collapse" of DESIGN §9)."""
    was_training = model.training
    model.eval()
    tvg = [r for r in records if r["task"] == "tvg"]
    exs = make_examples(tvg, videos, model.variant, tokenizer)
    collate = Collator(videos, tokenizer.pad_token_id, kind=video_kind(videos))
    device = next(model.parameters()).device
    feats = []
    try:
        for i in range(0, len(exs), batch_size):
            batch = {k: v.to(device) for k, v in collate(exs[i:i + batch_size]).items()}
            out = model(**batch)
            first = torch.ones_like(batch["evi_batch"], dtype=torch.bool)
            first[1:] = batch["evi_batch"][1:] != batch["evi_batch"][:-1]
            feats.append(out.evi_feats[first].float().cpu())
    finally:
        model.train(was_training)
    if not feats or sum(len(f) for f in feats) != len(tvg):
        raise ValueError("every tvg query needs at least one <evi> in this variant's layout")
    e = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
    cos = e @ e.T
    vid = [r["video"] for r in tvg]
    same = torch.tensor([[a == b for b in vid] for a in vid])
    off = ~torch.eye(len(vid), dtype=torch.bool)
    return {"cos_same_video": float(cos[same & off].mean()), "cos_other_video": float(cos[~same].mean())}


def spans_of(generation) -> list:
    """The decoded spans of a generation's ``<evi>`` tokens, in order (seconds)."""
    return [list(v) if isinstance(v, (list, tuple)) else [v, v] for v in generation.values]


__all__ = ["TVG_KEYS", "predict", "answer_delimiter", "tvg_scores", "limit", "eval_tvg", "mcq_accuracy",
           "eval_mcq", "eval_loss", "random_tvg", "evidence_similarity", "spans_of"]
