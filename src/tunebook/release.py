"""Comparing the tuned model with the baseline and recording the result with its lineage."""

from __future__ import annotations

import json
from pathlib import Path

from tunebook.data import file_hash
from tunebook.errors import TunebookError
from tunebook.job import JobCard, card_hash
from tunebook.metrics import check_targets


def check_adapter_matches(manifest: dict, card: JobCard, base_identity: dict) -> None:
    """Refuse an adapter trained for another job or another base model, naming both."""
    if manifest.get("job") != card.name or manifest.get("job_card_sha256") != card_hash(card):
        raise TunebookError(
            f"the adapter was trained for job '{manifest.get('job')}' (card {str(manifest.get('job_card_sha256'))[:12]}), "
            f"but this run's job is '{card.name}' (card {card_hash(card)[:12]}). Train an adapter for this job card."
        )
    trained_on = manifest.get("base_model", {})
    if trained_on.get("sha256") and base_identity.get("sha256") and trained_on["sha256"] != base_identity["sha256"]:
        raise TunebookError(
            f"the adapter was trained on base model '{trained_on.get('name')}' (sha256 {trained_on['sha256'][:12]}), "
            f"but BASE_MODEL is '{base_identity.get('name')}' (sha256 {base_identity['sha256'][:12]}). Use the same base model."
        )


def compare(card: JobCard, baseline: dict, tuned: dict) -> dict:
    """Tuned vs baseline on the headline metrics, with the card's targets checked for the tuned model."""
    keys = [k for k in tuned["headline_keys"] if k != "n"]
    rows = {key: {"baseline": baseline[key], "tuned": tuned[key], "change": tuned[key] - baseline[key]} for key in keys}
    targets = check_targets(card, tuned)
    primary = tuned["primary"]
    beats = tuned[primary] > baseline[primary]
    return {
        "primary": primary,
        "metrics": rows,
        "tuned_beats_baseline": beats,
        "targets": targets,
        "meets_targets": all(t["met"] for t in targets),
        "headline": (
            f"{primary} on the test split: prompting baseline {baseline[primary]:.3f}, tuned adapter {tuned[primary]:.3f} "
            f"({'better' if beats else 'NOT better'} by {tuned[primary] - baseline[primary]:+.3f})"
        ),
    }


def lineage(run_dir: str | Path, card: JobCard, dataset: dict, manifest: dict) -> dict:
    """Where the result came from: job card, dataset version, base model, adapter and metric files, by hash."""
    run_dir = Path(run_dir)
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    files = {
        name: file_hash(run_dir / name)
        for name in ("baseline/metrics.json", "evaluation/metrics.json")
        if (run_dir / name).is_file()
    }
    return {
        "job": card.name,
        "job_card_sha256": card_hash(card),
        "dataset_hash": dataset["hash"],
        "dataset_source": dataset["source"],
        "base_model": manifest["base_model"],
        "adapter_sha256": file_hash(adapter) if adapter.is_file() else None,
        "training_config": manifest["config"],
        "git_commit": manifest.get("git_commit"),
        "files": files,
    }


def record(run_dir: str | Path, comparison: dict, lineage_info: dict) -> Path:
    """Write the release record (comparison + lineage) to ``<run>/release/record.json``; never overwrite one."""
    folder = Path(run_dir) / "release"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "record.json"
    if path.exists():
        raise TunebookError(f"{path} already exists; a release record is never overwritten. Start a new run.")
    path.write_text(json.dumps({"comparison": comparison, "lineage": lineage_info}, indent=2))
    return path
