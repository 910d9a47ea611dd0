"""Build ``tools/vega/dvc_plots.html``: DVC's HTML page template with the pinned vega, vega-lite and
vega-embed bundles inlined, so ``dvc plots show`` / ``dvc plots diff`` pages draw without a network.

``.dvc/config`` points ``plots.html_template`` here. DVC fills ``{plot_divs}`` (one ``<div>`` per plot,
each calling ``vegaEmbed``) and ``{refresh_tag}``; the template has no ``{scripts}`` placeholder, so
DVC's own ``<script src="https://cdn...">`` tags are never written. The bundles come from
``npm ci`` in this folder (versions pinned in package.json and package-lock.json); run
``make plots-assets``. Standard library only.

The page also wraps ``vegaEmbed`` to (1) drop the "Open in Vega Editor" action (it posts the chart to
a web site) and (2) count embedded and failed charts in ``window.d2plots`` — the browser test reads it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dvc_plots.html"
# Load order matters: vega-lite and vega-embed read the globals the previous bundles define.
BUNDLES = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js",
           "vega-embed": "build/vega-embed.min.js"}

WRAPPER = """
(function () {
  var embed = window.vegaEmbed;
  var state = window.d2plots = {embedded: 0, failed: [], pending: 0};
  window.vegaEmbed = function (el, spec, opts) {
    state.pending += 1;
    var o = Object.assign({actions: {export: true, source: true, compiled: true, editor: false}}, opts || {});
    return embed(el, spec, o).then(
      function (res) { state.embedded += 1; state.pending -= 1; return res; },
      function (err) { state.failed.push(String(el) + ": " + err); state.pending -= 1; throw err; });
  };
  Object.assign(window.vegaEmbed, embed);
})();
"""


def locked_versions() -> dict[str, str]:
    lock = json.loads((HERE / "package-lock.json").read_text())
    return {name: lock["packages"][f"node_modules/{name}"]["version"] for name in BUNDLES}


def bundle_paths() -> dict[str, Path]:
    """The bundle file of each package, after checking that node_modules holds the locked version."""
    out = {}
    for name, version in locked_versions().items():
        pkg = HERE / "node_modules" / name / "package.json"
        if not pkg.is_file():
            raise SystemExit(f"{pkg.relative_to(HERE.parent.parent)} is missing: run `make plots-assets` "
                             "(npm ci in tools/vega)")
        have = json.loads(pkg.read_text())["version"]
        if have != version:
            raise SystemExit(f"node_modules has {name} {have}, package-lock.json pins {version}: "
                             "run `make plots-assets`")
        out[name] = HERE / "node_modules" / name / BUNDLES[name]
    return out


def render() -> str:
    versions = locked_versions()
    scripts = []
    for name, path in bundle_paths().items():
        js = path.read_text(encoding="utf-8")
        for bad in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
            if bad in js:  # would end the inline script early / be replaced by DVC
                raise SystemExit(f"{path}: contains {bad!r}; cannot be inlined")
        scripts.append(f"<script>/* {name} {versions[name]} (npm, inlined) */\n{js}\n</script>")
    names = ", ".join(f"{k} {v}" for k, v in versions.items())
    return f"""<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots — D²VLM Lab</title>
    <!-- Offline DVC plots page: {names} inlined from tools/vega (package-lock.json). -->
    {chr(10).join(scripts)}
    <script>{WRAPPER}</script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(argv=None) -> int:
    text = render()
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(HERE.parent.parent)} ({len(text) / 1e6:.1f} MB; "
          + ", ".join(f"{k} {v}" for k, v in locked_versions().items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
