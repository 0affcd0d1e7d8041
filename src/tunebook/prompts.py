"""The one place that decides what the model sees, shared by the baseline, training and evaluation."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from tunebook.errors import TunebookError
from tunebook.job import JobCard

IGNORE_INDEX = -100


def system_prompt(card: JobCard) -> str:
    """The system prompt built from the job card: the task, the labels and their definitions."""
    lines = [card.description.strip()]
    if card.instructions.strip():
        lines.append(card.instructions.strip())
    lines.append("Answer with exactly one label from this list:")
    lines += [f"- {label.name}: {label.definition}" for label in card.labels]
    return "\n".join(lines)


def build_messages(card: JobCard, text: str) -> list[dict[str, str]]:
    """Chat messages for one input: the card's system prompt, then the input as the user turn."""
    return [{"role": "system", "content": system_prompt(card)}, {"role": "user", "content": text.strip()}]


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


def encode_example(
    tokenizer: PreTrainedTokenizerBase, card: JobCard, text: str, target: str, max_length: int, where: str = "example"
) -> dict[str, list[int]]:
    """Training features for one example: loss only on the answer tokens; the prompt is cut from the left if too long."""
    prompt = encode_prompt(tokenizer, build_messages(card, text))
    answer = encode_target(tokenizer, target)
    if len(answer) >= max_length:
        raise TunebookError(
            f"{where}: the answer alone takes {len(answer)} tokens, more than MAX_LENGTH={max_length}; "
            "no supervised token would survive truncation. Raise MAX_LENGTH."
        )
    prompt = prompt[-(max_length - len(answer)):]
    return {
        "input_ids": prompt + answer,
        "attention_mask": [1] * (len(prompt) + len(answer)),
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
    }


def render_text(tokenizer: PreTrainedTokenizerBase, card: JobCard, text: str) -> str:
    """The exact prompt text the model sees for one input, chat template included."""
    return tokenizer.apply_chat_template(build_messages(card, text), tokenize=False, add_generation_prompt=True)


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
