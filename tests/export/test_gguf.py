"""GGUF export of the tiny model: its file read back, tokenized and run by llama.cpp as transformers does, quantized."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from conftest import assert_same_choices
from transformers import AutoTokenizer, LlamaForCausalLM

from tunebook.errors import TunebookError
from tunebook.export.gguf import GGUF_TYPES, gguf_metadata, quantize_gguf, write_gguf

# llama.cpp runs the f16 file with float16 weights (and float16 activations in its matrix products): on the tiny
# model's prompt its logits were within 4.8e-4 of transformers' float32 ones at every position (logits' spread 0.16),
# while the same file written without the q/k permutation was 1.0e-2 off. 2e-3 passes the first with 4x room and
# fails the second by 5x.
LOGIT_ATOL = 2e-3

MESSAGES = [
    {"role": "system", "content": "Route the ticket to billing, shipping or other."},
    {"role": "user", "content": "Invoice #4521 charged twice (€1,299.99) — café order, 2024-01-02 😡\nPlease fix!"},
]

STRINGS = [
    "Hello world",
    "hello, world!",
    "  leading spaces",
    "trailing spaces   ",
    "tabs\tand\ttabs",
    "line one\nline two\n\nline four",
    "\n\n\n",
    "1234567890",
    "Order #4521 costs $1,299.99 (incl. 20% VAT)",
    "3.14159 2.71828 -42 +7 1e-5",
    "2024-01-02T03:04:05Z",
    "don't won't it's we're they've I'm you'll he'd",
    "Café, naïve, résumé, façade, jalapeño",
    "Grüße aus München, Straße",
    "Ça va? Très bien! Où est la gare?",
    "Привет, как дела?",
    "日本語のテキストです。",
    "مرحبا بالعالم",
    "emoji 😀😃🎉 👍🏽 👨‍👩‍👧",
    "🔥🔥🔥!!!",
    "mixed: ASCII + ü + 😀 + 漢字",
    "def f(x):\n    return x ** 2  # square",
    '{"label": "billing", "confidence": 0.93}',
    "<html><body>tags &amp; entities</body></html>",
    "URL: https://example.com/path?q=1&r=2#frag",
    "email@example.com, @mention, #hashtag",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|><|im_end|>",
    "text<|im_end|>more text<|endoftext|>",
    "ALL CAPS SHOUTING!!! ??? ...",
]


@pytest.fixture(scope="module")
def f16(tiny_model, tmp_path_factory):
    return write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny.f16.gguf")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def reference_logits(tiny_model, prompt_ids) -> np.ndarray:
    """transformers' float32 next-token logits at every position of the prompt."""
    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt_ids])).logits[0].numpy()


def llama(path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)


@pytest.fixture(scope="module")
def llm(f16):
    model = llama(f16)
    yield model
    model.close()


def llama_logits(model, ids: list[int]) -> np.ndarray:
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)])


def test_metadata_read_back(f16, tokenizer):
    meta = gguf_metadata(f16)
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 1
    expected = {
        "llama.block_count": 2,
        "llama.context_length": 2048,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": len(tokenizer),
    }
    assert {key: meta[key] for key in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"  # the bundled vocabulary
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert (
        meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    assert meta["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False  # SmolLM2's tokenizer adds no BOS; its template writes one
    assert meta["tokenizer.ggml.add_space_prefix"] is False
    assert "tokenizer.ggml.tokens" not in meta and "tokenizer.ggml.merges" not in meta


def test_tokens_and_tensors_read_back(f16, tokenizer, tiny_model):
    reader = gguf.GGUFReader(f16)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    special = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    assert {i for i, kind in enumerate(types) if kind == gguf.TokenType.CONTROL} == special and len(special) == 17
    assert all(kind == gguf.TokenType.NORMAL for i, kind in enumerate(types) if i not in special)
    assert len(reader.fields["tokenizer.ggml.merges"].contents()) > 40000

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    per_block = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{layer}.{name}.weight" for layer in range(2) for name in per_block
    }
    assert set(tensors) == expected  # no output.weight: the embeddings are tied
    for tensor in tensors.values():
        wanted = gguf.GGMLQuantizationType.F32 if len(tensor.shape) == 1 else gguf.GGMLQuantizationType.F16
        assert tensor.tensor_type == wanted, tensor.name

    # q and k rows interleaved per head: llama.cpp row 2j of a head is transformers' row j, row 2j+1 its row j + d/2
    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    attention = model.model.layers[1].self_attn
    for name, weight, heads in (("attn_q", attention.q_proj.weight, 4), ("attn_k", attention.k_proj.weight, 2)):
        hf = weight.detach().numpy().astype(np.float16)
        stored = np.asarray(tensors[f"blk.1.{name}.weight"].data).reshape(hf.shape)
        head_dim = hf.shape[0] // heads
        source = [
            h * head_dim + j + half * head_dim // 2
            for h in range(heads)
            for j in range(head_dim // 2)
            for half in (0, 1)
        ]
        np.testing.assert_array_equal(stored, hf[source])
    v = np.asarray(tensors["blk.1.attn_v.weight"].data)
    np.testing.assert_array_equal(v, attention.v_proj.weight.detach().numpy().astype(np.float16))


def test_llama_cpp_tokenizes_as_transformers(llm, tokenizer):
    differ = [
        text
        for text in STRINGS
        if llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        != tokenizer(text, add_special_tokens=False)["input_ids"]
    ]
    assert differ == []


def test_logits_match_transformers_at_every_position(llm, prompt_ids, reference_logits, tokenizer):
    assert prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and len(prompt_ids) > 30
    logits = llama_logits(llm, prompt_ids)
    gap = np.abs(logits - reference_logits).max()
    assert gap < LOGIT_ATOL
    # within the gap everywhere, the top token can change only where the runner-up is within 2 * gap of it
    assert_same_choices(logits, reference_logits, float(gap))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "MistralForCausalLM"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "yarn"),
        ({"attention_bias": True}, "attention_bias"),
    ],
)
def test_refuses_what_it_cannot_write(tiny_model, tmp_path, change, named):
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((shutil.copy(f"{tiny_model}/config.json", folder / "config.json")).read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(TunebookError, match=named) as refused:
        write_gguf(folder, tmp_path / "out.gguf")
    assert "config.json" in str(refused.value)
    assert not (tmp_path / "out.gguf").exists()


def test_q8_0_loads_and_picks_the_same_tokens(f16, tmp_path, prompt_ids, reference_logits):
    assert GGUF_TYPES == ("f16", "q8_0", "q4_k_m")
    q8 = quantize_gguf(f16, tmp_path / "tiny.q8_0.gguf", "q8_0")
    assert q8.stat().st_size < 0.7 * f16.stat().st_size
    model = llama(q8)
    try:
        assert model.metadata["general.file_type"] == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
        logits = llama_logits(model, prompt_ids)
    finally:
        model.close()
    assert logits[-1].argmax() == reference_logits[-1].argmax()
    assert_same_choices(logits, reference_logits, float(np.abs(logits - reference_logits).max()))


def test_quantize_refuses_an_unknown_type(f16, tmp_path):
    with pytest.raises(TunebookError, match="did you mean 'q4_k_m'"):
        quantize_gguf(f16, tmp_path / "x.gguf", "q4_km")
