"""The release gate: the tuned model against the best baseline (or the champion) and the checks that decide promotion."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.core.artifacts import Gate, GateCheck, GateSettings, GeneralProbe, Parity, ReleaseComparison, Scores
from tunebook.core.runfolder import RunFolder
from tunebook.core.tables import frame_hash, read_predictions
from tunebook.errors import TunebookError
from tunebook.modeling.models import model_identity
from tunebook.registry.store import TAG, Registry, champion, download
from tunebook.scoring.metrics import check_targets, evaluate
from tunebook.scoring.stats import mcnemar, part_drops
from tunebook.serving.serve import load_released


def compare(card: JobCard, baseline_scores: Scores, tuned_scores: Scores, name: str = "tuned") -> ReleaseComparison:
    """The released system (``name``: tuned, or the baseline variant that ships) vs the best baseline on the headline
    metrics, with the card's targets checked for the released system."""
    baseline, tuned = baseline_scores.as_dict(), tuned_scores.as_dict()
    keys = [k for k in tuned["headline_keys"] if k != "n"]
    rows = {
        key: {"baseline": baseline[key], "tuned": tuned[key], "change": tuned[key] - baseline[key]} for key in keys
    }
    targets = check_targets(card, tuned)
    primary = tuned["primary"]
    beats = tuned[primary] > baseline[primary]
    return ReleaseComparison(
        primary=primary,
        metrics=rows,
        tuned_beats_baseline=beats,
        targets=targets,
        meets_targets=all(t.met for t in targets),
        summary=(
            f"{primary} on the test split: best baseline ({baseline.get('variant', 'prompting')}) {baseline[primary]:.3f}, "
            f"{name} {tuned[primary]:.3f} "
            + (
                "(the same system)"
                if name == baseline.get("variant")
                else f"({'better' if beats else 'NOT better'} by {tuned[primary] - baseline[primary]:+.3f})"
            )
        ),
    )


def gate(
    card: JobCard,
    challenger: pd.DataFrame,
    reference: pd.DataFrame,
    reference_name: str,
    *,
    regression: GeneralProbe | None,
    parity_result: Parity | None,
    tolerance: float = 0.02,
    alpha: float = 0.05,
    regression_max_increase: float = 0.25,
    parity_min_agreement: float = 0.95,
    require_targets: bool = False,
    champion_version: str | None = None,
    trained: bool = True,
    must_improve: bool = False,
) -> Gate:
    """The release gate: every check with whether it passed, and whether the challenger may be promoted.

    Blocking checks: the card's must-never limit; no class / tool / field / rule (nor whole answers) significantly
    worse than ``reference`` by more than ``tolerance``; the general-behaviour probe under its threshold (only for a
    ``trained`` system: no weights changed otherwise); the served form answering as evaluated; with
    ``must_improve`` (a trained model replacing a system that needed no training), significantly better than
    ``reference`` by the exact paired test. The card's other targets block only with ``require_targets``.
    """
    scores = evaluate(card, challenger)
    drops = part_drops(card, reference, challenger, tolerance, alpha)
    checks = [
        _must_never_check(card, scores),
        *_drop_checks(drops),
        _regression_check(regression, regression_max_increase) if trained else _untrained_check(),
        _parity_check(parity_result, parity_min_agreement),
        *([_improvement_check(card, reference, challenger, alpha)] if must_improve else []),
        *_target_checks(card, scores, require_targets),
    ]
    failed = [c.check for c in checks if c.blocking and not c.passed]
    missed = [c.check for c in checks if not c.blocking and not c.passed]
    return Gate(
        passed=not failed,
        failed=failed,
        targets_missed=missed,
        checks=checks,
        reference=reference_name,
        champion=champion_version,
        drops=json.loads(drops.to_json(orient="index")),
        verdict=_verdict(reference_name, failed, missed),
        settings=GateSettings(
            tolerance=tolerance,
            alpha=alpha,
            regression_max_increase=regression_max_increase,
            parity_min_agreement=parity_min_agreement,
            require_targets=require_targets,
        ),
    )


def _must_never_check(card: JobCard, scores: dict) -> GateCheck:
    limit, failures = card.targets.must_never_failures, scores["must_never_examples"]
    shown = ", ".join(str(f["id"]) for f in failures[:10]) + (" ..." if len(failures) > 10 else "")
    detail = f"{len(failures)} must-never failure(s) on the test split (card allows {limit})"
    return GateCheck(
        check="must_never",
        passed=len(failures) <= limit,
        blocking=True,
        detail=detail + (f": {shown}" if failures else ""),
    )


def _drop_checks(drops: pd.DataFrame) -> list[GateCheck]:
    return [
        GateCheck(
            check=f"no_drop:{part}",
            passed=not row["significant_drop"],
            blocking=True,
            detail=f"{row['reference']:.3f} -> {row['candidate']:.3f} on {row['examples']} examples "
            f"(broke {row['broken']}, fixed {row['fixed']}, one-sided p = {row['p_value']:.3g})",
        )
        for part, row in drops.iterrows()
    ]


def _regression_check(regression: GeneralProbe | None, max_increase: float) -> GateCheck:
    if regression is None:
        return GateCheck(
            check="general_regression",
            passed=False,
            blocking=True,
            detail="no general-behaviour probe: run 04_evaluate",
        )
    worst = regression.worst
    rise = regression.change[worst]
    return GateCheck(
        check="general_regression",
        passed=rise <= max_increase,
        blocking=True,
        detail=f"largest rise {worst} {rise:+.3f} nats/token (threshold {max_increase})",
    )


def _untrained_check() -> GateCheck:
    return GateCheck(
        check="general_regression",
        passed=True,
        blocking=True,
        detail="not applicable: this system trains no weights, so the base model's general behaviour is unchanged",
    )


def _improvement_check(card: JobCard, reference: pd.DataFrame, challenger: pd.DataFrame, alpha: float) -> GateCheck:
    paired = mcnemar(card, reference, challenger, alpha)
    return GateCheck(
        check="beats_shipped_baseline",
        passed=paired.better,
        blocking=True,
        detail="a trained model replaces a system that needed no training only when it is better beyond chance: "
        + paired.verdict,
    )


def must_improve(registry: Registry, card: JobCard, run: RunFolder, trained: bool) -> bool:
    """Whether a trained challenger must beat its reference beyond chance: it would replace a champion that needed
    no training (a shipped cheap baseline). A first release is gated against the best baseline as any other."""
    if not trained:
        return False
    current = champion(registry, card.name)
    return current is not None and current.tags.get(TAG + "system_trained") == "false"


def _parity_check(parity: Parity | None, min_agreement: float) -> GateCheck:
    if parity is None:
        return GateCheck(check="parity", passed=False, blocking=True, detail="parity was not checked")
    if not parity.applicable:
        return GateCheck(check="parity", passed=True, blocking=True, detail=parity.detail)
    return GateCheck(
        check="parity",
        passed=parity.agreement >= min_agreement,
        blocking=True,
        detail=f"served and evaluated answers agree on {parity.agreement:.1%} of {parity.n} probe "
        f"examples (need {min_agreement:.0%}); {parity.detail}",
    )


def _target_checks(card: JobCard, scores: dict, blocking: bool) -> list[GateCheck]:
    return [
        GateCheck(
            check=f"target:{t.target}",
            passed=t.met,
            blocking=blocking,
            detail=f"{t.achieved} (card: {t.required})",
        )
        for t in check_targets(card, scores)
        if t.target != "must_never_failures"
    ]


def _verdict(reference_name: str, failed: list[str], missed: list[str]) -> str:
    if failed:
        verdict = (
            f"Gate FAILED against {reference_name}: {', '.join(failed)}. "
            "The new version stays challenger; champion is unchanged."
        )
    else:
        verdict = f"Gate passed against {reference_name}: every blocking check holds; the challenger may be promoted to champion."
    if missed:
        verdict += f" Card targets still missed (not blocking): {', '.join(m.split(':', 1)[1] for m in missed)}."
    return verdict


def reference_predictions(
    registry: Registry,
    card: JobCard,
    run: RunFolder,
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
        frame = run.read_predictions(run.baseline_predictions())
        variant = run.read_scores(run.baseline_scores()).variant
        return frame, f"the best baseline, {variant} (no champion yet)", None
    scratch = RunFolder(Path(scratch or run.champion_scratch))
    name = f"champion v{current.version}"
    if current.tags.get(TAG + "test_split_sha256") == frame_hash(test):
        path = download(registry, current, scratch.relative(scratch.tuned_predictions), scratch.root)
        return read_predictions(path), name, str(current.version)
    # another test split: score the champion on this one, through the system it released
    trained_on, identity = current.tags.get(TAG + "base_sha256"), model_identity(base_model)
    if current.tags.get(TAG + "system_trained") != "false" and trained_on != str(identity.get("sha256")):
        raise TunebookError(
            f"{name} was trained on base model '{current.tags.get(TAG + 'base_model')}' and evaluated on another test "
            f"split; it cannot be re-scored on BASE_MODEL '{identity.get('name')}'. Evaluate both on the same frozen "
            "test split (TEST_FILE)."
        )
    answerer = load_released(registry, card.name, current.version, base_model)
    rescored = answerer.system.answer(test.reset_index(drop=True), batch_size)
    return rescored, f"{name} (re-scored on this test split)", str(current.version)
