"""Errors that reach the user: each names what was wrong, where, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TunebookError(Exception):
    """A problem with the user's input or environment, worded for the user."""


class JobCardError(TunebookError):
    """The job card is invalid; ``problems`` lists one message per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"job card {source} has {len(problems)} problem(s):\n{lines}")


class DataError(TunebookError):
    """The data cannot be used as given."""


class ModelNotFoundError(TunebookError):
    """The base model cannot be found or loaded."""


def closest(name: str, options: Iterable[str]) -> str:
    """Return a ' (did you mean ...?)' hint for the closest option, or ''."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class KnowledgeError(TunebookError):
    """The documents named in the job card's ``knowledge`` section cannot be used as given."""
