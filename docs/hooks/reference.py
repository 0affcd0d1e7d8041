"""MkDocs hook: the reference pages, generated from the code at every build so they cannot drift.

- ``reference/cli.md``: every ``tunebook`` command with its options (argparse's own help);
- ``reference/parameters.md``: each step's parameters from its settings dataclass;
- ``reference/job-card.md``: the job card's fields from its pydantic schema;
- ``reference/run-folder.md``: the run folder's files, from ``RunFolder``'s path properties;
- ``reference/environment.md``: the ``TUNEBOOK_*`` variables the package reads.
"""

from __future__ import annotations

import argparse
import html
import inspect
from pathlib import Path

from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    """Add the generated reference pages to the site."""
    for uri, text in pages().items():
        files.append(File.generated(config, uri, content=text))
    return files


def pages() -> dict[str, str]:
    """Each reference page's path under docs/ and its Markdown."""
    return {
        "reference/cli.md": cli_page(),
        "reference/parameters.md": parameters_page(),
        "reference/job-card.md": job_card_page(),
        "reference/run-folder.md": run_folder_page(),
        "reference/environment.md": environment_page(),
    }


def _text(text: object) -> str:
    """Help text as Markdown: ``<`` and ``>`` escaped outside code spans (``run-<timestamp>`` is not an HTML tag)."""
    parts = str(text).split("`")
    return "`".join(html.escape(p, quote=False) if i % 2 == 0 else p for i, p in enumerate(parts))


def _cell(text: object) -> str:
    return _text(text).replace("|", "\\|").replace("\n", " ")


def cli_page() -> str:
    """Every command of ``tunebook`` and its options, as argparse defines them."""
    from tunebook.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command line",
        "",
        "Generated from `tunebook.cli.build_parser`. `tunebook COMMAND --help` prints the same.",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        lines += [
            f"## `tunebook {name}`",
            "",
            _text(helps.get(name) or ""),
            "",
            "| argument | what it is |",
            "|---|---|",
        ]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest.upper()}`"
            lines.append(f"| {flags} | {_cell(action.help or '')} |")
        lines.append("")
    return "\n".join(lines)


def parameters_page() -> str:
    """Each step's parameters: name, type, default, accepted values and help."""
    from tunebook.workbook.parameters import SETTINGS

    lines = [
        "# Step parameters",
        "",
        "Generated from each step's settings dataclass, the one declaration the notebooks' `parameters` cells, "
        "`tunebook run -p` and the step commands read (`tunebook parameters` prints the same).",
        "",
    ]
    for step, settings in SETTINGS.items():
        lines += [f"## {step}", "", "| parameter | type | default | accepts | what it does |", "|---|---|---|---|---|"]
        for p in settings.parameters():
            accepts = p.constraint.describe() or "any"
            lines.append(f"| `{p.name}` | {p.type_name} | `{p.default!r}` | {_cell(accepts)} | {_cell(p.help)} |")
        lines.append("")
    return "\n".join(lines)


def job_card_page() -> str:
    """The job card's fields with their types and descriptions, from its pydantic schema."""
    from tunebook.card.schema import JobCard

    schema = JobCard.model_json_schema()
    lines = ["# The job card", "", "Generated from `tunebook.card.schema.JobCard` (the file `job.yaml`).", ""]
    sections = [("JobCard", schema)] + sorted(schema.get("$defs", {}).items())
    for name, part in sections:
        properties = part.get("properties", {})
        if not properties:
            continue
        required = set(part.get("required", []))
        title = "`job.yaml`" if name == "JobCard" else f"`{name}`"
        lines += [f"## {title}", "", _cell(part.get("description", "")), ""]
        lines += ["| field | type | required | default | what it is |", "|---|---|---|---|---|"]
        for field, spec in properties.items():
            kind = _type_of(spec)
            default = f"`{spec['default']!r}`" if "default" in spec else ""
            lines.append(
                f"| `{field}` | {_cell(kind)} | {'yes' if field in required else ''} | {_cell(default)} | "
                f"{_cell(spec.get('description', ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _type_of(spec: dict | bool) -> str:
    if not isinstance(spec, dict):
        return "any"
    if "$ref" in spec:
        return spec["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in spec:
        return " or ".join(_type_of(s) for s in spec["anyOf"])
    if spec.get("type") == "array":
        return f"list of {_type_of(spec.get('items', {}))}"
    if spec.get("type") == "object" and "additionalProperties" in spec:
        return f"mapping to {_type_of(spec['additionalProperties'])}"
    if "enum" in spec:
        return " \\| ".join(repr(v) for v in spec["enum"])
    return spec.get("type", "any")


def run_folder_page() -> str:
    """Every file and folder a run folder holds, from ``RunFolder``'s path properties and their docstrings."""
    from tunebook.core.runfolder import RunFolder

    run = RunFolder(Path("RUN"))
    lines = [
        "# The run folder",
        "",
        "Generated from `tunebook.core.runfolder.RunFolder`: every path a step writes or reads goes through it "
        "(a test fails if a module spells one itself). The schemas of the JSON files are in `core/artifacts`.",
        "",
        "| `RunFolder` property | path in the run folder | what it holds |",
        "|---|---|---|",
    ]
    for name, member in inspect.getmembers(RunFolder):
        if isinstance(member, property) and name != "root":
            path = getattr(run, name)
            if isinstance(path, Path):
                doc = inspect.getdoc(member.fget) or ""
                lines.append(f"| `{name}` | `{path.relative_to('RUN').as_posix()}` | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


def environment_page() -> str:
    """The ``TUNEBOOK_*`` environment variables, each with what it sets."""
    from tunebook.core.settings import ENVIRONMENT

    lines = [
        "# Environment variables",
        "",
        "Generated from `tunebook.core.settings.ENVIRONMENT` (a test checks that it names every `TUNEBOOK_*` "
        "variable the package reads, and only those).",
        "",
        "| variable | what it sets |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {_cell(what)} |" for name, what in ENVIRONMENT.items()]
    return "\n".join(lines) + "\n"
