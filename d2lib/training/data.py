"""Training examples from records and caches — the data side of lessons ``03_align`` and ``04_sft_lora``.

A stage never decodes video: it reads the uint8 frame cache of ``prepare`` (stage ``align``, which
trains the vision tower) or the **tower-feature cache** written once at the end of ``align`` by the
then-frozen tower (``sft``, ``fpo``, ablations). Both are ``{video: tensor}`` mappings, and an
example only records *which* video it needs, so one video's tensor is shared by all its records.

* :func:`load_records` / :func:`load_frames` / :func:`load_features` — one split's records and caches;
* :func:`tower_features` / :func:`save_features` — run the frozen tower once per video;
* :func:`make_examples` + :class:`Collator` — encoded examples and the batch function for
  :func:`d2lib.training.train.fit` (whose sampler shuffles them deterministically per epoch);
* :data:`ALIGN_VARIANT` + :func:`align_record` — the grounding-free response mode of ``align``: the
  same response builder (:func:`d2lib.vlm.tokens.build_response`) with ``answer_evidence="none"``, so
  dvc answers are the captions in order and rar/gvq answers are the option.

>>> rec = {"task": "gvq", "tgt": [3, 7], "o": ["the red circle", "the blue square"], "p": 1,
...        "q": "Which shape grows? Options: (A) the red circle (B) the blue square. Answer with the "
...             "best option and its evidence in the format '(<letter>) <option>. The evidence is in "
...             "<start> - <end>.', with times in seconds."}
>>> align_record(rec)["q"]
"Which shape grows? Options: (A) the red circle (B) the blue square. Answer with the best option in the format '(<letter>) <option>.'"
>>> from d2lib.vlm import tokens
>>> tokens.build_response(align_record(rec), ALIGN_VARIANT).text
'(B) the blue square.'
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from d2lib.world import synth
from d2lib.world.framecache import load_frame_cache
from d2lib.world.records import SPLITS, check_split, frame_cache_path, load_shapes, shapes_split_dir
from d2lib.core import paths
from d2lib.vlm import tokens
from d2lib.vlm.model import Variant

# The response mode of stage align: no <evi>, no times — captions and options only.
ALIGN_VARIANT = Variant(prefix=False, answer_evidence="none", head="none", injection=False, consistency=False)
ALIGN_DVC_PROMPT = ("Describe every event in the video, in the order they happen. "
                    "Answer in the format '<event>. <event>.'")
MCQ_FORMAT = "Answer with the best option in the format '(<letter>) <option>.'"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
def select_tasks(records: Iterable[Mapping], tasks: Sequence[str] | None) -> list[dict]:
    """The records whose ``task`` is in ``tasks`` (all with ``None``), order kept.

    >>> [r["idx"] for r in select_tasks([{"idx": 0, "task": "tvg"}, {"idx": 1, "task": "dvc"}], ["dvc"])]
    [1]
    """
    return [dict(r) for r in records if tasks is None or r["task"] in tasks]


def load_records(split: str, tasks: Sequence[str] | None = None) -> list[dict]:
    """The Shapes records of ``split`` (``train`` from ``prepare``, ``val``/``test`` from ``data/``)."""
    loaded = load_shapes(shapes_split_dir(split), check_videos=False)
    return select_tasks(loaded.records, tasks)


def align_record(record: Mapping) -> dict:
    """``record`` with a prompt that asks for no times (stage align): dvc asks for the captions in
    order, gvq for the option only; rar is unchanged (its answer is already an option)."""
    r = dict(record)
    if r["task"] == "dvc":
        r["q"] = ALIGN_DVC_PROMPT
    elif r["task"] == "gvq":
        q = str(r["q"])
        cut = q.rfind(" Answer with")
        r["q"] = (q[:cut] if cut >= 0 else q) + " " + MCQ_FORMAT
    elif r["task"] not in tokens.NO_EVIDENCE_TASKS:
        raise ValueError(f"task {r['task']!r} has no grounding-free answer (align trains on "
                         f"{', '.join(tokens.NO_EVIDENCE_TASKS)})")
    return r


def tokenizer_corpus(records: Iterable[Mapping]) -> list[str]:
    """Texts the word-level tokenizer is trained on: every record's q/g/o, the align prompts and
    the Shapes vocabulary (``synth.vocabulary``), so val/test words are never unknown."""
    records = list(records)
    extra = [align_record(r)["q"] for r in records if r["task"] in tokens.NO_EVIDENCE_TASKS]
    return [*tokens.record_texts(records), *dict.fromkeys(extra), ALIGN_DVC_PROMPT, MCQ_FORMAT,
            " ".join(synth.vocabulary())]


def train_tokenizer(records: Iterable[Mapping], max_seconds: int = 64):
    """The tiny preset's tokenizer, trained on :func:`tokenizer_corpus` of ``records``."""
    return tokens.train_word_tokenizer(tokenizer_corpus(records), max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------
# Caches: frames (uint8) and tower features
# --------------------------------------------------------------------------------------------
def load_frames(split: str, videos: Iterable[str] | None = None, fps: float | None = None,
                size: int | None = None) -> dict[str, torch.Tensor]:
    """``{video: uint8 (T, H, W, 3)}`` read from ``prepare``'s frame cache of ``split`` into memory
    (all videos, or those named). ``fps``/``size`` guard against a stale cache."""
    with load_frame_cache(frame_cache_path(split), fps=fps, size=size) as cache:
        names = list(cache) if videos is None else list(dict.fromkeys(videos))
        return {v: torch.from_numpy(np.array(cache[v])) for v in names}


def features_path(split: str, root: str | os.PathLike | None = None) -> Path:
    """``artifacts/align/features_{split}.safetensors`` (or under ``root``)."""
    check_split(split)
    base = Path(root) if root is not None else paths.artifacts("align", mkdir=False)
    return base / f"features_{split}.safetensors"


@torch.no_grad()
def tower_features(model, frames: Mapping[str, torch.Tensor], max_frames: int = 1024,
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """Run ``model``'s vision tower once per video (eval mode, no gradients): ``{video: (T, S, P, Dv)}``.

    Videos of similar length are batched (padded to about ``max_frames`` frames per call); the tower
    sees each frame on its own and the motion channels come from the video's own previous frame, so
    a video's features do not depend on its batch (the padding is cut off again).
    """
    from tqdm import tqdm

    tower_mode = model.tower.training
    model.tower.eval()
    device = next(model.parameters()).device
    names = sorted(frames, key=lambda v: len(frames[v]))
    out: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(names), desc="tower features", unit="video", disable=not progress, mininterval=2.0)
    try:
        i = 0
        while i < len(names):
            group = [names[i]]
            while i + len(group) < len(names) and \
                    (len(group) + 1) * len(frames[names[i + len(group)]]) <= max(max_frames, 1):
                group.append(names[i + len(group)])
            batch = tokens._pad_stack([frames[v] for v in group], max(len(frames[v]) for v in group))
            feats = model.encode_tower(batch.to(device), chunk=max_frames).float().cpu()
            for b, v in enumerate(group):
                out[v] = feats[b, : len(frames[v])].contiguous()
            i += len(group)
            bar.update(len(group))
    finally:
        bar.close()
        model.tower.train(tower_mode)
    return {v: out[v] for v in frames}


def save_features(feats: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``{video: tensor}`` as one safetensors file, atomically (temp name + ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def load_features(split_or_path: str | os.PathLike, videos: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Cached tower features: a split name (``artifacts/align/features_{split}.safetensors``) or a
    path. Missing file → ``FileNotFoundError`` that says which stage writes it."""
    from safetensors import safe_open

    p = Path(split_or_path)
    if str(split_or_path) in SPLITS:
        p = features_path(str(split_or_path))
    if not p.is_file():
        raise FileNotFoundError(f"{p}: tower-feature cache not found (written by stage align: dvc repro align)")
    with safe_open(str(p), framework="pt") as f:
        names = list(f.keys()) if videos is None else list(dict.fromkeys(videos))
        return {v: f.get_tensor(v) for v in names}


# --------------------------------------------------------------------------------------------
# Examples and batches
# --------------------------------------------------------------------------------------------
def make_examples(records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], variant, tokenizer,
                  with_response: bool = True, keep: Mapping[str, torch.Tensor] | None = None) -> list[dict]:
    """:func:`d2lib.vlm.tokens.encode_example` for each record (its video's frame count from ``videos``,
    frames or features alike), plus the ``video`` key :class:`Collator` looks up.

    A token budget that lays a video out from its pixels (DiffFP, lesson ``08_peers``) needs each video's
    keep mask: ``keep`` (``{video: (T,) bool}``, the budget's ``keep_masks``), else computed from
    ``videos`` when they are uint8 frames (:meth:`d2lib.vlm.tokens.TokenBudget.keep_masks`)."""
    if keep is None:
        used = {r["video"] for r in records if r["video"] in videos}
        keep = tokens.token_budget(variant).keep_masks({v: videos[v] for v in used})
    out = []
    for r in records:
        if r["video"] not in videos:
            raise KeyError(f"record {r.get('idx')}: video {r['video']!r} is not in the cache "
                           f"({len(videos)} videos)")
        ex = tokens.encode_example(r, len(videos[r["video"]]), variant, tokenizer, with_response=with_response,
                                   keep=keep.get(r["video"]) if keep else None)
        ex["video"] = r["video"]
        out.append(ex)
    return out


def pack_by_video(examples: Sequence[dict]) -> list[dict]:
    """Packed training examples: the examples of each video (first-seen order, their order kept)
    in one sequence (:func:`d2lib.vlm.tokens.pack_examples`), each with its ``video``. Raises
    :class:`d2lib.vlm.tokens.NotPackable` if a video's examples do not share their prompt prefix.

    >>> [len(g) for g in video_groups([{"video": "a"}, {"video": "b"}, {"video": "a"}])]
    [2, 1]
    """
    out = []
    for group in video_groups(examples):
        packed = tokens.pack_examples([examples[i] for i in group])
        packed["video"] = examples[group[0]]["video"]
        out.append(packed)
    return out


def training_examples(records: Sequence[Mapping], videos: Mapping[str, torch.Tensor], variant, tokenizer,
                      pack: bool = False, keep: Mapping[str, torch.Tensor] | None = None) -> tuple[list[dict], str]:
    """The training examples of a stage and how they are laid out: ``(examples, "packed")`` — one
    sequence per video holding all its queries (``pack``), or ``(examples, "per-query")``. A variant
    whose layout cannot be packed trains per query; the reason is then the second item."""
    examples = make_examples(records, videos, variant, tokenizer, keep=keep)
    if not pack:
        return examples, "per-query"
    try:
        return pack_by_video(examples), "packed"
    except tokens.NotPackable as err:
        return examples, f"per-query (cannot pack: {err})"


class Collator:
    """Batch function for :func:`d2lib.training.train.fit` and generation: :func:`d2lib.vlm.tokens.collate`
    with each example's video tensor looked up in ``videos``.

    ``kind``: ``"frames"`` (uint8 frames, the tower runs and trains) or ``"tower_feats"`` (cached
    features of a frozen tower); ``padding_side``: ``"right"`` to train, ``"left"`` to generate.
    ``dedupe``: each distinct video goes into the batch once, with ``video_index`` (B,) — several
    queries of one video then share one tower pass (:func:`d2lib.vlm.tokens.collate`).
    Only tensors go into the batch (``fit`` moves it to the device and calls ``model(**batch)``).
    """

    def __init__(self, videos: Mapping[str, torch.Tensor], pad_id: int, kind: str = "tower_feats",
                 padding_side: str = "right", dedupe: bool = False):
        if kind not in ("frames", "tower_feats"):
            raise ValueError(f"kind must be 'frames' or 'tower_feats', got {kind!r}")
        self.videos, self.pad_id, self.kind, self.padding_side = videos, pad_id, kind, padding_side
        self.dedupe = dedupe

    def __call__(self, examples: Sequence[dict]) -> dict:
        names = [e["video"] for e in examples]
        if not self.dedupe:
            vids = [self.videos[v] for v in names]
            return tokens.collate(examples, self.pad_id, padding_side=self.padding_side, **{self.kind: vids})
        local = {v: i for i, v in enumerate(dict.fromkeys(names))}  # distinct videos, first-seen order
        return tokens.collate(examples, self.pad_id, padding_side=self.padding_side,
                              video_index=[local[v] for v in names], **{self.kind: [self.videos[v] for v in local]})


def video_groups(examples: Sequence[dict]) -> list[list[int]]:
    """Indices of ``examples`` grouped by their ``video`` (first-seen order): the ``groups`` of
    :func:`d2lib.training.train.fit` for batches of whole videos.

    >>> video_groups([{"video": "a"}, {"video": "b"}, {"video": "a"}])
    [[0, 2], [1]]
    """
    out: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        out.setdefault(e["video"], []).append(i)
    return list(out.values())


def video_kind(videos: Mapping[str, torch.Tensor]) -> str:
    """``"frames"`` for uint8 frame caches, ``"tower_feats"`` for float feature caches."""
    first = next(iter(videos.values()))
    return "frames" if first.dtype == torch.uint8 else "tower_feats"
