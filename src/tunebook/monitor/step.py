"""06_monitor's step: the monitored version's reference and logged traffic in, every alert rule measured, then
``alerts.json``, a self-contained HTML report, a run logged to MLflow against the version, and a rollback on
request. ``tunebook monitor`` and the notebook call the same function."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from tunebook.card.schema import JobCard
from tunebook.core import plots
from tunebook.core.artifacts import MonitorResults
from tunebook.core.runfolder import MonitorFolder, RunFolder, Step
from tunebook.data.examples import load_table
from tunebook.errors import DataError
from tunebook.monitor import signals as monitor
from tunebook.monitor.settings import AUTO, MonitorSettings
from tunebook.monitor.signals import SignalReading
from tunebook.registry.register import rollback
from tunebook.registry.store import TAG, Registry, champion, log_run, open_registry
from tunebook.serving import inference_log
from tunebook.serving.serve import fetch_release, load_released, send_traffic


class MonitorVerdict(BaseModel):
    """alerts.json: what one monitoring pass measured, which rules fired, and the way back."""

    schema_version: int = 1
    job: str
    version: str
    log: str
    logged: int
    log_problems: list[str]
    labelled: int
    readings: list[SignalReading]
    fired: list[str]
    alert: bool
    rollback_to: str | None
    rollback_command: str | None
    rolled_back: bool = False
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        """One line for a terminal or a cron mail."""
        if not self.logged:
            return (
                f"'{self.job}' version {self.version}: nothing logged yet, so nothing was measured. Send traffic "
                "(TRAFFIC_FILE) or point LOG_FILE at the service's inference log."
            )
        if not self.alert:
            return f"'{self.job}' version {self.version}: quiet on {self.logged} logged predictions."
        way_back = f" Roll back to version {self.rollback_to}: {self.rollback_command}" if self.rollback_to else ""
        done = " Rolled back." if self.rolled_back else ""
        return (
            f"ALERT '{self.job}' version {self.version}: {', '.join(self.fired)} moved on {self.logged} logged "
            f"predictions.{way_back}{done}"
        )


def monitor_run_folder(run: RunFolder, settings: MonitorSettings) -> tuple[MonitorVerdict, MonitorFolder | None]:
    """Step 06 on a run folder after 05: send the traffic file (if any) through the released version, logging
    every answer, then watch that version on the log; returns the verdict and the new folder it was written to
    (None when nothing is logged yet, so there was nothing to watch)."""

    card = run.read_job_card()
    store = open_registry(settings.tracking_uri, workspace=run.root.parent)
    registered = run.read_registered()
    if not settings.version and registered is None:
        raise DataError(f"{run.root} has released nothing yet: run 05_release first, or set VERSION to watch.")
    version = settings.version or registered.version
    log = Path(settings.log_file) if settings.log_file else run.inference_log
    traffic, labels = example_traffic(card, settings.traffic_file, settings.labels_file)
    if traffic is not None:
        answerer = load_released(store, card.name, version, settings.base_model)
        send_traffic(answerer, traffic, log, settings.traffic_rows)
    if traffic is None and not log.is_file():
        verdict = MonitorVerdict(
            job=card.name, version=str(version), log=str(log), logged=0, log_problems=[], labelled=0, readings=[],
            fired=[], alert=False, rollback_to=None, rollback_command=None,
        )  # fmt: skip
        written = None
    else:
        written = MonitorFolder(run.monitoring_dir / f"pass-{time.strftime('%Y%m%d-%H%M%S')}")
        verdict = watch(store, card.name, log, written.root, labels, version, settings.rollback_on_alert)
    run.write_results(
        Step.MONITOR,
        MonitorResults(
            version=verdict.version,
            logged=verdict.logged,
            labelled=verdict.labelled,
            alert=verdict.alert,
            fired=verdict.fired,
            rolled_back=verdict.rolled_back,
            report=run.relative(written.report) if written else "",
        ),
    )
    return verdict, written


def example_traffic(card: JobCard, traffic_file: str, labels_file: str) -> tuple[Path | None, Path | None]:
    """The traffic and labels files to use: as given, or for ``auto`` the job's example traffic
    (``traffic/in_distribution.csv`` beside its data file) and that file's ``<name>_labels.csv``, where they exist."""
    traffic = Path(traffic_file) if traffic_file and traffic_file != AUTO else None
    if traffic_file == AUTO:
        bundled = Path(card.data.path).parent / "traffic" / "in_distribution.csv"
        traffic = bundled if bundled.is_file() else None
    if labels_file != AUTO:
        return traffic, Path(labels_file) if labels_file else None
    labels = traffic.with_name(f"{traffic.stem}_labels.csv") if traffic is not None else None
    return traffic, labels if labels is not None and labels.is_file() else None


def watch(
    registry: Registry,
    job: str,
    log: str | Path,
    out: str | Path,
    labels: str | Path | None = None,
    version: str | int | None = None,
    rollback_on_alert: bool = False,
    rollback_hint: str = "",
) -> MonitorVerdict:
    """Monitor the champion (or ``version``) on its logged traffic; write alerts.json, report.html and drift.png
    into ``out`` (a new folder), log the pass to MLflow and, if asked, roll the champion back on an alert."""
    folder = MonitorFolder(Path(out))
    if folder.alerts.exists():
        raise DataError(f"{folder.alerts} exists; a monitoring pass never overwrites one. Choose another folder.")
    number, release = fetch_release(registry, job, version)
    card = release.read_job_card()
    reference = monitor.reference_from(card, release.read_predictions(release.tuned_predictions))
    logged, problems = inference_log.read_log(log)
    ours = logged[logged["model_version"] == number]
    if ours.empty:
        found = ", ".join(sorted(set(logged["model_version"]))) or "none"
        raise DataError(f"{log}: no logged predictions of '{job}' version {number} (versions logged: {found}).")
    truth = monitor.checked_labels(card, load_table(labels), str(labels)) if labels is not None else None
    readings = monitor.readings(card, reference, ours, truth)
    fired = [r.signal for r in readings if r.fired]
    current = champion(registry, job)
    previous = current.tags.get(TAG + "previous_champion") or None if current is not None else None
    back = previous if current is not None and str(current.version) == number else None
    verdict = MonitorVerdict(
        job=job,
        version=number,
        log=str(log),
        logged=len(ours),
        log_problems=problems,
        labelled=0 if truth is None else int(ours["id"].astype(str).isin(truth["id"]).sum()),
        readings=readings,
        fired=fired,
        alert=bool(fired),
        rollback_to=back,
        rollback_command=f"tunebook rollback --job {job}{rollback_hint}" if back else None,
    )
    folder.root.mkdir(parents=True, exist_ok=True)
    _write_report(folder, card.choices, reference, monitor.window_frame(ours, card, len(ours)), verdict)
    if verdict.alert and rollback_on_alert and back:
        rollback(registry, job)
        verdict.rolled_back = True
    verdict.mlflow_run_id = log_run(
        registry,
        job,
        f"monitor-v{number}-{time.strftime('%Y%m%d-%H%M%S')}",
        {r.signal: r.value for r in readings if r.value is not None},
        {"monitored_version": number, "alert": "yes" if verdict.alert else "no", "fired": ",".join(fired)},
        [folder.report, folder.figure],
    )
    folder.alerts.write_text(verdict.model_dump_json(indent=2), encoding="utf-8")
    return verdict


def _write_report(
    folder: MonitorFolder, choices: list[str], reference: monitor.Reference, window: pd.DataFrame, verdict
) -> None:
    """The figure as a PNG and the report as one HTML file with the figure inlined (it opens offline)."""

    def frame(lengths: pd.Series, answers: pd.Series | None, confidence: pd.Series | None) -> pd.DataFrame:
        columns = {"length": lengths, "answer": answers, "confidence": confidence}
        return pd.DataFrame({name: values for name, values in columns.items() if values is not None})

    ref = frame(reference.texts.str.len(), reference.answers, reference.confidence)
    measured = reference.confidence is not None and window["confidence"].notna().all()
    new = frame(window["text_length"], window.get("chosen"), window["confidence"].astype(float) if measured else None)
    plots.drift_panels(ref, new, choices, folder.figure)
    image = base64.b64encode(folder.figure.read_bytes()).decode()
    rows = "".join(
        f"<tr class='{'fired' if r.fired else ''}'><td>{html.escape(r.signal)}</td>"
        f"<td>{'' if r.value is None else f'{r.value:.4g}'}</td><td>{r.threshold:g}</td><td>{r.window}</td>"
        f"<td>{'ALERT' if r.fired else 'quiet'}</td><td>{html.escape(r.note)}</td></tr>"
        for r in verdict.readings
    )
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in verdict.log_problems) or "<li>none</li>"
    folder.report.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>tunebook monitor: {html.escape(verdict.job)}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}
tr.fired{{background:#fdd}}h1 small{{color:#666}}</style></head><body>
<h1>{html.escape(verdict.job)} <small>version {verdict.version}</small></h1>
<p><b>{html.escape(verdict.summary())}</b></p>
<p>{verdict.logged} logged predictions; {verdict.labelled} with a delayed label. Reference: the release's test
split and its predictions there.</p>
<table><tr><th>signal</th><th>value</th><th>threshold</th><th>window</th><th>verdict</th><th>note</th></tr>{rows}</table>
<img alt="reference against the monitored window" src="data:image/png;base64,{image}" style="max-width:100%">
<h2>Log lines that could not be read</h2><ul>{problems}</ul></body></html>""",
        encoding="utf-8",
    )
