"""Parsing and checking answers (targets in the data and model outputs) against the job card."""

from __future__ import annotations

import json
import re
from typing import Any

from tunebook.card.schema import JobCard, rule_names

_MARKDOWN = re.compile(r"(^\s{0,3}(#{1,6}\s|[-*+]\s|\d+\.\s|>\s))|(\*\*|__|`)|(\[[^\]]+\]\([^)]+\))", re.M)


def parse_json(text: str) -> tuple[Any, str | None]:
    """Parse a JSON answer; return (value, None) or (None, the reason it is not JSON)."""
    try:
        return json.loads(text), None
    except (json.JSONDecodeError, TypeError) as error:
        return None, f"not valid JSON ({getattr(error, 'msg', error)})"


def schema_errors(value: Any, schema: dict) -> list[str]:
    """Messages for every way ``value`` breaks ``schema`` (empty when valid)."""
    # deferred: jsonschema loads only for an answer checked against a JSON Schema
    from jsonschema import validators

    validator = validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(str(p) for p in error.path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    ]


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
