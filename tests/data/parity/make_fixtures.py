"""Regenerate the metric-parity fixtures in this folder (deterministic: seeded, no model involved).

    .venv/bin/python tests/data/parity/make_fixtures.py

Takes records of the Shapes val split (``data/shapes/val/annotations.json``) and writes answers with
controlled noise, then the files the public evaluators read (written with :mod:`d2lib.evaluation.formats`):

* ``etbench_submission.json`` — E.T. Bench submission (records with ``a``). Source ``shapes`` holds the
  parity cases (exact, shifted, reversed, decimal, "to"/keyword/hyphen parse paths, wrong letters,
  similarity fallback, empty/unparsable answers, dense captions with wrong words, missing/extra events,
  the ±20 s widening). Source ``shapes_dev`` holds one case per *documented* deviation (float32 IoU
  tie at 0.7, clock times, an option letter outside the range, a caption preamble).
  Main-source answers avoid exact IoU ties at 0.7 (checked below with exact fractions).
* ``timechat_tvg_pred.json`` + ``timechat_tvg_gt.json`` — TimeChat/TimeIT grounding files from all tvg
  records and their answers.
* ``timechat_dvc_pred.json`` + ``val.timechat_dvc_gt.json`` — TimeChat/TimeIT dense-captioning files
  from all dvc records (the GT name must start with ``val.``: TimeChat reads the split from it).

Expected values: ``tests/test_metrics_parity.py`` (frozen outputs of the published evaluators, produced
with ``run_published.py`` in this folder).
"""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SEED = 6
N_MAIN = {"tvg": 12, "tal": 6, "rar": 6, "gvq": 6, "dvc": 6}
LETTERS = "ABCDEFGHIJ"
WORDS = ["red", "green", "blue", "yellow", "square", "circle", "triangle", "star", "shrinks", "jumps", "left"]


def fmt(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def span_text(s) -> str:
    return f"{fmt(s[0])} - {fmt(s[1])}"


def exact_iou(a, b) -> Fraction:
    a = sorted(Fraction(str(x)) for x in a)
    b = sorted(Fraction(str(x)) for x in b)
    inter = min(a[1], b[1]) - max(a[0], b[0])
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return inter / hull if inter > 0 and hull > 0 else Fraction(0)


def no_tie(pred_spans, gt_spans) -> bool:
    return all(exact_iou(p, g) != Fraction(7, 10) for p in pred_spans for g in gt_spans)


def tie_span(gt):
    """A span with IoU exactly 7/10 to ``gt`` (endpoints exact in binary)."""
    s, e = gt
    length = e - s
    if length % 5 == 0:
        return [s, s + length * 7 / 10]  # inter 3.5k / hull 5k
    if length % 7 == 0:
        return [s, s + length * 10 // 7]  # inter 7k / hull 10k
    return [s + 0.25, s + length + 0.5] if length == 2 else None  # 1.75 / 2.5


def corrupt(caption: str, rng: random.Random) -> str:
    words = caption.split()
    k = rng.randrange(len(words))
    words[k] = rng.choice([w for w in WORDS if w != words[k]])
    return " ".join(words)


def tvg_answer(r, case: int, rng: random.Random) -> str:
    s, e = r["tgt"]
    if case == 0:
        return f"The event happens in {span_text([s, e])}."
    if case == 1:
        d = rng.choice([-2, -1, 1, 2])
        return f"The event happens in {span_text([s + d, e + d])}."
    if case == 2:
        return f"The event happens in {span_text([max(0, s - 2), e + 1])}."
    if case == 3:
        return f"The event happens in {span_text([s + 0.5, e + 0.5])} seconds."
    if case == 4:
        return f"The event happens in {span_text([e + 3, e + 6])}."
    if case == 5:
        return "I cannot find this event in the video."
    if case == 6:
        return ""
    if case == 7:
        return f"The event happens in {span_text([e, s])}."  # reversed
    if case == 8:
        return f"It happens from {fmt(s)} to {fmt(e + 1)}."
    if case == 9:
        return f"The event starts at {fmt(s)} seconds\nand it ends at {fmt(e + rng.choice([1, 2]))} seconds."
    if case == 10:
        return f"The event happens in {span_text([s + 1, e + 1])} and again in {span_text([s + 10, e + 10])}."
    if case == 11:
        return f"Around 2-3 shapes move. The event happens in {span_text([s, e])}."  # the hyphen is read first
    raise ValueError(case)


def tal_answer(r, case: int, rng: random.Random) -> str:
    gt = r["tgt"]
    if case == 0:
        spans = gt
    elif case == 1:
        spans = [[s + rng.choice([-1, 1]), e + rng.choice([-1, 0, 1])] for s, e in gt]
    elif case == 2:
        spans = gt[:-1] if len(gt) > 1 else [[gt[0][0], gt[0][1] + 4]]
    elif case == 3:
        spans = gt + [[gt[-1][1] + 5, gt[-1][1] + 9]]
    elif case == 4:
        return "No such moment."
    elif case == 5:
        spans = [[min(s for s, _ in gt), max(e for _, e in gt) + 1]]
    else:
        raise ValueError(case)
    return ", ".join(span_text(s) for s in spans) + "."


def rar_answer(r, case: int, rng: random.Random) -> str:
    p, o = r["p"], r["o"]
    wrong = rng.choice([k for k in range(len(o)) if k != p])
    if case == 0:
        return f"({LETTERS[p]}) {o[p]}."
    if case == 1:
        return f"({LETTERS[wrong]}) {o[wrong]}."
    if case == 2:
        return f"Best Option: ({LETTERS[p]}) {o[p]}"
    if case == 3:
        return f"{LETTERS[wrong]}) {o[wrong]}."  # E.T. Chat continues "Best Option: (" like this
    if case == 4:
        return o[p].capitalize() + "."  # no letter: sentence-similarity fallback
    if case == 5:
        return ""
    raise ValueError(case)


def gvq_answer(r, case: int, rng: random.Random) -> str:
    p, o, (s, e) = r["p"], r["o"], r["tgt"]
    wrong = rng.choice([k for k in range(len(o)) if k != p])
    if case == 0:
        return f"({LETTERS[p]}) {o[p]}. The evidence is in {span_text([s, e])}."
    if case == 1:
        return f"Best option: {LETTERS[p]}. {o[p]}. The evidence is in {span_text([s + 1, e + 1])}."
    if case == 2:
        return f"({LETTERS[wrong]}) {o[wrong]}. The evidence is in {span_text([s, e])}."
    if case == 3:
        return f"({LETTERS[p]}) {o[p]}."  # correct, no evidence span
    if case == 4:
        return f"{o[p].capitalize()}. The evidence is in {span_text([s - 1, e])}."  # similarity fallback
    if case == 5:
        return ""
    raise ValueError(case)


def dvc_text(spans, caps) -> str:
    return " ".join(f"{span_text(s)}, {c}." for s, c in zip(spans, caps))


def dvc_answer(r, case: int, rng: random.Random) -> str:
    gt, caps = r["tgt"], r["g"]
    if case == 0:
        return dvc_text(gt, caps)
    if case == 1:
        return dvc_text([[max(0, s + rng.choice([-1, 0, 1])), e + rng.choice([-1, 1])] for s, e in gt], caps)
    if case == 2:
        return dvc_text(gt, [corrupt(c, rng) if k % 2 == 0 else c for k, c in enumerate(caps)])
    if case == 3:
        keep = [k for k in range(len(gt)) if k % 2 == 0]
        end = gt[-1][1]
        return dvc_text([gt[k] for k in keep] + [[end + 2, end + 6]],
                        [caps[k] for k in keep] + ["the purple star spins around"])
    if case == 4:
        return "Nothing happens in this video."
    if case == 5:
        return f"At {fmt(gt[0][0])} seconds, {caps[0]}."  # one time: widened to [t-20, t+20] or [t, t+40]
    raise ValueError(case)


ANSWER = {"tvg": tvg_answer, "tal": tal_answer, "rar": rar_answer, "gvq": gvq_answer, "dvc": dvc_answer}


def build(records: list[dict]) -> list[dict]:
    rng = random.Random(SEED)
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    out = []
    for task, n in N_MAIN.items():
        for case, r in enumerate(by_task[task][:n]):
            out.append({**r, "a": ANSWER[task](r, case, rng)})
    # documented deviations, one source of their own (records not used above)
    dev = "shapes_dev"
    tvg_rest = by_task["tvg"][N_MAIN["tvg"]:]
    tie_rec = next(r for r in tvg_rest if tie_span(r["tgt"]) is not None)
    clock_rec = next(r for r in tvg_rest if r is not tie_rec and r["tgt"][1] < 60)
    ctl_rec = next(r for r in tvg_rest if r not in (tie_rec, clock_rec))
    s, e = clock_rec["tgt"]
    out += [
        {**tie_rec, "source": dev, "a": f"The event happens in {span_text(tie_span(tie_rec['tgt']))}."},
        {**clock_rec, "source": dev, "a": f"The event happens in 0:{s:02d} - 0:{e:02d}."},
        {**ctl_rec, "source": dev, "a": f"The event happens in {span_text(ctl_rec['tgt'])}."},
    ]
    tal_rec = next(r for r in by_task["tal"][N_MAIN["tal"]:] if tie_span(r["tgt"][0]) is not None)
    out.append({**tal_rec, "source": dev,
                "a": ", ".join(span_text(tie_span(g) if k == 0 else g) for k, g in enumerate(tal_rec["tgt"]))})
    rar_rec = by_task["rar"][N_MAIN["rar"]]
    out.append({**rar_rec, "source": dev, "a": "(E) none of the above."})  # letter outside A-D
    dvc_rest = by_task["dvc"][N_MAIN["dvc"]:]
    out.append({**dvc_rest[0], "source": dev,
                "a": "Here are the events I found: " + dvc_text(dvc_rest[0]["tgt"], dvc_rest[0]["g"])})
    out.append({**dvc_rest[1], "source": dev, "a": dvc_text(dvc_rest[1]["tgt"], dvc_rest[1]["g"])})
    check(out)
    return out


def check(out: list[dict]) -> None:
    """Main-source answers must not produce exact IoU ties at 0.7 (E.T. Bench's float32 IoU misses them)."""
    from d2lib.core.parsing import parse_spans

    for r in out:
        if r["source"] != "shapes" or r["task"] not in ("tvg", "tal", "gvq"):
            continue
        spans, _ = parse_spans(r["a"])
        if not spans:
            continue
        gts = [r["tgt"]] if r["task"] in ("tvg", "gvq") else r["tgt"]
        preds = spans[:1] if r["task"] in ("tvg", "gvq") else spans
        assert no_tie(preds, gts), (r["idx"], r["a"], r["tgt"])


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from d2lib.evaluation import formats

    records = json.loads((ROOT / "data/shapes/val/annotations.json").read_text())
    sub = build(records)
    formats.write_etbench_submission(HERE / "etbench_submission.json", sub)
    tvg = [r for r in sub if r["task"] == "tvg"]
    formats.write_timechat_tvg(HERE / "timechat_tvg_pred.json", HERE / "timechat_tvg_gt.json", tvg)
    dvc = [r for r in sub if r["task"] == "dvc"]
    formats.write_timechat_dvc(HERE / "timechat_dvc_pred.json", HERE / "val.timechat_dvc_gt.json", dvc)
    for p in sorted(HERE.glob("*.json")):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
