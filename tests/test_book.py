"""`make book`: the static site of the executed lessons (d2lib.tools.book).

A tiny executed lesson made here (title, prose, inline and display math, a figure, a table, a widget
output with its static HTML fallback) is built into a site; the site has the lesson page, its figure,
navigation and a search index, shows the widget's fallback, and loads nothing from the network. Without
executed lessons the build fails with a clear message. One page is opened in headless Chromium with the
network cut (served by ``python -m http.server``): MathJax typesets, the figure loads, search finds the
lesson (skipped when no browser is installed)."""
import base64
import io
import json
import subprocess
import sys

import nbformat
import pytest

from d2lib.tools import book

WORD = "quokkaspan"  # a word only the tiny lesson contains, for the search check


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar([0, 1, 2], [1, 3, 2], color="#0173b2")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def tiny_lesson(path):
    """An executed lesson as papermill would leave it (outputs stored, no kernel needed to read it)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    md = nbformat.v4.new_markdown_cell(
        "# 01 · A tiny lesson\n\nWhat you will learn: the " + WORD + " of a span.\n\n"
        "The IoU of two spans is $\\mathrm{IoU}(a, b) = \\frac{|a \\cap b|}{|a \\cup b|}$ and\n\n"
        "$$ y_{kt} = 2^{-d(t, \\mathrm{span}_k)} $$\n")
    fig = nbformat.v4.new_code_cell("plots.row_bars(...)")
    fig.outputs = [nbformat.v4.new_output("display_data", data={
        "image/png": base64.b64encode(_png()).decode(), "text/plain": "<Figure size 300x200>"})]
    fig.execution_count = 1
    table = nbformat.v4.new_code_cell("table")
    table.outputs = [nbformat.v4.new_output("execute_result", execution_count=2, data={
        "text/html": "<table class='dataframe'><tr><th>row</th><th>F1(gnd)</th></tr>"
                     "<tr><td>factorized</td><td>28.9</td></tr></table>",
        "text/plain": "row F1(gnd)"})]
    table.execution_count = 2
    widget = nbformat.v4.new_code_cell("box")
    widget.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/html": "<div class='d2lib-explorer-snapshot'><p>explorer snapshot</p></div>",
        "text/plain": "VBox(children=(...))"})]
    widget.execution_count = 3
    nb.cells = [md, fig, table, widget]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {
        "model_name": "VBoxModel", "state": {}}}, "version_major": 2, "version_minor": 0}}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    lessons = tmp_path_factory.mktemp("lessons")
    tiny_lesson(lessons / "01_tiny.ipynb")
    out = tmp_path_factory.mktemp("book") / "html"
    try:
        return book.build(lessons, out)
    except book.BookError as e:
        if "MathJax is not installed" in str(e):
            pytest.fail(f"{e} — `make test` installs it first (make book-assets)")
        raise


def test_book_has_the_lesson_its_figure_navigation_and_search(site):
    page = (site / "lessons" / "01_tiny.html").read_text(encoding="utf-8")
    assert "A tiny lesson" in page and WORD in page
    assert "factorized" in page and "<table" in page  # the table
    imgs = [p for p in (site / "_images").iterdir() if p.suffix == ".png"]
    assert imgs and any(p.name in page for p in imgs)  # the figure, as a file of the site
    assert "\\frac{|a \\cap b|}{|a \\cup b|}" in page or "\\frac{|a \\cap b|}" in page  # math for MathJax
    assert "mathjax/tex-chtml-full.js" in page and (site / "_static" / "mathjax" / "tex-chtml-full.js").is_file()
    assert "explorer snapshot" in page  # the widget's static fallback…
    assert "widget-view+json" not in page and "VBoxModel" not in page  # …not the widget, nor its saved state
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "lessons/01_tiny.html" in index  # navigation: the table of contents
    assert (site / "search.html").is_file()
    assert WORD in (site / "searchindex.js").read_text(encoding="utf-8")


def test_book_loads_nothing_from_the_network(site):
    assert book.network_references(site) == []
    # the check itself finds what it should
    (site / "bad.html").write_text('<script src="https://cdn.example/x.js"></script>'
                                   '<link rel="stylesheet" href="https://cdn.example/x.css">'
                                   '<a href="https://example.org">a link is fine</a>')
    try:
        assert len(book.network_references(site)) == 2
    finally:
        (site / "bad.html").unlink()


def test_book_without_executed_lessons_fails_clearly(tmp_path):
    with pytest.raises(book.BookError, match="no executed lessons"):
        book.build(tmp_path / "nothing", tmp_path / "html")
    src = nbformat.v4.new_notebook()
    src.cells = [nbformat.v4.new_code_cell("1 + 1")]
    (tmp_path / "lessons").mkdir()
    nbformat.write(src, tmp_path / "lessons" / "01_x.ipynb")
    with pytest.raises(book.BookError, match="no outputs"):
        book.build(tmp_path / "lessons", tmp_path / "html")
    broken = tiny_lesson(tmp_path / "lessons" / "01_x.ipynb")
    nb = nbformat.read(broken, as_version=4)
    nb.cells[2].outputs.append(nbformat.v4.new_output("error", ename="KeyError", evalue="'x'", traceback=[]))
    nbformat.write(nb, broken)
    with pytest.raises(book.BookError, match="stopped with KeyError in code cell 2"):
        book.build(tmp_path / "lessons", tmp_path / "html")
    res = subprocess.run([sys.executable, "-m", "d2lib.tools.book", "--lessons", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "html")], capture_output=True, text=True)
    assert res.returncode == 1 and "no executed lessons" in res.stderr and "make repro" in res.stderr


@pytest.mark.slow
def test_book_page_in_chromium_offline(site):
    import browser

    browser.need_browser()
    with browser.http_server(site) as url, browser.driver((1280, 900), offline=True, allow_hosts=("127.0.0.1",)) as d:
        d.get(url + "/lessons/01_tiny.html")
        assert browser.wait_for(d, "return document.querySelectorAll('mjx-container').length >= 2", timeout=30), \
            "MathJax did not typeset the lesson's math"
        assert browser.wait_for(d, "var i = document.querySelector('img[src*=\"_images\"]');"
                                   " return i && i.complete && i.naturalWidth > 0")
        assert d.execute_script("return document.querySelector('nav') !== null")  # side bar / navigation
        d.get(url + "/search.html?q=" + WORD)
        assert browser.wait_for(d, "var r = document.querySelectorAll('#search-results li, ul.search li');"
                                   " return r.length > 0 && r[0].innerText", timeout=30), "search found nothing"
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
        urls = browser.requested_urls(d)
    assert not [u for u in urls if not u.startswith((url, "data:", "blob:", "about:"))], urls
    assert not errors, errors
