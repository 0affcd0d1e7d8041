"""Batches for completion-only training: the shared prompt prefix packed once per batch, the loss over them, the
seeded length-grouped order of examples, and the Trainer that uses all three."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, Trainer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from tunebook.modeling.prompts import IGNORE_INDEX

MIN_SHARED_PREFIX = 16


def shared_prefix_length(features: list[dict], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Tokens every example in a batch starts with, up to the first supervised token's input; 0 when too short to pay off."""
    if len(features) < 2:
        return 0
    first, length = features[0]["input_ids"], min(len(f["input_ids"]) for f in features)
    for f in features[1:]:
        ids = f["input_ids"]
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    # The hidden state just before the first supervised token must come out of the per-example pass.
    first_label = min(next(i for i, label in enumerate(f["labels"]) if label != IGNORE_INDEX) for f in features)
    length = min(length, first_label - 1)
    return length if length >= minimum else 0


def packed_tokens(parts: list[tuple[list[dict], int]]) -> int:
    """Length of the packed row for ``parts`` (see ``CompletionCollator.layout``): each prefix once, then each
    example's own tokens."""
    return sum(p + sum(len(f["input_ids"]) - p for f in members) for members, p in parts)


def text_config(model: PreTrainedModel):
    """The decoder's config of ``model``, under its PEFT wrapper if it has one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.get_text_config()


class CompletionCollator:
    """Turns training features into a batch, in one of two layouts.

    Packed (when the examples share a prompt prefix, e.g. the system prompt): one row holding the shared prefix once,
    then each example's remaining tokens, no padding; ``segments`` numbers the examples (0 = the shared prefix) so
    each attends only to the prefix and to itself, ``position_ids`` restart after the prefix for every example, and
    ``labels`` holds the next-token target of every position (-100 where there is no loss).
    Padded (otherwise, or where that costs less: ``cost``): the usual right-padded rows with ``attention_mask`` and
    unshifted ``labels``.
    """

    def __init__(self, pad_token_id: int, share_prefix: bool = True, pair_cost: float = 0.0):
        self.pad_token_id = pad_token_id
        self.share_prefix = share_prefix
        self.pair_cost = pair_cost  # attention's cost per (query, key) pair of a row, in tokens' cost (pair_cost)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Collate ``features`` (dicts of input_ids, attention_mask, labels)."""
        parts = self.layout(features)
        if parts is None:
            return self.padded(features)
        return self.packed(*parts[0]) if len(parts) == 1 else self.packed_parts(parts)

    def layout(self, features: list[dict]) -> list[tuple[list[dict], int]] | None:
        """How ``features`` go into one packed row: (examples, shared prefix length) per part, or None for padding
        (no shared prefix, or padding costs less: ``cost``).

        One part when the whole batch shares a prompt prefix. A batch mixing groups (the sampler's last batch of an
        epoch gathers the groups' incomplete ones, e.g. job examples and general replay examples) holds one part per
        group, each with its own prefix once: padded, it would repeat the job's system prompt in every row (on the
        tool example 8 rows of 1,027 tokens against a packed row of about 1,500, and 22 GB of memory against 4).
        """
        if not self.share_prefix:
            return None
        p = shared_prefix_length(features)
        if p > 0:
            parts = [(features, p)]
        else:
            groups: dict = {}
            for f in features:
                groups.setdefault(f.get("group", 0), []).append(f)
            parts = [(members, shared_prefix_length(members)) for members in groups.values()]
            if not any(p > 0 for _, p in parts):
                return None
        return parts if self.cost(features, parts) <= self.cost(features, None) else None

    def cost(self, features: list[dict], parts: list[tuple[list[dict], int]] | None) -> float:
        """A step's compute in tokens' worth: the tokens through the model, and ``pair_cost`` per attention pair.

        The packed row attends over all of its length (the mask only hides pairs), so packing examples that share a
        short prefix and are long themselves (retrieved passages in each prompt) costs more than padding them: on the
        help-centre example, 8 rows of about 660 tokens cost about 6,400 tokens' worth padded, 14,800 packed.
        """
        if parts is None:
            width = max(len(f["input_ids"]) for f in features)
            return len(features) * (width + self.pair_cost * width**2)
        tokens = packed_tokens(parts)
        return tokens + self.pair_cost * tokens**2

    def row_tokens(self, features: list[dict]) -> int:
        """Tokens the batch of ``features`` puts through the model (the packed row's length, or rows x width)."""
        parts = self.layout(features)
        if parts is None:
            return len(features) * max(len(f["input_ids"]) for f in features)
        return packed_tokens(parts)

    def padded(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded rows, one per example."""
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
        }
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(f["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = torch.tensor(f["labels"])
        return batch

    @staticmethod
    def packed(features: list[dict], p: int) -> dict[str, torch.Tensor]:
        """One row: the shared prefix once, then every example's own tokens."""
        ids, positions, segments = list(features[0]["input_ids"][:p]), list(range(p)), [0] * p
        targets = [IGNORE_INDEX] * p  # the prefix never predicts a supervised token (shared_prefix_length's cap)
        for k, f in enumerate(features, start=1):
            own = f["input_ids"][p:]
            ids += own
            positions += range(p, p + len(own))
            segments += [k] * len(own)
            targets += list(f["labels"][p + 1 :]) + [IGNORE_INDEX]
        row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
        return {
            "input_ids": row(ids),
            "position_ids": row(positions),
            "segments": row(segments),
            "labels": row(targets),
        }

    @classmethod
    def packed_parts(cls, parts: list[tuple[list[dict], int]]) -> dict[str, torch.Tensor]:
        """One row for several parts, each its prefix once and then its examples' own tokens (``packed``, repeated).

        Examples are numbered 1, 2, ... across the row; the prefixes are segments 0, -1, -2, ... and each example
        attends to the last prefix before it (``prefix_anchor``). Parts without a shared prefix come first, so that
        no prefix precedes their examples.
        """
        rows, examples, prefixes = [], 0, 0
        for members, p in sorted(parts, key=lambda part: part[1] > 0):
            row = cls.packed(members, p)
            segments = row["segments"]
            row["segments"] = torch.where(segments == 0, -prefixes, segments + examples)
            rows.append(row)
            examples, prefixes = examples + len(members), prefixes + (p > 0)
        return {key: torch.cat([row[key] for row in rows], dim=1) for key in rows[0]}


def pair_cost(model: PreTrainedModel) -> float:
    """Attention's compute per (query, key) pair relative to a token's pass through a decoder layer's weights, for
    SDPA or eager attention (which compute every pair of a row); 0 for FlexAttention, which skips masked blocks.
    From the config of a Llama-style layer (query, key, value and output projections, a gated MLP)."""
    config = text_config(model)
    if config._attn_implementation == "flex_attention":
        return 0.0
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    weights = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    return 2 * heads * head_dim / weights  # scores and weighted values: 4 FLOPs per pair and width, 2 per weight


PACKING_ATTENTION = ("sdpa", "eager", "flex_attention")  # attention implementations that take a packed row's structure


def prefix_anchor(seg: torch.Tensor) -> torch.Tensor:
    """For each token of a packed row (``seg``, its segments), the prefix segment its example may attend to: the last
    prefix segment (0, -1, ...) at or before it; a token with no prefix before it gets its own segment."""
    where = torch.arange(len(seg), device=seg.device)
    last = torch.where(seg <= 0, where, -1).cummax(0).values
    return torch.where(last >= 0, seg[last.clamp(min=0)], seg)


def segment_mask(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """4D attention mask for a packed row: causal, and each example sees only its prefix (segment 0, or the last
    prefix segment before it when the row holds several) and itself.

    Boolean (True = may attend); with ``dtype``, additive (0 or the dtype's minimum), as eager attention takes it.
    """
    seg = segments[0]
    allowed = torch.ones(len(seg), len(seg), dtype=torch.bool, device=seg.device).tril()
    allowed &= (seg[:, None] == seg[None, :]) | (seg[None, :] == prefix_anchor(seg)[:, None])
    if dtype is None:
        return allowed[None, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)[
        None, None
    ]


def prefix_or_own(segments: torch.Tensor):
    """The packed row's structure as a FlexAttention mask function: causal, and the prefix or the query's own example."""
    seg = segments[0]
    anchor = prefix_anchor(seg)

    def allowed(batch, head, query, key):
        return (key <= query) & ((seg[query] == seg[key]) | (seg[key] == anchor[query]))

    return allowed


def segment_block_mask(segments: torch.Tensor):
    """The same structure as ``segment_mask`` as a FlexAttention block mask: no dense T x T tensor, and the blocks
    no query may see (other examples) are skipped by the kernel rather than masked after computing them."""
    # deferred: FlexAttention loads only for a model that uses it
    from torch.nn.attention.flex_attention import create_block_mask

    length = segments.shape[1]
    return create_block_mask(prefix_or_own(segments), None, None, length, length, device=segments.device)


def packed_attention_mask(model: PreTrainedModel, segments: torch.Tensor):
    """The packed row's attention mask in the form the model's attention implementation takes.

    SDPA on a CPU gets the additive float32 form: given a boolean mask, PyTorch's CPU kernel converts it to a float
    copy in every layer and keeps each copy for the backward pass (30 layers x T x T x 4 bytes: 330 MB for a
    1,700-token row of the tool example); the additive mask is one tensor that every layer shares. (On a GPU the
    computation runs in bfloat16 under autocast, so the boolean form stays.)
    """
    implementation = model.config._attn_implementation
    if implementation == "flex_attention":
        return segment_block_mask(segments)
    if implementation == "eager":
        return segment_mask(segments, model.get_input_embeddings().weight.dtype)
    return segment_mask(segments, torch.float32 if segments.device.type == "cpu" else None)


# Host memory a training step may take beyond the loaded model on a CPU, in MB: a longer row has some of its decoder
# layers recomputed in the backward pass instead of keeping their activations (``layers_to_checkpoint``). 2 GB keeps
# every row of the bundled examples at default settings unchanged but the tool example's (~1,700 tokens).
ACTIVATION_BUDGET_MB = 2048
# A step's peak memory beyond the model, per decoder layer, in units of the activations the layer keeps for backward
# (``activation_bytes_per_token``), measured with SmolLM2-135M on a CPU (glibc's allocator, 2 threads): a layer
# that keeps them costs about 2.1 (the activations and the allocator's free but unreturned memory), a recomputed
# layer about 0.9 (its part of the allocator's retention, its input and the recompute's transient activations).
KEPT_LAYER_COST, RECOMPUTED_LAYER_COST = 2.1, 0.9


def activation_bytes_per_token(model: PreTrainedModel) -> int:
    """Bytes one decoder layer keeps for the backward pass per token of the row, for a Llama-style layer computing in
    float32 with LoRA on every linear layer: the MLP's four intermediate vectors, the attention's query, key, value
    (grouped-query heads repeated) and output, and four hidden-size vectors (normalised inputs, residuals)."""
    config = text_config(model)
    hidden = config.hidden_size
    heads = config.num_attention_heads * (getattr(config, "head_dim", None) or hidden // config.num_attention_heads)
    return 4 * (4 * (getattr(config, "intermediate_size", None) or 4 * hidden) + 4 * heads + 4 * hidden)


def step_memory_mb(model: PreTrainedModel, tokens: int, recomputed: int = 0) -> float:
    """Estimated peak memory of one training step beyond the loaded model, in MB, for a row of ``tokens`` tokens with
    ``recomputed`` of the decoder's layers checkpointed (see KEPT_LAYER_COST)."""
    layers = text_config(model).num_hidden_layers
    recomputed = min(recomputed, layers)
    per_layer = tokens * activation_bytes_per_token(model) / 2**20
    return per_layer * (KEPT_LAYER_COST * (layers - recomputed) + RECOMPUTED_LAYER_COST * recomputed)


def layers_to_checkpoint(model: PreTrainedModel, tokens: int, budget_mb: float | None = ACTIVATION_BUDGET_MB) -> int:
    """How many decoder layers a row of ``tokens`` tokens must recompute in the backward pass for the step to stay
    within ``budget_mb`` (0 when it fits as is or there is no budget; every layer when even that is over)."""
    layers = text_config(model).num_hidden_layers
    if budget_mb is None or step_memory_mb(model, tokens) <= budget_mb:
        return 0
    return next((k for k in range(1, layers + 1) if step_memory_mb(model, tokens, k) <= budget_mb), layers)


@contextmanager
def checkpointed(layers, count: int):
    """Within the block, the first ``count`` of the decoder ``layers`` keep only their input for the backward pass
    and recompute the rest there (non-reentrant activation checkpointing: the same values, about one forward pass
    of those layers more time). Layers already checkpointed (the model's own setting) stay as they are."""
    changed = []
    for layer in list(layers)[:count]:
        if isinstance(layer, GradientCheckpointingLayer) and not layer.gradient_checkpointing:
            changed.append((layer, dict(layer.__dict__)))
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    try:
        yield
    finally:
        for layer, before in changed:
            for name in ("gradient_checkpointing", "_gradient_checkpointing_func"):
                if name in before:
                    setattr(layer, name, before[name])
                else:
                    delattr(layer, name)


def completion_loss(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], activation_budget_mb: float | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the supervised tokens of a ``CompletionCollator`` batch.

    In the packed layout the shared prompt prefix (usually most of each example) runs once for the whole batch and
    there is no padding; the vocabulary projection runs only where there is a loss. Equal to the plain padded
    full-sequence loss up to float rounding (tested). The batch may sit on any device; it is moved to the model's.
    With ``activation_budget_mb``, a training step on a CPU whose row would take more memory than that recomputes
    some decoder layers in the backward pass (``layers_to_checkpoint``; same loss and gradients).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    where = base.get_input_embeddings().weight.device
    batch = {k: v.to(where, non_blocking=True) for k, v in batch.items()}
    recompute = 0
    if activation_budget_mb is not None and where.type == "cpu" and model.training and torch.is_grad_enabled():
        recompute = layers_to_checkpoint(base, batch["input_ids"].numel(), activation_budget_mb)
    with checkpointed(getattr(decoder, "layers", ()), recompute):
        if "segments" in batch:
            mask = packed_attention_mask(base, batch["segments"])
            hidden = decoder(
                input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False
            ).last_hidden_state
            targets = batch["labels"]
        else:
            # Right-padded rows under the causal mask: no real token attends to a later pad, so the padding mask
            # changes nothing the loss reads, and without it no layer builds a rows x T x T mask.
            hidden = decoder(input_ids=batch["input_ids"], use_cache=False).last_hidden_state[:, :-1]
            targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = base.get_output_embeddings()(hidden[keep]).float()
    return F.cross_entropy(logits, targets[keep])


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches whose order depends only on the seed and the epoch.

    transformers' own sampler draws from the global RNG at the start of each epoch, so a run resumed from a
    checkpoint inside an epoch sees a different order than the uninterrupted run did.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int, groups: list[int] | None = None):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0
        self.groups = groups if groups is not None else [0] * len(lengths)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if len(set(self.groups)) == 1:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        # Several groups (job examples, general replay examples): each batch holds one group, so it shares one prompt
        # prefix and stays packed; batches of all groups are shuffled together, the incomplete ones go last (where
        # the DataLoader joins them into one batch of several groups: CompletionCollator packs it group by group).
        full, partial = [], []
        for group in sorted(set(self.groups)):
            members = [i for i, g in enumerate(self.groups) if g == group]
            order = get_length_grouped_indices(
                [self.lengths[i] for i in members], self.batch_size, generator=generator
            )
            chunks = [
                [members[j] for j in order[k : k + self.batch_size]] for k in range(0, len(order), self.batch_size)
            ]
            full += [c for c in chunks if len(c) == self.batch_size]
            partial += [c for c in chunks if len(c) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for chunk in shuffled + partial for i in chunk])


def longest_row(
    collator: CompletionCollator,
    features: list[dict],
    batch_size: int,
    seed: int,
    epochs: int = 1,
    micro: int | None = None,
) -> int:
    """Tokens of the longest row that training on ``features`` puts through the model in its first ``epochs`` epochs:
    the batches ``SeededLengthGroupedSampler`` forms, split into forward passes of ``micro`` examples (gradient
    accumulation; default: the whole batch), laid out by ``collator``."""
    lengths, groups = [len(f["input_ids"]) for f in features], [f.get("group", 0) for f in features]
    sampler = SeededLengthGroupedSampler(batch_size, lengths, seed, groups)
    step, longest = micro or batch_size, 0
    for epoch in range(max(1, epochs)):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order), step):
            longest = max(longest, collator.row_tokens([features[i] for i in order[start : start + step]]))
    return longest


class CompletionOnlyTrainer(Trainer):
    """Trainer whose loss covers only the answer tokens (see ``completion_loss``), within ``activation_budget_mb`` of
    host memory per step on a CPU."""

    loss_is_scaled_for_ga = False
    activation_budget_mb: float | None = ACTIVATION_BUDGET_MB

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(
            batch, [len(f["input_ids"]) for f in dataset], seed, [f.get("group", 0) for f in dataset]
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean cross-entropy over supervised tokens, with the batch's shared prefix computed once."""
        if self.accelerator.num_processes > 1:
            # Under accelerate launch / torchrun the forward must go through the DistributedDataParallel wrapper so
            # gradients are synchronised: the model's own loss (same definition, without the single-process shortcuts).
            loss = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
            ).loss
        else:
            loss = completion_loss(model, inputs, self.activation_budget_mb)
        return (loss, {"loss": loss}) if return_outputs else loss
