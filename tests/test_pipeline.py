"""Smoke run of the whole DVC pipeline (profile ``smoke``) in a temporary copy of the repo.

This is the test behind `make repro`: the embedded benchmark is pulled from the committed
offline remote, every stage's notebook runs through papermill, and a second look finds
everything up to date.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_repo(dst: Path) -> None:
    """Copy what a clone would hold: tracked files plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


# The ablation's DVC `matrix` stages take their items (variants × seeds) from params.yaml when DVC parses
# dvc.yaml, before any profile applies: the smoke run shrinks the lists themselves (one row, one seed,
# and the FPO row when the stage exists); profiles.smoke.ablation shrinks each cell's schedule.
SMOKE_ABLATION = {"variants": ["full"], "preference": ["fpo"], "seeds": [0]}


# The peers matrices (lesson 08) likewise: one LLM row trained here, `full` read from the ablation's cell,
# the specialist, one seed.
SMOKE_PEERS = {"rows": ["stc"], "from_ablation": ["full"], "specialists": ["univtg"], "seeds": [0]}


def _smoke_ablation_matrix(params: Path, section: str = "ablation", smoke: dict | None = None) -> None:
    import yaml

    raw = yaml.safe_load(params.read_text())
    if section not in raw:
        return
    lists = dict(SMOKE_ABLATION if smoke is None else smoke)
    if section == "ablation" and "ablation_pref" not in (params.parent / "dvc.yaml").read_text():
        lists["preference"] = []
    lines, out, inside = params.read_text().splitlines(), [], False
    for line in lines:  # rewrite the list lines of the top-level `<section>:` block, comments kept
        if not line.startswith(" "):
            inside = line.startswith(f"{section}:")
        key = line.strip().split(":", 1)[0]
        if inside and line.startswith("  ") and not line.startswith("   ") and key in lists:
            line = f"  {key}: [{', '.join(map(str, lists[key]))}]"
        out.append(line)
    params.write_text("\n".join(out) + "\n")
    assert {k: yaml.safe_load(params.read_text())[section][k] for k in lists} == lists


def _env() -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    env.pop("D2LIB_ROOT", None)
    return env


def _smoke_clone(repo: Path, env: dict) -> Path:
    """A copy of the repo as a clone holds it, on the smoke profile, with the benchmark pulled."""
    repo.mkdir(parents=True)
    _copy_repo(repo)
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("profile: default", "profile: smoke", 1))
    _smoke_ablation_matrix(params)
    _smoke_ablation_matrix(params, "peers", SMOKE_PEERS)
    _run(["git", "init", "-q"], repo, env)
    _run([str(BIN / "dvc"), "pull", "-q", "data.dvc"], repo, env)
    assert (repo / "data" / "shapes" / "test" / "annotations.json").is_file()
    return repo


def _lock(repo: Path) -> dict:
    import yaml
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def _out_md5s(repo: Path, lock: dict) -> dict:
    """md5 of every file under every output the lock lists (relative paths)."""
    import hashlib
    files = {}
    for entry in lock.values():
        for out in entry.get("outs", []):
            top = repo / out["path"]
            for f in sorted([top] if top.is_file() else top.rglob("*")):
                if f.is_file():
                    files[str(f.relative_to(repo))] = hashlib.md5(f.read_bytes()).hexdigest()
    return files


@pytest.mark.slow
def test_dvc_repro_smoke_pipeline(tmp_path):
    """The whole pipeline as `make repro` runs it (the runner on Dask, here two one-core workers), then
    prepare -> align -> sft and one ablation cell again in a second copy on one worker: the same dvc.lock
    entries and the same bytes in every output (weights, caches, predictions, executed lessons), because a
    stage's threads are its declared count, never the scheduler's."""
    env = _env()
    repo = _smoke_clone(tmp_path / "clone", env)
    _run([str(BIN / "python"), "-m", "d2lib.tools.repro", "--workers", "2", "--cores", "1"], repo, env)
    narrow = _smoke_clone(tmp_path / "narrow", env)
    _run([str(BIN / "python"), "-m", "d2lib.tools.repro", "sft", "ablation_sft@full-0", "--workers", "1", "--cores", "1"],
         narrow, env)
    ran = ("prepare", "align", "sft", "ablation_sft@full-0")  # (the copied dvc.lock lists every stage)
    lock, lock1 = ({s: _lock(r)[s] for s in ran} for r in (repo, narrow))
    assert lock == lock1
    files, files1 = _out_md5s(repo, lock), _out_md5s(narrow, lock1)
    assert len(files) > 20 and files == files1
    assert any(p.endswith(".safetensors") for p in files)  # trained weights among them
    assert json.loads((repo / "artifacts" / "repro_timing.json").read_text())["complete"]

    from d2lib.core import headline
    # the DVC metrics files: the headline numbers only (flat, within the budget); everything else is in the
    # full results beside them, and each headline is computed from those results
    heads = {p.stem: json.loads(p.read_text()) for p in sorted((repo / "artifacts" / "metrics").glob("*.json"))}
    assert set(heads) == set(headline.HEADLINES), sorted(heads)
    assert sum(headline.count_values(h) for h in heads.values()) <= headline.BUDGET
    for stage, head in heads.items():
        assert all(v is None or isinstance(v, (int, float)) for v in head.values()), (stage, head)
        full = json.loads((repo / "artifacts" / "results" / f"{stage}.json").read_text())
        assert head == headline.headline(stage, full), stage
    assert heads["prepare"]["train_videos"] == 6  # the smoke profile's prepare.train_videos
    metrics = json.loads((repo / "artifacts" / "results" / "prepare.json").read_text())
    assert metrics["train"]["videos"] == 6
    assert (repo / "artifacts" / "prepare" / "frames_test.npz").is_file()
    for nb in ("01_video_data", "02_model", "03_align", "04_sft_lora", "06_evaluation"):
        assert (repo / "artifacts" / "notebooks" / f"{nb}.ipynb").is_file(), nb
    for stage in ("align", "sft", "evaluate"):
        assert json.loads((repo / "artifacts" / "results" / f"{stage}.json").read_text()), stage
    # what the lessons read from the full results (06: systems' scores and intervals; 07 and 08 below)
    evaluation = json.loads((repo / "artifacts" / "results" / "evaluate.json").read_text())
    assert all({"etbench", "ci"} <= set(m) for m in evaluation["systems"].values())

    ablation = json.loads((repo / "artifacts" / "results" / "ablation.json").read_text())
    assert set(ablation["rows"]) >= {"full"} and "timing" not in ablation
    assert {"schedule", "query_control", "statement", "claim_counts"} <= set(ablation)
    assert set(ablation["query_control"]["rows"]) == set(ablation["rows"])
    assert (repo / "artifacts" / "ablation" / "full" / "0" / "metrics.json").is_file()
    timing = repo / "artifacts" / "logs" / "timing"  # the wall times, outside what DVC hashes
    assert json.loads((timing / "ablation" / "full" / "0.json").read_text())["seconds"] > 0
    for name in ("sft", "fpo", "evaluate", "ablation_aggregate", "peers_aggregate", "04_sft_lora"):
        if name != "fpo" or (repo / "artifacts" / "results" / "fpo.json").is_file():
            assert (timing / f"{name}.json").is_file(), name
    assert (repo / "artifacts" / "notebooks" / "07_ablations.ipynb").is_file()

    peers = json.loads((repo / "artifacts" / "results" / "peers.json").read_text())
    assert {"sft_steps", "univtg_steps", "eval_max_videos"} <= set(peers["schedule"]) and "statement" in peers
    assert set(peers["rows"]) == {"full", "stc", "univtg"} and peers["rows"]["univtg"]["metrics"]["F1(cap)"]["mean"] is None
    assert peers["rows"]["full"]["cost"]["source"] == "ablation" and not (repo / "artifacts" / "peers" / "full").exists()
    assert (repo / "artifacts" / "plots" / "peers_table.csv").is_file()
    assert (repo / "artifacts" / "notebooks" / "08_peers.ipynb").is_file()

    status = _run([str(BIN / "dvc"), "status"], repo, env)
    assert "up to date" in status, status
