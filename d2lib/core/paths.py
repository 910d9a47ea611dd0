"""Repo-root-relative paths, so notebooks and stages work from any working directory.

Every lesson starts with ``from d2lib.core import paths`` and reads/writes through it.
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The project root: ``$D2LIB_ROOT`` if set, else the nearest ancestor of the current
    directory (then of this file) holding both ``params.yaml`` and ``dvc.yaml``."""
    env = os.environ.get("D2LIB_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if (d / "params.yaml").is_file() and (d / "dvc.yaml").is_file():
                return d
    raise FileNotFoundError(
        "could not find the project root (a folder with params.yaml and dvc.yaml) above "
        f"{Path.cwd()} or {Path(__file__).parent}; set D2LIB_ROOT"
    )


def root_path(*parts: str) -> Path:
    """``repo_root() / parts``."""
    return repo_root().joinpath(*parts)


def params_file() -> Path:
    return root_path("params.yaml")


def data_dir() -> Path:
    """The DVC-tracked Shapes benchmark (val/test videos + annotations)."""
    return root_path("data")


def artifacts(*parts: str, mkdir: bool = True) -> Path:
    """``artifacts/<parts>``; with ``mkdir`` the parent folder exists afterwards."""
    p = root_path("artifacts", *parts)
    if mkdir:
        (p if not p.suffix else p.parent).mkdir(parents=True, exist_ok=True)
    return p
