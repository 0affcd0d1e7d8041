"""Publishing a release: its lineage and record, the model card, and the registry version with its evidence."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tunebook.card.schema import JobCard, card_hash
from tunebook.core.artifacts import (
    Comparison,
    DatasetVersion,
    Gate,
    Latency,
    Lineage,
    Manifest,
    Parity,
    Registered,
    ReleaseComparison,
    ReleaseRecord,
    ReleaseResults,
    Scores,
    System,
)
from tunebook.core.lineage import git_commit
from tunebook.core.runfolder import MODEL_ARTIFACT, RunFolder
from tunebook.core.tables import file_hash
from tunebook.errors import TunebookError
from tunebook.modeling.system import read_system, system_files
from tunebook.registry.register import register_version
from tunebook.registry.store import Registry, find_version
from tunebook.scoring.metrics import weak_spots
from tunebook.serving import pyfunc


@dataclass
class Evidence:
    """Everything a release is judged and described by, read from the run folder and measured by 05."""

    run: RunFolder
    manifest: Manifest | None  # None for a system that trained nothing
    dataset: DatasetVersion
    baseline: Scores
    tuned: Scores
    comparison: Comparison
    gate: Gate
    parity: Parity
    latency: Latency
    system: System | None = None  # read from the run folder when not given
    identity: dict[str, str | None] | None = None  # release_identity, where 05 already computed it

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = read_system(self.run)


def trained_manifest(run: RunFolder) -> Manifest | None:
    """The trained model's manifest, or None where the run's system trained nothing."""
    return run.read_manifest() if read_system(run).trained else None


def system_hash(run: RunFolder) -> str:
    """One sha256 over every file that defines the run's system (for a trained one, its weights included)."""
    digest = hashlib.sha256()
    for path in system_files(run):
        digest.update(path.name.encode() + b"\0" + file_hash(path).encode())
    return digest.hexdigest()


def lineage(run: RunFolder, card: JobCard, dataset: DatasetVersion, manifest: Manifest | None) -> Lineage:
    """Where the result came from: job card, dataset version, base model, system, adapter and metric files, by hash."""
    weights = run.trained_weights() if manifest is not None else None
    files = {
        run.relative(path): file_hash(path) for path in (run.baseline_scores(), run.tuned_scores) if path.is_file()
    }
    files.update({run.relative(path): file_hash(path) for path in system_files(run) if path != weights})
    spec = read_system(run)
    return Lineage(
        job=card.name,
        job_card_sha256=card_hash(card),
        dataset_hash=dataset.hash,
        dataset_source=dataset.source,
        base_model=spec.base_model or {},
        adapter_sha256=file_hash(weights) if weights else None,
        training_config=manifest.config if manifest is not None else {},
        git_commit=manifest.git_commit if manifest is not None else git_commit(),
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
    if comparison.mcnemar is not None:
        broken = comparison.mcnemar.broken
        failures.append(f"- {broken} test example(s) the best baseline got right and this version gets wrong")
    for prefix, found in (("general behaviour: ", comparison.regression_probe), ("", comparison.overfitting)):
        if found and found.warning:
            failures.append(f"- {prefix}{found.warning}")
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
    rows, failures, paired = _metric_rows(e), _failure_modes(e), comparison.mcnemar
    base = e.system.base_model or {}
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
        *(
            [f"- base model `{base.get('name')}` (sha256 `{str(base.get('sha256'))[:16]}`)"]
            if base
            else ["- no language model: it answers without one"]
        ),
        f"- run folder `{e.run.root.resolve()}`; git commit `{manifest.git_commit if manifest else git_commit()}`",
        "",
        "## What ships",
        "",
        f"{e.system.describe()[0].upper()}{e.system.describe()[1:]} (system kind `{e.system.kind}`, variant "
        f"`{e.system.variant}`).",
        "",
        *([e.system.why, ""] if e.system.why else []),
        *(_knowledge_lines(e.system.knowledge, e.dataset) if e.system.knowledge else []),
        *(_training_lines(manifest) if manifest is not None else ["No weights were trained for this version.", ""]),
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
        *([paired.verdict, ""] if paired and baseline.get("variant") != e.system.variant else []),
        *(
            [f"Against the trivial answer: {comparison.mcnemar_trivial.verdict}", ""]
            if comparison.mcnemar_trivial
            else []
        ),
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
        f"- served as evaluated: {e.parity.detail}",
        f"- latency per example (one at a time, {e.latency.device}): p50 {e.latency.p50_ms:.0f} ms, "
        f"p95 {e.latency.p95_ms:.0f} ms over {e.latency.n} examples",
        "",
        "## Known failure modes",
        "",
        *failures,
        "",
    ]
    return "\n".join(lines)


def _training_lines(manifest: Manifest) -> list[str]:
    """The model card's training section."""
    config = manifest.config
    return [
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
    ]


def _metrics_to_log(e: Evidence) -> dict:
    logged = {}
    for name, scores in (("test", e.tuned.as_dict()), ("baseline", e.baseline.as_dict())):
        for key in scores["headline_keys"]:
            logged[f"{name}.{key}"] = scores[key]
    for key, band in e.comparison.intervals.get("tuned", {}).items():
        logged[f"test.{key}.low"], logged[f"test.{key}.high"] = band["low"], band["high"]
    if e.comparison.mcnemar is not None:
        logged["mcnemar_p_value"] = e.comparison.mcnemar.p_value
    for key, change in (e.comparison.regression_probe.change if e.comparison.regression_probe else {}).items():
        logged[f"general_probe.{key}_change"] = change
    logged["gate.passed"] = float(e.gate.passed)
    logged["parity.agreement"] = e.parity.agreement
    logged["latency.p50_ms"], logged["latency.p95_ms"] = e.latency.p50_ms, e.latency.p95_ms
    return logged


def _knowledge_lines(knowledge: dict, dataset) -> list[str]:
    """The model card's lines on the documents a system answers from."""
    lines = [
        f"It answers from documents: knowledge version `{knowledge['version']}` ({knowledge['k']} passages per "
        f"question, retrieved by {knowledge['retriever']}). A new version of the documents is released without "
        "retraining (`tunebook release --knowledge DIR`).",
        "",
    ]
    if dataset.knowledge is not None:
        lines[0] += f" Read from `{dataset.knowledge.folder}`: {dataset.knowledge.articles} articles."
    return lines


def _tags(card: JobCard, e: Evidence, adapter_sha: str | None, system_sha: str) -> dict[str, str]:
    """What a registry version is searched and listed by: origin, hashes, system, recipe, gate, headline figures."""
    primary = e.tuned.primary
    base = e.system.base_model or {}
    return {
        "run_dir": str(e.run.root.resolve()),
        "system_kind": e.system.kind,
        "system_variant": e.system.variant,
        "system_trained": str(e.system.trained).lower(),
        "system_sha256": system_sha,
        **({"adapter_sha256": adapter_sha} if adapter_sha else {}),
        "job_card_sha256": card_hash(card),
        "dataset_hash": e.dataset.hash,
        "test_split_sha256": e.dataset.splits["test"].hash,
        **(
            {"knowledge_version": e.system.knowledge["version"], "retriever": e.system.knowledge["retriever"]}
            if e.system.knowledge
            else {}
        ),
        "base_model": str(base.get("name")),
        "base_sha256": str(base.get("sha256")),
        "method": e.manifest.config["method"] if e.manifest is not None else "none",
        "quantization": e.manifest.quantization if e.manifest is not None else "none",
        "gate": "passed" if e.gate.passed else "failed",
        "gate_failed": ", ".join(e.gate.failed),
        "gate_reference": e.gate.reference,
        "primary": primary,
        "primary_value": f"{e.tuned.as_dict()[primary]:.4f}",
        "latency_p50_ms": f"{e.latency.p50_ms:.1f}",
        "latency_p95_ms": f"{e.latency.p95_ms:.1f}",
        "parity_agreement": f"{e.parity.agreement:.4f}",
        "decision_rule": e.comparison.decision_rule or "none (the answers are generated)",
        "baseline_variant": str(e.baseline.variant or ""),
    }


def release_identity(run: RunFolder, system: System) -> dict[str, str | None]:
    """The registry tags that make a release the same as another: a trained system's adapter together with the
    documents it answers from (a knowledge update of the same adapter is a new release), else the system's files."""
    if not system.trained:
        return {"system_sha256": system_hash(run)}
    weights = run.trained_weights()
    if weights is None:
        raise TunebookError(f"no trained weights in {run.adapter_dir}: run 03_train_qlora first.")
    knowledge = (system.knowledge or {}).get("version")
    return {"adapter_sha256": file_hash(weights), "knowledge_version": knowledge}


def refuse_released(
    registry: Registry, card: JobCard, run: RunFolder, system: System, identity: dict[str, str | None] | None = None
) -> dict[str, str | None]:
    """Raise if this run's system is already a version of the job (a registry entry is never overwritten); return its
    identity (``release_identity``), so a later check can pass it back instead of hashing the weights again."""
    identity = identity or release_identity(run, system)
    existing = find_version(registry, card.name, **identity)
    if existing is not None:
        what = "adapter" if system.trained else "system"
        also = " with these documents" if system.knowledge else ""
        raise TunebookError(
            f"this {what}{also} is already version {existing.version} of '{card.name}' in {registry.uri}; a "
            "registry entry is never overwritten. Make a new run to release again."
        )
    return identity


def publish_run(
    registry: Registry, card: JobCard, evidence: Evidence, promote: bool = True, base_model: str = "bundled"
) -> Registered:
    """Log the run folder to MLflow and register its system (an MLflow pyfunc model that answers with it, loading
    a language model on ``base_model`` where it needs one) as the job's new `challenger` version, promoted to
    `champion` when the gate passed and ``promote`` is set. Writes the gate and the registration; never overwrites."""
    e, run = evidence, evidence.run
    if run.registered.exists():
        raise TunebookError(f"{run.registered} exists: this run folder was already released. Start a new run.")
    # checked again at the last moment: another process may have registered this system since 05 began
    identity = refuse_released(registry, card, run, e.system, e.identity)
    adapter_sha, system_sha = identity.get("adapter_sha256"), system_hash(run)
    run.write_gate(e.gate)
    tags = _tags(card, e, adapter_sha, system_sha)
    params = {
        "job": card.name,
        "task_kind": card.task_kind,
        "system": e.system.kind,
        "base_model": (e.system.base_model or {}).get("name"),
        "dataset_hash": e.dataset.hash,
        "train": e.manifest.config if e.manifest is not None else {},
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
    registered = register_version(
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
        system_kind=e.system.kind,
        system_variant=e.system.variant,
        system_why=e.system.why,
        parity_agreement=e.parity.agreement,
        latency_p50_ms=e.latency.p50_ms,
        latency_p95_ms=e.latency.p95_ms,
    )
