"""The pinned numeric environment: one place for the variables that decide which float operations a
stage runs, shared by the Makefile, ``dvc.yaml``'s stage commands, the runner (:mod:`d2lib.tools.repro`),
the tests and ``python -m d2lib.tools.bench``.

Two things change the bits of a trained model on the same code, params, data and seed:

- **the thread count**: a reduction split over more threads sums in another order. Each stage
  declares its count in its ``dvc.yaml`` command (``python -m d2lib.core.numenv --threads N ...``), so
  ``make repro`` on 2 cores or 64 and plain ``dvc repro`` run it with the same count;
- **the CPU kernels**: PyTorch dispatches to the widest vector ISA the CPU has (AVX-512 here), MKL
  and oneDNN likewise. :data:`PINNED` holds all three to the x86-64 AVX2 baseline, which every x86-64
  CPU since 2013 (Intel Haswell, AMD Excavator/Zen) runs, so such machines compute the same bits.

Also pinned: ``PYTHONHASHSEED`` (set iteration order of strings) and the thread variables of OpenMP,
MKL and OpenBLAS. An ARM or pre-AVX2 machine cannot run these kernels; :func:`check` says so, and such
a machine reproduces the committed numbers within their confidence intervals, not their bits.

``python -m d2lib.core.numenv [--threads N] CMD ...`` runs CMD in that environment;
``python -m d2lib.core.numenv --print`` shows it.

>>> env(threads=2)["OMP_NUM_THREADS"], env(threads=2)["ATEN_CPU_CAPABILITY"]
('2', 'avx2')
>>> declared_threads("mkdir -p x && python -m d2lib.core.numenv --threads 2 papermill a.ipynb b.ipynb")
2
>>> declared_threads("python -m d2lib.study.ablation cell --variant full --seed 0")
"""
from __future__ import annotations

import os
import platform
import shlex
import sys

#: The kernel ISA and hashing pins, the same on every machine (x86-64 AVX2 baseline).
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",   # PyTorch's CPU kernels (default on this CPU: avx512)
    "MKL_CBWR": "AVX2",              # MKL's conditional numerical reproducibility branch
    "ONEDNN_MAX_CPU_ISA": "AVX2",    # oneDNN (convolutions, matmuls through mkldnn)
    "DNNL_MAX_CPU_ISA": "AVX2",      # the same for older oneDNN builds
    "PYTHONHASHSEED": "0",
}
#: The variables a stage's thread count sets.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: A stage that declares nothing runs on one thread.
DEFAULT_THREADS = 1


def env(threads: int = DEFAULT_THREADS, pinned: bool = True) -> dict[str, str]:
    """The variables to set for a process doing numeric work on ``threads`` threads (``pinned=False``:
    only the thread count, the kernels left to the CPU — what ``bench`` compares against)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    out = {v: str(threads) for v in THREAD_VARS}
    if pinned:
        out.update(PINNED)
    return out


def apply(threads: int = DEFAULT_THREADS, environ=None) -> dict[str, str]:
    """Set :func:`env` in ``environ`` (default ``os.environ``); do it before torch is imported."""
    environ = os.environ if environ is None else environ
    values = env(threads)
    environ.update(values)
    return values


def unpinned(environ=None) -> dict[str, str]:
    """A copy of ``environ`` without the :data:`PINNED` variables."""
    return {k: v for k, v in (os.environ if environ is None else environ).items() if k not in PINNED}


def declared_threads(cmd: str | list[str]) -> int | None:
    """The thread count a stage command declares through this module (the largest, if several), or
    None when it does not run through it."""
    found = []
    for part in [cmd] if isinstance(cmd, str) else cmd:
        words = shlex.split(part)
        for i, w in enumerate(words[:-1]):
            if w == "d2lib.core.numenv" and i and words[i - 1] == "-m":
                rest = words[i + 1:]
                n = DEFAULT_THREADS
                if len(rest) >= 2 and rest[0] == "--threads":
                    n = int(rest[1])
                elif rest and rest[0].startswith("--threads="):
                    n = int(rest[0].split("=", 1)[1])
                found.append(n)
    return max(found) if found else None


def check() -> list[str]:
    """Why this machine cannot run the pinned kernels ([] when it can): not x86-64, or no AVX2/FMA."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return [f"{machine} CPU: the AVX2 kernels the results were computed with do not exist here"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []  # not Linux: cannot tell
    return [f"CPU lacks {f}" for f in ("avx2", "fma") if f not in flags]


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    threads = DEFAULT_THREADS
    if argv[:1] == ["--threads"] and len(argv) >= 2:
        threads, argv = int(argv[1]), argv[2:]
    elif argv[:1] and argv[0].startswith("--threads="):
        threads, argv = int(argv[0].split("=", 1)[1]), argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("--print", "-h", "--help"):
        if argv[:1] in (["-h"], ["--help"]):
            print(__doc__)
            return
        for k, v in env(threads).items():
            print(f"{k}={v}")
        for problem in check():
            print(f"# warning: {problem}", file=sys.stderr)
        return
    for problem in check():
        print(f"d2lib.core.numenv: warning: {problem}; results will not match the committed bits", file=sys.stderr)
    apply(threads)
    cmd = argv
    if cmd[0] == "python":  # the venv's interpreter, whatever PATH says
        cmd = [sys.executable, *cmd[1:]]
    os.execvpe(cmd[0], cmd, os.environ)


if __name__ == "__main__":
    main()
