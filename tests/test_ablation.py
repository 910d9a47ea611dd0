"""d2lib.study.ablation (rows, params, one cell), d2lib.study.aggregate (reading cells, the table, the aggregate's
files) and d2lib.study.claims (paired comparisons, verdicts, the plain-language statement): the per-record values
of the fixture cells against their numbers, the frame-token counter, and one real (tiny) matrix cell end to end.
The interval functions themselves are tested in tests/test_stats.py."""
import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ablation_fixture import ABLATION_TINY, fake_cells, mini_project
from d2lib.core import config, headline, timing
from d2lib.evaluation.record_metrics import RECORD_METRICS, record_values
from d2lib.study import ablation as A
from d2lib.study import aggregate as AG
from d2lib.study import claims as C

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles (tables)
PER_RECORD = list(RECORD_METRICS)  # every metric that is a mean of per-record scores


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


# ------------------------------------------------------------------------------ per-record values
def test_record_values_match_each_cells_numbers(tmp_path):
    cells = fake_cells(tmp_path, {"full": 0.6, "coupled": 0.3}, seeds=(0, 1))
    rec = AG.load_records(cells, tmp_path)
    assert set(rec["row"]) == {"full", "coupled"} and set(rec["seed"]) == {0, 1}
    for (row, seed), c in cells.items():
        d, v = rec[(rec.row == row) & (rec.seed == seed)], c["values"]
        for metric in PER_RECORD:
            est = record_values(d, metric).groupby("task", sort=False)["value"].mean().mean()
            assert est == pytest.approx(v[metric], abs=1e-12), (row, seed, metric)
        r = [v[f"charades.R1@{t}"] for t in (0.3, 0.5, 0.7)]
        assert r[0] >= r[1] >= r[2] and v["tvg.F1_evi"] >= v["tvg.F1"], (row, seed)
    # fractional IoUs: each threshold, the mean IoU and the evidence stage give different numbers, so a metric
    # read at the wrong threshold or from the wrong column fails the comparison above
    pairs = [("charades.R1@0.3", "charades.R1@0.5"), ("charades.R1@0.5", "charades.R1@0.7"),
             ("charades.R1@0.7", "charades.mIoU"), ("charades.R1@0.5", "charades.mIoU"),
             ("charades.R1@0.3", "charades.mIoU"), ("tvg.F1", "tvg.F1_evi"), ("gvq.Acc", "gvq.mRec")]
    for a, b in pairs:
        assert any(c["values"][a] != c["values"][b] for c in cells.values()), (a, b)
    assert record_values(rec, "F1(cap)") is None  # not a mean of per-record scores


def test_seed_averaged_records_and_the_table_agree(tmp_path):
    cells = fake_cells(tmp_path, {"full": [0.2, 0.5, 0.8]})
    per_seed, rec = AG.cells_frame(cells), AG.load_records(cells, tmp_path)
    metrics = ["charades.R1@0.3", "charades.R1@0.5", "charades.R1@0.7", "charades.mIoU", "tvg.F1_evi"]
    table = AG.summarize(per_seed, rec, n_boot=200, metrics=metrics).set_index("metric")
    for m in metrics:
        vals = [cells[("full", s)]["values"][m] for s in (0, 1, 2)]
        assert table.loc[m, "mean"] == pytest.approx(np.mean(vals)) and table.loc[m, "n"] == 3
        assert table.loc[m, "boot_low"] <= table.loc[m, "mean"] <= table.loc[m, "boot_high"]
    assert len(set(table["mean"])) == len(metrics)  # five different numbers, five different intervals
    assert len(set(zip(table["boot_low"], table["boot_high"]))) == len(metrics)


# ------------------------------------------------------------------------------ claims
def _per_seed(values: dict, metric="F1(gnd)"):
    return pd.DataFrame([{"row": r, "label": r, "seed": s, "metric": metric, "value": v}
                         for r, vs in values.items() for s, v in enumerate(vs)])


def test_compare_and_verdicts_from_per_seed_differences():
    ps = _per_seed({"factorized": [0.30, 0.32, 0.34], "coupled": [0.20, 0.21, 0.25]})
    c = C.compare(ps, None, "factorized", "coupled", "F1(gnd)")
    diffs = [0.10, 0.11, 0.09]
    assert c["per_seed"] == pytest.approx(dict(enumerate(diffs)))
    half = T_975[2] * np.std(diffs, ddof=1) / math.sqrt(3)
    assert (c["diff"], c["low"], c["high"]) == pytest.approx((0.10, 0.10 - half, 0.10 + half))
    assert C.claim_verdict(c) == "reproduces"
    assert C.claim_verdict({**c, "diff": -0.1, "low": -0.2, "high": -0.01}) == "contradicted"
    assert C.claim_verdict({**c, "diff": 0.02, "low": -0.05, "high": 0.09}) == "same direction, not resolved"
    assert C.claim_verdict({**c, "diff": -0.02, "low": -0.05, "high": 0.01}) == "opposite direction, not resolved"
    # a second interval (test-video bootstrap) that includes 0 keeps a claim unresolved
    assert C.claim_verdict({**c, "boot_low": -0.01, "boot_high": 0.2}) == "same direction, not resolved"
    assert C.claim_verdict({**c, "diff": float("nan")}) == "not computed"


def test_claims_statement_is_computed_from_the_numbers():
    ps = pd.concat([_per_seed({"factorized": [0.30, 0.32, 0.34], "coupled": [0.20, 0.21, 0.25],
                               "full": [0.3, 0.5, 0.1], "no_visual_injection": [0.31, 0.2, 0.3]}),
                    _per_seed({"factorized": [0.1, 0.1, 0.1], "coupled": [0.2, 0.21, 0.22],
                               "full": [0.1, 0.1, 0.1], "no_visual_injection": [0.1, 0.1, 0.1]}, "F1(cap)")])
    claims = C.evaluate_claims(ps)
    assert set(claims["claim"]) == {"factorize", "injection"}  # only claims whose rows were run
    got = claims.set_index(["claim", "metric"])["verdict"].to_dict()
    assert got[("factorize", "F1(gnd)")] == "reproduces"
    assert got[("factorize", "F1(cap)")] == "contradicted"
    assert got[("injection", "F1(gnd)")] in ("same direction, not resolved", "opposite direction, not resolved")
    assert claims.set_index(["claim", "metric"]).loc[("factorize", "F1(gnd)"), "paper_diff"] == pytest.approx(28.9 - 21.2)
    text = C.claims_statement(claims)
    assert "Reproduces on Shapes: factorizing" in text and "[grounding F1]" in text
    assert "Does not reproduce (contradicted): factorizing" in text and "[caption F1]" in text
    # flip the numbers → the statement flips
    flipped = ps.copy()
    flipped.loc[(flipped.row == "coupled") & (flipped.metric == "F1(gnd)"), "value"] = [0.5, 0.5, 0.52]
    t2 = C.claims_statement(C.evaluate_claims(flipped))
    assert "Reproduces on Shapes: none" in t2


# ------------------------------------------------------------------------------ aggregate
def test_aggregate_writes_table_claims_plots_and_json(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))  # the aggregate's timing log goes under tmp_path/artifacts
    root = tmp_path / "ablation"
    cells = fake_cells(root, {"coupled": [0.0, 0.05, 0.1], "factorized": [0.9, 0.95, 1.0], "full": 0.7, "full_fpo": 0.75})
    acfg = A.AblationConfig(variants=("coupled", "factorized", "full"), preference=("fpo",), seeds=(0, 1, 2), n_boot=200)
    out = AG.aggregate(acfg, root=root, metrics_path=tmp_path / "metrics" / "ablation.json", plots_dir=tmp_path / "plots")
    table = out["table"]
    assert list(dict.fromkeys(table["row"])) == ["coupled", "factorized", "full", "full_fpo"]
    per_seed = out["per_seed"]
    for row in ("coupled", "factorized"):
        vals = per_seed[(per_seed.row == row) & (per_seed.metric == "F1(gnd)")]["value"].to_list()
        t = table[(table.row == row) & (table.metric == "F1(gnd)")].iloc[0]
        half = T_975[2] * np.std(vals, ddof=1) / math.sqrt(3)
        assert (t["mean"], t["low"], t["high"]) == pytest.approx((np.mean(vals), np.mean(vals) - half, np.mean(vals) + half))
        assert t["boot_low"] <= t["mean"] <= t["boot_high"]
        assert t["paper"] == A.PAPER[row]["F1(gnd)"]
    cap = table[(table.row == "full") & (table.metric == "F1(cap)")].iloc[0]
    assert math.isnan(cap["boot_low"])  # caption F1 is not a mean of per-record scores
    for name in ("ablation_table.csv", "ablation_cells.csv", "ablation_claims.csv", "ablation_query_control.csv",
                 "ablation_cumulative.png", "ablation_rows.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0, name
    assert (tmp_path / "plots" / "ablation_table.csv").read_text() == table.to_csv(index=False)
    assert (tmp_path / "plots" / "ablation_claims.csv").read_text() == out["claims"].to_csv(index=False)
    png = (tmp_path / "plots" / "ablation_rows.png").read_bytes()  # 12 × 4 inches at 110 dpi
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1320, 440)
    assert not list((tmp_path / "plots").glob(".*"))  # no temporaries left
    j = json.loads((tmp_path / "results" / "ablation.json").read_text())  # everything, beside the headline
    head = json.loads((tmp_path / "metrics" / "ablation.json").read_text())
    assert head == headline.headline("ablation", j) and all(isinstance(v, (int, float)) for v in head.values())
    assert set(head) == {f"R1@0.5/{r}" for r in ("coupled", "factorized", "full", "full_fpo")} | {
        "R1@0.7/full", "F1(gnd)/full", "F1(cap)/full", "claims_reproduced", "claims_contradicted",
        "claims_unresolved", "rows_passing_query_control"}
    assert head["claims_reproduced"] == j["claim_counts"]["reproduced"]
    assert head["R1@0.5/coupled"] == pytest.approx(j["rows"]["coupled"]["charades.R1@0.5"]["mean"])
    assert j["rows"]["factorized"]["F1(gnd)"]["mean"] == pytest.approx(table[(table.row == "factorized") & (table.metric == "F1(gnd)")]["mean"].iloc[0])
    assert j["rows"]["coupled"]["paper"] == {"F1(gnd)": 21.2, "F1(cap)": 14.3}
    assert j["claims"]["factorize/F1(gnd)"]["verdict"] == "reproduces"
    assert "timing" not in j and "seconds" not in j  # wall times live in the timing logs, not in a hashed output
    assert timing.read("ablation_aggregate", root=tmp_path / "artifacts" / "logs" / "timing")["seconds"] >= 0
    t = AG.cell_wall_times(cells, timing_root=tmp_path / "logs" / "timing")  # fake_cells' logs
    assert t["n_cells"] == 12 and t["cells_s"] == pytest.approx(4 * (10 + 11 + 12))
    assert j["schedule"] == A.AblationConfig().schedule() and "factoriz" in j["statement"]
    wide = AG.wide_table(pd.read_csv(tmp_path / "plots" / "ablation_table.csv"))
    assert wide.loc["coupled", "paper F1(gnd)"] == "21.2" and wide.loc["full+fpo", "paper F1(cap)"] == "37.5"
    d = A.AblationConfig()
    assert wide.loc["full+fpo", "schedule"] == (f"ablation budget: {d.sft_steps} SFT + {d.fpo_steps} FPO steps; "
                                                f"{d.eval_max_videos} test videos")
    with pytest.raises(FileNotFoundError, match=r"coupled/3/metrics\.json: missing ablation cell "
                                                r"\(python -m d2lib\.study\.ablation cell --variant coupled --seed 3\)"):
        AG.aggregate(dataclasses.replace(acfg, seeds=(0, 1, 2, 3)), root=root, metrics_path=tmp_path / "x.json",
                     plots_dir=tmp_path / "p", figures=False)
    assert set(AG.load_cells(dataclasses.replace(acfg, seeds=(0, 3)).cells(), root, missing_ok=True)) == {
        (r, 0) for r in acfg.rows()}


def test_config_rows_cells_and_validation():
    a = A.AblationConfig()
    assert a.rows() == ["coupled", "factorized", "factorized_interleaved", "full", "full_dpo", "full_fpo",
                        "consistency_from_start", "no_visual_injection", "frame_level", "text_timestamps"]
    assert len(a.cells()) == 30 and len(a.seeds) >= 3
    with pytest.raises(config.ConfigError, match="ablation.preference"):
        A.AblationConfig(variants=("coupled",), preference=("fpo",))
    with pytest.raises(config.ConfigError, match="ablation.variants"):
        A.AblationConfig(variants=("factorized+interleaved",))
    assert A.split_row("full+fpo") == ("full", "fpo") and A.label("factorized_interleaved") == "factorized+interleaved"
    assert A.cell_dir("full+dpo", 2, "/x").as_posix() == "/x/full_dpo/2"
    repo = config.load_section("ablation")
    assert set(repo.variants) == set(A.SFT_ROWS) and set(repo.preference) == {"dpo", "fpo"} and len(repo.seeds) >= 3
    smoke = config.load_section("ablation", profile="smoke")
    assert smoke.sft_steps < repo.sft_steps and smoke.eval_max_videos <= 3
    names = set(config.load_section("variants").names())
    assert set(repo.variants) <= names


# ------------------------------------------------------------------------------ frame tokens
class Embedder:
    """The part of D2VLM that count_frame_tokens watches: ``embed(input_ids, frame_tok, frame_start, frame_mask,
    frame_pos=None)`` and the ``<video>`` id."""

    ids = {"video": 9}

    def embed(self, input_ids, frame_tok, frame_start, frame_mask, frame_pos=None):
        return ("embedded", tuple(input_ids.shape))


def test_count_frame_tokens_counts_the_video_slots_each_prompt_keeps():
    model = Embedder()
    ids = torch.tensor([[1, 9, 9, 9, 9, 2], [9, 9, 9, 9, 3, 2]])  # 4 <video> slots per prompt
    with A.count_frame_tokens(model) as counts:
        assert model.embed(ids, None, None, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])) == ("embedded", (2, 6))
        model.embed(ids[:1], None, None, frame_mask=torch.tensor([[1, 0, 0, 0]]))  # the mask as a keyword
        model.embed(ids[:, :1], None, None, torch.ones(2, 1))  # a decoding step (one token): not a prompt
        model.embed(ids[1:], None, None, torch.ones(1, 6))  # a mask wider than the slots: at most the slots
        model.embed(ids[:1], None, None, None)  # no mask: every slot
    assert counts == [3, 4, 1, 4, 4]
    assert "embed" not in vars(model) and model.embed(ids, None, None, None) == ("embedded", (2, 6))  # unwrapped
    assert A.inference_summary([{"video": "a"}] * 5, {"a": [0] * 6}, counts)["frame_tokens"] == pytest.approx(16 / 5)


def test_count_frame_tokens_leaves_a_model_without_video_slots_alone():
    class NoVideo(Embedder):
        ids = {}

    model = NoVideo()
    with A.count_frame_tokens(model) as counts:
        model.embed(torch.tensor([[9, 9]]), None, None, torch.ones(1, 2))
    assert counts == [] and "embed" not in vars(model)
    assert A.inference_summary([{"video": "a"}], {"a": [0] * 3}, counts) == {
        "n_queries": 1, "frame_tokens": None, "frames_per_video": 3.0}


# ------------------------------------------------------------------------------ a real tiny cell
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return mini_project(tmp_path_factory.mktemp("abl_project"))


def test_matrix_cell_trains_evaluates_and_writes_its_files(project, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(project))
    A.main(["cell", "--variant", "full", "--seed", "0"])
    d = project / "artifacts" / "ablation" / "full" / "0"
    m = json.loads((d / "metrics.json").read_text())
    assert (m["row"], m["seed"], m["kind"], m["variant"]) == ("full", 0, "sft", "full")
    assert m["schedule"]["sft_steps"] == ABLATION_TINY["sft_steps"] and m["train"]["steps"] == ABLATION_TINY["sft_steps"]
    assert not {"seconds", "seconds_parts"} & set(m) and "seconds" not in m["train"]
    assert set(m["metrics"]["inference"]) == {"n_queries", "frame_tokens", "frames_per_video"}
    logs = project / "artifacts" / "logs" / "timing"
    log = timing.read("ablation/full/0", root=logs)  # the cell's times: here, never in a hashed file
    assert log["seconds"] > 0 and {"train_s", "evaluate_s", "infer_s", "infer_s_per_query", "sft_setup_s",
                                   "sft_train_s", "steps_per_s"} <= set(log)
    assert not (logs / "sft.json").exists()  # sft.run inside a cell leaves the sft stage's log alone
    adapter = d / "final" / "adapter"
    for f in (d / "metrics.json", adapter / "adapter_config.json", adapter / "README.md",
              d / "evaluate" / "full" / "details.json"):
        assert str(project) not in f.read_text(), f  # no absolute path in what DVC hashes
    assert set(m["values"]) == set(A.ALL_METRICS) and m["values"]["F1(gnd)"] is not None
    assert m["values"]["Sim(cap)"] is None  # caption_metrics off: not computed, not 0
    assert m["n_videos"] == ABLATION_TINY["eval_max_videos"]
    rows = pd.read_csv(d / "records.csv")
    assert len(rows) == m["n_records"] and set(rows["task"]) == {"tvg", "tal", "dvc", "rar", "gvq"}
    assert {"gt", "pred", "pred_evi", "score", "seed"} <= set(rows.columns) and (rows["system"] == "full").all()
    assert (d / "evaluate" / "full" / "etbench" / "submission.json").is_file()
    assert (d / "final" / "d2vlm.json").is_file()  # kept: the preference rows continue from the full cell
    assert not list(d.glob("checkpoint-*")) and not list(d.glob(".*.tmp"))

    # a row without preference children keeps no model
    A.main(["cell", "--variant", "coupled", "--seed", "0"])
    c = project / "artifacts" / "ablation" / "coupled" / "0"
    assert (c / "metrics.json").is_file() and not (c / "final").exists()

    # the fpo row plugs into fpo.run's interface (a stub here: d2lib.stages.fpo is tested on its own)
    calls = []

    def fpo_stub(cfg, variant, seed, out_dir, sft_dir, use_grounding=True):
        calls.append((cfg.steps, variant.consistency, seed, sft_dir.name, use_grounding))
        shutil.copytree(sft_dir / "final", out_dir / "final")
        return None  # no in-memory model: the cell loads out_dir/final

    acfg = A.load_config()
    fpo_cfg = dataclasses.make_dataclass("FPOStub", [("steps", int, 5)])()
    p = A.run_pref_cell("fpo", 0, acfg, fpo_cfg, config.load_section("variants"), fpo_fn=fpo_stub)
    assert calls == [(ABLATION_TINY["fpo_steps"], True, 0, "0", True)]
    assert p["row"] == "full_fpo" and p["kind"] == "fpo" and p["schedule"]["continues_from"] == "0"
    f = project / "artifacts" / "ablation" / "full_fpo" / "0"
    assert (f / "metrics.json").is_file() and (f / "records.csv").is_file() and not (f / "final").exists()
    # the stub kept the SFT weights: the fpo row answers exactly like the full row
    a = pd.read_csv(d / "records.csv")["answer"].tolist()
    assert pd.read_csv(f / "records.csv")["answer"].tolist() == a

    out = AG.aggregate(acfg)
    assert set(out["table"]["row"]) == {"coupled", "full", "full_fpo"}
    assert (project / "artifacts" / "metrics" / "ablation.json").is_file()


def test_preference_row_with_the_real_fpo_run(project, monkeypatch):
    """full+dpo continues from the full cell with d2lib.stages.fpo.run (one step) and is evaluated like any row."""
    from d2lib.stages import fpo
    monkeypatch.setenv("D2LIB_ROOT", str(project))
    if not (project / "artifacts" / "ablation" / "full" / "0" / "final").is_dir():
        A.main(["cell", "--variant", "full", "--seed", "0"])
    fcfg = fpo.FPOConfig(steps=3, batch_size=2, tasks=("tvg",), log_every=1, eval_max_queries=2, eval_batch_size=8,
                         max_new_tokens=8, lora=config.from_dict(type(fpo.FPOConfig().lora), {"r": 4, "alpha": 8.0}, "lora"))
    acfg = A.load_config()
    p = A.run_pref_cell("dpo", 0, acfg, fcfg, config.load_section("variants"))
    assert p["row"] == "full_dpo" and p["kind"] == "dpo" and p["train"]["method"] == "dpo"
    assert p["train"]["steps"] == ABLATION_TINY["fpo_steps"]  # the ablation budget replaced fpo.steps
    d = project / "artifacts" / "ablation" / "full_dpo" / "0"
    assert (d / "metrics.json").is_file() and len(pd.read_csv(d / "records.csv")) == p["n_records"]
    assert "seconds" not in p["train"] and p["train"]["sft_dir"] == "artifacts/ablation/full/0"
    assert str(project) not in (d / "metrics.json").read_text()
    log = timing.read("ablation/full_dpo/0", root=project / "artifacts" / "logs" / "timing")
    assert {"seconds", "train_s", "evaluate_s", "fpo_setup_s", "fpo_train_s", "steps_per_s"} <= set(log)
    assert not (project / "artifacts" / "logs" / "timing" / "fpo.json").exists()


def test_bench_counts_the_configured_cells(tmp_path, monkeypatch):
    from d2lib.tools import bench

    root = tmp_path / "proj"
    fake_cells(root / "artifacts" / "ablation", {"coupled": 0.5, "full": 0.5, "stale_row": 0.5}, seeds=(0, 1))
    (root / "params.yaml").write_text("profile: default\nablation:\n  variants: [coupled, full]\n  preference: []\n"
                                      "  seeds: [0, 1]\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("D2LIB_ROOT", str(root))
    t = bench.ablation_times()
    assert t["n_cells"] == 4 and t["cells_total_s"] == pytest.approx(2 * (10 + 11))  # stale_row is not counted
    p = bench.pipeline_times()
    assert p["pipeline_total_s"] == pytest.approx(42) and p["budget_met"] is False  # no notebook times yet
    # the peers study counts in the total and the 45-minute budget, not in the 30-minute one
    peer = root / "artifacts" / "peers" / "univtg" / "0"
    peer.mkdir(parents=True)
    (peer / "metrics.json").write_text("{}")
    timing.log("peers/univtg/0", root=root / "artifacts" / "logs" / "timing", seconds=1000.0)
    (root / "params.yaml").write_text((root / "params.yaml").read_text()
                                      + "peers:\n  rows: []\n  specialists: [univtg]\n  seeds: [0]\n")
    nb = root / "artifacts" / "notebooks"
    nb.mkdir(parents=True)
    for stem, sec in (("07_ablations", 100.0), ("08_peers", 200.0)):
        (nb / f"{stem}.ipynb").write_text(json.dumps({"metadata": {"papermill": {"duration": sec}}}))
    p = bench.pipeline_times()
    assert p["peers"]["n_cells"] == 1 and p["without_peers_s"] == pytest.approx(142)
    assert p["pipeline_total_s"] == pytest.approx(1342)
    assert p["budget_met"] is True and p["budget_with_peers_met"] is True
    assert p["make_repro"] is None and p["with_peers_basis"] == "sum of stage times"
    # a complete make repro's wall time decides the 45-minute budget; a partial or failed one does not
    repro_timing = root / "artifacts" / "repro_timing.json"
    repro_timing.write_text(json.dumps({"wall_s": 3000.0, "cores": 2, "stages": 5, "ran": 5, "complete": True,
                                  "failed": []}))
    p = bench.pipeline_times()
    assert p["with_peers_s"] == 3000.0 and p["budget_with_peers_met"] is False
    assert p["make_repro"]["ran"] == 5 and p["budget_met"] is True  # the 30-minute one stays on the sum
    repro_timing.write_text(json.dumps({"wall_s": 60.0, "cores": 2, "stages": 5, "ran": 2, "complete": False,
                                  "failed": []}))
    p = bench.pipeline_times()
    assert p["with_peers_s"] == pytest.approx(1342) and p["with_peers_basis"] == "sum of stage times"
