"""One training loop for every stage — align, SFT with LoRA, FPO (lessons 03_align, 04_sft_lora, 05_fpo).

``fit(model, data, cfg, out_dir, collate_fn)`` trains any ``nn.Module`` whose ``forward(**batch)``
returns something with a ``.loss`` (a dataclass, a transformers ``ModelOutput`` or a dict). It is
nanoGPT's loop with the chores a real run needs, each in a short function below:

* HF Accelerate: the same code runs on one CPU process, on a GPU with bf16 autocast, or on many
  processes (``accelerate launch``; gradients are averaged by DDP);
* AdamW with parameter groups that have their own learning rates (paper: LoRA 5e-5, embeddings /
  lm_head / heads 2e-5), a cosine schedule with linear warm-up (3% of the steps), gradient
  clipping and gradient accumulation;
* a deterministic data order: epoch ``e`` visits the examples in the permutation drawn from
  ``(seed, e)``, so the position in the data is a pure function of the step count;
* loss curves as CSV (``loss.csv``, ``val.csv``) for ``dvc plots``, appended row by row (a partial
  last row left by a crash is repaired on resume), a tqdm progress bar;
* atomic checkpoints (``checkpoint-<step>.tmp`` → ``checkpoint-<step>``, :func:`d2lib.core.io.atomic_dir`)
  holding the model in HF format, every trainable tensor, optimizer, scheduler and RNG states, so that
  a run killed at any moment resumes to *bit-identical* weights on CPU. The completion marker records
  each file's SHA-256; resume verifies them and falls back to the previous checkpoint when the newest
  one was cut short or overwritten.

Sizes: ``batch_size`` is per process; one optimizer step sees
``batch_size × grad_accum × num_processes`` examples (the *global batch*).

``python -m d2lib.training.train --selftest OUT`` (or ``accelerate launch -m d2lib.training.train --selftest OUT``)
trains a toy model — a quick check of a (multi-)process setup.

>>> [round(lr_factor(s, warmup=2, total=10), 3) for s in (0, 1, 2, 6, 10)]
[0.0, 0.5, 1.0, 0.5, 0.0]
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from d2lib.core import config, io
from d2lib.core.config import check
from d2lib.vlm.lora import LoraSettings, param_kind, peft_submodules

# ============================================================================ config


@dataclass(frozen=True)
class TrainConfig:
    """A training section of params.yaml (``align``, ``sft``; ``fpo`` extends it).

    ``steps`` or ``epochs`` (exactly one) sets the length; ``batch_size`` is per process.
    Learning rates: ``lr_lora`` for LoRA matrices, ``lr_heads`` for the modules in
    ``head_modules`` (trained fully), ``lr`` for every other trainable parameter.
    """

    section: ClassVar[str] = "train"  # the params key prefix used in error messages

    seed: int = 0
    steps: int | None = 100
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-5
    lr_lora: float = 5e-5
    lr_heads: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0  # eval_fn every N steps; 0: only after the last step
    save_every: int = 100  # 0: only the final model
    keep_last: int = 2
    num_threads: int = 0  # torch threads while training; 0 leaves torch's setting
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, else no
    # torch.use_deterministic_algorithms(warn_only) while training. Off by default: CPU kernels are
    # already deterministic at a fixed thread count (tests check bit-identical runs), and the call
    # imports torch._inductor (3-6 s per process). Turn on for GPU runs that must repeat exactly.
    deterministic: bool = False
    ddp_find_unused: bool = False  # DDP find_unused_parameters (multi-process only)
    head_modules: tuple[str, ...] = ("embed_tokens", "lm_head", "frm_head", "evi_head")
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        k = self.section
        check(self.seed >= 0, f"{k}.seed", f"must be >= 0, got {self.seed}")
        check((self.steps is None) != (self.epochs is None), f"{k}.steps",
              f"set exactly one of steps / epochs (got steps={self.steps}, epochs={self.epochs})")
        check(self.steps is None or self.steps > 0, f"{k}.steps", f"must be > 0, got {self.steps}")
        check(self.epochs is None or self.epochs > 0, f"{k}.epochs", f"must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum", "log_every", "keep_last"):
            v = getattr(self, name)
            check(v >= 1, f"{k}.{name}", f"must be >= 1, got {v}")
        for name in ("lr", "lr_lora", "lr_heads"):
            v = getattr(self, name)
            check(v > 0 and math.isfinite(v), f"{k}.{name}", f"must be a positive number, got {v}")
        for name in ("weight_decay", "grad_clip", "eval_every", "save_every", "num_threads"):
            v = getattr(self, name)
            check(v >= 0, f"{k}.{name}", f"must be >= 0, got {v}")
        check(all(0 <= b < 1 for b in self.betas), f"{k}.betas", f"each must be in [0, 1), got {self.betas}")
        check(0 <= self.warmup_ratio < 1, f"{k}.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(0 <= self.min_lr_ratio <= 1, f"{k}.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(all(self.head_modules), f"{k}.head_modules", "empty module name")
        lo = self.lora
        check(lo.r >= 1, f"{k}.lora.r", f"LoRA rank must be >= 1, got {lo.r}")
        check(lo.alpha > 0, f"{k}.lora.alpha", f"must be > 0, got {lo.alpha}")
        check(0 <= lo.dropout < 1, f"{k}.lora.dropout", f"must be in [0, 1), got {lo.dropout}")
        check(len(lo.target_modules) > 0 and all(lo.target_modules), f"{k}.lora.target_modules",
              f"give at least one module name, got {list(lo.target_modules)}")

    def key(self, name: str) -> str:
        """The full params key of field ``name`` (``sft.lora.target_modules``)."""
        return f"{self.section}.{name}"


STAGE_TASKS = ("tvg", "dvc", "tal", "rar", "gvq")  # the Shapes tasks a stage can train on


@dataclass(frozen=True)
class StageConfig(TrainConfig):
    """A pipeline stage's training section: :class:`TrainConfig` plus what the stage functions
    (``d2lib.stages.align.run``, ``d2lib.stages.sft.run``) read around :func:`fit` — ``fit`` ignores these.

    ``tasks``: the training records' tasks; ``eval_max_queries``: validation queries scored by
    generation (0: all); ``eval_batch_size``: prompts per generation batch; ``max_new_tokens``:
    generation length limit; ``group_videos``: a batch holds whole videos (all training examples of
    a video back to back, :func:`epoch_permutation` groups) and the tower runs once per video
    (``Collator(dedupe=True)``) — same examples per epoch, fewer tower passes.
    """

    tasks: tuple[str, ...] = STAGE_TASKS
    eval_max_queries: int = 0
    eval_batch_size: int = 32
    max_new_tokens: int = 48
    group_videos: bool = False
    # pack: one training sequence per video — its frames once, then every query of the video as its own
    # segment (d2lib.vlm.tokens.pack_examples; exact). batch_size then counts videos, not queries.
    pack: bool = False

    def __post_init__(self):
        super().__post_init__()
        k = self.section
        check(len(self.tasks) > 0 and all(t in STAGE_TASKS for t in self.tasks), f"{k}.tasks",
              f"give one or more of {', '.join(STAGE_TASKS)}, got {list(self.tasks)}")
        check(self.eval_max_queries >= 0, f"{k}.eval_max_queries", f"must be >= 0, got {self.eval_max_queries}")
        check(self.eval_batch_size >= 1, f"{k}.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        check(self.max_new_tokens >= 1, f"{k}.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class AlignConfig(StageConfig):
    """``align`` (lesson 03_align): vision tower, pooling, projector and LM trained fully at ``lr``
    (no LoRA) on the grounding-free tasks (captions in order, multiple choice)."""

    section: ClassVar[str] = "align"
    lr: float = 1e-3
    head_modules: tuple[str, ...] = ()
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(enabled=False))
    tasks: tuple[str, ...] = ("dvc", "rar", "gvq")
    contrastive_weight: float = 1.0  # video–text contrastive term (d2lib.training.videotext); 0: captioning/QA only
    contrastive_pairs: Literal["frame", "video"] = "frame"  # CLIP-style frame–caption pairs / MIL per video

    def __post_init__(self):
        super().__post_init__()
        check(self.contrastive_weight >= 0, "align.contrastive_weight", f"must be >= 0, got {self.contrastive_weight}")


@dataclass(frozen=True)
class SFTConfig(StageConfig):
    """``sft`` (lesson 04_sft_lora): LoRA on the LM attention + embeddings/lm_head/heads trained
    fully (paper §4), on cached features of the frozen vision tower."""

    section: ClassVar[str] = "sft"
    # The paper freezes its (pre-trained) ViT and SFT reads cached features. A from-scratch tiny tower is
    # not ready after a short align (lesson 03/04 measure it), so it may keep training here, on the
    # uint8 frame cache, at `lr`; its final features are then cached by the stage for FPO and evaluation.
    train_tower: bool = False


# ============================================================================ schedule


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of each group's base lr after ``step`` optimizer steps: linear warm-up from 0
    over ``warmup`` steps, then cosine (or linear) decay to ``min_ratio`` at ``total`` (``constant``: 1).

    For ``cosine`` and ``constant`` this is, bit for bit at every step, what transformers'
    ``get_scheduler("cosine_with_min_lr", min_lr_rate=min_ratio)`` / ``get_scheduler("constant_with_warmup")``
    compute, and :func:`make_scheduler` uses those. It stays the schedule of ``linear``, which transformers
    has no exact equivalent of: its ``linear`` computes ``(total − step) / (total − warmup)`` — the same
    number as ``1 − progress`` but rounded differently in the last bit at about a third of the steps — and
    has no floor; its ``warmup_stable_decay`` has a floor but warms up from ``min_ratio`` instead of 0.
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int):
    """The run's ``LambdaLR``: ``ceil(warmup_ratio · total)`` warm-up steps, then ``cfg.schedule``
    (:func:`lr_factor`'s multipliers; transformers' schedulers where they are the same bits)."""
    warmup = math.ceil(cfg.warmup_ratio * total)
    if cfg.schedule == "linear":
        fn = functools.partial(lr_factor, warmup=warmup, total=total, schedule="linear", min_ratio=cfg.min_lr_ratio)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
    from transformers import get_scheduler

    if cfg.schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup)
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=total,
                         scheduler_specific_kwargs={"min_lr_rate": cfg.min_lr_ratio})


# ============================================================================ data order


def micro_batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Micro-batches (one per process each) in one pass; the last partial one is dropped."""
    per = n // (batch_size * world)
    if per == 0:
        raise ValueError(f"{n} training examples cannot fill one batch of {batch_size} × {world} processes")
    return per


def total_steps(cfg: TrainConfig, n: int, world: int = 1) -> int:
    """Optimizer steps of the run: ``cfg.steps``, or ``ceil(epochs · micro-batches / grad_accum)``."""
    if cfg.steps is not None:
        return cfg.steps
    return math.ceil(cfg.epochs * micro_batches_per_epoch(n, cfg.batch_size, world) / cfg.grad_accum)


@functools.lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int, groups: tuple[tuple[int, ...], ...] | None = None) -> np.ndarray:
    """The visiting order of epoch ``epoch``: a permutation drawn from ``(seed, epoch)`` alone.

    ``groups`` (a partition of ``range(n)``, e.g. the examples of each video): the groups are
    visited in random order and each group's examples back to back (shuffled within the group).

    >>> sorted(epoch_permutation(6, 0, 0, ((0, 1), (2, 3, 4), (5,))).tolist())
    [0, 1, 2, 3, 4, 5]
    """
    rng = np.random.default_rng([seed, epoch])
    if groups is None:
        return rng.permutation(n)
    return np.concatenate([rng.permutation(np.asarray(groups[g], dtype=np.int64))
                           for g in rng.permutation(len(groups))])


def check_groups(groups: Sequence[Sequence[int]], n: int) -> tuple[tuple[int, ...], ...]:
    """``groups`` as a tuple of tuples after checking it partitions ``range(n)`` (each index once)."""
    out = tuple(tuple(int(i) for i in g) for g in groups)
    flat = sorted(i for g in out for i in g)
    if flat != list(range(n)) or not all(out):
        raise ValueError(f"groups must partition the {n} training examples (each index in exactly one non-empty group)")
    return out


def batch_indices(n: int, seed: int, micro: int, batch_size: int, world: int = 1, rank: int = 0,
                  groups: tuple[tuple[int, ...], ...] | None = None) -> list[int]:
    """Example indices of global micro-batch ``micro`` for process ``rank``.

    Micro-batch ``m`` of an epoch is the slice ``[m·B·W, (m+1)·B·W)`` of the permutation, and rank
    ``r`` takes its ``r``-th piece of ``B``: so ``W`` processes with batch ``B`` see exactly the
    examples one process with batch ``W·B`` sees. No state to save beyond the step count.
    ``groups``: see :func:`epoch_permutation` (a batch then holds a few whole groups).
    """
    epoch, pos = divmod(micro, micro_batches_per_epoch(n, batch_size, world))
    start = (pos * world + rank) * batch_size
    return epoch_permutation(n, seed, epoch, groups)[start:start + batch_size].tolist()


# ============================================================================ parameters and outputs


def _in_module(param_name: str, module: str) -> bool:
    return f".{module}." in f".{param_name}"


def default_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups of the trainable parameters: ``lora`` (``lr_lora``), ``heads`` (parameters
    under a module of ``cfg.head_modules``, incl. peft's modules_to_save copies; ``lr_heads``)
    and ``main`` (everything else; ``lr``). Empty groups are left out."""
    groups = {"lora": [], "heads": [], "main": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if param_kind(name) == "lora":
            groups["lora"].append(p)
        elif any(_in_module(name, m) for m in cfg.head_modules):
            groups["heads"].append(p)
        else:
            groups["main"].append(p)
    lrs = {"lora": cfg.lr_lora, "heads": cfg.lr_heads, "main": cfg.lr}
    out = [{"name": g, "params": ps, "lr": lrs[g]} for g, ps in groups.items() if ps]
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def default_parts(out: Any) -> dict[str, torch.Tensor]:
    """Named loss components of a forward output: ``out.parts`` if it is a mapping, else every
    scalar-tensor field whose name contains ``loss`` (except ``loss`` itself)."""
    parts = getattr(out, "parts", None)
    if isinstance(parts, Mapping):
        return {k: v for k, v in parts.items() if torch.is_tensor(v)}
    if isinstance(out, Mapping):
        items = out.items()
    elif dataclasses.is_dataclass(out):
        items = ((f.name, getattr(out, f.name)) for f in dataclasses.fields(out))
    else:
        return {}
    return {k: v for k, v in items if k != "loss" and "loss" in k and torch.is_tensor(v) and v.dim() == 0}


def loss_of(out: Any) -> torch.Tensor:
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise TypeError(f"the model's forward returned {type(out).__name__} without a .loss")
    return loss


# ============================================================================ RNG


def rng_state() -> dict:
    """Python, NumPy and torch (CPU + CUDA) generator states, in a ``torch.load``-safe form."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ============================================================================ checkpoints

MARKER = "COMPLETE"  # written last, inside the .tmp folder, before the atomic rename
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER = re.compile(r"^(checkpoint-\d+|final)\.(tmp|old)$")  # what d2lib.core.io.atomic_dir leaves after a crash
_HASH_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")  # sha256sum's format


class CheckpointError(OSError):
    """A checkpoint file that is missing, unreadable or not the bytes its marker recorded (the message names it)."""


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``[(step, path)]``, oldest first (folders without the marker and
    ``.tmp`` leftovers are ignored)."""
    found = []
    for p in Path(out_dir).glob("checkpoint-*"):
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1][1] if ckpts else None


def clean_incomplete(out_dir: Path) -> list[Path]:
    """Remove what a crash can leave behind: ``checkpoint-<n>.tmp``/``.old`` and ``final.tmp``/``.old``
    folders, and checkpoint folders without the completion marker. Returns the removed paths."""
    removed = []
    for p in sorted(Path(out_dir).iterdir()):
        if p.is_dir() and (_LEFTOVER.match(p.name) or (_CKPT.match(p.name) and not (p / MARKER).is_file())):
            shutil.rmtree(p)
            removed.append(p)
    return removed




def _checkpoint_files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the marker, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def write_marker(folder: Path, step: int) -> None:
    """The completion marker: ``step <n>``, then ``<sha256>  <file>`` for every file of ``folder`` (the
    format ``sha256sum -c`` reads). Each file is fsynced first, so the marker never vouches for bytes
    still in a cache."""
    lines = [f"step {step}"]
    for name in _checkpoint_files(folder):
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
        lines.append(f"{io.file_sha256(folder / name)}  {name}")
    _write_synced(folder / MARKER, "\n".join(lines) + "\n")


def verify_checkpoint(path: Path) -> bool:
    """Check every file a checkpoint's marker lists against its recorded SHA-256; raise
    :class:`CheckpointError` naming the first file that is missing or differs (cut short, zeroed,
    overwritten). Returns False for a marker that records no hashes (nothing to verify), else True."""
    marker = Path(path) / MARKER
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{marker}: cannot read the completion marker ({e})") from None
    if not lines or not re.fullmatch(r"step \d+", lines[0]):
        raise CheckpointError(f"{marker}: not a completion marker (first line {lines[:1]})")
    for line in lines[1:]:
        m = _HASH_LINE.match(line)
        if not m:
            raise CheckpointError(f"{marker}: malformed line {line!r}")
        f = Path(path) / m.group(2)
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (the checkpoint's {MARKER} lists it)")
        if io.file_sha256(f) != m.group(1):
            raise CheckpointError(f"{f}: its bytes are not the ones the checkpoint recorded (sha256 in {MARKER}): "
                                  "cut short or overwritten")
    return len(lines) > 1


def newest_sound_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``out_dir`` whose files verify (:func:`verify_checkpoint`). A
    newer one that fails is moved aside to ``checkpoint-<n>.corrupt`` (kept for a look, never resumed
    from) with a printed note naming it and the bad file."""
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            if not verify_checkpoint(path):
                print(f"note: {path} records no file hashes (an older checkpoint): resuming from it unverified",
                      file=sys.stderr)
            return path
        except CheckpointError as e:
            aside = path.with_name(path.name + ".corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            print(f"note: skipped checkpoint {path.name} — {e}; moved it to {aside.name} and resume from the "
                  "previous complete checkpoint", file=sys.stderr)
    return None


def export_model(model: nn.Module, folder: Path) -> None:
    """The model in HF format (the default ``export_fn`` of :func:`fit`):

    * a PeftModel, or a model with ``save_pretrained`` and no PeftModel inside: ``save_pretrained``
      (a PeftModel writes its adapter, modules_to_save included);
    * a model with PeftModels *inside* (D²VLM after :func:`d2lib.vlm.lora.prepare_for_lora`): each
      adapter via peft's ``save_pretrained`` to ``adapter/`` (``adapter-<name>/`` when several),
      plus ``trainable.safetensors`` (every trainable tensor, e.g. the heads outside the LM) — the
      model's own ``save_pretrained`` is not called, as it may need a merged LM (``D2VLM`` does);
    * anything else: ``model.safetensors`` (the full state dict).
    """
    from safetensors.torch import save_file, save_model

    from d2lib.vlm.model import no_progress_bars

    folder.mkdir(parents=True, exist_ok=True)
    inner = {n: m for n, m in peft_submodules(model).items() if n}
    if inner:
        for name, pm in inner.items():
            with no_progress_bars():
                pm.save_pretrained(folder / ("adapter" if len(inner) == 1 else f"adapter-{name}"))
        if hasattr(model, "save_pretrained"):
            save_file(trainable_state(model), str(folder / "trainable.safetensors"))
            return
    if hasattr(model, "save_pretrained"):
        with no_progress_bars():
            model.save_pretrained(folder)
    else:
        save_model(model, str(folder / "model.safetensors"))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor training can change: trainable parameters and persistent buffers (cloned, so
    tied weights do not upset safetensors). Frozen weights come from how the model was built."""
    param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if k in trainable or k not in param_names}


def load_trainable_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    need = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    lacking = sorted(need & set(missing))
    if unexpected or lacking:
        raise RuntimeError(f"checkpoint does not fit the model (was it built the same way?): "
                           f"unexpected {unexpected[:5]}, missing trainable {lacking[:5]}")


def save_checkpoint(acc, model: nn.Module, optimizer, scheduler, state: dict, out_dir: Path,
                    keep_last: int, export_fn: Callable[[nn.Module, Path], None] | None = None) -> Path:
    """Write ``checkpoint-<step>`` atomically (:func:`d2lib.core.io.atomic_dir`: the folder appears
    whole, marker and file hashes included, or not at all); every process writes its RNG state.
    Returns the path. The files inside the temporary folder are written directly: ``torch.save``
    names its archive after the file it writes, so a temporary file name would change the bytes."""
    from safetensors.torch import save_file

    export_fn = export_fn or export_model
    final = out_dir / f"checkpoint-{state['step']}"
    main = acc.is_main_process
    # the main process owns the temporary folder; the others write their RNG state into it by name
    with (io.atomic_dir(final) if main else contextlib.nullcontext(final.with_name(final.name + ".tmp"))) as tmp:
        acc.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
        if main:
            export_fn(model, tmp)
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))  # what resume reads
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            io.write_json(tmp / "trainer_state.json", state, indent=1)
        acc.wait_for_everyone()
        if main:
            write_marker(tmp, state["step"])
    if main:
        for _, old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, with any failure (missing, cut short, not the format) a :class:`CheckpointError` naming it."""
    try:
        return reader(path)
    except Exception as e:  # noqa: BLE001  (re-raised with the file's name)
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e


def read_checkpoint(path: Path, acc) -> dict:
    """Every file of a checkpoint that resume needs, read (nothing applied yet, so a bad file changes no
    state): ``{trainable, optimizer, scheduler, rng (None if this process has none), state}``."""
    from safetensors.torch import load_file

    path = Path(path)
    rng_file = path / f"rng_state_{acc.process_index}.pt"
    return {
        "trainable": _read(path / "trainable.safetensors", lambda f: load_file(str(f), device=str(acc.device))),
        "optimizer": _read(path / "optimizer.pt", lambda f: torch.load(f, map_location=acc.device, weights_only=True)),
        "scheduler": _read(path / "scheduler.pt", lambda f: torch.load(f, weights_only=True)),
        "rng": _read(rng_file, lambda f: torch.load(f, weights_only=True)) if rng_file.is_file() else None,
        "state": _read(path / "trainer_state.json", lambda f: json.loads(f.read_text())),
    }


def load_checkpoint(path: Path, acc, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into already-built objects;
    returns its ``trainer_state.json``. A file that cannot be read is a :class:`CheckpointError` naming it."""
    ck = read_checkpoint(path, acc)
    load_trainable_state(model, ck["trainable"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if ck["rng"] is not None:
        set_rng_state(ck["rng"])
    else:
        warnings.warn(f"rng_state_{acc.process_index}.pt missing in {path} (different number of processes?): "
                      "RNG reseeded")
    return ck["state"]


# ============================================================================ logs


def read_log_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a CSV log (``loss.csv``, ``val.csv``) as ``{column: text}``, empty cells left
    out. A last row that a crash cut short (no line end, or not a row of numbers) is dropped with a
    printed note; a bad row before it is a ``ValueError`` naming the file and line."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):  # empty, or a header cut short: no rows yet
        return []
    header = next(csv.reader(lines[:1]))
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        cells = next(csv.reader([line]), [])
        row = {k: v for k, v in zip(header, cells) if v != ""}
        complete = line.endswith("\n") and len(cells) == len(header) and "step" in row
        if complete and all(map(_is_number, row.values())):
            rows.append(row)
        elif lineno == len(lines):
            print(f"note: {path}: dropped the partial last row (line {lineno}: {line!r}) that an interrupted run "
                  f"left; kept its {len(rows)} complete rows", file=sys.stderr)
        else:
            raise ValueError(f"{path}:{lineno}: not a row of {len(header)} numbers: {line!r}")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CsvLog:
    """Rows of numbers appended to a CSV (header from the union of keys, in first-seen order).

    The file is never truncated or rewritten in place: a row is appended (a crash can leave at most a
    partial last row), and a new header (a new key) or a shorter log is a new file that replaces the
    old one atomically. ``keep_until``: resume from that step — the rows after it are dropped, a
    partial last row is repaired (:func:`read_log_rows`), and the kept rows keep their bytes (so a
    resumed log equals an uninterrupted one). Falsy: start a new log."""

    def __init__(self, path: Path, keep_until: int | None):
        self.path, self.rows, self._written = Path(path), [], []  # rows as numbers / as written (text or numbers)
        if keep_until and self.path.is_file():
            self._written = [r for r in read_log_rows(self.path) if float(r["step"]) <= keep_until]
            self.rows = [{k: float(v) for k, v in r.items()} for r in self._written]
        self._rewrite()

    def _fields(self) -> list[str]:
        return list(dict.fromkeys(["step", *(k for r in self.rows for k in r)]))  # first-seen order

    def _rewrite(self) -> None:
        self.fields = self._fields()
        with io.atomic_file(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(self._written)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._written.append(row)
        if set(row) - set(self.fields):
            return self._rewrite()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


LOSS_COLUMNS = ("loss", "lm_loss", "grounding_loss", "consistency_loss")


def export_loss_plot(loss_csv: str | os.PathLike, out_csv: str | os.PathLike,
                     columns: Sequence[str] = LOSS_COLUMNS) -> Path:
    """Copy ``step`` and the loss ``columns`` of a run's ``loss.csv`` to ``out_csv`` (atomically), the
    file a stage declares under ``plots:`` in dvc.yaml (``dvc plots show`` draws every column vs step).
    Columns the run did not log are skipped."""
    with open(loss_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = ["step", *(c for c in columns if rows and c in rows[0])]
    with io.atomic_file(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return Path(out_csv)


# ============================================================================ the loop


@dataclass
class TrainResult:
    out_dir: Path
    final_dir: Path
    steps: int  # optimizer steps of the whole run
    start_step: int  # 0, or the step of the checkpoint it resumed from
    history: list[dict]  # loss.csv rows
    val: list[dict]  # val.csv rows
    seconds: float  # wall time of this call (never written to a hashed output: see d2lib.core.timing)

    @property
    def steps_per_s(self) -> float:
        """Optimizer steps per second of wall time in this call (for :mod:`d2lib.core.timing`, not loss.csv)."""
        return (self.steps - self.start_step) / self.seconds if self.seconds > 0 else 0.0

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class StageResult:
    """What a stage's ``run`` (align, sft, fpo) returns: the trained model (eval mode), its tokenizer,
    the :class:`TrainResult`, the output folder, the final metrics and wall times in seconds."""

    model: Any
    tokenizer: Any
    fit: TrainResult
    out_dir: Path
    metrics: dict
    seconds: dict


def make_accelerator(cfg: TrainConfig):
    """An Accelerator for ``cfg``: bf16 autocast on CUDA (``mixed_precision: auto``), DDP options."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused)
    # cpu=True without CUDA: then a torchrun-style launch (LOCAL_RANK set) becomes gloo multi-CPU
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, kwargs_handlers=[ddp],
                       cpu=not torch.cuda.is_available())


def _pick_resume(out_dir: Path, resume: bool | str | Path, acc) -> Path | None:
    """The checkpoint to resume from: ``True``: the newest one whose files verify
    (:func:`newest_sound_checkpoint`, chosen by the main process for all); a path: that one, which must
    verify. Checkpoints of ``out_dir`` newer than an explicit one belong to an abandoned timeline and
    are deleted (so a later automatic resume cannot pick them)."""
    if resume is True:
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([newest_sound_checkpoint(out_dir) if acc.is_main_process else None])[0]
    path = None if resume is False else Path(resume)
    if path is not None and not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    if path is not None:
        verify_checkpoint(path)
    step = -1 if path is None else int(json.loads((path / "trainer_state.json").read_text())["step"])
    if acc.is_main_process:
        for s, p in list_checkpoints(out_dir):
            if s > step and p.resolve() != (path.resolve() if path else None):
                shutil.rmtree(p)
    acc.wait_for_everyone()
    return path


def _trainer_state(cfg: TrainConfig, step: int, epoch: float, total: int, world: int) -> dict:
    """``trainer_state.json``: where the run is. The data position is a function of ``step``."""
    return {"step": step, "epoch": epoch, "micro_batches": step * cfg.grad_accum,
            "examples_seen": step * cfg.grad_accum * cfg.batch_size * world, "total_steps": total,
            "seed": cfg.seed, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "world_size": world,
            "section": cfg.section, "config": config.to_dict(cfg)}


def _check_same_run(saved: dict, cfg: TrainConfig, world: int, total: int) -> None:
    now = {"seed": cfg.seed, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
           "world_size": world, "total_steps": total}
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        warnings.warn(f"resuming with settings that differ from the checkpoint's {diff}: the run will not "
                      "match an uninterrupted one")


class _Threads:
    """Use ``n`` torch threads (and deterministic kernels, if asked) inside a ``with`` block."""

    def __init__(self, n: int, deterministic: bool):
        self.n, self.det = n, deterministic

    def __enter__(self):
        self.old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
        if self.n:
            torch.set_num_threads(self.n)
        if self.det:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old[0])
        if self.det:
            torch.use_deterministic_algorithms(self.old[1], warn_only=self.old[2])


def fit(model: nn.Module, train_data: Sequence, cfg: TrainConfig, out_dir: str | Path,
        collate_fn: Callable[[list], Mapping[str, Any]] | None = None, *,
        param_groups: list[dict] | None = None,
        eval_fn: Callable[[nn.Module, int], Mapping[str, float]] | None = None,
        parts_fn: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        callbacks: Iterable[Callable[[int, dict], None]] = (),
        before_step: Iterable[Callable[[int, int], None]] = (),
        resume: bool | str | Path = True, export_fn: Callable[[nn.Module, Path], None] | None = None,
        accelerator=None, progress: bool = True, groups: Sequence[Sequence[int]] | None = None) -> TrainResult:
    """Train ``model`` in place on ``train_data`` for ``total_steps(cfg, len(train_data))`` steps.

    * ``train_data[i]`` → an example; ``collate_fn(list_of_examples)`` → a dict of tensors passed
      as ``model(**batch)`` (default: torch's ``default_collate``).
    * ``param_groups``: AdamW groups (``{"params", "lr", "name"}``); default
      :func:`default_param_groups` (LoRA / heads / main at ``lr_lora`` / ``lr_heads`` / ``lr``).
    * ``eval_fn(model, step)`` → ``{metric: value}`` every ``cfg.eval_every`` steps and after the last,
      in eval mode under ``torch.no_grad()``; it runs on every process (gather inside it if the
      data is sharded) and does not disturb the training RNG streams; rows go to ``val.csv``.
    * ``parts_fn(output)`` → named loss components to log (default :func:`default_parts`).
      They must have the same names on every step and process.
    * ``callbacks``: ``cb(step, info)`` after every optimizer step (raise to stop the run).
    * ``before_step``: ``hook(step, total)`` before optimizer step ``step`` (1-based) — e.g. a loss term
      switched on part-way; it must depend on ``step``/``total`` only, so that a resumed run repeats it.
    * ``resume``: ``True`` continues from the newest complete checkpoint in ``out_dir`` whose files
      match their recorded SHA-256 (a damaged newer one is moved aside, with a printed note), if any;
      ``False`` deletes old checkpoints and starts over; a path resumes from that checkpoint (which
      must verify: :class:`CheckpointError` names the bad file).
    * ``export_fn(model, folder)`` writes the model into checkpoints and ``final/`` (default
      :func:`export_model`); checkpoints also get ``trainable.safetensors``, which resume reads.
    * ``groups``: a partition of the example indices (e.g. by video) whose members are visited back
      to back (:func:`epoch_permutation`), so a batch holds a few whole groups.

    Writes ``out_dir/{loss.csv, val.csv, checkpoint-<step>/, final/}`` (files on the main process;
    ``TrainResult.history``/``val`` are filled there too, empty on the other processes).
    """
    from accelerate.utils import send_to_device
    from torch.utils.data import default_collate
    from tqdm import tqdm  # plain text bar: renders live in Jupyter and stays readable in papermill output

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    collate_fn = collate_fn or default_collate
    parts_fn = parts_fn or default_parts
    acc = accelerator or make_accelerator(cfg)
    acc.gradient_accumulation_steps, acc.step = cfg.grad_accum, 0
    world, rank, n = acc.num_processes, acc.process_index, len(train_data)
    groups = check_groups(groups, n) if groups is not None else None
    total = total_steps(cfg, n, world)
    per_epoch = micro_batches_per_epoch(n, cfg.batch_size, world)

    with _Threads(cfg.num_threads, cfg.deterministic):
        pgroups = param_groups if param_groups is not None else default_param_groups(model, cfg)
        optimizer = torch.optim.AdamW(pgroups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(optimizer, cfg, total)
        model, optimizer = acc.prepare(model, optimizer)
        raw = acc.unwrap_model(model)
        trainable = [p for g in optimizer.param_groups for p in g["params"]]

        if acc.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            clean_incomplete(out_dir)
        acc.wait_for_everyone()
        ckpt = _pick_resume(out_dir, resume, acc)
        start = 0
        if ckpt is not None:
            saved = load_checkpoint(ckpt, acc, raw, optimizer, scheduler)
            _check_same_run(saved, cfg, world, total)
            start = saved["step"]
        else:
            seed_everything(cfg.seed + rank)
        log = CsvLog(out_dir / "loss.csv", start) if acc.is_main_process else None
        val = CsvLog(out_dir / "val.csv", start) if acc.is_main_process else None

        bar = tqdm(total=total, initial=start, desc=cfg.section, mininterval=1.0,
                   disable=not (progress and acc.is_main_process))
        model.train()
        try:
            for step in range(start + 1, total + 1):
                for hook in before_step:  # a function of the step only, so a resumed run repeats it exactly
                    hook(step, total)
                loss, parts, grad_norm, lrs = _train_step(acc, model, optimizer, scheduler, trainable, train_data,
                                                     collate_fn, parts_fn, cfg, step, world, rank, send_to_device,
                                                     groups)
                info = {"step": step, "total": total, "epoch": step * cfg.grad_accum / per_epoch}
                if step % cfg.log_every == 0 or step == total:
                    row = _log_row(acc, step, info["epoch"], lrs, loss, parts, grad_norm)
                    info["row"] = row
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                    if log is not None:
                        log.append(row)
                if eval_fn and (step == total or (cfg.eval_every and step % cfg.eval_every == 0)):
                    info["val"] = _evaluate(eval_fn, model, raw, step)
                    if val is not None and info["val"]:
                        val.append({"step": step, **info["val"]})
                if cfg.save_every and (step % cfg.save_every == 0 or step == total):
                    state = _trainer_state(cfg, step, info["epoch"], total, world)
                    save_checkpoint(acc, raw, optimizer, scheduler, state, out_dir, cfg.keep_last, export_fn)
                bar.update(1)
                for cb in callbacks:
                    cb(step, info)
        finally:
            bar.close()
        final = _save_final(acc, raw, out_dir, cfg, total, export_fn or export_model)
    return TrainResult(out_dir, final, total, start, log.rows if log else [], val.rows if val else [],
                       time.perf_counter() - t0)


def read_fit(out_dir: str | Path) -> TrainResult:
    """The :class:`TrainResult` of a finished run, read back from its folder: ``loss.csv`` and ``val.csv``
    rows (numbers), ``final/`` and the last logged step. ``seconds`` is NaN: wall times live in the timing
    log (:mod:`d2lib.core.timing`), not in the run's folder. A folder without ``final/`` is an error naming it
    (the run did not finish)."""
    out_dir = Path(out_dir)
    final = out_dir / "final"
    if not final.is_dir():
        raise FileNotFoundError(f"{final}: missing — the run in {out_dir} has not finished (train it first)")
    rows = {name: [{k: float(v) for k, v in r.items()} for r in read_log_rows(out_dir / name)]
            if (out_dir / name).is_file() else [] for name in ("loss.csv", "val.csv")}
    history = rows["loss.csv"]
    steps = int(history[-1]["step"]) if history else 0
    return TrainResult(out_dir, final, steps, 0, history, rows["val.csv"], float("nan"))


def _train_step(acc, model, optimizer, scheduler, trainable, data, collate_fn, parts_fn, cfg, step,
                world, rank, send_to_device, groups=None):
    """One optimizer step = ``grad_accum`` micro-batches; returns the step's mean loss and parts
    (local to this process, detached) and the gradient norm before clipping."""
    loss_sum, parts_sum, grad_norm, lrs = 0.0, {}, None, []
    for k in range(cfg.grad_accum):
        micro = (step - 1) * cfg.grad_accum + k
        idx = batch_indices(len(data), cfg.seed, micro, cfg.batch_size, world, rank, groups)
        batch = send_to_device(collate_fn([data[i] for i in idx]), acc.device)
        with acc.accumulate(model):
            out = model(**batch)
            loss = loss_of(out)
            acc.backward(loss)
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(trainable, cfg.grad_clip or float("inf"))
                lrs = [(g.get("name", str(i)), g["lr"]) for i, g in enumerate(optimizer.param_groups)]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        loss_sum = loss_sum + loss.detach().float() / cfg.grad_accum
        for name, v in parts_fn(out).items():
            parts_sum[name] = parts_sum.get(name, 0.0) + v.detach().float() / cfg.grad_accum
    return loss_sum, parts_sum, grad_norm, lrs


def _log_row(acc, step, epoch, lrs, loss, parts, grad_norm) -> dict:
    """A loss.csv row; loss and parts are averaged over processes (a collective: every process
    calls this on the same steps). No throughput column: loss.csv is a DVC output, so it holds only
    what the same code, params and data reproduce bit for bit (:attr:`TrainResult.steps_per_s`)."""
    names = list(parts)  # the model's order; the same on every process
    values = [loss, *(parts[k] for k in names)]
    vec = torch.stack([torch.as_tensor(x, dtype=torch.float32, device=acc.device) for x in values])
    vec = acc.reduce(vec, reduction="mean").tolist()
    row = {"step": step, "epoch": round(epoch, 6)}
    row["lr"] = lrs[0][1] if lrs else float("nan")  # the lr this step's update used (first group)
    if len(lrs) > 1:
        row.update({f"lr_{name}": lr for name, lr in lrs})
    row.update({"loss": vec[0], **dict(zip(names, vec[1:]))})
    if not math.isfinite(row["loss"]):
        raise FloatingPointError(f"loss is {row['loss']} at step {step}")
    if grad_norm is not None:
        row["grad_norm"] = float(grad_norm)
    return row


def _evaluate(eval_fn, model, raw, step) -> dict:
    """Run ``eval_fn`` in eval mode without touching the training RNG streams (so ``eval_every``
    never changes the trained weights)."""
    state = rng_state()
    model.eval()
    try:
        with torch.no_grad():
            metrics = {k: float(v) for k, v in (eval_fn(raw, step) or {}).items()}
    finally:
        model.train()
        set_rng_state(state)
    return metrics


def _save_final(acc, raw, out_dir: Path, cfg: TrainConfig, total: int, export_fn) -> Path:
    """``out_dir/final``: the trained model in HF format (what the next stage loads)."""
    final = out_dir / "final"
    acc.wait_for_everyone()
    if acc.is_main_process:
        with io.atomic_dir(final) as tmp:
            export_fn(raw, tmp)
            io.write_json(tmp / "training.json", {"section": cfg.section, "steps": total,
                                                  "config": config.to_dict(cfg)}, indent=1)
    acc.wait_for_everyone()
    return final


# ============================================================================ self-test


@dataclass
class ToyOutput:
    loss: torch.Tensor
    parts: dict


class ToyModel(nn.Module):
    """A 2-layer MLP regressor whose output has a total ``loss`` and two components (dropout
    makes training consume the torch RNG, which a resume must restore)."""

    def __init__(self, d_in: int = 8, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x, y):
        pred = self.body(x).squeeze(-1)
        mse, l1 = ((pred - y) ** 2).mean(), (pred - y).abs().mean()
        return ToyOutput(loss=mse + 0.1 * l1, parts={"mse": mse, "l1": l1})


def toy_data(n: int = 64, d_in: int = 8, seed: int = 0) -> list[dict]:
    """``n`` examples ``{x, y}`` of a fixed random nonlinear function."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.sin(x @ torch.randn(d_in, generator=g))
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the state dict's bytes, in key order — equal digests ⇔ identical weights."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def toy_config(**kw) -> TrainConfig:
    base = dict(seed=0, steps=8, batch_size=4, lr=0.05, warmup_ratio=0.1, log_every=1, save_every=2,
                keep_last=2, num_threads=1, head_modules=())
    return TrainConfig(**{**base, **kw})


def selftest(out: str | Path, die_at: int | None = None, **kw) -> dict:
    """Train :class:`ToyModel` with :func:`toy_config` (``kw`` overrides); each process writes
    ``out/rank<r>.json`` with its weight digest and the logged losses. ``die_at``: SIGKILL this
    process after that step (to test crash recovery)."""
    import signal

    torch.manual_seed(0)
    model = ToyModel()
    cbs = [lambda step, info: os.kill(os.getpid(), signal.SIGKILL) if step == die_at else None]
    res = fit(model, toy_data(), toy_config(**kw), out, callbacks=cbs, progress=False)
    from accelerate import PartialState

    st = PartialState()
    report = {"rank": st.process_index, "world": st.num_processes, "digest": weights_digest(model),
              "loss": [r["loss"] for r in res.history], "start_step": res.start_step}
    io.write_json(Path(out, f"rank{st.process_index}.json"), report)
    return report


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m d2lib.training.train", description=__doc__.split("\n")[0])
    ap.add_argument("--selftest", metavar="OUT", required=True, help="train a toy model into OUT")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--die-at", type=int, default=None, help="SIGKILL itself after this step")
    a = ap.parse_args(argv)
    r = selftest(a.selftest, die_at=a.die_at, steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum)
    print(json.dumps({k: r[k] for k in ("rank", "world", "digest", "start_step")}))


if __name__ == "__main__":
    main()
