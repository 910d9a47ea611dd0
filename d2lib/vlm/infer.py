"""Inference and validation scores during training — lessons ``03_align`` and ``04_sft_lora``.

* :func:`predict` fills each record's ``a`` (the answer as people read it: every ``<evi>`` replaced
  by its decoded span) by greedy, KV-cached generation in batches (prompts sorted by length, left
  padding), evidence injection included;
* :func:`eval_tvg` is the Charades-STA protocol on the answer part (after ``</evi>``) of tvg
  answers — R@1 at IoU 0.3/0.5/0.7 and mIoU over *all* queries (:mod:`d2lib.evaluation.metrics`), the
  ``eval_fn`` of :func:`d2lib.training.train.fit` in stage ``sft``;
* :func:`eval_mcq` is multiple-choice accuracy (rar/gvq), the ``eval_fn`` of stage ``align``;
* :func:`random_tvg` is the random-span baseline on the same queries (:mod:`d2lib.evaluation.baselines`).

>>> random_tvg([{"tgt": [0, 10], "duration": 10}], seed=0)["n"]
1
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from d2lib.evaluation import baselines, metrics
from d2lib.training.data import Collator, make_examples, video_kind
from d2lib.core.parsing import EVIDENCE_DELIMITER, parse_option, split_evidence

TVG_KEYS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")


@torch.no_grad()
def predict(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
            batch_size: int = 32, max_new_tokens: int = 48, return_generations: bool = False, keep=None):
    """Copies of ``records`` with ``a`` = the model's rendered answer (same order).

    ``videos``: frames or cached tower features per video (:func:`d2lib.training.data.video_kind`). The
    prompt layout follows ``model.variant``. With ``return_generations`` also returns the
    :class:`d2lib.vlm.model.Generation` of each record (token ids, decoded spans, per-frame probabilities).
    ``keep``: the token budget's keep masks (DiffFP) when ``videos`` are features
    (:meth:`d2lib.vlm.tokens.TokenBudget.keep_masks` of the variant's budget).
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


def other_query(answered: Sequence[Mapping]) -> list[int | None]:
    """For each tvg record, the index of *another* query of the same video (the next one of that
    video in list order, cyclically); ``None`` for a video asked only once.

    >>> other_query([{"video": "a"}, {"video": "b"}, {"video": "a"}, {"video": "a"}])
    [2, None, 3, 0]
    """
    by_video: dict = {}
    for i, r in enumerate(answered):
        by_video.setdefault(r["video"], []).append(i)
    out: list[int | None] = [None] * len(answered)
    for idx in by_video.values():
        if len(idx) > 1:
            for j, i in enumerate(idx):
                out[i] = idx[(j + 1) % len(idx)]
    return out


def query_control(answered: Sequence[Mapping], delimiter: str | None = EVIDENCE_DELIMITER) -> dict:
    """Does the answer depend on the query? (lesson ``04_sft_lora``: "where" is learned before "which").

    - ``ctrl_R1@0.5`` / ``ctrl_R1@0.7``: each query scored with the answer the model gave to *another*
      query of the same video (:func:`other_query`). A model that ignores the query scores the same
      as with its own answer; one that uses it scores much lower. ``true_R1@0.5`` / ``true_R1@0.7``:
      the model's own answers on the same queries (videos asked more than once), for comparison.
    - ``any_event_R1@0.5``: the share of answers that hit (IoU ≥ 0.5) *some* queried event of the
      video — high any-event and low true R@0.5 means it finds events but not the asked-for one.
    Answers are read like :func:`tvg_scores` (the answer part after ``delimiter``).

    >>> recs = [{"video": "v", "tgt": [0, 2], "a": "1 - 2 </evi> The event happens in 0 - 2."},
    ...         {"video": "v", "tgt": [5, 9], "a": "5 - 9 </evi> The event happens in 5 - 9."}]
    >>> c = query_control(recs)
    >>> c["true_R1@0.5"], c["ctrl_R1@0.5"], c["any_event_R1@0.5"], c["n_ctrl"]
    (1.0, 0.0, 1.0, 2)
    """
    other = other_query(answered)
    keep = [i for i, o in enumerate(other) if o is not None]
    texts = [answered[i]["a"] for i in keep]
    gts = [answered[i]["tgt"] for i in keep]
    res: dict = {"n_ctrl": len(keep)}
    if keep:
        true = metrics.charades_sta_from_text(texts, gts, delimiter=delimiter, evidence_fallback=False)
        ctrl = metrics.charades_sta_from_text([answered[other[i]]["a"] for i in keep], gts, delimiter=delimiter,
                                              evidence_fallback=False)
        for k in ("R1@0.5", "R1@0.7"):
            res[f"true_{k}"], res[f"ctrl_{k}"] = float(true[k]), float(ctrl[k])
    else:
        res.update({f"{w}_{k}": float("nan") for w in ("true", "ctrl") for k in ("R1@0.5", "R1@0.7")})
    events: dict = {}
    for r in answered:
        events.setdefault(r["video"], [])
        if list(r["tgt"]) not in events[r["video"]]:
            events[r["video"]].append(list(r["tgt"]))
    hits = []
    for r in answered:  # R@1@0.5 of this answer against each event: > 0 iff it hits one of them
        evs = events[r["video"]]
        sc = metrics.charades_sta_from_text([r["a"]] * len(evs), evs, delimiter=delimiter, evidence_fallback=False)
        hits.append(float(sc["R1@0.5"]) > 0)
    res["any_event_R1@0.5"] = float(np.mean(hits)) if hits else float("nan")
    return res


def _relation(meta: Mapping, a: Mapping, b: Mapping) -> str:
    """How event ``b`` differs from event ``a`` of the same Shapes video (``meta``: its world description)."""
    oa, ob = meta["objects"][a["object"]], meta["objects"][b["object"]]
    if a["object"] == b["object"]:
        return "same object, other action"
    action = ", same action" if a["kind"] == b["kind"] else ""
    if oa["colour"] == ob["colour"]:
        return "other object of the same colour (shape differs)" + action
    if oa["shape"] == ob["shape"]:
        return "other object of the same shape (colour differs)" + action
    return "other object (colour and shape differ)" + action


def confusions(answered: Sequence[Mapping], metas: Mapping[str, Mapping],
               delimiter: str | None = EVIDENCE_DELIMITER) -> dict[str, int]:
    """Which event does a wrong answer find instead? For each tvg answer that misses its event (IoU < 0.5)
    but hits another event of the video (IoU ≥ 0.5, the best one), how that event differs from the asked-for
    one (:func:`_relation`: same object with another action, or another object that shares the colour or the
    shape). Counts per relation, plus ``"no event hit"`` and ``"correct"``. ``metas``: the Shapes world per
    video (``{video: {objects, events}}``, as :func:`d2lib.world.records.load_shapes` returns them) — it tells
    whether the objects a query must tell apart differ only by a few pixels of shape.

    >>> meta = {"objects": [{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "red"}],
    ...         "events": [{"object": 0, "kind": "grow", "start": 0, "end": 4, "caption": "the red circle grows"},
    ...                    {"object": 1, "kind": "grow", "start": 10, "end": 14, "caption": "the red square grows"}]}
    >>> recs = [{"video": "v", "tgt": [0, 4], "g": ["the red circle grows"], "a": "10 - 14 </evi> The event happens in 10 - 14."}]
    >>> confusions(recs, {"v": meta})
    {'other object of the same colour (shape differs), same action': 1}
    """
    out: dict[str, int] = {}
    for r in answered:
        meta = metas[r["video"]]
        evs = meta["events"]
        target = next((e for e in evs if [e["start"], e["end"]] == list(r["tgt"]) and
                       (not r.get("g") or e["caption"] == r["g"][0])), None)
        if target is None:
            raise ValueError(f"record {r.get('idx')}: no event of {r['video']} has span {r['tgt']}")
        iou = lambda e: metrics.charades_sta_from_text([r["a"]], [[e["start"], e["end"]]], delimiter=delimiter,  # noqa: E731
                                                       evidence_fallback=False)["mIoU"]
        if iou(target) >= 0.5:
            key = "correct"
        else:
            best = max((e for e in evs if e is not target), key=iou, default=None)
            key = _relation(meta, target, best) if best is not None and iou(best) >= 0.5 else "no event hit"
        out[key] = out.get(key, 0) + 1
    return out


def limit(records: Sequence[Mapping], max_queries: int = 0, seed: int = 0) -> list:
    """All records (``max_queries == 0``) or a fixed random subset of ``max_queries`` (order kept)."""
    if not max_queries or max_queries >= len(records):
        return list(records)
    keep = np.sort(np.random.default_rng(seed).choice(len(records), max_queries, replace=False))
    return [records[i] for i in keep]


def eval_tvg(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
             batch_size: int = 32, max_new_tokens: int = 48, max_queries: int = 0) -> dict:
    """Val tvg scores of ``model`` (:func:`tvg_scores` over :func:`predict`) with the query-use
    measures (:func:`query_control`, :func:`e1_query_share`); non-tvg records are skipped,
    ``max_queries`` > 0 scores a fixed subset."""
    tvg = limit([r for r in records if r["task"] == "tvg"], max_queries)
    answered = predict(model, tvg, videos, tokenizer, batch_size, max_new_tokens)
    out = tvg_scores(answered, answer_delimiter(model.variant))
    out.update(query_control(answered, answer_delimiter(model.variant)))
    share = e1_query_share(model, tvg, videos, tokenizer, batch_size)
    out["e1_query_share"] = float("nan") if share is None else share
    return out


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
    """The random-span baseline (:func:`d2lib.evaluation.baselines.random_span`) on the tvg queries of
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
    A cosine near 1 is not by itself proof that e_1 ignores the query (a shared component makes it high
    already at initialisation): :func:`e1_query_share` and :func:`query_control` are the measures the
    lessons use."""
    tvg = [r for r in records if r["task"] == "tvg"]
    try:
        feats = first_evi_features(model, tvg, videos, tokenizer, batch_size)
    except ValueError:
        raise ValueError("every tvg query needs at least one <evi> in this variant's layout") from None
    e = torch.nn.functional.normalize(feats, dim=-1)
    cos = e @ e.T
    vid = [r["video"] for r in tvg]
    same = torch.tensor([[a == b for b in vid] for a in vid])
    off = ~torch.eye(len(vid), dtype=torch.bool)
    return {"cos_same_video": float(cos[same & off].mean()), "cos_other_video": float(cos[~same].mean())}


def within_group_share(x: torch.Tensor, groups: Sequence) -> float:
    """Share of the total variance of the rows of ``x`` (N, D) that lies *within* groups (N labels):
    Σ‖x_i − mean of its group‖² / Σ‖x_i − overall mean‖². 0: every row equals its group's mean;
    near 1: the group explains nothing. Groups of one row carry no within-group variance.

    >>> x = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    >>> round(within_group_share(x, ["a", "a", "b", "b"]), 4)  # within 4 of total 104
    0.0385
    """
    x = x.double()
    total = float(((x - x.mean(0)) ** 2).sum())
    labels = list(groups)
    within = 0.0
    for g in dict.fromkeys(labels):
        rows = x[[i for i, v in enumerate(labels) if v == g]]
        within += float(((rows - rows.mean(0)) ** 2).sum())
    return within / total if total > 0 else float("nan")


@torch.no_grad()
def first_evi_features(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
                       batch_size: int = 32, keep=None) -> torch.Tensor:
    """e₁ of each record (N, D): the ``evi_head`` feature at the position that predicts its first
    ``<evi>``, teacher-forced in ``model.variant``'s layout (the same vector greedy decoding scores
    when its first ``<evi>`` comes out as in the target). ``keep``: DiffFP keep masks, as :func:`predict`."""
    was_training = model.training
    model.eval()
    exs = make_examples(records, videos, model.variant, tokenizer, keep=keep)
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
    e = torch.cat(feats) if feats else torch.zeros(0, 0)
    if len(e) != len(records):
        raise ValueError("every record needs at least one <evi> in this variant's layout")
    return e


def e1_query_share(model, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
                   batch_size: int = 32, keep=None) -> float | None:
    """How much of e₁ comes from the query: :func:`within_group_share` of the tvg queries' e₁ grouped
    by video (only videos asked more than once). Near 0: every query of a video gets the same e₁ (the
    query is ignored); well above 0: e₁ moves with the query. ``None`` for a variant without ``<evi>``."""
    if model.variant.head == "none":
        return None
    vids = [r["video"] for r in records if r["task"] == "tvg"]
    multi = {v for v in vids if vids.count(v) > 1}
    tvg = [r for r in records if r["task"] == "tvg" and r["video"] in multi]
    if len(tvg) < 2:
        return None
    e = first_evi_features(model, tvg, videos, tokenizer, batch_size, keep)
    return within_group_share(e, [r["video"] for r in tvg])


def spans_of(generation) -> list:
    """The decoded spans of a generation's ``<evi>`` tokens, in order (seconds)."""
    return [list(v) if isinstance(v, (list, tuple)) else [v, v] for v in generation.values]


__all__ = ["other_query", "query_control", "confusions", "within_group_share", "first_evi_features", "e1_query_share",
           "TVG_KEYS", "predict", "answer_delimiter", "tvg_scores", "limit", "eval_tvg", "mcq_accuracy",
           "eval_mcq", "eval_loss", "random_tvg", "evidence_similarity", "spans_of"]
