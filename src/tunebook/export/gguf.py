"""A llama-architecture transformers folder as a GGUF file for llama.cpp and Ollama (written as llama.cpp's
convert_hf_to_gguf.py writes a LlamaModel), its llama.cpp quantizations, and a GGUF file's metadata read back."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tunebook.errors import ModelNotFoundError, TunebookError, closest
from tunebook.export.runtime import llama_cpp_module, usable_cores
from tunebook.modeling.models import bundled_gguf

GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
ARCHITECTURE = "LlamaForCausalLM"
QUANTIZED_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # llama_cpp names
TOKENIZER_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
)
# For a vocabulary llama.cpp has no name for: GPT-2's split, which byte-level BPE tokenizers mostly use. On the tiny
# model's vocabulary forced to each name, 'gpt-2' tokenized 32 of 32 test strings as transformers does, 'default' 23.
DEFAULT_PRE = "gpt-2"

# Per-layer weights: the transformers module path inside model.layers.N -> llama.cpp's tensor inside blk.N
_BLOCK_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_BLOCK_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
_SKIPPED = re.compile(r".*\.rotary_emb\.inv_freq")  # recomputed by llama.cpp; old checkpoints stored it

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LlamaShape:
    """The hyperparameters of a llama-architecture model that its GGUF file records."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    n_vocab: int
    rope_theta: float
    rope_linear_factor: float | None
    rms_eps: float
    tied: bool


# ---- the model's hyperparameters


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise TunebookError(f"{path} is missing: GGUF export needs a transformers model folder (save_pretrained).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise TunebookError(
            f"{path} is not valid JSON ({error}); save the model again with save_pretrained."
        ) from None


def _rope(config: dict, path: Path) -> tuple[float, float | None]:
    """RoPE base frequency and linear scaling factor (None: unscaled) from either config layout."""
    # transformers 5 writes rope_parameters (theta inside); 4.x wrote rope_theta and rope_scaling beside each other
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict) or any(isinstance(value, dict) for value in params.values()):
        raise TunebookError(f"{path}: rope_parameters {params!r} is not one flat setting; GGUF export cannot map it.")
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind == "linear" and "factor" in params:
        return theta, float(params["factor"])
    raise TunebookError(
        f"{path}: RoPE scaling '{kind}' is not handled by tunebook's GGUF export (only default and linear); "
        "convert this model with llama.cpp's convert_hf_to_gguf.py instead."
    )


def _llama_shape(model_dir: Path) -> _LlamaShape:
    """The hyperparameters in ``model_dir``'s config.json, refused unless llama.cpp's llama architecture runs them."""
    path = model_dir / "config.json"
    config = _read_config(model_dir)
    architectures = config.get("architectures") or []
    if architectures != [ARCHITECTURE]:
        raise TunebookError(
            f"{path}: architectures is {architectures}, and tunebook's GGUF export handles only {ARCHITECTURE} "
            "(Llama, SmolLM2). Convert this model with llama.cpp's convert_hf_to_gguf.py instead."
        )
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if not isinstance(config.get(key), int)]
    if missing:
        raise TunebookError(f"{path} lacks {', '.join(missing)}; save the model again with save_pretrained.")
    unsupported = {
        "hidden_act": config.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(config.get("attention_bias")),
        "mlp_bias": bool(config.get("mlp_bias")),
        "quantization_config": "quantization_config" in config,
    }
    for field, refused in unsupported.items():
        if refused:
            raise TunebookError(
                f"{path}: {field} = {config[field]!r} is not supported by tunebook's GGUF export (it writes unquantized "
                "llama weights with silu and no biases); export a merged, unquantized model."
            )
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope_theta, rope_factor = _rope(config, path)
    return _LlamaShape(
        n_layer=config["num_hidden_layers"],
        n_embd=config["hidden_size"],
        n_ff=config["intermediate_size"],
        n_head=n_head,
        n_head_kv=config.get("num_key_value_heads") or n_head,
        head_dim=head_dim,
        n_ctx=config.get("max_position_embeddings", 2048),
        n_vocab=config["vocab_size"],
        rope_theta=rope_theta,
        rope_linear_factor=rope_factor,
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        tied=bool(config.get("tie_word_embeddings", False)),
    )


def _add_model_metadata(writer: gguf.GGUFWriter, shape: _LlamaShape, name: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(shape.n_layer)
    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.n_embd)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_rope_dimension_count(shape.head_dim)
    if shape.rope_linear_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(shape.rope_linear_factor)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---- the weights


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise TunebookError(
            f"{model_dir} has no *.safetensors weights; save the model with save_pretrained (safetensors is its "
            "default) or merge the adapter first."
        )
    return files


def _gguf_name(hf_name: str, shape: _LlamaShape) -> str | None:
    """llama.cpp's name for a transformers weight; None for one the GGUF file leaves out."""
    if _SKIPPED.fullmatch(hf_name) or (hf_name == "lm_head.weight" and shape.tied):
        return None
    if hf_name.endswith(".weight") and hf_name[: -len(".weight")] in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[hf_name[: -len('.weight')]]}.weight"
    match = _BLOCK_NAME.fullmatch(hf_name)
    if match and match.group(2) in _BLOCK_TENSORS and int(match.group(1)) < shape.n_layer:
        return f"blk.{match.group(1)}.{_BLOCK_TENSORS[match.group(2)]}.weight"
    raise TunebookError(
        f"weight '{hf_name}' is not part of a {ARCHITECTURE} with {shape.n_layer} layers; GGUF export cannot place it."
    )


def _expected_tensors(shape: _LlamaShape) -> list[str]:
    names = ["token_embd.weight"]
    for layer in range(shape.n_layer):
        names += [f"blk.{layer}.{name}.weight" for name in _BLOCK_TENSORS.values()]
    return names + ["output_norm.weight"] + ([] if shape.tied else ["output.weight"])


def _weight_index(model_dir: Path, shape: _LlamaShape) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """Every GGUF tensor, in llama.cpp's order: the file and transformers name it comes from, and its shape."""
    found: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    for file in _weight_files(model_dir):
        with safe_open(file, framework="pt") as weights:
            for hf_name in weights.keys():
                name = _gguf_name(hf_name, shape)
                if name is not None:
                    found[name] = (file, hf_name, tuple(weights.get_slice(hf_name).get_shape()))
    missing = [name for name in _expected_tensors(shape) if name not in found]
    if missing:
        raise TunebookError(
            f"{model_dir}'s weights lack {len(missing)} tensor(s) of a {shape.n_layer}-layer llama model "
            f"(first: {missing[0]}); the folder is incomplete or config.json does not describe it."
        )
    embedding = found["token_embd.weight"][2]
    if embedding[0] != shape.n_vocab:
        raise TunebookError(
            f"{model_dir}: the embedding has {embedding[0]} rows but config.json says vocab_size = {shape.n_vocab}."
        )
    return {name: found[name] for name in _expected_tensors(shape)}


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q/k projection from transformers' rotate-half RoPE layout to llama.cpp's interleaved one."""
    # as convert_hf_to_gguf's LlamaModel.permute: within each head, the two halves are interleaved pairwise
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _gguf_array(name: str, weights: torch.Tensor, shape: _LlamaShape) -> np.ndarray:
    """A weight as the GGUF file stores it: q/k permuted, matrices float16, vectors (norms) float32."""
    weights = weights.to(torch.float32)
    if name.endswith(".attn_q.weight"):
        weights = _permute(weights, shape.n_head)
    elif name.endswith(".attn_k.weight"):
        weights = _permute(weights, shape.n_head_kv)
    array = weights.numpy()
    if array.ndim == 1:
        return np.ascontiguousarray(array, dtype=np.float32)
    half = np.ascontiguousarray(array, dtype=np.float16)
    if not np.isfinite(half).all() and np.isfinite(array).all():
        raise TunebookError(f"{name} has weights beyond float16's range (65504); it cannot be written as f16.")
    return half


def _stored_dtype(dims: tuple[int, ...]) -> np.dtype:
    return np.dtype(np.float32) if len(dims) == 1 else np.dtype(np.float16)


def _gguf_arrays(index: dict[str, tuple[Path, str, tuple[int, ...]]], shape: _LlamaShape) -> Iterator[np.ndarray]:
    """The tensors in ``index``'s order, one at a time (each weight file opened once, memory-mapped)."""
    with contextlib.ExitStack() as stack:
        handles = {}
        for name, (file, hf_name, _) in index.items():
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(file, framework="pt"))
            yield _gguf_array(name, handles[file].get_tensor(hf_name), shape)


# ---- the tokenizer


def _load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise TunebookError(
            f"{path} is missing: GGUF export reads the fast tokenizer's file; save the tokenizer with save_pretrained."
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise TunebookError(
            f"{path}: the tokenizer is {model.get('type')} with a {decoder.get('type')} decoder; tunebook's GGUF export "
            "writes only byte-level BPE (gpt2-style, as SmolLM2's) tokenizers."
        )
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise TunebookError(f"cannot load the tokenizer in {model_dir}: {error}") from None


def _looks_special(token: str) -> bool:
    """An added token that llama.cpp should treat as control even where the tokenizer does not mark it special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _token_list(tokenizer: PreTrainedTokenizerBase, n_vocab: int) -> tuple[list[str], list[int]]:
    """Every token in id order (added ones included, unused ids padded) and its llama.cpp token type."""
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise TunebookError(
            f"the tokenizer has token id {max(vocab.values())} but config.json says vocab_size = {n_vocab}; "
            "resize the model's embeddings to the tokenizer (model.resize_token_embeddings) before exporting."
        )
    by_id = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(n_vocab):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if token_id in added:
            if not added[token_id].normalized:
                # llama.cpp takes added tokens as already normalized, as convert_hf_to_gguf writes them
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added[token_id].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, [int(kind) for kind in types]


def _bpe_merges(model_dir: Path) -> list[str]:
    """The BPE merges as GGUF stores them ('a b', a space inside a part written as U+0120)."""
    merges = gguf.SpecialVocab(model_dir, load_merges=True).merges
    if not merges:
        raise TunebookError(f"{model_dir / 'tokenizer.json'} has no BPE merges; save the tokenizer again.")
    return list(merges)


@functools.cache
def _bundled_tokenizer() -> tuple[tuple[str, ...], tuple[str, ...], str] | None:
    """The bundled base model's tokens, merges and pre-tokenizer name (None when it is not installed)."""
    try:
        path = bundled_gguf()
    except ModelNotFoundError:
        return None
    fields = gguf.GGUFReader(path).fields
    return (
        tuple(fields["tokenizer.ggml.tokens"].contents()),
        tuple(fields["tokenizer.ggml.merges"].contents()),
        fields["tokenizer.ggml.pre"].contents(),
    )


def _pre_tokenizer(tokens: list[str], merges: list[str]) -> str:
    """llama.cpp's pre-tokenizer name for this vocabulary: the bundled model's where tokens and merges are its own,
    else GPT-2's."""
    reference = _bundled_tokenizer()
    if reference is not None and tuple(tokens) == reference[0] and tuple(merges) == reference[1]:
        return reference[2]
    return DEFAULT_PRE


def _special_ids(tokenizer: PreTrainedTokenizerBase, config: dict, n_vocab: int) -> dict[str, int]:
    """BOS, EOS, unknown and padding ids: the tokenizer's, else config.json's (ids outside the vocabulary left out)."""
    ids = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is None:
            token_id = config.get(f"{kind}_token_id")
        if isinstance(token_id, list):  # config.json may list several EOS ids; the first is the tokenizer's
            token_id = token_id[0] if token_id else None
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            ids[kind] = token_id
    return ids


def _adds(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether the tokenizer puts BOS in front and EOS after a text when asked for its special tokens."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and full[:1] == [bos] and full[1 : 1 + len(bare)] == bare
    adds_eos = eos is not None and full[-1:] == [eos] and full[-1 - len(bare) : -1] == bare
    return adds_bos, adds_eos


def _adds_space_prefix(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer encodes a text as if it began with a space."""
    return tokenizer.encode("Hello", add_special_tokens=False) == tokenizer.encode(" Hello", add_special_tokens=False)


def _chat_template(tokenizer: PreTrainedTokenizerBase, model_dir: Path) -> str | list[dict[str, str]]:
    template = tokenizer.chat_template
    if not template:
        raise TunebookError(
            f"the tokenizer in {model_dir} has no chat template, so the GGUF file could not render prompts the way "
            "the model was trained; save it as chat_template.jinja in the folder."
        )
    if isinstance(template, dict):  # named templates: GGUF keeps 'default' as the template and the rest by name
        return [{"name": name, "template": text} for name, text in template.items()]
    return template


def _add_tokenizer_metadata(writer: gguf.GGUFWriter, model_dir: Path, shape: _LlamaShape) -> None:
    tokenizer = _load_tokenizer(model_dir)
    tokens, types = _token_list(tokenizer, shape.n_vocab)
    merges = _bpe_merges(model_dir)
    adds_bos, adds_eos = _adds(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokens, merges))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = _special_ids(tokenizer, _read_config(model_dir), shape.n_vocab)
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id)):
        if kind in special:
            add(special[kind])
    if "unk" in special:
        writer.add_unk_token_id(special["unk"])
    if "pad" in special:
        writer.add_pad_token_id(special["pad"])
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    writer.add_add_space_prefix(_adds_space_prefix(tokenizer))
    writer.add_chat_template(_chat_template(tokenizer, model_dir))


# ---- llama.cpp's log


GGML_LOG_ERROR = 4  # ggml's log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line


@contextlib.contextmanager
def _llama_log(llama_cpp) -> Iterator[list[tuple[int, str]]]:
    """llama.cpp's log lines while the block runs, kept instead of printed (the quantizer prints one per tensor)."""
    lines: list[tuple[int, str]] = []

    def keep(level: int, text: bytes, _: object) -> None:
        line = text.decode("utf-8", errors="replace").rstrip("\n")
        if level == 5 and lines:
            lines[-1] = (lines[-1][0], lines[-1][1] + line)
        elif line:
            lines.append((level, line))

    callback = llama_cpp.llama_log_callback(keep)
    previous, previous_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
    llama_cpp.llama_log_set(callback, None)
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(previous, previous_data)


# ---- the public API


def write_gguf(model_dir: str | Path, out: str | Path, *, name: str = "") -> Path:
    """The llama-architecture model in ``model_dir`` as an f16 GGUF file at ``out`` (tokenizer, chat template, BOS/EOS
    carried).

    ``tokenizer.ggml.pre`` names the regex llama.cpp splits text with before BPE. It is the bundled base model's
    ('smollm') where the folder's vocabulary and merges are that model's, else GPT-2's, under which llama.cpp may
    tokenize some texts differently from transformers where the tokenizer splits otherwise (the parity check finds
    that and names it).
    """
    model_dir, out = Path(model_dir), Path(out)
    shape = _llama_shape(model_dir)
    index = _weight_index(model_dir, shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    written = False
    try:
        _add_model_metadata(writer, shape, name or model_dir.name)
        _add_tokenizer_metadata(writer, model_dir, shape)
        for tensor, (_, _, dims) in index.items():
            dtype = _stored_dtype(dims)
            writer.add_tensor_info(tensor, dims, dtype, int(np.prod(dims)) * dtype.itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array in _gguf_arrays(index, shape):  # one tensor in memory at a time
            writer.write_tensor_data(array)
        written = True
    finally:
        writer.close()
        if not written:
            partial.unlink(missing_ok=True)
    os.replace(partial, out)
    return out


def quantize_gguf(f16: str | Path, out: str | Path, kind: str) -> Path:
    """``f16`` quantized by llama.cpp into ``kind`` (q8_0 or q4_k_m) at ``out``."""
    f16, out = Path(f16), Path(out)
    if kind not in QUANTIZED_FTYPES:
        raise TunebookError(
            f"GGUF quantization '{kind}' is not one tunebook makes; use one of {', '.join(QUANTIZED_FTYPES)}"
            f"{closest(kind, QUANTIZED_FTYPES)}."
        )
    if not f16.is_file():
        raise TunebookError(f"{f16}: no such GGUF file; write the f16 file with write_gguf first.")
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_FTYPES[kind])
    params.nthread = usable_cores()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with _llama_log(llama_cpp) as log:
        llama_cpp.llama_backend_init()
        failed = llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), params)
    for level, line in log:
        logger.debug("llama.cpp (%d): %s", level, line)
    if failed:
        partial.unlink(missing_ok=True)
        said = "; ".join(line for level, line in log if level >= GGML_LOG_ERROR)[-600:] or "no reason given"
        raise TunebookError(
            f"llama.cpp could not quantize {f16} to {kind}: {said}. Quantize the f16 file that write_gguf writes."
        )
    os.replace(partial, out)
    return out


def gguf_metadata(path: str | Path) -> dict[str, object]:
    """The key/value metadata of a GGUF file (tokenizer arrays left out): what the parity check and the README read."""
    path = Path(path)
    if not path.is_file():
        raise TunebookError(f"{path}: no such GGUF file; write it first (write_gguf, quantize_gguf).")
    try:
        reader = gguf.GGUFReader(path)
    except ValueError as error:
        raise TunebookError(f"{path} is not a GGUF file llama.cpp could read ({error}); write it again.") from None
    return {
        key: field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.") and key not in TOKENIZER_ARRAYS
    }
