"""Every notebook's parameters, as its step's settings dataclass declares them: what ``tunebook run`` and the step
commands check and fill, and what each notebook's ``parameters`` cell must match."""

from __future__ import annotations

from tunebook.baseline.settings import BaselineSettings
from tunebook.clean.settings import CleanSettings
from tunebook.core.runfolder import Step
from tunebook.core.settings import Parameter, StepSettings, merge_parameters
from tunebook.define.settings import DefineSettings
from tunebook.evaluate.settings import EvaluateSettings
from tunebook.monitor.settings import MonitorSettings
from tunebook.release.settings import ReleaseSettings
from tunebook.train.recipe import TrainSettings

SETTINGS: dict[Step, type[StepSettings]] = {
    Step.DEFINE: DefineSettings,
    Step.CLEAN: CleanSettings,
    Step.BASELINE: BaselineSettings,
    Step.TRAIN: TrainSettings,
    Step.EVALUATE: EvaluateSettings,
    Step.RELEASE: ReleaseSettings,
    Step.MONITOR: MonitorSettings,
}


def declared_parameters() -> dict[str, Parameter]:
    """Every step's parameters by name, each with the notebooks that declare it."""
    return merge_parameters(SETTINGS.values())


def parameter_table(step: str | None = None) -> str:
    """A plain-text table of the parameters of ``step`` (or of every step): name, type, default, constraint, help."""
    steps = [s for s in SETTINGS if step is None or s.startswith(step)]
    lines = []
    for name in steps:
        lines.append(f"{name}:")
        for p in SETTINGS[name].parameters():
            accepts = f" ({p.constraint.describe()})" if p.constraint.describe() else ""
            lines.append(f"  {p.name}: {p.type_name} = {p.default!r}{accepts}\n      {p.help}")
    return "\n".join(lines)
