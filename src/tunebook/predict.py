"""Running a model (base or base + adapter) over examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.errors import TunebookError
from tunebook.job import JobCard
from tunebook.models import cache_argument, load_model, load_tokenizer
from tunebook.prompts import build_messages, encode_prompt, encode_target, end_of_turn_id, tool_prefix

MAX_NEW_TOKENS = {"extraction": 96, "tool_selection": 64, "drafting": 160}


def save_predictions(predictions: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame of predictions as JSON lines (UTF-8 kept as is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read predictions written by ``save_predictions`` (ids stay text)."""
    return pd.read_json(path, lines=True, dtype={"id": str})


def load_for_inference(
    base_model: str, adapter_dir: str | Path | None = None, quantization: str = "none"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a resolved base model, optionally with a LoRA adapter (or a fully fine-tuned model) from ``adapter_dir``, in eval mode."""
    tokenizer = load_tokenizer(base_model)
    if adapter_dir is not None and quantization == "full":
        model = load_model(str(_checked(Path(adapter_dir), "config.json")), "full")
    else:
        model = load_model(base_model, quantization)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, str(_checked(Path(adapter_dir), "adapter_config.json")))
    model.eval()
    return model, tokenizer


def _checked(folder: Path, marker: str) -> Path:
    if not (folder / marker).is_file():
        raise TunebookError(f"no trained model in {folder} ({marker} missing): run 03_train_qlora first.")
    return folder


def _pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _candidates(tokenizer: PreTrainedTokenizerBase, card: JobCard) -> list[list[int]]:
    if card.task_kind == "tool_selection":
        return [tokenizer(tool_prefix(name), add_special_tokens=False)["input_ids"] for name in card.choices]
    return [encode_target(tokenizer, name) for name in card.choices]


@torch.no_grad()
def label_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = True,
    shots: list[tuple[str, str]] = (),
) -> np.ndarray:
    """Log-likelihood of every allowed answer for each text, shape (n_texts, n_choices).

    Classification scores each label plus the end-of-turn token; tool selection scores each tool's call prefix.
    Each batch of prompts runs once; its key/value cache is then shared by all candidates.
    """
    candidates = _candidates(tokenizer, card)
    k = len(candidates)
    cand_ids, cand_mask = _pad(candidates, tokenizer.pad_token_id, left=False)
    width = cand_ids.shape[1]
    dev = next(model.parameters()).device
    cache_arg = cache_argument(model)
    scores = np.zeros((len(texts), k), dtype=np.float64)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="scoring labels", disable=not progress, total=len(starts)):
        chunk = texts[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, build_messages(card, t, shots))[-max_length:] for t in chunk]
        ids, mask = _pad(prompts, tokenizer.pad_token_id, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev), use_cache=True, logits_to_keep=1
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(k, dim=0)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(k)
        b = len(chunk)
        ids2 = cand_ids.repeat(b, 1)
        mask2 = torch.cat([mask.repeat_interleave(k, dim=0), cand_mask.repeat(b, 1)], dim=1)
        pos2 = mask.sum(-1).repeat_interleave(k)[:, None] + torch.arange(width)[None, :]
        out2 = model(input_ids=ids2.to(dev), attention_mask=mask2.to(dev), position_ids=pos2.to(dev), **{cache_arg: cache})
        rest = torch.log_softmax(out2.logits[:, :-1].float(), dim=-1)
        token_lp = torch.cat(
            [first.gather(1, ids2[:, :1].to(dev)), rest.gather(2, ids2[:, 1:, None].to(dev)).squeeze(-1)], dim=1
        )
        total = (token_lp * cand_mask.repeat(b, 1).to(dev)).sum(-1).view(b, k)
        scores[start : start + b] = total.cpu().numpy()
    return scores


def choose(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    batch_size: int = 8,
    progress: bool = True,
    shots: list[tuple[str, str]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The most likely label or tool for each text, and the probabilities over all choices."""
    scores = label_log_likelihoods(model, tokenizer, card, texts, batch_size, progress=progress, shots=shots)
    probs = torch.softmax(torch.from_numpy(scores), dim=-1).numpy()
    return np.array(card.choices)[probs.argmax(axis=1)], probs


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    prefixes: list[str] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    progress: bool = True,
    shots: list[tuple[str, str]] = (),
) -> list[str]:
    """Greedy answers (batched, with a KV cache, stopping at end of turn); each continues its prefix if given."""
    prefixes = prefixes or [""] * len(texts)
    dev = next(model.parameters()).device
    stop = end_of_turn_id(tokenizer)
    answers: list[str] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="generating", disable=not progress, total=len(starts)):
        chunk = list(zip(texts[start : start + batch_size], prefixes[start : start + batch_size]))
        prompts = [
            encode_prompt(tokenizer, build_messages(card, text, shots)) + tokenizer(prefix, add_special_tokens=False)["input_ids"]
            for text, prefix in chunk
        ]
        ids, mask = _pad(prompts, tokenizer.pad_token_id, left=True)
        out = model.generate(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, use_cache=True,
        )
        for (_, prefix), row in zip(chunk, out[:, ids.shape[1]:].tolist()):
            row = row[: row.index(stop)] if stop in row else row
            answers.append(prefix + tokenizer.decode(row, skip_special_tokens=True))
    return [a.strip() for a in answers]


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    batch_size: int = 8,
    progress: bool = True,
    shots: list[tuple[str, str]] = (),
    max_new_tokens: int | None = None,
) -> pd.DataFrame:
    """One prediction per example, as the card's task kind asks: scored choice, tool call or generated answer."""
    texts = examples["text"].tolist()
    result = examples[["id", "text", "target", "tags"]].reset_index(drop=True).copy()
    budget = max_new_tokens or MAX_NEW_TOKENS.get(card.task_kind, 128)
    if card.task_kind in ("classification", "tool_selection"):
        chosen, probs = choose(model, tokenizer, card, texts, batch_size, progress, shots)
        result["confidence"] = probs.max(axis=1).round(6)
        if card.task_kind == "classification":
            result["prediction"] = chosen
            for j, name in enumerate(card.choices):
                result[f"p_{name}"] = probs[:, j].round(6)
        else:
            prefixes = [tool_prefix(tool) for tool in chosen]
            result["prediction"] = generate(model, tokenizer, card, texts, prefixes, batch_size, budget, progress, shots)
    else:
        result["prediction"] = generate(model, tokenizer, card, texts, None, batch_size, budget, progress, shots)
    return result
