"""04_evaluate's parameters, each declared once with its type, default, constraint and help."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting


@dataclass
class EvaluateSettings(StepSettings):
    """04_evaluate's parameters."""

    STEP = Step.EVALUATE
    RUN_DIR_HELP = "run folder after 02_prove_the_baseline and 03_train_qlora"

    base_model: str = setting("bundled", "must be the base model the adapter was trained on")
    eval_batch_size: int = setting(8, "examples scored per forward pass", above=0)
    bootstrap_resamples: int = setting(
        1000, "resamples of the test split for the confidence intervals; workshop profile: 200", above=0
    )
    confidence: float = setting(0.95, "confidence level of the intervals (0-1)", above=0, below=1)
    tag: str = setting("hard", "tag of the edge cases shown as their own slice")
    flips_shown: int = setting(20, "flipped examples listed", minimum=0)
    train_sample: int = setting(
        100, "training examples scored to compare with the test split (overfitting check); 0 skips", minimum=0
    )
    overfit_gap: float = setting(0.15, "train-minus-test gap of the primary metric from which to warn")
    regression_max_increase: float = setting(0.25, "rise in nats per token on the general probe from which to warn")
