"""00_define_the_job's parameters, each declared once with its type, default, constraint and help."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting
from tunebook.errors import TunebookError


@dataclass
class DefineSettings(StepSettings):
    """00_define_the_job's parameters."""

    STEP = Step.DEFINE
    RUN_DIR_HELP = "folder for this run's artifacts; `tunebook run` sets it"

    job_card: str = setting("", "path of the job card to use", notebook_default="../examples/support_triage/job.yaml")
    force_training: bool = setting(False, "train even when the decision frame recommends prompting or RAG")

    def check_together(self) -> None:
        """JOB_CARD has no default outside the notebook: the command line must name the card."""
        if not self.job_card:
            raise TunebookError("JOB_CARD is required: the path of the job.yaml that defines the job.")
