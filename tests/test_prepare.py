"""d2lib.stages.prepare: the ``prepare`` params section (PrepareConfig) — defaults, the seed range that
keeps training videos out of the benchmark, and its place in the section registry."""
import pytest

from d2lib.core import config
from d2lib.core.config import ConfigError
from d2lib.stages.prepare import PrepareConfig


def test_prepare_config():
    cfg = config.from_dict(PrepareConfig, {}, "prepare")
    assert (cfg.train_videos, cfg.train_seed, cfg.decode_fps, cfg.decode_size) == (600, 0, 1.0, 32)
    with pytest.raises(ConfigError, match=r"prepare\.train_seed.*belong to the benchmark"):
        config.from_dict(PrepareConfig, {"train_seed": 1_000_000}, "prepare")
    with pytest.raises(ConfigError, match=r"prepare\.train_seed"):  # the last training seeds would collide
        config.from_dict(PrepareConfig, {"train_seed": 999_500}, "prepare")
    assert config.from_dict(PrepareConfig, {"train_seed": 999_400}, "prepare").train_seed == 999_400
    assert cfg.workers == 0 and cfg.resolved_workers() >= 1
    assert config.from_dict(PrepareConfig, {"workers": 3}, "prepare").resolved_workers() == 3
    for key, val in [("train_videos", 0), ("decode_fps", 0.0), ("decode_size", 4), ("train_seed", -1), ("workers", -1)]:
        with pytest.raises(ConfigError, match=rf"prepare\.{key}"):
            config.from_dict(PrepareConfig, {key: val}, "prepare")
    assert config.section_class("prepare") is PrepareConfig
