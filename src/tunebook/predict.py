"""Running a model (base or base + adapter) over examples."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.errors import TunebookError
from tunebook.job import JobCard
from tunebook.models import load_model, load_tokenizer
from tunebook.prompts import build_messages, encode_prompt, encode_target


def load_for_inference(
    base_model: str, adapter_dir: str | Path | None = None, quantization: str = "none"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a resolved base model, optionally with a LoRA adapter on top, in eval mode."""
    tokenizer = load_tokenizer(base_model)
    model = load_model(base_model, quantization)
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise TunebookError(f"no adapter in {adapter_dir} (adapter_config.json missing): run 03_train_qlora first.")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def _pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _cache_argument(model: PreTrainedModel) -> str:
    """Name of the forward argument that takes a KV cache ('cache' in recent transformers, else 'past_key_values')."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def label_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
) -> np.ndarray:
    """Log-likelihood of every allowed label (answer + end-of-turn) for each text, shape (n_texts, n_labels).

    Each batch of prompts runs once; its key/value cache is then shared by all label candidates.
    """
    candidates = [encode_target(tokenizer, name) for name in card.label_names]
    k = len(candidates)
    cand_ids, cand_mask = _pad(candidates, tokenizer.pad_token_id, left=False)
    width = cand_ids.shape[1]
    dev = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    scores = np.zeros((len(texts), k), dtype=np.float64)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="scoring labels", disable=not progress, total=len(starts)):
        chunk = texts[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, build_messages(card, t))[-max_length:] for t in chunk]
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


def classify(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict a label for each example by scoring every allowed label; returns one row per example."""
    scores = label_log_likelihoods(model, tokenizer, card, examples["text"].tolist(), batch_size, progress=progress)
    probs = torch.softmax(torch.from_numpy(scores), dim=-1).numpy()
    labels = np.array(card.label_names)
    result = examples[["id", "text", "label", "tags"]].reset_index(drop=True).copy()
    result["prediction"] = labels[probs.argmax(axis=1)]
    result["confidence"] = probs.max(axis=1).round(6)
    for j, name in enumerate(labels):
        result[f"p_{name}"] = probs[:, j].round(6)
    return result
