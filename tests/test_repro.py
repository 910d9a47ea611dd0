"""d2lib.tools.repro (``make repro``): DVC's pipeline on Dask ``distributed``, committed stage by stage."""
import hashlib
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from d2lib.tools import repro

# Each stage writes what it computed from its deps and the numeric environment it saw (its output, which
# DVC hashes), and when it ran to times/ (not an output).
STAGE = textwrap.dedent("""\
    import hashlib, json, os, sys, time
    out, deps, secs = sys.argv[1], sys.argv[2:-1], float(sys.argv[-1])
    start = time.time()
    h = hashlib.md5(b"".join(open(d, "rb").read() for d in deps)).hexdigest()
    time.sleep(secs)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "DVC_STAGE")}
    json.dump({"deps_md5": h, **env}, open(out, "w"), sort_keys=True)
    os.makedirs("times", exist_ok=True)
    json.dump({"start": start, "end": time.time()}, open(f"times/{out}", "w"))
""")
NUMENV = f"{sys.executable} -m d2lib.core.numenv"


def _stage(name, deps, secs=0.0, fail=False, threads=None):
    py = f"{sys.executable} stage.py {name}.json {' '.join(deps)} {secs}"
    if threads:
        py = f"{NUMENV} --threads {threads} {py}"
    return {"cmd": "exit 3" if fail else py, "deps": ["stage.py", *deps], "outs": [f"{name}.json"]}


def _make(root: Path, fail_c=False):
    import yaml
    stages = {"a": _stage("a", ["in.txt"]), "b": _stage("b", ["a.json"], 1.5),
              "c": _stage("c", ["a.json"], 1.5, fail=fail_c), "d": _stage("d", ["b.json", "c.json"], threads=2)}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A DVC project: a -> (b, c) -> d, with b and c sleeping long enough to see them overlap; d declares
    two threads."""
    from dvc.repo import Repo

    def make(name="p"):
        root = tmp_path / name
        root.mkdir()
        Repo.init(str(root), no_scm=True).close()
        (root / "stage.py").write_text(STAGE)
        (root / "in.txt").write_text("x")
        _make(root)
        return root

    return make


@pytest.fixture(scope="module")
def clusters():
    """Dask clients: two one-core workers, and one one-core worker."""
    from distributed import Client, LocalCluster
    made = {}
    for name, n in (("two", 2), ("one", 1)):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, resources={"cores": 1}, processes=False,
                               dashboard_address=None)
        made[name] = Client(cluster)
    yield made
    for client in made.values():
        client.close()
        client.cluster.close()


def _run(root, client, **kw):
    return repro.run(root, client=client, log=lambda *_: None, **kw)


def _status(root):
    import contextlib

    from dvc.repo import Repo
    with contextlib.chdir(root), Repo(str(root)) as r:
        return r.status()


def _read(root, name, sub=""):
    return json.loads((root / sub / f"{name}.json").read_text())


def _md5s(root):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in [*root.glob("*.json"), root / "dvc.lock"]}


def test_two_workers_and_one_give_the_same_bits_and_commit_each_stage(project, clusters):
    wide, narrow = project("wide"), project("narrow")
    report = _run(wide, clusters["two"])
    assert report["ran"] == 4 and report["complete"] and report["failed"] == [] and report["workers"] == 2
    b, c = (_read(wide, s, "times") for s in "bc")
    assert b["start"] < c["end"] and c["start"] < b["end"]          # two one-core workers: side by side
    _run(narrow, clusters["one"])
    b, c = (_read(narrow, s, "times") for s in "bc")
    assert b["end"] <= c["start"] or c["end"] <= b["start"]          # one core: one after the other
    assert _md5s(wide) == _md5s(narrow)                              # outputs and dvc.lock: the same bits
    a, d = _read(wide, "a"), _read(wide, "d")
    assert a["OMP_NUM_THREADS"] == "1" and d["OMP_NUM_THREADS"] == "2"  # the declared count, whatever the workers
    assert a["ATEN_CPU_CAPABILITY"] == "avx2" and a["MKL_CBWR"] == "AVX2" and d["DVC_STAGE"] == "d"
    assert _status(wide) == {}                                       # dvc.lock current, outputs cached


def test_a_noop_run_keeps_the_last_complete_timeline(project, clusters):
    root = project()
    first = _run(root, clusters["two"])
    timeline = (root / "artifacts/repro_timing.json").read_text()
    again = _run(root, clusters["two"])                              # nothing changed: nothing runs
    assert again["ran"] == 0 and all(r.get("skipped") for r in again["timeline"].values())
    assert (root / "artifacts/repro_timing.json").read_text() == timeline
    assert json.loads(timeline)["wall_s"] == first["wall_s"]
    assert json.loads((root / "artifacts/logs/repro_last.json").read_text())["ran"] == 0


def test_reruns_only_what_a_change_reaches(project, clusters):
    root = project()
    _run(root, clusters["two"])
    (root / "b.json").write_text("{}")   # a damaged output: b is stale; it comes back with the same bits,
    report = _run(root, clusters["one"])  # so d downstream of it is still up to date
    assert sorted(s for s, r in report["timeline"].items() if not r.get("skipped")) == ["b"]
    assert not report["complete"] and _status(root) == {}
    (root / "in.txt").write_text("y")    # a changed input reaches every stage
    report = _run(root, clusters["one"])
    assert sorted(s for s, r in report["timeline"].items() if not r.get("skipped")) == ["a", "b", "c", "d"]


def test_a_failed_stage_is_named_with_its_log_and_finished_work_is_kept(project, clusters):
    root = project()
    _make(root, fail_c=True)
    with pytest.raises(RuntimeError, match=r"\['c'\] failed: c \(log .*artifacts/logs/c\.log\)"):
        _run(root, clusters["two"])
    status = _status(root)
    assert "a" not in status and "b" not in status             # finished stages are committed
    assert "c" in status and not (root / "d.json").exists()    # downstream of the failure never ran
    last = json.loads((root / "artifacts/logs/repro_last.json").read_text())
    assert last["failed"] == ["c"] and not last["complete"]
    assert not (root / "artifacts/repro_timing.json").exists()
    assert (root / "artifacts/logs/c.log").is_file()

    _make(root)                                                 # fixed: continue from there
    report = _run(root, clusters["two"])
    assert sorted(s for s, r in report["timeline"].items() if not r.get("skipped")) == ["c", "d"]


def test_targets_restrict_to_their_upstream_and_unknown_is_named(project, clusters):
    root = project()
    report = _run(root, clusters["one"], targets=["b"])
    assert sorted(report["timeline"]) == ["a", "b"] and not report["complete"]
    with pytest.raises(SystemExit, match="unknown stage"):
        _run(root, clusters["one"], targets=["nope"])


def test_default_local_cluster_prints_the_dashboard(project, monkeypatch):
    root = project()
    lines = []
    report = repro.run(root, targets=["a"], log=lines.append, workers=1, cores=1, dashboard=":0")
    assert report["ran"] == 1 and any("dashboard http" in line for line in lines)
    shutil.rmtree(root)
