"""d2lib.training.videotext: MIL scores, InfoNCE, the align objective and its collator."""
import pytest
import torch

from d2lib.stages import align
from d2lib.training import data, videotext
from d2lib.vlm.model import D2VLM, ModelConfig

from shapes_fixture import tiny_split


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def test_mil_scores_mask_and_info_nce():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = torch.zeros(2, 3, 2)
    f[0, 1] = torch.tensor([8.0, 0.0])  # video 0 shows caption 0 at frame 1
    f[1, 2] = torch.tensor([0.0, 8.0])  # video 1 shows caption 1 at frame 2 — a padded frame
    mask = torch.tensor([[True, True, True], [True, True, False]])
    S = videotext.mil_scores(e, f, mask)
    assert S[0, 0] > S[0, 1] and torch.isclose(S[1, 1], torch.tensor(0.0)), "padded frames never count"
    pos = torch.eye(2, dtype=torch.bool)
    assert videotext.info_nce(S, pos) < videotext.info_nce(S.flip(1), pos)
    # two captions of one video: caption→video is certain (0); video→caption splits over 2 positives
    two = videotext.info_nce(torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))
    assert torch.isclose(two, 0.5 * torch.log(torch.tensor(2.0)), atol=1e-6)


def test_align_objective_trains_tower_with_captions():
    records, frames = tiny_split()
    tok = data.train_tokenizer(records, max_seconds=16)
    torch.manual_seed(0)
    model = D2VLM.build(ModelConfig(), data.ALIGN_VARIANT, tok)
    exs = align.align_examples(records, frames, tok, ("dvc", "rar", "gvq"))
    caps = align.video_captions(records)
    assert set(caps) == set(frames) and all(caps.values())
    batch = align.AlignCollator(frames, tok, caps)(exs[:6])
    assert batch["cap_ids"].shape[0] == 6 and (batch["cap_video"] == batch["video_id"]).all()
    out = videotext.AlignObjective(model, 1.0)(**batch)
    assert set(out.parts) == {"lm_loss", "contrastive_loss"}
    assert torch.isclose(out.loss, out.parts["lm_loss"] + out.parts["contrastive_loss"])
    out.loss.backward()
    assert model.tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.frm_head[1].weight.grad.abs().sum() > 0 and model.evi_head[1].weight.grad.abs().sum() > 0
    r = next(r for r in records if r["task"] == "tvg" and r["video"] == exs[0]["video"])
    assert (r["g"][0], r["tgt"]) in caps[r["video"]] and batch["cap_frames"].shape == (6, 2)
    mil = videotext.AlignObjective(model, 1.0, pairs="video")(**batch)
    assert set(mil.parts) == {"lm_loss", "contrastive_loss"} and torch.isclose(mil.parts["lm_loss"], out.parts["lm_loss"])
    plain = videotext.AlignObjective(model, 0.0)(**batch)
    assert set(plain.parts) == {"lm_loss"}
    zs = videotext.zero_shot_tvg(model.eval(), records, frames, tok)
    assert set(zs) == {"zs_R1@0.3", "zs_R1@0.5", "zs_R1@0.7", "zs_mIoU"}
