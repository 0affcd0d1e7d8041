"""02_prove_the_baseline's parameters, each declared once with its type, default, constraint and help."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting


@dataclass
class BaselineSettings(StepSettings):
    """02_prove_the_baseline's parameters."""

    STEP = Step.BASELINE
    RUN_DIR_HELP = "run folder after 01_clean_the_data"

    base_model: str = setting("bundled", "bundled | a local model folder | a hub id")
    eval_batch_size: int = setting(16, "examples scored or generated per forward pass", above=0)
    k_shots: int = setting(
        3, "worked examples per prompt in the few-shot and retrieval variants; 0 means zero-shot only", minimum=0
    )
    seed: int = setting(
        0, "seed for drawing the fixed few-shot examples and for the classical model's cross-validation"
    )
    bootstrap_resamples: int = setting(
        500, "resamples of the test split for each variant's interval; workshop profile: 200", above=0
    )
