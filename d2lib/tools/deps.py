"""What each DVC stage's code really reads: its d2lib modules, derived from imports.

``dvc.yaml`` promises that each stage lists exactly the code it runs, so that an edit re-runs the
stages it reaches and no other (a figure tweak must not retrain a model). This module derives that list
instead of trusting it:

* the *entry points* of a stage are the modules its command runs (``python -m d2lib.…``) and, for a
  lesson stage, every ``d2lib`` import in the notebook's code cells;
* a params section a stage reads (``sft``, ``variants.full`` …) adds the module that owns that
  section's dataclass (:data:`d2lib.core.config.SECTIONS`): ``config.load_section`` imports it;
* the closure follows every ``import`` of a ``d2lib`` module in those files — at module level and
  inside functions alike, since a function-level import runs when the stage calls that function.

Package ``__init__.py`` files hold only a docstring (a test checks it) and are not listed.
``python -m d2lib.tools.deps`` prints each stage whose declared code deps differ from the derived ones;
``tests/test_deps.py`` fails on any difference.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Iterable

import yaml

PACKAGE = "d2lib"
_MODULE_RUN = re.compile(r"python -m (d2lib(?:\.\w+)+)")
_NOTEBOOK = re.compile(r"papermill\s+(?:--\S+\s+)*(\S+\.ipynb)")


def module_file(root: Path, name: str) -> Path | None:
    """``d2lib.core.spans`` → ``root/d2lib/core/spans.py`` (``None`` for a package or a non-module)."""
    p = root.joinpath(*name.split(".")).with_suffix(".py")
    return p if p.is_file() else None


def _imported_names(tree: ast.AST) -> Iterable[str]:
    """Every dotted name an ``import``/``from … import`` in ``tree`` may load (absolute imports only)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for a in node.names:
                yield f"{node.module}.{a.name}"


def imports_of_source(source: str) -> set[str]:
    """The ``d2lib`` names imported by Python ``source``.

    >>> sorted(imports_of_source("from d2lib.core import spans, paths as p\\nimport os"))
    ['d2lib.core', 'd2lib.core.paths', 'd2lib.core.spans']
    """
    return {n for n in _imported_names(ast.parse(source)) if n == PACKAGE or n.startswith(PACKAGE + ".")}


def notebook_source(path: Path) -> str:
    """The code cells of a notebook as one Python source (IPython magics and shell lines dropped)."""
    nb = json.loads(path.read_text())
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines += [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def closure(root: Path, names: Iterable[str]) -> set[Path]:
    """Every ``d2lib`` module file reachable from ``names`` through imports (repo-relative paths)."""
    todo = [n for n in names]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        f = module_file(root, name)
        if f is None:
            continue
        files.add(f.relative_to(root))
        todo += imports_of_source(f.read_text())
    return files


def import_path(root: Path, names: Iterable[str], target: str) -> list[str]:
    """A shortest chain of imports from one of ``names`` to the file ``target`` (``[]`` if none):
    why a stage reads a module."""
    want = Path(target)
    prev: dict[str, str | None] = {n: None for n in names}
    queue = list(prev)
    while queue:
        name = queue.pop(0)
        f = module_file(root, name)
        if f is None:
            continue
        if f.relative_to(root) == want:
            chain = [name]
            while prev[chain[-1]] is not None:
                chain.append(prev[chain[-1]])
            return chain[::-1]
        for n in sorted(imports_of_source(f.read_text())):
            if n not in prev:
                prev[n] = name
                queue.append(n)
    return []


def section_modules(params: Iterable[str]) -> set[str]:
    """The modules that own the params sections a stage reads (``sft.steps`` → the SFT config's module)."""
    from d2lib.core.config import SECTIONS

    out = set()
    for key in params:
        section = str(key).split(".")[0]
        if section in SECTIONS:
            out.add(SECTIONS[section].split(":")[0])
    return out


def stage_entries(root: Path, stage: dict) -> set[str]:
    """The entry modules of one ``dvc.yaml`` stage (its command's modules, its notebook's imports,
    the owners of its params sections)."""
    cmd = stage["cmd"] if isinstance(stage["cmd"], str) else " ".join(stage["cmd"])
    names = set(_MODULE_RUN.findall(cmd))
    for nb in _NOTEBOOK.findall(cmd):
        if not nb.startswith("artifacts/"):
            names |= imports_of_source(notebook_source(root / nb))
    params = [next(iter(p)) if isinstance(p, dict) else p for p in stage.get("params", [])]
    return names | section_modules(params)


def derived_deps(root: Path, stage: dict) -> list[str]:
    """The ``d2lib/…`` files a stage reads, sorted."""
    return sorted(str(p) for p in closure(root, stage_entries(root, stage)))


def declared_deps(stage: dict) -> list[str]:
    """The ``d2lib/…`` files a stage's ``deps:`` lists, sorted."""
    return sorted(d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith(PACKAGE + "/"))


def differences(root: str | Path = ".") -> dict[str, dict[str, list[str]]]:
    """``{stage: {"missing": [...], "extra": [...]}}`` for every stage whose declared code deps differ."""
    root = Path(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        want, have = set(derived_deps(root, stage)), set(declared_deps(stage))
        if want != have:
            out[name] = {"missing": sorted(want - have), "extra": sorted(have - want)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m d2lib.tools.deps", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="the project root (holds dvc.yaml)")
    ap.add_argument("--stage", help="print the derived deps of this stage")
    ap.add_argument("--why", metavar="FILE", help="with --stage: the import chain that makes it read FILE")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.stage:
        stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][args.stage]
        if args.why:
            print(" → ".join(import_path(root, stage_entries(root, stage), args.why)) or "not read")
        else:
            print("\n".join(derived_deps(root, stage)))
        return 0
    diff = differences(root)
    for name, d in diff.items():
        for f in d["missing"]:
            print(f"{name}: reads {f} but dvc.yaml does not list it")
        for f in d["extra"]:
            print(f"{name}: dvc.yaml lists {f} but the stage does not import it")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
