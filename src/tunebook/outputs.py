"""Parsing and checking answers (targets in the data and model outputs) against the job card."""

from __future__ import annotations

import json
import re
from typing import Any

from tunebook.job import JobCard, rule_names

_MARKDOWN = re.compile(r"(^\s{0,3}(#{1,6}\s|[-*+]\s|\d+\.\s|>\s))|(\*\*|__|`)|(\[[^\]]+\]\([^)]+\))", re.M)


def parse_json(text: str) -> tuple[Any, str | None]:
    """Parse a JSON answer; return (value, None) or (None, the reason it is not JSON)."""
    try:
        return json.loads(text), None
    except (json.JSONDecodeError, TypeError) as error:
        return None, f"not valid JSON ({getattr(error, 'msg', error)})"


def schema_errors(value: Any, schema: dict) -> list[str]:
    """Messages for every way ``value`` breaks ``schema`` (empty when valid)."""
    from jsonschema import validators

    validator = validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(str(p) for p in error.path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    ]


def canonical(card: JobCard, value: Any) -> str:
    """The one text form of a structured answer: JSON with the schema's field order, or tool then arguments."""
    if card.task_kind == "extraction" and isinstance(value, dict):
        order = list(card.output_schema.get("properties", {}))
        value = {k: value[k] for k in sorted(value, key=lambda k: order.index(k) if k in order else len(order))}
    if card.task_kind == "tool_selection" and isinstance(value, dict):
        value = {
            "tool": value.get("tool"),
            "arguments": value.get("arguments", {}),
            **{k: v for k, v in value.items() if k not in ("tool", "arguments")},
        }
    return json.dumps(value, ensure_ascii=False)


def check_tool_call(card: JobCard, value: Any) -> list[str]:
    """Problems with a tool call ``{"tool": name, "arguments": {...}}`` against the catalogue."""
    if not isinstance(value, dict) or set(value) != {"tool", "arguments"}:
        return ['expected an object with exactly "tool" and "arguments"']
    tools = {tool.name: tool for tool in card.tools}
    if value["tool"] not in tools:
        return [f"unknown tool '{value['tool']}'; the catalogue has {sorted(tools)}"]
    return [f"arguments.{e}" for e in schema_errors(value["arguments"], tools[value["tool"]].parameters)]


def check_draft(card: JobCard, text: str, source: str) -> dict[str, bool]:
    """Pass/fail of every drafting rule for one draft (``source`` is the input it answers)."""
    rules = card.rules
    results: dict[str, bool] = {}
    for pattern in rules.required_patterns:
        results[f"required:{pattern.name}"] = re.search(pattern.regex, text) is not None
    for pattern in rules.echo_patterns:
        wanted = {m.group(0).upper() for m in re.finditer(pattern.regex, source, flags=re.I)}
        results[f"echo:{pattern.name}"] = all(w in text.upper() for w in wanted)
    if rules.forbidden_phrases:
        lowered = text.lower()
        results["no_forbidden_phrases"] = not any(p.lower() in lowered for p in rules.forbidden_phrases)
    if rules.min_words is not None or rules.max_words is not None:
        words = len(text.split())
        results["length"] = (rules.min_words or 0) <= words <= (rules.max_words or words)
    if rules.closing_line:
        results["closing_line"] = text.rstrip().splitlines()[-1:] == [rules.closing_line]
    if rules.plain_text:
        results["plain_text"] = _MARKDOWN.search(text) is None
    assert list(results) == rule_names(rules)
    return results


def target_problems(card: JobCard, raw: Any, source: str) -> tuple[str, list[str]]:
    """Turn a raw target from the data into its canonical text; list what is wrong with it against the card."""
    if card.task_kind == "classification":
        return str(raw).strip(), []
    if card.task_kind == "drafting":
        text = str(raw).strip()
        if not text:
            return "", []
        failed = [name for name, ok in check_draft(card, text, source).items() if not ok]
        return text, [f"breaks rule {name}" for name in failed]
    value, error = (
        (raw, None) if isinstance(raw, (dict, list)) else parse_json(str(raw)) if str(raw).strip() else ("", None)
    )
    if value == "":
        return "", []
    if error:
        return str(raw), [error]
    problems = (
        schema_errors(value, card.output_schema) if card.task_kind == "extraction" else check_tool_call(card, value)
    )
    return canonical(card, value), problems
