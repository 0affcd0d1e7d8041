"""The run folder: every path and file name of a run, and a typed read and write for each artifact.

No other module and no notebook spells an artifact's path or file name (``tests/core/test_runfolder.py`` checks it): they
ask a ``RunFolder`` for it. A released version downloaded from the registry has the same layout, so ``serve`` reads it
through a ``RunFolder`` too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pandas as pd

from tunebook.card.schema import JobCard, load_job_card, save_job_card
from tunebook.core.artifacts import (
    Approach,
    Artifact,
    BaselineResults,
    CleanResults,
    Comparison,
    DatasetVersion,
    EvaluateResults,
    Gate,
    JobResults,
    Manifest,
    MonitorResults,
    Registered,
    ReleaseRecord,
    ReleaseResults,
    RunSummary,
    Scores,
    System,
    TrainResults,
    Variants,
    read_model,
    write_model,
)
from tunebook.core.tables import SPLITS, load_splits, read_predictions, save_predictions, save_splits
from tunebook.errors import TunebookError


class Step(str, Enum):
    """The workbook's steps, each named as its notebook; compares, hashes and formats as that name."""

    DEFINE = "00_define_the_job"
    CLEAN = "01_clean_the_data"
    BASELINE = "02_prove_the_baseline"
    TRAIN = "03_train_qlora"
    EVALUATE = "04_evaluate"
    RELEASE = "05_release"
    MONITOR = "06_monitor"

    __hash__ = str.__hash__  # Enum hashes the member's name: a step must find its entry in a dict keyed by name

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


STEPS: tuple[str, ...] = tuple(step.value for step in Step)
STEP_RESULTS: dict[str, type[Artifact]] = dict(
    zip(
        STEPS,
        (JobResults, CleanResults, BaselineResults, TrainResults, EvaluateResults, ReleaseResults, MonitorResults),
    )
)

# Names inside an adapter folder (a run's, a method trial's, or a downloaded release's).
MANIFEST = "tunebook_manifest.json"
RUN_STATE = "tunebook_run.json"  # the resume key, inside the checkpoints folder
CHECKPOINTS = "checkpoints"
WEIGHTS = ("adapter_model.safetensors", "model.safetensors")  # peft's adapter, or a full fine-tune's model
MODEL_CARD = "model_card.md"
NOTEBOOKS = "notebooks"  # where a release keeps its executed notebooks in the registry
MODEL_ARTIFACT = "model"  # where a release keeps its MLflow pyfunc model in the registry (the version's source)
RELEASE_ARTIFACT = "release"  # the pyfunc's data: a run folder holding only what answering needs


def manifest_path(adapter_dir: str | Path) -> Path:
    """The manifest file inside an adapter folder."""
    return Path(adapter_dir) / MANIFEST


def read_manifest(adapter_dir: str | Path) -> Manifest:
    """The manifest saved next to an adapter."""
    path = manifest_path(adapter_dir)
    if not path.is_file():
        raise TunebookError(f"{path} is missing: this adapter was not trained by tunebook's 03_train_qlora.")
    return read_model(path, Manifest, Step.TRAIN)


def trained_weights(adapter_dir: str | Path) -> Path | None:
    """The weights file 03_train_qlora saved: a LoRA adapter's, or a full fine-tune's model; None if neither is there."""
    return next((Path(adapter_dir) / n for n in WEIGHTS if (Path(adapter_dir) / n).is_file()), None)


@dataclass(frozen=True)
class MonitorFolder:
    """One monitoring pass's outputs (06_monitor or ``tunebook monitor``): its alerts, report and figure."""

    root: Path

    @property
    def alerts(self) -> Path:
        return self.root / "alerts.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def figure(self) -> Path:
        return self.root / "drift.png"


@dataclass(frozen=True)
class ShadowFolder:
    """One shadow window (``tunebook shadow``): the challenger's answers as a log, the disagreements, the verdict."""

    root: Path

    @property
    def verdict(self) -> Path:
        return self.root / "shadow.json"

    @property
    def log(self) -> Path:
        return self.root / "shadow_log.jsonl"

    @property
    def disagreements(self) -> Path:
        return self.root / "disagreements.csv"


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: where each artifact lives, and its typed read and write."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- paths
    @property
    def job_card(self) -> Path:
        return self.root / "job.yaml"

    @property
    def job_form(self) -> Path:
        return self.root / "job_from_form.yaml"

    @property
    def approach_file(self) -> Path:
        return self.root / "decision.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def console_log(self) -> Path:
        """What the notebooks' kernels wrote to the terminal: third-party warnings, progress bars, Trainer logs."""
        return self.root / "console.log"

    def notebook(self, step: str) -> Path:
        """The executed copy of a step's notebook."""
        return self.root / f"{step}.ipynb"

    def notebooks(self) -> list[Path]:
        """The executed notebooks in this folder, in step order."""
        return [self.notebook(s) for s in STEPS if self.notebook(s).is_file()]

    def results_file(self, step: str) -> Path:
        return self.root / "results" / f"{step}.json"

    def figure(self, name: str) -> Path:
        """A figure a step saves next to its artifacts (``name`` without extension)."""
        return self.root / f"{name}.png"

    @property
    def method_tradeoff(self) -> Path:
        return self.root / "method_tradeoff.csv"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dataset_version(self) -> Path:
        return self.data_dir / "dataset_version.json"

    @property
    def cleaning_report(self) -> Path:
        return self.data_dir / "cleaning_report.json"

    @property
    def data_card(self) -> Path:
        return self.data_dir / "data_card.md"

    @property
    def review_decisions(self) -> Path:
        return self.root / "review_decisions.yaml"

    def split_file(self, split: str) -> Path:
        return self.data_dir / f"{split}.jsonl"

    @property
    def knowledge_dir(self) -> Path:
        """01's passages of the card's documents, with their version."""
        return self.data_dir / "knowledge"

    @property
    def fresh_knowledge_dir(self) -> Path:
        """01's passages of the card's later documents (the freshness test), with their version."""
        return self.data_dir / "knowledge_fresh"

    @property
    def retrieval_report(self) -> Path:
        """02's comparison of the retrievers on validation, and the one chosen."""
        return self.baseline_dir / "retrieval.json"

    @property
    def knowledge_update(self) -> Path:
        """A knowledge update's record: the documents' version before and after, and how it was judged."""
        return self.root / "knowledge_update.json"

    @property
    def knowledge_index(self) -> Path:
        """The retrieval index 02 chose on validation, over 01's passages."""
        return self.baseline_dir / "knowledge"

    @property
    def baseline_dir(self) -> Path:
        return self.root / "baseline"

    @property
    def variants_file(self) -> Path:
        return self.baseline_dir / "variants.json"

    def variant_dir(self, name: str) -> Path:
        """One baseline variant's folder (its predictions, decision rule and fitted model)."""
        return self.baseline_dir / "variants" / name.replace(" ", "_").replace("-", "_")

    def variant_predictions(self, name: str, split: str) -> Path:
        return self.variant_dir(name) / f"{split}.jsonl"

    def variant_rule(self, name: str) -> Path:
        return self.variant_dir(name) / "decision_rule.json"

    def variant_model(self, name: str) -> Path:
        return self.variant_dir(name) / "model.npz"

    def variant_shots(self, name: str) -> Path:
        """The worked examples a variant was prompted with: its fixed shots, or the pool it retrieves from."""
        return self.variant_dir(name) / "shots.jsonl"

    def variant_system(self, name: str) -> Path:
        """The variant as a system that can ship (``System``)."""
        return self.variant_dir(name) / "system.json"

    @property
    def classical_model(self) -> Path:
        """The classical model 02 fitted (and 04's decision rule may mix in)."""
        return self.variant_model("classical")

    def baseline_scores(self, role: str = "best") -> Path:
        """Test metrics of the best baseline (``best``) or of the best prompting variant (``prompting``)."""
        return self.baseline_dir / ("metrics.json" if role == "best" else f"{role}_metrics.json")

    def baseline_predictions(self, role: str = "best") -> Path:
        return self.baseline_dir / ("predictions.jsonl" if role == "best" else f"{role}_predictions.jsonl")

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def blind_adapter_dir(self) -> Path:
        """Hybrid jobs: the adapter trained on the same examples without passages, the comparison 04 shows."""
        return self.root / "adapter_blind"

    @property
    def checkpoints(self) -> Path:
        return self.adapter_dir / CHECKPOINTS

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    @property
    def monitoring_dir(self) -> Path:
        """Where 06_monitor keeps the inference log of traffic it sends and one folder per monitoring pass."""
        return self.root / "monitoring"

    @property
    def inference_log(self) -> Path:
        return self.monitoring_dir / "inference_log.jsonl"

    @property
    def tuned_scores(self) -> Path:
        return self.evaluation_dir / "metrics.json"

    @property
    def tuned_predictions(self) -> Path:
        return self.evaluation_dir / "predictions.jsonl"

    @property
    def comparison(self) -> Path:
        return self.evaluation_dir / "comparison.json"

    @property
    def tuned_rule(self) -> Path:
        """The tuned model's decision rule, fitted on validation by 04 (the same path in a downloaded release)."""
        return self.evaluation_dir / "decision_rule.json"

    @property
    def system_dir(self) -> Path:
        """The system 04 evaluated and 05 releases: its description and what answering needs besides a model."""
        return self.root / "system"

    @property
    def system_file(self) -> Path:
        return self.system_dir / "system.json"

    @property
    def system_rule(self) -> Path:
        return self.system_dir / "decision_rule.json"

    @property
    def system_classical(self) -> Path:
        return self.system_dir / "classical.npz"

    @property
    def system_knowledge(self) -> Path:
        """The retrieval index a system answers from (its passages, version, retriever and k)."""
        return self.system_dir / "knowledge"

    @property
    def system_shots(self) -> Path:
        """The worked examples a prompted system uses: its fixed shots, or the training pool it retrieves from."""
        return self.system_dir / "shots.jsonl"

    @property
    def release_dir(self) -> Path:
        return self.root / "release"

    @property
    def gate(self) -> Path:
        return self.release_dir / "gate.json"

    @property
    def model_card(self) -> Path:
        return self.release_dir / MODEL_CARD

    @property
    def record(self) -> Path:
        return self.release_dir / "record.json"

    @property
    def registered(self) -> Path:
        return self.release_dir / "registered.json"

    @property
    def champion_scratch(self) -> Path:
        """Where 05 downloads the champion it gates against."""
        return self.release_dir / "champion"

    @property
    def released_model_data(self) -> Path:
        """In a downloaded version: the run folder inside its MLflow pyfunc model (MLflow keeps a model's data under
        ``data/``) that holds what answers: system, adapter, job card."""
        return self.root / MODEL_ARTIFACT / "data" / RELEASE_ARTIFACT

    @property
    def export_dir(self) -> Path:
        """Where 05 writes the released version's exports (merged, adapter, GGUF, Ollama), one folder per version."""
        return self.root / "export"

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, as the registry stores it."""
        return path.relative_to(self.root).as_posix()

    def released_files(self) -> list[tuple[str, Path]]:
        """What a release logs to the registry, as (folder in the registry, local path): the run folder's layout."""
        kept = (self.adapter_dir, self.system_dir, self.evaluation_dir, self.baseline_dir)
        folders = [(self.relative(p), p) for p in kept if p.is_dir()]
        files = [self.gate, self.job_card, self.dataset_version, self.data_card]
        placed = [("" if p.parent == self.root else self.relative(p.parent), p) for p in files]
        return folders + placed + [(NOTEBOOKS, p) for p in self.notebooks()]

    # ---- typed reads and writes
    def write_job_card(self, card: JobCard) -> Path:
        return save_job_card(card, self.job_card)

    def read_job_card(self) -> JobCard:
        if not self.job_card.is_file():
            raise TunebookError(f"{self.root} is not a run folder (no job.yaml): run {Step.DEFINE} into it first.")
        return load_job_card(self.job_card)

    def write_approach(self, approach: Approach) -> Path:
        return write_model(self.approach_file, approach)

    def read_approach(self) -> Approach:
        return read_model(self.approach_file, Approach, Step.DEFINE)

    def write_results(self, step: str, results: Artifact) -> Path:
        """Record a step's results; they must be that step's results type."""
        expected = STEP_RESULTS.get(step)
        if expected is None or not isinstance(results, expected):
            raise TunebookError(f"results of step {step} must be {getattr(expected, '__name__', 'a known step')}.")
        return write_model(self.results_file(step), results)

    def read_results(self, step: str) -> Artifact:
        """What a step recorded."""
        return read_model(self.results_file(step), STEP_RESULTS[step], step)

    def has_results(self, step: str) -> bool:
        return self.results_file(step).is_file()

    def collect_summary(
        self, stopped: str | None, seconds: dict[str, float], skipped: dict[str, str] | None = None
    ) -> RunSummary:
        """Every step's recorded results, with why the run stopped and each step's time (those of earlier calls on a
        continued run kept); written to summary.json."""
        results = {s: self.read_results(s).model_dump() for s in STEPS if self.has_results(s)}
        skipped = dict(skipped or {})
        if self.summary.is_file():
            earlier = self.read_summary()
            seconds = {**earlier.seconds_per_notebook, **seconds}
            skipped = {**earlier.skipped, **skipped}
        summary = RunSummary(results=results, stopped=stopped, seconds_per_notebook=seconds, skipped=skipped)
        write_model(self.summary, summary)
        return summary

    def read_summary(self) -> RunSummary:
        return read_model(self.summary, RunSummary, "tunebook run")

    def write_dataset(self, splits: dict[str, pd.DataFrame], version: DatasetVersion, report: list[dict]) -> Path:
        """The splits, the dataset version and the cleaning report."""
        save_splits(splits, {name: self.split_file(name) for name in splits})
        write_model(self.dataset_version, version)
        self.cleaning_report.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        return self.data_dir

    def read_splits(self) -> dict[str, pd.DataFrame]:
        return load_splits({name: self.split_file(name) for name in SPLITS})

    def read_dataset_version(self) -> DatasetVersion:
        return read_model(self.dataset_version, DatasetVersion, Step.CLEAN)

    def write_scores(self, path: Path, scores: dict, variant: str | None = None) -> Path:
        """A model's test metrics (``path``: ``baseline_scores(...)`` or ``tuned_scores``)."""
        return write_model(path, Scores.model_validate({**scores, "variant": variant}))

    def read_scores(self, path: Path) -> Scores:
        step = Step.BASELINE if path.parent == self.baseline_dir else Step.EVALUATE
        return read_model(path, Scores, step)

    def write_predictions(self, frame: pd.DataFrame, path: Path) -> Path:
        return save_predictions(frame, path)

    def read_predictions(self, path: Path) -> pd.DataFrame:
        if not path.is_file():
            raise TunebookError(f"{path} is missing: run the step that writes {self.relative(path)} first.")
        return read_predictions(path)

    def write_variants(self, variants: Variants) -> Path:
        return write_model(self.variants_file, variants)

    def read_variants(self) -> Variants:
        return read_model(self.variants_file, Variants, Step.BASELINE)

    def read_manifest(self) -> Manifest:
        return read_manifest(self.adapter_dir)

    def trained_weights(self) -> Path | None:
        return trained_weights(self.adapter_dir)

    def write_system(self, system: System, path: Path | None = None) -> Path:
        return write_model(path or self.system_file, system)

    def read_system(self, path: Path | None = None) -> System:
        return read_model(path or self.system_file, System, Step.EVALUATE)

    def write_comparison(self, comparison: Comparison) -> Path:
        return write_model(self.comparison, comparison)

    def read_comparison(self) -> Comparison:
        return read_model(self.comparison, Comparison, Step.EVALUATE)

    def write_gate(self, gate: Gate) -> Path:
        return write_model(self.gate, gate)

    def read_gate(self) -> Gate:
        return read_model(self.gate, Gate, Step.RELEASE)

    def write_record(self, record: ReleaseRecord) -> Path:
        """The release record; never overwritten."""
        return write_model(self.record, record, overwrite=False)

    def read_record(self) -> ReleaseRecord:
        return read_model(self.record, ReleaseRecord, Step.RELEASE)

    def write_registered(self, registered: Registered) -> Path:
        return write_model(self.registered, registered, overwrite=False)

    def read_registered(self) -> Registered | None:
        """The registry version this run became, or None before 05 registered one."""
        return read_model(self.registered, Registered, Step.RELEASE) if self.registered.is_file() else None
