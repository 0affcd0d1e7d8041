"""Serving checks before a release: the adapter merged into its base, merged-vs-unmerged parity, and latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.card.schema import JobCard
from tunebook.core.artifacts import Latency, Manifest, Parity
from tunebook.core.lineage import check_adapter_matches
from tunebook.errors import TunebookError
from tunebook.modeling.decoding import PromptPrefix
from tunebook.modeling.models import model_identity
from tunebook.modeling.predict import load_trained, merged_model, predict, serves_merged
from tunebook.modeling.system import load_system, read_system, same_answers


def merged_for_parity(base_model: str, adapter_dir: str | Path, manifest: Manifest) -> PreTrainedModel | None:
    """The merged model a serving stack would deploy, or None for a full fine-tune (nothing to merge)."""
    return None if manifest.full_fine_tune else merged_model(base_model, adapter_dir, manifest.quantization)


def served(model: PreTrainedModel, merged: PreTrainedModel | None, manifest: Manifest) -> PreTrainedModel:
    """Of the adapter on its base and the merged copy, the one a release serves (``predict.load_for_serving``)."""
    return merged if merged is not None and serves_merged(manifest) else model


def parity(
    model: PreTrainedModel,
    merged: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    batch_size: int = 8,
) -> Parity:
    """Do the adapter on its base (as evaluated) and the merged model give the same predictions on ``examples``?"""
    if merged is None:
        return Parity(
            applicable=False,
            n=0,
            agreement=1.0,
            detail="a full fine-tune has no adapter to merge: the saved model is what ships",
        )
    ours = predict(model, tokenizer, card, examples, batch_size, progress=False)
    theirs = predict(merged, tokenizer, card, examples, batch_size, progress=False)
    same = (ours["prediction"] == theirs["prediction"]).to_numpy()
    detail = f"{int((~same).sum())} differ" + (
        f" ({', '.join(ours.loc[~same, 'id'].astype(str)[:10])})" if (~same).any() else ""
    )
    gap = float((ours["confidence"] - theirs["confidence"]).abs().max()) if "confidence" in ours else None
    if gap is not None:
        detail += f"; largest confidence difference {gap:.4f}"
    return Parity(
        applicable=True,
        n=len(examples),
        agreement=float(same.mean()) if len(same) else 1.0,
        detail=detail,
        differing=ours.loc[~same, "id"].astype(str).tolist(),
        max_confidence_difference=gap,
    )


def latency(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: JobCard, examples: pd.DataFrame
) -> Latency:
    """Per-example inference time as a service answers (one example at a time, the system prompt's cache computed
    once beforehand, one warm-up call): p50 and p95 in milliseconds."""
    prefix = PromptPrefix(model, tokenizer, card)
    return _one_at_a_time(
        lambda one: predict(model, tokenizer, card, one, batch_size=1, progress=False, prefix=prefix),
        examples,
        str(next(model.parameters()).device),
    )


def _one_at_a_time(answer, examples: pd.DataFrame, device: str) -> Latency:
    """p50 and p95 milliseconds of ``answer`` called on one example at a time, after one warm-up call."""
    if not len(examples):
        raise TunebookError("latency needs at least one example; LATENCY_EXAMPLES must be positive.")
    answer(examples.iloc[:1])
    times = []
    for i in range(len(examples)):
        start = time.perf_counter()
        answer(examples.iloc[i : i + 1])
        times.append((time.perf_counter() - start) * 1000)
    return Latency(
        n=len(times),
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        device=device,
    )


def system_parity(loaded, evaluated: pd.DataFrame, examples: pd.DataFrame, batch_size: int = 8) -> Parity:
    """Does the system as served (``LoadedSystem``) answer ``examples`` as 04 scored them (``evaluated``)?"""
    served_answers = loaded.answer(examples, batch_size)
    expected = evaluated.set_index("id").loc[served_answers["id"]].reset_index()
    same = same_answers(served_answers, expected)
    differing = served_answers.loc[~same, "id"].astype(str).tolist()
    return Parity(
        applicable=True,
        n=len(examples),
        agreement=float(same.mean()) if len(same) else 1.0,
        differing=differing,
        detail=f"no weights to merge: the served system re-answered {len(examples)} test examples, "
        f"{len(differing)} differ from 04's answers" + (f" ({', '.join(differing[:10])})" if differing else ""),
    )


def system_latency(loaded, examples: pd.DataFrame) -> Latency:
    """Per-example time of a loaded system as a service answers (one example at a time, after one warm-up call):
    p50 and p95 in milliseconds."""
    device = "cpu" if loaded.model is None else str(next(loaded.model.parameters()).device)
    return _one_at_a_time(lambda one: loaded.answer(one, 1), examples, device)


def serving_checks(
    run, base_model: str, parity_examples: int, latency_examples: int, batch_size: int = 8
) -> tuple[Parity, Latency]:
    """05's checks of what ships, for any system: does the served form answer as 04 evaluated it (for an adapter:
    merged against adapter-on-base), and how fast does it answer one request at a time."""
    card, test = run.read_job_card(), run.read_splits()["test"]
    if not read_system(run).trained:
        loaded = load_system(run, base_model)
        evaluated = run.read_predictions(run.tuned_predictions)
        checked = system_parity(loaded, evaluated, test.head(parity_examples), batch_size)
        return checked, system_latency(loaded, test.head(latency_examples))
    manifest = run.read_manifest()
    check_adapter_matches(manifest, card, model_identity(base_model))
    model, tokenizer = load_trained(base_model, run.adapter_dir, manifest)
    merged = merged_for_parity(base_model, run.adapter_dir, manifest)
    checked = parity(model, merged, tokenizer, card, test.head(parity_examples), batch_size)
    speed = latency(served(model, merged, manifest), tokenizer, card, test.head(latency_examples))
    return checked, speed
