"""d2lib.vlm.lora: a saved adapter names its base model relative to the project root (adapter_config.json and
README.md are DVC-hashed with the model: an absolute path would make them depend on the checkout's folder)."""
import json

from transformers import Phi3ForCausalLM

from d2lib.vlm.lora import LoraSettings, apply_lora, tiny_phi3


def test_saved_adapter_names_its_base_model_relative_to_the_project(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # stages run from the project root (peft resolves the relative name from there)
    base = tmp_path / "artifacts" / "align" / "final" / "lm"
    tiny_phi3().save_pretrained(base)
    lm = Phi3ForCausalLM.from_pretrained(base)
    assert lm.config._name_or_path == str(base)  # what transformers records: the absolute folder
    peft_lm = apply_lora(lm, LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules=("qkv_proj",)))
    out = tmp_path / "adapter"
    peft_lm.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "artifacts/align/final/lm"
    readme = (out / "README.md").read_text()
    assert "base_model: artifacts/align/final/lm" in readme
    for f in out.iterdir():
        if f.suffix in (".json", ".md"):
            assert str(tmp_path) not in f.read_text(), f.name


def test_a_model_built_in_memory_keeps_no_name(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LIB_ROOT", str(tmp_path))
    peft_lm = apply_lora(tiny_phi3(), LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules=("qkv_proj",)))
    peft_lm.save_pretrained(tmp_path / "adapter")
    assert str(tmp_path) not in (tmp_path / "adapter" / "adapter_config.json").read_text()
