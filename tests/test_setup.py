"""The setup contract: pins agree, DVC analytics off, CI calls `make test`, notebooks clean."""
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins_pyproject():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    return {re.split(r"[=<>]", d)[0].lower(): d for d in deps}


def _pins_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {re.split(r"[=<>]", d)[0].lower(): d for d in pip if not d.startswith("-e")}


def test_environment_yml_mirrors_pyproject():
    assert _pins_pyproject() == _pins_environment()
    assert _pins_pyproject()["torch"] == "torch==2.13.0"
    assert all("==" in d for d in _pins_pyproject().values()), "every dependency is pinned"


def test_dvc_analytics_off_and_offline_remote():
    cfg = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"analytics\s*=\s*false", cfg)
    url = re.search(r"url\s*=\s*(\S+)", cfg).group(1)
    assert (ROOT / ".dvc" / url).resolve() == (ROOT / "dvc-store").resolve()
    assert (ROOT / "data.dvc").is_file()


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_quick_start_is_two_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```", 2)[1]
    cmds = [l.strip() for l in block.splitlines()[1:] if l.strip() and not l.strip().startswith("#")]
    assert cmds == ["make repro", "make test"]


def test_notebooks_stored_clean_with_parameters_tag():
    nbs = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert nbs, "no lesson notebooks"
    for nb_path in nbs:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") for c in code), f"{nb_path.name} stored with outputs"
        assert not any(c.get("execution_count") for c in code), f"{nb_path.name} has execution counts"
        # a cell without an id gets a random one on every execution (nbformat 4.5): the executed lesson would differ
        missing = [i for i, c in enumerate(nb["cells"]) if not c.get("id")]
        assert not missing, f"{nb_path.name}: cells {missing} have no id"
        ids = [c["id"] for c in nb["cells"]]
        assert len(set(ids)) == len(ids), f"{nb_path.name}: cell ids repeat"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name} needs exactly one 'parameters' cell"
        # the parameters cell holds literals only
        for line in "".join(tagged[0]["source"]).splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, value = (s.strip() for s in line.split("=", 1))
                compile(value, nb_path.name, "eval")
                assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name)


def _expand_matrix(stages: dict, raw: dict) -> dict:
    """DVC ``matrix`` stages as one stage per item, ``${item.<k>}`` substituted (items from params)."""
    import itertools

    def lookup(ref):
        node = raw
        for part in ref.strip("${}").split("."):
            node = node[part]
        return node

    out = {}
    for name, stage in stages.items():
        if "matrix" not in stage:
            out[name] = stage
            continue
        dims = {k: lookup(v) if isinstance(v, str) else v for k, v in stage["matrix"].items()}
        for combo in itertools.product(*dims.values()):
            text = yaml.safe_dump({k: v for k, v in stage.items() if k != "matrix"})
            for k, v in zip(dims, combo):
                text = text.replace("${item.%s}" % k, str(v))
            out[f"{name}@{'-'.join(map(str, combo))}"] = yaml.safe_load(text)
    return out


def test_dvc_stages_list_existing_params_and_deps():
    from d2lib.core import config

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    raw = config.read_yaml(ROOT / "params.yaml")
    for name, stage in _expand_matrix(dvc["stages"], raw).items():
        for p in stage.get("params", []):
            for key in ([p] if isinstance(p, str) else [k for d in p.values() for k in d]):
                node = raw
                for part in str(key).split("."):
                    assert isinstance(node, dict) and part in node, f"stage {name}: params key {key} missing"
                    node = node[part]
        for dep in stage.get("deps", []):
            if "${" not in dep:
                # artifacts/ are stage outputs; data/ is pulled from the DVC remote by `make repro`
                ok = (ROOT / dep).exists() or dep.startswith(("artifacts/", "data/"))
                assert ok, f"stage {name}: dep {dep} missing"


def test_every_stage_declares_its_threads_and_lessons_are_normalized():
    """A stage's thread count is part of its spec (its command), never the scheduler's choice; an executed
    lesson is normalized before DVC hashes it."""
    from d2lib.core import numenv

    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        cmd = stage["cmd"]
        assert numenv.declared_threads(cmd), f"stage {name}: no 'python -m d2lib.core.numenv --threads N' in its cmd"
        if "papermill" in cmd:
            out = cmd.split("papermill", 1)[1].split("&&")[0].split()[-1]
            assert f"d2lib.tools.nbnorm {out}" in cmd, f"stage {name}: {out} is not normalized after papermill"


def _make_copy(tmp: Path) -> Path:
    """The Makefile and what its targets read, in a scratch folder (no install happens in these tests)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp / name)
    return tmp


def test_make_data_names_a_missing_remote_folder(tmp_path):
    repo = _make_copy(tmp_path)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(Path(sys.executable))
    (repo / ".venv" / ".installed").touch()  # an installed venv: `make data` goes straight to the pull
    res = subprocess.run(["make", "data"], cwd=repo, capture_output=True, text=True)
    assert res.returncode != 0
    assert "dvc-store/" in res.stderr and "is missing" in res.stderr and "git checkout -- dvc-store" in res.stderr


def test_a_venv_whose_python_is_gone_is_rebuilt(tmp_path):
    repo = _make_copy(tmp_path)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")  # its base Python removed
    (repo / ".venv" / ".installed").touch()
    res = subprocess.run(["make", "-n", "venv"], cwd=repo, capture_output=True, text=True)
    assert "is broken" in res.stdout + res.stderr
    assert not (repo / ".venv").exists()          # removed, so the stamp rule builds a fresh one
    assert "-m venv .venv" in res.stdout           # ... which is what make would run next
