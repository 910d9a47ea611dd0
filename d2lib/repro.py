"""``python -m d2lib.repro`` (what ``make repro`` runs): ``dvc repro`` with independent stages side by side.

DVC runs a pipeline's stages one after another, each with every core. Our cells are small torch
trainings that do not use two cores well: on the 2-core machine two one-thread jobs together did 80
SFT steps of the default model in 30 s, one two-thread job 40 steps in 22 s — ≈1.47× the throughput.
So this runner walks the same DAG DVC builds from ``dvc.yaml`` and, whenever more than one stage is
ready, runs them as one-thread jobs on as many cores as there are (a stage that is ready alone, like
``prepare`` or ``align``, gets every core). Everything else is DVC's:

- a stage runs only if DVC says it changed (``Stage.changed``: its deps, params, outs or command)
  and only after every stage upstream of it has run or was found up to date;
- its command is the ``cmd`` of ``dvc.yaml``, run by the shell in the stage's ``wdir`` after DVC
  removed its outputs (as ``dvc repro`` does);
- as soon as it succeeds it is committed (``dvc commit``: outputs cached, ``dvc.lock`` updated; after the
  freed core got its next job, as a commit of our large dvc.lock takes seconds), so a later failure
  loses no finished stage and ``dvc status`` afterwards reads exactly like after
  ``dvc repro``. A failed stage stops new starts, lets running ones finish (and commits them), and
  exits non-zero naming the stage and its log.

Threads are set through ``OMP_NUM_THREADS`` (torch's default when a stage's ``num_threads`` param is
0), so no stage's params or code changes and plain ``dvc repro`` stays valid and equivalent
(float-level differences only: the order of summation depends on the thread count).
Each job's output goes to ``artifacts/logs/<stage>.log``; the run's timeline to
``artifacts/repro_timing.json`` (``python -m d2lib.bench`` reads it for the budget).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def threads_for(ready: int, used: int, cores: int) -> int:
    """Threads for the next job to start, given ``ready`` stages waiting (this one included) and
    ``used`` threads busy on ``cores`` cores: every core if it would run alone, one otherwise,
    0 = wait for a running job to end (never more threads than cores: two 2-thread torch jobs on
    two cores were ~14× slower, DESIGN §9).

    >>> threads_for(ready=1, used=0, cores=2)   # prepare, align: alone
    2
    >>> threads_for(ready=30, used=0, cores=2)  # the ablation cells
    1
    >>> threads_for(ready=29, used=1, cores=2)
    1
    >>> threads_for(ready=28, used=2, cores=2)
    0
    """
    if used >= cores:
        return 0
    return cores if used == 0 and ready == 1 else 1


def downstream_counts(upstream: dict[str, set[str]]) -> dict[str, int]:
    """How many stages depend (directly or not) on each stage — run those with more first, so the
    long chains (``sft`` → ``evaluate``, a cell → the preference cells) start early.

    >>> downstream_counts({"a": set(), "b": {"a"}, "c": {"b"}, "d": set()})
    {'a': 2, 'b': 1, 'c': 0, 'd': 0}
    """
    below: dict[str, set[str]] = {s: set() for s in upstream}

    def ups(s: str, seen: set[str]) -> set[str]:
        for u in upstream[s]:
            if u not in seen:
                seen.add(u)
                ups(u, seen)
        return seen

    for s in upstream:
        for u in ups(s, set()):
            below[u].add(s)
    return {s: len(v) for s, v in below.items()}


@dataclass
class Job:
    stage: str
    threads: int
    proc: subprocess.Popen
    log: Path
    start: float
    record: dict = field(default_factory=dict)


def _open_repo(root: Path):
    from dvc.repo import Repo
    return Repo(str(root))


class _Dvc:
    """One DVC repo for the whole run. Building DVC's index (parsing dvc.yaml and the large dvc.lock)
    costs ~2 s on the 2-core machine and a commit ~4 s, so the stage objects are read once: asking a
    stage whether it changed or removing its outputs then takes milliseconds. A commit rewrites only
    that stage's entry in dvc.lock, which no other stage's ``changed`` reads, so the objects stay valid."""

    def __init__(self, root: Path):
        self.repo = _open_repo(root)
        self.stages = {s.addressing: s for s in self.repo.index.stages}
        self.graph = self.repo.index.graph

    def changed(self, name: str) -> bool:
        with self.repo.lock:
            return self.stages[name].changed()

    def prepare(self, name: str) -> tuple[str, str]:
        """Remove the stage's outputs (as ``dvc repro`` does); return its command and wdir."""
        stage = self.stages[name]
        with self.repo.lock:
            stage.remove_outs(ignore_remove=False, force=False)
        cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
        return cmd, stage.wdir

    def commit(self, name: str) -> None:
        self.repo.commit(name, force=True)

    def close(self) -> None:
        self.repo.close()


def pipeline(dvc: _Dvc, targets: list[str] | None = None) -> tuple[dict[str, set[str]], list[str]]:
    """``{stage: its direct upstream stages}`` for the stages with a command (data sources such as
    ``data.dvc`` are verified by DVC, not run), restricted to ``targets`` and their upstream; and
    the stages in ``dvc.yaml`` order."""
    import networkx as nx
    graph = dvc.graph  # edges: stage -> the stages it depends on
    nodes = {s.addressing: s for s in graph.nodes}
    keep = set(nodes)
    if targets:
        unknown = [t for t in targets if t not in nodes]
        if unknown:
            raise SystemExit(f"d2lib.repro: unknown stage(s) {unknown}; dvc.yaml has {sorted(nodes)}")
        keep = set(targets)
        for t in targets:
            keep |= {d.addressing for d in nx.descendants(graph, nodes[t])}
    upstream = {a: {d.addressing for d in graph.successors(s) if d.cmd and d.addressing in keep}
                for a, s in nodes.items() if s.cmd and a in keep}
    order = [a for a in dvc.stages if a in upstream]
    return upstream, order


def _start(dvc: _Dvc, name: str, threads: int, log_dir: Path, root: Path) -> Job:
    cmd, wdir = dvc.prepare(name)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               DVC_ROOT=str(root), DVC_STAGE=name)
    log = log_dir / (name.replace("@", "_").replace("/", "_") + ".log")
    fh = open(log, "w")
    proc = subprocess.Popen([os.environ.get("SHELL") or "/bin/sh", "-c", cmd], cwd=wdir, env=env,
                            stdout=fh, stderr=subprocess.STDOUT, close_fds=True)
    fh.close()
    return Job(name, threads, proc, log, time.perf_counter())


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class _State:
    """What :func:`run`'s loop knows: stages done (ran or up to date), pending, running, failed."""

    def __init__(self, upstream: dict[str, set[str]]):
        self.done: set[str] = set()
        self.pending = set(upstream)
        self.stale: set[str] = set()  # ready stages DVC said changed (asked once)
        self.running: dict[str, Job] = {}
        self.failed: list[str] = []
        self.records: dict[str, dict] = {}


def _reap(st: _State, t0: float, log) -> list[Job]:
    """The jobs that ended since the last look (taken off ``running``); failures are recorded here,
    successes are committed by the caller after it has started the next jobs."""
    ended = []
    for name, job in list(st.running.items()):
        rc = job.proc.poll()
        if rc is None:
            continue
        del st.running[name]
        end = time.perf_counter() - t0
        job.record = {"start_s": round(job.start - t0, 1), "end_s": round(end, 1), "threads": job.threads, "rc": rc}
        st.records[name] = job.record
        if rc != 0:
            st.failed.append(name)
            log(f"[{end:7.1f}s] FAILED  {name} (exit {rc}); log {job.log}:\n{_tail(job.log)}")
        ended.append(job)
    return ended


def _ready(dvc: _Dvc, st: _State, upstream: dict[str, set[str]], rank: dict) -> list[str]:
    """Pending stages whose upstream is done and that DVC says changed, best first; the unchanged
    ones are marked done on the way (which can make more stages ready)."""
    ready: list[str] = []
    skipped = True
    while skipped:
        skipped = False
        for name in sorted((s for s in st.pending if upstream[s] <= st.done), key=rank.__getitem__):
            if name in ready:
                continue
            if name in st.stale or dvc.changed(name):
                st.stale.add(name)
                ready.append(name)
            else:
                st.pending.discard(name)
                st.done.add(name)
                st.records[name] = {"skipped": True}
                skipped = True
    return sorted(ready, key=rank.__getitem__)


def run(root: Path | None = None, targets: list[str] | None = None, cores: int | None = None,
        timing: Path | None = None, log=print, poll_s: float = 0.5) -> dict:
    """Reproduce the pipeline (or ``targets`` and their upstream) on ``cores`` cores; returns and
    writes the timeline. Raises ``RuntimeError`` naming the failed stage(s) after committing every
    stage that finished."""
    from .prepare import write_json_atomic
    root = Path(root or os.getcwd()).resolve()
    cores = max(1, cores or len(os.sched_getaffinity(0)))
    dvc = _Dvc(root)
    try:
        upstream, order = pipeline(dvc, targets)
        priority = downstream_counts(upstream)
        rank = {s: (-priority[s], i) for i, s in enumerate(order)}
        log_dir = root / "artifacts" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        timing = Path(timing or root / "artifacts" / "repro_timing.json")

        t0 = time.perf_counter()
        st = _State(upstream)
        try:
            while True:
                ended = _reap(st, t0, log)
                if not st.failed:  # fill the free cores first: committing takes seconds
                    ready = _ready(dvc, st, upstream, rank)
                    used = sum(j.threads for j in st.running.values())
                    for i, name in enumerate(ready):
                        n = threads_for(len(ready) - i, used, cores)
                        if n == 0:
                            break
                        st.running[name] = _start(dvc, name, n, log_dir, root)
                        st.pending.discard(name)
                        used += n
                        log(f"[{time.perf_counter() - t0:7.1f}s] start   {name} ({n} thread(s))")
                for job in ended:
                    if job.record["rc"] == 0:
                        dvc.commit(job.stage)
                        st.done.add(job.stage)
                        log(f"[{job.record['end_s']:7.1f}s] done    {job.stage} "
                            f"({job.record['end_s'] - job.record['start_s']:.1f} s, {job.threads} thread(s))")
                if ended:
                    continue  # stages downstream of the committed ones may be ready now
                if not st.running:
                    break
                time.sleep(poll_s)
        except BaseException:
            for job in st.running.values():
                job.proc.terminate()
            raise
    finally:
        dvc.close()
    wall = time.perf_counter() - t0
    ran = [s for s, r in st.records.items() if not r.get("skipped")]
    report = {"wall_s": round(wall, 1), "cores": cores, "targets": targets or "all",
              "stages": len(upstream), "ran": len(ran),
              "complete": len(ran) == len(upstream) and not st.failed and not st.pending,
              "failed": st.failed, "timeline": st.records}
    write_json_atomic(report, timing)
    if st.failed:
        raise RuntimeError(f"d2lib.repro: stage(s) {st.failed} failed (logs in {log_dir}); every stage that "
                           "finished is committed — fix and run again to continue from there")
    if st.pending:  # cannot happen with a DAG from DVC; guard against a silent partial run
        raise RuntimeError(f"d2lib.repro: stages {sorted(st.pending)} never became ready")
    log(f"d2lib.repro: {len(ran)} of {len(upstream)} stages ran in {wall / 60:.1f} min on {cores} core(s); "
        f"timeline in {timing}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help="stages to reproduce with their upstream (default: all)")
    ap.add_argument("--cores", type=int, default=None, help="cores to use (default: this process's CPU affinity)")
    args = ap.parse_args(argv)
    try:
        run(targets=args.targets or None, cores=args.cores)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
