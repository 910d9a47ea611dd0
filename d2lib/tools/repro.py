"""``python -m d2lib.tools.repro`` (what ``make repro`` runs): DVC's pipeline, its stages run by Dask ``distributed``.

DVC runs one stage after another and has no parallel executor. This runner keeps DVC for what it does
— change detection (``Stage.changed``), removing a stage's outputs before it runs, the cache and
``dvc.lock`` — and hands the stages to a Dask cluster:

- each stage is a task whose worker resource ``cores`` is the thread count its command declares
  (``python -m d2lib.core.numenv --threads N``; 1 if none), so Dask starts it when a worker has that many
  cores free. The count is the stage's, never the scheduler's: on 2 cores or 64, through this runner
  or plain ``dvc repro``, a stage computes the same bits (:mod:`d2lib.core.numenv`). A stage that declares
  more cores than the largest worker has runs with its declared threads on that worker's cores;
- a stage is handed to Dask once every stage upstream of it is committed and DVC says it changed;
  stages with more stages downstream go first (Dask priority);
- the client is the one committer: each stage is committed (``dvc commit``) as it finishes, so a
  later failure loses no finished stage. A failure stops new submissions, lets the running stages
  finish (and commits them), and exits non-zero naming the stage and its log;
- by default the cluster is a ``LocalCluster`` sized to this machine (one worker with as many cores as
  this process may use); ``--scheduler ADDRESS`` uses a running one (``dask scheduler`` plus
  ``dask worker ADDRESS --nthreads N --resources cores=N`` on machines that share this workspace at
  the same path), e.g. to spread the matrix cells over a cluster. The Dask dashboard link is printed.

Each stage's output goes to ``artifacts/logs/<stage>.log``. Every run writes its timeline to
``artifacts/logs/repro_last.json``; a run that ran every stage of the pipeline also to
``artifacts/repro_timing.json`` (``python -m d2lib.tools.bench`` reads it), so a no-op or partial run keeps
the last complete timeline there.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from d2lib.core import numenv

_RUNNING: dict[str, subprocess.Popen] = {}  # this worker's stage processes (for an interrupt)


def run_stage(name: str, cmd: str, wdir: str, env: dict, log: str) -> dict:
    """The Dask task: run a stage's command by the shell in its ``wdir``, output to ``log``."""
    start = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen([os.environ.get("SHELL") or "/bin/sh", "-c", cmd], cwd=wdir,
                                env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT)
        _RUNNING[name] = proc
        try:
            rc = proc.wait()
        finally:
            _RUNNING.pop(name, None)
    return {"rc": rc, "start": start, "end": time.time(), "host": socket.gethostname()}


def _stop_all() -> int:
    for proc in list(_RUNNING.values()):
        proc.terminate()
    return len(_RUNNING)


class _Dvc:
    """One DVC repo for the whole run: the stages are read once (DVC's index of our large dvc.lock
    takes seconds to build); a commit rewrites only its stage's entry, which no other stage reads."""

    def __init__(self, root: Path):
        from dvc.repo import Repo
        self.repo = Repo(str(root))
        self.stages = {s.addressing: s for s in self.repo.index.stages}

    def changed(self, name: str) -> bool:
        with self.repo.lock:
            return self.stages[name].changed()

    def prepare(self, name: str) -> tuple[str, str]:
        """Remove the stage's outputs (as ``dvc repro`` does); return its command and wdir."""
        stage = self.stages[name]
        with self.repo.lock:
            stage.remove_outs(ignore_remove=False, force=False)
        return (stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)), stage.wdir

    def commit(self, name: str) -> None:
        self.repo.commit(name, force=True)

    def order_lock(self) -> None:
        """Put ``dvc.lock``'s entries in ``dvc.yaml``'s order: DVC appends a stage where it was first
        committed, so the file would otherwise record which stage happened to finish first."""
        from dvc.utils.serialize import modify_yaml
        lock = Path(self.repo.root_dir) / "dvc.lock"
        if not lock.is_file():
            return
        order = [s.name for s in self.stages.values() if Path(s.path) == lock.with_name("dvc.yaml")]
        with modify_yaml(str(lock), fs=self.repo.fs) as data:
            stages = data.get("stages", {})
            for name in [n for n in order if n in stages] + [n for n in stages if n not in order]:
                stages.move_to_end(name)


def pipeline(dvc: _Dvc, targets: list[str] | None = None) -> tuple[dict[str, set[str]], dict[str, int]]:
    """``{stage: its direct upstream stages}`` for the stages with a command (data sources such as
    ``data.dvc`` are verified by DVC, not run), restricted to ``targets`` and their upstream; and each
    stage's priority: how many of them depend on it, directly or not."""
    import networkx as nx
    graph = dvc.repo.index.graph  # edges: stage -> the stages it depends on
    nodes = {s.addressing: s for s in graph.nodes}
    keep = set(nodes)
    if targets:
        unknown = [t for t in targets if t not in nodes]
        if unknown:
            raise SystemExit(f"d2lib.tools.repro: unknown stage(s) {unknown}; dvc.yaml has {sorted(nodes)}")
        keep = set(targets).union(*(({d.addressing for d in nx.descendants(graph, nodes[t])}) for t in targets))
    upstream = {a: {d.addressing for d in graph.successors(s) if d.cmd and d.addressing in keep}
                for a, s in nodes.items() if s.cmd and a in keep}
    priority = {a: sum(1 for d in nx.ancestors(graph, nodes[a]) if d.addressing in upstream) for a in upstream}
    return upstream, priority


def connect(scheduler: str | None = None, workers: int = 1, cores: int | None = None, dashboard: str | None = ":8787"):
    """A Dask client: on the cluster at ``scheduler``, or on a new in-process LocalCluster of ``workers``
    workers with ``cores`` cores each (default: all this process may use, over one worker)."""
    from distributed import Client, LocalCluster
    if scheduler:
        return Client(scheduler)
    cores = cores or len(os.sched_getaffinity(0))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=cores, resources={"cores": cores},
                           processes=False, dashboard_address=dashboard)
    return Client(cluster)


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run(root: Path | None = None, targets: list[str] | None = None, client=None, log=print, **cluster) -> dict:
    """Reproduce the pipeline (or ``targets`` and their upstream) on ``client``'s cluster (default:
    :func:`connect` with ``cluster``'s arguments); returns and writes the timeline. Raises
    ``RuntimeError`` naming the failed stage(s) and their logs after committing every stage that finished."""
    root = Path(root or os.getcwd()).resolve()
    with contextlib.chdir(root):  # DVC resolves a stage's paths from the working directory
        return _run(root, targets, client, log, cluster)


def _run(root: Path, targets, client, log, cluster: dict) -> dict:
    from distributed import as_completed
    from d2lib.core import io

    own = client is None
    client = client or connect(**cluster)
    dvc = _Dvc(root)
    logs = root / "artifacts" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timeline, failed, done, running, pending, t0 = {}, [], set(), {}, set(), time.time()
    try:
        if client.dashboard_link and own:
            log(f"d2lib.tools.repro: Dask dashboard {client.dashboard_link}")
        for problem in numenv.check():
            log(f"d2lib.tools.repro: warning: {problem}; the results will not match the committed bits")
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        capacity = max((w.get("resources", {}).get("cores", 0) for w in workers), default=0)
        if capacity < 1:
            raise RuntimeError("d2lib.tools.repro: no Dask worker offers the 'cores' resource (start workers with "
                               "--resources cores=N)")
        upstream, priority = pipeline(dvc, targets)
        pending, t0 = set(upstream), time.time()
        queue = as_completed()

        def submit_ready() -> None:
            ready = True
            while ready:
                ready = sorted((s for s in pending if upstream[s] <= done), key=lambda s: -priority[s])
                for name in ready:
                    pending.discard(name)
                    if not dvc.changed(name):
                        done.add(name)
                        timeline[name] = {"skipped": True}
                        continue
                    cmd, wdir = dvc.prepare(name)
                    threads = numenv.declared_threads(cmd) or numenv.DEFAULT_THREADS
                    env = {**numenv.env(threads), "DVC_ROOT": str(root), "DVC_STAGE": name}
                    path = logs / (name.replace("@", "_").replace("/", "_") + ".log")
                    fut = client.submit(run_stage, name, cmd, wdir, env, str(path), key=f"{name}-{uuid.uuid4().hex[:8]}",
                                        resources={"cores": min(threads, capacity)}, priority=priority[name], pure=False)
                    running[fut] = (name, threads, path)
                    queue.add(fut)
                    log(f"[{time.time() - t0:7.1f}s] queued  {name} ({threads} thread(s))")
                ready = [s for s in ready if s in done]  # skipped ones may have made more stages ready

        submit_ready()
        for fut in queue:
            name, threads, path = running.pop(fut)
            try:
                rec = dict(fut.result())
            except Exception as e:  # the task itself failed (e.g. a worker died)
                rec = {"rc": -1, "start": t0, "end": time.time(), "error": repr(e)}
            rec = {"start_s": round(rec.pop("start") - t0, 1), "end_s": round(rec.pop("end") - t0, 1),
                   "threads": threads, **rec}
            timeline[name] = rec
            if rec["rc"] != 0:
                failed.append(name)
                log(f"[{rec['end_s']:7.1f}s] FAILED  {name} (exit {rec['rc']}); log {path}:\n{_tail(path)}")
                continue
            dvc.commit(name)
            done.add(name)
            log(f"[{rec['end_s']:7.1f}s] done    {name} ({rec['end_s'] - rec['start_s']:.1f} s, {threads} thread(s))")
            if not failed:
                submit_ready()
    except BaseException:
        if running:
            client.cancel(list(running))
            client.run(_stop_all)
        raise
    finally:
        dvc.order_lock()
        dvc.repo.close()
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    if pending and not failed:  # cannot happen with a DAG from DVC; guard against a silent partial run
        raise RuntimeError(f"d2lib.tools.repro: stages {sorted(pending)} never became ready")
    wall = time.time() - t0
    ran = [s for s, r in timeline.items() if not r.get("skipped")]
    report = {"wall_s": round(wall, 1), "workers": len(workers), "cores_per_worker_max": capacity, "targets": targets or "all", "stages": len(upstream), "ran": len(ran),
              "complete": not targets and len(ran) == len(upstream) and not failed and not pending,
              "failed": failed, "timeline": timeline}
    io.write_json(logs / "repro_last.json", report, newline=True, indent=2, sort_keys=True)
    if report["complete"]:
        io.write_json(root / "artifacts" / "repro_timing.json", report, newline=True, indent=2, sort_keys=True)
    if failed:
        named = ", ".join(f"{s} (log {logs / (s.replace('@', '_').replace('/', '_') + '.log')})" for s in failed)
        raise RuntimeError(f"d2lib.tools.repro: stage(s) {failed} failed: {named}; every stage that finished is "
                           "committed — fix and run again to continue from there")
    log(f"d2lib.tools.repro: {len(ran)} of {len(upstream)} stages ran in {wall / 60:.1f} min; timeline in "
        f"{logs / 'repro_last.json'}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help="stages to reproduce with their upstream (default: all)")
    ap.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (default: a LocalCluster)")
    ap.add_argument("--workers", type=int, default=1, help="LocalCluster workers (default 1)")
    ap.add_argument("--cores", type=int, default=None, help="cores per LocalCluster worker (default: this process's CPUs)")
    args = ap.parse_args(argv)
    try:
        run(targets=args.targets or None, scheduler=args.scheduler, workers=args.workers, cores=args.cores)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
