"""The ways an export drifts from the model that was evaluated, found before any answer is compared: a chat template
that renders another prompt, a BOS token doubled, added or lost, text tokenized differently, a missing stop token."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from tunebook.modeling.prompts import end_of_turn_id


def prompt_drift(
    tokenizer: PreTrainedTokenizerBase,
    training_text: str,
    runtime_text: str,
    training_ids: list[int],
    runtime_ids: list[int],
) -> str | None:
    """Why the prompt a runtime runs differs from the training prompt, or None when they are the same tokens."""
    if training_ids == runtime_ids:
        return None
    bos = tokenizer.bos_token_id
    if bos is not None and runtime_ids[:2] == [bos, bos]:
        return (
            f"doubled BOS: the runtime's prompt starts with {tokenizer.bos_token!r} twice (the template writes one and "
            "the file's add_bos_token adds another); set tokenizer.ggml.add_bos_token false or drop it from the template"
        )
    if bos is not None and runtime_ids == [bos, *training_ids]:
        return (
            f"added BOS: the runtime puts {tokenizer.bos_token!r} in front of a prompt that had none in training "
            "(the file says add_bos_token); set it as the tokenizer had it"
        )
    if bos is not None and training_ids == [bos, *runtime_ids]:
        return f"missing BOS: training prompts start with {tokenizer.bos_token!r}, the runtime's do not"
    if training_text != runtime_text:
        at = next((i for i, (a, b) in enumerate(zip(training_text, runtime_text)) if a != b), None)
        at = min(len(training_text), len(runtime_text)) if at is None else at
        return (
            "chat template differs from training: the runtime renders "
            f"{runtime_text[max(0, at - 20) : at + 30]!r} where training had {training_text[max(0, at - 20) : at + 30]!r}"
        )
    return (
        "tokenization differs: the same prompt text becomes other tokens in the runtime "
        f"({len(runtime_ids)} against {len(training_ids)} in training); the file's pre-tokenizer does not match"
    )


def missing_stop(tokenizer: PreTrainedTokenizerBase, ends_generation) -> str | None:
    """The end-of-turn token the model was trained to close answers with, if the runtime does not stop at it."""
    token = end_of_turn_id(tokenizer)
    if ends_generation(token):
        return None
    text = tokenizer.convert_ids_to_tokens(token)
    return (
        f"missing stop token: {text!r} (id {token}), which the model learned to end its answers with, does not end "
        "generation in the file, so llama.cpp and Ollama would keep writing past the answer; carry it as an EOS or "
        "EOT token"
    )
