"""Running a model (base or base + adapter) over examples."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import Manifest
from tunebook.data.examples import answer_frame
from tunebook.data.splits import stratum
from tunebook.errors import TunebookError
from tunebook.knowledge.render import model_inputs
from tunebook.modeling.decision_rule import DecisionRule, decided_frame, fit_rule
from tunebook.modeling.decoding import PromptPrefix, Shots, generate, label_log_likelihoods
from tunebook.modeling.models import compute_dtype, load_model, load_tokenizer
from tunebook.modeling.prompts import encode_target, tool_prefix


def load_for_inference(
    base_model: str, adapter_dir: str | Path | None = None, quantization: str = "none", *, full: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a resolved base model, optionally with a LoRA adapter (or, ``full``, a fully fine-tuned model) from
    ``adapter_dir``, in eval mode."""
    tokenizer = load_tokenizer(base_model)
    if adapter_dir is not None and full:
        model = load_model(str(_checked(Path(adapter_dir), "config.json")), float32=True)
    else:
        model = load_model(base_model, quantization)
        if adapter_dir is not None:
            model = _with_adapter(model, _checked(Path(adapter_dir), "adapter_config.json"))
    model.eval()
    return model, tokenizer


def load_trained(
    base_model: str, adapter_dir: str | Path, manifest: Manifest
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The trained model in ``adapter_dir`` the way its manifest says it was trained, in eval mode."""
    return load_for_inference(base_model, adapter_dir, manifest.quantization, full=manifest.full_fine_tune)


def merged_model(base_model: str, adapter_dir: str | Path, quantization: str = "none") -> PreTrainedModel:
    """The adapter merged into a full-precision base holding the weights it was trained against: the original
    weights for an unquantized base, the dequantized 4-/8-bit weights for a quantized one. (Merging into a 4-bit
    base re-quantizes and drifts; merging into the original weights of a base the adapter saw quantized drifts too.)"""
    # deferred: only an adapter trained on a quantized base is dequantized for merging
    from peft.utils.integrations import dequantize_bnb_weight, get_bnb_param_type

    full = load_model(base_model, "none")
    if quantization in ("nf4", "int8"):
        quantized = dict(load_model(base_model, quantization).named_modules())
        with torch.no_grad():
            for name, module in full.named_modules():
                source = quantized.get(name)
                if isinstance(module, torch.nn.Linear) and source is not None and get_bnb_param_type(source.weight):
                    weight = dequantize_bnb_weight(source.weight, getattr(source, "state", None))
                    module.weight.copy_(weight.to(module.weight.dtype).reshape(module.weight.shape))
        del quantized
    return _with_adapter(full, adapter_dir).merge_and_unload().eval()


def _with_adapter(model: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """``model`` with the PEFT adapter in ``adapter_dir`` loaded onto it."""
    with warnings.catch_warnings():
        # peft 0.21 reads model.is_gradient_checkpointing, which transformers 5 renamed; harmless, and it would print
        # on every command that loads an adapter (pyproject's test filters list it too)
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(adapter_dir))


def serves_merged(manifest: Manifest) -> bool:
    """Whether a release serves its adapter merged into the weights: a LoRA adapter on an unquantized or 4-bit base,
    on a float32 device."""
    # merged bfloat16 weights would be rounded, and bitsandbytes' 8-bit product runs in float16 (merged float32
    # scores moved by 2e-3 nats): those keep the model exactly as evaluated
    return not (manifest.full_fine_tune or manifest.quantization == "int8" or compute_dtype() != torch.float32)


def load_for_serving(
    base_model: str, adapter_dir: str | Path, manifest: Manifest
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The trained model in ``adapter_dir`` for answering requests, in eval mode: merged (``merged_model``) where
    ``serves_merged``, else as ``load_trained`` loads it."""
    if not serves_merged(manifest):
        return load_trained(base_model, adapter_dir, manifest)
    # W + BA summed once: the answers of the unmerged model (within 1e-4 nats) without a dequantization and two
    # extra products per layer on every request
    adapter_dir = _checked(Path(adapter_dir), "adapter_config.json")
    return merged_model(base_model, adapter_dir, manifest.quantization), load_tokenizer(base_model)


def _checked(folder: Path, marker: str) -> Path:
    if not (folder / marker).is_file():
        raise TunebookError(f"no trained model in {folder} ({marker} missing): run 03_train_qlora first.")
    return folder


def answer_budget(tokenizer: PreTrainedTokenizerBase, targets: Iterable[str]) -> int:
    """A generation budget from the data: the longest answer (end-of-turn token included) in tokens, times 1.25, plus 8.

    Pass the train split's targets; the task kind's ``max_new_tokens`` is the fallback when no budget is given.
    """
    lengths = [
        len(encode_target(tokenizer, t if isinstance(t, str) else json.dumps(t, ensure_ascii=False))) for t in targets
    ]
    if not lengths:
        raise TunebookError("answer_budget needs at least one training answer to measure.")
    return math.ceil(max(lengths) * 1.25 + 8)


def choose(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    batch_size: int = 8,
    progress: bool = True,
    shots: Shots = (),
    prefix: PromptPrefix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The most likely label or tool for each text, and the probabilities over all choices."""
    scores = label_log_likelihoods(
        model, tokenizer, card, texts, batch_size, progress=progress, shots=shots, prefix=prefix
    )
    probs = torch.softmax(torch.from_numpy(scores), dim=-1).numpy()
    return np.array(card.choices)[probs.argmax(axis=1)], probs


def answer_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    probs: np.ndarray,
    rule: DecisionRule | None = None,
    other: np.ndarray | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    shots: Shots = (),
    max_new_tokens: int | None = None,
    prefix: PromptPrefix | None = None,
) -> pd.DataFrame:
    """Predictions from probabilities over the card's choices: through ``rule`` (mixing in the second model's
    probabilities ``other`` if it was fitted so) or, without one, the most likely choice; for tool selection the
    arguments are then generated after the chosen tool."""
    result, chosen, probs = decided_frame(card, examples, probs, rule, other)
    if not task_of(card).choice_is_answer:
        budget = max_new_tokens or task_of(card).max_new_tokens
        texts = model_inputs(examples)
        result["prediction"] = generate(
            model,
            tokenizer,
            card,
            texts,
            [tool_prefix(t) for t in chosen],
            batch_size,
            budget,
            progress,
            shots,
            prefix,
        )
    return result


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    batch_size: int = 8,
    progress: bool = True,
    shots: Shots = (),
    max_new_tokens: int | None = None,
    *,
    rule: DecisionRule | None = None,
    other_model=None,
    prefix: PromptPrefix | None = None,
) -> pd.DataFrame:
    """One prediction per example, as the card's task kind asks: scored choice, tool call or generated answer.

    ``shots``: one list of (text, target) pairs for every example, or one list per example (in row order).
    ``max_new_tokens``: the generation budget, e.g. ``answer_budget(tokenizer, train["target"])``; by default
    the task kind's ``max_new_tokens``. ``rule``: the decision rule fitted on validation (choices only), with
    ``other_model`` (anything with ``predict_proba(texts)``, e.g. the classical model) when the rule mixes one in.
    ``prefix``: the shared prompt start's cache, computed once for this model (``decoding.PromptPrefix``).
    """
    texts = model_inputs(examples)
    if card.choices:
        probs = choose(model, tokenizer, card, texts, batch_size, progress, shots, prefix)[1]
        raw = examples["text"].tolist()
        other = other_model.predict_proba(raw) if rule is not None and rule.mix_weight > 0 else None
        return answer_choices(
            model,
            tokenizer,
            card,
            examples,
            probs,
            rule,
            other,
            batch_size=batch_size,
            progress=progress,
            shots=shots,
            max_new_tokens=max_new_tokens,
            prefix=prefix,
        )
    result = answer_frame(examples)
    budget = max_new_tokens or task_of(card).max_new_tokens
    result["prediction"] = generate(model, tokenizer, card, texts, None, batch_size, budget, progress, shots, prefix)
    return result


class RuledPredictions(NamedTuple):
    """What ``predict_with_rule`` returns."""

    test: pd.DataFrame
    val: pd.DataFrame | None
    rule: DecisionRule | None
    test_probs: np.ndarray | None
    """The model's own probabilities over the choices on the test split, before any rule (None without choices)."""


def predict_with_rule(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    splits: dict[str, pd.DataFrame],
    other_model=None,
    batch_size: int = 8,
    progress: bool = True,
    max_new_tokens: int | None = None,
) -> RuledPredictions:
    """Test predictions through a decision rule fitted on the validation split (mixing in ``other_model`` when that
    lowers the validation loss), with the validation predictions, the rule and the model's own test probabilities.
    Validation predictions come back for classification only (tool arguments there would be generated for nothing);
    task kinds without a fixed set of answers have no rule: their test predictions come back alone."""

    if not card.choices:
        test = predict(model, tokenizer, card, splits["test"], batch_size, progress, max_new_tokens=max_new_tokens)
        return RuledPredictions(test, None, None, None)
    frames, probs, others = {}, {}, {}
    for split in ("val", "test"):
        texts = splits[split]["text"].tolist()
        probs[split] = choose(model, tokenizer, card, model_inputs(splits[split]), batch_size, progress)[1]
        others[split] = other_model.predict_proba(texts) if other_model is not None else None
    truth = [stratum(card, t) for t in splits["val"]["target"]]
    rule = fit_rule(card, probs["val"], truth, others["val"], "classical" if other_model is not None else None)
    # answering validation needs no generation only where the chosen answer is the whole answer
    for split in ("val", "test") if task_of(card).choice_is_answer else ("test",):
        frames[split] = answer_choices(
            model,
            tokenizer,
            card,
            splits[split],
            probs[split],
            rule,
            others[split] if rule.mix_weight else None,
            batch_size=batch_size,
            progress=progress,
            max_new_tokens=max_new_tokens,
        )
    return RuledPredictions(frames["test"], frames.get("val"), rule, probs["test"])
