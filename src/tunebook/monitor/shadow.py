"""Staging before rollout: a challenger answers the champion's logged traffic in shadow (nobody sees its answers),
next to the champion's answers, and is watched by the same alert rules; `tunebook promote --require-shadow` then
moves `champion` only to a version whose shadow window raised no alert."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from tunebook.core.runfolder import ShadowFolder
from tunebook.errors import DataError
from tunebook.monitor import signals as monitor
from tunebook.monitor.signals import SignalReading
from tunebook.registry.store import TAG, Registry, champion, model_name
from tunebook.serving import inference_log
from tunebook.serving.serve import fetch_release, load_released


class ShadowVerdict(BaseModel):
    """shadow.json: how a challenger answered the champion's traffic, and whether its window raised an alert."""

    schema_version: int = 1
    job: str
    champion: str
    challenger: str
    window: int
    agreement: float
    champion_estimated_accuracy: float | None
    challenger_estimated_accuracy: float | None
    readings: list[SignalReading]
    fired: list[str]
    alert: bool

    def summary(self) -> str:
        """One line for a terminal."""
        state = f"ALERT ({', '.join(self.fired)})" if self.alert else "no alert"
        return (
            f"'{self.job}' version {self.challenger} in shadow of champion {self.champion} on {self.window} logged "
            f"requests: agreement {self.agreement:.1%}, {state}."
        )


def run_shadow(
    registry: Registry,
    job: str,
    log: str | Path,
    challenger: str | int,
    out: str | Path,
    base_model: str | None = None,
) -> tuple[ShadowVerdict, pd.DataFrame]:
    """Answer the champion's logged requests with ``challenger``; write its answers as a shadow log, the
    disagreements side by side and shadow.json into ``out``; tag the version with the outcome. Returns the verdict
    and the disagreements."""
    folder = ShadowFolder(Path(out))
    if folder.verdict.exists():
        raise DataError(f"{folder.verdict} exists; a shadow window is written once. Choose another folder.")
    current = champion(registry, job)
    if current is None:
        raise DataError(f"'{job}' has no champion to shadow: release one with 05_release first.")
    logged, _ = inference_log.read_log(log)
    served = logged[(logged["job"] == job) & (logged["model_version"] == str(current.version))]
    if served.empty:
        raise DataError(f"{log}: no logged requests answered by champion version {current.version} of '{job}'.")
    if served["text"].isna().any():
        raise DataError(
            f"{log}: the log keeps only hashes of the texts ({inference_log.TEXT_ENV}=hash); a challenger needs "
            "the texts to answer them in shadow."
        )
    answerer = load_released(registry, job, challenger, base_model)
    answerer.log = str(folder.log)
    answers = answerer.answer(served[["id", "text"]].reset_index(drop=True))
    card = answerer.card
    shadow_log, _ = inference_log.read_log(folder.log)
    verdicts = {}
    for version, rows in ((str(current.version), served), (str(answerer.version), shadow_log)):
        reference = monitor.reference_from(card, _reference_predictions(registry, job, version))
        verdicts[version] = (reference, monitor.readings(card, reference, rows))
    pairs = pd.DataFrame(
        {
            "id": served["id"].to_numpy(),
            "text": served["text"].to_numpy(),
            "champion": served["answer"].to_numpy(),
            "challenger": answers["prediction"].to_numpy(),
        }
    )
    readings = verdicts[str(answerer.version)][1]
    fired = [r.signal for r in readings if r.fired]
    verdict = ShadowVerdict(
        job=job,
        champion=str(current.version),
        challenger=str(answerer.version),
        window=len(served),
        agreement=float((pairs["champion"].astype(str) == pairs["challenger"].astype(str)).mean()),
        champion_estimated_accuracy=_estimate(verdicts[str(current.version)][1]),
        challenger_estimated_accuracy=_estimate(readings),
        readings=readings,
        fired=fired,
        alert=bool(fired),
    )
    disagreements = pairs[pairs["champion"].astype(str) != pairs["challenger"].astype(str)]
    disagreements.to_csv(folder.disagreements, index=False)
    folder.verdict.write_text(verdict.model_dump_json(indent=2), encoding="utf-8")
    client, name = registry.client, model_name(job)
    client.set_model_version_tag(name, verdict.challenger, TAG + "shadow", "alert" if verdict.alert else "quiet")
    client.set_model_version_tag(name, verdict.challenger, TAG + "shadow_window", str(verdict.window))
    return verdict, disagreements


def _reference_predictions(registry: Registry, job: str, version: str) -> pd.DataFrame:
    """A released version's test predictions, as 04 saved them (the monitor's reference)."""
    _, release = fetch_release(registry, job, version)
    return release.read_predictions(release.tuned_predictions)


def _estimate(readings: list[SignalReading]) -> float | None:
    found = next((r for r in readings if r.signal == "estimated_accuracy_drop" and r.value is not None), None)
    return None if found is None else found.detail["estimated_accuracy"]
