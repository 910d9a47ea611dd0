"""Stage ``align`` (lesson ``03_align``): the aligned base model that SFT starts from.

D²VLM starts from E.T. Chat's stage-2 checkpoint: a video-LLM whose vision tower, frame pooling,
projector and LM were already trained together on captioning and QA, so frame tokens mean something
to the LM before any grounding is taught. Our tiny model starts from random weights, so we make
that base here: everything is trained fully (no LoRA) on the Shapes tasks whose answers cite no time
— dvc as the captions in temporal order, rar and gvq as the right option — in the response mode
:data:`d2lib.training.data.ALIGN_VARIANT` (no ``<evi>``, no grounding heads).

:func:`run` does the whole stage in one call:

1. train the word-level tokenizer on the training records + the Shapes vocabulary → ``tokenizer/``;
2. build the model (``params.model``), train it with :func:`d2lib.training.train.fit` on uint8 frames
   (the tower trains, so it must see pixels) → ``loss.csv``, ``val.csv``, ``final/``;
3. freeze the tower and run it **once per video** of every split → ``features_{split}.safetensors``,
   which SFT, FPO and the ablations read instead of frames.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from d2lib.training import data, train, videotext
from d2lib.world.records import SPLITS
from d2lib.vlm import infer
from d2lib.core import headline, io, paths, spans, timing
from d2lib.vlm.model import D2VLM, ModelConfig
from d2lib.training.train import AlignConfig, StageResult


@dataclass
class AlignResult(StageResult):
    """What :func:`run` returns: the trained model (eval mode), its tokenizer, the fit result, the
    output folder, the final validation metrics (no timings: they go to :mod:`d2lib.core.timing`) and wall
    times in seconds."""


def out_dir_default() -> Path:
    return paths.artifacts("align")


def tokenizer_dir(out_dir: str | Path | None = None) -> Path:
    return Path(out_dir or out_dir_default()) / "tokenizer"


def model_dir(out_dir: str | Path | None = None) -> Path:
    """The aligned model (``D2VLM.from_pretrained`` loads it)."""
    return Path(out_dir or out_dir_default()) / "final"


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """``tokenizer.save_pretrained(folder)`` as one atomic step (:func:`d2lib.core.io.atomic_dir`): a crash
    leaves the previous tokenizer folder or the new one, never a mix of the two."""
    with io.atomic_dir(folder) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return Path(folder)


def build_model(model_cfg: ModelConfig, tokenizer, seed: int = 0) -> D2VLM:
    """A fresh model in the align response mode, initialised from ``seed``."""
    torch.manual_seed(seed)
    return D2VLM.build(model_cfg, data.ALIGN_VARIANT, tokenizer)


def align_examples(records, frames, tokenizer, tasks) -> list[dict]:
    """Encoded examples of the grounding-free tasks (:func:`d2lib.training.data.align_record` prompts)."""
    recs = [data.align_record(r) for r in data.select_tasks(records, tasks)]
    return data.make_examples(recs, frames, data.ALIGN_VARIANT, tokenizer)


def training_examples(records, frames, tokenizer, cfg: AlignConfig) -> list[dict]:
    """:func:`align_examples`, packed one sequence per video when ``cfg.pack`` (exact, frames once)."""
    examples = align_examples(records, frames, tokenizer, cfg.tasks)
    return data.pack_by_video(examples) if cfg.pack else examples


def video_captions(records) -> dict[str, list[tuple[str, list[float]]]]:
    """``{video: [(caption, [s, e]), ...]}``: each event's caption and time (from the tvg records) — the
    pairs the contrastive term of :mod:`d2lib.training.videotext` is trained on."""
    out: dict[str, list] = {}
    for r in records:
        if r["task"] == "tvg":
            out.setdefault(r["video"], []).append((r["g"][0], list(r["tgt"])))
    return out


class AlignCollator(data.Collator):
    """:class:`d2lib.training.data.Collator` on frames plus, for the contrastive term, one event caption of each
    example's video (drawn with the torch RNG, which :func:`d2lib.training.train.fit` seeds and checkpoints):
    ``cap_ids``/``cap_mask`` (B, Lc), ``cap_video``/``video_id`` (B,) video ids within the batch and
    ``cap_frames`` (B, 2) the event's inclusive frames."""

    def __init__(self, frames, tokenizer, captions: dict[str, list], dedupe: bool = False):
        super().__init__(frames, tokenizer.pad_token_id, kind="frames", dedupe=dedupe)
        self.captions = {v: [(torch.tensor(tokenizer(c, add_special_tokens=False)["input_ids"]),
                              spans.span_to_frames(sp, len(frames[v]))) for c, sp in cs]
                         for v, cs in captions.items() if v in frames}

    def __call__(self, examples) -> dict:
        batch = super().__call__(examples)
        names = [e["video"] for e in examples]
        if not all(self.captions.get(v) for v in names):
            return batch
        local = {v: i for i, v in enumerate(dict.fromkeys(names))}
        picks = [self.captions[v][int(torch.randint(len(self.captions[v]), ()))] for v in names]
        batch["cap_ids"], batch["cap_mask"] = videotext.pad_ids([ids for ids, _ in picks], self.pad_id)
        batch["cap_frames"] = torch.tensor([fr for _, fr in picks], dtype=torch.long)
        batch["video_id"] = batch["cap_video"] = torch.tensor([local[v] for v in names])
        return batch


def make_eval_fn(val_records, val_frames, tokenizer, cfg: AlignConfig):
    """``eval_fn`` for :func:`d2lib.training.train.fit`: teacher-forced val loss and rar/gvq accuracy."""
    val = [data.align_record(r) for r in data.select_tasks(val_records, cfg.tasks)]

    def eval_fn(objective, step: int) -> dict:
        model = getattr(objective, "model", objective)
        out = infer.eval_loss(model, infer.limit(val, cfg.eval_max_queries), val_frames, tokenizer,
                              cfg.eval_batch_size)
        out = {k: v for k, v in out.items() if k in ("val_loss", "val_lm_loss")}
        out.update(infer.eval_mcq(model, val, val_frames, tokenizer, cfg.eval_batch_size,
                                  cfg.max_new_tokens, cfg.eval_max_queries))
        tvg = infer.limit([r for r in val_records if r["task"] == "tvg"], cfg.eval_max_queries)
        out.update(videotext.zero_shot_tvg(model, tvg, val_frames, tokenizer, model.cfg.decode_ratio))
        return out

    return eval_fn


def run(model_cfg: ModelConfig, cfg: AlignConfig, out_dir: str | Path | None = None, progress: bool = True,
        resume: bool = False, feature_splits=SPLITS) -> AlignResult:
    """Train the aligned base model and cache the frozen tower's features (module docstring).

    ``resume=False`` starts over (a DVC stage always does); ``True`` continues from the newest
    checkpoint in ``out_dir``. ``feature_splits``: the splits whose tower features are cached.
    """
    out_dir = Path(out_dir or out_dir_default())
    out_dir.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    train_recs = data.load_records("train")
    tok = data.train_tokenizer(train_recs, max_seconds=model_cfg.max_frames)
    save_tokenizer(tok, tokenizer_dir(out_dir))
    frames = data.load_frames("train", {r["video"] for r in data.select_tasks(train_recs, cfg.tasks)})
    val_recs = data.load_records("val")
    val_frames = data.load_frames("val")
    examples = training_examples(train_recs, frames, tok, cfg)
    model = build_model(model_cfg, tok, cfg.seed)
    secs["setup"] = time.perf_counter() - t0

    collate = AlignCollator(frames, tok, video_captions(train_recs), dedupe=cfg.group_videos and not cfg.pack)
    objective = videotext.AlignObjective(model, cfg.contrastive_weight, cfg.contrastive_pairs)
    res = train.fit(objective, examples, cfg, out_dir, collate, eval_fn=make_eval_fn(val_recs, val_frames, tok, cfg),
                    resume=resume, progress=progress, export_fn=lambda obj, folder: train.export_model(obj.model, folder),
                    groups=data.video_groups(examples) if cfg.group_videos and not cfg.pack else None)
    secs["train"] = res.seconds
    model.eval()

    t0 = time.perf_counter()
    for split in feature_splits:
        vids = val_frames if split == "val" else data.load_frames(split)
        data.save_features(data.tower_features(model, vids), data.features_path(split, out_dir))
    secs["features"] = time.perf_counter() - t0
    metrics = {"steps": res.steps, "examples": len(examples), "train_loss": res.last.get("loss"),
               **(res.val[-1] if res.val else {})}
    metrics.pop("step", None)
    timing.log("align", **{f"{k}_s": v for k, v in secs.items()}, steps_per_s=res.steps_per_s)
    return AlignResult(model, tok, res, out_dir, metrics, secs)


def load(out_dir: str | Path | None = None):
    """``(model, tokenizer)`` of a finished align stage (the model in eval mode)."""
    from d2lib.vlm.tokens import load_tokenizer

    model = D2VLM.from_pretrained(model_dir(out_dir)).eval()  # (loads with transformers' progress bars off)
    return model, load_tokenizer(tokenizer_dir(out_dir))


def write_results(res: AlignResult) -> None:
    """What stage ``align`` leaves besides its folder: the full results (``artifacts/results/align.json``), their
    headline numbers (``artifacts/metrics/align.json``) and the loss curve DVC plots (``artifacts/plots/align_loss.csv``)."""
    headline.write("align", res.metrics)
    train.export_loss_plot(res.out_dir / "loss.csv", paths.artifacts("plots", "align_loss.csv"), ["loss", "lm_loss"])


def load_result(out_dir: str | Path | None = None) -> AlignResult:
    """The finished stage read back (what lesson 03 shows): the model and tokenizer, the run's logs
    (:func:`d2lib.training.train.read_fit`), the results the stage wrote and its logged wall times."""
    out_dir = Path(out_dir or out_dir_default())
    model, tok = load(out_dir)
    metrics = {k: float("nan") if v is None else v  # (a NaN score is null in the JSON file)
               for k, v in json.loads(headline.results_path("align").read_text()).items()}
    return AlignResult(model, tok, train.read_fit(out_dir), out_dir, metrics, timing.seconds("align"))


def main(argv=None) -> None:
    """``python -m d2lib.stages.align [--profile P]``: the stage as DVC runs it (:func:`run`, then
    :func:`write_results`)."""
    from d2lib.core import config

    args, cfg, _ = config.stage_command("align", "python -m d2lib.stages.align", __doc__.splitlines()[0], argv)
    model_cfg = config.load_section("model", profile=args.profile)
    with timing.timer() as t:
        res = run(model_cfg, cfg, progress=False)
        write_results(res)
    timing.log("align", seconds=t.seconds)
    print(json.dumps(res.metrics, indent=1))


__all__ = ["AlignResult", "run", "load", "load_result", "write_results", "main", "save_tokenizer", "build_model", "align_examples", "video_captions", "AlignCollator",
           "make_eval_fn", "tokenizer_dir", "model_dir"]


if __name__ == "__main__":
    main()
