"""06_monitor's parameters, each declared once with its type, default, constraint and help."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting

AUTO = "auto"  # TRAFFIC_FILE / LABELS_FILE: the job's bundled example traffic, where it has some


@dataclass
class MonitorSettings(StepSettings):
    """06_monitor's parameters."""

    STEP = Step.MONITOR
    RUN_DIR_HELP = "run folder after 05_release"

    base_model: str = setting(
        "bundled", "the base model the released system answers with (ignored by a classical one)"
    )
    tracking_uri: str = setting(
        "", "MLflow store; empty means $MLFLOW_TRACKING_URI, else mlflow.db in the run folder's parent"
    )
    version: str = setting("", "registered version to watch; empty means the version this run folder released")
    traffic_file: str = setting(
        AUTO,
        "inputs sent through the model first; auto: the job's example traffic if it has some; empty sends none",
    )
    traffic_rows: int = setting(
        40, "rows of TRAFFIC_FILE sent; 0 sends the whole file; workshop profile: 40", minimum=0
    )
    log_file: str = setting(
        "", "the inference log to watch; empty means monitoring/inference_log.jsonl in the run folder"
    )
    labels_file: str = setting(
        AUTO,
        "delayed labels (id, label); auto: the traffic file's <name>_labels.csv if it exists; empty: none",
    )
    rollback_on_alert: bool = setting(False, "move the champion back to the version it replaced when a rule fires")
