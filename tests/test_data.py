"""d2lib.training.data: align response mode, examples, collate, tower-feature cache."""
import pytest
import torch

from d2lib.training import data
from d2lib.vlm import tokens
from d2lib.vlm.model import D2VLM, ModelConfig, VariantsConfig

from shapes_fixture import tiny_split



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

@pytest.fixture(scope="module")
def split():
    records, frames = tiny_split()
    return records, frames, data.train_tokenizer(records, max_seconds=16)


@pytest.fixture(scope="module")
def model(split):
    torch.manual_seed(0)
    return D2VLM.build(ModelConfig(), data.ALIGN_VARIANT, split[2]).eval()


def test_align_examples_have_no_grounding(split):
    records, frames, tok = split
    recs = [data.align_record(r) for r in data.select_tasks(records, ("dvc", "rar", "gvq"))]
    assert {r["task"] for r in recs} == {"dvc", "rar", "gvq"}
    exs = data.make_examples(recs, frames, data.ALIGN_VARIANT, tok)
    evi_ids = {tok.convert_tokens_to_ids(t) for t in (tokens.EVI, tokens.EVI_END)}
    unk = tok.unk_token_id
    for r, ex in zip(recs, exs):
        assert tokens.EVI not in ex["response"] and tokens.EVI_END not in ex["response"]
        assert not evi_ids & set(ex["input_ids"].tolist()) and len(ex["evi_tok_pos"]) == 0
        assert unk not in ex["input_ids"].tolist(), "the align prompts are in the tokenizer's vocabulary"
        assert "<start>" not in r["q"] and not any(c.isdigit() for c in ex["response"])
    dvc = next(r for r in recs if r["task"] == "dvc")
    assert tokens.build_response(dvc, data.ALIGN_VARIANT).text == " ".join(f"{c}." for c in dvc["g"])
    with pytest.raises(ValueError, match="no grounding-free answer"):
        data.align_record(next(r for r in records if r["task"] == "tvg"))


def test_examples_and_collate_shapes(split):
    records, frames, tok = split
    full = VariantsConfig().get("full")
    exs = data.make_examples(records, frames, full, tok)
    assert len(exs) == len(records) and all(ex["video"] == r["video"] for ex, r in zip(exs, records))
    assert all(ex["n_frames"] == len(frames[r["video"]]) for ex, r in zip(exs, records))
    batch = data.Collator(frames, tok.pad_token_id, kind="frames")(exs[:5])
    B, L = batch["input_ids"].shape
    T = max(len(frames[r["video"]]) for r in records[:5])
    assert B == 5 and batch["frames"].shape == (5, T, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    assert batch["labels"].shape == (B, L) and batch["frame_mask"].shape == (B, T)
    assert all(torch.is_tensor(v) for v in batch.values()), "fit moves every batch entry to the device"
    n_evi = sum(len(ex["evi_tok_pos"]) for ex in exs[:5])
    assert batch["evi_batch"].shape == (n_evi,) and n_evi > 0
    left = data.Collator(frames, tok.pad_token_id, kind="frames", padding_side="left")(exs[:5])
    assert bool(left["attention_mask"][:, -1].all())
    with pytest.raises(KeyError, match="not in the cache"):
        data.make_examples([{**records[0], "video": "nope.mp4"}], frames, full, tok)


def test_tower_features_cache_round_trip(split, model, tmp_path):
    records, frames, tok = split
    feats = data.tower_features(model, frames, max_frames=40)  # batches two videos per call
    with torch.no_grad():
        for v, x in frames.items():
            assert torch.allclose(feats[v], model.encode_tower(x), atol=1e-5), "batching must not change features"
    path = data.save_features(feats, tmp_path / "f.safetensors")
    back = data.load_features(path)
    assert list(back) == list(feats) and all(torch.equal(back[v], feats[v]) for v in feats)
    assert data.video_kind(back) == "tower_feats" and data.video_kind(frames) == "frames"
    # a batch from cached features gives the same loss as a batch from frames
    full = VariantsConfig().get("full")
    model.variant = full
    try:
        exs = data.make_examples(records[:4], frames, full, tok)
        with torch.no_grad():
            a = model(**data.Collator(frames, tok.pad_token_id, kind="frames")(exs))
            b = model(**data.Collator(back, tok.pad_token_id, kind="tower_feats")(exs))
        assert torch.allclose(a.loss, b.loss, atol=1e-5)
    finally:
        model.variant = data.ALIGN_VARIANT
    with pytest.raises(FileNotFoundError, match="stage align"):
        data.load_features(tmp_path / "missing.safetensors")
