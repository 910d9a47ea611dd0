"""dvc.yaml's code deps are exactly what each stage imports (d2lib.tools.deps), so an edit re-runs the
stages it reaches and no other."""
import ast
import shutil
from pathlib import Path

import pytest
import yaml

from d2lib.core import paths
from d2lib.tools import deps

ROOT = paths.repo_root()
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
TRAINING = ("align", "sft", "fpo", "ablation_sft", "ablation_pref")


def test_every_stage_lists_exactly_the_modules_it_imports():
    diff = deps.differences(ROOT)
    assert diff == {}, "\n".join(f"{s}: missing {d['missing']}, extra {d['extra']}" for s, d in diff.items())


def _copy_project(tmp_path: Path) -> Path:
    for name in ("d2lib", "notebooks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_a_deleted_dep_line_and_a_new_import_are_both_caught(tmp_path):
    root = _copy_project(tmp_path)
    text = (root / "dvc.yaml").read_text()
    line = "      - d2lib/core/spans.py\n"
    assert line in text
    (root / "dvc.yaml").write_text(text.replace(line, "", 1))
    first = next(iter(deps.differences(root).items()))
    assert first[1]["missing"] == ["d2lib/core/spans.py"]

    (root / "dvc.yaml").write_text(text)
    assert deps.differences(root) == {}
    (root / "d2lib" / "core" / "paths.py").write_text(
        (root / "d2lib" / "core" / "paths.py").read_text() + "\n\ndef _late():\n    from d2lib.study import plots\n")
    diff = deps.differences(root)
    assert diff and all("d2lib/study/plots.py" in d["missing"] for d in diff.values())


def test_an_import_chain_explains_a_dep():
    chain = deps.import_path(ROOT, deps.stage_entries(ROOT, STAGES["sft"]), "d2lib/core/spans.py")
    assert chain[-1] == "d2lib.core.spans" and len(chain) >= 2


@pytest.mark.parametrize("stage", ["align", "sft", "fpo", "ablation_sft", "ablation_pref", "peers", "peers_univtg"])
def test_training_stages_and_cells_do_not_read_figures_tables_or_claims(stage):
    """A figure edit re-runs a lesson, never a training run (lessons 03-05 read the training stages back)."""
    got = deps.derived_deps(ROOT, STAGES[stage])
    assert not {"d2lib/study/plots.py", "d2lib/study/aggregate.py", "d2lib/study/claims.py"} & set(got)


@pytest.mark.parametrize("stage", TRAINING)
def test_d2vlm_stages_do_not_read_the_peer_mechanisms(stage):
    assert not [f for f in deps.derived_deps(ROOT, STAGES[stage]) if f.startswith("d2lib/peers/")]


def test_package_inits_hold_only_a_docstring():
    for init in (ROOT / "d2lib").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init
        rest = [n for n in body[1:] if not (isinstance(n, ast.Assign) and n.targets[0].id == "__version__")]
        assert rest == [], f"{init} does more than document its package"


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_each_lesson_opens_by_naming_the_modules_it_imports(notebook):
    import json
    import re

    first = "".join(json.loads(notebook.read_text())["cells"][0]["source"])
    line = next(ln for ln in first.splitlines() if ln.startswith("**The library code this lesson uses:**"))
    named = set(re.findall(r"`(d2lib/[\w/]+\.py)`", line))
    imported = {str(deps.module_file(ROOT, n).relative_to(ROOT))
                for n in deps.imports_of_source(deps.notebook_source(notebook)) if deps.module_file(ROOT, n)}
    assert named == imported
