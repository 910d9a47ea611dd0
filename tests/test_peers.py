"""d2lib.study.peers (lesson 08_peers): the cost columns of the peers table — frame tokens per video, training
steps, trainable parameters — read from each kind of cell, averaged over seeds, written to peers_table.csv and
peers.json and shown in the table people read; the peers cells and the ablation cells they reuse are read by the
one loader of d2lib.study.aggregate."""
import json

import numpy as np
import pandas as pd
import pytest

from ablation_fixture import fake_cells, fake_records
from d2lib.study import aggregate, peer_table, peers

# per row and seed: frame tokens per prompt, frames per video, training steps, trainable parameters
COSTS = {("full", 0): (8.0, 40.0, 200, 5000), ("full", 1): (10.0, 40.0, 200, 5000),
         ("stc", 0): (4.0, 40.0, 200, 3000), ("stc", 1): (None, 40.0, 200, 3000),
         ("univtg", 0): (40.0, 40.0, 300, 900), ("univtg", 1): (40.0, 40.0, 300, 900)}


def _cells(root):
    """Fixture cells of an LLM row, a token-budget row (one seed did not count its frame tokens) and the
    specialist, with the costs each kind of cell records (LLM: train.trainable; specialist: train.params)."""
    records, _ = fake_records()
    cells = fake_cells(root, {"full": 0.7, "stc": 0.5, "univtg": 0.8}, seeds=(0, 1), records=records)
    for (row, seed), c in cells.items():
        tokens, frames, steps, params = COSTS[(row, seed)]
        c["metrics"] = {"inference": {"n_queries": 10, "frame_tokens": tokens, "frames_per_video": frames}}
        if row == "univtg":
            c["kind"], c["train"] = "specialist", {"steps": steps, "params": params}
        else:
            c["train"] = {"steps": steps, "trainable": {"trainable": params, "total": 10 * params}}
        (peers.cell_dir(row, seed, root) / "metrics.json").write_text(json.dumps(c))
    return cells


def test_costs_are_read_per_kind_of_cell_and_averaged_over_seeds(tmp_path):
    cells = _cells(tmp_path)
    full, stc, uni = (peer_table.costs(cells, r) for r in ("full", "stc", "univtg"))
    assert full["frame_tokens"] == 9.0 and full["train_steps"] == 200 and full["trainable_params"] == 5000
    assert stc["frame_tokens"] == 4.0  # the seed that did not count is left out, not read as 0
    assert uni["trainable_params"] == 900 and uni["train_steps"] == 300 and uni["kind"] == "specialist"
    assert full["seeds"] == uni["seeds"] == [0, 1] and full["frames_per_video"] == 40.0
    assert peer_table.costs(cells, "absent")["frame_tokens"] is None


def test_table_cost_columns_csv_json_and_display(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))
    root = tmp_path / "peers"
    _cells(root)
    pcfg = peers.PeersConfig(rows=("full", "stc"), specialists=("univtg",), seeds=(0, 1), n_boot=50)
    out = peer_table.aggregate(pcfg, root=root, metrics_path=tmp_path / "m" / "peers.json", plots_dir=tmp_path / "p")
    table = out["table"].set_index("row")
    assert table["frame_tokens"].to_dict() == {"full": 9.0, "stc": 4.0, "univtg": 40.0}
    assert table["train_steps"].to_dict() == {"full": 200, "stc": 200, "univtg": 300}
    assert table["trainable_params"].to_dict() == {"full": 5000, "stc": 3000, "univtg": 900}
    saved = pd.read_csv(tmp_path / "p" / "peers_table.csv").set_index("row")
    assert (tmp_path / "p" / "peers_table.csv").read_text() == out["table"].to_csv(index=False)
    assert np.array_equal(saved["trainable_params"], table["trainable_params"])
    j = json.loads((tmp_path / "results" / "peers.json").read_text())
    assert j["rows"]["stc"]["cost"]["frame_tokens"] == 4.0 and j["rows"]["univtg"]["cost"]["trainable_params"] == 900
    shown = peer_table.display_table(out["table"])
    assert shown.loc["STC pooling", "frame tokens / video"] == "4.0"
    assert shown.loc["D²VLM (full)", "train steps"] == "200"
    assert shown.loc["UniVTG-style specialist", "train steps"] == "300"
    assert shown.loc["D²VLM (full)", "trainable params"] == "5,000"
    assert shown.loc["D²VLM (full)", "seeds"] == "2 (0 1)"
    # the statement names the costs that differ from the baseline's
    assert "4.0 vs 9.0 frame tokens/video" in j["statement"] and "3,000 vs 5,000 trainable parameters" in j["statement"]
    assert "300 vs 200 training steps" in j["statement"]
    assert "vs 200 training steps" not in j["statement"].split("\n")[0]  # stc: the same steps, not listed
    no_cost = out["table"].assign(frame_tokens=None, trainable_params=float("nan"))
    assert set(peer_table.display_table(no_cost)["frame tokens / video"]) == {"—"}
    assert set(peer_table.display_table(no_cost)["trainable params"]) == {"—"}


def test_one_loader_reads_the_peers_cells_and_the_reused_ablation_cells(tmp_path):
    abl, root = tmp_path / "ablation", tmp_path / "peers"
    fake_cells(abl, {"full": 0.7}, seeds=(0,))
    fake_cells(root, {"stc": 0.5}, seeds=(0,))
    pcfg = peers.PeersConfig(rows=("stc",), from_ablation=("full",), specialists=(), seeds=(0,), eval_tasks=("tvg",))
    assert peers.source_dir(pcfg, "full", 0, root, abl) == aggregate.cell_folder("full", 0, abl) == abl / "full" / "0"
    assert peers.source_dir(pcfg, "stc", 0, root, abl) == peers.cell_dir("stc", 0, root)
    rec = peer_table.load_records({("full", 0): {}, ("stc", 0): {}}, pcfg, root, abl)
    assert set(rec["row"]) == {"full", "stc"} and set(rec["task"]) == {"tvg"}  # only the peers' tasks
    full = aggregate.load_records([("full", 0)], abl)
    assert len(rec[rec.row == "full"]) == (full.task == "tvg").sum() < len(full)
    with pytest.raises(FileNotFoundError,
                       match=r"missing peers cell \(python -m d2lib\.study\.peers cell --row stc --seed 1\)"):
        aggregate.load_cells([("stc", 1)], root, study="peers")
    with pytest.raises(FileNotFoundError, match=r"missing ablation cell for peers\.from_ablation row 'full' "
                                                r"\(python -m d2lib\.study\.ablation cell --variant full --seed 1;"):
        aggregate.load_cells([("full", 1)], root, study="peers", ablation_rows=("full",), ablation_root=abl)
