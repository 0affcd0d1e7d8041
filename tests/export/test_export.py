"""Exports of a released version: the ways an export drifts from the evaluated model, each caught with a message
saying which; the Ollama Modelfile read back; and 05's export cell on the whole-workbook run."""

import json
import shutil
from pathlib import Path

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunebook import cli
from tunebook.card.schema import load_job_card
from tunebook.core.artifacts import ExportManifest, read_model
from tunebook.core.runfolder import RunFolder
from tunebook.errors import TunebookError
from tunebook.export import step as exporting
from tunebook.export.forms import MANIFEST_NAME
from tunebook.export.gguf import write_gguf
from tunebook.export.ollama import check_modelfile, ollama_template, read_modelfile, write_modelfile
from tunebook.modeling.prompts import system_prompt
from tunebook.registry import store as registry

TEXTS = [
    "My parcel never arrived and tracking says delivered.",
    "Zahlung doppelt abgebucht!",
    "app crashes 😡\non start",
]


@pytest.fixture(scope="module")
def card(small_job_module):
    return load_job_card(small_job_module)


@pytest.fixture(scope="module")
def small_job_module(tmp_path_factory):
    from conftest import write_job

    return write_job(tmp_path_factory.mktemp("job") / "job")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    return write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf")


def _with_metadata(source: Path, out: Path, **changes: MetadataDetails) -> Path:
    """A copy of a GGUF file with some metadata changed, as a careless converter or a hand edit would leave it."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, arch=reader.get_field("general.architecture").contents(), endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {k.replace("__", "."): v for k, v in changes.items()}, [])
    return out


def _drift(path: Path, tokenizer, card) -> list[str]:
    pytest.importorskip("llama_cpp")
    from tunebook.export.parity import gguf_drift
    from tunebook.export.runtime import GgufRuntime

    runtime = GgufRuntime(path, threads=1, n_ctx=512)
    try:
        return gguf_drift(runtime, tokenizer, card, TEXTS)
    finally:
        runtime.close()


def test_a_faithful_export_shows_no_drift(tiny_gguf, tokenizer, card):
    assert _drift(tiny_gguf, tokenizer, card) == []


def test_a_template_that_differs_from_training_is_caught(tiny_gguf, tokenizer, card, tmp_path):
    template = tokenizer.chat_template.replace("<|im_start|>assistant\n", "<|im_start|>assistant\nAnswer: ")
    assert template != tokenizer.chat_template
    changed = _with_metadata(
        tiny_gguf,
        tmp_path / "template.gguf",
        tokenizer__chat_template=MetadataDetails(gguf.GGUFValueType.STRING, template),
    )
    (problem,) = _drift(changed, tokenizer, card)
    assert problem.startswith("chat template differs from training") and "Answer: " in problem


def test_a_doubled_bos_is_caught(tiny_gguf, tokenizer, card, tmp_path):
    changed = _with_metadata(
        tiny_gguf, tmp_path / "bos.gguf", tokenizer__ggml__add_bos_token=MetadataDetails(gguf.GGUFValueType.BOOL, True)
    )
    (problem,) = _drift(changed, tokenizer, card)
    assert problem.startswith("doubled BOS") and "add_bos_token" in problem


def _own_vocabulary(folder: Path, eos: str) -> PreTrainedTokenizerFast:
    """A tiny model whose chat turns end with <|stop|>, a token llama.cpp does not know by name, saved with ``eos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|pad|>", "<|begin|>", "<|stop|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(TEXTS * 20 + ["system user assistant billing shipping technical"] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin|>", eos_token=eos, pad_token="<|pad|>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|begin|>{{ m['role'] }}\n{{ m['content'] }}<|stop|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|begin|>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_a_missing_stop_token_is_caught(card, tmp_path):
    trained = _own_vocabulary(tmp_path / "trained", eos="<|stop|>")
    _own_vocabulary(tmp_path / "converted", eos="<|pad|>")  # the converter took another EOS than training's
    good = write_gguf(tmp_path / "trained", tmp_path / "good.gguf")
    assert not [p for p in _drift(good, trained, card) if p.startswith("missing stop token")]
    drifted = write_gguf(tmp_path / "converted", tmp_path / "drifted.gguf")
    problems = _drift(drifted, trained, card)
    assert any(p.startswith("missing stop token: '<|stop|>'") for p in problems), problems


def test_the_modelfile_renders_the_training_prompt_and_carries_the_stop(tokenizer, card, tmp_path):
    path = write_modelfile(tmp_path, "model.gguf", ollama_template(tokenizer), system_prompt(card), ["<|im_end|>"], 13)
    parsed = read_modelfile(path)
    assert parsed["from"] == "./model.gguf" and parsed["system"] == system_prompt(card)
    assert parsed["parameters"]["stop"] == ["<|im_end|>"] and parsed["parameters"]["temperature"] == ["0"]
    assert check_modelfile(path, tokenizer, card, TEXTS) == []
    no_stop = write_modelfile(tmp_path / "x", "model.gguf", ollama_template(tokenizer), system_prompt(card), [], 13)
    (problem,) = check_modelfile(no_stop, tokenizer, card, TEXTS)
    assert problem.startswith("missing stop token") and "<|im_end|>" in problem
    other = write_modelfile(
        tmp_path / "y", "m.gguf", "{{ .System }}\n{{ .Prompt }}", system_prompt(card), ["<|im_end|>"], 13
    )
    assert check_modelfile(other, tokenizer, card, TEXTS)[0].startswith("the Modelfile's template")


def test_forms_are_checked_before_anything_is_written():
    with pytest.raises(TunebookError, match="choose from merged, adapter, gguf, ollama"):
        exporting._check_forms(("onnx",), ("f16",))
    with pytest.raises(TunebookError, match="ask for gguf too"):
        exporting._check_forms(("ollama",), ("f16",))
    with pytest.raises(TunebookError, match="--gguf-types q2_k"):
        exporting._check_forms(("gguf",), ("q2_k",))
    with pytest.raises(TunebookError, match="--min-agreement 1.5 is out of range"):
        exporting.export_version(None, "job", forms=("merged",), min_agreement=1.5)


# ---- 05's export cell on the whole-workbook run (conftest's finished_run sets EXPORT_FORMS)


def _exported(finished_run) -> tuple[RunFolder, Path]:
    run = RunFolder(finished_run[0])
    (folder,) = run.export_dir.iterdir()
    return run, folder


def test_05_exports_each_form_with_readme_manifest_and_registry_verdict(finished_run):
    run, folder = _exported(finished_run)
    version = json.loads(run.registered.read_text())["version"]
    assert folder.name == f"{run.read_job_card().name}-v{version}"
    forms = {p.name for p in folder.iterdir()}
    assert {"merged", "adapter"} <= forms
    store = registry.open_registry(workspace=run.root.parent)
    tags = registry.get_version(store, run.read_job_card().name, version).tags
    for form in forms:
        manifest = read_model(folder / form / MANIFEST_NAME, ExportManifest)
        assert manifest.version == str(version) and len(manifest.adapter_sha256) == 64
        if form == "gguf":  # a verdict per file: the folder ships if one of them may
            assert manifest.for_release == any(r.releasable for r in manifest.parity)
            for row in manifest.parity:
                assert tags[f"tunebook.export.{row.form}"] == ("passed" if row.releasable else "not for release")
        else:
            assert manifest.for_release == all(r.releasable for r in manifest.parity)
            assert tags[f"tunebook.export.{form}"] == ("passed" if manifest.for_release else "not for release")
        assert "## What it does not include" in (folder / form / "README.md").read_text()
    merged = read_model(folder / "merged" / MANIFEST_NAME, ExportManifest)
    (row,) = merged.parity
    assert (
        row.runtime.startswith("transformers")
        and row.agreement == 1.0
        and row.tokens_per_second > 0
        and row.fixed == row.broken == 0
    )
    assert (folder / "merged" / "model.safetensors").is_file() and (
        folder / "merged" / "chat_template.jinja"
    ).is_file()
    assert (folder / "adapter" / "adapter_config.json").is_file()


def test_05_gguf_and_ollama_forms_answer_through_llama_cpp(finished_run, tokenizer):
    pytest.importorskip("llama_cpp")
    run, folder = _exported(finished_run)
    manifest = read_model(folder / "gguf" / MANIFEST_NAME, ExportManifest)
    assert {r.form for r in manifest.parity} == {"gguf-f16", "gguf-q8_0", "gguf-q4_k_m"}
    assert all(
        r.runtime.startswith("llama.cpp") and r.tokens_per_second > 0 and not r.problems for r in manifest.parity
    )
    modelfile = read_modelfile(folder / "ollama" / "Modelfile")
    assert (folder / "ollama" / modelfile["from"]).resolve().is_file()
    card = run.read_job_card()
    texts = ["where is my parcel", "I was charged twice"]
    assert check_modelfile(folder / "ollama" / "Modelfile", tokenizer, card, texts) == []


def test_tunebook_export_names_each_form_and_exits_3_when_one_is_not_for_release(
    finished_run, tiny_model, tmp_path, capsys, monkeypatch
):
    run, _ = _exported(finished_run)
    version = json.loads(run.registered.read_text())["version"]
    where = ["--job", run.read_job_card().name, "--runs-dir", str(run.root.parent), "--version", str(version)]
    args = ["export", *where, "--base-model", tiny_model, "--into", str(tmp_path), "--forms", "merged"]
    code = cli.main([*args, "--min-agreement", "1.0"])
    out = capsys.readouterr().out
    assert "| merged | transformers (batches of 8) | 100.0%" in out and code == 0
    assert cli.main([*args]) == 2
    assert "an export is written once" in capsys.readouterr().err
    shutil.rmtree(tmp_path / f"{run.read_job_card().name}-v{version}")
    monkeypatch.setattr("tunebook.export.parity.same_answer", lambda a, b: False)  # every answer counted as changed
    assert cli.main(args) == 3
    assert "NOT FOR RELEASE: merged: agrees with the evaluated adapter on 0.0%" in capsys.readouterr().out
