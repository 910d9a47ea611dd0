"""LoRA on the LM's attention projections, via peft (lesson 04_sft_lora).

The paper fine-tunes Phi-3-mini with LoRA (r=128, α=256, dropout 0.05) on ``qkv_proj`` and
``o_proj`` and, at the same time, trains ``embed_tokens``, ``lm_head`` and the two grounding heads
fully. This module holds the three pieces a stage needs:

* :class:`LoraSettings` — the ``<stage>.lora`` params block (checked by the stage's config);
* :func:`apply_lora` — wrap a transformers LM in a ``peft.PeftModel``;
* :func:`mark_trainable` / :func:`trainable_summary` — fully train a few named modules alongside
  the adapters, and count what is trained (the lesson prints this table).

**Which way are the fully-trained modules trained?** Two mechanisms exist and we use both, each
where it is the right one:

* modules *inside* the peft-wrapped LM (``embed_tokens``, ``lm_head``) go through peft's
  ``modules_to_save`` (``apply_lora(..., modules_to_save=...)``): peft keeps a trainable copy next
  to the frozen original, saves the copy with the adapter (``adapter_model.safetensors``), and
  ``disable_adapter()`` switches back to the original — exactly the frozen reference model that
  FPO/DPO needs (lesson 05_fpo). Plain ``requires_grad=True`` would silently change the reference
  and would not be saved by ``PeftModel.save_pretrained``;
* modules *outside* the LM (D²VLM's ``frm_head``/``evi_head``, projector) are ordinary modules of
  the wrapper model: :func:`mark_trainable` sets ``requires_grad=True`` on them, and the model's own
  ``save_pretrained`` (and the training checkpoints, which store every trainable tensor) keep them.

>>> LoraSettings(r=4, alpha=8).scale
2.0
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from d2lib.core.config import ConfigError


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora`` block of a training section. Ranges are checked by the enclosing
    :class:`d2lib.training.train.TrainConfig` so that errors name the full key (``sft.lora.r``)."""

    enabled: bool = True
    r: int = 8  # paper: 128
    alpha: float = 16.0  # paper: 256 (scale alpha / r = 2)
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("qkv_proj", "o_proj")

    @property
    def scale(self) -> float:
        """LoRA's output scale α / r (the update is ``scale · B A x``)."""
        return self.alpha / self.r


# ----------------------------------------------------------------------------- name matching
def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name equals the target or ends
    with ``.target``."""
    return name == target or name.endswith("." + target)


def find_modules(model: nn.Module, target: str) -> list[str]:
    """Full names of the modules of ``model`` that ``target`` selects (peft's matching rule)."""
    return [n for n, _ in model.named_modules() if n and _matches(n, target)]


def _leaf_names(model: nn.Module, kind: type | tuple[type, ...] = nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kind)})


def validate_lora_targets(model: nn.Module, targets: Iterable[str], key: str = "sft.lora.target_modules") -> None:
    """Reject a LoRA target that selects no ``nn.Linear`` of ``model`` — before any training.

    The error names the params ``key`` and lists the Linear layer names that do exist, so a typo
    like ``qkv_porj`` (or a Llama name such as ``q_proj`` on Phi-3, whose attention is fused into
    ``qkv_proj``) fails in the first second of a stage instead of training nothing.
    """
    targets = list(targets)
    if not targets:
        raise ConfigError(f"params key '{key}': no LoRA target modules given")
    for t in targets:
        hits = find_modules(model, t)
        if not hits:
            known = ", ".join(_leaf_names(model, nn.Linear))
            raise ConfigError(
                f"params key '{key}': target module {t!r} is not in the model "
                f"({type(model).__name__}); Linear layers it has: {known}"
            )
        bad = [h for h in hits if not isinstance(model.get_submodule(h), nn.Linear)]
        if bad:
            raise ConfigError(f"params key '{key}': target {t!r} selects non-Linear module(s) {bad[:3]}")


def validate_module_names(model: nn.Module, names: Iterable[str], key: str) -> None:
    """Like :func:`validate_lora_targets` for modules trained fully (e.g. ``sft.train_modules``)."""
    for t in names:
        if not find_modules(model, t):
            known = ", ".join(_leaf_names(model))
            raise ConfigError(f"params key '{key}': module {t!r} is not in the model; modules: {known}")


# ----------------------------------------------------------------------------- LoRA
def apply_lora(lm: nn.Module, lora: LoraSettings, modules_to_save: Iterable[str] = (),
               key: str = "sft.lora"):
    """Wrap ``lm`` (a transformers model, e.g. ``Phi3ForCausalLM``) in a ``peft.PeftModel``.

    Only the LoRA matrices and the ``modules_to_save`` copies are trainable afterwards; every other
    weight of ``lm`` is frozen. Targets are validated first (errors name ``<key>.target_modules``).
    """
    from peft import LoraConfig, get_peft_model

    validate_lora_targets(lm, lora.target_modules, f"{key}.target_modules")
    modules_to_save = list(modules_to_save)
    validate_module_names(lm, modules_to_save, f"{key}.modules_to_save")
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=modules_to_save or None,
        bias="none",
    )
    peft_lm = get_peft_model(lm, peft_cfg)
    # the base model's name goes into adapter_config.json (peft_config) and README.md (the LM's config):
    # a folder the LM was loaded from is written relative to the project root, never as an absolute path
    for c in peft_lm.peft_config.values():
        c.base_model_name_or_path = _relative_to_root(c.base_model_name_or_path)
    cfg = getattr(lm, "config", None)
    if cfg is not None and getattr(cfg, "_name_or_path", None):
        cfg._name_or_path = _relative_to_root(cfg._name_or_path)
    if isinstance(getattr(lm, "name_or_path", None), str):
        lm.name_or_path = _relative_to_root(lm.name_or_path)
    return peft_lm


def _relative_to_root(name: str | None) -> str | None:
    """An absolute path as a path relative to the project root; anything else (a hub name, None) as it is.

    >>> from d2lib.core import paths
    >>> _relative_to_root(str(paths.root_path("artifacts", "align", "final"))), _relative_to_root("microsoft/phi-3")
    ('artifacts/align/final', 'microsoft/phi-3')
    """
    if not name or not os.path.isabs(name):
        return name
    from d2lib.core import paths

    try:
        return Path(os.path.relpath(name, paths.repo_root())).as_posix()
    except (FileNotFoundError, ValueError):  # no project root, or another drive
        return name


def mark_trainable(model: nn.Module, names: Iterable[str], key: str = "sft.train_modules") -> list[str]:
    """Set ``requires_grad=True`` on every parameter of the modules selected by ``names`` (peft's
    suffix rule); returns the full parameter names switched on. Unknown names are a
    :class:`ConfigError` naming ``key``. Use for modules outside a PeftModel (see module doc)."""
    names = list(names)
    validate_module_names(model, names, key)
    switched = []
    for mod_name in sorted({h for t in names for h in find_modules(model, t)}):
        for p_name, p in model.get_submodule(mod_name).named_parameters():
            p.requires_grad_(True)
            switched.append(f"{mod_name}.{p_name}")
    return switched


def prepare_for_lora(model: nn.Module, lora: LoraSettings, full_modules: Iterable[str] = (),
                     lm_attr: str = "lm", section: str = "sft") -> nn.Module:
    """The SFT recipe in one call (lesson 04_sft_lora): freeze ``model``, put LoRA on the LM at
    ``model.<lm_attr>`` (``""``: ``model`` is the LM), and train ``full_modules`` fully — via
    peft's ``modules_to_save`` for those inside the LM (``embed_tokens``, ``lm_head``), via
    ``requires_grad`` for the rest (``frm_head``, ``evi_head``). Returns the model to train
    (``model`` itself, or the PeftModel when ``lm_attr == ""``). Names that select nothing are
    :class:`ConfigError`s naming ``<section>.lora.target_modules`` / ``<section>.head_modules``."""
    full_modules = list(full_modules)
    lm = model.get_submodule(lm_attr) if lm_attr else model
    validate_module_names(model, full_modules, f"{section}.head_modules")  # all checks before any change
    validate_lora_targets(lm, lora.target_modules, f"{section}.lora.target_modules")
    freeze(model)
    inside = [m for m in full_modules if find_modules(lm, m)]
    outside = [m for m in full_modules if m not in inside]
    peft_lm = apply_lora(lm, lora, modules_to_save=inside, key=f"{section}.lora")
    if not lm_attr:
        return peft_lm
    parent, _, leaf = lm_attr.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, peft_lm)
    mark_trainable(model, outside, key=f"{section}.head_modules")
    return model


def freeze(model: nn.Module) -> nn.Module:
    """``requires_grad=False`` everywhere (e.g. the cached vision tower of lesson 04)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def param_kind(name: str) -> str:
    """``lora`` for LoRA matrices, ``saved`` for peft's modules_to_save copies, else ``other``."""
    if ".lora_" in name or name.startswith("lora_"):
        return "lora"
    if ".modules_to_save." in name:
        return "saved"
    return "other"


def trainable_summary(model: nn.Module) -> dict:
    """Trainable vs total parameter counts (shared/tied tensors counted once).

    Returns ``{"trainable", "total", "percent", "lora", "saved", "other"}`` where the last three
    split the *trainable* count by :func:`param_kind` (``saved`` = peft modules_to_save copies).
    Note that a modules_to_save copy is counted in ``total`` too: peft keeps the original.
    """
    out = {"trainable": 0, "total": 0, "lora": 0, "saved": 0, "other": 0}
    for name, p in model.named_parameters():  # named_parameters() already skips tied duplicates
        out["total"] += p.numel()
        if p.requires_grad:
            out["trainable"] += p.numel()
            out[param_kind(name)] += p.numel()
    out["percent"] = round(100.0 * out["trainable"] / max(out["total"], 1), 4)
    return out


def peft_submodules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: PeftModel}`` for ``model`` itself (name ``""``) or the PeftModels it contains
    (outermost only)."""
    peft = sys.modules.get("peft")  # not imported ⇒ no PeftModel can exist (and importing costs ~5 s)
    if peft is None:
        return {}
    PeftModel = peft.PeftModel
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, PeftModel) and not any(name.startswith(f + ".") or f == "" for f in found):
            found[name] = m
    return found


def tiny_phi3(hidden: int = 64, layers: int = 2, vocab: int = 128, seed: int = 0) -> nn.Module:
    """A shrunken real ``Phi3ForCausalLM`` (fused ``qkv_proj``, ``o_proj``) for lessons and tests."""
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                     max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Phi3ForCausalLM(cfg)
