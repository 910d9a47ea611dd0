"""Attention pooling with several learned queries per stream (model.pool_queries)."""
import pytest
import torch

from d2lib.core.config import ConfigError
from d2lib.vlm.model import AttnPool, D2VLM, ModelConfig, Variant
from d2lib.vlm import tokens


def test_each_query_pools_its_own_place():
    pool = AttnPool(dim=4, n_streams=1, n_queries=2)
    with torch.no_grad():  # keys = the patches themselves; query 0 looks for axis 0, query 1 for axis 1
        pool.norm.weight.fill_(1.0); pool.norm.bias.zero_()
        pool.key.weight.copy_(torch.eye(4)); pool.key.bias.zero_()
        pool.query.copy_(torch.tensor([[50.0, 0, 0, 0], [0, 50.0, 0, 0]]))
    x = torch.tensor([[[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]]])  # (N=1, S=1, P=3, D=4)
    out = pool(x)  # (1, 2, 4)
    assert out.shape == (1, 2, 4)
    assert out[0, 0].argmax() == 0 and out[0, 1].argmax() == 1


def test_model_with_several_pool_queries_runs_and_round_trips(tmp_path):
    tok = tokens.train_word_tokenizer(["the red circle grows"], max_seconds=8)
    torch.manual_seed(0)
    m = D2VLM.build(ModelConfig(pool_queries=3), Variant(), tok).eval()
    assert m.projector[0].in_features == 3 * m.tower.config.hidden_size
    frames = torch.randint(0, 255, (1, 5, 32, 32, 3), dtype=torch.uint8)
    ftok = m.frame_tokens(m.encode_tower(frames), torch.ones(1, 5, dtype=torch.bool))
    assert ftok.shape == (1, 5, m.lm.config.hidden_size)
    m.save_pretrained(tmp_path / "m")
    back = D2VLM.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(back.frame_tokens(back.encode_tower(frames), torch.ones(1, 5, dtype=torch.bool)), ftok)


def test_pool_queries_must_be_positive():
    with pytest.raises(ConfigError, match="pool_queries"):
        ModelConfig(pool_queries=0)
