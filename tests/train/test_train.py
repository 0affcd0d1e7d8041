"""Training on the tiny model: masks, the shared-prefix loss, learning, checkpoints, resume, determinism, refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_gradients_close, assert_same_choices, fast, tol, write_job
from safetensors.torch import load_file
from transformers import TrainerCallback

from tunebook.card import schema as job
from tunebook.core import artifacts, runfolder
from tunebook.data import examples as data
from tunebook.data import splits as dataset
from tunebook.errors import TunebookError
from tunebook.modeling import decoding, models, predict, prompts
from tunebook.release import serving_checks as release
from tunebook.train import methods, packing, recipe
from tunebook.train import step as train

KINDS = ["support_triage", "order_extraction", "support_tools", "reply_drafting"]


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    card = job.load_job_card(write_job(tmp_path_factory.mktemp("job"), per_label=4))
    kept, _ = data.clean(*data.load_examples(card))
    return card, dataset.split(kept, card, test_fraction=0.25, val_fraction=0.25)


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.parametrize("example", KINDS)
def test_masks_supervise_exactly_the_answer_and_end_of_turn(tmp_path, tokenizer, example):
    card = job.load_job_card(write_job(tmp_path, per_label=1, example=example))
    examples, _ = data.load_examples(card)
    row = examples.iloc[0]
    [features] = train.build_features(tokenizer, card, examples.head(1), 4096, "train")
    prompt = tokenizer(prompts.render_text(tokenizer, card, row["text"]), add_special_tokens=False)["input_ids"]
    answer = tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [prompts.end_of_turn_id(tokenizer)]
    assert features["input_ids"] == prompt + answer
    supervised = [i for i, label in enumerate(features["labels"]) if label != prompts.IGNORE_INDEX]
    assert supervised == list(range(len(prompt), len(prompt) + len(answer)))
    assert [features["labels"][i] for i in supervised] == answer
    assert tokenizer.decode(features["input_ids"][: len(prompt)]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(answer) == row["target"] + "<|im_end|>"


def test_padded_layout_pads_without_supervision(tiny_job, tokenizer):
    card, splits = tiny_job
    features = train.build_features(tokenizer, card, splits["train"].head(4), 512, "train")
    batch = packing.CompletionCollator(tokenizer.pad_token_id, share_prefix=False)(features)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"] and batch["labels"][i, :n].tolist() == f["labels"]
        assert batch["labels"][i, n:].eq(prompts.IGNORE_INDEX).all() and batch["attention_mask"][i, n:].eq(0).all()


def test_packed_layout_holds_the_shared_prefix_once_and_each_example_after_it(tiny_job, tokenizer):
    card, splits = tiny_job
    features = train.build_features(tokenizer, card, splits["train"].head(4), 512, "train")
    p = packing.shared_prefix_length(features)
    first_answer = min(next(i for i, x in enumerate(f["labels"]) if x != -100) for f in features)
    assert 16 <= p <= first_answer - 1
    assert all(f["input_ids"][:p] == features[0]["input_ids"][:p] for f in features)
    assert tokenizer.decode(features[0]["input_ids"][:p]).startswith("<|im_start|>system\n")
    batch = packing.CompletionCollator(tokenizer.pad_token_id)(features)
    ids, positions, segments, targets = (
        batch[k][0].tolist() for k in ("input_ids", "position_ids", "segments", "labels")
    )
    assert len(ids) == p + sum(len(f["input_ids"]) - p for f in features)  # no padding, prefix once
    for k, f in enumerate(features, start=1):
        where = [i for i, s in enumerate(segments) if s == k]
        assert [ids[i] for i in where] == f["input_ids"][p:] and [positions[i] for i in where] == list(
            range(p, len(f["input_ids"]))
        )
        # each position's target is the next token of the same example where that token is supervised
        assert [targets[i] for i in where] == f["labels"][p + 1 :] + [prompts.IGNORE_INDEX]
    mask = packing.segment_mask(batch["segments"])[0, 0]
    second = segments.index(2)
    assert (
        mask[second, p - 1] and not mask[second, second - 1] and not mask[p - 1, p]
    )  # the prefix, not the first example
    additive = packing.segment_mask(batch["segments"], torch.float32)[0, 0]
    assert torch.equal(additive == 0, mask)
    # the FlexAttention form (GPU) describes the same structure token by token
    from torch.nn.attention.flex_attention import create_mask

    length = len(segments)
    assert torch.equal(
        create_mask(packing.prefix_or_own(batch["segments"]), None, None, length, length, device="cpu")[0, 0], mask
    )
    assert packing.shared_prefix_length(features[:1]) == 0


GPU_ONLY = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward pass on a CPU"),
]


@pytest.mark.parametrize(
    ("quantization", "attention"),
    [
        ("none", "sdpa"),
        ("nf4", "sdpa"),
        ("full", "sdpa"),
        ("none", "eager"),
        pytest.param("none", "flex_attention", marks=GPU_ONLY),
        pytest.param("nf4", "flex_attention", marks=GPU_ONLY),
    ],
)
def test_packed_loss_and_gradients_equal_the_plain_padded_loss(
    tiny_job, tiny_model, tokenizer, quantization, attention
):
    card, splits = tiny_job
    features = train.build_features(tokenizer, card, splits["train"].head(6), 512, "train")
    packed = packing.CompletionCollator(tokenizer.pad_token_id)(features)
    padded = packing.CompletionCollator(tokenizer.pad_token_id, share_prefix=False)(features)
    model = train.prepare_model(tiny_model, fast(quantization=quantization))
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(batch):
        loss = packing.completion_loss(model, batch)
        return loss.item(), torch.autograd.grad(loss, trainable)

    shared, shared_grads = loss_and_grads(packed)
    plain, plain_grads = loss_and_grads(padded)
    # the reference: the model's own forward over whole padded sequences and its shifted cross-entropy
    with torch.no_grad():
        where = model.get_input_embeddings().weight.device
        logits = model(
            input_ids=padded["input_ids"].to(where), attention_mask=padded["attention_mask"].to(where)
        ).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), padded["labels"][:, 1:].flatten().to(where), ignore_index=-100
    )
    assert "segments" in packed and packed["input_ids"].shape[1] < padded["input_ids"].numel() / 3
    assert shared == pytest.approx(plain, abs=tol(1e-5, 0.05)) and plain == pytest.approx(
        reference.item(), abs=tol(1e-5, 0.05)
    )
    for a, b in zip(shared_grads, plain_grads):
        assert_gradients_close(a, b)


def test_compiled_layers_compute_the_same_loss_and_gradients_and_train_the_same_adapter(
    tiny_job, tiny_model, tokenizer, tmp_path
):
    card, splits = tiny_job
    features = train.build_features(tokenizer, card, splits["train"].head(6), 512, "train")
    collate = packing.CompletionCollator(tokenizer.pad_token_id)
    batches = [collate(features[:3]), collate(features[3:])]  # two lengths: one graph serves both (dynamic shapes)

    def losses_and_grads(compile_: bool):
        torch.manual_seed(0)
        model = train.prepare_model(tiny_model, fast(quantization="nf4", compile=compile_))
        trainable = [p for p in model.parameters() if p.requires_grad]
        out = []
        for batch in batches:
            loss = packing.completion_loss(model, batch)
            out.append((loss.item(), torch.autograd.grad(loss, trainable)))
        return model, out

    compiled, with_compile = losses_and_grads(True)
    _, eager = losses_and_grads(False)
    assert all(hasattr(layer, "_compiled_call_impl") for layer in compiled.get_base_model().get_decoder().layers)
    assert (
        compiled.state_dict().keys() == train.prepare_model(tiny_model, fast(quantization="nf4")).state_dict().keys()
    )
    for (loss, grads), (eager_loss, eager_grads) in zip(with_compile, eager):
        assert loss == pytest.approx(eager_loss, abs=tol(1e-5, 0.05))
        for a, b in zip(grads, eager_grads):
            assert_gradients_close(a, b)

    config = fast(quantization="nf4", compile=True, max_steps=4)
    result = train.train_adapter(card, splits, tiny_model, config, tmp_path / "compiled", "h")
    reference = train.train_adapter(
        card, splits, tiny_model, fast(quantization="nf4", max_steps=4), tmp_path / "e", "h"
    )
    assert result.manifest.config["compile"] and not reference.manifest.config["compile"]
    assert result.val_loss_after == pytest.approx(reference.val_loss_after, abs=tol(1e-4, 0.05))
    for name, weight in adapter_weights(tmp_path / "compiled").items():
        assert_gradients_close(weight, adapter_weights(tmp_path / "e")[name])


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_training_lowers_validation_loss_and_saves_a_peft_adapter(tiny_job, tiny_model, tmp_path, quantization):
    # nf4 also guards the bitsandbytes CPU repacking bug: the untrained validation pass runs in eval mode
    # right before training, which without the workaround leaves the loss flat.
    card, splits = tiny_job
    splits = {**splits, "val": splits["train"]}  # on the tiny random model only memorisation is measurable
    config = recipe.TrainConfig(
        quantization=quantization,
        max_steps=12,
        batch_size=8,
        learning_rate=5e-3,
        lora_r=8,
        warmup_ratio=0,
        eval_steps=3,
        general_mix=0.0,
    )
    result = train.train_adapter(card, splits, tiny_model, config, tmp_path / "adapter", dataset_hash="abc123")
    assert result.val_loss_after < result.val_loss_before - 0.5
    assert result.log_history[0] == {"step": 0, "eval_loss": result.val_loss_before}
    assert [e["step"] for e in result.log_history if "eval_loss" in e][:3] == [0, 3, 6]
    names = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", runfolder.MANIFEST} <= names
    assert "checkpoints" not in names  # removed once the run has finished
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    weights = adapter_weights(result.adapter_dir)
    assert weights and all("lora_" in key for key in weights)


def test_same_seed_same_data_same_config_gives_identical_weights(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    first = train.train_adapter(card, splits, tiny_model, fast(), tmp_path / "a", "h")
    second = train.train_adapter(card, splits, tiny_model, fast(), tmp_path / "b", "h")
    other = train.train_adapter(card, splits, tiny_model, fast(seed=1), tmp_path / "c", "h")
    a, b, c = (adapter_weights(r.adapter_dir) for r in (first, second, other))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


class Interrupt(TrainerCallback):
    """Stops the process the way a kernel interrupt would, right after a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    config = fast(max_steps=8, eval_steps=2, lora_dropout=0.1)  # dropout makes the RNG state matter too
    whole = train.train_adapter(card, splits, tiny_model, config, tmp_path / "whole", "h")
    with pytest.raises(KeyboardInterrupt):
        train.train_adapter(card, splits, tiny_model, config, tmp_path / "cut", "h", callbacks=[Interrupt(5)])
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    resumed = train.train_adapter(card, splits, tiny_model, config, tmp_path / "cut", "h")
    assert resumed.manifest.resumed_from == "checkpoint-4"
    a, b = adapter_weights(whole.adapter_dir), adapter_weights(resumed.adapter_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val_loss_after == pytest.approx(whole.val_loss_after, abs=1e-6)
    assert resumed.val_loss_before == whole.val_loss_before


def test_resuming_with_other_settings_or_without_consent_is_refused(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    with pytest.raises(KeyboardInterrupt):
        train.train_adapter(card, splits, tiny_model, fast(), tmp_path / "cut", "h", callbacks=[Interrupt(3)])
    with pytest.raises(TunebookError, match=r"different inputs \(config.learning_rate\)"):
        train.train_adapter(card, splits, tiny_model, fast(learning_rate=1e-3), tmp_path / "cut", "h")
    with pytest.raises(TunebookError, match=r"different inputs \(dataset_hash\)"):
        train.train_adapter(card, splits, tiny_model, fast(), tmp_path / "cut", "other")
    with pytest.raises(TunebookError, match="RESUME=True"):
        train.train_adapter(card, splits, tiny_model, fast(), tmp_path / "cut", "h", resume=False)


def test_early_stopping_keeps_the_best_checkpoint(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    splits = {**splits, "val": splits["train"]}
    # A huge learning rate: the first steps memorise, later ones blow the loss up, so validation stops improving.
    config = fast(max_steps=30, eval_steps=1, learning_rate=0.3, early_stopping_patience=2)
    result = train.train_adapter(card, splits, tiny_model, config, tmp_path / "adapter", "h")
    evals = [(e["step"], e["eval_loss"]) for e in result.log_history if "eval_loss" in e and e["step"] > 0]
    best_step, best_loss = min(evals[:-1], key=lambda e: e[1])  # the last entry is the final re-evaluation
    assert result.manifest.stopped_early and result.manifest.steps < 30
    assert result.manifest.best_step == best_step
    assert result.val_loss_after == pytest.approx(best_loss, abs=tol(1e-5, 0.02))


def test_manifest_records_lineage(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    train.train_adapter(card, splits, tiny_model, fast(max_steps=1), tmp_path / "adapter", dataset_hash="abc123")
    manifest = runfolder.read_manifest(tmp_path / "adapter")
    assert manifest.dataset_hash == "abc123"
    assert manifest.job == card.name and manifest.choices == card.label_names
    assert manifest.job_card_sha256 == job.card_hash(card)
    assert manifest.base_model == models.model_identity(tiny_model)
    assert len(manifest.base_model["sha256"]) == 64
    assert manifest.config["max_steps"] == 1 and manifest.seed == 0 and manifest.config["learning_rate_used"] == 5e-3
    assert manifest.versions["torch"].startswith(torch.__version__.split("+")[0])
    assert {"transformers", "peft", "bitsandbytes", "python"} <= manifest.versions.keys()
    assert manifest.git_commit is None or len(manifest.git_commit) == 40
    assert manifest.wall_time_s > 0 and manifest.peak_memory_mb > 0
    assert manifest.train_examples == len(splits["train"]) and manifest.answers_cut == 0
    assert manifest.trainable_parameters > 0 and manifest.method == "LoRA on a none base"
    assert type(manifest).model_validate_json(manifest.model_dump_json()) == manifest  # round-trips as JSON


def test_a_reloaded_adapter_predicts_exactly_what_the_trained_one_did(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    splits = {**splits, "val": splits["train"]}
    result = train.train_adapter(card, splits, tiny_model, fast(max_steps=8), tmp_path / "adapter", "h")
    texts = splits["test"]["text"].tolist()
    tokenizer = models.load_tokenizer(tiny_model)
    # the weights as saved, applied to a fresh base, against the same weights copied into a live training model
    live = train.prepare_model(tiny_model, fast())
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(live, adapter_weights(result.adapter_dir))
    live.set_attn_implementation("sdpa")  # as inference loads it (training may use flex_attention on a GPU)
    live.eval()
    reloaded, _ = predict.load_for_inference(tiny_model, result.adapter_dir)
    a = decoding.label_log_likelihoods(live, tokenizer, card, texts, progress=False)
    b = decoding.label_log_likelihoods(reloaded, tokenizer, card, texts, progress=False)
    assert_same_choices(a, b, tol(1e-5, 0.15))
    np.testing.assert_allclose(a, b, atol=tol(1e-5, 0.15))
    base_only, _ = predict.load_for_inference(tiny_model)
    assert not np.allclose(
        decoding.label_log_likelihoods(base_only, tokenizer, card, texts, progress=False), b, atol=1e-3
    )


@pytest.mark.parametrize("quantization", ["nf4", "int8", "none"])
def test_a_served_adapter_is_merged_into_its_base_and_answers_as_evaluated(
    tiny_job, tiny_model, tmp_path, quantization
):
    card, splits = tiny_job
    config = fast(quantization=quantization, max_steps=4)
    result = train.train_adapter(card, splits, tiny_model, config, tmp_path / "adapter", "h")
    texts = splits["test"]["text"].tolist()
    evaluated, tokenizer = predict.load_trained(tiny_model, result.adapter_dir, result.manifest)
    served, _ = predict.load_for_serving(tiny_model, result.adapter_dir, result.manifest)
    from peft import PeftModel

    if models.compute_dtype() == torch.float32 and quantization != "int8":
        # merged: plain float32 layers, no adapter and no quantized weights
        kinds = {type(module).__name__ for module in served.modules()}
        assert "Linear" in kinds and not kinds & {"Linear4bit", "LoraModel"} and not isinstance(served, PeftModel)
        assert {p.dtype for p in served.parameters()} == {torch.float32}
    else:  # served as evaluated: an 8-bit product runs in float16, which merged weights would not reproduce
        assert isinstance(served, PeftModel)
    merges = models.compute_dtype() == torch.float32 and quantization != "int8"
    assert predict.serves_merged(result.manifest) == merges
    assert release.served(evaluated, served, result.manifest) is (served if merges else evaluated)  # 05 times it
    a = decoding.label_log_likelihoods(evaluated, tokenizer, card, texts, progress=False)
    b = decoding.label_log_likelihoods(served, tokenizer, card, texts, progress=False)
    assert_same_choices(b, a, tol(1e-4, 0.15))
    np.testing.assert_allclose(b, a, atol=tol(1e-4, 0.15))
    base_only, _ = predict.load_for_inference(tiny_model, quantization=quantization)
    assert not np.allclose(  # the adapter was merged in, not dropped
        decoding.label_log_likelihoods(base_only, tokenizer, card, texts, progress=False), b, atol=1e-3
    )


def test_full_fine_tuning_saves_a_whole_model_that_reloads(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    result = train.train_adapter(
        card, splits, tiny_model, fast(method="full", max_steps=2, learning_rate=0), tmp_path / "full", "h"
    )
    assert (result.adapter_dir / "model.safetensors").is_file() and not (
        result.adapter_dir / "adapter_config.json"
    ).exists()
    assert result.manifest.config["learning_rate_used"] == recipe.DEFAULT_LEARNING_RATE["full"]
    model, tokenizer = predict.load_trained(tiny_model, result.adapter_dir, result.manifest)
    assert decoding.label_log_likelihoods(model, tokenizer, card, ["late parcel"], progress=False).shape == (
        1,
        len(card.labels),
    )


def test_full_fine_tuning_is_a_method_and_its_old_spelling_still_reads(tiny_job, tiny_model, tmp_path):
    assert (recipe.TrainConfig(quantization="full").method, recipe.TrainConfig(quantization="full").quantization) == (
        "full",
        "none",
    )
    assert recipe.TrainSettings.from_parameters({"METHOD": "full", "QUANTIZATION": "none"}).config().full
    with pytest.raises(TunebookError, match="METHOD='full'.*QUANTIZATION='none'"):
        recipe.TrainConfig(method="full", quantization="nf4").check()
    with pytest.raises(TunebookError, match="METHOD must be one of lora, full"):
        recipe.TrainConfig(method="qlora").check()
    card, splits = tiny_job
    result = train.train_adapter(card, splits, tiny_model, fast(max_steps=1), tmp_path / "a", "h")
    written = json.loads(runfolder.manifest_path(result.adapter_dir).read_text())
    assert written["config"]["method"] == "lora" and written["config"]["quantization"] == "none"
    old = {**written, "config": {k: v for k, v in written["config"].items() if k != "method"}}
    assert artifacts.Manifest.model_validate(old).full_fine_tune is False
    old["config"]["quantization"] = "full"  # how a full fine-tune was recorded before METHOD existed
    read = artifacts.Manifest.model_validate(old)
    assert read.full_fine_tune and read.quantization == "none"


def test_int8_trains_an_adapter(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    result = train.train_adapter(
        card, splits, tiny_model, fast(quantization="int8", max_steps=2), tmp_path / "int8", "h"
    )
    assert (
        result.manifest.method == "LoRA on a int8 base"
        and (result.adapter_dir / "adapter_model.safetensors").is_file()
    )


def test_compare_methods_measures_each_in_its_own_process(tiny_job, tiny_model):
    card, splits = tiny_job
    table = methods.compare_methods(
        card, splits, tiny_model, fast(), methods=["none", "full"], steps=2, val_examples=4
    )
    assert list(table.index) == ["none", "full"]
    assert (table["peak_memory_mb"] > 0).all() and (table["seconds_per_step"] > 0).all()
    assert table.loc["full", "trainable_parameters"] > 10 * table.loc["none", "trainable_parameters"]
    with pytest.raises(TunebookError, match="unknown method"):
        methods.compare_methods(card, splits, tiny_model, fast(), methods=["fp8"])


def test_existing_adapter_is_never_overwritten(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / runfolder.MANIFEST).write_text("{}")
    with pytest.raises(TunebookError, match="never overwritten"):
        train.train_adapter(card, splits, tiny_model, fast(max_steps=1), tmp_path / "adapter", "h")


def test_a_max_length_shorter_than_the_prompt_names_the_examples(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    with pytest.raises(
        TunebookError,
        match=r"example\(s\) of the train split would have no supervised token.*MAX_LENGTH=64.*at least \d+",
    ):
        train.train_adapter(card, splits, tiny_model, fast(max_length=64), tmp_path / "adapter", "h")


def test_lora_targets_that_match_nothing_name_the_available_layers(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    with pytest.raises(TunebookError, match=r"matches no layer.*q_proj.*v_proj"):
        train.train_adapter(
            card, splits, tiny_model, fast(target_modules=["query_key_value"]), tmp_path / "adapter", "h"
        )


def test_a_model_without_a_chat_template_says_how_to_give_one(tiny_model, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(tiny_model, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TunebookError, match="no chat template.*chat_template.jinja"):
        models.load_tokenizer(str(folder))
    (folder / "chat_template.jinja").write_text(models.load_tokenizer(tiny_model).chat_template)
    assert models.load_tokenizer(str(folder)).chat_template


def test_out_of_memory_suggests_a_smaller_batch(tiny_job, tiny_model, tmp_path):
    # A real out-of-memory cannot be provoked safely in a test; the allocator's error is raised from the first step.
    class OutOfMemory(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    card, splits = tiny_job
    with pytest.raises(TunebookError, match=r"out of memory.*BATCH_SIZE=4.*Set BATCH_SIZE to 2.*resumes"):
        train.train_adapter(card, splits, tiny_model, fast(), tmp_path / "adapter", "h", callbacks=[OutOfMemory()])


def test_target_modules_have_one_spelling_so_notebook_and_command_line_runs_resume_each_other():
    # 03 used to pass a list and `tunebook train` a string: different resume keys for the same run
    as_list, as_text = (
        recipe.TrainConfig(target_modules=["q_proj", "v_proj"]),
        recipe.TrainConfig(target_modules="q_proj, v_proj"),
    )
    assert as_list == as_text and as_text.target_modules == "q_proj,v_proj"
    assert recipe.TrainSettings.from_parameters({"LORA_TARGET_MODULES": "q_proj,v_proj"}).config() == as_list
    assert recipe.TrainConfig().target_modules == "all-linear"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantization": "int3"}, "QUANTIZATION must be one of nf4, int8, none"),
        ({"lora_r": 0}, "LORA_R must be > 0, got 0"),
        ({"learning_rate": -1}, "LEARNING_RATE must be >= 0, got -1"),
        ({"epochs": 0, "max_steps": -1}, "set EPOCHS > 0"),
        ({"lora_dropout": 1.5}, "LORA_DROPOUT must be >= 0 and < 1, got 1.5"),
        ({"attention": "flash"}, "ATTENTION must be one of sdpa, eager, flex_attention"),
        ({"compile": "yes"}, "COMPILE must be bool, got 'yes'"),
        pytest.param(
            {"attention": "flex_attention"},
            "needs a GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="refused on a CPU only"),
        ),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(TunebookError, match=message):
        recipe.TrainConfig(**change).check()


@pytest.mark.parametrize("example", KINDS)
def test_every_example_job_fits_the_default_max_length(example, tokenizer):
    # The tool-selection job's prompts (the tool list) reach ~1,060 tokens: at the old default of 1024, 03 refused it.
    from conftest import EXAMPLE

    from tunebook.workbook.parameters import declared_parameters

    declared = declared_parameters()["MAX_LENGTH"]
    assert (
        set(declared.notebooks) == {"01_clean_the_data", "03_train_qlora"}
        and recipe.TrainConfig().max_length == declared.default
    )
    card = job.load_job_card(EXAMPLE.parent / example / "job.yaml")
    kept, _ = data.clean(*data.load_examples(card))
    longest = max(
        sum(map(len, prompts.encode_parts(tokenizer, card, row.text, row.target))) for row in kept.itertuples()
    )
    assert longest <= declared.default


def test_replay_features_supervise_the_base_answers_as_chat_and_as_plain_text(tokenizer):
    from tunebook.train import replay

    answers = [
        {"prompt": "Name a colour.", "answer": "Blue is a colour.", "ended": True},
        {"prompt": "Count to three.", "answer": "One, two, three and then", "ended": False},
    ]
    features = replay.replay_features(tokenizer, answers, chat=1, max_length=512)
    assert [f["group"] for f in features] == [1, 2, 2]  # one chat example, every answer as plain text
    chat, plain = features[0], features[1]
    prompt = prompts.encode_prompt(tokenizer, [{"role": "user", "content": "Name a colour."}])
    answer = tokenizer("Blue is a colour.", add_special_tokens=False)["input_ids"]
    assert chat["input_ids"] == prompt + answer + [prompts.end_of_turn_id(tokenizer)]
    assert chat["labels"] == [prompts.IGNORE_INDEX] * len(prompt) + answer + [prompts.end_of_turn_id(tokenizer)]
    assert plain["input_ids"] == plain["labels"] == answer
    assert features[2]["labels"][-1] != prompts.end_of_turn_id(
        tokenizer
    )  # an answer cut at the limit does not learn to stop
    assert len(replay.load_requests()) == 120


def test_shipped_base_answers_are_used_without_running_the_model(tiny_model, tmp_path, monkeypatch):
    from tunebook.train import replay

    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(replay, "SHIPPED_ANSWERS", tmp_path / "shipped")
    name = replay._cache_file(models.model_identity(tiny_model)).name
    shipped = [{"prompt": "Name a colour.", "answer": "Blue.", "ended": True}]
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / name).write_text(json.dumps(shipped[0]) + "\n")

    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded to answer a shipped request")

    monkeypatch.setattr(models, "load_model", no_model)
    assert replay.base_answers(tiny_model, ["Name a colour."]) == shipped
    with pytest.raises(AssertionError, match="base model was loaded"):  # a request not shipped is answered here
        replay.base_answers(tiny_model, ["Name a colour.", "Count to three."])


def test_the_bundled_models_shipped_answers_cover_exactly_the_shipped_requests():
    from tunebook.train import replay

    files = sorted(replay.SHIPPED_ANSWERS.glob("*.jsonl"))
    assert len(files) == 1  # the bundled model's (its name is checked against the model in test_real_model)
    answers = [json.loads(line) for line in files[0].read_text(encoding="utf-8").splitlines()]
    assert [a["prompt"] for a in answers] == replay.load_requests()
    assert all(isinstance(a["answer"], str) and isinstance(a["ended"], bool) for a in answers)


def test_grouped_batches_hold_one_group_each_and_every_example_once():
    groups = [0] * 23 + [1] * 9 + [2] * 6
    sampler = packing.SeededLengthGroupedSampler(
        4, [10 + (i * 7) % 13 for i in range(len(groups))], seed=3, groups=groups
    )
    order = list(iter(sampler))
    assert sorted(order) == list(range(len(groups)))
    batches = [order[k : k + 4] for k in range(0, len(order), 4)]
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) <= 2 and all(b in batches[-3:] for b in mixed)  # only the leftovers at the end can mix
    assert order == list(iter(sampler))  # the same epoch gives the same order (resume)
    sampler.set_epoch(1)
    assert order != list(iter(sampler))


def test_general_replay_is_mixed_into_training_and_recorded(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    result = train.train_adapter(
        card, splits, tiny_model, fast(max_steps=2, general_mix=0.5), tmp_path / "adapter", "h"
    )
    from tunebook.train import replay

    answers = replay.base_answers(tiny_model, replay.load_requests())  # cached by the training run
    expected = replay.replay_features(
        models.load_tokenizer(tiny_model), answers, round(0.5 * len(splits["train"])), 1024
    )
    assert result.manifest.general_examples == len(expected) > 0 and result.manifest.train_examples == len(
        splits["train"]
    )


def test_eval_steps_past_the_last_step_validate_at_the_end(tmp_path):
    """The workshop profile's EVAL_STEPS with a shorter MAX_STEPS (a -p on top of it) still validates and keeps a
    checkpoint: at the last step."""
    from tunebook.train.recipe import TrainConfig
    from tunebook.train.step import _training_arguments

    args, total = _training_arguments(TrainConfig(max_steps=2, eval_steps=28), tmp_path, examples=40)
    assert total == 2 and args.eval_steps == 2 and args.save_steps == 2
    args, _ = _training_arguments(TrainConfig(max_steps=40, eval_steps=10), tmp_path, examples=40)
    assert args.eval_steps == 10
