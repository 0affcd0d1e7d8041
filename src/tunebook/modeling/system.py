"""The system that ships: whatever won, described once and answered by one code path.

A system is the trivial answer, the classical model, the base model prompted (zero-shot, with fixed shots or with each
input's most similar training examples), or a trained model (alone or mixed with the classical model). ``system.json``
says which; the files beside it (decision rule, classical model, worked examples) are what it needs besides a language
model. 04 evaluates a system through ``LoadedSystem.answer``, and the served model (``pyfunc``), ``tunebook predict``,
shadow and 06 answer through the same method, so a new kind of system plugs in here once.

Torch and transformers are imported only when a system needs a language model: a classical classifier starts without
them.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import System
from tunebook.core.runfolder import RunFolder, manifest_path, trained_weights
from tunebook.data.examples import answer_frame
from tunebook.errors import TunebookError
from tunebook.knowledge.context import build_index, load_index
from tunebook.knowledge.render import model_inputs
from tunebook.modeling.classical import ClassicalModel, Retriever, load_classical_file
from tunebook.modeling.decision_rule import DecisionRule, decided_frame, load_rule, save_rule

# --- writing a system's folder ----------------------------------------------------------------------------------------


def write_shots(shots: list[tuple[str, str]], path: Path) -> Path:
    """Worked examples as JSON lines of text and target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for text, target in shots:
            handle.write(json.dumps({"text": text, "target": target}, ensure_ascii=False) + "\n")
    return path


def read_shots(path: Path) -> list[tuple[str, str]]:
    """Worked examples written by ``write_shots``."""
    if not path.is_file():
        raise TunebookError(f"{path} is missing: the system's worked examples are written by 02_prove_the_baseline.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["text"], row["target"]) for row in rows]


def adopt_variant(run: RunFolder, name: str, why: str) -> System:
    """Make 02's variant ``name`` the run's system: its description and files copied into ``system/``."""
    source = run.variant_system(name)
    if not source.is_file():
        raise TunebookError(
            f"{source} is missing: 02_prove_the_baseline of this tunebook writes each variant as a system. Re-run 02."
        )
    spec = run.read_system(source).model_copy(update={"why": why})
    _fresh(run.system_dir)
    for found, target in (
        (run.variant_rule(name), run.system_rule),
        (run.variant_shots(name), run.system_shots),
        (run.variant_model(name), run.system_classical),
    ):
        if found.is_file():
            shutil.copy2(found, target)
    if spec.knowledge:
        shutil.copytree(run.knowledge_index, run.system_knowledge)
    run.write_system(spec)
    return spec


def adopt_trained(run: RunFolder, rule: DecisionRule | None, answer_budget: int, why: str) -> System:
    """Make the run's trained model (with 04's decision rule, and the classical model if the rule mixes it in) the
    run's system."""
    manifest = run.read_manifest()
    mixed = rule is not None and rule.mix_weight > 0
    knowledge = None
    if manifest.knowledge_version:  # trained with passages in its prompts: it answers with them too
        knowledge = json.loads((run.knowledge_index / "index.json").read_text(encoding="utf-8"))
        knowledge = {
            "version": knowledge["version"],
            "retriever": knowledge["retriever"],
            "k": knowledge["k"],
            "trained_with": manifest.knowledge_version,  # differs after a knowledge update: nothing was retrained
        }
    spec = System(
        kind="mixed" if mixed else "adapter",
        variant="tuned",
        needs_language_model=True,
        trained=True,
        decision_rule=rule is not None,
        answer_budget=answer_budget,
        base_model=manifest.base_model,
        knowledge=knowledge,
        why=why,
    )
    _fresh(run.system_dir)
    if knowledge:
        shutil.copytree(run.knowledge_index, run.system_knowledge)
    if rule is not None:
        save_rule(rule, run.system_rule)
    if mixed:
        shutil.copy2(run.classical_model, run.system_classical)
    run.write_system(spec)
    return spec


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def system_files(run: RunFolder) -> list[Path]:
    """Every file that defines the run's system (its folder, and the trained weights where it has them)."""
    files = sorted(p for p in run.system_dir.rglob("*") if p.is_file()) if run.system_dir.is_dir() else []
    spec = read_system(run)
    weights = trained_weights(run.adapter_dir) if spec.trained else None
    return files + ([weights] if weights else [])


def read_system(run: RunFolder) -> System:
    """The run's (or a downloaded release's) system; a release made before systems existed reads as its adapter."""
    if run.system_file.is_file():
        return run.read_system()
    if manifest_path(run.adapter_dir).is_file():
        rule = load_rule(run.tuned_rule) if run.tuned_rule.is_file() else None
        return System(
            kind="mixed" if rule is not None and rule.mix_weight > 0 else "adapter",
            variant="tuned",
            needs_language_model=True,
            trained=True,
            decision_rule=rule is not None,
            base_model=run.read_manifest().base_model,
        )
    raise TunebookError(f"{run.system_file} is missing: 04_evaluate writes the system a run releases.")


# --- answering --------------------------------------------------------------------------------------------------------


class LoadedSystem:
    """A system ready to answer: its language model (if it needs one), decision rule, classical model and shots."""

    def __init__(self, folder: RunFolder, base_model: str | None = None, serving: bool = True):
        self.folder, self.card = folder, folder.read_job_card()
        self.spec = read_system(folder)
        self.rule = self._rule()
        self.classical = self._classical()
        self.shots = read_shots(folder.system_shots) if self.spec.kind == "prompted" and self.spec.k_shots else []
        self.retriever = None
        if self.spec.kind == "retrieval" or (self.spec.kind == "classical" and self.spec.needs_language_model):
            pool = read_shots(folder.system_shots)
            self.retriever = Retriever(pd.DataFrame(pool, columns=["text", "target"]))
        self.index = None
        if self.spec.knowledge:
            # deferred: the retrievers' libraries load only for a system that answers from documents
            self.index = load_index(folder.system_knowledge)
        self.model = self.tokenizer = self.prefix = None
        if self.spec.needs_language_model:
            self._load_language_model(base_model, serving)

    def _rule(self) -> DecisionRule | None:
        if not self.spec.decision_rule:
            return None
        path = self.folder.system_rule if self.folder.system_rule.is_file() else self.folder.tuned_rule
        return load_rule(path)

    def _classical(self) -> ClassicalModel | None:
        if self.spec.kind not in ("classical", "mixed"):
            return None
        if self.folder.system_classical.is_file():
            return load_classical_file(self.folder.system_classical)
        raise TunebookError(
            f"{self.folder.system_classical} is missing: this version's classical model was stored another way (a "
            "release made before tunebook stored it as arrays keeps it as a pickle, which loading would run as "
            "code, so tunebook refuses it). Release the run folder again with this tunebook: re-run 04_evaluate and "
            "05_release on a copy of the run folder."
        )

    def _load_language_model(self, base_model: str | None, serving: bool) -> None:
        # deferred: torch, transformers and peft load only for a system that needs a language model
        from tunebook.core import lineage
        from tunebook.modeling import decoding, models, predict

        resolved = models.resolve_base_model(base_model or "bundled")
        identity = models.model_identity(resolved)
        expected = self.spec.base_model or {}
        if self.spec.trained:
            manifest = self.folder.read_manifest()
            lineage.check_adapter_matches(manifest, self.card, identity)
            load = predict.load_for_serving if serving else predict.load_trained
            self.model, self.tokenizer = load(resolved, self.folder.adapter_dir, manifest)
        else:
            if expected.get("sha256") and identity.get("sha256") and expected["sha256"] != identity["sha256"]:
                raise TunebookError(
                    f"this system was evaluated with base model '{expected.get('name')}' (sha256 "
                    f"{str(expected['sha256'])[:12]}), but BASE_MODEL '{identity.get('name')}' hashes "
                    f"{str(identity['sha256'])[:12]}: point BASE_MODEL (or TUNEBOOK_BASE_MODEL) at the same weights."
                )
            self.model, self.tokenizer = predict.load_for_inference(resolved)
        self.prefix = decoding.PromptPrefix(self.model, self.tokenizer, self.card)

    def _shots_for(self, texts: list[str]) -> Any:
        if self.retriever is not None:
            return self.retriever.shots(texts, self.spec.k_shots)
        return self.shots

    def answer(self, examples: pd.DataFrame, batch_size: int = 8, progress: bool = False) -> pd.DataFrame:
        """One answer per row (columns id, text, target, tags), as 04 scores it: prediction, and for answers from a
        fixed set the confidence and one probability per choice."""
        if self.spec.kind == "trivial":
            return self._trivial(examples)
        if self.index is not None:
            examples = self.index.attach(examples)
        card, texts = self.card, examples["text"].tolist()
        if self.spec.kind == "classical" and task_of(card).choice_is_answer:  # no language model, no torch
            return decided_frame(card, examples, self.classical.predict_proba(texts), self.rule)[0]
        from tunebook.modeling import predict  # deferred: see the module docstring

        shots, budget = self._shots_for(texts), self.spec.answer_budget
        if card.choices:
            if self.spec.kind == "classical":
                probs = self.classical.predict_proba(texts)
            else:
                inputs = model_inputs(examples)
                probs = predict.choose(
                    self.model, self.tokenizer, card, inputs, batch_size, progress, shots, self.prefix
                )[1]
            other = self.classical.predict_proba(texts) if self.spec.kind == "mixed" else None
            return predict.answer_choices(
                self.model,
                self.tokenizer,
                card,
                examples,
                probs,
                self.rule,
                other,
                batch_size=batch_size,
                progress=progress,
                shots=shots,
                max_new_tokens=budget,
                prefix=self.prefix,
            )
        return predict.predict(
            self.model, self.tokenizer, card, examples, batch_size, progress, shots, budget, prefix=self.prefix
        )

    def with_knowledge(self, knowledge, index=None) -> LoadedSystem:
        """This system answering from another version of its documents (the same retriever refitted, the same k,
        nothing retrained): how a knowledge update is tested and released. ``index``: that refit, if already built."""
        if self.index is None:
            raise TunebookError("this system answers without documents: a knowledge version changes nothing in it.")
        # deferred: see __init__
        updated = copy.copy(self)
        updated.index = index if index is not None else build_index(knowledge, self.index.name, self.index.k)
        updated.spec = self.spec.model_copy(
            update={"knowledge": {**self.spec.knowledge, "version": knowledge.version}}
        )
        return updated

    def _trivial(self, examples: pd.DataFrame) -> pd.DataFrame:
        frame = answer_frame(examples)
        frame["prediction"] = self.spec.trivial_answer
        if self.card.choices:
            shares = self.spec.trivial_shares or {}
            chosen = task_of(self.card).stratum(self.card, self.spec.trivial_answer)
            frame["confidence"] = shares.get(chosen, 0.0)
            for name in self.card.choices:
                frame[f"p_{name}"] = shares.get(name, 0.0)
        return frame


def load_system(folder: RunFolder, base_model: str | None = None, serving: bool = True) -> LoadedSystem:
    """The system in a run folder (or a downloaded release) loaded to answer; ``serving`` loads a trained model the
    way the release serves it (merged where ``predict.serves_merged``), else as it was evaluated."""
    return LoadedSystem(folder, base_model, serving)


def json_answers(card: JobCard, predictions: pd.Series) -> pd.Series:
    """Answers of a JSON kind (extraction, tool calls) as objects, each left as its text where it is not JSON."""
    if not task_of(card).json_answer:
        return predictions

    def parsed(value: Any) -> Any:
        try:
            return json.loads(value) if isinstance(value, str) else value
        except ValueError:
            return value

    return predictions.map(parsed)


def same_answers(first: pd.DataFrame, second: pd.DataFrame) -> np.ndarray:
    """Per row, whether two prediction frames over the same examples give the same answer."""
    return (first["prediction"].astype(str).to_numpy() == second["prediction"].astype(str).to_numpy()).astype(bool)
