"""Step settings, declared once: each parameter's type, default, constraint and help live on its step's dataclass.

A notebook's ``parameters`` cell is rendered from the same declaration (a test holds the two equal), and the command
line checks and fills parameters from it, so nothing reads a notebook at run time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tunebook.core.runfolder import Step
from tunebook.errors import TunebookError, closest

# Set by the runner for every notebook, never by the user.
RUNNER_PARAMETERS = ("RUN_DIR",)
# Every environment variable tunebook reads (the documentation's reference lists them; a test holds the list whole).
ENVIRONMENT = {
    "TUNEBOOK_CACHE": "folder of the converted base model and other caches (default: ~/.cache/tunebook)",
    "TUNEBOOK_NOTEBOOKS": "the workbook's notebooks folder, for `tunebook run` outside the repository",
    "TUNEBOOK_BASE_MODEL": "where a serving machine keeps the base model, when not where it was at release",
    "TUNEBOOK_INFERENCE_LOG": "the JSON-lines file a served model appends each prediction to (unset: no log)",
    "TUNEBOOK_LOG_TEXT": "full: the inference log keeps each input's text; hash: only its sha256",
}
_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str, "bool": bool}


def setting(
    default: Any,
    help: str,
    *,
    choices: Iterable[str] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    name: str = "",
    notebook_default: Any = None,
) -> Any:
    """A step parameter: its default, help text and constraint, declared on the settings dataclass's field.

    ``minimum`` / ``maximum`` are inclusive bounds, ``above`` / ``below`` exclusive ones; ``name`` overrides the
    parameter's name (the field's name in capitals); ``notebook_default`` is what the notebook's cell holds where it
    differs from the package default (a path relative to the notebooks folder).
    """
    constraint = Constraint(tuple(choices), minimum, maximum, above, below)
    metadata = {"help": help, "constraint": constraint, "name": name, "notebook_default": notebook_default}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Constraint:
    """What values a parameter accepts: one of ``choices``, or a number within the bounds."""

    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None

    def problem(self, value: Any) -> str:
        """Why ``value`` breaks this constraint, or ''."""
        if self.choices and value not in self.choices:
            return f"must be {self.describe()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ""
        broken = (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )
        return f"must be {self.describe()}" if broken else ""

    def describe(self) -> str:
        """The constraint in words, e.g. ">= 0 and <= 1" or "one of drop, keep" ("" for none)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        bounds = (("minimum", ">="), ("above", ">"), ("maximum", "<="), ("below", "<"))
        return " and ".join(f"{sign} {getattr(self, key)}" for key, sign in bounds if getattr(self, key) is not None)


@dataclass
class Parameter:
    """A step parameter as its settings dataclass declares it."""

    name: str
    type_name: str
    default: Any
    help: str
    notebooks: list[str]
    constraint: Constraint = dataclasses.field(default_factory=Constraint)
    notebook_default: Any = None

    @property
    def cell_line(self) -> str:
        """The parameter's line in its notebook's ``parameters`` cell."""
        value = self.default if self.notebook_default is None else self.notebook_default
        literal = json.dumps(value) if isinstance(value, str) else repr(value)
        return f"{self.name}: {self.type_name} = {literal}  # {self.help}"


class StepSettings:
    """Base of a step's settings dataclass: its fields declared with :func:`setting` are the step's parameters."""

    STEP: ClassVar[Step]
    RUN_DIR_HELP: ClassVar[str]  # the notebook's RUN_DIR line says which step's run folder it expects

    def __post_init__(self) -> None:
        problems = []
        for parameter, field in zip(self.parameters(), _declared_fields(type(self)), strict=True):
            value = getattr(self, field.name)
            expected = _TYPES[parameter.type_name]
            if not isinstance(value, expected) or (parameter.type_name != "bool" and isinstance(value, bool)):
                problems.append(f"{parameter.name} must be {parameter.type_name}, got {value!r}")
            elif why := parameter.constraint.problem(value):
                problems.append(f"{parameter.name} {why}, got {value!r}")
        if problems:
            raise TunebookError("; ".join(problems) + ".")
        self.check_together()

    def check_together(self) -> None:
        """Raise an error for a combination of values that no single declaration can refuse (none by default)."""

    @classmethod
    def parameters(cls) -> list[Parameter]:
        """The step's parameters, in declaration order (RUN_DIR, set by the runner, is not among them)."""
        step = getattr(cls, "STEP", "")
        return [
            Parameter(
                f.metadata["name"] or f.name.upper(),
                f.type if isinstance(f.type, str) else f.type.__name__,
                f.default,
                f.metadata["help"],
                [str(step)],
                f.metadata["constraint"],
                f.metadata["notebook_default"],
            )
            for f in _declared_fields(cls)
        ]

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]):
        """Settings from parameter names (NEAR_DUPLICATES, ...); names the step does not declare are ignored, so a
        notebook's namespace (``globals()``) or a whole workbook's parameters can be passed."""
        fields = {p.name: f.name for p, f in zip(cls.parameters(), _declared_fields(cls), strict=True)}
        return cls(**{fields[k]: v for k, v in parameters.items() if k in fields})

    @classmethod
    def cell_source(cls) -> str:
        """The notebook's ``parameters`` cell as this declaration renders it (RUN_DIR first)."""
        run_dir = f'RUN_DIR: str = "../runs/lab"  # {cls.RUN_DIR_HELP}'
        return "\n".join([run_dir, *(p.cell_line for p in cls.parameters())])


def _declared_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields declared with :func:`setting` (others are internal)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def merge_parameters(classes: Iterable[type[StepSettings]]) -> dict[str, Parameter]:
    """Every parameter of these steps by name, each with the notebooks that declare it."""
    found: dict[str, Parameter] = {}
    for cls in classes:
        for parameter in cls.parameters():
            if parameter.name in found:
                found[parameter.name].notebooks.extend(parameter.notebooks)
            else:
                found[parameter.name] = parameter
    return found


def check_parameters(given: dict, declared: dict[str, Parameter]) -> None:
    """Reject unknown names and values of the wrong type or out of range, naming the known parameters."""
    problems = []
    for key, value in given.items():
        if key in RUNNER_PARAMETERS:
            problems.append(f"{key} is set by `tunebook run` itself; use --runs-dir/--name instead")
        elif key not in declared:
            problems.append(f"unknown parameter {key}{closest(key, declared)}")
        else:
            parameter = declared[key]
            expected = _TYPES[parameter.type_name]
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                problems.append(f"{key} must be {parameter.type_name} (default {parameter.default!r}), got {value!r}")
            elif why := parameter.constraint.problem(value):
                problems.append(f"{key} {why}, got {value!r}")
    if problems:
        known = ", ".join(sorted(k for k in declared if k not in RUNNER_PARAMETERS))
        raise TunebookError("bad parameters:\n  - " + "\n  - ".join(problems) + f"\nKnown parameters: {known}")
