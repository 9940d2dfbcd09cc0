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



class FakeHub:
    """The Hugging Face Hub's HTTP API as huggingface_hub's HfApi uses it to push a folder: create a repo,
    validate a model card's YAML, ask each file's upload mode (all "regular": content inline, no LFS/Xet),
    commit (ndjson: a header, then one line per file). Files land in `repos[repo_id][path]`."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub = self
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.authorizations: set[str] = set()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.authorizations.add(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    asked = json.loads(body)
                    repo_id = f"{asked['organization']}/{asked['name']}" if asked.get("organization") else asked["name"]
                    if repo_id in hub.repos:
                        return self.answer(409, {"error": "You already created this model repo",
                                                 "url": f"{hub.url}/{repo_id}"})
                    hub.repos[repo_id] = {}
                    # "visibility" from huggingface_hub 1.x on, "private" before
                    hub.private[repo_id] = asked.get("visibility") == "private" or asked.get("private") is True
                    return self.answer(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self.answer(200, {})
                parts = path.split("/")  # /api/models/<ns>/<name>/(preupload|commit)/<revision>
                repo_id = "/".join(parts[3:5])
                if repo_id not in hub.repos:
                    return self.answer(404, {"error": "Repository not found"})
                if parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self.answer(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if parts[5] == "commit":
                    import base64

                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.repos[repo_id][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    oid = f"{len(hub.repos[repo_id]):040x}"
                    return self.answer(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                                             "pullRequestUrl": None})
                return self.answer(404, {"error": f"no route {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # what HF_ENDPOINT sets when the process starts
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_crowdtune_test_token")
    yield hub
    hub.close()


def test_export_with_hub_pushes_the_folder_to_a_private_repo_with_the_users_token(two_versions, tmp_path, fake_hub):
    out = tmp_path / "to-push"
    result = CliRunner().invoke(app, ["export", "v1", "--out", str(out), "--hub", "me/my-channel"])
    assert result.exit_code == 0, result.output
    assert f"Pushed to {fake_hub.url}/me/my-channel." in result.output
    assert fake_hub.private["me/my-channel"] is True
    assert "Bearer hf_crowdtune_test_token" in fake_hub.authorizations
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert fake_hub.repos["me/my-channel"] == local  # every file, byte for byte
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(local)
    again = CliRunner().invoke(app, ["export", "v2", "--out", str(tmp_path / "v2"), "--hub", "me/my-channel"])
    assert again.exit_code == 0, again.output  # an existing repo takes the new export
    assert "`v2`" in fake_hub.repos["me/my-channel"]["README.md"].decode()
