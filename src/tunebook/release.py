"""Releasing a tuned model: the comparison, the gate, parity and latency, the model card, and the lineage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.data import file_hash, frame_hash
from tunebook.errors import TunebookError
from tunebook.job import JobCard, card_hash
from tunebook.lineage import read_manifest
from tunebook.metrics import check_targets, evaluate, weak_spots
from tunebook.models import load_model, model_identity
from tunebook.predict import load_for_inference, predict, read_predictions
from tunebook.registry import TAG, Registry, champion, download, find_version, publish
from tunebook.serve import fetch_decision
from tunebook.stats import part_drops


def compare(card: JobCard, baseline: dict, tuned: dict) -> dict:
    """Tuned vs baseline on the headline metrics, with the card's targets checked for the tuned model."""
    keys = [k for k in tuned["headline_keys"] if k != "n"]
    rows = {
        key: {"baseline": baseline[key], "tuned": tuned[key], "change": tuned[key] - baseline[key]} for key in keys
    }
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
            f"{primary} on the test split: best baseline ({baseline.get('variant', 'prompting')}) {baseline[primary]:.3f}, "
            f"tuned {tuned[primary]:.3f} "
            f"({'better' if beats else 'NOT better'} by {tuned[primary] - baseline[primary]:+.3f})"
        ),
    }


def trained_weights(adapter_dir: str | Path) -> Path | None:
    """The weights file 03_train_qlora saved: a LoRA adapter's, or a full fine-tune's model; None if neither is there."""
    folder = Path(adapter_dir)
    return next(
        (folder / n for n in ("adapter_model.safetensors", "model.safetensors") if (folder / n).is_file()), None
    )


def lineage(run_dir: str | Path, card: JobCard, dataset: dict, manifest: dict) -> dict:
    """Where the result came from: job card, dataset version, base model, adapter and metric files, by hash."""
    run_dir = Path(run_dir)
    weights = trained_weights(run_dir / "adapter")
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
        "adapter_sha256": file_hash(weights) if weights else None,
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


def gate(
    card: JobCard,
    challenger: pd.DataFrame,
    reference: pd.DataFrame,
    reference_name: str,
    *,
    regression: dict | None,
    parity_result: dict | None,
    tolerance: float = 0.02,
    alpha: float = 0.05,
    regression_max_increase: float = 0.25,
    parity_min_agreement: float = 0.95,
    require_targets: bool = False,
    champion_version: str | None = None,
) -> dict:
    """The release gate: every check with whether it passed, and whether the challenger may be promoted.

    Blocking checks: the card's must-never limit; no class / tool / field / rule (nor whole answers) significantly
    worse than ``reference`` by more than ``tolerance``; the general-behaviour probe under its threshold; merged and
    unmerged predictions agreeing. The card's other targets block only with ``require_targets``.
    """
    scores = evaluate(card, challenger)
    checks = []

    def check(name: str, passed: bool, detail: str, blocking: bool = True) -> None:
        checks.append({"check": name, "passed": bool(passed), "blocking": blocking, "detail": detail})

    limit = card.targets.must_never_failures
    failures = scores["must_never_examples"]
    shown = ", ".join(str(f["id"]) for f in failures[:10]) + (" ..." if len(failures) > 10 else "")
    check(
        "must_never",
        len(failures) <= limit,
        f"{len(failures)} must-never failure(s) on the test split (card allows {limit})"
        + (f": {shown}" if failures else ""),
    )
    drops = part_drops(card, reference, challenger, tolerance, alpha)
    for part, row in drops.iterrows():
        check(
            f"no_drop:{part}",
            not row["significant_drop"],
            f"{row['reference']:.3f} -> {row['candidate']:.3f} on {row['examples']} examples "
            f"(broke {row['broken']}, fixed {row['fixed']}, one-sided p = {row['p_value']:.3g})",
        )
    if regression is None:
        check("general_regression", False, "no general-behaviour probe in evaluation/comparison.json: run 04_evaluate")
    else:
        worst = max(regression["change"], key=regression["change"].get)
        rise = regression["change"][worst]
        check(
            "general_regression",
            rise <= regression_max_increase,
            f"largest rise {worst} {rise:+.3f} nats/token (threshold {regression_max_increase})",
        )
    if parity_result is None:
        check("parity", False, "parity was not checked")
    elif not parity_result["applicable"]:
        check("parity", True, parity_result["detail"])
    else:
        check(
            "parity",
            parity_result["agreement"] >= parity_min_agreement,
            f"merged and adapter-on-base agree on {parity_result['agreement']:.1%} of {parity_result['n']} probe examples "
            f"(need {parity_min_agreement:.0%}); {parity_result['detail']}",
        )
    for target in check_targets(card, scores):
        if target["target"] != "must_never_failures":
            check(
                f"target:{target['target']}",
                target["met"],
                f"{target['achieved']} (card: {target['required']})",
                require_targets,
            )
    failed = [c["check"] for c in checks if c["blocking"] and not c["passed"]]
    missed = [c["check"] for c in checks if not c["blocking"] and not c["passed"]]
    if failed:
        verdict = f"Gate FAILED against {reference_name}: {', '.join(failed)}. The new version stays challenger; champion is unchanged."
    else:
        verdict = f"Gate passed against {reference_name}: every blocking check holds; the challenger may be promoted to champion."
    if missed:
        verdict += f" Card targets still missed (not blocking): {', '.join(m.split(':', 1)[1] for m in missed)}."
    return {
        "passed": not failed,
        "failed": failed,
        "targets_missed": missed,
        "checks": checks,
        "reference": reference_name,
        "champion": champion_version,
        "drops": json.loads(drops.to_json(orient="index")),
        "verdict": verdict,
        "settings": {
            "tolerance": tolerance,
            "alpha": alpha,
            "regression_max_increase": regression_max_increase,
            "parity_min_agreement": parity_min_agreement,
            "require_targets": require_targets,
        },
    }


def merged_model(base_model: str, adapter_dir: str | Path, quantization: str = "none") -> PreTrainedModel:
    """The adapter merged into a full-precision base holding the weights it was trained against: the original
    weights for an unquantized base, the dequantized 4-/8-bit weights for a quantized one. (Merging into a 4-bit
    base re-quantizes and drifts; merging into the original weights of a base the adapter saw quantized drifts too.)"""
    from peft.utils.integrations import dequantize_bnb_weight, get_bnb_param_type

    full = load_model(base_model, "none")
    if quantization in ("nf4", "int8"):
        quantized = dict(load_model(base_model, quantization).named_modules())
        with torch.no_grad():
            for name, module in full.named_modules():
                source = quantized.get(name)
                if isinstance(module, torch.nn.Linear) and source is not None and get_bnb_param_type(source.weight):
                    weight = dequantize_bnb_weight(source.weight, getattr(source, "state", None))
                    module.weight.copy_(weight.to(module.weight.dtype).reshape(module.weight.shape))
        del quantized
    return PeftModel.from_pretrained(full, str(adapter_dir)).merge_and_unload().eval()


def parity(
    model: PreTrainedModel,
    merged: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    examples: pd.DataFrame,
    batch_size: int = 8,
) -> dict:
    """Do the adapter on its base (as evaluated) and the merged model give the same predictions on ``examples``?"""
    if merged is None:
        return {
            "applicable": False,
            "n": 0,
            "agreement": 1.0,
            "detail": "a full fine-tune has no adapter to merge: the saved model is what ships",
        }
    ours = predict(model, tokenizer, card, examples, batch_size, progress=False)
    theirs = predict(merged, tokenizer, card, examples, batch_size, progress=False)
    same = (ours["prediction"] == theirs["prediction"]).to_numpy()
    detail = f"{int((~same).sum())} differ" + (
        f" ({', '.join(ours.loc[~same, 'id'].astype(str)[:10])})" if (~same).any() else ""
    )
    result = {
        "applicable": True,
        "n": len(examples),
        "agreement": float(same.mean()) if len(same) else 1.0,
        "differing": ours.loc[~same, "id"].astype(str).tolist(),
    }
    if "confidence" in ours:
        gap = float((ours["confidence"] - theirs["confidence"]).abs().max())
        result["max_confidence_difference"] = gap
        detail += f"; largest confidence difference {gap:.4f}"
    return {**result, "detail": detail}


def latency(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: JobCard, examples: pd.DataFrame) -> dict:
    """Per-example inference time (one example at a time, after one warm-up call): p50 and p95 in milliseconds."""
    if not len(examples):
        raise TunebookError("latency needs at least one example; LATENCY_EXAMPLES must be positive.")
    predict(model, tokenizer, card, examples.iloc[:1], batch_size=1, progress=False)
    times = []
    for i in range(len(examples)):
        start = time.perf_counter()
        predict(model, tokenizer, card, examples.iloc[i : i + 1], batch_size=1, progress=False)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "n": len(times),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "device": str(next(model.parameters()).device),
    }


def reference_predictions(
    registry: Registry,
    card: JobCard,
    run_dir: str | Path,
    test: pd.DataFrame,
    base_model: str,
    batch_size: int = 8,
    scratch: str | Path | None = None,
) -> tuple[pd.DataFrame, str, str | None]:
    """What the challenger is gated against: the champion's predictions on this test split, or, before the first
    release, the best cheap baseline 02 chose on validation (its stored test predictions, after its decision rule).
    Returns (predictions, a name for them, champion version or None)."""
    current = champion(registry, card.name)
    if current is None:
        frame = read_predictions(Path(run_dir) / "baseline" / "predictions.jsonl")
        variant = json.loads((Path(run_dir) / "baseline" / "metrics.json").read_text()).get("variant", "prompting")
        return frame, f"the best baseline, {variant} (no champion yet)", None
    scratch = Path(scratch or Path(run_dir) / "release" / "champion")
    name = f"champion v{current.version}"
    if current.tags.get(TAG + "test_split_sha256") == frame_hash(test):
        path = download(registry, current, "evaluation/predictions.jsonl", scratch)
        return read_predictions(path), name, str(current.version)
    adapter = download(registry, current, "adapter", scratch)  # another test split: score the champion on this one
    rule, other = fetch_decision(registry, current, scratch)
    manifest = read_manifest(adapter)
    identity = model_identity(base_model)
    if manifest["base_model"].get("sha256") != identity.get("sha256"):
        raise TunebookError(
            f"{name} was trained on base model '{manifest['base_model'].get('name')}' and evaluated on another test split; "
            f"it cannot be re-scored on BASE_MODEL '{identity.get('name')}'. Evaluate both on the same frozen test split (TEST_FILE)."
        )
    model, tokenizer = load_for_inference(base_model, adapter, manifest["config"]["quantization"])
    rescored = predict(model, tokenizer, card, test, batch_size, rule=rule, other_model=other)
    return rescored, f"{name} (re-scored on this test split)", str(current.version)


def model_card(
    card: JobCard,
    version: str,
    run_dir: str | Path,
    manifest: dict,
    dataset: dict,
    baseline: dict,
    tuned: dict,
    comparison: dict,
    gate_result: dict,
    parity_result: dict,
    latency_result: dict,
) -> str:
    """A model card in markdown: intended use, lineage, training, test metrics with intervals, gate, known failure modes."""
    intervals = comparison.get("intervals", {})
    rows = []
    for key in [k for k in tuned["headline_keys"] if k != "n"]:
        cells = []
        for name, scores in (("tuned", tuned), ("baseline", baseline)):
            band = intervals.get(name, {}).get(key)
            cells.append(
                f"{scores[key]:.3f}" + (f" [{band['low']:.3f}, {band['high']:.3f}]" if band else "")
                if isinstance(scores[key], float)
                else str(scores[key])
            )
        rows.append(f"| {key} | {cells[0]} | {cells[1]} |")
    config = manifest["config"]
    failures = [f"- weakest parts: {', '.join(weak_spots(tuned))}"]
    if tuned["must_never_failures"]:
        failures.append(
            f"- {tuned['must_never_failures']} must-never failure(s) on the test split: "
            + ", ".join(str(e["id"]) for e in tuned["must_never_examples"][:10])
        )
    paired = comparison.get("mcnemar")
    if paired:
        failures.append(
            f"- {paired['broken']} test example(s) the best baseline got right and this version gets wrong"
        )
    regression = comparison.get("regression_probe")
    if regression and regression.get("warning"):
        failures.append(f"- general behaviour: {regression['warning']}")
    overfit = comparison.get("overfitting")
    if overfit and overfit.get("warning"):
        failures.append(f"- {overfit['warning']}")
    calibration = comparison.get("calibration")
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
    checks = "\n".join(
        f"| {c['check']} | {'pass' if c['passed'] else 'FAIL'}{'' if c['blocking'] else ' (not blocking)'} | {c['detail']} |"
        for c in gate_result["checks"]
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
        f"- job card sha256 `{card_hash(card)[:16]}`; dataset version `{dataset['hash'][:16]}` from `{dataset['source']['path']}`",
        "- splits: " + ", ".join(f"{name} {part['rows']} rows" for name, part in dataset["splits"].items()),
        f"- base model `{manifest['base_model'].get('name')}` (sha256 `{str(manifest['base_model'].get('sha256'))[:16]}`)",
        f"- run folder `{Path(run_dir).resolve()}`; git commit `{manifest.get('git_commit')}`",
        "",
        "## Training",
        "",
        f"- method {config['quantization']}"
        + (
            ""
            if config["quantization"] == "full"
            else f", LoRA r {config['lora_r']}, alpha {config['lora_alpha']}, targets {config['target_modules']}"
        ),
        f"- learning rate {config.get('learning_rate_used', config['learning_rate'])}, batch {config['batch_size']}, "
        f"{manifest['steps']} steps (best {manifest.get('best_step')}), seed {config['seed']}",
        f"- validation loss {manifest['val_loss_before']:.3f} -> {manifest['val_loss_after']:.3f}; "
        f"{manifest['wall_time_s']:.0f} s on {manifest['device']}",
        "",
        f"## Test split ({tuned['n']} examples; 95% bootstrap intervals)",
        "",
        f"| metric | this version | best baseline ({baseline.get('variant', 'prompting')}) |",
        "|---|---|---|",
        *rows,
        "",
        *(
            [f"Decision rule (fitted on validation): {comparison['decision_rule']}.", ""]
            if comparison.get("decision_rule")
            else []
        ),
        *([paired["verdict"], ""] if paired else []),
        "## Release gate",
        "",
        gate_result["verdict"],
        "",
        "| check | result | detail |",
        "|---|---|---|",
        checks,
        "",
        "## Serving",
        "",
        f"- merged vs adapter-on-base: {parity_result['detail']}",
        f"- latency per example (one at a time, {latency_result['device']}): p50 {latency_result['p50_ms']:.0f} ms, "
        f"p95 {latency_result['p95_ms']:.0f} ms over {latency_result['n']} examples",
        "",
        "## Known failure modes",
        "",
        *failures,
        "",
    ]
    return "\n".join(lines)


def _metrics_to_log(
    baseline: dict, tuned: dict, comparison: dict, gate_result: dict, parity_result: dict, latency_result: dict
) -> dict:
    logged = {}
    for name, scores in (("test", tuned), ("baseline", baseline)):
        for key in scores["headline_keys"]:
            logged[f"{name}.{key}"] = scores[key]
    for key, band in comparison.get("intervals", {}).get("tuned", {}).items():
        logged[f"test.{key}.low"], logged[f"test.{key}.high"] = band["low"], band["high"]
    if comparison.get("mcnemar"):
        logged["mcnemar_p_value"] = comparison["mcnemar"]["p_value"]
    for key, change in (comparison.get("regression_probe") or {}).get("change", {}).items():
        logged[f"general_probe.{key}_change"] = change
    logged["gate.passed"] = float(gate_result["passed"])
    logged["parity.agreement"] = parity_result["agreement"]
    logged["latency.p50_ms"], logged["latency.p95_ms"] = latency_result["p50_ms"], latency_result["p95_ms"]
    return logged


def publish_run(
    registry: Registry,
    run_dir: str | Path,
    card: JobCard,
    manifest: dict,
    dataset: dict,
    baseline: dict,
    tuned: dict,
    comparison: dict,
    gate_result: dict,
    parity_result: dict,
    latency_result: dict,
    promote: bool = True,
) -> dict:
    """Log the run folder to MLflow and register its adapter as the job's new `challenger` version, promoted to
    `champion` when the gate passed and ``promote`` is set. Writes ``release/registered.json``; never overwrites."""
    run_dir = Path(run_dir)
    folder = run_dir / "release"
    if (folder / "registered.json").exists():
        raise TunebookError(
            f"{folder / 'registered.json'} exists: this run folder was already released. Start a new run."
        )
    adapter = run_dir / "adapter"
    weights = trained_weights(adapter)
    if weights is None:
        raise TunebookError(f"no trained weights in {adapter}: run 03_train_qlora first.")
    adapter_sha = file_hash(weights)
    existing = find_version(registry, card.name, "adapter_sha256", adapter_sha)
    if existing is not None:
        raise TunebookError(
            f"this adapter is already version {existing.version} of '{card.name}' in {registry.uri}; "
            "a registry entry is never overwritten. Train a new adapter to release again."
        )
    folder.mkdir(exist_ok=True)
    (folder / "gate.json").write_text(json.dumps(gate_result, indent=2))
    expected = str(gate_result["champion"]) if gate_result.get("champion") else None
    primary = tuned["primary"]
    tags = {
        "run_dir": str(run_dir.resolve()),
        "adapter_sha256": adapter_sha,
        "job_card_sha256": card_hash(card),
        "dataset_hash": dataset["hash"],
        "test_split_sha256": dataset["splits"]["test"]["hash"],
        "base_model": str(manifest["base_model"].get("name")),
        "base_sha256": str(manifest["base_model"].get("sha256")),
        "quantization": manifest["config"]["quantization"],
        "gate": "passed" if gate_result["passed"] else "failed",
        "gate_failed": ", ".join(gate_result["failed"]),
        "gate_reference": gate_result["reference"],
        "primary": primary,
        "primary_value": f"{tuned[primary]:.4f}",
        "latency_p50_ms": f"{latency_result['p50_ms']:.1f}",
        "latency_p95_ms": f"{latency_result['p95_ms']:.1f}",
        "parity_agreement": f"{parity_result['agreement']:.4f}",
        "decision_rule": comparison.get("decision_rule") or "none (the answers are generated)",
        "baseline_variant": str(baseline.get("variant", "")),
    }
    artifacts = [
        ("adapter", adapter),
        ("evaluation", run_dir / "evaluation"),
        ("baseline", run_dir / "baseline"),
        ("release", folder / "gate.json"),
        ("", run_dir / "job.yaml"),
        ("data", run_dir / "data" / "dataset_version.json"),
        ("data", run_dir / "data" / "data_card.md"),
        *[("notebooks", p) for p in sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))],
    ]
    params = {
        "job": card.name,
        "task_kind": card.task_kind,
        "base_model": manifest["base_model"].get("name"),
        "dataset_hash": dataset["hash"],
        "train": manifest["config"],
    }

    def card_text(version: str) -> str:
        text = model_card(
            card,
            version,
            run_dir,
            manifest,
            dataset,
            baseline,
            tuned,
            comparison,
            gate_result,
            parity_result,
            latency_result,
        )
        (folder / "model_card.md").write_text(text, encoding="utf-8")
        return text

    logged = _metrics_to_log(baseline, tuned, comparison, gate_result, parity_result, latency_result)
    datasets = {
        split: {
            "name": f"{card.name}-{split}",
            "digest": part["hash"][:12],
            "source": str((run_dir / "data" / f"{split}.jsonl").resolve()),
            "rows": part["rows"],
        }
        for split, part in dataset["splits"].items()
    }
    result = publish(
        registry,
        card.name,
        run_dir.name,
        params,
        logged,
        tags,
        artifacts,
        "adapter",
        card_text,
        promote and gate_result["passed"],
        expected,
        datasets,
    )
    (folder / "registered.json").write_text(json.dumps(result, indent=2))
    return result
