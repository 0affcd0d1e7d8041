"""Writing the exported forms of a released adapter: the merged model folder, the adapter folder for multi-adapter
servers, and each form's README and manifest."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunebook.core.artifacts import ExportManifest, FormParity, Manifest, System, write_model
from tunebook.core.runfolder import trained_weights
from tunebook.core.tables import file_hash

MANIFEST_NAME = "export_manifest.json"
FORMS = ("merged", "adapter", "gguf", "ollama")


def form_folder(export: Path, form: str) -> Path:
    """The folder of one form inside an export (``<job>-v<version>/<form>``; not a run folder)."""
    return export / form


def write_merged(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """The merged model as a transformers folder (safetensors, config, tokenizer with its chat template)."""
    folder.mkdir(parents=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_adapter(adapter_dir: Path, folder: Path) -> Path:
    """The PEFT adapter folder as trained (weights, adapter_config.json, tunebook's manifest), checkpoints left out."""
    shutil.copytree(adapter_dir, folder, ignore=shutil.ignore_patterns("checkpoint*", "checkpoints"))
    return folder


def adapter_rank(adapter_dir: Path) -> int | None:
    """The LoRA rank in ``adapter_config.json`` (what vLLM's --max-lora-rank must cover)."""
    config = adapter_dir / "adapter_config.json"
    return json.loads(config.read_text()).get("r") if config.is_file() else None


def not_included(system: System) -> list[str]:
    """What the release applies around the model that no exported form carries, in words for a README."""
    missing = []
    if system.decision_rule:
        missing.append(
            "the decision rule 04 fitted on validation (thresholds, costs, abstaining); a runtime returns the "
            "model's own most likely answer, so where the rule would have answered differently the exported model "
            "answers as the adapter alone did on the parity table's rows"
        )
    if system.kind == "mixed":
        missing.append(
            "the classical model the release mixes in; the export's answers are the tuned model's alone, whose "
            "score on the test split is the parity table's 'adapter' figure, not the release's headline"
        )
    if system.knowledge:
        missing.append("retrieval: the documents a question needs must be put into its prompt by the caller")
    return missing


def manifest_for(
    *,
    job: str,
    version: str,
    form: str,
    folder: Path,
    manifest: Manifest,
    adapter_dir: Path,
    system: System,
    parity: list[FormParity],
    for_release: bool,
    why: str,
    not_for_release: list[str] = (),
) -> ExportManifest:
    """The manifest of one exported form, written into its folder."""
    weights = trained_weights(adapter_dir)
    record = ExportManifest(
        job=job,
        version=str(version),
        form=form,
        files=sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
        adapter_sha256=file_hash(weights) if weights else "",
        base_model=manifest.base_model,
        knowledge_version=(system.knowledge or {}).get("version") or manifest.knowledge_version,
        system_kind=system.kind,
        decision_rule=bool(system.decision_rule),
        parity=parity,
        for_release=for_release,
        not_for_release=list(not_for_release),
        why=why,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_model(folder / MANIFEST_NAME, record, overwrite=False)
    return record


def parity_table(rows: list[FormParity]) -> str:
    """The parity rows as a Markdown table."""
    lines = [
        "| form | runtime | agreement | metric [95% interval] | adapter | fixed / broken, paired p | tokens/s | release |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r.tokens_per_second:.0f}" if r.tokens_per_second else "-"
        lines.append(
            f"| {r.form} | {r.runtime} | {r.agreement:.1%} ({r.n}) | {r.metric} {r.value:.3f} [{r.low:.3f}, {r.high:.3f}] "
            f"| {r.reference_value:.3f} | {r.fixed} / {r.broken}, p = {r.p_value:.2g} | {speed} | "
            f"{'yes' if r.releasable else 'NOT FOR RELEASE: ' + r.why} |"
        )
    return "\n".join(lines)


def write_readme(
    folder: Path, title: str, what: str, how: list[str], missing: list[str], parity: list[FormParity]
) -> Path:
    """A form's README: what it is, how to run it, what it does not include, and its parity on the test split."""
    text = [f"# {title}", "", what, "", "## How to run it", "", "```bash", *how, "```", ""]
    text += ["## What it does not include", ""]
    text += [f"- {m}" for m in missing] or ["- nothing: the release answers with this model alone."]
    if parity:
        text += ["", "## Parity on the frozen test split", "", parity_table(parity)]
    path = folder / "README.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
