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
    "prepare": "d2lib.stages.prepare:PrepareConfig",
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


def _duplicate_key(node: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first mapping key that appears twice in a composed YAML ``node`` (searched depth-first):
    ``(dotted key, first key node, second key node)``, or None. Merge keys (``<<``) are not keys."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            path = f"{where}.{key}" if where else str(key)
            if key in seen:
                return path, seen[key], key_node
            seen[key] = key_node
            found = _duplicate_key(value_node, path)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, f"{where}[{i}]")
            if found:
                return found
    return None


def read_yaml(path: Path) -> dict:
    """A params file as a dict. Errors name the file: missing, not YAML, empty, not a mapping, or a key
    given twice in one mapping (YAML loaders silently keep the last one; here it is an error).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "params.yaml"
    >>> _ = p.write_text("sft:\\n  lr: 1\\n  steps: 2\\n  lr: 3\\n")
    >>> read_yaml(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    d2lib.core.config.ConfigError: ...params.yaml:4: params key 'sft.lr' is given twice (first on line 2)
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the params file: {e}") from None
    try:
        dup = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if dup:
        key, first, again = dup
        raise ConfigError(f"{path}:{again.start_mark.line + 1}: params key '{key}' is given twice "
                          f"(first on line {first.start_mark.line + 1})")
    if raw is None:
        raise ConfigError(f"{path}: params file is empty")
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


def _section(raw: Mapping[str, Any], name: str, path: Path):
    """Section ``name`` of a loaded params file as its dataclass; a missing or non-mapping section is an
    error (never silently the defaults), and every error names the file."""
    cls = section_class(name)
    if name not in raw:
        raise ConfigError(f"{path}: params section '{name}' is missing (it has: {', '.join(raw) or 'nothing'})")
    if not isinstance(raw[name], Mapping):
        raise ConfigError(f"{path}: params section '{name}' must be a mapping of keys, got {raw[name]!r}")
    try:
        return from_dict(cls, raw[name], name)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_section(name: str, path: str | Path | None = None, profile: str | None = None):
    """One section of params.yaml as its frozen dataclass (profile applied)."""
    path = Path(path) if path else paths.params_file()
    return _section(load_raw(path, profile), name, path)


def load_all(path: str | Path | None = None, profile: str | None = None) -> dict[str, Any]:
    """Every section, validated — the check a stage runs before it starts work."""
    path = Path(path) if path else paths.params_file()
    raw = load_raw(path, profile)
    return {name: _section(raw, name, path) for name in SECTIONS}


def to_dict(cfg: Any) -> dict:
    """A config dataclass back to plain data (for logs and JSON)."""
    return dataclasses.asdict(cfg)


def stage_command(section: str, prog: str, description: str, argv=None, variant: bool = False):
    """The command line of a training stage (``python -m d2lib.stages.<section>``): ``--profile`` and, with
    ``variant``, ``--variant`` (default ``full``) and ``--seed`` (default: the section's own). Loads the section
    (and the variant), sets torch's thread count when the section's ``num_threads`` asks for one, and returns
    ``(args, cfg, variant or None)``."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=description)
    if variant:
        ap.add_argument("--variant", default="full", help="a row of params.yaml `variants` (default: full)")
        ap.add_argument("--seed", type=int, default=None, help=f"default: params.yaml's {section}.seed")
    ap.add_argument("--profile", default=None, help="params profile (default: params.yaml's `profile`)")
    args = ap.parse_args(argv)
    cfg = load_section(section, profile=args.profile)
    row = load_section("variants", profile=args.profile).get(args.variant) if variant else None
    if getattr(cfg, "num_threads", 0):
        import torch

        torch.set_num_threads(cfg.num_threads)
    return args, cfg, row
