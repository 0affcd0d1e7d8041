"""Using a released model without a notebook: the job's champion (or a chosen version) on a file of inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebook.baselines import tuned_decision
from tunebook.classical import ClassicalModel
from tunebook.data import load_table
from tunebook.decide import DecisionRule
from tunebook.errors import DataError, TunebookError
from tunebook.job import JobCard
from tunebook.lineage import check_adapter_matches
from tunebook.models import cache_dir, model_identity, resolve_base_model
from tunebook.predict import load_trained, predict, save_predictions
from tunebook.registry import Registry, champion, download, get_version
from tunebook.runfolder import RunFolder, manifest_path


def fetch_decision(
    registry: Registry, version, folder: str | Path
) -> tuple[DecisionRule | None, ClassicalModel | None]:
    """Download a released version's decision rule (and the classical model it mixes in, if any) into ``folder``."""
    release = RunFolder(Path(folder))
    download(registry, version, release.relative(release.evaluation_dir), folder)
    if release.tuned_rule.is_file() and release.read_rule(release.tuned_rule).mix_weight > 0:
        # MLflow keeps only the file name, so it goes into its folder
        download(registry, version, release.relative(release.classical_model), release.classical_model.parent)
    return tuned_decision(release)


def fetch_release(registry: Registry, job: str, version: str | int | None = None) -> tuple[str, RunFolder]:
    """Download (once; cached by tracking run) the job card and adapter of the champion or of ``version``."""
    if version is None:
        chosen = champion(registry, job)
        if chosen is None:
            raise TunebookError(
                f"job '{job}' has no champion in {registry.uri}: release one with 05_release first "
                "(or point MLFLOW_TRACKING_URI / --tracking-uri at the registry that has it)."
            )
    else:
        chosen = get_version(registry, job, version)
    release = RunFolder(cache_dir() / "released" / chosen.run_id)
    if not manifest_path(release.adapter_dir).is_file() or not release.job_card.is_file():
        download(registry, chosen, release.relative(release.adapter_dir), release.root)
        fetch_decision(registry, chosen, release.root)
        # last: its presence marks a complete download
        download(registry, chosen, release.relative(release.job_card), release.root)
    return str(chosen.version), release


def read_inputs(path: str | Path, card: JobCard) -> pd.DataFrame:
    """The inputs to predict: the card's text column (or ``text``), with the id column if there is one, else row numbers."""
    frame = load_table(path)
    column = next((c for c in (card.data.text_column, "text") if c in frame.columns), None)
    if column is None:
        raise DataError(
            f"{path}: no '{card.data.text_column}' column to predict from (columns: {', '.join(map(str, frame.columns))})."
        )
    ids = (
        frame[card.data.id_column].astype(str)
        if card.data.id_column in frame.columns
        else pd.Series(range(1, len(frame) + 1)).astype(str)
    )
    empty = frame.index[frame[column].astype(str).str.strip() == ""].tolist()
    if empty:
        raise DataError(
            f"{path}: rows {', '.join(str(i + 1) for i in empty[:10])} have an empty '{column}'; fill or remove them."
        )
    return pd.DataFrame({"id": ids.to_numpy(), "text": frame[column].astype(str).to_numpy(), "target": "", "tags": ""})


def predict_file(
    registry: Registry,
    job: str,
    inputs: str | Path,
    output: str | Path,
    base_model: str = "bundled",
    version: str | int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every row of ``inputs`` with the released model and write JSONL to ``output`` (never over an existing file)."""
    output = Path(output)
    if output.exists():
        raise TunebookError(f"{output} already exists; predictions never overwrite a file. Choose another --output.")
    number, release = fetch_release(registry, job, version)
    card = release.read_job_card()
    manifest = release.read_manifest()
    resolved = resolve_base_model(base_model)
    check_adapter_matches(manifest, card, model_identity(resolved))
    examples = read_inputs(inputs, card)
    model, tokenizer = load_trained(resolved, release.adapter_dir, manifest)
    rule, other = tuned_decision(release)
    result = predict(model, tokenizer, card, examples, batch_size, progress, rule=rule, other_model=other)
    result = result.drop(columns=["target", "tags", "text"])
    result.insert(1, "model_version", int(number))
    save_predictions(result, output)
    return result
