"""01_clean_the_data's parameters, each declared once with its type, default, constraint and help."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting


@dataclass
class CleanSettings(StepSettings):
    """01_clean_the_data's parameters."""

    STEP = Step.CLEAN
    RUN_DIR_HELP = "run folder written by 00_define_the_job"

    test_fraction: float = setting(0.2, "share of each label held out for the final test (0-1)", minimum=0, maximum=1)
    val_fraction: float = setting(
        0.1, "share of each label used for validation during training (0-1)", minimum=0, maximum=1
    )
    seed: int = setting(0, "seed of the split; same seed, data and decisions give the same split and hash")
    near_dup_threshold: float = setting(
        0.8,
        "word-shingle Jaccard similarity from which two texts count as near duplicates (0-1)",
        minimum=0,
        maximum=1,
    )
    near_duplicates: str = setting(
        "drop",
        "drop | keep: near duplicates with the same target (the later row is dropped)",
        choices=("drop", "keep"),
    )
    suspect_threshold: float = setting(
        0.6,
        "confidence from which a cross-validated classifier's disagreement is listed for review",
        minimum=0,
        maximum=1,
    )
    min_per_label: int = setting(10, "labels or tools with fewer clean examples are flagged as too rare")
    bad_lines: str = setting(
        "error",
        "error | skip: JSONL lines that are not JSON objects stop the run, or are listed and skipped",
        choices=("error", "skip"),
    )
    decisions_file: str = setting("", "review decisions (YAML) to apply; empty means the policy alone")
    test_file: str = setting(
        "",
        "an existing labelled test set (same columns) kept frozen: checked, never changed; empty means split one off",
    )
    labelled_traffic: str = setting(
        "",
        "labelled traffic from `tunebook export-traffic`, read as candidate rows next to the card's data; empty: none",
    )
    base_model: str = setting("bundled", "tokenizer used to count tokens: bundled | a local model folder | a hub id")
    max_length: int = setting(2048, "longest training example in tokens; the audit counts what it would cut", above=0)
