"""A general-behaviour regression probe: did tuning damage what the base model could already do?"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.core.artifacts import GeneralProbe
from tunebook.errors import TunebookError
from tunebook.modeling.prompts import IGNORE_INDEX, encode_prompt, encode_target

PROBE = Path(__file__).resolve().parents[1] / "resources" / "general_probe.jsonl"  # the package's resources/


def load_probe(path: str | Path = PROBE) -> list[dict]:
    """The probe set: short general texts and general instructions with reference answers."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _features(tokenizer: PreTrainedTokenizerBase, item: dict) -> tuple[list[int], list[int]]:
    if item["kind"] == "text":
        ids = tokenizer(item["text"], add_special_tokens=False)["input_ids"]
        return ids, ids
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": item["prompt"]}])
    answer = encode_target(tokenizer, item["answer"])
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


@torch.no_grad()
def probe_losses(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[dict] | None = None
) -> dict[str, float]:
    """Cross-entropy per token on the general texts and on the instruction answers (lower is better)."""
    items = items if items is not None else load_probe()
    totals = {"text": [0.0, 0], "instruction": [0.0, 0]}
    dev = next(model.parameters()).device
    for item in items:
        ids, labels = _features(tokenizer, item)
        logits = model(input_ids=torch.tensor([ids], device=dev)).logits[0, :-1].float()
        targets = torch.tensor(labels[1:], device=dev)
        keep = targets != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
        totals[item["kind"]][0] += loss.item()
        totals[item["kind"]][1] += int(keep.sum())
    return {f"{kind}_loss": total / count for kind, (total, count) in totals.items() if count}


def regression_probe(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    base: PreTrainedModel | None = None,
    max_increase: float = 0.25,
) -> dict:
    """Probe losses of the base model and the tuned one, their change, and a warning past ``max_increase`` nats per token.

    For a LoRA model the base is the same model with its adapter switched off; for a full fine-tune pass ``base``.
    """
    model.eval()
    tuned = probe_losses(model, tokenizer)
    if base is None:
        if not hasattr(model, "disable_adapter"):
            raise TunebookError(
                "a fully fine-tuned model has no adapter to switch off: pass the base model as `base`."
            )
        context = model.disable_adapter()
    else:
        context = nullcontext()
    with context:
        before = probe_losses(base if base is not None else model, tokenizer)
    change = {k: tuned[k] - before[k] for k in tuned}
    worst = max(change, key=change.get)
    warning = None
    if change[worst] > max_increase:
        warning = (
            f"general behaviour regressed: {worst.replace('_', ' ')} rose by {change[worst]:.3f} nats per token "
            f"({before[worst]:.3f} -> {tuned[worst]:.3f}; threshold {max_increase}). The adapter may have over-written "
            "general skills: fewer epochs, a lower learning rate or rank, or mixing general examples into training help."
        )
    return GeneralProbe(
        base=before,
        tuned=tuned,
        change=change,
        max_increase=max_increase,
        regressed=warning is not None,
        warning=warning,
    )
