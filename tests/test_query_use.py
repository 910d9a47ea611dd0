"""Does a model use the query? The shuffled-query control, the any-event hit rate, e1's within-video
variance share; the consistency forms; the short prompt; the ablation's per-cell control verdicts."""
import math

import pandas as pd
import pytest
import torch

from d2lib.study import ablation, aggregate, claims
from d2lib.vlm import infer, tokens
from d2lib.core import losses
from d2lib.vlm.model import Variant


def answered(pred_of):
    """Two videos, three queries each (disjoint events); ``pred_of(i, gt)`` → the predicted span."""
    gts = {"v": [[0, 4], [10, 14], [20, 24]], "w": [[2, 6], [30, 38], [40, 44]]}
    out, i = [], 0
    for vid, spans in gts.items():
        for gt in spans:
            s, e = pred_of(i, gt, spans)
            out.append({"video": vid, "tgt": gt, "a": f"{s} - {e} </evi> The event happens in {s} - {e}."})
            i += 1
    return out


def test_control_separates_an_oracle_from_a_query_blind_model():
    oracle = infer.query_control(answered(lambda i, gt, spans: gt))
    assert oracle["true_R1@0.5"] == 1.0 and oracle["ctrl_R1@0.5"] == 0.0 and oracle["any_event_R1@0.5"] == 1.0
    blind = infer.query_control(answered(lambda i, gt, spans: spans[0]))  # always the video's first event
    assert blind["true_R1@0.5"] == pytest.approx(1 / 3) and blind["ctrl_R1@0.5"] == pytest.approx(1 / 3)
    assert blind["any_event_R1@0.5"] == 1.0  # it finds events, not the asked-for one
    wrong = infer.query_control(answered(lambda i, gt, spans: [50, 60]))
    assert wrong["any_event_R1@0.5"] == 0.0 and wrong["true_R1@0.5"] == 0.0


def test_control_skips_videos_asked_once():
    recs = [{"video": "a", "tgt": [0, 2], "a": "0 - 2 </evi> The event happens in 0 - 2."}]
    out = infer.query_control(recs)
    assert out["n_ctrl"] == 0 and math.isnan(out["ctrl_R1@0.5"])


def test_within_group_share():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    assert infer.within_group_share(x, ["a", "a", "b", "b"]) == 0.0  # one e1 per video: the query is ignored
    assert infer.within_group_share(x, ["a", "b", "a", "b"]) == pytest.approx(1.0)  # all variance within
    assert math.isnan(infer.within_group_share(torch.ones(3, 2), ["a", "a", "b"]))


def test_consistency_scores_is_zero_for_features_that_score_alike():
    s = torch.tensor([[2.0, -1.0, 0.5]])
    assert losses.consistency_scores(s, s.clone()).item() == 0.0
    m = torch.tensor([[True, True, False]])
    assert losses.consistency_scores(s, torch.tensor([[2.0, -1.0, 99.0]]), m).item() == 0.0  # padded frame ignored
    p = losses.consistency_scores(s, torch.zeros(1, 3), frame_level=True).item()
    assert p > 0


@pytest.mark.parametrize("form, ground_grad", [("l1", True), ("l1_detached", False), ("scores", True)])
def test_consistency_forms_route_gradients(form, ground_grad):
    from d2lib.vlm.model import D2VLM

    e = torch.randn(4, 8, requires_grad=True)
    scores = torch.randn(4, 5, requires_grad=True)
    smask = torch.ones(4, 5, dtype=torch.bool)
    pairs = torch.tensor([[0, 2], [1, 3]])

    class Stub:
        variant = Variant(consistency_form=form)
    loss = D2VLM._consistency(Stub(), e, scores, smask, pairs)
    loss.backward()
    g = e.grad if form != "scores" else scores.grad
    assert (g[[0, 1]].abs().sum() > 0) == ground_grad  # the grounding-stage side
    assert g[[2, 3]].abs().sum() > 0  # the answer-stage side always follows


def test_short_prompt_drops_the_format_sentence_only():
    q = ("Which shape gets bigger? Options: (A) the green triangle (B) the blue circle. Answer with the best "
         "option and its evidence in the format '(<letter>) <option>. The evidence is in <start> - <end>.'")
    assert tokens.short_question(q) == "Which shape gets bigger? Options: (A) the green triangle (B) the blue circle."
    assert tokens.question_text(q, Variant(prompt="full")) == q
    assert tokens.question_text(q, Variant()) == tokens.short_question(q)  # the default


def test_cell_control_verdicts_and_claim_counts():
    cells = {("full", 0): {"metrics": {"query_use": {"true_R1@0.5": 0.6, "ctrl_R1@0.5": 0.1, "passes": True}}},
             ("full", 1): {"metrics": {"query_use": {"true_R1@0.5": 0.3, "ctrl_R1@0.5": 0.3, "passes": False}}},
             ("coupled", 0): {"metrics": {"query_use": {"true_R1@0.5": 0.5, "ctrl_R1@0.5": 0.2, "passes": True}}}}
    q = aggregate.query_control_table(cells)
    assert list(q["seed"]) == [0, 1, 0]
    summary = aggregate.query_control_summary(q)
    assert summary["full"] == {"seeds_passing": 1, "n_seeds": 2, "all_pass": False}
    assert summary["coupled"]["all_pass"] is True
    counts = claims.claim_counts(pd.DataFrame({"verdict": ["reproduces", "opposite direction, not resolved"]}))
    assert counts == {"reproduced": 1, "contradicted": 0, "unresolved": 1, "total": 2}


def test_metric_value_reads_query_use():
    m = {"query_use": {"ctrl_R1@0.5": 0.25, "e1_share": None}}
    assert ablation.metric_value(m, "query.ctrl_R1@0.5") == 0.25
    assert ablation.metric_value(m, "query.e1_share") is None


def test_consistency_start_switches_the_term_on_part_way():
    from d2lib.stages import sft
    from d2lib.training import data
    from d2lib.vlm.model import D2VLM, ModelConfig

    recs = [{"idx": 0, "task": "tvg", "video": "a", "tgt": [1, 3], "q": "When does the red circle grow?"}]
    tok = tokens.train_word_tokenizer(tokens.record_texts(recs), max_seconds=8)
    torch.manual_seed(0)
    variant = Variant(consistency_start=0.5)
    m = D2VLM.build(ModelConfig(), variant, tok).eval()
    videos = {"a": torch.randint(0, 255, (6, 32, 32, 3), dtype=torch.uint8)}
    batch = data.Collator(videos, tok.pad_token_id, kind="frames")(data.make_examples(recs, videos, variant, tok))
    hook = sft.consistency_hook(m, variant)
    hook(5, 10)  # first half: off
    with torch.no_grad():
        off = m(**batch)
    assert float(off.consistency_loss) > 0
    assert torch.isclose(off.loss, off.lm_loss + m.cfg.grounding_weight * off.grounding_loss)
    hook(6, 10)  # second half: on
    with torch.no_grad():
        on = m(**batch)
    assert torch.isclose(on.loss, off.loss + m.cfg.consistency_weight * on.consistency_loss)
    with pytest.raises(Exception, match="consistency_start"):
        Variant(consistency_start=1.0)


def test_confusions_name_the_event_found_instead():
    meta = {"objects": [{"shape": "circle", "colour": "red"}, {"shape": "circle", "colour": "blue"}],
            "events": [{"object": 0, "kind": "grow", "start": 0, "end": 4, "caption": "the red circle grows"},
                       {"object": 0, "kind": "spin", "start": 10, "end": 14, "caption": "the red circle spins"},
                       {"object": 1, "kind": "grow", "start": 20, "end": 24, "caption": "the blue circle grows"}]}

    def rec(gt, cap, pred):
        return {"video": "v", "tgt": gt, "g": [cap], "a": f"{pred} </evi> The event happens in {pred}."}
    recs = [rec([0, 4], "the red circle grows", "0 - 4"),      # correct
            rec([0, 4], "the red circle grows", "10 - 14"),    # the same object's other action
            rec([0, 4], "the red circle grows", "20 - 24"),    # another object, same shape, same action
            rec([10, 14], "the red circle spins", "30 - 40")]  # nothing
    assert infer.confusions(recs, {"v": meta}) == {
        "correct": 1, "same object, other action": 1,
        "other object of the same shape (colour differs), same action": 1, "no event hit": 1}
    with pytest.raises(ValueError, match="no event"):
        infer.confusions([rec([5, 6], "x", "5 - 6")], {"v": meta})
