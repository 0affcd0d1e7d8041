"""Memory of a training step on the tiny model: a batch mixing groups packs each prefix once, SDPA keeps one mask for
every layer, long rows recompute layers within a budget, and training that cannot fit says so before it starts; the
loss and gradients stay those of the plain full-sequence computation throughout."""

import re

import pytest
import torch
from conftest import assert_gradients_close, tol, write_job

from tunebook.card import schema as job
from tunebook.data import examples as data
from tunebook.errors import TunebookError
from tunebook.modeling.prompts import IGNORE_INDEX
from tunebook.train import packing, recipe, replay
from tunebook.train import step as train

GENERAL = [
    ("Name three colours of the rainbow.", "Red, orange and yellow are three of them."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me a synonym for happy.", "A synonym for happy is joyful."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]


@pytest.fixture(scope="module")
def tool_job(tmp_path_factory):
    card = job.load_job_card(write_job(tmp_path_factory.mktemp("tools"), per_label=2, example="support_tools"))
    kept, _ = data.clean(*data.load_examples(card))
    return card, kept


@pytest.fixture(scope="module")
def mixed(tool_job, tokenizer) -> list[dict]:
    """The batch the sampler leaves for the end of an epoch: job examples (the tool catalogue in their system prompt),
    general chat examples and general plain-text examples together."""
    card, kept = tool_job
    tools = train.build_features(tokenizer, card, kept.head(3), 2048, "train")
    answers = [{"prompt": p, "answer": a, "ended": True} for p, a in GENERAL]
    general = replay.replay_features(tokenizer, answers, 3, 2048)
    chat = [f for f in general if f["group"] == 1]
    plain = [f for f in general if f["group"] == 2][:2]
    return [tools[0], chat[0], plain[0], tools[1], chat[1], tools[2], plain[1], chat[2]]


def model_for(tiny_model, attention="sdpa", quantization="none"):
    model = train.prepare_model(tiny_model, recipe.TrainConfig(quantization=quantization, lora_r=8))
    model.set_attn_implementation(attention)
    return model.train()


def reference_loss(model, features, pad_token_id) -> torch.Tensor:
    """The model's own forward over each whole example (right-padded, with the padding mask) and its shifted
    cross-entropy over every supervised token: what completion_loss must equal."""
    padded = packing.CompletionCollator(pad_token_id, share_prefix=False).padded(features)
    logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), padded["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


def saved_square_masks(model, batch) -> list[torch.Tensor]:
    """Distinct tensors of shape [..., T, T] the forward pass keeps for backward (T: the batch's width)."""
    width, kept = batch["input_ids"].shape[1], {}

    def pack(t):
        if t.dim() >= 2 and t.shape[-2:] == (width, width):
            kept.setdefault(t.untyped_storage().data_ptr(), t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        packing.completion_loss(model, batch)
    return list(kept.values())


def saved_bytes(model, batch, budget) -> int:
    """Bytes of the distinct tensors (parameters aside) the forward pass keeps for backward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        packing.completion_loss(model, batch, budget)
    return sum(kept.values())


def test_a_batch_mixing_groups_packs_each_prefix_once_and_each_example_sees_exactly_its_own_sequence(mixed, tokenizer):
    batch = packing.CompletionCollator(tokenizer.pad_token_id)(mixed)
    # padded, the tool catalogue would be repeated in all 8 rows of the width of the longest tool prompt
    assert "segments" in batch
    padded_tokens = len(mixed) * max(len(f["input_ids"]) for f in mixed)
    length = batch["input_ids"].shape[1]
    assert length == packing.CompletionCollator(tokenizer.pad_token_id).row_tokens(mixed) < padded_tokens / 3
    tools = [f for f in mixed if f.get("group", 0) == 0]
    assert tokenizer.decode(batch["input_ids"][0]).count("issue_refund") == tokenizer.decode(
        tools[0]["input_ids"]
    ).count("issue_refund")  # the catalogue once
    ids, positions, segments, targets = (batch[k][0] for k in ("input_ids", "position_ids", "segments", "labels"))
    mask = packing.segment_mask(batch["segments"])[0, 0]
    assert torch.equal(packing.segment_mask(batch["segments"], torch.float32)[0, 0] == 0, mask)
    examples = sorted({int(s) for s in segments if s > 0})
    assert len(examples) == len(mixed)
    seen = []
    for k in examples:
        own = (segments == k).nonzero().flatten()
        visible = mask[own[-1]].nonzero().flatten()  # what the example's last token attends to
        sequence = ids[visible].tolist()
        # exactly the example's whole sequence (its prefix, then its own tokens), at positions 0, 1, ...
        assert positions[visible].tolist() == list(range(len(sequence)))
        match = next(f for f in mixed if f["input_ids"] == sequence)
        assert targets[own].tolist() == match["labels"][len(sequence) - len(own) + 1 :] + [IGNORE_INDEX]
        seen.append(id(match))
    assert sorted(seen) == sorted(map(id, mixed))
    # the FlexAttention form describes the same structure
    from torch.nn.attention.flex_attention import create_mask

    flex = create_mask(packing.prefix_or_own(batch["segments"]), None, None, length, length, device="cpu")
    assert torch.equal(flex[0, 0], mask)


@pytest.mark.parametrize(("attention", "quantization"), [("sdpa", "none"), ("eager", "none"), ("sdpa", "nf4")])
def test_mixed_batch_loss_and_gradients_equal_the_full_sequence_reference(
    mixed, tiny_model, tokenizer, attention, quantization
):
    model = model_for(tiny_model, attention, quantization)
    trainable = [p for p in model.parameters() if p.requires_grad]
    batch = packing.CompletionCollator(tokenizer.pad_token_id)(mixed)
    loss = packing.completion_loss(model, batch)
    grads = torch.autograd.grad(loss, trainable)
    reference = reference_loss(model, mixed, tokenizer.pad_token_id)
    reference_grads = torch.autograd.grad(reference, trainable)
    assert loss.item() == pytest.approx(reference.item(), abs=tol(1e-5, 0.05))
    for a, b in zip(grads, reference_grads):
        assert_gradients_close(a, b)


def test_sdpa_on_a_cpu_keeps_one_attention_mask_for_every_layer(mixed, tiny_model, tokenizer):
    model = model_for(tiny_model)
    tools = [f for f in mixed if f.get("group", 0) == 0]
    batch = packing.CompletionCollator(tokenizer.pad_token_id)(tools)
    assert batch["input_ids"].shape[0] == 1
    # a boolean mask became a float copy in each layer, each kept for backward: one T x T tensor per layer
    masks = saved_square_masks(model, batch)
    assert len(masks) == 1 and masks[0].dtype == torch.float32
    assert packing.completion_loss(model, batch).item() == pytest.approx(
        reference_loss(model, tools, tokenizer.pad_token_id).item(), abs=tol(1e-5, 0.05)
    )


def test_the_padded_layout_builds_no_rows_x_t_x_t_mask_and_keeps_its_loss(mixed, tiny_model, tokenizer):
    model = model_for(tiny_model)
    batch = packing.CompletionCollator(tokenizer.pad_token_id, share_prefix=False)(mixed)
    assert "segments" not in batch and batch["attention_mask"].eq(0).any()
    assert saved_square_masks(model, batch) == []
    assert packing.completion_loss(model, batch).item() == pytest.approx(
        reference_loss(model, mixed, tokenizer.pad_token_id).item(), abs=tol(1e-5, 0.05)
    )


def test_logits_are_computed_only_at_supervised_positions(mixed, tiny_model, tokenizer):
    model = model_for(tiny_model)
    batch = packing.CompletionCollator(tokenizer.pad_token_id)(mixed)
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    try:
        packing.completion_loss(model, batch)
    finally:
        handle.remove()
    supervised = int((batch["labels"] != IGNORE_INDEX).sum())
    assert shapes == [(supervised, len(tokenizer))] and supervised < batch["input_ids"].shape[1] / 4


def test_a_row_over_the_budget_recomputes_layers_with_the_same_loss_and_gradients(mixed, tiny_model, tokenizer):
    model = model_for(tiny_model, quantization="nf4")
    layers = model.get_base_model().get_decoder().layers
    trainable = [p for p in model.parameters() if p.requires_grad]
    batch = packing.CompletionCollator(tokenizer.pad_token_id)(mixed)
    tokens = batch["input_ids"].numel()
    fits = packing.step_memory_mb(model, tokens)
    assert packing.layers_to_checkpoint(model, tokens, fits) == 0
    assert packing.layers_to_checkpoint(model, tokens, packing.step_memory_mb(model, tokens, 1)) == 1
    assert packing.layers_to_checkpoint(model, tokens, 1e-6) == len(layers)
    assert packing.step_memory_mb(model, tokens, len(layers)) < fits / 2

    def loss_and_grads(budget):
        loss = packing.completion_loss(model, batch, budget)
        return loss.item(), torch.autograd.grad(loss, trainable)

    kept, kept_grads = loss_and_grads(None)
    recomputed, recomputed_grads = loss_and_grads(1e-6)
    assert recomputed == pytest.approx(kept, abs=1e-6)
    for a, b in zip(recomputed_grads, kept_grads):
        assert_gradients_close(a, b)
    # what the layers no longer keep: at least the activations the estimate counts for them
    dropped = saved_bytes(model, batch, None) - saved_bytes(model, batch, 1e-6)
    assert dropped >= len(layers) * tokens * packing.activation_bytes_per_token(model)
    assert not any(layer.gradient_checkpointing for layer in layers)  # only for that step
    with torch.no_grad():  # evaluation keeps no activations: nothing to recompute
        assert packing.completion_loss(model, batch, 1e-6).item() == pytest.approx(kept, abs=1e-6)


def test_a_batch_that_does_not_fit_is_split_into_accumulated_passes_and_one_that_never_fits_stops_first(
    tool_job, tiny_model, tokenizer, tmp_path, monkeypatch
):
    card, kept = tool_job
    splits = {"train": kept.iloc[::2], "val": kept.iloc[1::2], "test": kept.head(0)}
    config = recipe.TrainConfig(
        quantization="none", max_steps=2, batch_size=6, lora_r=8, eval_steps=1, general_mix=0.0
    )
    features = train.build_features(tokenizer, card, splits["train"], config.max_length, "train")
    model = model_for(tiny_model)
    collator = packing.CompletionCollator(tokenizer.pad_token_id)

    layers = model.config.num_hidden_layers

    def need(micro, recomputed=0):
        tokens = packing.longest_row(collator, features, 6, config.seed, 1, micro)
        return packing.step_memory_mb(model, tokens, recomputed)

    assert need(3, layers) < need(6, layers)
    budget = (need(3, layers) + need(6, layers)) / 2  # 6 per pass does not fit even with every layer recomputed
    started = []

    class Started(Exception):
        pass

    def fit(trainer, *args):
        started.append(trainer.args)
        raise Started

    monkeypatch.setattr(train, "_fit", fit)
    monkeypatch.setattr(train, "_free_memory_mb", lambda: budget)
    with pytest.raises(Started):
        train.train_adapter(card, splits, tiny_model, config, tmp_path / "fits", "h")
    args, micro = started[-1], started[-1].per_device_train_batch_size
    assert micro < 6 and micro * args.gradient_accumulation_steps == 6  # still 6 examples per optimiser step
    tokens = packing.longest_row(collator, features, 6, config.seed, 1, micro)
    assert packing.step_memory_mb(model, tokens, packing.layers_to_checkpoint(model, tokens, budget)) <= budget
    monkeypatch.setattr(train, "_free_memory_mb", lambda: need(1, layers) / 2)  # not even one, all recomputed
    with pytest.raises(TunebookError, match="not enough memory") as refused:
        train.train_adapter(card, splits, tiny_model, config, tmp_path / "adapter", "h")
    suggested = int(re.search(r"Set MAX_LENGTH=(\d+)", str(refused.value)).group(1))
    assert 0 < suggested < max(len(f["input_ids"]) for f in features)
    assert len(started) == 1 and not [path for path in (tmp_path / "adapter").rglob("*") if path.is_file()]


def _features(prefix: int, own: list[int]) -> list[dict]:
    """Examples that share ``prefix`` prompt tokens, each followed by ``own`` tokens of its own (half answer)."""
    made = []
    for n, length in enumerate(own):
        ids = list(range(1, prefix + 1)) + [1000 + n] * length
        labels = [IGNORE_INDEX] * (prefix + length // 2) + ids[prefix + length // 2 :]
        made.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return made


def test_long_examples_behind_a_short_shared_prefix_are_padded_where_packing_would_cost_more(tiny_model):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    config._attn_implementation = "sdpa"
    cost = packing.pair_cost(type("Model", (), {"config": config})())
    assert cost > 0
    collate = packing.CompletionCollator(0, pair_cost=cost)
    passages = _features(20, [int(2 / cost)] * 8)  # retrieved passages: each prompt long, the system prompt short
    catalogue = _features(int(2 / cost), [40] * 8)  # a tool catalogue: the shared prompt long, each example short
    assert collate.layout(passages) is None and "segments" not in collate(passages)
    assert collate.layout(catalogue) is not None and "segments" in collate(catalogue)
    assert packing.CompletionCollator(0).layout(passages) is not None  # without a pair cost: packed, as before
    assert collate.cost(passages, None) < collate.cost(passages, [(passages, 20)])
    config._attn_implementation = "flex_attention"  # skips masked blocks: packing always pays
    assert packing.pair_cost(type("Model", (), {"config": config})()) == 0.0
