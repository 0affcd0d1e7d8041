"""Publishing a release: its lineage and record, the model card, and the registry version with its evidence."""

from __future__ import annotations

from dataclasses import dataclass

from tunebook import pyfunc
from tunebook.artifacts import (
    Comparison,
    DatasetVersion,
    Gate,
    Lineage,
    Manifest,
    Registered,
    ReleaseComparison,
    ReleaseRecord,
    ReleaseResults,
    Scores,
)
from tunebook.dataset import file_hash
from tunebook.errors import TunebookError
from tunebook.job import JobCard, card_hash
from tunebook.metrics import weak_spots
from tunebook.registration import publish
from tunebook.registry import Registry, find_version
from tunebook.runfolder import MODEL_ARTIFACT, RunFolder


@dataclass
class Evidence:
    """Everything a release is judged and described by, read from the run folder and measured by 05."""

    run: RunFolder
    manifest: Manifest
    dataset: DatasetVersion
    baseline: Scores
    tuned: Scores
    comparison: Comparison
    gate: Gate
    parity: dict
    latency: dict


def lineage(run: RunFolder, card: JobCard, dataset: DatasetVersion, manifest: Manifest) -> Lineage:
    """Where the result came from: job card, dataset version, base model, adapter and metric files, by hash."""
    weights = run.trained_weights()
    files = {
        run.relative(path): file_hash(path) for path in (run.baseline_scores(), run.tuned_scores) if path.is_file()
    }
    return Lineage(
        job=card.name,
        job_card_sha256=card_hash(card),
        dataset_hash=dataset.hash,
        dataset_source=dataset.source,
        base_model=manifest.base_model,
        adapter_sha256=file_hash(weights) if weights else None,
        training_config=manifest.config,
        git_commit=manifest.git_commit,
        files=files,
    )


def record(run: RunFolder, comparison: ReleaseComparison, lineage_info: Lineage) -> ReleaseRecord:
    """Write the release record (comparison + lineage); never overwrite one."""
    result = ReleaseRecord(comparison=comparison, lineage=lineage_info)
    run.write_record(result)
    return result


def _metric_rows(e: Evidence) -> list[str]:
    """Test metrics of this version and of the best baseline, with their bootstrap intervals, as table rows."""
    tuned, baseline, rows = e.tuned.as_dict(), e.baseline.as_dict(), []
    for key in [k for k in tuned["headline_keys"] if k != "n"]:
        cells = []
        for name, scores in (("tuned", tuned), ("baseline", baseline)):
            band = e.comparison.intervals.get(name, {}).get(key)
            cells.append(
                f"{scores[key]:.3f}" + (f" [{band['low']:.3f}, {band['high']:.3f}]" if band else "")
                if isinstance(scores[key], float)
                else str(scores[key])
            )
        rows.append(f"| {key} | {cells[0]} | {cells[1]} |")
    return rows


def _failure_modes(e: Evidence) -> list[str]:
    """What this version is known to get wrong: weak parts, must-never failures, what it broke, warnings, abstention."""
    tuned, comparison = e.tuned.as_dict(), e.comparison
    failures = [f"- weakest parts: {', '.join(weak_spots(tuned))}"]
    if tuned["must_never_failures"]:
        failures.append(
            f"- {tuned['must_never_failures']} must-never failure(s) on the test split: "
            + ", ".join(str(x["id"]) for x in tuned["must_never_examples"][:10])
        )
    if comparison.mcnemar:
        broken = comparison.mcnemar["broken"]
        failures.append(f"- {broken} test example(s) the best baseline got right and this version gets wrong")
    for prefix, found in (("general behaviour: ", comparison.regression_probe), ("", comparison.overfitting)):
        if found and found.get("warning"):
            failures.append(f"- {prefix}{found['warning']}")
    calibration = comparison.calibration
    if calibration and calibration["validation"].get("threshold") is not None:
        kept = calibration["test"]
        accuracy = (
            "no test case is that confident"
            if kept["accuracy"] is None
            else f"accuracy {kept['accuracy']:.2f} on them"
        )
        failures.append(
            f"- below confidence {calibration['validation']['threshold']:.2f}, send the case to a person "
            f"(keeps {kept['coverage']:.0%} of test cases; {accuracy})"
        )
    return failures


def model_card(card: JobCard, version: str, evidence: Evidence) -> str:
    """A model card in markdown: intended use, lineage, training, test metrics with intervals, gate, known failure
    modes. (Long because it is the card's template, one line per line of markdown.)"""
    e = evidence
    tuned, baseline, comparison, manifest, dataset = (
        e.tuned.as_dict(),
        e.baseline.as_dict(),
        e.comparison,
        e.manifest,
        e.dataset,
    )
    rows, failures, config, paired = _metric_rows(e), _failure_modes(e), manifest.config, comparison.mcnemar
    checks = "\n".join(
        f"| {c.check} | {'pass' if c.passed else 'FAIL'}{'' if c.blocking else ' (not blocking)'} | {c.detail} |"
        for c in e.gate.checks
    )
    lines = [
        f"# {card.name} · version {version}",
        "",
        "## Intended use",
        "",
        card.description.strip(),
        "",
        f"Task kind: {card.task_kind}. Use it only behind tunebook's prompt for this job card "
        f"(`tunebook predict --job {card.name}`); it was neither trained nor evaluated for anything else.",
        "",
        "## Lineage",
        "",
        f"- job card sha256 `{card_hash(card)[:16]}`; dataset version `{dataset.hash[:16]}` from `{dataset.source.path}`",
        "- splits: " + ", ".join(f"{name} {part.rows} rows" for name, part in dataset.splits.items()),
        f"- base model `{manifest.base_model.get('name')}` (sha256 `{str(manifest.base_model.get('sha256'))[:16]}`)",
        f"- run folder `{e.run.root.resolve()}`; git commit `{manifest.git_commit}`",
        "",
        "## Training",
        "",
        f"- method: {manifest.method}"
        + (
            ""
            if manifest.full_fine_tune
            else f", LoRA r {config['lora_r']}, alpha {config['lora_alpha']}, targets {config['target_modules']}"
        ),
        f"- learning rate {config.get('learning_rate_used', config['learning_rate'])}, batch {config['batch_size']}, "
        f"{manifest.steps} steps (best {manifest.best_step}), seed {config['seed']}",
        f"- validation loss {manifest.val_loss_before:.3f} -> {manifest.val_loss_after:.3f}; "
        f"{manifest.wall_time_s:.0f} s on {manifest.device}",
        "",
        f"## Test split ({tuned['n']} examples; 95% bootstrap intervals)",
        "",
        f"| metric | this version | best baseline ({baseline.get('variant', 'prompting')}) |",
        "|---|---|---|",
        *rows,
        "",
        *(
            [f"Decision rule (fitted on validation): {comparison.decision_rule}.", ""]
            if comparison.decision_rule
            else []
        ),
        *([paired["verdict"], ""] if paired else []),
        "## Release gate",
        "",
        e.gate.verdict,
        "",
        "| check | result | detail |",
        "|---|---|---|",
        checks,
        "",
        "## Serving",
        "",
        f"- merged vs adapter-on-base: {e.parity['detail']}",
        f"- latency per example (one at a time, {e.latency['device']}): p50 {e.latency['p50_ms']:.0f} ms, "
        f"p95 {e.latency['p95_ms']:.0f} ms over {e.latency['n']} examples",
        "",
        "## Known failure modes",
        "",
        *failures,
        "",
    ]
    return "\n".join(lines)


def _metrics_to_log(e: Evidence) -> dict:
    logged = {}
    for name, scores in (("test", e.tuned.as_dict()), ("baseline", e.baseline.as_dict())):
        for key in scores["headline_keys"]:
            logged[f"{name}.{key}"] = scores[key]
    for key, band in e.comparison.intervals.get("tuned", {}).items():
        logged[f"test.{key}.low"], logged[f"test.{key}.high"] = band["low"], band["high"]
    if e.comparison.mcnemar:
        logged["mcnemar_p_value"] = e.comparison.mcnemar["p_value"]
    for key, change in (e.comparison.regression_probe or {}).get("change", {}).items():
        logged[f"general_probe.{key}_change"] = change
    logged["gate.passed"] = float(e.gate.passed)
    logged["parity.agreement"] = e.parity["agreement"]
    logged["latency.p50_ms"], logged["latency.p95_ms"] = e.latency["p50_ms"], e.latency["p95_ms"]
    return logged


def _tags(card: JobCard, e: Evidence, adapter_sha: str) -> dict[str, str]:
    """What a registry version is searched and listed by: origin, hashes, recipe, gate, headline figures."""
    primary = e.tuned.primary
    return {
        "run_dir": str(e.run.root.resolve()),
        "adapter_sha256": adapter_sha,
        "job_card_sha256": card_hash(card),
        "dataset_hash": e.dataset.hash,
        "test_split_sha256": e.dataset.splits["test"].hash,
        "base_model": str(e.manifest.base_model.get("name")),
        "base_sha256": str(e.manifest.base_model.get("sha256")),
        "method": e.manifest.config["method"],
        "quantization": e.manifest.quantization,
        "gate": "passed" if e.gate.passed else "failed",
        "gate_failed": ", ".join(e.gate.failed),
        "gate_reference": e.gate.reference,
        "primary": primary,
        "primary_value": f"{e.tuned.as_dict()[primary]:.4f}",
        "latency_p50_ms": f"{e.latency['p50_ms']:.1f}",
        "latency_p95_ms": f"{e.latency['p95_ms']:.1f}",
        "parity_agreement": f"{e.parity['agreement']:.4f}",
        "decision_rule": e.comparison.decision_rule or "none (the answers are generated)",
        "baseline_variant": str(e.baseline.variant or ""),
    }


def publish_run(
    registry: Registry, card: JobCard, evidence: Evidence, promote: bool = True, base_model: str = "bundled"
) -> Registered:
    """Log the run folder to MLflow and register its model (an MLflow pyfunc model that loads the adapter on
    ``base_model``) as the job's new `challenger` version, promoted to `champion` when the gate passed and
    ``promote`` is set. Writes the gate and the registration; never overwrites."""
    e, run = evidence, evidence.run
    if run.registered.exists():
        raise TunebookError(f"{run.registered} exists: this run folder was already released. Start a new run.")
    weights = run.trained_weights()
    if weights is None:
        raise TunebookError(f"no trained weights in {run.adapter_dir}: run 03_train_qlora first.")
    adapter_sha = file_hash(weights)
    existing = find_version(registry, card.name, "adapter_sha256", adapter_sha)
    if existing is not None:
        raise TunebookError(
            f"this adapter is already version {existing.version} of '{card.name}' in {registry.uri}; "
            "a registry entry is never overwritten. Train a new adapter to release again."
        )
    run.write_gate(e.gate)
    tags = _tags(card, e, adapter_sha)
    params = {
        "job": card.name,
        "task_kind": card.task_kind,
        "base_model": e.manifest.base_model.get("name"),
        "dataset_hash": e.dataset.hash,
        "train": e.manifest.config,
    }

    def card_text(version: str) -> str:
        text = model_card(card, version, e)
        run.model_card.write_text(text, encoding="utf-8")
        return text

    datasets = {
        split: {
            "name": f"{card.name}-{split}",
            "digest": part.hash[:12],
            "source": str(run.split_file(split).resolve()),
            "rows": part.rows,
        }
        for split, part in e.dataset.splits.items()
    }
    result = publish(
        registry,
        card.name,
        run.root.name,
        params,
        _metrics_to_log(e),
        tags,
        run.released_files(),
        MODEL_ARTIFACT,
        card_text,
        promote and e.gate.passed,
        e.gate.champion,
        datasets,
        lambda version, scratch: pyfunc.save_model(run, scratch / MODEL_ARTIFACT, card.name, version, base_model),
    )
    registered = Registered.model_validate(result)
    run.write_registered(registered)
    return registered


def recorded_results(comparison: ReleaseComparison, evidence: Evidence, registered: Registered) -> ReleaseResults:
    """The figures 05_release records: tuned against the best baseline, the gate, the version, parity and latency."""
    e, primary = evidence, comparison.primary
    return ReleaseResults(
        summary=comparison.summary,
        primary=primary,
        baseline=e.baseline.as_dict()[primary],
        tuned=e.tuned.as_dict()[primary],
        tuned_beats_baseline=comparison.tuned_beats_baseline,
        meets_targets=comparison.meets_targets,
        gate_passed=e.gate.passed,
        failed_checks=e.gate.failed,
        version=registered.version,
        promoted=registered.promoted,
        parity_agreement=e.parity["agreement"],
        latency_p50_ms=e.latency["p50_ms"],
        latency_p95_ms=e.latency["p95_ms"],
    )
