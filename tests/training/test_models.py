"""Loading base models, LoRA wrapping and model versions, on the tiny model (and SmolLM2, slow)."""

from __future__ import annotations

import time

import pytest
import torch
from peft import PeftModel

from crowdtune.training.models import (
    ModelError,
    add_lora,
    linear_module_names,
    load_base_model,
    load_version,
    read_version_info,
    save_version,
)


def test_tiny_model_loads_through_the_generic_loader(tiny_model_dir):
    model, tokenizer = load_base_model(tiny_model_dir)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    ids = tokenizer("Make America great again!", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Make America great again!"


def test_unknown_hub_id_fails_fast_with_a_fix():
    started = time.monotonic()
    with pytest.raises(ModelError) as error:
        load_base_model("no-such-org/no-such-model-xyz")
    assert time.monotonic() - started < 10
    assert "no-such-org/no-such-model-xyz" in error.value.problem
    assert "smollm2-135m" in error.value.fix


def test_missing_folder_and_folder_without_config_are_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_base_model(str(tmp_path / "nope") + "/")
    with pytest.raises(ModelError, match="no config.json"):
        load_base_model(str(tmp_path))


def test_lora_target_that_does_not_exist_lists_the_real_ones(tiny_model_dir):
    model, _ = load_base_model(tiny_model_dir)
    assert linear_module_names(model) == ["c_attn", "c_fc", "c_proj", "lm_head"]
    with pytest.raises(ModelError) as error:
        add_lora(model, target_modules=["q_proj", "c_attn"])
    assert "['q_proj']" in error.value.problem and "c_attn" in error.value.fix


def test_lora_trains_only_adapters(tiny_model_dir):
    model, _ = load_base_model(tiny_model_dir)
    peft_model = add_lora(model, rank=4, target_modules=["c_attn"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("c_attn" in n for n in trainable)


def test_version_round_trips_through_a_remote_fsspec_url_and_plain_peft(tiny_model_dir, tmp_path):
    model, tokenizer = load_base_model(tiny_model_dir)
    peft_model = add_lora(model, rank=4)
    with torch.no_grad():  # make the adapter non-trivial so a round trip is visible
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    ids = torch.tensor([tokenizer("Big news tonight", add_special_tokens=False)["input_ids"]])
    peft_model.eval()
    expected = peft_model(input_ids=ids).logits

    url = "memory://crowdtune-test/versions/v1"
    save_version(peft_model, url, tokenizer=tokenizer, base_model=tiny_model_dir, metadata={"step": 7})
    assert read_version_info(url) == {"base_model": tiny_model_dir, "step": 7}
    loaded, _ = load_version(url)
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)

    # a version is a normal PEFT adapter folder outside Crowdtune
    local = tmp_path / "v1"
    save_version(peft_model, str(local), base_model=tiny_model_dir)
    base, _ = load_base_model(tiny_model_dir)
    plain = PeftModel.from_pretrained(base, str(local)).eval()
    assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)


def test_missing_version_is_a_clear_error():
    with pytest.raises(ModelError, match="No model version"):
        load_version("memory://crowdtune-test/versions/none")


@pytest.mark.slow
def test_smollm2_gguf_converts_once_then_loads_fast(tmp_path):
    started = time.monotonic()
    model, tokenizer = load_base_model("smollm2-135m", cache_dir=tmp_path)
    first = time.monotonic() - started
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) > 100e6
    assert (tmp_path / "smollm2-135m" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".smollm2-135m.tmp-*"))
    started = time.monotonic()
    again, _ = load_base_model("smollm2-135m", cache_dir=tmp_path)
    assert time.monotonic() - started < min(5.0, first / 3)
    ids = torch.tensor([tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
