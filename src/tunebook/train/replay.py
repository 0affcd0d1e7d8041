"""General examples mixed into training so the adapter keeps the base model's general behaviour.

An adapter trained only on one job learns to answer *everything* the job's way (on the bundled triage example, three
epochs raised the loss on plain instructions by 4.8 nats per token). Replaying general requests, answered by the base
model itself, teaches the adapter where the job ends: with the job's system prompt, answer the job's way; without it,
answer as before. The requests ship with tunebook and are distinct from the general-behaviour probe's texts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from tunebook.core.cache import cache_dir, write_atomically
from tunebook.modeling import models  # its functions looked up at call time (tests replace the model loader)
from tunebook.modeling.prompts import IGNORE_INDEX, encode_prompt, end_of_turn_id

REQUESTS = Path(__file__).resolve().parents[1] / "resources" / "general_instructions.jsonl"  # the package's resources/
# The bundled model's answers, shipped under their cache name: generating them takes ~280 s on 2 CPU cores, which a
# fresh laptop would otherwise pay inside its first training.
SHIPPED_ANSWERS = REQUESTS.parent / "replay"
MAX_ANSWER_TOKENS = 64


def load_requests(path: str | Path = REQUESTS) -> list[str]:
    """The general requests (one JSON object with a ``prompt`` per line)."""
    return [json.loads(line)["prompt"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _cache_file(identity: dict) -> Path:
    key = json.dumps(
        {"base": identity.get("sha256") or identity.get("name"), "max_tokens": MAX_ANSWER_TOKENS}, sort_keys=True
    )
    return cache_dir() / "replay" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


@torch.no_grad()
def base_answers(base_model: str, requests: list[str], batch_size: int = 8) -> list[dict]:
    """The full-precision base model's own greedy answers to ``requests``, each with whether it ended by itself within
    ``MAX_ANSWER_TOKENS``; answers are cached per base model, so each request is answered once per machine (and never,
    for the bundled model's shipped answers)."""

    path = _cache_file(models.model_identity(base_model))
    known = {}
    for source in (SHIPPED_ANSWERS / path.name, path):
        if source.is_file():
            lines = source.read_text(encoding="utf-8").splitlines()
            known.update({item["prompt"]: item for item in map(json.loads, lines)})
    missing = [r for r in dict.fromkeys(requests) if r not in known]
    if missing:
        tokenizer = models.load_tokenizer(base_model)
        model = models.load_model(base_model, "none").eval()
        stop, pad = end_of_turn_id(tokenizer), tokenizer.pad_token_id
        device = next(model.parameters()).device
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            prompts = [encode_prompt(tokenizer, [{"role": "user", "content": r}]) for r in chunk]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=MAX_ANSWER_TOKENS,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad,
            )
            for request, row in zip(chunk, out[:, width:].tolist()):
                ended = stop in row
                row = row[: row.index(stop)] if ended else row
                known[request] = {
                    "prompt": request,
                    "answer": tokenizer.decode(row, skip_special_tokens=True),
                    "ended": ended,
                }
        write_atomically(path, "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in known.values()))
    return [known[r] for r in requests]


def replay_features(tokenizer: PreTrainedTokenizerBase, answers: list[dict], chat: int, max_length: int) -> list[dict]:
    """Training features for general examples: the first ``chat`` requests as chat prompts with the base model's
    answer supervised (the end-of-turn token only where the answer ended), and every answer as plain text, all of it
    supervised, so plain-text continuation stays as it was too. Chat and plain features form separate batch groups."""
    stop = end_of_turn_id(tokenizer)
    features = []
    for number, item in enumerate(answers):
        prompt = encode_prompt(tokenizer, [{"role": "user", "content": item["prompt"]}])
        answer = tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
        if len(answer) < 2 or len(prompt) >= max_length:
            continue
        if number < chat:
            supervised = answer + ([stop] if item["ended"] else [])
            ids = (prompt + supervised)[:max_length]
            features.append(
                {
                    "input_ids": ids,
                    "attention_mask": [1] * len(ids),
                    "labels": ([IGNORE_INDEX] * len(prompt) + supervised)[:max_length],
                    "group": 1,
                }
            )
        plain = answer[:max_length]
        features.append({"input_ids": plain, "attention_mask": [1] * len(plain), "labels": list(plain), "group": 2})
    return features
