"""Batches for completion-only training: the shared prompt prefix packed once per batch, the loss over them, the
seeded length-grouped order of examples, and the Trainer that uses all three."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from tunebook.prompts import IGNORE_INDEX

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


class CompletionCollator:
    """Turns training features into a batch, in one of two layouts.

    Packed (when the examples share a prompt prefix, e.g. the system prompt): one row holding the shared prefix once,
    then each example's remaining tokens, no padding; ``segments`` numbers the examples (0 = the shared prefix) so
    each attends only to the prefix and to itself, ``position_ids`` restart after the prefix for every example, and
    ``labels`` holds the next-token target of every position (-100 where there is no loss).
    Padded (otherwise): the usual right-padded rows with ``attention_mask`` and unshifted ``labels``.
    """

    def __init__(self, pad_token_id: int, share_prefix: bool = True):
        self.pad_token_id = pad_token_id
        self.share_prefix = share_prefix

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Collate ``features`` (dicts of input_ids, attention_mask, labels)."""
        p = shared_prefix_length(features) if self.share_prefix else 0
        return self.packed(features, p) if p > 0 else self.padded(features)

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


PACKING_ATTENTION = ("sdpa", "eager", "flex_attention")  # attention implementations that take a packed row's structure


def segment_mask(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """4D attention mask for a packed row: causal, and each example sees only the prefix (segment 0) and itself.

    Boolean (True = may attend) for SDPA; with ``dtype``, additive (0 or the dtype's minimum) for eager attention.
    """
    seg = segments[0]
    allowed = torch.ones(len(seg), len(seg), dtype=torch.bool, device=seg.device).tril()
    allowed &= (seg[:, None] == seg[None, :]) | (seg[None, :] == 0)
    if dtype is None:
        return allowed[None, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)[
        None, None
    ]


def prefix_or_own(segments: torch.Tensor):
    """The packed row's structure as a FlexAttention mask function: causal, and the prefix or the query's own example."""
    seg = segments[0]

    def allowed(batch, head, query, key):
        return (key <= query) & ((seg[query] == seg[key]) | (seg[key] == 0))

    return allowed


def segment_block_mask(segments: torch.Tensor):
    """The same structure as ``segment_mask`` as a FlexAttention block mask: no dense T x T tensor, and the blocks
    no query may see (other examples) are skipped by the kernel rather than masked after computing them."""
    from torch.nn.attention.flex_attention import create_block_mask

    length = segments.shape[1]
    return create_block_mask(prefix_or_own(segments), None, None, length, length, device=segments.device)


def packed_attention_mask(model: PreTrainedModel, segments: torch.Tensor):
    """The packed row's attention mask in the form the model's attention implementation takes."""
    implementation = model.config._attn_implementation
    if implementation == "flex_attention":
        return segment_block_mask(segments)
    return segment_mask(segments, model.get_input_embeddings().weight.dtype if implementation == "eager" else None)


def completion_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the supervised tokens of a ``CompletionCollator`` batch.

    In the packed layout the shared prompt prefix (usually most of each example) runs once for the whole batch and
    there is no padding; the vocabulary projection runs only where there is a loss. Equal to the plain padded
    full-sequence loss up to float rounding (tested). The batch may sit on any device; it is moved to the model's.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    where = base.get_input_embeddings().weight.device
    batch = {k: v.to(where, non_blocking=True) for k, v in batch.items()}
    if "segments" in batch:
        mask = packed_attention_mask(base, batch["segments"])
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state
        targets = batch["labels"]
    else:
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state[:, :-1]
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
        # prefix and stays packed; batches of all groups are shuffled together, the incomplete ones go last.
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


class CompletionOnlyTrainer(Trainer):
    """Trainer whose loss covers only the answer tokens (see ``completion_loss``)."""

    loss_is_scaled_for_ga = False

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
            loss = completion_loss(model, inputs)
        return (loss, {"loss": loss}) if return_outputs else loss
