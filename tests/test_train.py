"""d2lib.training.train / d2lib.vlm.lora: config checks, the lr schedules (transformers' where they are the
same bits), LoRA on a tiny Phi-3, exact resume, determinism, loss curves (a partial last row repaired),
atomic checkpoints (a damaged one named and skipped), and a 2-process run that matches a 1-process run."""
import functools
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from d2lib.core import config
from d2lib.training import train
from d2lib.core.config import ConfigError
from d2lib.vlm.lora import (LoraSettings, apply_lora, mark_trainable, prepare_for_lora, tiny_phi3, trainable_summary,
                        validate_lora_targets)
from d2lib.training.train import SFTConfig, ToyModel, fit, toy_config, toy_data, weights_digest

ROOT = Path(__file__).resolve().parents[1]


def _env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _toy_run(out, *, seed_model=0, callbacks=(), resume=True, **kw):
    eval_fn = kw.pop("eval_fn", None)
    torch.manual_seed(seed_model)
    model = ToyModel(dropout=kw.pop("dropout", 0.0))
    res = fit(model, toy_data(), toy_config(**kw), out, callbacks=callbacks, eval_fn=eval_fn, progress=False,
              resume=resume)
    return model, res


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, key", [
    ({"lr": -1e-4}, "sft.lr"),
    ({"lr_lora": 0.0}, "sft.lr_lora"),
    ({"steps": 0}, "sft.steps"),
    ({"steps": None}, "sft.steps"),  # neither steps nor epochs
    ({"epochs": 1.0}, "sft.steps"),  # both
    ({"batch_size": 0}, "sft.batch_size"),
    ({"grad_accum": 0}, "sft.grad_accum"),
    ({"warmup_ratio": 1.5}, "sft.warmup_ratio"),
    ({"grad_clip": -1.0}, "sft.grad_clip"),
    ({"lora": {"r": 0}}, "sft.lora.r"),
    ({"lora": {"dropout": 1.0}}, "sft.lora.dropout"),
    ({"lora": {"target_modules": []}}, "sft.lora.target_modules"),
    ({"schedule": "step"}, "sft.schedule"),
    ({"lora": {"rank": 4}}, "sft.lora.rank"),  # unknown key
])
def test_config_range_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.from_dict(SFTConfig, override, "sft")


def test_config_sections_and_defaults(tmp_path):
    assert config.section_class("sft") is SFTConfig and config.section_class("align") is train.AlignConfig
    sft = config.from_dict(SFTConfig, {"steps": None, "epochs": 1, "lora": {"r": 128, "alpha": 256}}, "sft")
    assert sft.lora.scale == 2.0 and sft.lora.target_modules == ("qkv_proj", "o_proj")
    assert sft.warmup_ratio == 0.03 and sft.weight_decay == 0.0 and sft.schedule == "cosine"
    assert not train.AlignConfig().lora.enabled
    with pytest.raises(ConfigError, match=r"align\.batch_size"):
        train.AlignConfig(batch_size=-2)
    assert train.total_steps(sft, n=100, world=1) == 12  # 1 epoch = 100 // 8 micro-batches
    assert train.total_steps(sft, n=100, world=2) == 6


def _bits(x: float) -> bytes:
    return struct.pack("<d", float(x))


def _schedules_in_params():
    """(section, profile, cfg, total) of every training schedule params.yaml runs: the align/sft/fpo
    sections in every profile, at their own length and at the ablation's and peers' lengths."""
    raw = config.read_yaml(config.paths.params_file())
    out = []
    for profile in ["default", *raw.get("profiles", {})]:
        cfgs = config.load_all(profile=profile)
        abl, peers = cfgs["ablation"], cfgs["peers"]
        lengths = {"align": [cfgs["align"].steps], "sft": [cfgs["sft"].steps, abl.sft_steps, peers.sft_steps],
                   "fpo": [cfgs["fpo"].steps, abl.fpo_steps]}
        out += [(name, profile, cfgs[name], total) for name, totals in lengths.items() for total in set(totals)]
    return out


def test_transformers_schedules_equal_lr_factor_bit_for_bit():
    """make_scheduler uses transformers' schedulers for cosine and constant: their multipliers must be
    lr_factor's to the last bit at every step of every schedule params.yaml runs, and of a sweep."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    runs = _schedules_in_params()
    assert {c.schedule for _, _, c, _ in runs} == {"cosine"} and {c.min_lr_ratio for _, _, c, _ in runs} >= {0.0, 0.1}
    sweep = [(None, None, toy_config(steps=total, warmup_ratio=r, schedule=sched, min_lr_ratio=m), total)
             for total in (1, 2, 3, 7, 40, 97) for r in (0.0, 0.03, 0.25) for m in (0.0, 0.1, 1 / 3)
             for sched in ("cosine", "constant")]
    for section, profile, cfg, total in runs + sweep:
        warmup = math.ceil(cfg.warmup_ratio * total)
        sched = train.make_scheduler(opt, cfg, total)
        assert isinstance(sched.lr_lambdas[0], functools.partial)
        assert sched.lr_lambdas[0].func.__module__ == "transformers.optimization"  # not our own lr_factor
        for step in range(total + 1):
            ours = train.lr_factor(step, warmup, total, cfg.schedule, cfg.min_lr_ratio)
            assert _bits(sched.lr_lambdas[0](step)) == _bits(ours), (section, profile, total, step)


def test_linear_schedule_keeps_lr_factor():
    """transformers' linear decay rounds differently (and has no floor): ``linear`` stays on lr_factor."""
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = toy_config(steps=40, schedule="linear", warmup_ratio=0.1, min_lr_ratio=0.2)
    sched = train.make_scheduler(opt, cfg, 40)
    assert sched.lr_lambdas[0].func is train.lr_factor
    assert [sched.lr_lambdas[0](s) for s in (0, 2, 4, 22, 40)] == pytest.approx([0.0, 0.5, 1.0, 0.6, 0.2])
    ref = get_linear_schedule_with_warmup(opt, 4, 40).lr_lambdas[0]
    steps = range(41)
    assert all(ref(s) == pytest.approx(train.lr_factor(s, 4, 40, "linear"), abs=1e-15) for s in steps)
    assert any(_bits(ref(s)) != _bits(train.lr_factor(s, 4, 40, "linear")) for s in steps)  # not the same bits


def test_data_order_shards_and_epochs():
    n, B, W = 23, 3, 2
    single = [train.batch_indices(n, 7, m, B * W) for m in range(3)]
    for m in range(3):
        ranks = [train.batch_indices(n, 7, m, B, W, r) for r in range(W)]
        assert sum(ranks, []) == single[m]  # W processes see what one process with W·B sees
    epoch0 = sum((train.batch_indices(n, 7, m, B * W) for m in range(3)), [])
    assert len(set(epoch0)) == 18  # 23 // 6 = 3 micro-batches, no repeats inside an epoch
    assert train.batch_indices(n, 7, 3, B * W) != single[0]  # epoch 1 is reshuffled


def test_grouped_data_order_keeps_groups_together():
    """groups (e.g. the queries of each video): every example once per epoch, each group's examples
    back to back, group order and within-group order reshuffled per epoch; bad partitions fail."""
    sizes = [1, 4, 2, 3, 5, 1, 4]
    groups, start = [], 0
    for k in sizes:
        groups.append(tuple(range(start, start + k)))
        start += k
    groups = train.check_groups(groups, start)
    order = train.epoch_permutation(start, 3, 0, groups).tolist()
    assert sorted(order) == list(range(start))
    owner = {i: g for g, members in enumerate(groups) for i in members}
    runs = [owner[i] for i in order]
    assert len([g for j, g in enumerate(runs) if j == 0 or g != runs[j - 1]]) == len(groups)  # contiguous
    assert order != train.epoch_permutation(start, 3, 1, groups).tolist()
    assert train.batch_indices(start, 3, 0, 4, groups=groups) == order[:4]
    with pytest.raises(ValueError, match="partition"):
        train.check_groups([(0, 1), (1, 2)], 3)
    with pytest.raises(ValueError, match="partition"):
        train.check_groups([(0, 1)], 3)


# ----------------------------------------------------------------------------- LoRA


def test_unknown_lora_target_rejected_before_training():
    lm = tiny_phi3()
    validate_lora_targets(lm, ["qkv_proj", "o_proj"])
    with pytest.raises(ConfigError, match=r"sft\.lora\.target_modules.*'q_proj'.*qkv_proj"):
        validate_lora_targets(lm, ["qkv_proj", "q_proj"])  # Llama name; Phi-3 fuses q/k/v
    with pytest.raises(ConfigError, match=r"sft\.lora\.target_modules"):
        apply_lora(lm, LoraSettings(target_modules=("qkv_porj",)))
    assert not any("lora_" in n for n, _ in lm.named_parameters())  # nothing was wrapped
    with pytest.raises(ConfigError, match=r"sft\.train_modules"):
        mark_trainable(lm, ["evi_head"])


class _Grounded(torch.nn.Module):
    """A D²VLM-shaped wrapper: a peft LM inside plus a head outside it."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.frm_head = lm, torch.nn.Linear(64, 8)

    def forward(self, input_ids, labels):
        out = self.lm(input_ids=input_ids, labels=labels, output_hidden_states=True)
        aux = self.frm_head(out.hidden_states[-2]).pow(2).mean()
        return {"loss": out.loss + 0.1 * aux, "lm_loss": out.loss, "head_loss": aux}


class _GroundedHF(_Grounded):
    """Like D2VLM: has save_pretrained, which refuses a peft-wrapped LM (merge first)."""

    def save_pretrained(self, path):
        raise ValueError("merge the LoRA adapter first")


def _lora_model(cls=_Grounded):
    torch.manual_seed(0)
    model = cls(tiny_phi3(hidden=64, layers=2, vocab=128))
    return prepare_for_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1), ["embed_tokens", "lm_head", "frm_head"])


def test_lora_on_tiny_phi3_trains_adapters_and_marked_modules(tmp_path):
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        logits0 = tiny_phi3(hidden=64, layers=2, vocab=128)(input_ids=ids).logits
    with pytest.raises(ConfigError, match=r"sft\.head_modules.*'evi_head'"):
        prepare_for_lora(_Grounded(tiny_phi3()), LoraSettings(), ["lm_head", "evi_head"])
    model = _lora_model()
    lm = model.lm  # now a PeftModel: embed_tokens/lm_head via modules_to_save, frm_head via requires_grad
    assert mark_trainable(model, ["frm_head"]) == ["frm_head.weight", "frm_head.bias"]

    s = trainable_summary(model)
    assert s["lora"] == 2 * (4 * 64 + 3 * 64 * 4 + 4 * 64 + 64 * 4)  # qkv_proj + o_proj, 2 layers
    assert s["saved"] == 2 * 128 * 64 and s["other"] == 64 * 8 + 8
    assert s["trainable"] == s["lora"] + s["saved"] + s["other"] == lm.get_nb_trainable_parameters()[0] + 520

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = [{"input_ids": x, "labels": x} for x in torch.randint(3, 128, (16, 12))]
    cfg = SFTConfig(steps=4, batch_size=4, lr=1e-2, lr_lora=1e-2, lr_heads=5e-3, log_every=1, save_every=2,
                    warmup_ratio=0.25, head_modules=("embed_tokens", "lm_head", "frm_head"))
    res = fit(model, data, cfg, tmp_path / "a", progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable  # every trainable tensor moved, no frozen one did
    assert sum(p.numel() for n, p in model.named_parameters() if n in changed) == s["trainable"]
    row = res.history[1]
    assert {"lm_loss", "head_loss", "lr", "lr_lora", "lr_heads"} <= set(row)  # two AdamW groups
    assert row["lr_lora"] / row["lr_heads"] == pytest.approx(2.0)
    # HF-format outputs: the inner PeftModel's adapter (with modules_to_save) + the full model
    assert (res.final_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (res.final_dir / "model.safetensors").is_file()
    # modules_to_save keeps the original: disabling the adapter gives back the base model (FPO reference)
    with torch.no_grad(), lm.disable_adapter():
        assert torch.allclose(lm(input_ids=ids).logits, logits0, atol=1e-6)

    def stop_at_3(step, info):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # interrupted LoRA run, resumed in a rebuilt model
        fit(_lora_model(_GroundedHF), data, cfg, tmp_path / "b", callbacks=[stop_at_3], progress=False)
    assert {p.name for p in (tmp_path / "b" / "checkpoint-2").iterdir()} >= {"adapter", "trainable.safetensors"}
    resumed = _lora_model(_GroundedHF)
    with torch.no_grad():  # the checkpoint must overwrite every trainable tensor
        for p in resumed.parameters():
            p.add_(1.0) if p.requires_grad else None
    assert fit(resumed, data, cfg, tmp_path / "b", progress=False).start_step == 2
    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    final = {p.name for p in (tmp_path / "b" / "final").iterdir()}
    assert final == {"adapter", "trainable.safetensors", "training.json"}  # save_pretrained not called


# ----------------------------------------------------------------------------- the loop


def test_determinism_and_loss_csv(tmp_path):
    m1, r1 = _toy_run(tmp_path / "a", steps=6, dropout=0.1)
    m2, r2 = _toy_run(tmp_path / "b", steps=6, dropout=0.1)
    m3, _ = _toy_run(tmp_path / "c", steps=6, dropout=0.1, seed=1)
    assert weights_digest(m1) == weights_digest(m2) != weights_digest(m3)
    lines = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert lines[0].split(",")[:6] == ["step", "epoch", "lr", "loss", "mse", "l1"]
    assert len(lines) == 1 + 6 and r1.history == r2.history
    # loss.csv is a DVC output: no wall-clock column, the same bytes from the same seed
    assert (tmp_path / "a" / "loss.csv").read_bytes() == (tmp_path / "b" / "loss.csv").read_bytes()
    assert "steps_per_s" not in lines[0] and r1.steps_per_s > 0
    assert r1.history[0]["lr"] == 0.0  # warm-up starts from 0, as transformers' schedule does
    assert (tmp_path / "a" / "final" / "model.safetensors").is_file()


def test_resume_after_interrupt_is_exact(tmp_path):
    kw = dict(steps=12, grad_accum=2, save_every=3, dropout=0.1)  # 24 micro-batches: crosses an epoch
    ref, ref_res = _toy_run(tmp_path / "ref", **kw)

    def stop_at_8(step, info):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "run", callbacks=[stop_at_8], **kw)
    assert [s for s, _ in train.list_checkpoints(tmp_path / "run")] == [3, 6]
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["micro_batches"] == 12 and state["epoch"] == 0.75
    # a fresh process would rebuild the model from its seed; a different init must not matter
    model, res = _toy_run(tmp_path / "run", seed_model=123, **kw)
    assert res.start_step == 6
    assert weights_digest(model) == weights_digest(ref)
    for key in ("step", "lr", "loss", "mse", "l1", "grad_norm"):  # loss.csv: old rows kept, new appended
        assert [r[key] for r in res.history] == [r[key] for r in ref_res.history]
    # an explicit checkpoint: newer ones (another timeline) are dropped, the rerun lands on the same weights
    assert [s for s, _ in train.list_checkpoints(tmp_path / "run")] == [9, 12]
    torch.manual_seed(5)
    model = ToyModel(dropout=0.1)
    res = fit(model, toy_data(), toy_config(steps=12, grad_accum=2, save_every=100), tmp_path / "run",
              resume=tmp_path / "run" / "checkpoint-9", progress=False)
    assert res.start_step == 9 and weights_digest(model) == weights_digest(ref)
    assert [s for s, _ in train.list_checkpoints(tmp_path / "run")] == [9, 12]


def test_eval_does_not_change_training(tmp_path):
    calls = []

    def eval_fn(model, step):
        calls.append(step)
        assert not model.training
        torch.rand(100)  # consumes the RNG that dropout uses
        return {"score": float(step)}

    ref, _ = _toy_run(tmp_path / "a", steps=6, dropout=0.1)
    model, res = _toy_run(tmp_path / "b", steps=6, dropout=0.1, eval_every=4, eval_fn=eval_fn)
    assert calls == [4, 6] and [r["score"] for r in res.val] == [4.0, 6.0]
    assert (tmp_path / "b" / "val.csv").read_text().splitlines()[0] == "step,score"
    assert weights_digest(model) == weights_digest(ref)


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    ref, _ = _toy_run(tmp_path / "ref", steps=8)
    out = tmp_path / "run"
    real_export, calls = train.export_model, []

    def crash_on_second_save(model, folder):  # dies half-way through writing checkpoint-4
        calls.append(folder)
        if len(calls) == 2:
            raise OSError("disk full")
        real_export(model, folder)

    monkeypatch.setattr(train, "export_model", crash_on_second_save)
    with pytest.raises(OSError):
        _toy_run(out, steps=8)
    monkeypatch.setattr(train, "export_model", real_export)
    assert calls[1].name == "checkpoint-4.tmp"  # it was writing into the temporary folder…
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # …which the error removed
    # what a kill -9 leaves behind: temporary / moved-aside folders (even with a marker), a folder without one
    for leftover in ("checkpoint-4.tmp", "checkpoint-3.old", "final.tmp", "final.old"):
        shutil.copytree(out / "checkpoint-2", out / leftover)
    (out / "checkpoint-7").mkdir()  # e.g. a half-copied folder: no marker → never resumed from
    assert train.latest_checkpoint(out).name == "checkpoint-2"
    assert sorted(p.name for p in train.clean_incomplete(out)) == [
        "checkpoint-3.old", "checkpoint-4.tmp", "checkpoint-7", "final.old", "final.tmp"]

    model, res = _toy_run(out, steps=8)
    assert res.start_step == 2 and weights_digest(model) == weights_digest(ref)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]  # keep_last=2
    files = {p.name for p in (out / "checkpoint-8").iterdir()}
    assert files == {"COMPLETE", "model.safetensors", "trainable.safetensors", "optimizer.pt", "scheduler.pt",
                     "rng_state_0.pt", "trainer_state.json"}
    # the marker: the step, then each file's sha256 in sha256sum's format
    marker = (out / "checkpoint-8" / train.MARKER).read_text().splitlines()
    assert marker[0] == "step 8" and len(marker) == len(files)
    for line in marker[1:]:
        digest, name = line.split("  ")
        assert hashlib.sha256((out / "checkpoint-8" / name).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-6", "checkpoint-8", "final", "loss.csv", "val.csv"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut in half":
        path.write_bytes(data[:len(data) // 2])
    else:  # same length, a block of zeros in the middle (a lost page after a power cut)
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(min(64, len(data) - mid)) + data[mid + 64:])


@pytest.mark.parametrize("name, how", [("trainable.safetensors", "cut in half"), ("optimizer.pt", "zeroed"),
                                       ("model.safetensors", "zeroed"), ("trainer_state.json", "cut in half")])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd, name, how):
    kw = dict(steps=8, dropout=0.1)
    ref, ref_res = _toy_run(tmp_path / "ref", **kw)

    def stop_at_7(step, info):
        if step == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _toy_run(out, callbacks=[stop_at_7], **kw)
    bad = out / "checkpoint-6" / name
    _damage(bad, how)
    with pytest.raises(train.CheckpointError, match=re.escape(str(bad))):
        train.verify_checkpoint(out / "checkpoint-6")
    with pytest.raises(train.CheckpointError, match=re.escape(str(bad))):  # an explicit resume does not fall back
        _toy_run(out, resume=out / "checkpoint-6", **kw)
    capfd.readouterr()
    model, res = _toy_run(out, seed_model=9, **kw)
    note = capfd.readouterr().err
    assert "skipped checkpoint checkpoint-6" in note and str(bad) in note and "checkpoint-6.corrupt" in note
    assert res.start_step == 4 and weights_digest(model) == weights_digest(ref)  # exact, from checkpoint-4
    assert [r["loss"] for r in res.history] == [r["loss"] for r in ref_res.history]
    assert (out / "checkpoint-6.corrupt" / name).is_file()  # kept aside for a look, never resumed from
    assert [s for s, _ in train.list_checkpoints(out)] == [6, 8]


def test_unreadable_checkpoint_file_is_named(tmp_path):
    """A checkpoint whose marker records no hashes (written by an older version) is read without a check;
    a file that cannot be read is still an error naming it, before any state is changed."""
    _toy_run(tmp_path / "run", steps=4)
    ckpt = tmp_path / "run" / "checkpoint-4"
    (ckpt / train.MARKER).write_text("step 4\n")
    assert train.verify_checkpoint(ckpt) is False
    _damage(ckpt / "optimizer.pt", "cut in half")
    with pytest.raises(train.CheckpointError, match=re.escape(str(ckpt / "optimizer.pt")) + ".*cannot be read"):
        train.read_checkpoint(ckpt, SimpleNamespace(device=torch.device("cpu"), process_index=0))
    (ckpt / train.MARKER).write_bytes(bytes(7))  # a zeroed marker
    with pytest.raises(train.CheckpointError, match=re.escape(str(ckpt / train.MARKER))):
        train.verify_checkpoint(ckpt)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref = train.selftest(tmp_path / "ref", steps=8)
    cmd = [sys.executable, "-m", "d2lib.training.train", "--selftest", str(tmp_path / "run"), "--steps", "8"]
    killed = subprocess.run(cmd + ["--die-at", "5"], env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "final").exists()
    assert train.latest_checkpoint(tmp_path / "run").name == "checkpoint-4"
    out = train.selftest(tmp_path / "run", steps=8)  # the restart (in this process, to save a start-up)
    assert out["start_step"] == 4 and out["digest"] == ref["digest"]
    assert out["loss"] == ref["loss"]  # loss.csv: rows 1-4 from the killed run, 5-8 from the restart
    assert (tmp_path / "run" / "loss.csv").read_bytes() == (tmp_path / "ref" / "loss.csv").read_bytes()


def _score(model, step):
    return {"score": step / 3, **({"late": 0.5} if step > 4 else {})}  # a new column half-way


def test_partial_last_row_is_repaired_on_resume(tmp_path, capfd):
    """A crash while a row was being appended leaves it cut short: resume drops it (with a note), keeps
    every complete row, and the logs end up byte for byte those of an uninterrupted run."""
    kw = dict(steps=8, dropout=0.1, eval_every=2, eval_fn=_score)
    _toy_run(tmp_path / "ref", **kw)

    def stop_at_6(step, info):
        if step == 6:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _toy_run(out, callbacks=[stop_at_6], **kw)
    with open(out / "loss.csv", "a") as f:
        f.write("7,0.4375,0.0")  # row 7 cut short
    with open(out / "val.csv", "a") as f:
        f.write("8,2.66")
    old = out / "loss.csv.before"
    os.link(out / "loss.csv", old)  # a second name for the same bytes on disk
    before = old.read_bytes()
    _, res = _toy_run(out, **kw)
    err = capfd.readouterr().err
    assert res.start_step == 6
    for name, line in (("loss.csv", 8), ("val.csv", 5)):
        assert f"{out / name}: dropped the partial last row (line {line}" in err
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert old.read_bytes() == before  # loss.csv was replaced by a new file, not rewritten in place
    assert [r["step"] for r in res.history] == list(range(1, 9))


def test_a_bad_row_before_the_last_is_an_error(tmp_path):
    _toy_run(tmp_path / "run", steps=4)
    log = tmp_path / "run" / "loss.csv"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = "2,oops\r\n"
    log.write_text("".join(lines))
    with pytest.raises(ValueError, match=re.escape(f"{log}:3: not a row of")):
        _toy_run(tmp_path / "run", steps=4)  # resumes from checkpoint-4, reading the log first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    exe = Path(sys.executable).parent / "accelerate"  # the launcher of this venv
    launcher = [str(exe), "launch"] if exe.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    # --multi_gpu, not --cpu: `--cpu --num_processes 2` starts ONE process (it needs mpirun for more);
    # with no CUDA visible, d2lib's Accelerator(cpu=True) then runs the torchrun ranks on gloo.
    cmd = launcher + [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "d2lib.training.train", "--selftest", str(tmp_path / "two"), "--steps", "8", "--batch-size", "2"]
    run = subprocess.run(cmd, env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # both processes hold identical weights

    one = train.selftest(tmp_path / "one", steps=8, batch_size=4)  # same global batch: 2 × 2
    assert ranks[0]["loss"] == pytest.approx(one["loss"], rel=1e-5)
    w2, w1 = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("two", "one"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)
