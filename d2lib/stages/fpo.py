"""Stage ``fpo`` (lesson ``05_fpo``): factorized preference optimisation — and its DPO baseline.

D²VLM's third stage (paper §3.3) continues from the SFT model with pairs
(chosen = the GT response, rejected = one event-level perturbation of it, :mod:`d2lib.training.preference`)
and scores a whole response by

    log π(R) = Σ_i log p(y_i | y_<i, V, Q)                                       text term
             + Σ_k Σ_t log( y_kt·σ(s_kt) + (1 − y_kt)·(1 − σ(s_kt)) )          grounding term

(the text sum runs over the response tokens incl. ``<evi>``, ``</evi>``, ``<|end|>``; the grounding
sum over the response's ``<evi>`` with the soft targets y of *that* response's spans — a rejected
response is teacher-forced with its own, perturbed spans, injected into its ``<evi>`` too). The loss is

    L = sft_weight · SFT(chosen) + fpo_weight · mean_pairs −log σ(β · [log π(R_w) − log π(R_l)])

with β = 0.1 and no reference model, as the paper's released code. Switches (params ``fpo``):

* ``use_grounding: false`` — **DPO**: the same pairs and loop, log π(R) = the text term only. One
  mechanism, one switch (``fpo.run(..., use_grounding=False)``), so the ablation compares SFT → DPO
  with SFT → FPO on equal terms;
* ``use_reference: true`` — the standard DPO form, Δ − Δ_ref, with the SFT model as π_ref.

**Starting point.** The stage loads the *merged* SFT model (``<sft_dir>/final``) and puts a *fresh*
LoRA on it (``fpo.lora``; the heads/embeddings of ``fpo.head_modules`` train fully, as in SFT).
Continuing SFT's own adapter instead (``final/adapter`` on top of the aligned model) would make
peft's ``disable_adapter`` give the *aligned* model, not the SFT model; with a fresh adapter on
the merged weights, "adapter disabled" *is* the SFT model — exactly the reference DPO wants — and
training starts at it (LoRA's B = 0). The modules trained fully outside the LM (grounding heads,
frame pooling/projector) are not covered by ``disable_adapter``: the reference uses frozen copies
of them taken at the start (without LoRA, the reference is a frozen copy of the whole model).

Training goes through :func:`d2lib.training.train.fit` via :class:`PreferenceModel`, a wrapper whose
``forward(chosen, rejected, ...)`` runs the two teacher-forced passes and returns the loss with its
components (``loss.csv``: ``sft_loss``, ``fpo_loss``, ``reward_margin`` = mean β·Δ, the text and
grounding parts of Δ, training-batch preference accuracy overall and per family). The held-out val
pairs are scored before training and by ``eval_fn`` (``val.csv``: accuracy per family and type, mean
margin); after the last step ``eval_fn`` also runs the val tvg evaluation (:func:`d2lib.vlm.infer.eval_tvg`).

>>> cfg = FPOConfig()
>>> cfg.section, cfg.beta, cfg.use_grounding, cfg.use_reference
('fpo', 0.1, True, False)
>>> method_name(True), method_name(False)
('fpo', 'dpo')
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
import warnings
from collections import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from d2lib.training import data, preference, train
from d2lib.vlm import infer, lora, tokens
from d2lib.core import headline, io, paths, timing
from d2lib.stages import sft
from d2lib.core.config import check
from d2lib.core.losses import fpo_loss, grounding_loglik, response_logprob, sequence_logprob
from d2lib.vlm.model import D2VLM, D2Output, Variant
from d2lib.core.spans import soft_targets
from d2lib.training.train import SFTConfig, StageResult

FAMILIES = ("grounding", "text")
TYPES = tuple(preference.TYPES)  # shift, add, drop, merge, wrong_attribute, repeat
PAIR_TASKS = tuple(preference.TASK_TYPES)  # tvg, gvq, tal, dvc: the tasks a pair can be made from


# ============================================================================ params


@dataclass(frozen=True)
class FPOConfig(SFTConfig):
    """params section ``fpo`` (lesson 05_fpo): :class:`d2lib.training.train.SFTConfig` (schedule, LoRA, head
    modules, ``train_tower``, val generation) plus the preference knobs.

    ``tasks``: the training records pairs are made from (tasks of :data:`d2lib.training.preference.TASK_TYPES`);
    ``mix``: relative weight of each perturbation type (0 or absent: never used), ``per_record``
    rejected responses per record, ``max_iou``: a moved/added span's IoU limit
    (:func:`d2lib.training.preference.perturb`); ``beta``: β of −log σ(β·Δ); ``fpo_weight``/``sft_weight``: the
    weights of the preference term and of the SFT loss on the chosen response; ``use_grounding``: FPO
    (true) or DPO (false); ``use_reference``: subtract the SFT model's Δ (false: the paper's code);
    ``val_pairs_per_type``: held-out val pairs of each perturbation type scored for preference accuracy
    (0: all; :func:`val_pairs`), drawn with ``val_pair_seed`` (fixed, so every run scores the same pairs);
    ``eval_tvg``: also generate on the
    val tvg queries after the last step (``eval_max_queries`` of them; 0: all).
    """

    section: ClassVar[str] = "fpo"
    tasks: tuple[str, ...] = ("tvg",)  # keep equal to sft.tasks (see params.yaml)
    train_tower: bool = False  # the paper's FPO reads frozen-tower features too
    steps: int | None = 60
    lr: float = 5e-4
    lr_lora: float = 5e-4
    lr_heads: float = 5e-4
    log_every: int = 2
    eval_every: int = 20
    save_every: int = 0
    head_modules: tuple[str, ...] = ("embed_tokens", "lm_head", "frm_head", "evi_head", "pool", "temporal",
                                     "projector")
    beta: float = 0.1
    fpo_weight: float = 1.0
    sft_weight: float = 1.0
    use_grounding: bool = True
    use_reference: bool = False
    mix: dict[str, float] = field(default_factory=lambda: dict(preference.DEFAULT_MIX))
    per_record: int = 1
    max_iou: float = 0.3
    val_pairs_per_type: int = 24
    val_pair_seed: int = 0
    eval_tvg: bool = True

    def __post_init__(self):
        super().__post_init__()
        check(all(t in PAIR_TASKS for t in self.tasks), "fpo.tasks",
              f"pairs exist for {', '.join(PAIR_TASKS)} only (rar has no grounded event), got {list(self.tasks)}")
        check(not self.group_videos, "fpo.group_videos", "not supported for preference pairs (leave it false)")
        check(self.beta > 0 and math.isfinite(self.beta), "fpo.beta", f"must be > 0, got {self.beta}")
        check(self.fpo_weight >= 0 and self.sft_weight >= 0 and self.fpo_weight + self.sft_weight > 0,
              "fpo.fpo_weight", f"weights must be >= 0 and not both 0, got fpo {self.fpo_weight}, sft {self.sft_weight}")
        bad = sorted(set(self.mix) - set(TYPES))
        check(not bad, "fpo.mix", f"unknown perturbation types {bad} (known: {', '.join(TYPES)})")
        check(all(w >= 0 and math.isfinite(w) for w in self.mix.values()) and sum(self.mix.values()) > 0,
              "fpo.mix", f"weights must be >= 0 and not all 0, got {self.mix}")
        usable = {t for task in self.tasks for t in preference.TASK_TYPES[task]}
        check(any(self.mix.get(t, 0) > 0 for t in usable), "fpo.mix",
              f"no type with weight > 0 applies to fpo.tasks {list(self.tasks)}")
        check(self.per_record >= 1, "fpo.per_record", f"must be >= 1, got {self.per_record}")
        check(0 < self.max_iou <= 1, "fpo.max_iou", f"must be in (0, 1], got {self.max_iou}")
        check(self.val_pairs_per_type >= 0, "fpo.val_pairs_per_type", f"must be >= 0, got {self.val_pairs_per_type}")


def method_name(use_grounding: bool) -> str:
    """``"fpo"`` with the grounding term, ``"dpo"`` without."""
    return "fpo" if use_grounding else "dpo"


# ============================================================================ log π(R)


def grounding_terms(model: D2VLM, out: D2Output, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The grounding term of log π(R) per sample, (B,): Σ over the sample's ``<evi>`` of
    :func:`d2lib.core.losses.grounding_loglik` (span head; soft targets y_kt = α^(−distance) of the spans
    the batch was teacher-forced with, as in the SFT loss). A frame-level head (E.T. Chat) uses
    log softmax at its target frame; a variant without heads has no grounding term (zeros)."""
    B = batch["input_ids"].shape[0]
    zeros = out.logits.new_zeros(B, dtype=torch.float32)
    if out.scores.shape[0] == 0:
        return zeros + out.logits.sum() * 0.0
    ev_frames, smask = batch["evi_frames"], out.score_mask
    if model.variant.head == "frame":
        role = batch["evi_role"]
        target = torch.where(role == tokens.ROLE_END, ev_frames[:, 1], ev_frames[:, 0])
        logp = torch.log_softmax(out.scores.float().masked_fill(~smask, float("-inf")), -1)
        ll = logp.gather(1, target[:, None]).squeeze(1)
    else:
        y = soft_targets(ev_frames.tolist(), out.scores.shape[1], model.cfg.grounding_alpha).to(out.scores.device)
        ll = grounding_loglik(out.scores, y, smask)
    return zeros.index_add(0, batch["evi_batch"], ll.float())


def response_logps(model: D2VLM, batch: Mapping[str, torch.Tensor], out: D2Output | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, D2Output]:
    """``(text (B,), grounding (B,), output)``: the two terms of log π(R) for a teacher-forced batch
    (:func:`d2lib.vlm.tokens.collate`, right padding); runs ``model(**batch)`` unless ``out`` is given."""
    if out is None:
        out = model(**batch)
    return sequence_logprob(out.logits, batch["labels"]), grounding_terms(model, out, batch), out


# ============================================================================ pairs → examples


def make_pairs(records: Sequence[Mapping], cfg: FPOConfig, seed: int) -> list[preference.Pair]:
    """Preference pairs of the records of ``cfg.tasks`` (:func:`d2lib.training.preference.make_pairs` with
    ``cfg.mix``, ``cfg.per_record``, ``cfg.max_iou``), deterministic for ``seed``."""
    recs = [dict(r) for r in records if r["task"] in cfg.tasks]
    return preference.make_pairs(recs, seed, cfg.mix, per_record=cfg.per_record, max_iou=cfg.max_iou)


def val_pairs(records: Sequence[Mapping], cfg: FPOConfig) -> list[preference.Pair]:
    """The held-out pairs scored for preference accuracy: every record of a pair task (not only
    ``cfg.tasks``) corrupted in **every** way its template allows (equal mix, whatever ``cfg.mix`` is), then
    at most ``cfg.val_pairs_per_type`` pairs of each type (0: all; a fixed random subset, drawn with
    ``cfg.val_pair_seed``, so every run and every model scores the same pairs). Rare types (merge, repeat)
    get as many pairs as the cap allows; order of the records kept."""
    recs = [dict(r) for r in records if r["task"] in PAIR_TASKS]
    pairs = preference.make_pairs(recs, cfg.val_pair_seed, None, per_record=len(TYPES), max_iou=cfg.max_iou)
    cap = cfg.val_pairs_per_type
    if not cap:
        return pairs
    rng = np.random.default_rng(cfg.val_pair_seed)
    keep: set[int] = set()
    for t in TYPES:
        idx = [i for i, p in enumerate(pairs) if p.type == t]
        if len(idx) > cap:
            idx = rng.choice(idx, cap, replace=False).tolist()
        keep.update(idx)
    return [p for i, p in enumerate(pairs) if i in keep]


def pair_examples(pairs: Sequence[preference.Pair], videos: Mapping[str, torch.Tensor], variant: Variant,
                  tokenizer) -> list[dict]:
    """Each pair encoded twice in ``variant``'s layout: ``{chosen, rejected, family, type, task}``
    (``family``/``type``: indices into :data:`FAMILIES` / :data:`TYPES`)."""
    ch = data.make_examples([p.chosen for p in pairs], videos, variant, tokenizer)
    rj = data.make_examples([p.rejected for p in pairs], videos, variant, tokenizer)
    return [{"chosen": c, "rejected": r, "family": FAMILIES.index(p.family), "type": TYPES.index(p.type),
             "task": p.chosen["task"]} for p, c, r in zip(pairs, ch, rj)]


class LazyPairExamples(abc.Sequence):
    """:func:`pair_examples` encoded on first access (and kept): a short run visits only part of the
    training pairs, so encoding all of them up front would cost more than it trains."""

    def __init__(self, pairs: Sequence[preference.Pair], videos: Mapping[str, torch.Tensor], variant: Variant,
                 tokenizer):
        self.pairs, self.videos, self.variant, self.tokenizer = list(pairs), videos, variant, tokenizer
        missing = sorted({p.chosen["video"] for p in self.pairs} - set(videos))
        if missing:
            raise KeyError(f"{len(missing)} videos of the pairs are not in the cache, e.g. {missing[0]!r}")
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            self._cache[i] = pair_examples([self.pairs[i]], self.videos, self.variant, self.tokenizer)[0]
        return self._cache[i]


class PairCollator:
    """Batch function for :func:`d2lib.training.train.fit`: ``{"chosen": batch, "rejected": batch, "family",
    "type"}``, each side a :class:`d2lib.training.data.Collator` batch (right padding)."""

    def __init__(self, videos: Mapping[str, torch.Tensor], pad_id: int, kind: str = "tower_feats"):
        self.side = data.Collator(videos, pad_id, kind=kind)

    def __call__(self, examples: Sequence[dict]) -> dict:
        return {"chosen": self.side([e["chosen"] for e in examples]),
                "rejected": self.side([e["rejected"] for e in examples]),
                "family": torch.tensor([e["family"] for e in examples], dtype=torch.long),
                "type": torch.tensor([e["type"] for e in examples], dtype=torch.long)}


# ============================================================================ the training module


@dataclass
class PreferenceOutput:
    """What :meth:`PreferenceModel.forward` returns (``fit`` reads ``loss`` and ``parts``)."""

    loss: torch.Tensor
    parts: dict
    logp_chosen: torch.Tensor  # (B,) log π(R_w) as the method scores it (text [+ grounding])
    logp_rejected: torch.Tensor  # (B,)
    reward_margin: torch.Tensor  # (B,) β·Δ (minus the reference's, with a reference), detached
    chosen: D2Output


def _family_acc(margin: torch.Tensor, family: torch.Tensor | None, fam: int) -> torch.Tensor:
    if family is None:
        return margin.new_tensor(float("nan"))
    sel = family == fam
    return (margin[sel] > 0).float().mean() if bool(sel.any()) else margin.new_tensor(float("nan"))


class PreferenceModel(nn.Module):
    """The FPO / DPO objective around a :class:`~d2lib.vlm.model.D2VLM` ``policy`` (LoRA-wrapped or not).

    ``forward(chosen, rejected, family=None, type=None)`` runs the policy on both teacher-forced
    batches and returns :class:`PreferenceOutput` with
    ``loss = sft_weight · policy(chosen).loss + fpo_weight · fpo_loss(log π(R_w), log π(R_l))``.
    With ``use_reference`` the reference model is the policy as it is *now* (call this at the start):
    LoRA adapters disabled (peft ``disable_adapter``) plus frozen copies of the other trainable modules;
    without LoRA a frozen copy of the whole policy.
    """

    def __init__(self, policy: D2VLM, beta: float = 0.1, fpo_weight: float = 1.0, sft_weight: float = 1.0,
                 use_grounding: bool = True, use_reference: bool = False):
        super().__init__()
        self.policy = policy
        self.beta, self.fpo_weight, self.sft_weight = beta, fpo_weight, sft_weight
        self.use_grounding, self.use_reference = use_grounding, use_reference
        self.ref_model: D2VLM | None = None
        self.ref_modules = nn.ModuleDict()
        if use_reference:
            if lora.peft_submodules(policy.lm):
                for name, mod in policy.named_children():
                    if name != "lm" and any(p.requires_grad for p in mod.parameters()):
                        self.ref_modules[name] = lora.freeze(copy.deepcopy(mod))
            else:
                self.ref_model = lora.freeze(copy.deepcopy(policy)).eval()

    @contextlib.contextmanager
    def reference(self):
        """``with pm.reference() as ref:`` — ``ref`` is the frozen reference model (eval mode)."""
        if not self.use_reference:
            raise RuntimeError("this PreferenceModel was built with use_reference=False")
        if self.ref_model is not None:
            yield self.ref_model
            return
        pol, was_training = self.policy, self.policy.training
        live = {name: getattr(pol, name) for name in self.ref_modules}
        try:
            for name, frozen in self.ref_modules.items():
                setattr(pol, name, frozen)
            pol.eval()
            with pol.lm.disable_adapter():
                yield pol
        finally:
            for name, mod in live.items():
                setattr(pol, name, mod)
            pol.train(was_training)

    def score(self, model: D2VLM, batch: Mapping[str, torch.Tensor]):
        """``(log π (B,), text (B,), grounding (B,), output)`` under ``model`` for this method."""
        text, ground, out = response_logps(model, batch)
        return response_logprob(text, ground, self.use_grounding), text, ground, out

    def forward(self, chosen: dict, rejected: dict, family: torch.Tensor | None = None,
                type: torch.Tensor | None = None) -> PreferenceOutput:  # noqa: A002 (batch key)
        pc, tc, gc, out_c = self.score(self.policy, chosen)
        pr, tr, gr, _ = self.score(self.policy, rejected)
        ref_c = ref_r = None
        if self.use_reference:
            with torch.no_grad(), self.reference() as ref:
                ref_c, ref_r = self.score(ref, chosen)[0], self.score(ref, rejected)[0]
        pref, margin = fpo_loss(pc, pr, ref_c, ref_r, self.beta)
        loss = self.sft_weight * out_c.loss + self.fpo_weight * pref
        parts = {"sft_loss": out_c.loss, "lm_loss": out_c.lm_loss, "grounding_loss": out_c.grounding_loss,
                 "consistency_loss": out_c.consistency_loss, "fpo_loss": pref,
                 "reward_margin": margin.mean(), "text_margin": (tc - tr).mean().detach(),
                 "ground_margin": (gc - gr).mean().detach(),
                 "logp_chosen": pc.mean().detach(), "logp_rejected": pr.mean().detach(),
                 "acc": (margin > 0).float().mean(),
                 **{f"acc_{f}": _family_acc(margin, family, i) for i, f in enumerate(FAMILIES)}}
        return PreferenceOutput(loss, parts, pc.detach(), pr.detach(), margin, out_c)


def export_policy(model: PreferenceModel, folder: Path) -> None:
    """``export_fn`` for :func:`d2lib.training.train.fit`: the policy as SFT exports it (merged model that loads
    without peft, plus the adapter in ``adapter/``)."""
    sft.export_sft(model.policy, folder)


# ============================================================================ preference accuracy


@torch.no_grad()
def score_pairs(model: D2VLM, examples: Sequence[dict], videos: Mapping[str, torch.Tensor], pad_id: int,
                batch_size: int = 32, reference: D2VLM | None = None) -> list[dict]:
    """Teacher-forced log π of both responses of every encoded pair (:func:`pair_examples`), in eval
    mode: one row per pair ``{task, family, type, text_c, text_r, ground_c, ground_r}`` (and
    ``ref_*`` of the same under ``reference``)."""
    was = model.training
    model.eval()
    coll = PairCollator(videos, pad_id, kind=data.video_kind(videos))
    device = next(model.parameters()).device
    rows = []
    try:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            b = _to(coll(chunk), device)
            cols = {}
            for side, key in (("chosen", "c"), ("rejected", "r")):
                t, g, _ = response_logps(model, b[side])
                cols[f"text_{key}"], cols[f"ground_{key}"] = t.cpu(), g.cpu()
                if reference is not None:
                    t, g, _ = response_logps(reference, b[side])
                    cols[f"ref_text_{key}"], cols[f"ref_ground_{key}"] = t.cpu(), g.cpu()
            for j, e in enumerate(chunk):
                rows.append({"task": e["task"], "family": FAMILIES[e["family"]], "type": TYPES[e["type"]],
                             **{k: float(v[j]) for k, v in cols.items()}})
    finally:
        model.train(was)
    return rows


def _to(batch, device):
    from accelerate.utils import send_to_device

    return send_to_device(batch, device)


def pair_accuracy(rows: Sequence[Mapping], use_grounding: bool = True, beta: float = 0.1) -> dict:
    """Preference accuracy and mean implicit reward margin of scored pairs (:func:`score_pairs`):
    ``acc`` overall, ``acc_<family>``, ``acc_<type>`` = share of pairs with log π(R_w) > log π(R_l)
    (``use_grounding``: text + grounding, else text only; ties count as misses), ``margin`` = mean β·Δ,
    ``n_<type>`` pair counts. Types/families without pairs are left out."""
    if not rows:
        return {}

    def logp(r, side):
        return r[f"text_{side}"] + (r[f"ground_{side}"] if use_grounding else 0.0)

    d = np.array([logp(r, "c") - logp(r, "r") for r in rows])
    out = {"acc": float(np.mean(d > 0)), "margin": float(beta * d.mean()), "n": len(rows)}
    for key, names in (("family", FAMILIES), ("type", TYPES)):
        for name in names:
            sel = np.array([r[key] == name for r in rows])
            if sel.any():
                out[f"acc_{name}"] = float(np.mean(d[sel] > 0))
                if key == "type":
                    out[f"n_{name}"] = int(sel.sum())
    return out


def accuracy_table(rows: Sequence[Mapping], beta: float = 0.1) -> list[dict]:
    """Per perturbation type: ``{type, family, n, acc (text + grounding), acc_text (text only),
    margin (β·mean Δ, text + grounding)}`` — the lesson's before/after table."""
    out = []
    for t in TYPES:
        sel = [r for r in rows if r["type"] == t]
        if not sel:
            continue
        full, text = pair_accuracy(sel, True, beta), pair_accuracy(sel, False, beta)
        out.append({"type": t, "family": preference.TYPES[t], "n": len(sel), "acc": full["acc"],
                    "acc_text": text["acc"], "margin": full["margin"]})
    return out


def render_pair(pair: preference.Pair, variant: Variant) -> tuple[str, str]:
    """The chosen and rejected responses as people read them (each ``<evi>`` replaced by its span)."""
    out = []
    for rec in (pair.chosen, pair.rejected):
        resp = tokens.build_response(rec, variant)
        out.append(tokens.render_response(resp.text, resp.spans))
    return out[0], out[1]


def eval_tvg(model: D2VLM, records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], tokenizer,
             cfg: FPOConfig) -> tuple[dict, list[float]]:
    """:func:`d2lib.vlm.infer.eval_tvg` on the val tvg queries (``cfg.eval_max_queries`` of them, the same
    fixed subset for every model) plus each query's IoU (Charades protocol: the answer part's first
    span, 0 when unparsable) — for paired comparisons of two models on the same queries."""
    from d2lib.evaluation import metrics

    recs = infer.limit([r for r in records if r["task"] == "tvg"], cfg.eval_max_queries)
    answered = infer.predict(model, recs, videos, tokenizer, cfg.eval_batch_size, cfg.max_new_tokens)
    delim = infer.answer_delimiter(model.variant)
    ious = [float(metrics.charades_sta_from_text([r["a"]], [r["tgt"]], delimiter=delim,
                                                 evidence_fallback=False)["mIoU"]) for r in answered]
    return infer.tvg_scores(answered, delim), ious


# ============================================================================ the stage


@dataclass
class FPOResult(StageResult):
    """What :func:`run` returns: the trained policy (eval mode, LoRA attached), its tokenizer, the fit
    result, the output folder, the metrics (also the stage's JSON), the val pair rows before/after."""

    pairs_before: list[dict]
    pairs_after: list[dict]
    train_pairs: list[preference.Pair]
    val_pairs: list[preference.Pair]
    val_tvg_ious: list[float]  # per val tvg query (eval_tvg's fixed subset), after training


def out_dir_default() -> Path:
    return paths.artifacts("fpo")


def sft_dir_default() -> Path:
    return paths.artifacts("sft", mkdir=False)


def load_sft(sft_dir: str | Path | None = None):
    """``(merged SFT model in eval mode, tokenizer)`` of the SFT run in ``sft_dir`` (default ``artifacts/sft``):
    :func:`d2lib.stages.sft.load_model`."""
    return sft.load_model(sft_dir or sft_dir_default())


def sft_tasks(sft_dir: str | Path | None = None) -> list[str] | None:
    """The tasks the SFT model in ``sft_dir`` was trained on (its ``training.json``), or None if unknown."""
    try:
        f = sft.model_dir(Path(sft_dir or sft_dir_default())) / "training.json"
        return list(json.loads(f.read_text())["config"]["tasks"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def load_videos(model: D2VLM, cfg: FPOConfig, split: str, videos: set[str] | None, sft_dir: Path) -> dict:
    """What the model reads for ``split``: uint8 frames when ``cfg.train_tower``; else the tower
    features SFT cached in ``sft_dir`` (``features_{split}.safetensors``), or — when it cached none —
    computed now with the loaded model's own (frozen) tower, so they are never stale."""
    if cfg.train_tower:
        return data.load_frames(split, videos)
    p = data.features_path(split, sft_dir)
    if p.is_file():
        return data.load_features(p, videos)
    return data.tower_features(model, data.load_frames(split, videos))


def _project_path(path: str | Path) -> str:
    """``path`` relative to the project root when it lies inside it (metrics hold no absolute path)."""
    path = Path(path).absolute()
    try:
        return path.relative_to(paths.repo_root()).as_posix()
    except (ValueError, FileNotFoundError):
        return str(path)


def run(cfg: FPOConfig, variant: Variant, seed: int | None = None, out_dir: str | Path | None = None,
        sft_dir: str | Path | None = None, use_grounding: bool | None = None, use_reference: bool | None = None,
        progress: bool = True, resume: bool = False, score_before: bool = True,
        timing_name: str | None = "fpo") -> FPOResult:
    """Preference-optimise the SFT model in ``sft_dir`` (default ``artifacts/sft``) into ``out_dir``
    (default ``artifacts/fpo``) with seed ``seed`` (default ``cfg.seed``).

    ``use_grounding`` (default ``cfg.use_grounding``): FPO (True) or DPO (False); ``use_reference``
    (default ``cfg.use_reference``). ``score_before``: score the val pairs with the SFT model first
    (the before/after comparison; it is the policy at step 0). Writes ``loss.csv``, ``val.csv``,
    ``pairs_val.csv`` (per val pair: log π terms before/after), ``final/`` (merged model +
    ``adapter/``) and returns an :class:`FPOResult` whose ``metrics`` hold the method, pair counts,
    val preference accuracy before/after, the val tvg scores after and the final losses. The wall times
    (``FPOResult.seconds``) go to the timing log ``timing_name`` (:mod:`d2lib.core.timing`; ``None``: not
    logged — an ablation cell logs them in its own)."""
    seed = cfg.seed if seed is None else seed
    use_grounding = cfg.use_grounding if use_grounding is None else use_grounding
    use_reference = cfg.use_reference if use_reference is None else use_reference
    cfg = dataclasses.replace(cfg, seed=seed, use_grounding=use_grounding, use_reference=use_reference)
    out_dir = Path(out_dir or out_dir_default())
    sft_dir = Path(sft_dir or sft_dir_default())
    out_dir.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tok = load_sft(sft_dir)
    seen = sft_tasks(sft_dir)
    if seen is not None and set(cfg.tasks) - set(seen):
        warnings.warn(f"fpo.tasks {list(cfg.tasks)} include tasks the SFT model never trained on ({seen}): the "
                      "SFT term on their chosen responses teaches the task itself, so a gain is not FPO's alone")
    train_recs = [r for r in data.load_records("train") if r["task"] in cfg.tasks]
    val_recs = data.load_records("val")
    tr_pairs = make_pairs(train_recs, cfg, seed)
    va_pairs = val_pairs(val_recs, cfg)
    val_tvg = [r for r in val_recs if r["task"] == "tvg"]
    videos = load_videos(model, cfg, "train", {p.chosen["video"] for p in tr_pairs}, sft_dir)
    val_videos = load_videos(model, cfg, "val", None, sft_dir)
    sft.prepare_model(model, cfg, variant, seed)  # fresh LoRA (B = 0): the policy starts at the SFT model
    examples = LazyPairExamples(tr_pairs, videos, variant, tok)
    val_examples = pair_examples(va_pairs, val_videos, variant, tok)
    pm = PreferenceModel(model, cfg.beta, cfg.fpo_weight, cfg.sft_weight, use_grounding, use_reference)
    secs["setup"] = time.perf_counter() - t0

    before: list[dict] = []
    if score_before:
        t0 = time.perf_counter()
        before = score_pairs(model, val_examples, val_videos, tok.pad_token_id, cfg.eval_batch_size)
        secs["score_before"] = time.perf_counter() - t0

    total = train.total_steps(cfg, len(examples))
    tvg_ious: list[float] = []
    last_rows: list[dict] = []  # the val pairs scored after the last step

    def eval_fn(wrapper: PreferenceModel, step: int) -> dict:
        rows = score_pairs(wrapper.policy, val_examples, val_videos, tok.pad_token_id, cfg.eval_batch_size)
        if step == total:
            last_rows[:] = rows
        res = {f"val_{k}": v for k, v in pair_accuracy(rows, True, cfg.beta).items() if not k.startswith("n")}
        res.update({f"val_text_{k}": v for k, v in pair_accuracy(rows, False, cfg.beta).items()
                    if k in ("acc", "acc_grounding", "acc_text", "margin")})
        if cfg.eval_tvg and step == total:
            scores, ious = eval_tvg(wrapper.policy, val_tvg, val_videos, tok, cfg)
            res.update(scores)
            tvg_ious[:] = ious
        return res

    coll = PairCollator(videos, tok.pad_token_id, kind=data.video_kind(videos))
    res = train.fit(pm, examples, cfg, out_dir, coll, eval_fn=eval_fn, resume=resume, export_fn=export_policy,
                    progress=progress)
    secs["train"] = res.seconds
    model.eval()
    after = list(last_rows)
    if not after:  # a resumed run that was already complete: eval_fn did not run
        t0 = time.perf_counter()
        after = score_pairs(model, val_examples, val_videos, tok.pad_token_id, cfg.eval_batch_size)
        secs["score_after"] = time.perf_counter() - t0
    _write_pair_rows(out_dir / "pairs_val.csv", before, after)

    last_val = res.val[-1] if res.val else {}
    metrics = {
        "method": method_name(use_grounding), "use_grounding": use_grounding, "use_reference": use_reference,
        "beta": cfg.beta,
        "variant": dataclasses.asdict(variant), "seed": seed, "steps": res.steps, "sft_dir": _project_path(sft_dir),
        "tasks": list(cfg.tasks), "sft_tasks": seen,
        "pairs": {"train": len(tr_pairs), "val": len(va_pairs), "train_types": preference.type_counts(tr_pairs),
                  "val_types": preference.type_counts(va_pairs)},
        "val_tvg": {k: v for k, v in last_val.items() if k in (*infer.TVG_KEYS, "parse_failure_rate", "n")
                    or k.startswith("evi_")},
        "pref_before": pair_accuracy(before, True, cfg.beta) if before else {},
        "pref_after": pair_accuracy(after, True, cfg.beta),
        "pref_text_before": pair_accuracy(before, False, cfg.beta) if before else {},
        "pref_text_after": pair_accuracy(after, False, cfg.beta),
        "train": {k: res.last.get(k) for k in ("loss", "sft_loss", "fpo_loss", "reward_margin", "text_margin",
                                                 "ground_margin", "acc")},
        "trainable": lora.trainable_summary(model),
    }
    if timing_name:
        timing.log(timing_name, **{f"{k}_s": v for k, v in secs.items()}, steps_per_s=res.steps_per_s)
    return FPOResult(model, tok, res, out_dir, metrics, secs, before, after, tr_pairs, va_pairs, tvg_ious)


def _write_pair_rows(path: Path, before: Sequence[Mapping], after: Sequence[Mapping]) -> Path:
    """``pairs_val.csv``: one row per val pair with its log π terms after training (and before)."""
    import pandas as pd

    df = pd.DataFrame(list(after))
    if before:
        b = pd.DataFrame(list(before))
        for c in ("text_c", "text_r", "ground_c", "ground_r"):
            df[f"before_{c}"] = b[c]
    return io.write_csv(df, path)


def export_plots(res: FPOResult, plots_dir: str | Path | None = None) -> dict[str, Path]:
    """The stage's DVC plots: ``fpo_loss.csv`` (step + loss terms, margins, batch accuracies),
    ``fpo_val.csv`` (val pair accuracy over training, step 0 = the SFT model), ``fpo_types.csv``
    (per perturbation type: accuracy before/after, text + grounding and text only)."""
    import pandas as pd

    d = Path(plots_dir) if plots_dir else paths.artifacts("plots")
    d.mkdir(parents=True, exist_ok=True)
    cols = ("loss", "sft_loss", "fpo_loss", "reward_margin", "text_margin", "ground_margin", "logp_chosen",
            "logp_rejected", "acc", "acc_grounding", "acc_text", "lm_loss", "grounding_loss", "consistency_loss")
    out = {"loss": train.export_loss_plot(res.out_dir / "loss.csv", d / "fpo_loss.csv", cols)}
    beta = res.metrics.get("beta", 0.1)
    rows = []
    if res.pairs_before:
        rows.append({"step": 0, **{f"val_{k}": v for k, v in res.metrics["pref_before"].items()
                                   if not k.startswith("n")},
                     **{f"val_text_{k}": v for k, v in res.metrics["pref_text_before"].items()
                        if k in ("acc", "acc_grounding", "acc_text", "margin")}})
    keep = lambda k: k.startswith("val_")  # noqa: E731
    rows += [{"step": int(r["step"]), **{k: v for k, v in r.items() if keep(k)}} for r in res.fit.val]
    out["val"] = io.write_csv(pd.DataFrame(rows), d / "fpo_val.csv")
    before = {r["type"]: r for r in accuracy_table(res.pairs_before, beta)} if res.pairs_before else {}
    table = []
    for r in accuracy_table(res.pairs_after, beta):
        b = before.get(r["type"], {})
        table.append({"type": r["type"], "family": r["family"], "n": r["n"],
                      "acc_before": b.get("acc"), "acc_after": r["acc"],
                      "acc_text_before": b.get("acc_text"), "acc_text_after": r["acc_text"]})
    out["types"] = io.write_csv(pd.DataFrame(table), d / "fpo_types.csv")
    return out


def _read_pair_rows(path: Path) -> tuple[list[dict], list[dict]]:
    """``pairs_val.csv`` back to the (before, after) rows :func:`_write_pair_rows` wrote."""
    import pandas as pd

    df = pd.read_csv(path)
    after_cols = [c for c in df.columns if not c.startswith("before_")]
    after = df[after_cols].to_dict(orient="records")
    if not any(c.startswith("before_") for c in df.columns):
        return [], after
    before = df[after_cols].copy()
    for c in ("text_c", "text_r", "ground_c", "ground_r"):
        before[c] = df[f"before_{c}"]
    return before.to_dict(orient="records"), after


def compare_with_sft(res: FPOResult, cfg: FPOConfig, sft_dir: str | Path | None = None, n_boot: int = 1000) -> dict:
    """The SFT model and the trained policy on the same val tvg queries (:func:`eval_tvg`; the policy's from
    the run when ``cfg.eval_tvg`` scored them): ``{"val_tvg": policy scores, "val_tvg_sft": SFT scores,
    "val_tvg_delta": {R1@0.5, R1@0.7, mIoU: policy − SFT, paired per query, with a 95% bootstrap interval
    (:func:`d2lib.core.stats.paired_bootstrap_diff`)}, "ious": {"fpo": [...], "sft": [...]}}``."""
    from d2lib.core import stats

    sft_dir = Path(sft_dir or sft_dir_default())
    sft_model, tok = load_sft(sft_dir)
    val_recs = data.load_records("val")
    val_videos = load_videos(sft_model, cfg, "val", None, sft_dir)
    sft_tvg, sft_ious = eval_tvg(sft_model, val_recs, val_videos, tok, cfg)
    if res.val_tvg_ious:
        fpo_tvg, fpo_ious = res.metrics["val_tvg"], res.val_tvg_ious
    else:  # cfg.eval_tvg was off during training
        fpo_tvg, fpo_ious = eval_tvg(res.model, val_recs, val_videos, tok, cfg)
    a, b = np.array(fpo_ious), np.array(sft_ious)
    delta = {}
    for key, fa, fb in (("R1@0.5", a >= 0.5, b >= 0.5), ("R1@0.7", a >= 0.7, b >= 0.7), ("mIoU", a, b)):
        ci = stats.paired_bootstrap_diff(fa, fb, n_boot=n_boot, seed=0)
        delta[key] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high}
    return {"val_tvg": fpo_tvg, "val_tvg_sft": sft_tvg, "val_tvg_delta": delta,
            "ious": {"fpo": [float(x) for x in fpo_ious], "sft": [float(x) for x in sft_ious]}}


def write_results(res: FPOResult, cfg: FPOConfig, variant_name: str) -> dict:
    """What stage ``fpo`` leaves besides its folder: the plots (:func:`export_plots`), the comparison with the
    SFT model (:func:`compare_with_sft`; both models' per-query IoUs in ``<out_dir>/val_tvg_ious.json``), the
    full results (``artifacts/results/fpo.json``) and their headline numbers (``artifacts/metrics/fpo.json``).
    Returns the results."""
    import pandas as pd

    files = export_plots(res)
    cmp = compare_with_sft(res, cfg)
    io.write_json(res.out_dir / "val_tvg_ious.json", cmp.pop("ious"))
    keys = ("method", "use_grounding", "use_reference", "beta", "seed", "steps", "tasks", "sft_tasks", "pairs",
            "pref_before", "pref_after", "pref_text_before", "pref_text_after", "train", "trainable")
    results = {**{k: res.metrics[k] for k in keys}, "variant": variant_name, **cmp,
               "pref_types": pd.read_csv(files["types"]).to_dict(orient="records")}
    headline.write("fpo", results)
    return results


def load_result(cfg: FPOConfig, out_dir: str | Path | None = None) -> FPOResult:
    """The finished stage read back (what lesson 05 shows): the policy (merged) and its tokenizer, the run's
    logs (:func:`d2lib.training.train.read_fit`), the results :func:`write_results` wrote, the val pair rows
    before/after (``pairs_val.csv``), the pairs (rebuilt: :func:`make_pairs` is deterministic) and the
    policy's per-query val IoUs."""
    out_dir = Path(out_dir or out_dir_default())
    metrics = sft.scores_from_json(json.loads(headline.results_path("fpo").read_text()), ("val_tvg", "val_tvg_sft"))
    model, tok = sft.load_model(out_dir)
    before, after = _read_pair_rows(out_dir / "pairs_val.csv")
    tr = make_pairs([r for r in data.load_records("train") if r["task"] in cfg.tasks], cfg, metrics["seed"])
    va = val_pairs(data.load_records("val"), cfg)
    ious = json.loads((out_dir / "val_tvg_ious.json").read_text())["fpo"]
    return FPOResult(model, tok, train.read_fit(out_dir), out_dir, metrics, timing.seconds("fpo"), before, after,
                     tr, va, ious)


def main(argv=None) -> None:
    """``python -m d2lib.stages.fpo [--variant NAME] [--seed S] [--profile P]``: the stage as DVC runs it
    (:func:`run` from ``artifacts/sft`` into ``artifacts/fpo`` with ``fpo.use_grounding`` choosing FPO or DPO,
    then :func:`write_results`)."""
    from d2lib.core import config

    args, cfg, variant = config.stage_command("fpo", "python -m d2lib.stages.fpo", __doc__.splitlines()[0], argv,
                                              variant=True)
    with timing.timer() as t:
        res = run(cfg, variant, args.seed, progress=False)
        results = write_results(res, cfg, args.variant)
    timing.log("fpo", seconds=t.seconds)
    print(json.dumps({"val_tvg_delta": results["val_tvg_delta"], "pref_after": results["pref_after"]}, indent=1))


__all__ = ["FPOConfig", "FAMILIES", "TYPES", "PAIR_TASKS", "method_name", "grounding_terms", "response_logps",
           "make_pairs", "val_pairs", "pair_examples", "LazyPairExamples", "PairCollator", "PreferenceModel", "PreferenceOutput",
           "export_policy", "score_pairs", "pair_accuracy", "accuracy_table", "render_pair", "eval_tvg", "FPOResult", "load_sft", "sft_tasks",
           "load_videos", "run", "export_plots", "compare_with_sft", "write_results", "load_result", "main"]


if __name__ == "__main__":
    main()
