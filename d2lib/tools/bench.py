"""``python -m d2lib.tools.bench``: measured speed of the pipeline, written as JSON (never a timed test).

Reports, from one run on this machine:
- the wall time of each DVC stage, from the timing logs that no stage output holds
  (:mod:`d2lib.core.timing`: papermill's durations, moved there by :mod:`d2lib.tools.nbnorm`; the ablation's and
  the peers' cells and aggregates), the last complete ``make repro``'s wall time (:mod:`d2lib.tools.repro`
  records it) and the budgets: 30 minutes (the aim, without the peers study) and 45 with it —
  no verdict while a stage or cell has no time (``--pipeline-only``: just this);
- the cost of the pinned numeric environment (:mod:`d2lib.core.numenv`): a training step's median time
  pinned and unpinned, each in a fresh process, on one thread;
- decode throughput (frames/s) of the benchmark videos with decord;
- training throughput of the default model (samples/s, tokens/s; median step time);
- generation latency per query with and without the KV cache (median, and their ratio);
- peak resident memory of this process.

Numbers are medians of repeated measurements taken in one run; compare ratios, not absolutes,
across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from d2lib.core import config, io, numenv, paths, timing
from d2lib.world import framecache, records, synth, video
from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM

BUDGET_S = 30 * 60  # the aim: make repro, every stage and ablation cell
BUDGET_WITH_PEERS_S = 45 * 60  # the budget: the same with the peers study (lesson 08)


def lesson_stages(dvc_yaml: Path | None = None) -> list[str]:
    """The lesson notebooks the pipeline executes (their stems, from the papermill stages of ``dvc.yaml``)."""
    import yaml
    stages = yaml.safe_load(Path(dvc_yaml or paths.root_path("dvc.yaml")).read_text())["stages"]
    out = []
    for st in stages.values():
        cmd = st.get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
        if "papermill" in cmd:
            out.append(Path(cmd.split("papermill", 1)[1].split("&&")[0].split()[-1]).stem)
    return out


def command_stages(dvc_yaml: Path | None = None) -> list[str]:
    """The training stages the pipeline runs as library commands (``python -m d2lib.stages.X`` → ``X``, which is
    also the name of the timing log its ``main`` writes).

    >>> import tempfile, yaml
    >>> f = Path(tempfile.mkdtemp()) / "dvc.yaml"
    >>> _ = f.write_text(yaml.safe_dump({"stages": {"align": {"cmd": "python -m d2lib.core.numenv --threads 2 "
    ...     "python -m d2lib.stages.align"}, "x": {"cmd": "papermill a.ipynb b.ipynb"}}}))
    >>> command_stages(f)
    ['align']
    """
    import re

    import yaml
    stages = yaml.safe_load(Path(dvc_yaml or paths.root_path("dvc.yaml")).read_text())["stages"]
    out = []
    for st in stages.values():
        cmd = st.get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
        out += re.findall(r"python -m d2lib\.stages\.(\w+)", cmd)
    return out


def stage_times(nb_dir: Path | None = None, timing_root: Path | None = None,
                commands: list[str] | tuple = ()) -> dict[str, float]:
    """Seconds each executed lesson notebook took — papermill's duration, which :mod:`d2lib.tools.nbnorm` moves
    from the notebook to its timing log (read from the notebook itself for one not normalized) — and each
    training stage in ``commands`` (:func:`command_stages`), the ``seconds`` its ``main`` logs."""
    nb_dir = nb_dir or paths.artifacts("notebooks", mkdir=False)
    out = {}
    for name in commands:
        sec = timing.read(name, root=timing_root).get("seconds")
        if sec is not None:
            out[name] = round(float(sec), 2)
    for nb in sorted(Path(nb_dir).glob("*.ipynb")):
        sec = timing.read(nb.stem, root=timing_root).get("notebook_s")
        if sec is None:
            sec = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("duration")
        if sec is not None:
            out[nb.stem] = round(float(sec), 2)
    return out


def cell_times(study: str = "ablation", root: Path | None = None, timing_root: Path | None = None) -> dict:
    """Wall times of a DVC matrix study's cells — ``study`` "ablation" (lesson 07) or "peers" (lesson 08) —
    from their timing logs (``<study>/<row>/<seed>``: ``seconds``, process start to files written; a
    cell's ``metrics.json`` ``seconds`` where an older run put it there), and of its aggregate stage
    (timing log ``<study>_aggregate``, or ``timing.aggregate_s`` of ``artifacts/results/<study>.json``).
    Only the cells params.yaml configures count (a stale folder is not a stage); ``missing`` lists
    the configured cells with no time."""
    root = Path(root or paths.artifacts(study, mkdir=False))
    try:
        want = [f"{r}/{s}" for r, s in config.load_section(study).cells()]
    except Exception:
        want = None
    logged = {k.split("/", 1)[1]: v.get("seconds") for k, v in timing.read_all(study, root=timing_root).items()}
    cells = {}
    for name in want if want is not None else sorted({*logged, *(f"{p.parent.parent.name}/{p.parent.name}"
                                                                  for p in root.glob("*/*/metrics.json"))}):
        sec = logged.get(name)
        if sec is None and (root / name / "metrics.json").is_file():
            sec = json.loads((root / name / "metrics.json").read_text()).get("seconds")
        if sec is not None:
            cells[name] = round(float(sec), 2)
    agg = timing.read(f"{study}_aggregate", root=timing_root).get("seconds")
    agg_path = root.parent / "results" / f"{study}.json"
    if agg is None and agg_path.is_file():
        agg = json.loads(agg_path.read_text()).get("timing", {}).get("aggregate_s")
    return {"cells_s": cells, "n_cells": len(cells), "cells_total_s": round(sum(cells.values()), 1),
            "missing": [c for c in (want or []) if c not in cells], "aggregate_s": round(float(agg or 0.0), 2),
            "aggregate_ran": agg is not None, "total_s": round(sum(cells.values()) + float(agg or 0.0), 1)}


def ablation_times(root: Path | None = None) -> dict:
    """:func:`cell_times` of the ablation (lesson 07)."""
    return cell_times("ablation", root)


PEER_STAGES = ("08_peers",)  # lessons that belong to the peers study (the 30-minute aim excludes them)


def repro_run(path: Path | None = None) -> dict | None:
    """The last complete ``make repro`` (:mod:`d2lib.tools.repro` writes ``artifacts/repro_timing.json`` only
    when a run ran every stage): wall time, cores, stages; None if none is recorded."""
    path = Path(path or paths.artifacts("repro_timing.json", mkdir=False))
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return {k: rec.get(k) for k in ("wall_s", "workers", "cores_per_worker_max", "cores", "stages", "ran",
                                    "complete", "failed") if k in rec}


def missing_work(stages: dict, studies: dict[str, dict], lessons: list[str], commands: list[str] | tuple = ()
                 ) -> list[str]:
    """What a budget verdict would leave out: lessons (``dvc.yaml``'s papermill stages) and training stages
    (``commands``) with no measured time, and configured cells with none. A verdict over a pipeline that did
    not run is no verdict.

    >>> missing_work({"01_video_data": 5.0}, {"ablation": {"missing": ["full/0"]}}, ["01_video_data", "03_align"],
    ...              ["align"])
    ['lesson 03_align', 'stage align', 'ablation cell full/0']
    """
    out = [f"lesson {nb}" for nb in lessons if nb not in stages] + [f"stage {c}" for c in commands if c not in stages]
    for study, t in studies.items():
        out += [f"{study} cell {c}" for c in t.get("missing", [])]
    return out


def pipeline_times() -> dict:
    """Every stage's measured wall time: the lesson notebooks plus the ablation's and the peers' cells and
    aggregates, and the last complete ``make repro`` run (``make_repro``). Two budgets: the 30
    minutes for ``make repro`` without the peers study (``budget_s``/``budget_met``) and 45 minutes with
    it (``budget_with_peers_s``/``budget_with_peers_met``).

    ``pipeline_total_s`` and ``without_peers_s`` are sums of stage times — the work, which is the wall
    time of plain ``dvc repro`` (one stage after another). ``make repro`` runs stages side by side, so
    its wall time is less than the sum. The 45-minute verdict uses the wall time of the last complete
    ``make repro`` when there is one (``with_peers_basis`` says which); the 30-minute one always uses
    the sum. A verdict is ``None`` (refused) while a lesson or cell it covers has no measured time
    (``missing`` lists them), and ``False`` when no lesson has one: the budget of a pipeline that did not
    run is not met."""
    lessons, commands = [], []
    for kind, find in ((lessons, lesson_stages), (commands, command_stages)):
        try:
            kind += find()
        except (OSError, KeyError):
            pass
    stages = stage_times(commands=commands)
    abl, peers = cell_times("ablation"), cell_times("peers")
    core_lessons = [nb for nb in lessons if nb not in PEER_STAGES]
    missing_core = missing_work(stages, {"ablation": abl}, core_lessons, commands)
    missing_all = missing_work(stages, {"ablation": abl, "peers": peers}, lessons, commands)
    core = round(sum(v for k, v in stages.items() if k not in PEER_STAGES) + abl["total_s"], 1)
    total = round(sum(stages.values()) + abl["total_s"] + peers["total_s"], 1)
    run = repro_run()
    wall, basis = (run["wall_s"], "make repro wall time") if run and run.get("complete") else (total, "sum of stage times")
    def verdict(missing: list, seconds: float, budget: float) -> bool | None:
        return None if missing and stages else bool(stages) and seconds <= budget

    return {"stages_s": stages, "ablation": abl, "peers": peers, "without_peers_s": core,
            "pipeline_total_s": total, "make_repro": run, "missing": missing_all, "budget_s": BUDGET_S,
            "budget_met": verdict(missing_core, core, BUDGET_S),
            "budget_with_peers_s": BUDGET_WITH_PEERS_S, "with_peers_s": wall, "with_peers_basis": basis,
            "budget_with_peers_met": verdict(missing_all, wall, BUDGET_WITH_PEERS_S)}


def decode_throughput(n_videos: int = 16, size: int = 32) -> dict:
    """Decode ``n_videos`` test videos at 1 fps; frames per second of wall time."""
    split = records.load_shapes(records.shapes_split_dir("test"), check_videos=False)
    vids = sorted(split.metas)[:n_videos]
    t0, frames = time.perf_counter(), 0
    for v in vids:
        frames += len(video.read_frames(split.root / v, fps=1.0, size=size))
    dt = time.perf_counter() - t0
    return {"videos": len(vids), "frames": frames, "seconds": round(dt, 3), "frames_per_s": round(frames / dt, 1)}


def _model_and_examples(model_dir: str | None, n: int, variant_name: str = "full"):
    mcfg = config.load_section("model")
    variant = config.load_section("variants").get(variant_name)
    tok_dir = paths.artifacts("align", "tokenizer", mkdir=False)
    tok = tokens.load_tokenizer(tok_dir) if tok_dir.is_dir() else tokens.make_tokenizer(mcfg, [" ".join(synth.vocabulary())])[0]
    model = D2VLM.from_pretrained(model_dir) if model_dir else D2VLM.build(mcfg, variant, tok)
    split = "val"
    loaded = records.load_shapes(records.shapes_split_dir(split), check_videos=False)
    recs = [r for r in loaded.records if r["task"] == "tvg"][:n]
    try:
        cache = framecache.load_frame_cache(records.frame_cache_path(split))
        frames = [torch.from_numpy(np.asarray(cache[r["video"]])) for r in recs]
    except records.DatasetFileNotFound:  # prepare has not run: decode the few videos needed
        prep = config.load_section("prepare")
        frames = [torch.from_numpy(video.read_frames(loaded.root / r["video"], fps=prep.decode_fps,
                                                     size=prep.decode_size)) for r in recs]
    return model, tok, variant, recs, frames


def train_throughput(batch_size: int = 16, steps: int = 8, model_dir: str | None = None) -> dict:
    """Median forward+backward+AdamW step time at ``batch_size`` (frames through the tower)."""
    model, tok, variant, recs, frames = _model_and_examples(model_dir, batch_size)
    exs = [tokens.encode_example(r, len(f), model.variant, tok) for r, f in zip(recs, frames)]
    batch = tokens.collate(exs, tok.pad_token_id, frames=frames)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[1:])  # the first step warms up
    n_tok = int(batch["attention_mask"].sum())
    return {"batch_size": len(exs), "median_step_s": round(step, 4), "samples_per_s": round(len(exs) / step, 1),
            "tokens_per_s": round(n_tok / step, 1), "tokens_per_batch": n_tok,
            "parameters": sum(p.numel() for p in model.parameters())}


def generation_latency(n_queries: int = 8, max_new_tokens: int = 24, model_dir: str | None = None) -> dict:
    """Median seconds per query (batch 1, greedy) with and without the KV cache."""
    model, tok, variant, recs, frames = _model_and_examples(model_dir, n_queries)
    model.eval()
    res = {}
    for use_cache in (True, False):
        times, n_new = [], []
        for r, f in zip(recs, frames):
            batch = tokens.collate([tokens.encode_prompt(r, len(f), model.variant, tok)], tok.pad_token_id,
                                   padding_side="left", frames=[f])
            t0 = time.perf_counter()
            gen = model.generate(**batch, tokenizer=tok, max_new_tokens=max_new_tokens, use_cache=use_cache)[0]
            times.append(time.perf_counter() - t0)
            n_new.append(len(gen.ids))
        res["cached" if use_cache else "uncached"] = {"median_s": round(statistics.median(times), 4),
                                                      "mean_new_tokens": round(float(np.mean(n_new)), 1)}
    res["speedup"] = round(res["uncached"]["median_s"] / res["cached"]["median_s"], 2)
    res["trained_model"] = bool(model_dir)
    return res


def peak_memory_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def numeric_env_cost(threads: int = 1, batch_size: int = 16, steps: int = 8, model_dir: str | None = None) -> dict:
    """:func:`train_throughput` in two fresh processes (the kernel choice is made when torch loads),
    one after the other on ``threads`` threads: under the pinned numeric environment of
    :mod:`d2lib.core.numenv` and with the kernels left to the CPU. ``pinned_cost`` = pinned / unpinned
    median step time."""
    import subprocess
    import sys
    out: dict = {"threads": threads}
    for name, pinned in (("pinned", True), ("unpinned", False)):
        env = {**numenv.unpinned(), **numenv.env(threads, pinned=pinned)}
        cmd = [sys.executable, "-m", "d2lib.tools.bench", "--train-step", "--batch-size", str(batch_size),
               "--steps", str(steps), "--threads", str(threads), *(["--model", model_dir] if model_dir else [])]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            return {**out, "error": f"{name}: {res.stderr.strip()[-500:]}"}
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    out["pinned_cost"] = round(out["pinned"]["median_step_s"] / out["unpinned"]["median_step_s"], 3)
    return out


def run(out: Path, model_dir: str | None = None, threads: int = 2, pipeline_only: bool = False) -> dict:
    torch.set_num_threads(threads)
    report = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": threads,
                    "processor": platform.processor() or platform.machine()},
        **pipeline_times(),
    }
    if not pipeline_only:
        report.update(decode=decode_throughput(), train=train_throughput(model_dir=model_dir),
                      numeric_env=numeric_env_cost(1, model_dir=model_dir),
                      generation=generation_latency(model_dir=model_dir))
    report["peak_memory_mb"] = peak_memory_mb()
    io.write_json(out, report, newline=True, indent=2, sort_keys=True)
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(paths.artifacts("bench.json", mkdir=False)))
    ap.add_argument("--model", default=None, help="a saved D2VLM folder (default: a fresh model of params.model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pipeline-only", action="store_true",
                    help="only the stage/cell wall times and the budget check (no throughput measurements)")
    ap.add_argument("--train-step", action="store_true",
                    help="only the training step time, as one JSON line (numeric_env_cost runs this)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    if args.train_step:
        torch.set_num_threads(args.threads)
        res = train_throughput(args.batch_size, args.steps, args.model)
        print(json.dumps({**res, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "env": {k: os.environ.get(k) for k in numenv.PINNED}}))
        return
    report = run(Path(args.out), args.model, args.threads, args.pipeline_only)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
