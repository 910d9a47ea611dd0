"""Write the vega-lite plot templates of ``.dvc/plots/`` (run from the repository root with the venv's
python; ``tests/test_plots_offline.py`` checks that the committed files are what this writes).

* DVC's built-in templates (``linear``, ``scatter``, ``bar_horizontal``, …) under their own names, minus
  their ``$schema`` URL, so the pages ``dvc plots show`` writes hold no ``https://`` string of their own
  (vega-embed reads a spec without ``$schema`` as vega-lite, which these are). DVC looks a template up in
  ``.dvc/plots/`` before its built-ins, so every plot of dvc.yaml uses these.
* ``ablation_bars``: the ablation's per-seed numbers (``artifacts/plots/ablation_cells.csv``) as one bar
  per variant (mean over seeds) with a dot per seed, one panel per headline metric, each variant in its
  colour from :data:`d2lib.study.plots.VARIANT_COLORS` — the colours of the lessons, the explorer and the book.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".dvc" / "plots"
ABLATION_METRICS = ("F1(gnd)", "F1(cap)", "charades.R1@0.5", "charades.R1@0.7")


def builtin_templates() -> dict[str, dict]:
    from dvc_render.vega_templates import TEMPLATES

    out = {}
    for cls in TEMPLATES:
        content = json.loads(json.dumps(cls.DEFAULT_CONTENT))
        content.pop("$schema", None)
        out[cls.DEFAULT_NAME] = content
    return out


def ablation_bars() -> dict:
    sys.path.insert(0, str(ROOT))
    from d2lib.study import ablation, plots

    rows = [*ablation.SFT_ROWS]
    base = rows.index(ablation.BASE_OF_PREFERENCE) + 1
    rows[base:base] = [ablation.preference_row(m) for m in ablation.PREFERENCE]
    labels = [ablation.label(r) for r in rows]
    y = {"field": "<DVC_METRIC_Y>", "type": "nominal", "title": None, "sort": labels}
    return {
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": {"text": "<DVC_METRIC_TITLE>", "anchor": "middle"},
        "transform": [
            {"filter": {"field": "metric", "oneOf": list(ABLATION_METRICS)}},
            {"filter": "isValid(datum['<DVC_METRIC_X>'])"},
            {"calculate": "100 * datum['<DVC_METRIC_X>']", "as": "score ×100"},
        ],
        "facet": {"column": {"field": "metric", "type": "nominal", "sort": list(ABLATION_METRICS), "title": None}},
        "spec": {
            "width": 170,
            "layer": [
                {"mark": {"type": "bar", "opacity": 0.85},
                 "encoding": {
                     "y": y, "yOffset": {"field": "rev", "sort": []},
                     "x": {"aggregate": "mean", "field": "score ×100", "type": "quantitative",
                           "title": "mean over seeds ×100", "scale": {"domain": [0, 100]}},
                     "color": {"field": "<DVC_METRIC_Y>", "type": "nominal", "legend": None,
                               "scale": {"domain": labels, "range": [plots.variant_color(r) for r in rows]}},
                     "tooltip": [{"field": "rev"}, {"field": "<DVC_METRIC_Y>"}, {"field": "metric"},
                                 {"aggregate": "mean", "field": "score ×100", "format": ".1f"}]}},
                {"mark": {"type": "point", "filled": True, "color": "black", "size": 18},
                 "encoding": {
                     "y": y, "yOffset": {"field": "rev", "sort": []},
                     "x": {"field": "score ×100", "type": "quantitative"},
                     "tooltip": [{"field": "rev"}, {"field": "<DVC_METRIC_Y>"}, {"field": "seed"},
                                 {"field": "score ×100", "format": ".1f"}]}},
            ],
        },
        "resolve": {"scale": {"x": "shared"}},
    }


def templates() -> dict[str, dict]:
    return {**builtin_templates(), "ablation_bars": ablation_bars()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, content in templates().items():
        (OUT / f"{name}.json").write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {(OUT / f'{name}.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
