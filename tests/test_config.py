"""d2lib.core.config: unknown keys and bad values are errors naming the key; profiles merge; an empty file, a
missing section or a key given twice is an error naming the file and the key (never silent defaults)."""
import re
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


SECTIONS_TEXT = "".join(f"{name}: {{}}\n" for name in config.SECTIONS)  # every section, all defaults


@pytest.mark.parametrize("text, match", [
    ("", r"params file is empty"),
    ("# only a comment\n", r"params file is empty"),
    ("- a\n- list\n", r"top level must be a mapping"),
    ("sft: [\n", r"not valid YAML"),
])
def test_empty_or_malformed_file_names_the_file(tmp_path, text, match):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    for load in (config.read_yaml, config.load_raw, lambda f: config.load_section("sft", f)):
        with pytest.raises(ConfigError, match=rf"{tmp_path}.*params\.yaml.*{match}"):
            load(p)


@pytest.mark.parametrize("text, key, line, first", [
    ("sft:\n  lr: 0.1\n  steps: 2\n  lr: 0.2\n", "sft.lr", 4, 2),
    ("sft:\n  lr: 0.1\nalign:\n  steps: 3\nsft:\n  steps: 4\n", "sft", 5, 1),
    ("sft:\n  lora:\n    r: 4\n    r: 8\n", "sft.lora.r", 4, 3),
    ("sft:\n  lr: 0.1\nprofiles:\n  smoke:\n    sft:\n      lr: 1\n      lr: 2\n", "profiles.smoke.sft.lr", 7, 6),
    ("variants:\n  rows:\n    - {name: a, name: b}\n", "variants.rows[0].name", 3, 3),
])
def test_duplicate_key_is_an_error_naming_file_key_and_lines(tmp_path, text, key, line, first):
    """YAML loaders keep the last of two equal keys without a word; a duplicate here is an error."""
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"params\.yaml:{line}: params key '{re.escape(key)}' is given twice "
                                          rf"\(first on line {first}\)"):
        config.read_yaml(p)


def test_merge_keys_are_not_duplicates(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base: &b {lr: 0.1, steps: 2}\nsft:\n  <<: *b\n  steps: 5\n")
    assert config.read_yaml(p)["sft"] == {"lr": 0.1, "steps": 5}


def test_missing_or_empty_section_is_an_error_not_the_defaults(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(SECTIONS_TEXT)
    assert set(config.load_all(p)) == set(config.SECTIONS)  # `sft: {}` asks for the defaults explicitly
    p.write_text(SECTIONS_TEXT.replace("sft: {}\n", ""))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}: params section 'sft' is missing"):
        config.load_section("sft", p)
    with pytest.raises(ConfigError, match=r"params section 'sft' is missing"):
        config.load_all(p)
    assert config.load_section("align", p).section == "align"  # the other sections still load
    p.write_text(SECTIONS_TEXT.replace("sft: {}\n", "sft:\n"))  # a heading with nothing under it
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}: params section 'sft' must be a mapping"):
        config.load_section("sft", p)


def test_value_errors_name_the_file_too(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(SECTIONS_TEXT.replace("sft: {}\n", "sft:\n  lr: -1.0\n"))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}: params key 'sft\.lr'"):
        config.load_section("sft", p)
    with pytest.raises(ConfigError, match=r"unknown params section 'sfx'"):
        config.load_section("sfx", p)
