"""`crowdtune export`: a merged version loads and generates with plain transformers in a fresh process; the
adapter export loads with PEFT; the model card names the base by hub id, the face, the data, the lineage and
the metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from crowdtune.cli import app
from crowdtune.settings import load_settings
from crowdtune.store.writer import apply_write, initialise
from crowdtune.training.export import VersionCard, model_card
from crowdtune.training.models import add_lora, load_base_model, save_version

PROMPT = "Big news tonight"

# run in a fresh interpreter: only transformers, and proof that peft never loaded
LOAD_AND_GENERATE = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tokenizer(sys.argv[2], return_tensors="pt", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids).logits[0, -1]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
print(json.dumps({"peft_loaded": "peft" in sys.modules, "logits": logits.tolist(),
                  "new_tokens": out.shape[1] - ids.shape[1], "text": tokenizer.decode(out[0, ids.shape[1]:])}))
"""


@pytest.fixture
def two_versions(data_dir, tiny_model_dir, fresh_posts):
    """A store with a face, its imported posts, an offline version v1 and its online child v2 (a real LoRA)."""
    settings = load_settings()
    initialise(settings.store_path)
    model, tokenizer = load_base_model(tiny_model_dir)
    policy = add_lora(model, rank=4)
    with torch.no_grad():  # a visible adapter: merged logits must differ from the base's
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    urls = {v: str(data_dir / "artifacts" / "versions" / v) for v in ("v1", "v2")}
    for url in urls.values():
        save_version(policy, url, tokenizer=tokenizer, base_model=tiny_model_dir)
    posts = [{"post_id": f"tweets:{i}", "face_id": "tweets", "origin": "imported", "status": "imported",
              "text": p["text"], "created_at": str(p["created_at"])} for i, p in enumerate(fresh_posts[:20])]
    versions = [
        {"version_id": "v1", "run_id": "offline-1", "parent_version_id": None, "base_model": tiny_model_dir,
         "artifact_url": urls["v1"], "step": 60, "note": "offline completed",
         "metrics": {"val_loss": 3.25, "copy_rate": 0.125}},
        {"version_id": "v2", "run_id": "online-1", "parent_version_id": "v1", "base_model": tiny_model_dir,
         "artifact_url": urls["v2"], "step": 1, "note": "online guided update 1 on 3 posts",
         "metrics": {"score_mean": 41.5, "copy_rate": 0.0, "kl": 0.01}},
    ]
    runs = [{"run_id": "offline-1", "kind": "offline", "face_id": "tweets", "status": "completed"},
            {"run_id": "online-1", "kind": "online", "face_id": "tweets", "status": "running"}]
    apply_write(settings.store_path, "fixture", [
        {"op": "upsert", "table": "faces", "rows": [{"face_id": "tweets", "kind": "dataset", "config": {}}]},
        {"op": "upsert", "table": "posts", "rows": posts},
        {"op": "upsert", "table": "runs", "rows": runs},
        {"op": "upsert", "table": "model_versions", "rows": versions}], 10)
    policy.eval()
    ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = policy(input_ids=ids).logits[0, -1]
    return {"expected": expected, "posts": fresh_posts[:20]}


def test_a_merged_export_loads_and_generates_with_plain_transformers_in_a_fresh_process(
        two_versions, tmp_path, tiny_model_dir):
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", "v2", "--out", str(out), "--merged"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()

    ran = subprocess.run([sys.executable, "-c", LOAD_AND_GENERATE, str(out), PROMPT],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout.strip().splitlines()[-1])
    assert answer["peft_loaded"] is False and answer["new_tokens"] > 0
    # the merged weights compute what base + adapter computed
    assert torch.allclose(torch.tensor(answer["logits"]), two_versions["expected"], atol=1e-4)

    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model:" not in card  # a local base has no hub id
    assert str(tiny_model_dir) not in card  # never a local path
    assert "`v2` | online guided update 1 on 3 posts" in card and "`v1` | offline completed" in card
    assert card.index("`v2`") < card.index("`v1`")  # newest first
    assert "audience score" in card and "| 41.5 |" in card and "| 0 |" in card  # v2's own figures
    dates = sorted(str(p["created_at"])[:10] for p in two_versions["posts"])
    assert "20 imported posts of the face" in card and dates[0] in card and dates[-1] in card
    assert "`tweets`" in card


def test_an_adapter_export_loads_with_peft_and_its_card_leads_with_the_offline_figures(two_versions, tmp_path,
                                                                                      tiny_model_dir):
    out = tmp_path / "adapter"
    result = CliRunner().invoke(app, ["export", "v1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] != tiny_model_dir
    base, tokenizer = load_base_model(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits[0, -1], two_versions["expected"], atol=1e-5)
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "| 3.25 |" in card and "| 0.125 |" in card
    assert "`v2`" not in card  # a parent's card knows nothing of its children

    missing = CliRunner().invoke(app, ["export", "nope", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no model version 'nope'" in missing.output


def test_a_packaged_base_is_named_by_its_hub_id_never_its_cache_folder():
    card = model_card(VersionCard(version_id="v", base_model="smollm2-135m", face_id="tweets",
                                  lineage=[{"version_id": "v", "note": "offline completed"}]), merged=False)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "data/models" not in card
    assert "the face's posts (their span is not recorded)" in card and "| validation loss (`val_loss`) | – |" in card

