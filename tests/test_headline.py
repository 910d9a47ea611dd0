"""The headline metrics (d2lib.core.headline): few flat numbers per stage, ≤ BUDGET with the default params,
and nothing but d2lib.core.headline writes or reads the DVC metrics files."""
import json
import re
from pathlib import Path

import yaml

from d2lib.core import config, headline

ROOT = Path(__file__).resolve().parents[1]


def _full_results() -> dict:
    """Full results shaped like each stage's, with the rows the default params configure."""
    acfg = config.load_section("ablation", profile="default")
    pcfg = config.load_section("peers", profile="default")
    stat = {"mean": 0.5, "low": 0.4, "high": 0.6, "boot_low": 0.45, "boot_high": 0.55, "n": 3}
    tvg = {"R1@0.3": 0.6, "R1@0.5": 0.5, "R1@0.7": 0.3, "mIoU": 0.4, "ctrl_R1@0.5": 0.1}
    split = {"videos": 6, "records": 30, "frames": 600}
    system = {"etbench": {"merged": {"F1(gnd)": 0.3, "F1(cap)": 0.2}}, "charades": {"R1@0.5": 0.4}}
    return {
        "prepare": {s: dict(split) for s in ("train", "val", "test")},
        "align": {"steps": 10, "examples": 5, "train_loss": 1.5, "val_loss": 1.7, "val_lm_loss": 1.6},
        "sft": {"steps": 10, "val_tvg": tvg, "random_tvg": tvg, "train": {"loss": 1.0}},
        "fpo": {"val_tvg": tvg, "val_tvg_delta": {"R1@0.5": {"estimate": 0.01, "low": -0.1, "high": 0.1}},
                "pref_after": {"acc": 0.7, "margin": 0.1, "n": 20}},
        "evaluate": {"split": "test", "systems": {"model": system, **{b: system for b in ("random", "prior", "whole")}}},
        "ablation": {"rows": {r: {"label": r, "paper": None, **{m: dict(stat) for m in ("F1(gnd)", "F1(cap)",
                                                                                   "charades.R1@0.5", "charades.R1@0.7")}}
                              for r in acfg.rows()},
                     "claim_counts": {"reproduced": 2, "contradicted": 1, "unresolved": 3, "total": 6},
                     "query_control": {"rows": {r: {"all_pass": True} for r in acfg.rows()}}},
        "peers": {"baseline": pcfg.baseline,
                  "rows": {r: {"metrics": {"charades.R1@0.5": dict(stat)}} for r in pcfg.all_rows()},
                  "comparisons": {f"{r}/{m}": {"verdict": "higher"} for r in pcfg.all_rows() if r != pcfg.baseline
                                  for m in ("charades.R1@0.5", "charades.mIoU")}},
    }


def test_headlines_are_flat_numbers_within_the_budget_for_the_default_params():
    full = _full_results()
    assert set(full) == set(headline.HEADLINES)
    heads = {stage: headline.headline(stage, obj) for stage, obj in full.items()}
    for stage, head in heads.items():
        assert head and all(v is None or isinstance(v, (int, float)) for v in head.values()), stage
        assert None not in head.values(), (stage, head)  # every key found in a full result of the right shape
    total = sum(len(h) for h in heads.values())
    assert total <= headline.BUDGET, {s: len(h) for s, h in heads.items()}
    assert heads["sft"] == {"val_R1@0.5": 0.5, "val_R1@0.7": 0.3, "val_mIoU": 0.4, "val_ctrl_R1@0.5": 0.1}
    assert heads["ablation"]["claims_unresolved"] == 3
    rows = config.load_section("ablation", profile="default").rows()
    assert heads["ablation"]["rows_passing_query_control"] == len(rows)
    n_peers = len(config.load_section("peers", profile="default").all_rows())
    assert heads["peers"]["rows_higher"] == n_peers - 1 and heads["peers"]["rows_unresolved"] == 0


def test_write_puts_everything_in_results_and_the_headline_in_metrics(tmp_path):
    full = _full_results()["sft"]
    rpath, mpath = headline.write("sft", {**full, "nan": float("nan")}, tmp_path / "metrics" / "sft.json")
    assert rpath == tmp_path / "results" / "sft.json" and mpath == tmp_path / "metrics" / "sft.json"
    assert json.loads(rpath.read_text()) == {**full, "nan": None}
    assert json.loads(mpath.read_text()) == headline.headline("sft", full)
    assert headline.count_values(json.loads(mpath.read_text())) == 4
    assert headline.count_values({"a": {"b": 1, "c": [2, 3]}, "d": None}) == 4


def test_dvc_metrics_are_the_headline_files_and_results_are_plain_outputs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metrics = {next(iter(m)) if isinstance(m, dict) else m for s in stages.values() for m in s.get("metrics", [])}
    assert metrics == {f"artifacts/metrics/{s}.json" for s in headline.HEADLINES}
    outs = {k: v for s in stages.values() for o in s.get("outs", []) if isinstance(o, dict) for k, v in o.items()}
    for stage in headline.HEADLINES:
        assert outs.get(f"artifacts/results/{stage}.json") == {"cache": False}, stage
    assert "!/artifacts/results/" in (ROOT / ".gitignore").read_text().splitlines()


def test_only_headline_touches_the_metrics_files():
    """Lessons, the explorer, the book and the bench read the full results, never the headline files."""
    pat = re.compile(r"""artifacts\(\s*\\?["']metrics\\?["']|["'/]metrics["'], *f?["'][a-z{]""")
    sources = [*ROOT.glob("notebooks/*.ipynb"), *(p for p in ROOT.glob("d2lib/**/*.py") if p.name != "headline.py")]
    assert len(sources) > 20 and ROOT / "d2lib" / "study" / "aggregate.py" in sources  # every subpackage is read
    hits = [p.name for p in sources if pat.search(p.read_text())]
    assert not hits, hits
