"""The one place that decides what the model sees, shared by the baseline, training and evaluation."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.data.splits import stratum
from tunebook.errors import TunebookError

if TYPE_CHECKING:
    import pandas as pd

IGNORE_INDEX = -100


def system_prompt(card: JobCard) -> str:
    """The system prompt built from the job card: the task, then the labels, schema, tools or rules."""
    lines = [card.description.strip()]
    if card.instructions.strip():
        lines.append(card.instructions.strip())

    lines += task_of(card).prompt_block(card)
    return "\n".join(lines)


def build_messages(card: JobCard, text: str, shots: list[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """Chat messages for one input: the card's system prompt, optional worked examples, then the input."""
    messages = [{"role": "system", "content": system_prompt(card)}]
    for shot_text, shot_target in shots:
        messages += [{"role": "user", "content": shot_text.strip()}, {"role": "assistant", "content": shot_target}]
    messages.append({"role": "user", "content": text.strip()})
    return messages


def tool_prefix(tool: str) -> str:
    """The start of a tool call up to its arguments; scored per tool, then the arguments are generated."""
    return json.dumps({"tool": tool, "arguments": None})[: -len(" null}")]


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Token id that closes an assistant turn in the chat template."""
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    if tokenizer.eos_token_id is None:
        raise TunebookError("the tokenizer has no end-of-turn or end-of-sequence token; use a chat (instruct) model.")
    return tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the rendered chat, ending where the assistant's answer starts."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_target(tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
    """Token ids of the answer followed by the end-of-turn token, so the model learns to stop."""
    return tokenizer(target, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]


def encode_parts(
    tokenizer: PreTrainedTokenizerBase, card: JobCard, text: str, target: str
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt and of the answer (with its end-of-turn token) for one example."""
    return encode_prompt(tokenizer, build_messages(card, text)), encode_target(tokenizer, target)


def features_from(prompt: list[int], answer: list[int], max_length: int) -> dict[str, list[int]]:
    """Training features: the whole prompt, then the answer cut at ``max_length``; loss only on the answer."""
    return {
        "input_ids": (prompt + answer)[:max_length],
        "attention_mask": [1] * min(max_length, len(prompt) + len(answer)),
        "labels": ([IGNORE_INDEX] * len(prompt) + answer)[:max_length],
    }


def render_text(
    tokenizer: PreTrainedTokenizerBase, card: JobCard, text: str, shots: list[tuple[str, str]] = ()
) -> str:
    """The exact prompt text the model sees for one input, chat template included."""
    return tokenizer.apply_chat_template(build_messages(card, text, shots), tokenize=False, add_generation_prompt=True)


def pick_shots(card: JobCard, train: pd.DataFrame, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """``k`` worked examples from the training split, covering different labels or tools first."""
    if k <= 0 or len(train) == 0:
        return []

    shuffled = train.sample(frac=1.0, random_state=seed)
    groups = shuffled["target"].map(lambda t: stratum(card, t))
    ranked = shuffled.assign(_rank=groups.groupby(groups).cumcount()).sort_values("_rank", kind="stable")
    return list(zip(ranked["text"].head(k), ranked["target"].head(k)))


def show_supervision(tokenizer: PreTrainedTokenizerBase, features: dict[str, list[int]]) -> str:
    """Decode a training example with its supervised (loss-bearing) tokens wrapped in [[...]]."""
    parts, inside = [], False
    for token, label in zip(features["input_ids"], features["labels"]):
        supervised = label != IGNORE_INDEX
        if supervised != inside:
            parts.append("[[" if supervised else "]]")
            inside = supervised
        parts.append(tokenizer.decode([token]))
    return "".join(parts) + ("]]" if inside else "")
