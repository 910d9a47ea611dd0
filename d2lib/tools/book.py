"""The course as a book: a static HTML site of the executed lessons (``make book``).

``python -m d2lib.tools.book`` reads the lessons as the pipeline executed them — ``artifacts/notebooks/NN_*.ipynb``,
committed to git, so a fresh clone has them — and builds ``book/_build/html`` with Sphinx, myst-nb and
sphinx-book-theme: one page per lesson in reading order with prose, math, figures and tables, a side
bar, previous/next links and full-text search. Nothing is executed and nothing is fetched: the theme is
a pip package, MathJax comes from npm (``tools/book``, ``make book`` installs it) and is copied into the
site, widgets show their static fallback (the ablation explorer's snapshot). After building,
:func:`network_references` scans every page, stylesheet and script the site loads for an ``http(s)://``
resource and the build fails if it finds one.

Read it with ``python -m http.server -d book/_build/html`` and http://localhost:8000.

The build fails with a clear message when there is no executed lesson to show (:class:`BookError`).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from d2lib.core import paths

BOOK_DIR = "book"  # conf.py and intro.md, relative to the repository root
MATHJAX = "tools/book/node_modules/mathjax/es5"
LESSON = re.compile(r"\d\d_[A-Za-z0-9_]+\.ipynb")


class BookError(RuntimeError):
    """Why the book cannot be built (no executed lessons, MathJax not installed, a network reference)."""


def _root() -> Path:
    return paths.repo_root()


def executed_lessons(lessons_dir: str | Path) -> list[Path]:
    """The executed lessons in ``lessons_dir`` in reading order (``NN_name.ipynb``); raises
    :class:`BookError` when there are none, or one has no outputs (never run) or stopped with an error."""
    d = Path(lessons_dir)
    found = sorted(p for p in d.glob("*.ipynb") if LESSON.fullmatch(p.name)) if d.is_dir() else []
    if not found:
        raise BookError(
            f"no executed lessons in {d}/ (NN_name.ipynb): the book shows the lessons as the pipeline executed "
            "them. They are committed with the results; on a checkout without them run `make repro`, "
            "which writes them there.")
    for p in found:
        nb = json.loads(p.read_text(encoding="utf-8"))
        code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
        if code and not any(c.get("outputs") for c in code):
            raise BookError(f"{p} has no outputs: it is a lesson source, not an executed lesson "
                            "(the book reads what papermill wrote under artifacts/notebooks/)")
        for i, c in enumerate(code):
            err = next((o for o in c.get("outputs", []) if o.get("output_type") == "error"), None)
            if err is not None:
                raise BookError(f"{p} stopped with {err.get('ename')} in code cell {i + 1}: the pipeline did not "
                                "finish this lesson (re-run its stage; a failed stage's notebook is not a result)")
    return found


def _title(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for c in nb.get("cells", []):
        if c.get("cell_type") == "markdown":
            for line in "".join(c.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return nb_path.stem


def stage(lessons: list[Path], src: Path, book_dir: Path, mathjax: Path, missing: list[str] = ()) -> Path:
    """Write the Sphinx source folder ``src``: conf.py, index.md (the intro and the table of contents),
    the lessons and MathJax under ``_static/mathjax``."""
    if not (mathjax / "tex-chtml-full.js").is_file():
        raise BookError(f"MathJax is not installed at {mathjax}: run `make book` (npm ci in tools/book)")
    if src.exists():
        shutil.rmtree(src)
    (src / "_static" / "mathjax" / "output" / "chtml").mkdir(parents=True)
    shutil.copy(mathjax / "tex-chtml-full.js", src / "_static" / "mathjax" / "tex-chtml-full.js")
    shutil.copytree(mathjax / "output" / "chtml" / "fonts", src / "_static" / "mathjax" / "output" / "chtml" / "fonts")
    shutil.copy(book_dir / "conf.py", src / "conf.py")
    (src / "lessons").mkdir()
    for p in lessons:  # without the saved widget state: the site shows widgets' static fallbacks only
        nb = json.loads(p.read_text(encoding="utf-8"))
        nb.get("metadata", {}).pop("widgets", None)
        (src / "lessons" / p.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    intro = (book_dir / "intro.md").read_text(encoding="utf-8").rstrip() + "\n"
    if missing:
        intro += ("\n```{note}\nNot executed yet, so not in this book: " + ", ".join(f"`{m}`" for m in missing)
                  + " (`make repro` executes every lesson).\n```\n")
    toc = "\n".join(f"lessons/{p.stem}" for p in lessons)
    intro += f"\n```{{toctree}}\n:maxdepth: 1\n:caption: Lessons\n\n{toc}\n```\n"
    (src / "index.md").write_text(intro, encoding="utf-8")
    return src


# A resource the browser loads (not a link the reader may follow): script/img/iframe/source src, a
# stylesheet/icon/preload link's href, CSS url(...) and @import.
_LOADS = [
    re.compile(r"<(?:script|img|iframe|source|video|audio|embed)\b[^>]*?\bsrc\s*=\s*[\"']?(https?://[^\"' >]+)", re.I),
    re.compile(r"<link\b(?=[^>]*\brel\s*=\s*[\"']?(?:stylesheet|icon|preload|modulepreload|prefetch|manifest))"
               r"[^>]*?\bhref\s*=\s*[\"']?(https?://[^\"' >]+)", re.I),
    re.compile(r"url\(\s*[\"']?(https?://[^\"')]+)", re.I),
    re.compile(r"@import\s+[\"'](https?://[^\"']+)", re.I),
]


def network_references(site: str | Path) -> list[str]:
    """``"file: url"`` for every network resource the site's pages and stylesheets would load."""
    out = []
    for p in sorted(Path(site).rglob("*")):
        if p.suffix not in (".html", ".css") or not p.is_file():
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        for rx in _LOADS:
            out += [f"{p.relative_to(site)}: {m.group(1)}" for m in rx.finditer(text)]
    return out


def build(lessons_dir: str | Path | None = None, out: str | Path | None = None, book_dir: str | Path | None = None,
          mathjax: str | Path | None = None, quiet: bool = True) -> Path:
    """Build the site into ``out`` (default ``book/_build/html``) from the executed lessons in
    ``lessons_dir`` (default ``artifacts/notebooks``); returns ``out``. Raises :class:`BookError`."""
    root = _root()
    lessons_dir = Path(lessons_dir) if lessons_dir is not None else root / "artifacts" / "notebooks"
    book_dir = Path(book_dir) if book_dir is not None else root / BOOK_DIR
    out = Path(out) if out is not None else book_dir / "_build" / "html"
    mathjax = Path(mathjax) if mathjax is not None else root / MATHJAX
    lessons = executed_lessons(lessons_dir)
    have = {p.name for p in lessons}
    missing = sorted(p.name for p in (root / "notebooks").glob("*.ipynb") if p.name not in have) \
        if lessons_dir.resolve() == (root / "artifacts" / "notebooks").resolve() else []
    src = stage(lessons, out.parent / "src", book_dir, mathjax, missing)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-j", "1", "-E", *(["-q"] if quiet else []),
           str(src), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BookError(f"sphinx-build failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    if res.stderr.strip() and not quiet:
        print(res.stderr, file=sys.stderr)
    refs = network_references(out)
    if refs:
        raise BookError("the site would load resources from the network:\n  " + "\n  ".join(refs[:20]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m d2lib.tools.book", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lessons", help="folder of executed lessons (default artifacts/notebooks)")
    ap.add_argument("--out", help="output folder (default book/_build/html)")
    ap.add_argument("--verbose", action="store_true", help="show Sphinx's output")
    a = ap.parse_args(argv)
    try:
        out = build(a.lessons, a.out, quiet=not a.verbose)
    except BookError as e:
        print(f"make book: {e}", file=sys.stderr)
        return 1
    n = len(list(Path(out).glob("lessons/*.html")))
    print(f"book: {n} lessons -> {out}\nread it: python -m http.server -d {out}  (then http://localhost:8000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BookError", "executed_lessons", "stage", "network_references", "build", "main"]
