"""The schemas of a run folder's artifacts: one pydantic model per file, each carrying its schema version.

A step writes an artifact by building its model (a misspelt or missing field fails there, not in a later step that
reads it) and ``RunFolder`` validates it again on read. ``schema_version`` changes when a field is removed or changes
meaning; files written before the version field existed read as version 1, which has the same fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunebook.errors import TunebookError


class Approach(BaseModel):
    """00's decision frame (``decision.json``): the recommended approach and the reasons for it."""

    approach: Literal["prompting", "rag", "fine-tuning", "hybrid", "not-yet"]
    reasons: list[str]
    proceed_to_training: bool


class Artifact(BaseModel):
    """An artifact file's fields and the schema version it was written with."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = 1


# ---- step results: what each notebook records in results/<step>.json, collected into summary.json


class JobResults(Artifact):
    """00_define_the_job: the job and the decision frame's answer."""

    job: str
    task_kind: str
    job_card_sha256: str
    approach: str
    proceed_to_training: bool
    forced: bool
    force_training: bool


class CleanResults(Artifact):
    """01_clean_the_data: the dataset version and what cleaning and the audit found."""

    dataset_hash: str
    rows_before: int
    rows_after: int
    removed: int
    splits: dict[str, int]
    skipped_lines: int
    needs_review: int
    cross_split_near_duplicates: int
    audit: dict[str, Any]


class VariantFigures(BaseModel):
    """One baseline variant's primary metric on validation and test, and its cost."""

    model_config = ConfigDict(extra="forbid")
    val: float | None
    test: float | None
    ms_per_example: float | None


class BaselineResults(Artifact):
    """02_prove_the_baseline: the best cheap baseline (chosen on validation), its test metrics and the verdict."""

    primary: str
    metrics: dict[str, float | int | None]
    variant: str
    variant_kind: str
    best_prompting: str
    verdict: str
    meets_targets: bool
    judged_on: str = "test"  # the split the verdict judged the targets on (validation since systems ship)
    chosen_because: str = ""
    variants: dict[str, VariantFigures]
    retrieval: dict[str, Any] | None = Field(
        None, description="knowledge jobs: each retriever's recall@k and MRR on validation, the one chosen and why"
    )


class TrainResults(Artifact):
    """03_train_qlora (or ``tunebook train``): the training run's headline figures."""

    val_loss_before: float
    val_loss_after: float
    quantization: str
    method: str = "lora"
    best_step: int | None
    steps: int
    stopped_early: bool
    wall_time_s: float
    peak_memory_mb: float
    dataset_hash: str
    processes: int
    trainable_parameters: int


class MonitorResults(Artifact):
    """06_monitor: the version watched, how much traffic it was watched on, and the verdict."""

    version: str
    logged: int
    labelled: int
    alert: bool
    fired: list[str]
    rolled_back: bool
    report: str


class EvaluateResults(Artifact):
    """04_evaluate: the tuned model's test metrics and the paired tests against the baselines."""

    primary: str
    metrics: dict[str, float | int | None]
    baseline_variant: str
    mcnemar_p_value: float | None
    difference_is_real: bool
    beats_baseline: bool
    mcnemar_prompting_p_value: float | None
    usable_output_rate: float | None
    general_regression: bool | None
    system_kind: str = "adapter"
    system_variant: str = "tuned"
    mcnemar_trivial_p_value: float | None = None


class ReleaseResults(Artifact):
    """05_release: the gate's verdict and the registered version."""

    summary: str
    primary: str
    baseline: float
    tuned: float
    tuned_beats_baseline: bool
    meets_targets: bool
    gate_passed: bool
    failed_checks: list[str]
    version: str
    promoted: bool
    system_kind: str = "adapter"  # what shipped (System.kind), its 02 variant or 'tuned', and why
    system_variant: str = "tuned"
    system_why: str = ""
    parity_agreement: float
    latency_p50_ms: float
    latency_p95_ms: float


class RunSummary(Artifact):
    """summary.json: every step's recorded results, why the run stopped early (if it did) and each step's time."""

    results: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stopped: str | None = None
    seconds_per_notebook: dict[str, float] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict, description="steps this run skipped, and why")


# ---- data


class SourceFile(BaseModel):
    """A file the dataset was read from, by hash."""

    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str
    rows: int | None = None


class SplitVersion(BaseModel):
    """One split's content hash and size."""

    model_config = ConfigDict(extra="forbid")
    hash: str
    rows: int


class KnowledgeVersion(BaseModel):
    """One version of a job's documents: the hash over its passages, where they were read from, their counts."""

    version: str
    folder: str
    articles: int
    passages: int
    passage_words: int


class DatasetVersion(Artifact):
    """data/dataset_version.json: the splits by hash, their source, the cleaning policy and the row counts.

    ``rows_before`` and ``rows_after`` count the card's data file; a frozen test file is ``test_source``.
    """

    hash: str
    splits: dict[str, SplitVersion]
    source: SourceFile
    policy: dict[str, Any]
    rows_before: int
    rows_after: int
    test_source: SourceFile | None = None
    knowledge: KnowledgeVersion | None = None
    fresh_knowledge: KnowledgeVersion | None = None
    previous_knowledge: KnowledgeVersion | None = None  # a knowledge update: the documents the release replaced


# ---- baselines and evaluation


class Scores(Artifact):
    """A model's test metrics (baseline/metrics.json, evaluation/metrics.json): the fields every task kind has,
    plus that kind's own metrics and tables (see ``metrics.evaluate``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    primary: str
    headline_keys: list[str]
    n: int
    must_never_failures: int
    must_never_examples: list[dict[str, Any]]
    variant: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every metric as the plain mapping ``metrics`` functions take."""
        return self.model_dump(exclude={"schema_version"})


class VariantEntry(BaseModel):
    """One baseline variant: its kind, where its predictions are, and what it learned (shots, settings)."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    folder: str
    notes: dict[str, Any]


class Variants(Artifact):
    """baseline/variants.json: every variant 02 ran, the comparison table, and the variants it chose."""

    best: str
    best_kind: str
    best_prompting: str
    variants: dict[str, VariantEntry]
    table: dict[str, dict[str, Any]]


class PairedTest(BaseModel):
    """An exact McNemar test of two answer sets on the same examples: what the second fixed and broke, and whether
    the difference is beyond chance, said in words."""

    n: int
    fixed: int
    broken: int
    p_value: float
    significant: bool
    verdict: str

    @property
    def better(self) -> bool:
        """Whether the second answer set is better beyond chance."""
        return self.significant and self.fixed > self.broken


class BaselineVerdict(BaseModel):
    """02's verdict on the best cheap baseline, judged on validation: does it already do the job, or is fine-tuning
    warranted (and where)? ``text`` says it in plain words."""

    variant: str
    meets_targets: bool
    missed: list[str]  # the card's targets it misses
    close: list[str]  # targets met by the estimate but not by its interval's low end, in words
    judged_on: str = "validation"
    text: str


class GeneralProbe(BaseModel):
    """04's general-behaviour probe: nats per token on general text and instructions, before and after training."""

    base: dict[str, float]
    tuned: dict[str, float]
    change: dict[str, float]  # tuned minus base, per probe
    max_increase: float
    regressed: bool
    warning: str | None

    @property
    def worst(self) -> str:
        """The probe whose loss rose most."""
        return max(self.change, key=self.change.get)


class Overfitting(BaseModel):
    """The primary metric on (a sample of) the training split beside the test split, warned on past the gap."""

    metric: str
    train: float
    test: float
    gap: float
    warning: str | None


class Parity(BaseModel):
    """Does the served form of a system answer as 04 evaluated it? (05's parity probe on test examples.)"""

    applicable: bool  # False for a full fine-tune: nothing to merge, the saved model is what ships
    n: int
    agreement: float
    detail: str
    differing: list[str] = Field(default_factory=list)  # ids of the examples answered differently
    max_confidence_difference: float | None = None  # where answers carry a confidence


class FormParity(BaseModel):
    """How one exported form answers the frozen test split, through the runtime that runs it, against the evaluated
    adapter's own answers (before any decision rule or mixed-in classical model)."""

    form: str  # merged, gguf-f16, gguf-q8_0, gguf-q4_k_m
    runtime: str  # what answered: transformers, llama.cpp (and how it chose among fixed answers)
    n: int
    agreement: float  # share of test examples answered as the evaluated adapter answered them
    differing: list[str] = Field(default_factory=list)  # their ids (the first 20)
    metric: str
    value: float
    low: float  # 95% percentile-bootstrap interval of the primary metric
    high: float
    reference_value: float  # the evaluated adapter's primary metric on the same examples
    fixed: int  # examples the form gets fully right and the adapter did not
    broken: int
    p_value: float  # exact McNemar test of the form against the adapter
    tokens_per_second: float | None = None  # prompt and answer tokens processed per second, one example at a time
    seconds: float
    problems: list[str] = Field(default_factory=list)  # drift found before answering: template, stop token, BOS
    releasable: bool
    why: str


class ExportManifest(Artifact):
    """export_manifest.json beside each exported form: what it is, what it was made from, and whether it may ship."""

    job: str
    version: str
    form: str  # merged, adapter, gguf, ollama
    files: list[str]
    adapter_sha256: str
    base_model: dict[str, Any]
    knowledge_version: str | None = None
    system_kind: str  # adapter or mixed: a mixed system's classical model is not in any export
    decision_rule: bool  # the release applies a decision rule the export does not
    parity: list[FormParity] = Field(default_factory=list)
    for_release: bool  # a GGUF folder: at least one of its files may ship
    not_for_release: list[str] = Field(default_factory=list)  # the files of the folder that may not
    why: str
    exported_at: str


class Latency(BaseModel):
    """Per-example answer time as a service answers, one request at a time after one warm-up call."""

    n: int
    p50_ms: float
    p95_ms: float
    device: str


class Comparison(Artifact):
    """evaluation/comparison.json: what 04 measured beyond the metrics, for the gate and the model card."""

    intervals: dict[str, dict[str, Any]]
    mcnemar: PairedTest
    mcnemar_prompting: PairedTest
    baseline_variant: str
    prompting_variant: str
    decision_rule: str | None
    usable_output_rate: dict[str, float | None]
    overfitting: Overfitting | None
    calibration: dict[str, Any] | None
    regression_probe: GeneralProbe | None
    slices: dict[str, Any]
    system: dict[str, Any] | None = None  # what was evaluated (System), and how its answers agree with 02's
    mcnemar_trivial: PairedTest | None = None
    freshness: dict[str, Any] | None = None  # knowledge jobs: each answer set on the later documents
    mcnemar_blind: PairedTest | None = None  # hybrid jobs: with passages against the document-blind adapter


# ---- adapter


SYSTEM_KINDS = ("trivial", "classical", "prompted", "retrieval", "rag", "adapter", "mixed")


class System(Artifact):
    """system/system.json: what a shippable system is made of, how it answers and what it needs at serving time.

    The one description 04 evaluates, 05 releases and gates, and the served model, ``tunebook predict``, shadow and
    06 load: the trivial answer, the classical model, the base model prompted (zero-shot or with fixed shots), the
    base model with retrieved shots, or a trained adapter (alone or mixed with the classical model)."""

    kind: str = Field(description="one of " + ", ".join(SYSTEM_KINDS))
    variant: str = Field(description="the 02 variant it is, or 'tuned' for a trained model")
    needs_language_model: bool
    trained: bool
    k_shots: int = Field(0, description="worked examples per prompt (fixed or retrieved)")
    decision_rule: bool = Field(False, description="answers from a fixed set go through system/decision_rule.json")
    answer_budget: int | None = Field(None, description="the longest answer in tokens it may generate")
    base_model: dict[str, Any] | None = Field(None, description="name and sha256 of the base model it answers with")
    trivial_answer: str | None = None
    trivial_shares: dict[str, float] | None = Field(None, description="training share of each choice (trivial)")
    knowledge: dict[str, Any] | None = Field(
        None, description="the documents it answers from: version, retriever, k (system/knowledge holds the index)"
    )
    why: str = Field("", description="why this system is the one that ships, in words")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in SYSTEM_KINDS:
            raise ValueError(f"unknown system kind '{value}'; one of {', '.join(SYSTEM_KINDS)}")
        return value

    def describe(self) -> str:
        """The system in a few words."""
        words = {
            "trivial": f"the trivial answer ({self.trivial_answer!r}), no model",
            "classical": "the classical model (TF-IDF + logistic regression)"
            + ("" if not self.needs_language_model else ", the base model writing each tool's arguments"),
            "prompted": f"the base model prompted {self.variant}",
            "retrieval": f"the base model prompted with its {self.k_shots} most similar training examples",
            "rag": "the base model answering from retrieved passages",
            "adapter": "the trained model",
            "mixed": "the trained model mixed with the classical model",
        }[self.kind]
        if self.knowledge and self.kind != "rag":
            words += ", answering from retrieved passages"
        if self.knowledge:
            words += f" ({self.knowledge['k']} by {self.knowledge['retriever']}, knowledge {self.knowledge['version'][:12]})"
        return words + (", through its decision rule fitted on validation" if self.decision_rule else "")


class Manifest(Artifact):
    """adapter/tunebook_manifest.json: what an adapter was trained on, how, where and with what."""

    job: str
    job_card_sha256: str
    task_kind: str
    choices: list[str] | None
    dataset_hash: str
    base_model: dict[str, Any]
    method: str
    config: dict[str, Any]
    trainable_parameters: int
    train_examples: int
    general_examples: int = 0  # fields added after the first releases default to what those releases did
    val_examples: int
    answers_cut: int = 0
    val_loss_before: float
    val_loss_after: float
    best_step: int | None
    steps: int
    planned_steps: int
    stopped_early: bool
    resumed_from: str | None = None
    seed: int
    wall_time_s: float
    attention: str = "sdpa"
    peak_memory_mb: float
    peak_gpu_memory_mb: float | None = None
    knowledge_version: str | None = None  # hybrid: the documents its training prompts quoted (none: document-blind)
    device: str
    processes: int
    versions: dict[str, str]
    git_commit: str | None
    argv: list[str]

    @field_validator("config")
    @classmethod
    def _method_apart_from_quantization(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Read a manifest written when full fine-tuning was spelled QUANTIZATION='full' as METHOD='full'."""
        if config.get("quantization") == "full":
            return {**config, "method": "full", "quantization": "none"}
        return {"method": "lora", **config}

    @property
    def full_fine_tune(self) -> bool:
        """Whether every weight was trained: the adapter folder holds a whole model, not a LoRA adapter."""
        return self.config["method"] == "full"

    @property
    def quantization(self) -> str:
        """How the base model was held while training (nf4, int8 or none)."""
        return self.config["quantization"]


# ---- release


class TargetCheck(BaseModel):
    """One of the card's targets: what it requires, what was achieved, and whether that meets it."""

    model_config = ConfigDict(extra="forbid")
    target: str
    required: Any
    achieved: Any
    met: bool


class ReleaseComparison(BaseModel):
    """Tuned against the best baseline on the headline metrics, and the card's targets for the tuned model."""

    model_config = ConfigDict(extra="forbid")
    primary: str
    metrics: dict[str, dict[str, float]]
    tuned_beats_baseline: bool
    targets: list[TargetCheck]
    meets_targets: bool
    summary: str


class GateCheck(BaseModel):
    """One check of the release gate."""

    model_config = ConfigDict(extra="forbid")
    check: str
    passed: bool
    blocking: bool
    detail: str


class GateSettings(BaseModel):
    """The thresholds the gate ran with (05's parameters)."""

    model_config = ConfigDict(extra="forbid")
    tolerance: float
    alpha: float
    regression_max_increase: float
    parity_min_agreement: float
    require_targets: bool


class Gate(Artifact):
    """release/gate.json: every check, whether the challenger may be promoted, and against what."""

    passed: bool
    failed: list[str]
    targets_missed: list[str]
    checks: list[GateCheck]
    reference: str
    champion: str | None
    drops: dict[str, Any]
    verdict: str
    settings: GateSettings


class Lineage(BaseModel):
    """Where a release came from: job card, dataset version, base model, adapter and metric files, by hash."""

    model_config = ConfigDict(extra="forbid")
    job: str
    job_card_sha256: str
    dataset_hash: str
    dataset_source: SourceFile
    base_model: dict[str, Any]
    adapter_sha256: str | None
    training_config: dict[str, Any]
    git_commit: str | None
    files: dict[str, str]


class ReleaseRecord(Artifact):
    """release/record.json: the comparison and the lineage of a release."""

    comparison: ReleaseComparison
    lineage: Lineage


class Registered(Artifact):
    """release/registered.json: the registry version this run became, and where it is tracked."""

    version: str
    promoted: bool
    previous_champion: str | None
    run_id: str
    tracking_uri: str
    model: str


# ---- reading and writing

Model = TypeVar("Model", bound=BaseModel)


def read_model(path: Path, model: type[Model], step: str | None = None) -> Model:
    """Read and validate one JSON artifact; errors name the file, the field and the step that writes it."""
    if not path.is_file():
        hint = f"run {step} for this run folder first" if step else "it is written by an earlier step"
        raise TunebookError(f"{path} is missing: {hint}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunebookError(f"{path} is not valid JSON (line {error.lineno}): {error.msg}.") from None
    supported = getattr(model, "SCHEMA_VERSION", None)
    found = raw.get("schema_version", 1) if isinstance(raw, dict) else None
    if supported is not None and isinstance(found, int) and found > supported:
        raise TunebookError(
            f"{path} has schema version {found}, but this tunebook reads up to version {supported}: "
            "it was written by a newer tunebook. Upgrade tunebook to read it."
        )
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(top level)'}: {item['msg']}" for item in error.errors()[:5]
        )
        raise TunebookError(
            f"{path} does not match its schema ({model.__name__}, version {supported}): {problems}."
            + (f" Re-run {step} to write it again." if step else "")
        ) from None


def write_model(path: Path, value: BaseModel, overwrite: bool = True) -> Path:
    """Write one artifact as indented JSON (refusing to replace it unless ``overwrite``)."""
    if path.exists() and not overwrite:
        raise TunebookError(f"{path} already exists; it is never overwritten. Start a new run.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value.model_dump_json(indent=2), encoding="utf-8")
    return path
