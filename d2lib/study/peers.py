"""Peer methods next to D²VLM (lesson ``08_peers``): LLM rows with other time/token mechanisms, and a
non-LLM specialist, on the same data, budget and test videos.

Two kinds of rows, both listed in params ``peers`` (adding a row needs no code):

* ``peers.rows`` — video-LLM rows: names in ``variants`` (or ``variants.extra``), e.g. ``full`` (the D²VLM
  row every peer is compared with, ``peers.baseline``), ``text_timestamps`` (times as text tokens) and the
  rows of the time-representation / token-budget mechanisms. Each (row, seed) is one cell trained and scored
  by the ablation's machinery (:func:`d2lib.study.ablation.run_sft_cell`: :func:`d2lib.stages.sft.run` with
  ``peers.sft_steps`` steps, then :func:`d2lib.study.ablation.evaluate_cell` on the first ``peers.eval_max_videos``
  test videos) — the DVC ``matrix`` stage ``peers``;
* ``peers.from_ablation`` — LLM rows the ablation (lesson 07) already trains with the same schedule (by
  default ``full``, the baseline, and ``text_timestamps``): their cells are read from
  ``artifacts/ablation/<row>/<seed>`` instead of being trained twice, scored on the peers' tasks only. The
  aggregate checks that the recorded schedule is the peers budget (steps, val queries, test videos, tasks)
  and stops with the params keys to change when it is not;
* ``peers.specialists`` — non-LLM rows: ``univtg``, the UniVTG-style grounding specialist
  (:mod:`d2lib.peers.univtg`), trained on the same train tvg records and scored on the same test tvg records with
  the same code (:func:`d2lib.stages.evaluate.evaluate_system`) — the ``matrix`` stage ``peers_univtg``. It answers
  tvg only: its dvc F1 is *not applicable* (``None``), never a number.

One process per cell: ``python -m d2lib.study.peers cell --row R --seed S`` → ``artifacts/peers/<row>/<seed>/``
(``metrics.json``, ``records.csv``; the layout of the ablation's cells plus ``metrics.inference``: queries,
frame tokens per prompt, frames per video); its wall times go to the timing log ``peers/<row>/<seed>``
(:mod:`d2lib.core.timing`). ``python -m d2lib.study.peer_table`` (stage ``peers_aggregate``; :mod:`d2lib.study.peer_table`, its own command so that a table edit never re-runs a cell) writes
``artifacts/results/peers.json`` (headline numbers: ``artifacts/metrics/peers.json``) and ``artifacts/plots/peers_table.csv``: accuracy (tvg R@1@0.3/0.5/0.7,
mIoU, tvg F1; dvc F1) with t-intervals over seeds and a bootstrap over test videos (the ablation's table,
:func:`d2lib.study.aggregate.summarize`), the costs the code and data decide (frame tokens per video,
training steps, trainable parameters) and the seeds used; a paired comparison of every row with
``peers.baseline`` (:func:`d2lib.study.claims.compare`) and a statement computed from them. Wall times (training,
inference per query) are this machine's, not the row's: ``python -m d2lib.tools.bench`` reports them from the
timing logs.

Seeds: ``peers.seeds`` (default one seed, ``[0]``; the full study is ``dvc exp run -S 'peers.seeds=[0,1,2]'``;
a ``from_ablation`` row needs each of them in ``ablation.seeds``).
DVC reads ``peers.rows``/``specialists``/``seeds`` when it parses dvc.yaml, before any profile applies — a
profile cannot change them (the pipeline smoke test edits them in its copy of params.yaml).

>>> PeersConfig().all_rows()
['full', 'text_timestamps', 'univtg']
>>> PeersConfig(rows=("numpro",), from_ablation=("full",)).all_rows()
['full', 'numpro', 'univtg']
>>> label("univtg")
'UniVTG-style specialist'
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

from d2lib.core import io, paths, timing
from d2lib.core.config import check
from d2lib.study import ablation
from d2lib.peers.univtg import ROW as UNIVTG, UniVTGConfig

_PROCESS_START = time.time()
SPECIALISTS = (UNIVTG,)

LABELS = {
    **ablation.LABELS, "full": "D²VLM (full)", UNIVTG: "UniVTG-style specialist",
    "text_timestamps": "text timestamps (TimeChat-style)", "numpro": "NumPro (frame numbers drawn)",
    "timemarker": "TimeMarker (time separators)", "timechat": "TimeChat (timestamp embedding)",
    "vtimellm": "VTimeLLM (relative frame indices)", "vtgllm": "VTG-LLM (time tokens)",
    "diff_fp": "DiffFP (frame selection)", "moviechat": "MovieChat (merged tokens)", "stc": "STC pooling",
}
# The columns of the table: metric key (d2lib.study.ablation.ALL_METRICS) → column name.
TABLE_METRICS = {"charades.R1@0.3": "R@1@0.3", "charades.R1@0.5": "R@1@0.5", "charades.R1@0.7": "R@1@0.7",
                 "charades.mIoU": "mIoU", "tvg.F1": "tvg F1", "F1(cap)": "dvc F1"}
COMPARE_METRICS = ("charades.R1@0.5", "charades.mIoU")


def label(row: str) -> str:
    """The name a row is shown under (its params name when it has no label)."""
    return LABELS.get(row, row)


# ------------------------------------------------------------------------------------------------
# params
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeersConfig:
    """params section ``peers`` (stages ``peers``, ``peers_univtg``, ``peers_aggregate``, ``peers_lesson``;
    lesson ``08_peers``).

    ``rows``: video-LLM rows (names in ``variants`` / ``variants.extra``), one cell per (row, seed) of stage
    ``peers``; ``from_ablation``: LLM rows whose cells the ablation trains (read from ``artifacts/ablation``,
    not trained again); ``specialists``: non-LLM rows (``univtg``), stage ``peers_univtg``; ``seeds``; ``baseline``: the
    row every other row is compared with (``full``). The **peers budget**, the same for every LLM row:
    ``sft_steps`` (replaces ``sft.steps``; every other ``sft`` knob as is), ``val_queries``, ``eval_max_videos``
    (first N test videos by name, 0 = all; the specialist is scored on the same videos), ``eval_tasks``
    (``tvg`` and ``dvc``: the table's accuracy columns), ``eval_batch_size``, ``max_new_tokens``,
    ``caption_metrics`` (SentSim; not in the table). ``n_boot``/``ci_level``: intervals; ``keep_models``: keep
    the LLM cells' ``final/``; ``num_threads``: torch threads per cell (0 leaves torch's setting).
    ``univtg``: :class:`d2lib.peers.univtg.UniVTGConfig`.
    """

    rows: tuple[str, ...] = ("full", "text_timestamps")
    from_ablation: tuple[str, ...] = ()
    specialists: tuple[Literal["univtg"], ...] = SPECIALISTS
    seeds: tuple[int, ...] = (0,)
    baseline: str = "full"
    sft_steps: int = 60
    val_queries: int = 32
    eval_max_videos: int = 24
    eval_tasks: tuple[Literal["tvg", "tal", "dvc", "rar", "gvq"], ...] = ("tvg", "dvc")
    eval_batch_size: int = 32
    max_new_tokens: int = 96
    caption_metrics: bool = False
    n_boot: int = 1000
    ci_level: float = 0.95
    keep_models: bool = False
    num_threads: int = 0
    univtg: UniVTGConfig = field(default_factory=UniVTGConfig)

    def __post_init__(self):
        check(len(set(self.rows)) == len(self.rows), "peers.rows", "names must be unique")
        check(all("+" not in r for r in self.rows), "peers.rows", "use the params names (no '+')")
        check(not set(self.rows) & set(SPECIALISTS), "peers.rows",
              f"{sorted(set(self.rows) & set(SPECIALISTS))} is a specialist: list it in peers.specialists")
        check(len(set(self.specialists)) == len(self.specialists), "peers.specialists", "names must be unique")
        check(len(set(self.from_ablation)) == len(self.from_ablation), "peers.from_ablation", "names must be unique")
        check(not set(self.from_ablation) & set(self.rows), "peers.from_ablation",
              f"{sorted(set(self.from_ablation) & set(self.rows))} also in peers.rows: list a row in one of them")
        check(not set(self.from_ablation) & set(SPECIALISTS), "peers.from_ablation",
              "the ablation trains no specialist: list it in peers.specialists")
        llm = (*self.from_ablation, *self.rows)
        check(len(llm) + len(self.specialists) > 0, "peers.rows", "give one or more rows")
        check(not llm or self.baseline in llm, "peers.baseline",
              f"{self.baseline!r} must be one of peers.rows / peers.from_ablation {list(llm)}")
        check(len(self.seeds) > 0 and all(s >= 0 for s in self.seeds), "peers.seeds",
              f"give one or more seeds >= 0, got {list(self.seeds)}")
        check(len(set(self.seeds)) == len(self.seeds), "peers.seeds", "seeds must be unique")
        check(self.sft_steps >= 1, "peers.sft_steps", f"must be >= 1, got {self.sft_steps}")
        check(self.val_queries >= 0, "peers.val_queries", f"must be >= 0, got {self.val_queries}")
        check(self.eval_max_videos >= 0, "peers.eval_max_videos", f"must be >= 0, got {self.eval_max_videos}")
        check("tvg" in self.eval_tasks, "peers.eval_tasks", "must include tvg (the specialist's task)")
        check(self.eval_batch_size >= 1, "peers.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        check(self.max_new_tokens >= 1, "peers.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.n_boot >= 1, "peers.n_boot", f"must be >= 1, got {self.n_boot}")
        check(0.0 < self.ci_level < 1.0, "peers.ci_level", f"must be in (0, 1), got {self.ci_level}")
        check(self.num_threads >= 0, "peers.num_threads", f"must be >= 0, got {self.num_threads}")

    def all_rows(self) -> list[str]:
        """Table order: the rows read from the ablation, the LLM rows trained here, the specialists."""
        return [*self.from_ablation, *self.rows, *self.specialists]

    def cells(self) -> list[tuple[str, int]]:
        """The cells this study trains (stages ``peers`` and ``peers_univtg``)."""
        return [(r, s) for r in (*self.rows, *self.specialists) for s in self.seeds]

    def table_cells(self) -> list[tuple[str, int]]:
        """Every cell of the table: :meth:`cells` and the ``from_ablation`` rows' ablation cells."""
        return [(r, s) for r in self.all_rows() for s in self.seeds]

    def ablation_config(self) -> ablation.AblationConfig:
        """The :class:`d2lib.study.ablation.AblationConfig` the LLM cells run with (the peers budget, no
        preference rows)."""
        return ablation.AblationConfig(
            variants=self.rows or (self.baseline,), preference=(), seeds=self.seeds, sft_steps=self.sft_steps,
            val_queries=self.val_queries, eval_max_videos=self.eval_max_videos, eval_tasks=self.eval_tasks,
            eval_batch_size=self.eval_batch_size, max_new_tokens=self.max_new_tokens,
            caption_metrics=self.caption_metrics, n_boot=self.n_boot, ci_level=self.ci_level,
            keep_models=self.keep_models, num_threads=self.num_threads)

    def schedule(self) -> dict:
        return {"sft_steps": self.sft_steps, "eval_max_videos": self.eval_max_videos,
                "eval_tasks": list(self.eval_tasks), "univtg_steps": self.univtg.steps,
                "univtg_frame_input": self.univtg.frame_input}


def load_config(profile: str | None = None) -> PeersConfig:
    from d2lib.core import config

    return config.load_section("peers", profile=profile)


def root_dir(root: str | Path | None = None) -> Path:
    """``artifacts/peers`` (or ``root``)."""
    return Path(root) if root is not None else paths.artifacts("peers", mkdir=False)


def cell_dir(row: str, seed: int, root: str | Path | None = None) -> Path:
    return root_dir(root) / row / str(int(seed))


def source_dir(pcfg: PeersConfig, row: str, seed: int, root: str | Path | None = None,
               ablation_root: str | Path | None = None) -> Path:
    """Where a table cell lives: ``artifacts/ablation/<row>/<seed>`` for a ``from_ablation`` row, else
    :func:`cell_dir` (:func:`d2lib.study.aggregate.cell_folder`)."""
    return ablation.cell_folder(row, seed, root_dir(root), "peers", pcfg.from_ablation, ablation_root)


# The schedule keys a reused ablation cell must share with the peers budget (what the table's numbers
# depend on): training steps, val queries (the checkpoint the cell keeps), test videos, answer length.
SHARED_SCHEDULE = ("sft_steps", "val_queries", "eval_max_videos", "max_new_tokens")


def check_reused(pcfg: PeersConfig, row: str, seed: int, payload: Mapping, path: Path) -> None:
    """Stop with the params keys to change when an ablation cell read for ``row`` was not trained and
    scored with the peers budget."""
    from d2lib.core.config import ConfigError

    sched = payload.get("schedule") or {}
    bad = [f"{k}: ablation {sched.get(k)!r} vs peers {getattr(pcfg, k)!r}" for k in SHARED_SCHEDULE
           if sched.get(k) != getattr(pcfg, k)]
    missing = [t for t in pcfg.eval_tasks if t not in (sched.get("eval_tasks") or ())]
    if missing:
        bad.append(f"eval_tasks: the ablation cell did not score {missing}")
    if bad:
        raise ConfigError(f"params key 'peers.from_ablation': {path} (row {row!r}, seed {seed}) was not run "
                          f"with the peers budget — {'; '.join(bad)}. Give ablation.* and peers.* the same "
                          f"values, or move {row!r} to peers.rows to train it with the peers budget")


# ------------------------------------------------------------------------------------------------
# cells
# ------------------------------------------------------------------------------------------------
def run_llm_cell(row: str, seed: int, pcfg: PeersConfig, sft_cfg, variants, out_dir: str | Path | None = None,
                 align_dir: str | Path | None = None, test=None, train_fn=None) -> dict:
    """One video-LLM cell: :func:`d2lib.study.ablation.run_sft_cell` with the peers budget into
    ``artifacts/peers/<row>/<seed>``; the payload records ``kind: "llm"`` and the peers schedule."""
    from d2lib.core.config import ConfigError

    try:
        variants.get(row)
    except KeyError as e:
        raise ConfigError(f"params key 'peers.rows': {e.args[0]} — add the row to `variants` "
                          f"(or variants.extra)") from None
    acfg = pcfg.ablation_config()
    out_dir = Path(out_dir) if out_dir is not None else cell_dir(row, seed)
    return ablation.run_sft_cell(row, seed, acfg, sft_cfg, variants, out_dir=out_dir, align_dir=align_dir,
                                 test=test, train_fn=train_fn, timing_name=f"peers/{row}/{seed}")


def load_test(pcfg: PeersConfig, tasks: Sequence[str] = ("tvg",)):
    """``(records, frames, metas)`` of the test records of ``tasks`` on the first ``eval_max_videos`` videos
    (the LLM cells' videos)."""
    from d2lib.training import data
    from d2lib.world.records import load_shapes, shapes_split_dir
    from d2lib.stages import evaluate

    split = load_shapes(shapes_split_dir("test"), check_videos=False)
    records = evaluate.select_records(split.records, tasks, pcfg.eval_max_videos)
    return records, data.load_frames("test", {r["video"] for r in records}), split.metas


def specialist_eval_config(pcfg: PeersConfig):
    """The :class:`d2lib.stages.evaluate.EvaluateConfig` of the specialist (test split, tvg only)."""
    from d2lib.stages.evaluate import EvaluateConfig

    return EvaluateConfig(split="test", models=(), baselines=(), tasks=("tvg",), max_videos=pcfg.eval_max_videos,
                          caption_metrics=False, meteor=False, seed=0, n_boot=pcfg.n_boot, ci_level=pcfg.ci_level)


def run_univtg_cell(seed: int, pcfg: PeersConfig, out_dir: str | Path | None = None,
                    align_dir: str | Path | None = None, test=None) -> dict:
    """The specialist's cell: :func:`d2lib.peers.univtg.run` (train tvg), then the test tvg records — the frozen
    align tower encodes the test frames (timed as inference with the specialist's forward pass) — scored by
    :func:`d2lib.stages.evaluate.evaluate_system`. Keeps ``univtg.pt`` (small) for the lesson's pictures; the wall
    times go to the timing log ``peers/univtg/<seed>``."""
    from d2lib.stages import evaluate
    from d2lib.peers import univtg

    out_dir = Path(out_dir) if out_dir is not None else cell_dir(UNIVTG, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = pcfg.univtg
    t0 = time.perf_counter()
    res = univtg.run(cfg, seed=seed, align_dir=align_dir)
    t_train = time.perf_counter() - t0
    records, frames, metas = test if test is not None else load_test(pcfg)
    t0 = time.perf_counter()
    feats = univtg.encode_videos(res.align_model, {v: frames[v] for v in {r["video"] for r in records}},
                                 cfg.frame_input)
    answered = univtg.predict(res.model, records, feats, res.tokenizer, cfg)
    t_infer = time.perf_counter() - t0
    t0 = time.perf_counter()
    system = evaluate.evaluate_system(UNIVTG, "specialist", answered, None, metas, specialist_eval_config(pcfg),
                                      out_dir / "evaluate", t_infer)
    m = dict(system.metrics)
    m["inference"] = ablation.inference_summary(answered, frames, [len(feats[r["video"]]) for r in answered])
    m["inference"]["frame_tokens_note"] = "frame features per video (no LLM)"
    univtg.save(res.model, out_dir)
    _write_csv(res.log, out_dir / "loss.csv")
    timing.log(f"peers/{UNIVTG}/{seed}", seconds=time.time() - _PROCESS_START, train_s=t_train,
               evaluate_s=t_infer + time.perf_counter() - t0, infer_s=t_infer,
               infer_s_per_query=t_infer / max(len(answered), 1),
               **{f"univtg_{k}_s": v for k, v in res.seconds.items()})
    payload = {
        "row": UNIVTG, "label": label(UNIVTG), "seed": int(seed), "kind": "specialist", "variant": None,
        "switches": dataclasses.asdict(cfg), "schedule": pcfg.schedule(),
        "values": {k: ablation.metric_value(m, k) for k in ablation.ALL_METRICS},
        "metrics": m, "n_records": len(answered), "n_videos": len({r["video"] for r in answered}),
        "train": res.metrics,
    }
    payload["values"]["F1(cap)"] = None  # not applicable: the specialist answers tvg only
    ablation.write_cell(out_dir, payload, [{**r, "seed": int(seed)} for r in system.rows])
    return payload


def _write_csv(rows: Sequence[Mapping], path: Path) -> None:
    import pandas as pd

    io.write_csv(pd.DataFrame(list(rows)), path)


def run_cell(row: str, seed: int, profile: str | None = None) -> dict:
    """The ``cell`` command: read params (profile applied), set threads, run the row's kind of cell."""
    import torch

    from d2lib.core import config

    pcfg = load_config(profile)
    threads = pcfg.univtg.num_threads if row in SPECIALISTS else pcfg.num_threads
    if threads:
        torch.set_num_threads(threads)
    if row in SPECIALISTS:
        if row not in pcfg.specialists:
            print(f"note: {row!r} is not in peers.specialists {list(pcfg.specialists)}", file=sys.stderr)
        return run_univtg_cell(seed, pcfg)
    if row not in pcfg.rows:
        print(f"note: {row!r} is not in peers.rows {list(pcfg.rows)}", file=sys.stderr)
    return run_llm_cell(row, seed, pcfg, config.load_section("sft", profile=profile),
                        config.load_section("variants", profile=profile))


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    ablation.cell_command("peers", __doc__.splitlines()[0], "row",
                          "a peers.rows name (a variants row) or a specialist (univtg)", run_cell,
                          lambda p: (label(p["row"]), cell_dir(p["row"], p["seed"])),
                          ("charades.R1@0.5", "charades.mIoU", "F1(cap)"), argv)


if __name__ == "__main__":
    main()


__all__ = ["SPECIALISTS", "LABELS", "TABLE_METRICS", "COMPARE_METRICS", "PeersConfig", "label", "load_config",
           "root_dir", "cell_dir", "source_dir", "SHARED_SCHEDULE", "check_reused", "run_llm_cell", "load_test",
           "specialist_eval_config", "run_univtg_cell",
           "run_cell", "main"]
