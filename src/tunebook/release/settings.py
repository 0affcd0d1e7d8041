"""05_release's parameters, each declared once with its type, default, constraint and help."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting


@dataclass
class ReleaseSettings(StepSettings):
    """05_release's parameters."""

    STEP = Step.RELEASE
    RUN_DIR_HELP = "run folder after 04_evaluate"

    base_model: str = setting("bundled", "must be the base model the adapter was trained on")
    tracking_uri: str = setting(
        "", "MLflow store; empty means $MLFLOW_TRACKING_URI, else mlflow.db in the run folder's parent"
    )
    tolerance: float = setting(
        0.02, "largest drop of a class / field / rule rate tolerated before its significance is tested"
    )
    alpha: float = setting(
        0.05, "significance level of the one-sided paired tests behind the drop checks", above=0, maximum=1
    )
    regression_max_increase: float = setting(
        0.25, "largest rise in nats per token on the general probe the gate accepts"
    )
    parity_examples: int = setting(
        32,
        "test examples predicted by both the adapter on its base and the merged model; workshop profile: 16",
        above=0,
    )
    parity_min_agreement: float = setting(0.95, "share of those predictions that must agree", above=0, maximum=1)
    latency_examples: int = setting(
        20, "test examples timed one at a time for p50 and p95; workshop profile: 10", above=0
    )
    require_targets: bool = setting(False, "also block promotion while a card target (accuracy, F1, ...) is missed")
    promote: bool = setting(True, "make the challenger champion when the gate passes")
    eval_batch_size: int = setting(8, "examples per forward pass in the parity probe", above=0)
    export_forms: str = setting(
        "",
        "after registering, export the version as these forms (any of merged,adapter,gguf,ollama), each checked on "
        "the test split; empty: none (`tunebook export` does it later)",
    )
