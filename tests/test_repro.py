"""d2lib.repro (``make repro``): DVC's DAG, run side by side, committed stage by stage."""
import json
import sys
import textwrap

import pytest

from d2lib import repro

# Each stage writes what it saw: its thread budget and when it ran.
STAGE = textwrap.dedent("""\
    import json, os, sys, time
    out, deps, secs = sys.argv[1], sys.argv[2:-1], float(sys.argv[-1])
    start = time.time()
    for d in deps:
        open(d).read()
    time.sleep(secs)
    json.dump({"threads": os.environ.get("OMP_NUM_THREADS"), "stage": os.environ.get("DVC_STAGE"),
               "start": start, "end": time.time()}, open(out, "w"))
""")


def _stage(name, deps, secs=0.0, fail=False):
    py = f"{sys.executable} stage.py {name}.json {' '.join(deps)} {secs}"
    return {"cmd": "exit 3" if fail else py, "deps": ["stage.py", *deps], "outs": [f"{name}.json"]}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A DVC project: a -> (b, c) -> d, with b and c sleeping long enough to see them overlap."""
    import yaml
    from dvc.repo import Repo
    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "in.txt").write_text("x")

    def write(fail_c=False):
        stages = {"a": _stage("a", ["in.txt"]), "b": _stage("b", ["a.json"], 1.5),
                  "c": _stage("c", ["a.json"], 1.5, fail=fail_c), "d": _stage("d", ["b.json", "c.json"])}
        (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    write()
    monkeypatch.chdir(tmp_path)
    return tmp_path, write


def _status(root):
    from dvc.repo import Repo
    with Repo(str(root)) as r:
        return r.status()


def _read(root, name):
    return json.loads((root / f"{name}.json").read_text())


def test_runs_ready_stages_side_by_side_in_dag_order_and_commits_each(project):
    root, _ = project
    report = repro.run(root, cores=2, log=lambda *_: None)
    assert report["ran"] == 4 and report["complete"] and report["failed"] == []
    a, b, c, d = (_read(root, s) for s in "abcd")
    assert a["threads"] == "2" and d["threads"] == "2"          # alone: every core
    assert b["threads"] == c["threads"] == "1"                  # together: one thread each
    assert b["start"] < c["end"] and c["start"] < b["end"]      # ... and at the same time
    assert a["end"] <= min(b["start"], c["start"]) and d["start"] >= max(b["end"], c["end"])
    assert b["stage"] == "b"
    assert _status(root) == {}                                  # dvc.lock current, outputs cached
    assert json.loads((root / "artifacts/repro_timing.json").read_text())["ran"] == 4

    again = repro.run(root, cores=2, log=lambda *_: None)       # nothing changed: nothing runs
    assert again["ran"] == 0 and all(r.get("skipped") for r in again["timeline"].values())


def test_reruns_only_what_a_change_reaches(project):
    root, _ = project
    repro.run(root, cores=2, log=lambda *_: None)
    (root / "b.json").write_text("{}")   # a damaged output: b is stale, and so is d downstream
    report = repro.run(root, cores=1, log=lambda *_: None)
    assert sorted(s for s, r in report["timeline"].items() if not r.get("skipped")) == ["b", "d"]
    assert _status(root) == {}


def test_a_failed_stage_is_named_and_finished_work_is_kept(project):
    root, write = project
    write(fail_c=True)
    with pytest.raises(RuntimeError, match=r"\['c'\] failed"):
        repro.run(root, cores=2, log=lambda *_: None)
    status = _status(root)
    assert "a" not in status and "b" not in status             # finished stages are committed
    assert "c" in status and not (root / "d.json").exists()    # downstream of the failure never ran
    timing = json.loads((root / "artifacts/repro_timing.json").read_text())
    assert timing["failed"] == ["c"] and not timing["complete"]
    assert (root / "artifacts/logs/c.log").is_file()

    write()                                                     # fixed: continue from there
    report = repro.run(root, cores=2, log=lambda *_: None)
    assert sorted(s for s, r in report["timeline"].items() if not r.get("skipped")) == ["c", "d"]


def test_targets_restrict_to_their_upstream_and_unknown_is_named(project):
    root, _ = project
    report = repro.run(root, targets=["b"], cores=2, log=lambda *_: None)
    assert sorted(report["timeline"]) == ["a", "b"]
    with pytest.raises(SystemExit, match="unknown stage"):
        repro.run(root, targets=["nope"], log=lambda *_: None)
