"""The lineage of a trained adapter: the environment it was trained in, and the check that it fits a job and base."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from tunebook.card.schema import JobCard, card_hash
from tunebook.core.artifacts import Manifest
from tunebook.errors import TunebookError


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    names = ("tunebook", "torch", "transformers", "peft", "bitsandbytes", "accelerate")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and peak GPU memory allocated, on a GPU), in MB."""
    peak = {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def environment(processes: int) -> dict:
    """Where and with what a model was trained: peak memory, device, processes, package versions, commit, command."""
    return {
        **peak_memory_mb(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "processes": processes,
        "versions": _versions(),
        "git_commit": git_commit(),
        "argv": sys.argv[:1],
    }


def check_adapter_matches(manifest: Manifest, card: JobCard, base_identity: dict) -> None:
    """Refuse an adapter trained for another job or another base model, naming both."""
    if manifest.job != card.name or manifest.job_card_sha256 != card_hash(card):
        raise TunebookError(
            f"the adapter was trained for job '{manifest.job}' (card {manifest.job_card_sha256[:12]}), "
            f"but this run's job is '{card.name}' (card {card_hash(card)[:12]}). Train an adapter for this job card."
        )
    trained_on = manifest.base_model
    if trained_on.get("sha256") and base_identity.get("sha256") and trained_on["sha256"] != base_identity["sha256"]:
        raise TunebookError(
            f"the adapter was trained on base model '{trained_on.get('name')}' (sha256 {trained_on['sha256'][:12]}), "
            f"but BASE_MODEL is '{base_identity.get('name')}' (sha256 {base_identity['sha256'][:12]}). Use the same base model."
        )
