"""05_release's work as one function: the system 04 evaluated, checked as served, gated against the champion (or
the best baseline), registered with its model card and promoted if the gate passes; ``tunebook release`` calls it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunebook import gate, models, publish, registry, release
from tunebook.artifacts import ReleaseResults
from tunebook.errors import TunebookError
from tunebook.pipeline import StepSettings
from tunebook.runfolder import STEPS, RunFolder


@dataclass
class ReleaseSettings(StepSettings):
    """05_release's parameters, checked once (the notebook's parameters cell declares the same names)."""

    base_model: str = "bundled"
    tracking_uri: str = ""
    tolerance: float = 0.02
    alpha: float = 0.05
    regression_max_increase: float = 0.25
    parity_examples: int = 32
    parity_min_agreement: float = 0.95
    latency_examples: int = 20
    require_targets: bool = False
    promote: bool = True
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        self.require_positive("parity_examples", "latency_examples", "eval_batch_size")
        for name in ("alpha", "parity_min_agreement"):
            if not 0 < getattr(self, name) <= 1:
                raise TunebookError(f"{name.upper()} must be in (0, 1], got {getattr(self, name)}.")


def release_run_folder(run_dir: str | Path, parameters: dict) -> ReleaseResults:
    """All of 05_release without the notebook: the same checks, gate, registration, record and results."""
    run, settings = RunFolder(Path(run_dir)), ReleaseSettings.from_parameters(parameters)
    card, test = run.read_job_card(), run.read_splits()["test"]
    baseline, tuned = run.read_scores(run.baseline_scores("best")), run.read_scores(run.tuned_scores)
    system, manifest = run.read_system(), publish.trained_manifest(run)
    base_model = models.resolve_base_model(settings.base_model) if system.needs_language_model else ""
    against = gate.compare(card, baseline, tuned, "tuned" if system.trained else system.variant)
    store = registry.open_registry(settings.tracking_uri, workspace=run.root.parent)
    reference, reference_name, champion_version = gate.reference_predictions(
        store, card, run, test, base_model, settings.eval_batch_size
    )
    parity, speed = release.serving_checks(
        run, base_model, settings.parity_examples, settings.latency_examples, settings.eval_batch_size
    )
    comparison = run.read_comparison()
    verdict = gate.gate(
        card,
        run.read_predictions(run.tuned_predictions),
        reference,
        reference_name,
        regression=comparison.regression_probe,
        parity_result=parity,
        tolerance=settings.tolerance,
        alpha=settings.alpha,
        regression_max_increase=settings.regression_max_increase,
        parity_min_agreement=settings.parity_min_agreement,
        require_targets=settings.require_targets,
        champion_version=champion_version,
        trained=system.trained,
        must_improve=gate.must_improve(store, card, run, system.trained),
    )
    dataset = run.read_dataset_version()
    evidence = publish.Evidence(run, manifest, dataset, baseline, tuned, comparison, verdict, parity, speed, system)
    registered = publish.publish_run(store, card, evidence, settings.promote, settings.base_model)
    publish.record(run, against, publish.lineage(run, card, dataset, manifest))
    results = publish.recorded_results(against, evidence, registered)
    run.write_results(STEPS[5], results)
    return results
