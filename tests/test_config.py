"""d2lib.core.config: unknown keys and bad values are errors naming the key; profiles merge."""
from dataclasses import dataclass

import pytest

from d2lib.core import config
from d2lib.core.config import ConfigError


@dataclass(frozen=True)
class Demo:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"

    def __post_init__(self):
        config.check(self.lr > 0, "demo.lr", f"must be > 0, got {self.lr}")


def test_from_dict_types_and_unknown_keys():
    assert config.from_dict(Demo, {"lr": 1, "steps": 3}, "demo") == Demo(lr=1.0, steps=3)
    with pytest.raises(ConfigError, match=r"demo\.stepz"):
        config.from_dict(Demo, {"stepz": 3}, "demo")
    with pytest.raises(ConfigError, match=r"demo\.steps"):
        config.from_dict(Demo, {"steps": "many"}, "demo")
    with pytest.raises(ConfigError, match=r"demo\.lr"):
        config.from_dict(Demo, {"lr": -1.0}, "demo")


def test_profile_merge_rejects_unknown(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("prepare:\n  train_videos: 10\nprofiles:\n  smoke:\n    prepare:\n      train_videoz: 2\n")
    with pytest.raises(ConfigError, match="prepare.train_videoz"):
        config.load_raw(p, profile="smoke")
    p.write_text("prepare:\n  train_videos: 10\nprofiles:\n  smoke:\n    prepare:\n      train_videos: 2\n")
    assert config.load_raw(p, profile="smoke")["prepare"]["train_videos"] == 2
    assert config.load_raw(p)["prepare"]["train_videos"] == 10
    with pytest.raises(ConfigError, match="unknown profile"):
        config.load_raw(p, profile="nope")


def test_unknown_top_level_section(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("prepair:\n  x: 1\n")
    with pytest.raises(ConfigError, match="prepair"):
        config.load_raw(p)


def test_repo_params_validate_in_every_profile():
    raw = config.read_yaml(config.paths.params_file())
    for profile in ["default", *raw.get("profiles", {})]:
        cfgs = config.load_all(profile=profile)
        assert set(cfgs) == set(config.SECTIONS)
