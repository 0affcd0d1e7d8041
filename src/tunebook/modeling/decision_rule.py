"""Turning a model's probabilities over a fixed set of answers into decisions that respect the job card's costs.

One rule serves every place an answer is chosen from a closed set (classification labels, tool names): the baselines in
02, the tuned model in 04, the release gate in 05 and ``tunebook predict``. Its values are fitted on the validation split
only and stored with the run (and the released version), so test and serving apply them unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from tunebook.card.schema import JobCard
from tunebook.data.examples import answer_frame
from tunebook.errors import TunebookError

RULE_VERSION = 1
_FLOOR = 1e-9  # probabilities below this are treated as this (a log of zero would make a mixture undefined)
MIX_GRID = tuple(round(w, 2) for w in np.linspace(0, 1, 21))


class DecisionRule(BaseModel):
    """How probabilities become an answer: temperature, optional mixture with a second model, cost-aware choice and
    thresholds that route a guarded answer (for example ``escalate``) whenever its probability reaches them."""

    version: int = RULE_VERSION
    choices: list[str]
    temperature: float = Field(default=1.0, gt=0)
    mix_weight: float = Field(default=0.0, ge=0, le=1, description="weight of the second model's log-probabilities")
    mix_with: str | None = Field(default=None, description="name of the second model (e.g. 'classical'), if mixed")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="guarded answer -> probability that routes to it"
    )
    fitted_on: dict = Field(default_factory=dict, description="what the values were chosen on (split, size, figures)")

    def probabilities(self, probs: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
        """Mixed (if fitted so) and calibrated probabilities, shape (n, choices): the weighted log-probabilities of
        the two models, divided by the temperature."""
        logits = np.log(np.clip(np.asarray(probs, dtype=float), _FLOOR, 1))
        if self.mix_weight > 0:
            if other is None:
                raise TunebookError(
                    f"this decision rule mixes in the '{self.mix_with}' model's probabilities; pass them."
                )
            logits = (1 - self.mix_weight) * logits + self.mix_weight * np.log(
                np.clip(np.asarray(other, dtype=float), _FLOOR, 1)
            )
        return np.exp(log_softmax(logits / self.temperature, axis=1))

    def decide(
        self, card: JobCard, probs: np.ndarray, other: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The chosen answers and the probabilities they were chosen from."""
        self._check(card)
        calibrated = self.probabilities(probs, other)
        return choose_answers(card, calibrated, self.thresholds), calibrated

    def _check(self, card: JobCard) -> None:
        if list(self.choices) != list(card.choices):
            raise TunebookError(
                f"the decision rule was fitted for answers {self.choices}, but the job card has {card.choices}."
            )


def decided_frame(
    card: JobCard, examples, probs: np.ndarray, rule: DecisionRule | None = None, other: np.ndarray | None = None
) -> tuple:
    """A prediction frame from probabilities over the card's choices, through ``rule`` (or the most likely choice):
    the examples' id, text, target and tags, the chosen answer as prediction, its confidence and one probability
    per choice; with the chosen answers and the probabilities they were chosen from."""
    if rule is not None:
        chosen, probs = rule.decide(card, probs, other)
    else:
        chosen = np.array(card.choices)[np.asarray(probs).argmax(axis=1)]
    probs = np.asarray(probs, dtype=float)
    result = answer_frame(examples)
    index = [card.choices.index(c) for c in chosen]
    result["confidence"] = np.round(probs[np.arange(len(index)), index], 6) if len(index) else []
    result["prediction"] = chosen
    for j, name in enumerate(card.choices):
        result[f"p_{name}"] = np.round(probs[:, j], 6)
    return result, chosen, probs


def cost_matrix(card: JobCard) -> np.ndarray:
    """Cost of answering column j when the truth is row i, from the card's ``error_costs`` (0 on the diagonal)."""
    return np.array([[card.error_cost(t, p) for p in card.choices] for t in card.choices], dtype=float)


def guarded_choices(card: JobCard) -> list[str]:
    """Answers a must-never rule protects (a true one of these must not be answered otherwise)."""
    return [c for c in card.choices if any(r.actual == c for r in card.must_never)]


def choose_answers(card: JobCard, probs: np.ndarray, thresholds: dict[str, float] | None = None) -> np.ndarray:
    """Per row, the answer with the lowest expected cost; then any guarded answer whose probability reaches its
    threshold overrides it (thresholds are checked in card order, the first reached wins)."""
    expected = np.asarray(probs, dtype=float) @ cost_matrix(card)
    chosen = np.array(card.choices, dtype=object)[expected.argmin(axis=1)]
    for name, threshold in reversed(list((thresholds or {}).items())):
        chosen[np.asarray(probs)[:, card.choices.index(name)] >= threshold] = name
    return chosen.astype(str)


def _nll(probs: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(truth)), truth], _FLOOR, 1))))


def _truth_index(card: JobCard, truth: list[str]) -> np.ndarray:
    unknown = sorted({t for t in truth if t not in card.choices})
    if unknown:
        raise TunebookError(f"validation answers {unknown} are not among the card's choices {card.choices}.")
    return np.array([card.choices.index(t) for t in truth])


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """The temperature that minimises the validation negative log-likelihood (between 0.05 and 20)."""
    logp = np.log(np.clip(probs, _FLOOR, 1))
    best = minimize_scalar(
        lambda t: _nll(np.exp(log_softmax(logp / np.exp(t), axis=1)), truth),
        bounds=(np.log(0.05), np.log(20)),
        method="bounded",
    )
    return float(np.exp(best.x))


def must_never_count(card: JobCard, truth: list[str], answers: np.ndarray) -> int:
    """How many (truth, answer) pairs are must-never failures under the card."""
    return sum(card.is_must_never(t, a) for t, a in zip(truth, answers))


def total_cost(card: JobCard, truth: list[str], answers: np.ndarray) -> float:
    """Sum of the card's error costs over the examples."""
    return float(sum(card.error_cost(t, a) for t, a in zip(truth, answers)))


def fit_thresholds(card: JobCard, probs: np.ndarray, truth: list[str]) -> tuple[dict[str, float], bool]:
    """Per guarded answer, the routing threshold with the lowest validation cost among those that keep the card's
    must-never limit (the highest such threshold on ties); also whether the limit could be met on validation."""
    thresholds: dict[str, float] = {}
    limit = card.targets.must_never_failures
    met = True
    for name in guarded_choices(card):
        column = probs[:, card.choices.index(name)]
        candidates = sorted({1.0 + 1e-9, *column.tolist()}, reverse=True)  # above 1: never route by threshold
        scored = []
        for t in candidates:
            answers = choose_answers(card, probs, {**thresholds, name: t})
            scored.append((must_never_count(card, truth, answers) <= limit, -total_cost(card, truth, answers), t))
        feasible = [s for s in scored if s[0]]
        met = met and bool(feasible)
        # None keeps the limit on validation: route this answer as often as the data allows, and say so.
        best = max(feasible, key=lambda s: (s[1], s[2])) if feasible else scored[-1]
        if best[2] <= 1.0:
            thresholds[name] = float(best[2])
    return thresholds, met


def fit_rule(
    card: JobCard,
    probs: np.ndarray,
    truth: list[str],
    other: np.ndarray | None = None,
    other_name: str | None = None,
    source: str = "validation",
) -> DecisionRule:
    """Fit mixture weight (if a second model's probabilities are given), temperature and routing thresholds on one
    labelled split, never the test split. Weight (over a grid) and temperature minimise the negative log-likelihood."""
    if not card.choices:
        raise TunebookError("a decision rule needs a closed set of answers (classification or tool selection).")
    index = _truth_index(card, truth)
    probs = np.asarray(probs, dtype=float)
    weight, temperature = 0.0, fit_temperature(probs, index) if len(index) else 1.0
    if other is not None and len(index):
        fits = []
        for w in MIX_GRID:  # each weight with its own temperature; the pair with the lowest validation loss wins
            mixed = DecisionRule(choices=card.choices, mix_weight=w, mix_with=other_name).probabilities(probs, other)
            t = fit_temperature(mixed, index)
            fits.append((_nll(DecisionRule(choices=card.choices, temperature=t).probabilities(mixed), index), w, t))
        _, weight, temperature = min(fits)
    rule = DecisionRule(
        choices=card.choices, temperature=temperature, mix_weight=weight, mix_with=other_name if weight else None
    )
    calibrated = rule.probabilities(probs, other)
    thresholds, met = fit_thresholds(card, calibrated, list(truth)) if len(index) else ({}, True)
    answers = choose_answers(card, calibrated, thresholds)
    rule.thresholds = thresholds
    rule.fitted_on = {
        "split": source,
        "n": len(index),
        "nll": _nll(calibrated, index) if len(index) else None,
        "must_never_failures": must_never_count(card, list(truth), answers),
        "must_never_limit_met": met,
        "cost": total_cost(card, list(truth), answers),
    }
    return rule


def save_rule(rule: DecisionRule, path: str | Path) -> Path:
    """Write the rule as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rule.model_dump_json(indent=2))
    return path


def load_rule(path: str | Path) -> DecisionRule:
    """Read a rule written by ``save_rule``, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise TunebookError(f"{path} is missing: the decision rule is fitted on the validation split by 02 / 04.")
    try:
        return DecisionRule.model_validate(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise TunebookError(f"{path}: not a valid decision rule ({error}).") from None


def describe(rule: DecisionRule) -> str:
    """The rule in one plain sentence."""
    parts = [f"temperature {rule.temperature:.2f}"]
    if rule.mix_weight:
        parts.append(f"mixed with the {rule.mix_with} model at weight {rule.mix_weight:.2f}")
    parts.append("lowest expected cost under the card's error_costs")
    parts += [f"'{name}' whenever its probability is at least {t:.3f}" for name, t in rule.thresholds.items()]
    fitted = rule.fitted_on
    where = f" (fitted on {fitted.get('n')} {fitted.get('split')} examples)" if fitted else ""
    return "; ".join(parts) + where
