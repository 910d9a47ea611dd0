"""What the stages write and read back: a D²VLM folder (``D2VLM.save_pretrained`` / ``from_pretrained``;
a missing or damaged part is an error naming it), the tokenizer folder (replaced whole, the bytes
``save_pretrained`` writes) and FPO's CSVs (the bytes pandas writes)."""
import dataclasses
import json
import shutil

import pandas as pd
import pytest
import torch

from d2lib.core import config
from d2lib.stages import align, fpo
from d2lib.training.train import weights_digest
from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM, ModelConfig, Variant
from shapes_fixture import tiny_split

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

TINY = dict(hidden_size=64, num_layers=2, num_heads=4, ffn_size=128, vision_hidden=32, vision_layers=1,
            vision_heads=2, vision_ffn=64, max_frames=16)


@pytest.fixture(scope="module")
def tok():
    recs, _ = tiny_split(2)
    return tokens.train_word_tokenizer(tokens.record_texts(recs), max_seconds=16)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    """``(model, folder)``: a tiny D²VLM and the folder it saved itself to."""
    torch.manual_seed(0)
    model = D2VLM.build(ModelConfig(**TINY), Variant(), tok)
    folder = tmp_path_factory.mktemp("vlm") / "final"
    model.save_pretrained(folder)
    return model, folder


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def test_save_and_load_round_trip(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["d2vlm.json", "d2vlm.safetensors", "lm", "vision"]
    meta = {"model": config.to_dict(model.cfg), "variant": dataclasses.asdict(model.variant), "ids": model.ids}
    assert (folder / "d2vlm.json").read_text() == json.dumps(meta, indent=2)  # the bytes json.dumps writes
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert weights_digest(D2VLM.from_pretrained(folder)) == weights_digest(model)


def test_missing_parts_are_named(saved, tmp_path):
    _, folder = saved
    with pytest.raises(FileNotFoundError, match=r"nowhere/d2vlm\.json: missing — the model config"):
        D2VLM.from_pretrained(tmp_path / "nowhere")
    d = _copy(folder, tmp_path)
    shutil.rmtree(d / "lm")
    # (transformers alone would answer "Repo id must be in the form 'repo_name' or 'namespace/repo_name'")
    with pytest.raises(FileNotFoundError, match=rf"{d}/lm: missing — the language model folder of a D2VLM folder"):
        D2VLM.from_pretrained(d)


@pytest.mark.parametrize("part, damage", [
    ("d2vlm.json", lambda b: b[:len(b) // 2]),
    ("d2vlm.safetensors", lambda b: b[:len(b) // 2]),
    ("d2vlm.safetensors", lambda b: bytes(len(b))),
    ("lm/model.safetensors", lambda b: b[:len(b) // 2]),
    ("vision/config.json", lambda b: b"{"),
])
def test_damaged_parts_are_named(saved, tmp_path, part, damage):
    _, folder = saved
    d = _copy(folder, tmp_path)
    f = d / part
    f.write_bytes(damage(f.read_bytes()))
    top = d / part.split("/")[0]  # the folder transformers loads, or the file itself
    with pytest.raises(OSError, match=rf"{top}: cannot be loaded as the"):
        D2VLM.from_pretrained(d)


def test_tokenizer_folder_is_replaced_whole_with_the_same_bytes(tok, tmp_path):
    tok.save_pretrained(str(tmp_path / "plain"))
    target = tmp_path / "out" / "tokenizer"
    target.mkdir(parents=True)
    (target / "stale.json").write_text("{}")  # from an older run: must not survive the new save
    align.save_tokenizer(tok, target)
    plain = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir()}
    assert {p.name: p.read_bytes() for p in target.iterdir()} == plain
    assert sorted(p.name for p in target.parent.iterdir()) == ["tokenizer"]  # no temporary left


def test_fpo_csvs_are_the_bytes_pandas_writes(tmp_path):
    rows = [{"task": "tvg", "type": "shift", "text_c": -1.25, "text_r": -2.5, "ground_c": -0.1, "ground_r": 1 / 3}]
    before = [dict(r, text_c=-3.0) for r in rows]
    fpo._write_pair_rows(tmp_path / "pairs_val.csv", before, rows)
    df = pd.DataFrame(rows)
    for c in ("text_c", "text_r", "ground_c", "ground_r"):
        df[f"before_{c}"] = pd.DataFrame(before)[c]
    df.to_csv(tmp_path / "ref.csv", index=False)
    assert (tmp_path / "pairs_val.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs_val.csv", "ref.csv"]
    # and read back as the lesson gets them (fpo.load_result): the same rows before and after
    back_before, back_after = fpo._read_pair_rows(tmp_path / "pairs_val.csv")
    assert back_after == rows and back_before == before


def test_a_run_is_read_back_from_its_logs_or_named_unfinished(tmp_path):
    from d2lib.training import train

    with pytest.raises(FileNotFoundError, match="final"):
        train.read_fit(tmp_path)  # no final/: the run has not finished
    (tmp_path / "final").mkdir()
    (tmp_path / "loss.csv").write_text("step,loss\n10,2.5\n20,1.25\n")
    (tmp_path / "val.csv").write_text("step,R1@0.5\n20,0.375\n")
    fit = train.read_fit(tmp_path)
    assert fit.steps == 20 and fit.last == {"step": 20.0, "loss": 1.25} and fit.val == [{"step": 20.0, "R1@0.5": 0.375}]
