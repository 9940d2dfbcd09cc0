"""A model version as people ship models: the adapter, or the base with the adapter merged, with a model card.

    VersionCard.from_read(answer)                 the card's facts, from reads.version_card
    model_card(card) -> str                       README.md: base model (by hub id), face and data span,
                                                  lineage, metrics (val loss, copy rate, audience score)
    write_export(url, out_dir, card, ...)         the folder: adapter + card, or merged weights + tokenizer + card
    push_to_hub(out_dir, repo_id) -> str          uploads the folder with huggingface_hub

A merged export loads with plain `AutoModelForCausalLM.from_pretrained(out_dir)` and
`AutoTokenizer.from_pretrained(out_dir)`: no peft, no Crowdtune. An adapter export loads with
`PeftModel.from_pretrained(base, out_dir)`; its adapter_config names the base by hub id when there is one.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from crowdtune.training.models import DEFAULT_MODEL_CACHE, PACKAGED_MODELS, VERSION_FILE, load_version

# the figures a card leads with: (metric name, what a reader calls it)
HEADLINE_METRICS = [("val_loss", "validation loss"), ("copy_rate", "copy rate (share of samples copying a post)"),
                    ("score_mean", "audience score (mean score of the posts it learnt from)")]


@dataclass
class VersionCard:
    """What a model card says: the version, where its base comes from, what it learnt from and how it did."""

    version_id: str
    base_model: str                    # as recorded: a hub id, a packaged name or a local folder
    face_id: str | None = None
    data_span: list[str] | None = None  # [first, last] created_at of the face's imported posts
    posts: int = 0
    lineage: list[dict] = field(default_factory=list)  # {"version_id", "note", "created_at"}, newest first
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_read(cls, answer: dict) -> VersionCard:
        """From reads.version_card's answer (a dict that travelled as JSON)."""
        version = answer["version"]
        return cls(version_id=version["version_id"], base_model=version["base_model"], face_id=answer.get("face_id"),
                   data_span=answer.get("data_span"), posts=int(answer.get("posts") or 0),
                   lineage=[{k: row.get(k) for k in ("version_id", "note", "created_at")} for row in answer["lineage"]],
                   metrics=dict(version.get("metrics") or {}))

    @property
    def base_hub_id(self) -> str | None:
        """The base model's hub id: a packaged model's, the recorded id itself, or None for a local folder."""
        if self.base_model in PACKAGED_MODELS:
            return PACKAGED_MODELS[self.base_model].hub_id
        looks_local = self.base_model.startswith(("/", ".", "~")) or Path(self.base_model).expanduser().exists()
        return None if looks_local else self.base_model


def _shown(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(card: VersionCard, *, merged: bool) -> str:
    """The README.md of an export: YAML front matter the hub reads, then the version in words and tables."""
    hub_id = card.base_hub_id
    base_line = f"[`{hub_id}`](https://huggingface.co/{hub_id})" if hub_id else \
        f"a local model (`{Path(card.base_model).name}`; not on a hub)"
    front = ["---", "library_name: transformers" if merged else "library_name: peft",
             *([f"base_model: {hub_id}"] if hub_id else []), "pipeline_tag: text-generation",
             "tags:", "- crowdtune", *([] if merged else ["- lora"]), "---", ""]
    span = (f"{card.posts:,} imported posts of the face, from {card.data_span[0]} to {card.data_span[1]}"
            if card.data_span else "the face's posts (their span is not recorded)")
    lines = [
        f"# {card.version_id}",
        "",
        f"A causal language model fine-tuned with Crowdtune to write posts for the "
        f"channel `{card.face_id or 'unknown'}`: LoRA on its posts, then (for online versions) reinforcement "
        "learning on its audience's reactions.",
        "",
        f"- **Base model:** {base_line}",
        f"- **Form:** {'the base with the LoRA adapter merged in' if merged else 'a LoRA adapter (PEFT)'}",
        f"- **Face:** `{card.face_id or 'unknown'}`; **data:** {span}",
        "",
        "## Lineage",
        "",
        "Newest first; each version was trained from the one below it.",
        "",
        "| version | how it was made | saved |",
        "|---|---|---|",
        *(f"| `{row['version_id']}` | {row.get('note') or ''} | {row.get('created_at') or ''} |"
          for row in card.lineage),
        f"| base model | {hub_id or Path(card.base_model).name} | |",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {label} (`{name}`) | {_shown(card.metrics.get(name))} |" for name, label in HEADLINE_METRICS),
        "",
    ]
    others = sorted(k for k in card.metrics if k not in {name for name, _ in HEADLINE_METRICS})
    if others:
        lines += ["All figures recorded when the version was saved:", "", "| metric | value |", "|---|---|",
                  *(f"| `{k}` | {_shown(card.metrics[k])} |" for k in others), ""]
    usage = (["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
              'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")', "```"] if merged else
             ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
              f'base = AutoModelForCausalLM.from_pretrained("{hub_id or "<the base model>"}")',
              'model = PeftModel.from_pretrained(base, "<this folder or repo>")', "```"])
    return "\n".join([*front, *lines, "## Use", "", *usage, ""])


def write_export(url: str, out_dir: str | Path, card: VersionCard, *, merged: bool = False,
                   cache_dir: str | Path = DEFAULT_MODEL_CACHE) -> Path:
    """Write the version stored at `url` into the local folder `out_dir`, with README.md from `card`.

    merged=False: the adapter folder as stored, its adapter_config naming the base by hub id when there is
    one (instead of the cache folder it was trained from). merged=True: base + adapter merged
    (`merge_and_unload`), saved as safetensors with the tokenizer. Returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if merged:
        model, tokenizer = load_version(url, base_model=card.base_model, cache_dir=cache_dir)
        plain = model.merge_and_unload()
        plain.config._name_or_path = card.base_hub_id or card.version_id  # never a local cache path
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        fs, root = fsspec.core.url_to_fs(url)
        with tempfile.TemporaryDirectory(prefix="crowdtune-export-") as tmp:
            fs.get(root.rstrip("/") + "/", tmp + "/", recursive=True)
            shutil.copytree(tmp, out, dirs_exist_ok=True)
        adapter_config = out / "adapter_config.json"
        config = json.loads(adapter_config.read_text())
        config["base_model_name_or_path"] = card.base_hub_id or Path(card.base_model).name
        adapter_config.write_text(json.dumps(config, indent=2))
        (out / VERSION_FILE).unlink(missing_ok=True)  # Crowdtune's own notes; the card says it all
    (out / "README.md").write_text(model_card(card, merged=merged))
    return out


def push_to_hub(out_dir: str | Path, repo_id: str, *, private: bool = True) -> str:
    """Upload an export folder to the hub repo `repo_id` (created private if missing; the token comes from
    HF_TOKEN or `hf auth login`). Returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(out_dir),
                      commit_message="Crowdtune export")
    return str(repo)
