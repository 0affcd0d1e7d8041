"""Drafting: a free-text reply under the card's tone and policy rules, each rule checked by a program."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tunebook.card.answers import check_draft
from tunebook.card.schema import JobCard, rule_names
from tunebook.card.tasks.base import TaskKind, rate, register_kind


@register_kind
class Drafting(TaskKind):
    """The answer is a reply; its metrics are each rule's pass rate, all rules passing, and similarity to the reference."""

    name = "drafting"
    primary = "rule_pass_rate"
    max_new_tokens = 160

    def card_problems(self, card: JobCard) -> list[str]:
        if card.rules is None:
            return [
                "rules: a drafting job needs checkable rules (required_patterns, forbidden_phrases, min_words, ...)"
            ]
        problems = []
        for group in ("required_patterns", "echo_patterns"):
            for i, pattern in enumerate(getattr(card.rules, group)):
                try:
                    re.compile(pattern.regex)
                except re.error as error:
                    problems.append(f"rules.{group}[{i}].regex: not a valid regular expression ({error})")
        low, high = card.rules.min_words, card.rules.max_words
        if low is not None and high is not None and low > high:
            problems.append(f"rules: min_words ({low}) is above max_words ({high})")
        names = set(rule_names(card.rules))
        for i, rule in enumerate(card.must_never):
            if rule.rule not in names:
                problems.append(f"must_never[{i}].rule: '{rule.rule}' is not one of the rules {sorted(names)}")
        return problems

    def prompt_block(self, card: JobCard) -> list[str]:
        rules = card.rules
        lines = ["Write the reply under these rules:"]
        lines += [f"- it must match: {p.name} ({p.regex})" for p in rules.required_patterns]
        lines += [f"- repeat every {p.name} that appears in the message" for p in rules.echo_patterns]
        if rules.forbidden_phrases:
            lines.append("- never use these phrases: " + "; ".join(f'"{p}"' for p in rules.forbidden_phrases))
        if rules.min_words is not None or rules.max_words is not None:
            lines.append(f"- between {rules.min_words or 0} and {rules.max_words or 'any number of'} words")
        if rules.plain_text:
            lines.append("- plain text only: no markdown, bullets, emphasis or links")
        if rules.closing_line:
            lines.append(f'- end with the line "{rules.closing_line}"')
        return lines

    def overview(self, card: JobCard) -> list[dict]:
        return [{"rule": name} for name in rule_names(card.rules)]

    def parse_target(self, card: JobCard, raw, source: str) -> tuple[str, list[str]]:
        text = str(raw).strip()
        if not text:
            return "", []
        return text, [f"breaks rule {name}" for name, ok in check_draft(card, text, source).items() if not ok]

    def _checks(self, card: JobCard, predictions: pd.DataFrame) -> list[dict[str, bool]]:
        return [check_draft(card, r.prediction, r.text) for r in predictions.itertuples()]

    def correct(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return self._all_pass(self.parts(card, predictions), len(predictions))

    @staticmethod
    def _all_pass(parts: dict[str, tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
        return np.logical_and.reduce([passed for _, passed in parts.values()]) if parts else np.ones(n, dtype=bool)

    def parts(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        every = np.ones(len(predictions), dtype=bool)
        checks = self._checks(card, predictions)
        return {name: (every, np.array([c[name] for c in checks], dtype=bool)) for name in rule_names(card.rules)}

    def usable(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return predictions["prediction"].fillna("").str.strip().ne("").to_numpy()

    def metrics(self, card: JobCard, predictions: pd.DataFrame) -> dict:
        """Pass rate of each rule, share of drafts passing every rule, and TF-IDF similarity to the reference."""
        n = len(predictions)
        parts = self.parts(card, predictions)
        similarity = 0.0
        if n:
            # deferred: scikit-learn loads when drafts are scored, not whenever a job card is read
            from sklearn.feature_extraction.text import TfidfVectorizer

            vectors = TfidfVectorizer().fit(list(predictions["target"]) + list(predictions["prediction"]))
            refs, preds = vectors.transform(predictions["target"]), vectors.transform(predictions["prediction"])
            similarity = float(np.mean(np.asarray(refs.multiply(preds).sum(axis=1)).ravel()))
        guarded = {rule.rule for rule in card.must_never}
        must_never = [
            {"id": str(row.id), "rule": name}
            for i, row in enumerate(predictions.itertuples())
            for name, (_, passed) in parts.items()
            if name in guarded and not passed[i]
        ]
        return self._frame(
            ["n", "rule_pass_rate", "reference_similarity", "must_never_failures"],
            n,
            must_never,
            rule_pass_rate=rate(self._all_pass(parts, n)),
            reference_similarity=similarity,
            per_rule={name: {"pass_rate": rate(passed)} for name, (_, passed) in parts.items()},
        )

    def trivial_answer(self, card: JobCard, train: pd.DataFrame) -> str:
        """The most typical training reply: the one closest to all others by TF-IDF cosine."""
        from sklearn.feature_extraction.text import TfidfVectorizer  # deferred: as in ``correct``

        vectors = TfidfVectorizer(sublinear_tf=True).fit_transform(train["target"])
        centrality = np.asarray((vectors @ vectors.T).mean(axis=1)).ravel()
        return train["target"].iloc[int(centrality.argmax())]
