"""``tunebook export`` (and 05's last cell): a registered version written in the forms people run models in, each
form's answers on the frozen test split checked against the evaluated adapter before it is marked for release."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunebook.card.tasks import task_of
from tunebook.core.artifacts import ExportManifest, FormParity
from tunebook.core.lineage import check_adapter_matches
from tunebook.core.runfolder import RunFolder, read_manifest
from tunebook.core.tables import read_predictions
from tunebook.data.examples import answer_frame
from tunebook.errors import TunebookError
from tunebook.export import forms as written
from tunebook.export.gguf import GGUF_TYPES, quantize_gguf, write_gguf
from tunebook.export.ollama import check_modelfile, ollama_template, stop_tokens, write_modelfile
from tunebook.export.parity import CHOOSERS, compare, gguf_answers, gguf_drift
from tunebook.export.runtime import INSTALL_HINT, GgufRuntime, free_threads
from tunebook.knowledge.render import model_inputs
from tunebook.modeling.models import model_identity
from tunebook.modeling.predict import load_for_inference, load_trained, merged_model, predict
from tunebook.modeling.prompts import build_messages, encode_prompt, system_prompt
from tunebook.modeling.system import read_system
from tunebook.registry.store import TAG, Registry, model_name
from tunebook.serving.pyfunc import local_base_model
from tunebook.serving.serve import fetch_release

FORMS = written.FORMS


@dataclass
class Exported:
    """What ``export_version`` wrote: the folder, each form's manifest, the parity rows and the time each part took."""

    folder: Path
    version: str
    manifests: dict[str, ExportManifest] = field(default_factory=dict)
    parity: list[FormParity] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # form: why it was not written

    @property
    def not_for_release(self) -> dict[str, str]:
        """Each form, or GGUF type, marked not for release, with why."""
        found = {}
        for form, manifest in self.manifests.items():
            if form == "gguf":
                found |= {r.form: r.why for r in manifest.parity if not r.releasable}
            elif not manifest.for_release:
                found[form] = "; ".join(r.why for r in manifest.parity if not r.releasable) or manifest.why
        return found


def export_after_release(
    registry: Registry, job: str, version: str, forms: str, into: Path, base_model: str
) -> Exported | None:
    """05's last step: export the version it registered as ``forms`` (comma-separated), or say how to later."""
    asked = tuple(f.strip() for f in forms.split(",") if f.strip())
    if not asked:
        print(f"no export asked (EXPORT_FORMS is empty); later: tunebook export --job {job} --version {version}")
        return None
    return export_version(registry, job, version, into, asked, base_model, progress=False)


def answering_folder(release: RunFolder) -> RunFolder:
    """The run folder inside a downloaded version that holds what answers (the pyfunc model's data, or the release
    itself for a version registered before the pyfunc model)."""
    inner = release.released_model_data
    return RunFolder(inner) if inner.is_dir() else release


def _test_examples(release: RunFolder, limit: int) -> pd.DataFrame:
    """The frozen test split as 04 scored it (its predictions file holds every test example's text and target)."""
    frame = answer_frame(read_predictions(release.tuned_predictions))  # the examples and any retrieved context
    return frame.head(limit) if limit else frame


def _check_forms(asked: tuple[str, ...], gguf_types: tuple[str, ...]) -> None:
    unknown = [f for f in asked if f not in FORMS]
    if unknown or not asked:
        raise TunebookError(f"--forms {','.join(asked)}: choose from {', '.join(FORMS)}.")
    bad = [t for t in gguf_types if t not in GGUF_TYPES]
    if bad:
        raise TunebookError(f"--gguf-types {','.join(bad)}: choose from {', '.join(GGUF_TYPES)}.")
    if "ollama" in asked and "gguf" not in asked:
        raise TunebookError("the ollama form runs a GGUF file: ask for gguf too (--forms gguf,ollama).")
    if "gguf" in asked and importlib.util.find_spec("llama_cpp") is None:
        raise TunebookError(INSTALL_HINT)


def export_version(
    registry: Registry,
    job: str,
    version: str | int | None = None,
    into: str | Path = "exports",
    forms: tuple[str, ...] = FORMS,
    base_model: str = "bundled",
    gguf_types: tuple[str, ...] = GGUF_TYPES,
    threads: int = 0,
    min_agreement: float = 0.95,
    alpha: float = 0.05,
    examples: int = 0,
    progress: bool = True,
) -> Exported:
    """Write ``forms`` of the champion (or ``version``) into ``into/<job>-v<version>/``, check each on the frozen test
    split through its runtime, and record on the registered version which forms may ship."""
    _check_forms(forms, gguf_types)
    for name, value, ok in (
        ("--min-agreement", min_agreement, 0 < min_agreement <= 1),
        ("--alpha", alpha, 0 < alpha < 1),
        ("--threads", threads, threads >= 0),
        ("--examples", examples, examples >= 0),
    ):
        if not ok:
            raise TunebookError(f"{name} {value} is out of range: see `tunebook export --help`.")
    version, release = fetch_release(registry, job, version)
    model_folder = answering_folder(release)
    card, system = release.read_job_card(), read_system(model_folder)
    if not system.trained:
        raise TunebookError(
            f"version {version} of '{job}' is the cheap baseline '{system.variant}' ({system.kind}): it has no model "
            "weights to export. It is served as it is with `tunebook serve` or `tunebook predict`."
        )
    out = Path(into) / f"{job}-v{version}"
    if out.exists():
        raise TunebookError(f"{out} exists; an export is written once. Remove it or choose another --into.")
    adapter_dir, manifest = model_folder.adapter_dir, read_manifest(model_folder.adapter_dir)
    resolved = local_base_model(base_model)
    check_adapter_matches(manifest, card, model_identity(resolved))
    test = _test_examples(release, examples)
    budget = system.answer_budget or task_of(card).max_new_tokens
    result = Exported(folder=out, version=str(version))
    out.mkdir(parents=True)

    clock = time.perf_counter()
    model, tokenizer = load_trained(resolved, adapter_dir, manifest)
    reference = predict(model, tokenizer, card, test, max_new_tokens=budget, progress=progress)
    result.seconds["reference answers"] = time.perf_counter() - clock
    del model

    clock = time.perf_counter()
    merged = (
        load_for_inference(resolved, adapter_dir, full=True)[0]
        if manifest.full_fine_tune
        else merged_model(resolved, adapter_dir, manifest.quantization)
    )
    scratch = Path(tempfile.mkdtemp(prefix="tunebook-merged-"))
    merged_dir = written.write_merged(
        merged, tokenizer, written.form_folder(out if "merged" in forms else scratch, "merged")
    )
    result.seconds["merged: write"] = time.perf_counter() - clock
    del merged
    missing = written.not_included(system)
    common = dict(job=job, version=str(version), manifest=manifest, adapter_dir=adapter_dir, system=system)

    try:
        if "merged" in forms:
            result.manifests["merged"] = _merged_form(
                result, merged_dir, card, test, reference, budget, missing, common, min_agreement, alpha, progress
            )
        if "adapter" in forms and manifest.full_fine_tune:
            result.skipped["adapter"] = (
                "a full fine-tune has no adapter: the merged folder is the trained model itself"
            )
        elif "adapter" in forms:
            result.manifests["adapter"] = _adapter_form(written.form_folder(out, "adapter"), resolved, missing, common)
        if "gguf" in forms:
            gguf = _gguf_forms(
                result, written.form_folder(out, "gguf"), merged_dir, tokenizer, card, test, reference, budget, gguf_types,
                threads or free_threads(), min_agreement, alpha, progress,
            )  # fmt: skip
            result.parity += gguf.rows
            result.manifests["gguf"] = _gguf_manifest(
                written.form_folder(out, "gguf"), gguf, gguf_types, budget, missing, common
            )
            if "ollama" in forms:
                result.manifests["ollama"] = _ollama_form(
                    written.form_folder(out, "ollama"), gguf, tokenizer, card, test, budget, missing, common
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _record(registry, job, str(version), result)
    return result


def _verdict(rows: list[FormParity]) -> tuple[bool, str]:
    """Whether every parity row passed, and why not (each failing row named)."""
    failed = [r for r in rows if not r.releasable]
    return not failed, "; ".join(f"{r.form}: {r.why}" for r in failed) or "every check passed"


def _merged_form(
    result: Exported,
    folder: Path,
    card,
    test: pd.DataFrame,
    reference: pd.DataFrame,
    budget: int,
    missing: list[str],
    common: dict,
    min_agreement: float,
    alpha: float,
    progress: bool,
) -> ExportManifest:
    """The merged folder loaded back by transformers, answering the test split, with its README and manifest."""
    clock = time.perf_counter()
    loaded, own_tokenizer = load_for_inference(str(folder))
    answers = predict(loaded, own_tokenizer, card, test, max_new_tokens=budget, progress=progress)
    seconds = time.perf_counter() - clock
    tokens = sum(len(encode_prompt(own_tokenizer, build_messages(card, t))) for t in model_inputs(test)) + sum(
        len(own_tokenizer(str(a), add_special_tokens=False)["input_ids"]) for a in answers["prediction"]
    )
    row = compare(
        card, reference, answers, form="merged", runtime="transformers (batches of 8)", seconds=seconds,
        tokens_per_second=tokens / seconds, problems=[], min_agreement=min_agreement, alpha=alpha,
    )  # fmt: skip
    result.parity.append(row)
    result.seconds["merged: parity"] = row.seconds
    written.write_readme(
        folder,
        f"{card.name} version {common['version']}: merged model",
        "The adapter merged into its base model, saved as a transformers model folder with its tokenizer and chat "
        "template. transformers and vLLM load it as it is.",
        [
            f"vllm serve {folder.resolve()} --dtype float32 --generation-config auto",
            f"python -c \"from transformers import pipeline; print(pipeline('text-generation', '{folder.resolve()}'))\"",
        ],
        missing,
        [row],
    )
    ok, why = _verdict([row])
    return written.manifest_for(form="merged", folder=folder, parity=[row], for_release=ok, why=why, **common)


def _adapter_form(folder: Path, resolved: str, missing: list[str], common: dict) -> ExportManifest:
    """The adapter folder for multi-adapter servers, with the base weights it must be served on in its README."""
    adapter_dir, manifest = common["adapter_dir"], common["manifest"]
    written.write_adapter(adapter_dir, folder)
    rank = written.adapter_rank(adapter_dir)
    job = common["job"]
    written.write_readme(
        folder,
        f"{job} version {common['version']}: LoRA adapter",
        f"The PEFT adapter as trained (rank {rank}), for servers that load adapters beside their base model. Its base "
        f"model is {manifest.base_model.get('name', 'the base model')} with weights of sha256 "
        f"{manifest.base_model.get('sha256')}: serve it on exactly those weights (here: {resolved}). Other weights "
        "of the same name, such as a differently quantized or converted copy, are not what was evaluated; the merged "
        "folder avoids that.",
        [
            f"vllm serve {resolved} --enable-lora --max-lora-rank {rank} --lora-modules {job}={folder.resolve()}",
            f"lorax-launcher --model-id {resolved}   # then send adapter_id={folder.resolve()}, adapter_source=local",
        ],
        missing,
        [],
    )
    return written.manifest_for(
        form="adapter",
        folder=folder,
        parity=[],
        for_release=True,
        why="the adapter as evaluated: the evaluated model itself, on its own base weights",
        **common,
    )


@dataclass
class GgufForms:
    """The GGUF files written, every parity row measured, the rows of the way of choosing that ships, and that way."""

    files: list[Path]
    rows: list[FormParity]
    shipped: list[FormParity]
    chooser: str  # '' where every answer is generated


CHOOSER_WORDS = {"scores": "by candidate log-probabilities", "grammar": "by a grammar over the candidates"}


def _gguf_forms(
    result: Exported,
    folder: Path,
    merged_dir: Path,
    tokenizer,
    card,
    test: pd.DataFrame,
    reference: pd.DataFrame,
    budget: int,
    gguf_types: tuple[str, ...],
    threads: int,
    min_agreement: float,
    alpha: float,
    progress: bool,
) -> GgufForms:
    """Each GGUF type written and run through llama.cpp on the test split. For fixed answers both ways of choosing
    are measured on the first type, and the one that agrees more with the adapter is used for every type."""
    folder.mkdir(parents=True)
    clock = time.perf_counter()
    f16 = write_gguf(merged_dir, folder / f"{card.name}-f16.gguf", name=card.name)
    result.seconds["gguf f16: write"] = time.perf_counter() - clock
    files = []
    for kind in gguf_types:
        if kind != "f16":
            clock = time.perf_counter()
            files.append(quantize_gguf(f16, folder / f"{card.name}-{kind}.gguf", kind))
            result.seconds[f"gguf {kind}: quantize"] = time.perf_counter() - clock
        else:
            files.append(f16)
    if "f16" not in gguf_types:
        f16.unlink()
    choosing = bool(card.choices) and task_of(card).choice_is_answer
    choosers = CHOOSERS if choosing else ("scores",)
    rows, shipped = [], []
    for i, path in enumerate(files):
        kind = path.stem.rsplit("-", 1)[1]
        runtime = GgufRuntime(path, threads)
        try:
            problems = gguf_drift(runtime, tokenizer, card, model_inputs(test.head(8)))
            measured = {}
            for chooser in choosers if i == 0 else choosers[:1]:
                runtime.counter.tokens, runtime.counter.seconds = 0, 0.0
                clock = time.perf_counter()
                answers = gguf_answers(runtime, tokenizer, card, test, budget, chooser, progress)
                measured[chooser] = compare(
                    card, reference, answers, form=f"gguf-{kind}",
                    runtime="llama.cpp" + (f" ({CHOOSER_WORDS[chooser]})" if choosing else ""),
                    seconds=time.perf_counter() - clock, tokens_per_second=runtime.counter.per_second,
                    problems=problems, min_agreement=min_agreement, alpha=alpha,
                )  # fmt: skip
            if i == 0:  # the way that agrees more is used for every type (ties: the first, candidate scores)
                choosers = (max(measured, key=lambda c: measured[c].agreement),)
            rows += measured.values()
            shipped.append(measured[choosers[0]])
            result.seconds[f"gguf {kind}: parity"] = sum(r.seconds for r in measured.values())
        finally:
            runtime.close()
    return GgufForms(files, rows, shipped, CHOOSER_WORDS[choosers[0]] if choosing else "")


def _gguf_manifest(
    folder: Path, gguf: GgufForms, gguf_types: tuple[str, ...], budget: int, missing: list[str], common: dict
) -> ExportManifest:
    """The GGUF folder's README and manifest: a verdict per file, the folder for release if one file may ship."""
    written.write_readme(
        folder,
        f"{common['job']} version {common['version']}: GGUF for llama.cpp",
        "The merged model as GGUF files for llama.cpp and the tools built on it, each carrying the chat template, BOS "
        "rule and end-of-generation tokens it was trained with."
        + (
            " Both ways of choosing a fixed answer were measured on the first file; llama.cpp chose them "
            f"{gguf.chooser} for every file, and that row is each file's verdict."
            if gguf.chooser
            else ""
        )
        + (
            " q4_k_m: llama.cpp stores a tensor as q4_K only where its rows hold a multiple of 256 values and falls "
            "back to q5_0 or q8_0 for the others."
            if "q4_k_m" in gguf_types
            else ""
        ),
        [f"llama-cli -m {p.resolve()} --jinja --temp 0 -n {budget}" for p in gguf.files],
        missing,
        gguf.rows,
    )
    passed = [f.name for f, r in zip(gguf.files, gguf.shipped) if r.releasable]
    failed = [f.name for f, r in zip(gguf.files, gguf.shipped) if not r.releasable]
    why = _verdict(gguf.shipped)[1] + (f"; for release: {', '.join(passed)}" if passed and failed else "")
    return written.manifest_for(
        form="gguf", folder=folder, parity=gguf.shipped, for_release=bool(passed), why=why, not_for_release=failed,
        **common,
    )  # fmt: skip


def _ollama_form(
    folder: Path, gguf: GgufForms, tokenizer, card, test: pd.DataFrame, budget: int, missing: list[str], common: dict
) -> ExportManifest:
    """A Modelfile for the smallest GGUF type that passed (else the first), checked by rendering its template for
    one test example and comparing the tokens with the training prompt's."""
    folder.mkdir(parents=True)
    passed = [f for f, r in zip(gguf.files, gguf.shipped) if r.releasable]
    chosen = min(passed or gguf.files[:1], key=lambda p: p.stat().st_size)
    row = gguf.shipped[gguf.files.index(chosen)]
    path = write_modelfile(
        folder,
        f"../gguf/{chosen.name}",
        ollama_template(tokenizer),
        system_prompt(card),
        stop_tokens(tokenizer),
        budget,
    )
    problems = check_modelfile(path, tokenizer, card, model_inputs(test.head(8)))
    ok = row.releasable and not problems
    why = "; ".join(problems + ([] if row.releasable else [f"{row.form}: {row.why}"])) or (
        f"runs {chosen.name}, which passed its parity check; the template renders the training prompt token for token"
    )
    written.write_readme(
        folder,
        f"{card.name} version {common['version']}: Ollama",
        f"A Modelfile that runs {chosen.name} with the training prompt format, the job's system prompt, its stop "
        "tokens and greedy decoding. Ollama was not run here: its template was checked by rendering it for a test "
        "example and comparing the tokens with the training prompt's; the model's answers are the GGUF file's, "
        "whose parity is below.",
        [
            f"cd {folder.resolve()} && ollama create {card.name.replace('_', '-')} -f Modelfile",
            f"ollama run {card.name.replace('_', '-')} 'the text of a request'",
        ],  # fmt: skip
        missing,
        [row],
    )
    return written.manifest_for(form="ollama", folder=folder, parity=[row], for_release=ok, why=why, **common)


def _record(registry: Registry, job: str, version: str, result: Exported) -> None:
    """Tag the registered version with each exported form's verdict (``tunebook.export.<form>``)."""
    client = registry.client
    failed = result.not_for_release
    named = [r.form for r in result.manifests["gguf"].parity] if "gguf" in result.manifests else []
    for form in [f for f in result.manifests if f != "gguf"] + named:
        verdict = "not for release" if form in failed else "passed"
        client.set_model_version_tag(model_name(job), version, f"{TAG}export.{form}", verdict)
