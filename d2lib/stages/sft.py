"""Stage ``sft`` (lesson ``04_sft_lora``): LoRA fine-tuning in the factorized ``<evi>`` format.

From the aligned base model (stage ``align``), as in the paper (§4): the vision tower is frozen and
its features come from the cache written by ``align``; LoRA adapters (peft) go on the LM's attention
projections (``sft.lora``: rank r, scale α/r, target modules); the token embeddings, the LM head and
the two grounding heads (``sft.head_modules``) are trained fully. The loss is the variant's SFT
objective, CE(response) + w_g·BCE(grounding) + w_c·L1(consistency).

:func:`run` takes the variant and the seed as arguments, so the ablation stage runs the same function
for every (variant, seed) cell into its own folder. It writes to ``out_dir``:
``loss.csv``, ``val.csv`` (tvg scores on the val split), ``final/`` — the model with LoRA merged
(``D2VLM.from_pretrained``) plus the adapter itself in ``final/adapter`` — and checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from d2lib.stages import align
from d2lib.training import data, train
from d2lib.vlm import infer, lora, tokens
from d2lib.core import headline, paths, timing
from d2lib.vlm.model import D2VLM, Variant
from d2lib.training.train import SFTConfig, StageResult


@dataclass
class SFTResult(StageResult):
    """What :func:`run` returns: the trained model (eval mode, LoRA still attached), its tokenizer,
    the fit result, the output folder, the final metrics and wall times in seconds."""


def out_dir_default() -> Path:
    return paths.artifacts("sft")


def prepare_model(model: D2VLM, cfg: SFTConfig, variant: Variant, seed: int) -> D2VLM:
    """Switch ``model`` to ``variant`` and make the SFT parameters trainable: with ``cfg.lora.enabled``
    LoRA on ``cfg.lora.target_modules`` + ``cfg.head_modules`` fully (:func:`d2lib.vlm.lora.prepare_for_lora`);
    without, everything but the vision tower. The tower is frozen (its features are cached) unless
    ``cfg.train_tower``; then it trains fully at ``cfg.lr`` on frames."""
    torch.manual_seed(seed)  # a peer's new module (TimeChat's time embedding) is drawn here, from the seed
    model.variant = variant  # (not from whatever loading the aligned model left in the generator)
    torch.manual_seed(seed)  # LoRA's A matrices are drawn here
    if cfg.lora.enabled:
        lora.prepare_for_lora(model, cfg.lora, full_modules=cfg.head_modules, lm_attr="lm", section=cfg.section)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        lora.freeze(model.tower)
    if cfg.train_tower:
        for p in model.tower.parameters():
            p.requires_grad_(True)
    for name in model.mechanism_modules():  # the peers' new modules (lesson 08_peers) train fully at lr
        for p in getattr(model, name).parameters():
            p.requires_grad_(True)
    return model


def prepare_vocabulary(model: D2VLM, tokenizer, variant: Variant) -> list[int]:
    """Add what ``variant`` writes to the aligned tokenizer (VTG-LLM time tokens, words the tiny
    tokenizer lacks — the time representation's ``prepare_tokenizer``) and give the LM mean-initialised
    embedding rows for them (:func:`d2lib.vlm.tokens.mean_init_rows`). Returns the new ids (none for
    every D²VLM row). Call before :func:`prepare_model` (LoRA copies the embeddings)."""
    new_ids = tokens.time_rep(variant).prepare_tokenizer(tokenizer)
    tokens.mean_init_rows(model.lm, new_ids)
    return new_ids


def consistency_hook(model: D2VLM, variant: Variant):
    """``before_step`` hook for :func:`d2lib.training.train.fit`: the consistency term is off (scale 0) for the
    first ``variant.consistency_start`` of the steps and on (scale 1) afterwards.

    >>> from types import SimpleNamespace as NS
    >>> m = NS(); hook = consistency_hook(m, NS(consistency_start=0.5))
    >>> hook(50, 100); m.consistency_scale, hook(51, 100), m.consistency_scale
    (0.0, None, 1.0)
    """

    def hook(step: int, total: int) -> None:
        model.consistency_scale = 1.0 if step > variant.consistency_start * total else 0.0

    return hook


def export_sft(model: D2VLM, folder: Path) -> None:
    """``export_fn`` for :func:`d2lib.training.train.fit`: the merged model (loads without peft) and, with
    LoRA, the adapter (``folder/adapter``, peft format) for FPO to continue from."""
    from d2lib.vlm.model import no_progress_bars

    model.save_pretrained(folder)
    if hasattr(model.lm, "peft_config"):
        with no_progress_bars():
            model.lm.save_pretrained(folder / "adapter")


def make_eval_fn(val_records, val_feats, tokenizer, cfg: SFTConfig):
    """``eval_fn`` for :func:`d2lib.training.train.fit`: :func:`d2lib.vlm.infer.eval_tvg` on the val split."""

    def eval_fn(model, step: int) -> dict:
        return infer.eval_tvg(model, val_records, val_feats, tokenizer, cfg.eval_batch_size,
                              cfg.max_new_tokens, cfg.eval_max_queries)

    return eval_fn


def load_inputs(cfg: SFTConfig, train_videos, align_dir=None, variant: Variant | None = None) -> tuple[dict, dict]:
    """What the model reads for (train, val): the frozen tower's cached features (written by align), or
    uint8 frames when ``cfg.train_tower`` or the variant needs pixels (NumPro, DiffFP: lesson 08_peers)."""
    if cfg.train_tower or (variant is not None and tokens.reads_pixels(variant)):
        return data.load_frames("train", train_videos), data.load_frames("val")
    root = Path(align_dir) if align_dir else None
    return (data.load_features(data.features_path("train", root), train_videos),
            data.load_features(data.features_path("val", root)))


def features_dir(cfg: SFTConfig, out_dir=None, align_dir=None) -> Path:
    """Where the tower features of an SFT model are cached: its own folder if it trained the tower,
    else align's."""
    return Path(out_dir or out_dir_default()) if cfg.train_tower else Path(align_dir or align.out_dir_default())


def run(cfg: SFTConfig, variant: Variant, seed: int | None = None, out_dir: str | Path | None = None,
        align_dir: str | Path | None = None, progress: bool = True, resume: bool = False,
        feature_splits=("train", "val", "test"), timing_name: str | None = "sft") -> SFTResult:
    """Fine-tune the aligned model in ``variant``'s response layout with seed ``seed`` (default
    ``cfg.seed``) into ``out_dir`` (default ``artifacts/sft``); returns an :class:`SFTResult` whose
    ``metrics`` hold the val tvg scores (answer stage and ``evi_`` evidence stage), the
    random-span baseline on the same queries (``random_*``) and the final losses. The wall times
    (``SFTResult.seconds``) go to the timing log ``timing_name`` (:mod:`d2lib.core.timing`; ``None``: not
    logged — an ablation cell logs them in its own)."""
    seed = cfg.seed if seed is None else seed
    cfg = dataclasses.replace(cfg, seed=seed)
    out_dir = Path(out_dir or out_dir_default())
    out_dir.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tok = align.load(align_dir)
    if prepare_vocabulary(model, tok, variant):  # later stages find it next to final/ (evaluate.tokenizer_dir)
        align.save_tokenizer(tok, out_dir / "tokenizer")
    prepare_model(model, cfg, variant, seed)
    train_recs = data.select_tasks(data.load_records("train"), cfg.tasks)
    val_recs = [r for r in data.load_records("val") if r["task"] == "tvg"]
    videos, val_videos = load_inputs(cfg, {r["video"] for r in train_recs}, align_dir, variant)
    examples, layout = data.training_examples(train_recs, videos, variant, tok, pack=cfg.pack)
    secs["setup"] = time.perf_counter() - t0

    grouped = cfg.group_videos and layout != "packed"
    collate = data.Collator(videos, tok.pad_token_id, kind=data.video_kind(videos), dedupe=grouped)
    res = train.fit(model, examples, cfg, out_dir, collate, eval_fn=make_eval_fn(val_recs, val_videos, tok, cfg),
                    resume=resume, export_fn=export_sft, progress=progress,
                    groups=data.video_groups(examples) if grouped else None,
                    before_step=[consistency_hook(model, variant)])
    model.consistency_scale = 1.0
    secs["train"] = res.seconds
    model.eval()
    if cfg.train_tower:  # the tower changed: cache its final features for the stages after this one
        t0 = time.perf_counter()
        for split in feature_splits:
            frames = val_videos if split == "val" else data.load_frames(split)
            data.save_features(data.tower_features(model, frames), data.features_path(split, out_dir))
        secs["features"] = time.perf_counter() - t0
    scores = {k: v for k, v in (res.val[-1] if res.val else {}).items() if k != "step"}
    rand = infer.random_tvg(infer.limit(val_recs, cfg.eval_max_queries), seed=seed)
    last = res.last
    metrics = {"variant": dataclasses.asdict(variant), "seed": seed, "steps": res.steps, "examples": len(examples),
               "layout": layout, "queries": sum(e.get("n_queries", 1) for e in examples),
               "val_tvg": scores, "random_tvg": rand,
               "train": {k: last.get(k) for k in ("loss", "lm_loss", "grounding_loss", "consistency_loss")},
               "trainable": lora.trainable_summary(model)}
    if timing_name:
        timing.log(timing_name, **{f"{k}_s": v for k, v in secs.items()}, steps_per_s=res.steps_per_s)
    return SFTResult(model, tok, res, out_dir, metrics, secs)


def control_floor(records) -> dict:
    """The query control scored on the ground truth itself (:func:`d2lib.vlm.infer.query_control` of perfect
    answers): what a model that always finds the asked-for event gets with another query's answer, because
    two events of a video can overlap. The floor under the control curve of lesson 04."""
    tvg = [r for r in records if r["task"] == "tvg"]
    return infer.query_control([{**r, "a": f"{r['tgt'][0]} - {r['tgt'][1]} </evi> The event happens in "
                                          f"{r['tgt'][0]} - {r['tgt'][1]}."} for r in tvg])


def write_results(res: SFTResult, variant_name: str) -> dict:
    """What stage ``sft`` leaves besides its folder: the full results (``artifacts/results/sft.json``: the val
    scores, their control floor, the random baseline, the run's size), their headline numbers
    (``artifacts/metrics/sft.json``) and the curves DVC plots (``sft_loss.csv``, ``sft_val.csv`` with the control).
    Returns the results."""
    floor = control_floor(data.load_records("val"))
    results = {**{k: res.metrics[k] for k in ("steps", "layout", "examples", "queries", "seed", "train", "trainable")},
               "control_floor_R1@0.5": floor["ctrl_R1@0.5"],
               "variant": variant_name, "val_tvg": res.metrics["val_tvg"], "random_tvg": res.metrics["random_tvg"]}
    headline.write("sft", results)
    train.export_loss_plot(res.out_dir / "loss.csv", paths.artifacts("plots", "sft_loss.csv"))
    train.export_loss_plot(res.out_dir / "val.csv", paths.artifacts("plots", "sft_val.csv"),
                           columns=("R1@0.5", "R1@0.7", "mIoU", "ctrl_R1@0.5", "any_event_R1@0.5", "e1_query_share"))
    return results


def model_dir(sft_dir: str | Path) -> Path:
    """The merged model of an SFT run: ``sft_dir`` itself or its ``final/`` (whichever holds ``d2vlm.json``)."""
    d = Path(sft_dir)
    for cand in (d, d / "final"):
        if (cand / "d2vlm.json").is_file():
            return cand
    raise FileNotFoundError(f"{d}: no SFT model (d2vlm.json) there or in {d / 'final'} — run stage sft first")


def load_model(sft_dir: str | Path | None = None):
    """``(merged SFT model in eval mode, tokenizer)`` of the run in ``sft_dir`` (default ``artifacts/sft``); the
    model loads without peft (LoRA merged; the adapter itself is in ``final/adapter``). The tokenizer is
    ``<model>/tokenizer``, ``<sft_dir>/tokenizer`` (a variant that added words) or stage align's."""
    from d2lib.vlm.tokens import load_tokenizer

    d = Path(sft_dir or out_dir_default())
    md = model_dir(d)
    model = D2VLM.from_pretrained(md).eval()
    tok_dir = next((c for c in (md / "tokenizer", d / "tokenizer") if c.is_dir()), align.tokenizer_dir())
    return model, load_tokenizer(tok_dir)


def scores_from_json(results: dict, keys) -> dict:
    """``results`` with the score dicts under ``keys`` as :func:`run` returns them: a score that was NaN (not
    computed, e.g. the control without two queries in a video) is ``null`` in the JSON file and NaN again here.

    >>> scores_from_json({"val_tvg": {"R1@0.5": 0.5, "ctrl_R1@0.5": None}, "seed": None}, ["val_tvg"])
    {'val_tvg': {'R1@0.5': 0.5, 'ctrl_R1@0.5': nan}, 'seed': None}
    """
    out = dict(results)
    for k in keys:
        if isinstance(out.get(k), dict):
            out[k] = {m: float("nan") if v is None else v for m, v in out[k].items()}
    return out


def load_result(out_dir: str | Path | None = None) -> SFTResult:
    """The finished stage read back (what lesson 04 shows): the model and tokenizer (:func:`load_model`),
    the run's logs (:func:`d2lib.training.train.read_fit`), the results :func:`write_results` wrote and the
    logged wall times."""
    out_dir = Path(out_dir or out_dir_default())
    model, tok = load_model(out_dir)
    metrics = scores_from_json(json.loads(headline.results_path("sft").read_text()), ("val_tvg", "random_tvg"))
    return SFTResult(model, tok, train.read_fit(out_dir), out_dir, metrics, timing.seconds("sft"))


def main(argv=None) -> None:
    """``python -m d2lib.stages.sft [--variant NAME] [--seed S] [--profile P]``: the stage as DVC runs it
    (:func:`run` into ``artifacts/sft``, then :func:`write_results`)."""
    from d2lib.core import config

    args, cfg, variant = config.stage_command("sft", "python -m d2lib.stages.sft", __doc__.splitlines()[0], argv,
                                              variant=True)
    with timing.timer() as t:
        res = run(cfg, variant, seed=args.seed, progress=False)
        results = write_results(res, args.variant)
    timing.log("sft", seconds=t.seconds)
    print(json.dumps(results["val_tvg"], indent=1))


__all__ = ["SFTResult", "run", "model_dir", "load_model", "load_result", "scores_from_json", "write_results", "control_floor", "main", "prepare_model", "prepare_vocabulary", "export_sft", "make_eval_fn", "load_inputs",
           "features_dir"]


if __name__ == "__main__":
    main()
