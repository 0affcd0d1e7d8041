"""00_define_the_job as one function: the job card read and checked, the decision frame, and the step's results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunebook.card.schema import JobCard, card_hash, load_job_card
from tunebook.core.artifacts import Approach, JobResults
from tunebook.core.runfolder import RunFolder, Step
from tunebook.define.approach import decide_approach
from tunebook.define.settings import DefineSettings
from tunebook.errors import TunebookError


@dataclass
class Defined:
    """What 00 recorded: the card as checked, the recommended approach, and the step's results."""

    card: JobCard
    approach: Approach
    results: JobResults


def define_job(run: RunFolder, settings: DefineSettings) -> Defined:
    """Read and check the job card, ask the decision frame, and write the card, the frame and 00's results."""
    card = load_job_card(settings.job_card)
    approach = decide_approach(card)
    results = JobResults(
        job=card.name,
        task_kind=card.task_kind,
        job_card_sha256=card_hash(card),
        approach=approach.approach,
        proceed_to_training=approach.proceed_to_training or settings.force_training,
        forced=settings.force_training and not approach.proceed_to_training,
        force_training=settings.force_training,
    )
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_job_card(card)
    run.write_approach(approach)
    run.write_results(Step.DEFINE, results)
    return Defined(card, approach, results)


def define_run_folder(run_dir: str | Path, parameters: dict) -> Defined:
    """All of 00_define_the_job without the notebook, into a new run folder (one that holds a job card is refused)."""
    run, settings = RunFolder(Path(run_dir)), DefineSettings.from_parameters(parameters)
    if run.job_card.exists():
        raise TunebookError(f"{run.job_card} exists; a run folder is never overwritten. Choose a new RUN_DIR.")
    return define_job(run, settings)
