"""params.yaml → frozen dataclasses. Unknown keys and out-of-range values are errors that name the key.

Each module owns the dataclass for its section (e.g. ``d2lib.world.synth.WorldConfig`` for ``world``);
this module only knows how to load, merge profiles and validate. Profiles (``profiles.smoke``)
are partial overrides applied on top of the sections; ``profile:`` at the top selects one.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     lr: float = 1e-3
...     steps: int = 10
>>> from_dict(Demo, {"steps": 5}, "demo")
Demo(lr=0.001, steps=5)
>>> from_dict(Demo, {"step": 5}, "demo")
Traceback (most recent call last):
...
d2lib.core.config.ConfigError: unknown params key 'demo.step' (known: lr, steps)
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from d2lib.core import paths

T = TypeVar("T")

# Top-level sections of params.yaml and the dataclass that owns each (imported lazily).
SECTIONS: dict[str, str] = {
    "world": "d2lib.world.synth:WorldConfig",
    "benchmark": "d2lib.world.synth:BenchmarkConfig",
    "prepare": "d2lib.world.datasets:PrepareConfig",
    "model": "d2lib.vlm.model:ModelConfig",
    "variants": "d2lib.vlm.model:VariantsConfig",
    "align": "d2lib.training.train:AlignConfig",
    "sft": "d2lib.training.train:SFTConfig",
    "evaluate": "d2lib.stages.evaluate:EvaluateConfig",
    "ablation": "d2lib.study.ablation:AblationConfig",
    "fpo": "d2lib.stages.fpo:FPOConfig",
    "peers": "d2lib.study.peers:PeersConfig",
}
META_KEYS = {"profile", "profiles"}


class ConfigError(ValueError):
    """A params.yaml problem; the message names the offending key."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``cond``. Used in ``__post_init__``."""
    if not cond:
        raise ConfigError(f"params key '{key}': {msg}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"params key '{key}': {value!r} is not a valid {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"params key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"params key '{key}': expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"params key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        a = args[0] if args else Any
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"params key '{key}': expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"params key '{key}': {value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params key '{key}': expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params key '{key}': expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys → :class:`ConfigError` naming ``where.key``."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown params key '{where}.{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"params section '{where}': {e}") from None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], where: str = "") -> dict:
    """Recursively merge ``override`` into a copy of ``base``; an override key absent from
    ``base`` is an error (profiles may only change existing knobs)."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        key = f"{where}.{k}" if where else k
        if k not in out:
            raise ConfigError(f"profile overrides unknown params key '{key}'")
        if isinstance(v, Mapping) and isinstance(out[k], Mapping):
            out[k] = deep_merge(out[k], v, key)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def load_raw(path: str | Path | None = None, profile: str | None = None) -> dict:
    """params.yaml as a dict with the selected profile applied (``profile`` argument, else
    the file's ``profile:`` key, else none). Meta keys are removed."""
    path = Path(path) if path else paths.params_file()
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SECTIONS) - META_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown params key '{unknown[0]}' (sections: {', '.join(SECTIONS)})")
    profiles = raw.get("profiles") or {}
    name = profile if profile is not None else raw.get("profile", "default")
    sections = {k: v for k, v in raw.items() if k not in META_KEYS}
    if name not in (None, "default"):
        if name not in profiles:
            raise ConfigError(f"{path}: unknown profile '{name}' (known: default, {', '.join(profiles)})")
        sections = deep_merge(sections, profiles[name])
    return sections


def section_class(name: str) -> type:
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section '{name}' (known: {', '.join(SECTIONS)})")
    mod, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def load_section(name: str, path: str | Path | None = None, profile: str | None = None):
    """One section of params.yaml as its frozen dataclass (profile applied)."""
    raw = load_raw(path, profile)
    return from_dict(section_class(name), raw.get(name, {}), name)


def load_all(path: str | Path | None = None, profile: str | None = None) -> dict[str, Any]:
    """Every section, validated — the check a stage runs before it starts work."""
    raw = load_raw(path, profile)
    return {name: from_dict(section_class(name), raw.get(name, {}), name) for name in SECTIONS}


def to_dict(cfg: Any) -> dict:
    """A config dataclass back to plain data (for logs and JSON)."""
    return dataclasses.asdict(cfg)
