"""Tool selection: one call {"tool": ..., "arguments": {...}}; the tool is scored over the catalogue, then its
arguments are generated after it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tunebook.card.answers import check_tool_call, parse_json
from tunebook.card.schema import JobCard, schema_problems
from tunebook.card.tasks.base import (
    TaskKind,
    choice_problems,
    compact_schema,
    label_figures,
    per_label,
    rate,
    register_kind,
)


@register_kind
class ToolSelection(TaskKind):
    """The answer is a tool call; its metrics are tool accuracy, whole-call match, invalid calls and error cost."""

    name = "tool_selection"
    primary = "argument_exact_match"
    scores_choices = True
    json_answer = True
    max_new_tokens = 64

    def card_problems(self, card: JobCard) -> list[str]:
        problems = choice_problems(card, "tools", [tool.name for tool in card.tools])
        for i, tool in enumerate(card.tools):
            problems += [f"tools[{i}].parameters: {p}" for p in schema_problems(tool.parameters)]
        return problems

    def prompt_block(self, card: JobCard) -> list[str]:
        return ['Answer with one JSON object: {"tool": <tool name>, "arguments": {...}}. The tools:'] + [
            f"- {tool.name}: {tool.description} Arguments: {json.dumps(compact_schema(tool.parameters))}"
            for tool in card.tools
        ]

    def overview(self, card: JobCard) -> list[dict]:
        return [
            {
                "tool": tool.name,
                "arguments": ", ".join(tool.parameters.get("properties", {})),
                "description": tool.description,
            }
            for tool in card.tools
        ]

    def canonical(self, card: JobCard, value) -> str:
        """The tool first, then its arguments."""
        if isinstance(value, dict):
            value = {
                "tool": value.get("tool"),
                "arguments": value.get("arguments", {}),
                **{k: v for k, v in value.items() if k not in ("tool", "arguments")},
            }
        return json.dumps(value, ensure_ascii=False)

    def check_answer(self, card: JobCard, value) -> list[str]:
        return check_tool_call(card, value)

    def stratum(self, card: JobCard, target: str) -> str:
        return str(json.loads(target).get("tool"))

    def _calls(self, card: JobCard, predictions: pd.DataFrame) -> list[tuple[dict, object, list[str]]]:
        """Per example: the target call, the parsed prediction and what makes it an invalid call (empty if valid)."""
        found = []
        for r in predictions.itertuples():
            value, error = parse_json(r.prediction)
            found.append((json.loads(r.target), value, [error] if error else check_tool_call(card, value)))
        return found

    @staticmethod
    def _right(calls: list) -> np.ndarray:
        return np.array([not problems and value == truth for truth, value, problems in calls], dtype=bool)

    @staticmethod
    def _valid(calls: list) -> np.ndarray:
        return np.array([not problems for _, _, problems in calls], dtype=bool)

    def correct(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return self._right(self._calls(card, predictions))

    def parts(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        right = self.correct(card, predictions)
        tools = predictions["target"].map(lambda t: json.loads(t)["tool"])
        return {name: ((tools == name).to_numpy(), right) for name in card.choices}

    def usable(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return self._valid(self._calls(card, predictions))

    def metrics(self, card: JobCard, predictions: pd.DataFrame) -> dict:
        """Tool accuracy, whole-call exact match, invalid-call rate, per-tool precision/recall/F1."""
        tools = card.choices
        calls = self._calls(card, predictions)
        true_tools = [truth["tool"] for truth, _, _ in calls]
        pred_tools = [str(value.get("tool") if isinstance(value, dict) else None) for _, value, _ in calls]
        costs = [card.error_cost(t, p) for t, p in zip(true_tools, pred_tools)]
        must_never = [
            {"id": str(row.id), "target": t, "prediction": value.get("tool") if isinstance(value, dict) else None}
            for row, t, p, (_, value, _) in zip(predictions.itertuples(), true_tools, pred_tools, calls)
            if card.is_must_never(t, p)
        ]
        n = len(predictions)
        figures = label_figures(tools, true_tools, pred_tools)
        return self._frame(
            [
                "n",
                "tool_accuracy",
                "argument_exact_match",
                "invalid_call_rate",
                "cost_weighted_error",
                "must_never_failures",
            ],
            n,
            must_never,
            tool_accuracy=rate(np.asarray(true_tools, dtype=object) == np.asarray(pred_tools, dtype=object)),
            argument_exact_match=rate(self._right(calls)),
            invalid_call_rate=rate(~self._valid(calls)),
            cost_weighted_error=float(np.mean(costs)) if n else 0.0,
            per_tool=per_label(tools, figures),
            confusion_matrix={"labels": tools, "matrix": figures["matrix"].tolist()},
        )
