"""Export parity: each form's answers to the frozen test split, through the runtime that runs it, compared with the
evaluated adapter's own answers (agreement, the primary metric with its interval, an exact paired test)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import FormParity
from tunebook.data.examples import answer_frame
from tunebook.export.checks import missing_stop, prompt_drift
from tunebook.export.runtime import GgufRuntime, choices_grammar
from tunebook.knowledge.render import model_inputs
from tunebook.modeling.prompts import build_messages, encode_prompt, end_of_turn_id, tool_prefix
from tunebook.scoring.metrics import evaluate
from tunebook.scoring.stats import bootstrap, mcnemar

CHOOSERS = ("scores", "grammar")  # how llama.cpp picks a fixed answer: candidate log-probabilities, or a grammar


def same_answer(a: object, b: object) -> bool:
    """Whether two answers are the same: equal JSON values where both parse, else equal text."""
    a, b = str(a).strip(), str(b).strip()
    if a == b:
        return True
    try:
        return json.loads(a) == json.loads(b)
    except (ValueError, TypeError):
        return False


def gguf_drift(runtime: GgufRuntime, tokenizer: PreTrainedTokenizerBase, card: JobCard, texts: list[str]) -> list[str]:
    """The drift between the training prompts and what the GGUF file's runtime runs, on ``texts`` (distinct findings)."""
    found = []
    for text in texts:
        messages = build_messages(card, text)
        training_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        runtime_ids = runtime.prompt_ids(messages)
        runtime_text = runtime.rendered(messages)
        problem = prompt_drift(tokenizer, training_text, runtime_text, encode_prompt(tokenizer, messages), runtime_ids)
        if problem and problem not in found:
            found.append(problem)
    stop = missing_stop(tokenizer, runtime.is_end)
    return found + ([stop] if stop else [])


def gguf_answers(
    runtime: GgufRuntime,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    max_tokens: int,
    chooser: str = "scores",
    progress: bool = True,
) -> pd.DataFrame:
    """One answer per example from llama.cpp: a fixed answer chosen by ``chooser``, else greedy text to a stop."""
    result = answer_frame(examples)
    kind = task_of(card)
    eot = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    answers = []
    for text in tqdm(model_inputs(examples), desc=f"llama.cpp {runtime.path.name}", disable=not progress):
        prompt = runtime.prompt_ids(build_messages(card, text))
        if not card.choices:
            answers.append(runtime.generate(prompt, max_tokens).strip())
        elif kind.choice_is_answer and chooser == "grammar":
            answers.append(runtime.generate(prompt, max_tokens, grammar=choices_grammar(card.choices)).strip())
        elif kind.choice_is_answer:
            candidates = [runtime.tokenize(choice + eot) for choice in card.choices]
            answers.append(card.choices[int(np.argmax(runtime.score_candidates(prompt, candidates)))])
        else:  # a tool call: the tool by its call's start, then its arguments generated after it
            starts = [runtime.tokenize(tool_prefix(tool)) for tool in card.choices]
            tool = card.choices[int(np.argmax(runtime.score_candidates(prompt, starts)))]
            begun = prompt + runtime.tokenize(tool_prefix(tool))
            answers.append((tool_prefix(tool) + runtime.generate(begun, max_tokens)).strip())
    result["prediction"] = answers
    return result


def compare(
    card: JobCard,
    reference: pd.DataFrame,
    answers: pd.DataFrame,
    *,
    form: str,
    runtime: str,
    seconds: float,
    tokens_per_second: float | None,
    problems: list[str],
    min_agreement: float,
    alpha: float,
    resamples: int = 1000,
) -> FormParity:
    """The parity of one form's ``answers`` against the evaluated adapter's ``reference`` on the same examples."""
    reference = reference.reset_index(drop=True)
    answers = answers.set_index("id").loc[reference["id"]].reset_index()
    same = np.array([same_answer(a, b) for a, b in zip(reference["prediction"], answers["prediction"])])
    reference_scores = evaluate(card, reference)
    primary = reference_scores["primary"]
    interval = bootstrap(card, answers, resamples=resamples).loc[primary]
    paired = mcnemar(card, reference, answers, alpha)
    agreement = float(same.mean()) if len(same) else 1.0
    worse = paired.broken > paired.fixed and paired.p_value < alpha
    reasons = list(problems)
    if agreement < min_agreement:
        reasons.append(
            f"agrees with the evaluated adapter on {agreement:.1%} of the test split (< {min_agreement:.0%})"
        )
    if worse:
        reasons.append(
            f"answers worse than the evaluated adapter (broke {paired.broken}, fixed {paired.fixed}, "
            f"exact McNemar p = {paired.p_value:.2g} < {alpha})"
        )
    return FormParity(
        form=form,
        runtime=runtime,
        n=len(reference),
        agreement=agreement,
        differing=reference.loc[~same, "id"].astype(str).tolist()[:20],
        metric=primary,
        value=float(interval["value"]),
        low=float(interval["low"]),
        high=float(interval["high"]),
        reference_value=float(reference_scores[primary]),
        fixed=paired.fixed,
        broken=paired.broken,
        p_value=paired.p_value,
        tokens_per_second=tokens_per_second,
        seconds=seconds,
        problems=problems,
        releasable=not reasons,
        why="; ".join(reasons) if reasons else f"agrees on {agreement:.1%}, not significantly worse",
    )
