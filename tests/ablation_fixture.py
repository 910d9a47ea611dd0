"""Test fixtures for the ablation (tests/test_ablation.py, tests/test_widgets.py).

* :func:`mini_project` — a tiny project root (use with ``D2LIB_ROOT``): a few short Shapes videos per
  split rendered and decoded into the frame caches, a tokenizer and an untrained tiny aligned model, and
  a params.yaml whose ``sft``/``ablation`` sections train for two steps — what a real cell reads.
* :func:`fake_cells` — cell folders (``metrics.json`` + ``records.csv``) with chosen numbers, for the
  aggregation math and the widgets (no training), and each cell's wall time in its timing log. Their IoUs
  are fractions (not only 0/1), so R@1@0.3, R@1@0.5, R@1@0.7 and mIoU all differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from d2lib.study import ablation
from d2lib.training import data
from d2lib.world import framecache, synth
from d2lib.core import timing

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, vision_hidden=32, vision_layers=1,
            vision_heads=2, vision_ffn=64)
REPO = Path(__file__).resolve().parents[1]

SFT_TINY = {"tasks": ["tvg"], "train_tower": True, "seed": 0, "steps": 2, "batch_size": 2, "lr": 0.002,
            "lr_lora": 0.002, "lr_heads": 0.002, "log_every": 1, "eval_every": 0, "save_every": 0,
            "head_modules": ["embed_tokens", "lm_head", "frm_head", "evi_head", "pool", "temporal", "projector"],
            "lora": {"enabled": True, "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["qkv_proj", "o_proj"]},
            "eval_max_queries": 2, "eval_batch_size": 8, "max_new_tokens": 8}
ABLATION_TINY = {"variants": ["coupled", "full"], "preference": ["fpo"], "seeds": [0], "sft_steps": 2, "fpo_steps": 1,
                 "val_queries": 2, "eval_max_videos": 2, "max_new_tokens": 12, "eval_batch_size": 8,
                 "caption_metrics": False, "n_boot": 50}


def mini_project(root: Path, n_videos: int = 2, duration: int = 12) -> Path:
    """Write a runnable tiny project under ``root`` (see the module docstring); returns ``root``."""
    import torch

    from d2lib.vlm.model import D2VLM, ModelConfig

    world = synth.WorldConfig(min_duration=duration, max_duration=duration, min_events=2, max_events=3)
    all_records = []
    for split, sub, seed in (("train", "artifacts/prepare/train", 11), ("val", "data/shapes/val", 21),
                             ("test", "data/shapes/test", 31)):
        recs, _ = synth.render_split(root / sub, n_videos, seed, world, split)
        framecache.build_frame_cache(recs, root / sub, root / "artifacts" / "prepare" / f"frames_{split}.npz",
                                     fps=1.0, size=32, progress=False)
        all_records += recs
    tok = data.train_tokenizer(all_records, max_seconds=32)
    tok.save_pretrained(str(root / "artifacts" / "align" / "tokenizer"))
    torch.manual_seed(0)
    D2VLM.build(ModelConfig(**TINY), data.ALIGN_VARIANT, tok).save_pretrained(root / "artifacts" / "align" / "final")
    repo = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {"profile": "default", "variants": repo["variants"], "sft": SFT_TINY, "ablation": ABLATION_TINY}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


def fake_records(n_videos: int = 4, seed: int = 5, duration: int = 20):
    """``(records, metas)`` of a few Shapes videos (no rendering)."""
    world = synth.WorldConfig(min_events=2, max_events=3, max_duration=duration)
    records, metas = [], {}
    for k in range(n_videos):
        spec = synth.sample_video(seed + k, world, duration=duration)
        name = f"videos/test_{k:05d}.mp4"
        records += synth.make_records(spec, name, start_idx=len(records))
        metas[name] = spec.to_meta(name)
    return records, metas


ETB_THETAS = (0.1, 0.3, 0.5, 0.7)  # E.T. Bench's IoU thresholds, written out (what the scores average)


def _hits(iou: float, thetas=ETB_THETAS) -> float:
    """Share of ``thetas`` that ``iou`` reaches."""
    return sum(iou >= t for t in thetas) / len(thetas)


def _iou(hit: bool, u: float) -> float:
    """An IoU on a 0.01 grid from a uniform draw ``u``: in [0.5, 1] for a hit, in [0, 0.5) for a miss (so a
    record is an R@1@0.5 hit exactly when the row gets it right)."""
    return round(0.5 + int(51 * u) / 100, 2) if hit else round(int(50 * u) / 100, 2)


def _rows(row: str, records, quality: float, rng, iou_rng) -> list[dict]:
    """records.csv rows of a system that gets each record right with probability ``quality`` (drawn from
    ``rng``): a right answer overlaps the GT with IoU in [0.5, 1], a wrong one with IoU in [0, 0.5) (drawn
    from ``iou_rng``); its evidence stage overlaps 0.2 more (at most 1). Scores follow
    :func:`d2lib.stages.evaluate.record_rows`'s definitions (tvg/tal/dvc: hits over E.T. Bench's thresholds;
    rar: correct; gvq: correct × hits)."""
    out = []
    for r in records:
        task = r["task"]
        gt = [r["tgt"]] if task in ("tvg", "gvq") else (r.get("tgt") or [])
        hit = rng.random() < quality
        iou = _iou(hit, iou_rng.random())
        iou_evi = min(1.0, round(iou + 0.2, 2))
        pred = [[s, s + iou * (e - s)] if iou > 0 else [max(0, s - 5), max(1, s - 2)] for s, e in gt]
        row_ = {"system": row, "task": task, "idx": r["idx"], "video": r["video"], "duration": r["duration"],
                "n_events": 3, "n_gt": len(gt), "event_len": 3.0, "distractor": False, "distractor_event": False,
                "gt": json.dumps(gt), "pred": json.dumps(pred), "pred_evi": json.dumps(pred), "parsed": True,
                "iou": iou if gt else None, "iou_evi": iou_evi if gt else None,
                "iou_charades": iou if task == "tvg" else None, "correct": None, "score": None, "answer": "x"}
        if task in ("tvg", "tal", "dvc"):
            row_["score"] = _hits(iou)
        if task in ("rar", "gvq"):
            row_["correct"] = bool(hit)
            row_["score"] = float(hit) * (_hits(iou) if task == "gvq" else 1.0)
        out.append(row_)
    return out


def cell_values(df) -> dict:
    """A cell's ``values`` (every key of ``ablation.ALL_METRICS``; ``None`` where the fixture has no number)
    computed from its records.csv rows, each metric written out here: the protocols' means (F1(gnd) merges
    tvg and tal as E.T. Bench does)."""
    by = {t: df[df.task == t] for t in df.task.unique()}
    tvg, tal = by["tvg"]["score"].mean(), by["tal"]["score"].mean()
    ch = by["tvg"]["iou_charades"].astype(float)
    values = {k: None for k in ablation.ALL_METRICS}
    values.update({"F1(gnd)": (tvg + tal) / 2, "tvg.F1": tvg, "tal.F1": tal,
                   "tvg.F1_evi": float(np.mean([_hits(x) for x in by["tvg"]["iou_evi"]])),
                   "F1(cap)": by["dvc"]["score"].mean(), "youcook2.F1": by["dvc"]["score"].mean(),
                   "charades.R1@0.3": float((ch >= 0.3).mean()), "charades.R1@0.5": float((ch >= 0.5).mean()),
                   "charades.R1@0.7": float((ch >= 0.7).mean()), "charades.mIoU": float(ch.mean()),
                   "rar.Acc": by["rar"]["correct"].astype(float).mean(),
                   "gvq.Acc": by["gvq"]["correct"].astype(float).mean(), "gvq.mRec": by["gvq"]["score"].mean()})
    return values


def switches(row: str) -> dict:
    import dataclasses

    from d2lib.vlm.model import VariantsConfig

    try:
        return dataclasses.asdict(VariantsConfig().get(ablation.split_row(row)[0]))
    except KeyError:  # a row that is not a variant (tests of stale folders)
        return {}


def fake_cells(root: Path, quality: dict, seeds=(0, 1, 2), records=None, seed: int = 0,
               timing_root: Path | None = None) -> dict:
    """Write cells ``root/<row>/<seed>/{metrics.json,records.csv}``. ``quality[row]`` is a number or a
    per-seed list: the chance that the row gets a record right; ``values`` are computed from the rows
    (per-record means, E.T. Bench-style merges), so both intervals have something to resample. The cell of
    the i-th seed took ``10 + i`` seconds: timing log ``<root's name>/<row>/<seed>`` under ``timing_root``
    (default ``root/../logs/timing``: ``artifacts/logs/timing`` when ``root`` is ``artifacts/ablation``)."""
    import pandas as pd

    records = records if records is not None else fake_records()[0]
    rng = np.random.default_rng(seed)  # which records a row gets right
    iou_rng = np.random.default_rng([seed, 1])  # how well it overlaps them (a stream of its own)
    out = {}
    for row, q in quality.items():
        for i, s in enumerate(seeds):
            qs = q[i] if isinstance(q, (list, tuple)) else q
            rows = _rows(row, records, qs, rng, iou_rng)
            values = cell_values(pd.DataFrame(rows))
            payload = {"row": row, "label": ablation.label(row), "seed": s, "switches": switches(row), "kind": ablation.split_row(row)[1] or "sft",
                       "variant": ablation.split_row(row)[0], "schedule": ablation.AblationConfig().schedule(), "values": values,
                       "metrics": {}, "n_records": len(records)}
            ablation.write_cell(ablation.cell_dir(row, s, root), payload, [{**r, "seed": s} for r in rows])
            timing.log(f"{Path(root).name}/{ablation.cell_dir(row, s, root).parent.name}/{s}",
                       root=timing_root or Path(root).parent / "logs" / "timing", seconds=10.0 + i)
            out[(row, s)] = payload
    return out
