"""`dvc plots show` / `dvc plots diff` pages that draw offline.

A throw-away git + DVC project gets this repository's dvc.yaml, params.yaml, ``.dvc/plots`` templates and
``plots.html_template`` setting, and small made-up data for every CSV and image plot dvc.yaml declares
(stage plots and the top-level ``plots:`` section). DVC itself writes the pages. Checked: the pages hold
no ``http(s)://`` string outside the inlined vega bundles (whose code names XML namespaces and its own
docs), they draw every chart in headless Chromium with the network cut and ask for nothing but the page
itself, and the committed templates are what ``tools/vega/templates.py`` writes.
"""
import csv
import json
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VEGA = ROOT / "tools" / "vega"
TEMPLATE = VEGA / "dvc_plots.html"
URL = re.compile(r"https?://", re.I)

# Made-up contents per declared plot file: header and rows (a second revision scales the numbers); a plot
# not listed here gets its x and y fields as numbers (_generic).
FAKE = {
    "artifacts/plots/align_loss.csv": (["step", "loss", "lm_loss"], lambda i: [10 * i, 3 / i, 2.9 / i]),
    "artifacts/plots/sft_loss.csv": (["step", "loss", "lm_loss", "grounding_loss", "consistency_loss"],
                                     lambda i: [10 * i, 4 / i, 2 / i, 1.5 / i, 0.01]),
    "artifacts/plots/sft_val.csv": (["step", "R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "true_R1@0.5", "ctrl_R1@0.5",
                               "any_event_R1@0.5", "e1_query_share"],
                              lambda i: [100 * i, 0.1 * i, 0.08 * i, 0.05 * i, 0.09 * i, 0.08 * i, 0.2, 0.7, 0.1 * i]),
    "artifacts/plots/fpo_loss.csv": (["step", "sft_loss", "fpo_loss", "reward_margin"], lambda i: [5 * i, 1 / i, 0.6, 0.1 * i]),
    "artifacts/plots/fpo_val.csv": (["step", "val_acc", "val_text_acc"], lambda i: [5 * (i - 1), 0.5 + 0.05 * i, 0.5]),
    "artifacts/plots/fpo_types.csv": (["type", "acc_before", "acc_after"],
                                      lambda i: [["shift", "add", "drop", "merge", "attribute", "repeat"][i - 1], 0.5, 0.5 + 0.05 * i]),
    "artifacts/plots/evaluate_records.csv": (["task", "event_len", "iou"], lambda i: ["tvg", i, 0.1 * i]),
    "artifacts/plots/ablation_table.csv": (["row", "label", "metric", "mean", "low", "high"],
                                           lambda i: [f"r{i}", f"row {i}", "F1(gnd)", 0.1 * i, 0.05 * i, 0.15 * i]),
    "artifacts/plots/ablation_claims.csv": (["claim", "metric", "diff", "low", "high"],
                                            lambda i: [f"claim{i}", "F1(gnd)", 0.02 * i - 0.05, -0.1, 0.1]),
    "artifacts/plots/peers_table.csv": (["row", "label", "R@1@0.5", "mIoU"], lambda i: [f"p{i}", f"peer {i}", 0.1 * i, 0.1 * i]),
}
N_ROWS = 6
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cf00000301010018dd8db00000000049454e44ae426082")


def _cells(scale: float) -> list[dict]:
    from d2lib.study import ablation

    rows = [*ablation.SFT_ROWS, *(ablation.preference_row(m) for m in ablation.PREFERENCE)]
    return [{"row": r, "label": ablation.label(r), "seed": s, "metric": m, "value": min(1.0, scale * (0.1 + 0.08 * k + 0.02 * s))}
            for k, r in enumerate(rows) for s in range(3) for m in ("F1(gnd)", "F1(cap)", "charades.R1@0.5", "rar.Acc")]


def declared_plots(dvc_yaml: dict) -> dict[str, dict]:
    """``{file: its stage plot properties (or {})}`` for every plot file dvc.yaml declares."""
    files: dict[str, dict] = {}
    for stage in dvc_yaml["stages"].values():
        for entry in stage.get("plots", []):
            name, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            files[name] = props or {}
    for entry in dvc_yaml.get("plots", []):
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        y = spec.get("y") if isinstance(spec, dict) else None
        for f in (y if isinstance(y, dict) else [name] if not y else []):
            files.setdefault(f, {})
    return files


def _generic(props: dict):
    """Made-up columns for a plot FAKE does not know: its x and y fields (numbers) and a label."""
    x, y = props.get("x") or "step", props.get("y") or "value"
    return [x, y, "label"], lambda i: [float(i), 0.1 * i, f"item {i}"]


def write_fake_data(project: Path, files: dict[str, dict], scale: float) -> None:
    for f, props in sorted(files.items()):
        path = project / f
        path.parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".png"):
            path.write_bytes(PNG)
        elif f == "artifacts/plots/ablation_cells.csv":
            rows = _cells(scale)
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        else:
            header, row = FAKE.get(f) or _generic(props)
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                for i in range(1, N_ROWS + 1):
                    w.writerow([v * scale if isinstance(v, float) else v for v in row(i)])


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """``{"show": html path, "diff": html path, "n_vega": charts declared}`` from a throw-away project."""
    if not TEMPLATE.is_file():
        pytest.fail(f"{TEMPLATE.relative_to(ROOT)} is missing: run `make plots-assets` (npm ci in tools/vega, "
                    "then tools/vega/build.py); `make test` does it first")
    cfg = (ROOT / ".dvc" / "config").read_text()
    m = re.search(r"^\s*html_template\s*=\s*(\S+)", cfg, re.M)
    assert m, ".dvc/config sets no plots.html_template: `dvc plots show` would load vega from a CDN"
    assert (ROOT / ".dvc" / m.group(1)).resolve() == TEMPLATE
    project = tmp_path_factory.mktemp("plots")
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], project)
    _run(["git", "config", "user.email", "t@example.invalid"], project)
    _run(["git", "config", "user.name", "test"], project)
    _run([*dvc, "init", "-q"], project)
    _run([*dvc, "config", "core.analytics", "false"], project)
    _run([*dvc, "config", "plots.html_template", m.group(1)], project)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    (project / "tools" / "vega").mkdir(parents=True)
    shutil.copy(TEMPLATE, project / "tools" / "vega" / TEMPLATE.name)
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, project / f)
    files = declared_plots(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    write_fake_data(project, files, 1.0)
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-q", "-m", "plots"], project)
    write_fake_data(project, files, 0.8)
    _run([*dvc, "plots", "show", "-o", "show"], project)
    _run([*dvc, "plots", "diff", "HEAD", "-o", "diff"], project)
    n_vega = len([f for f in files if f.endswith(".csv")])
    return {"show": project / "show" / "index.html", "diff": project / "diff" / "index.html", "n_vega": n_vega,
            "files": files}


def _bundles() -> list[str]:
    build = runpy.run_path(str(VEGA / "build.py"))
    return [p.read_text(encoding="utf-8") for p in build["bundle_paths"]().values()]


@pytest.mark.parametrize("page", ["show", "diff"])
def test_plots_page_has_no_http_reference(pages, page):
    text = pages[page].read_text(encoding="utf-8")
    bundles = _bundles()
    for js in bundles:
        assert js in text, "the page does not inline the pinned vega bundles"
        text = text.replace(js, "")
    assert not URL.search(text), [text[max(0, m.start() - 80):m.end() + 80] for m in URL.finditer(text)][:5]
    assert "<script src" not in text.replace(" ", "")
    # every declared CSV plot is on the page (stage plots and the top-level plots: section)
    assert text.count("vegaEmbed('#") >= pages["n_vega"]
    assert "ablation_bars" in text and "sft_val" in text


def test_templates_are_what_the_script_writes():
    templates = runpy.run_path(str(VEGA / "templates.py"))["templates"]()
    on_disk = {p.stem: json.loads(p.read_text()) for p in (ROOT / ".dvc" / "plots").glob("*.json")}
    assert on_disk == templates, "run `.venv/bin/python tools/vega/templates.py` and commit .dvc/plots"
    assert not any(URL.search(json.dumps(t)) for t in on_disk.values())


def test_package_lock_pins_the_bundles():
    pkg = json.loads((VEGA / "package.json").read_text())
    lock = json.loads((VEGA / "package-lock.json").read_text())
    for name, version in pkg["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


@pytest.mark.slow
@pytest.mark.parametrize("page", ["show", "diff"])
def test_plots_draw_in_chromium_offline(pages, page):
    import browser

    browser.need_browser()
    html = pages[page]
    n_embed = html.read_text(encoding="utf-8").count("vegaEmbed('#")
    with browser.driver((1400, 1000), offline=True) as d:
        d.get(html.as_uri())
        state = browser.wait_for(d, "var s = window.d2plots; return s && s.pending === 0 && "
                                    f"s.embedded + s.failed.length >= {n_embed} && s", timeout=60)
        assert state, d.execute_script("return window.d2plots")
        assert state["failed"] == [] and state["embedded"] == n_embed, state
        # each chart drew something: a canvas with non-white pixels
        drawn = d.execute_script("""
            return Array.from(document.querySelectorAll('.vega-embed canvas')).map(function (c) {
              var x = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;
              for (var i = 0; i < x.length; i += 4) if (x[i + 3] > 0 && (x[i] < 200 || x[i + 1] < 200 || x[i + 2] < 200)) n++;
              return [c.width, c.height, n];
            });""")
        assert len(drawn) == n_embed and all(w > 50 and h > 50 and n > 200 for w, h, n in drawn), drawn
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        urls = browser.requested_urls(d)
    outside = [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert not outside, outside
