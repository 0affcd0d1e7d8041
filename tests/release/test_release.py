"""Releasing: the gate, parity, latency and model card, and the whole release journey through the notebooks."""

import json
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest
import torch
from conftest import EXAMPLE, tol

from tunebook import cli
from tunebook.card import schema as job
from tunebook.core import lineage
from tunebook.core.artifacts import GeneralProbe, Parity
from tunebook.core.runfolder import RunFolder
from tunebook.errors import TunebookError
from tunebook.modeling import predict
from tunebook.registry import store as registry
from tunebook.release import gate as gating
from tunebook.release import publish
from tunebook.release import serving_checks as release


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def frame(targets, predictions):
    n = len(targets)
    return pd.DataFrame(
        {
            "id": [f"T{i}" for i in range(n)],
            "text": [f"ticket {i}" for i in range(n)],
            "target": targets,
            "prediction": predictions,
            "tags": [""] * n,
        }
    )


CALM = GeneralProbe(
    base={"text_loss": 3.0, "instruction_loss": 2.0},
    tuned={"text_loss": 3.05, "instruction_loss": 2.1},
    change={"text_loss": 0.05, "instruction_loss": 0.1},
    max_increase=0.25,
    regressed=False,
    warning=None,
)
MATCHING = Parity(applicable=True, n=10, agreement=1.0, detail="0 differ")


def test_the_gate_passes_an_adapter_no_worse_than_the_reference(card):
    truth = ["billing"] * 10 + ["escalate"] * 5
    verdict = gating.gate(
        card,
        frame(truth, truth),
        frame(truth, ["billing"] * 15),
        "champion v1",
        regression=CALM,
        parity_result=MATCHING,
    )
    assert verdict.passed and verdict.failed == [] and "may be promoted" in verdict.verdict
    assert {c.check for c in verdict.checks} >= {
        "must_never",
        "no_drop:(whole answers)",
        "no_drop:billing",
        "general_regression",
        "parity",
    }


def test_a_trained_model_replaces_an_untrained_champion_only_when_better_beyond_chance(card):
    truth = ["billing"] * 20 + ["technical"] * 20
    shipped = frame(truth, ["billing"] * 30 + ["technical"] * 10)  # 30 of 40 right
    same = gating.gate(
        card, shipped, shipped, "champion v1", regression=CALM, parity_result=MATCHING, must_improve=True
    )
    assert not same.passed and same.failed == ["beats_shipped_baseline"]
    assert "could be chance" in next(c for c in same.checks if c.check == "beats_shipped_baseline").detail
    better = gating.gate(
        card, frame(truth, truth), shipped, "champion v1", regression=CALM, parity_result=MATCHING, must_improve=True
    )
    assert better.passed  # fixed 10, broke 0: exact McNemar p = 0.002
    untrained = gating.gate(card, shipped, shipped, "v1", regression=None, parity_result=MATCHING, trained=False)
    probe = next(c for c in untrained.checks if c.check == "general_regression")
    assert untrained.passed and probe.passed and "trains no weights" in probe.detail


def test_the_gate_names_every_failing_check(card):
    truth = ["billing"] * 12 + ["escalate"] * 6
    reference = frame(truth, truth)
    worse = frame(truth, ["shipping"] * 12 + ["escalate"] * 5 + ["billing"])
    verdict = gating.gate(
        card,
        worse,
        reference,
        "champion v1",
        regression=CALM.model_copy(update={"change": {"text_loss": 0.1, "instruction_loss": 0.9}}),
        parity_result=MATCHING.model_copy(update={"agreement": 0.8, "detail": "2 differ"}),
    )
    assert verdict.failed == [
        "must_never",
        "no_drop:(whole answers)",
        "no_drop:billing",
        "general_regression",
        "parity",
    ]
    assert verdict.verdict.startswith(
        "Gate FAILED against champion v1: must_never, no_drop:(whole answers), no_drop:billing"
    )
    details = {c.check: c.detail for c in verdict.checks}
    assert "1 must-never failure(s)" in details["must_never"] and "T17" in details["must_never"]
    assert "instruction_loss +0.900" in details["general_regression"] and "80.0%" in details["parity"]


def test_card_targets_block_only_when_required(card):
    truth = ["billing"] * 8 + ["shipping"] * 8
    mediocre = frame(truth, ["billing"] * 8 + ["shipping"] * 4 + ["billing"] * 4)
    advisory = gating.gate(card, mediocre, mediocre, "the prompting baseline", regression=CALM, parity_result=MATCHING)
    assert advisory.passed and "target:macro_f1" in advisory.targets_missed and "not blocking" in advisory.verdict
    strict = gating.gate(
        card,
        mediocre,
        mediocre,
        "the prompting baseline",
        regression=CALM,
        parity_result=MATCHING,
        require_targets=True,
    )
    assert not strict.passed and "target:macro_f1" in strict.failed and "target:accuracy" in strict.failed


def test_a_missing_probe_or_parity_fails_the_gate(card):
    truth = ["billing"] * 4
    verdict = gating.gate(card, frame(truth, truth), frame(truth, truth), "x", regression=None, parity_result=None)
    assert verdict.failed == ["general_regression", "parity"]


def test_an_adapter_for_another_job_or_base_is_refused_naming_both(card):
    from tunebook.card.schema import card_hash

    manifest = SimpleNamespace(
        job="order_extraction",
        job_card_sha256="ab" * 32,
        base_model={"name": "SmolLM2-135M-Instruct", "sha256": "cd" * 32},
    )
    with pytest.raises(TunebookError, match="trained for job 'order_extraction'.*this run's job is 'support_triage'"):
        lineage.check_adapter_matches(manifest, card, {"name": "SmolLM2-135M-Instruct", "sha256": "cd" * 32})
    manifest.job, manifest.job_card_sha256 = "support_triage", card_hash(card)
    with pytest.raises(
        TunebookError, match="base model 'SmolLM2-135M-Instruct' \\(sha256 cdcd.*BASE_MODEL is 'other' \\(sha256 efef"
    ):
        lineage.check_adapter_matches(manifest, card, {"name": "other", "sha256": "ef" * 32})


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, tiny_model):
    """A LoRA adapter with random (non-zero) weights on the tiny model, so merging changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("random-adapter")
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quantization", ["none", "nf4", "int8"])
def test_merged_model_predicts_what_the_adapter_on_its_base_predicts(
    tiny_model, random_adapter, small_job, quantization
):
    from tunebook.data import examples as data

    small = job.load_job_card(small_job)
    examples = data.load_examples(small)[0].head(12)
    model, tokenizer = predict.load_for_inference(tiny_model, random_adapter, quantization)
    merged = release.merged_model(tiny_model, random_adapter, quantization)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    same = release.parity(model, merged, tokenizer, small, examples)
    # LLM.int8 also rounds the activations to 8 bits, which a full-precision merged model does not
    assert same.applicable and same.agreement == 1.0 and same.n == 12
    assert same.max_confidence_difference < tol(1e-3 if quantization == "int8" else 1e-4, 0.05)
    plain = predict.load_for_inference(tiny_model)[0]
    assert (
        release.parity(model, plain, tokenizer, small, examples).max_confidence_difference > 1e-3
    )  # the base alone is not the adapter
    if quantization == "nf4":  # merging into the original weights ignores what 4-bit quantization did to them
        naive = release.merged_model(tiny_model, random_adapter, "none")
        # (bfloat16 rounding on a GPU narrows the gap: measured 9.9x there)
        assert release.parity(model, naive, tokenizer, small, examples).max_confidence_difference > tol(10, 5) * max(
            same.max_confidence_difference, 1e-5
        )


def test_parity_does_not_apply_to_a_full_fine_tune_and_latency_is_timed_per_example(tiny_model, small_job):
    from tunebook.data import examples as data

    small = job.load_job_card(small_job)
    examples = data.load_examples(small)[0].head(5)
    model, tokenizer = predict.load_for_inference(tiny_model)
    assert not release.parity(model, None, tokenizer, small, examples).applicable
    speed = release.latency(model, tokenizer, small, examples)
    assert speed.n == 5 and 0 < speed.p50_ms <= speed.p95_ms and speed.device == str(model.device)


# The release journey through the notebooks (fixture `released` in conftest: a good adapter, then a shuffled-label one).


def test_first_adapter_becomes_champion_with_everything_logged(released):
    runs, (good_dir, good), _ = released
    result = good.results["05_release"]
    assert good.results["04_evaluate"]["metrics"]["accuracy"] == 1.0, "the tiny model should learn the keyword tickets"
    assert result["gate_passed"] and result["promoted"] and result["version"] == "1" and result["failed_checks"] == []
    store = registry.open_registry(workspace=runs)
    version = registry.get_version(store, "support_triage", 1)
    assert registry.aliases(store, "support_triage")["champion"] == "1"
    assert version.tags["tunebook.run_dir"] == str(good_dir.resolve()) and version.tags["tunebook.gate"] == "passed"
    assert (
        version.tags["tunebook.decision_rule"].startswith("temperature")
        and version.tags["tunebook.baseline_variant"] == "classical"
    )
    assert version.description.startswith("# support_triage · version 1")
    run = store.client.get_run(version.run_id)
    assert run.data.metrics["test.macro_f1"] == 1.0 and "latency.p95_ms" in run.data.metrics
    version_file = RunFolder(good_dir).read_dataset_version()
    inputs = {d.tags[0].value: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert inputs == {split: version_file.splits[split].hash[:12] for split in ("train", "val", "test")}
    assert (
        run.data.params["train.method"] == "full"
        and run.data.params["dataset_hash"] == good.results["01_clean_the_data"]["dataset_hash"]
    )
    logged = {
        a.path
        for folder in ("", "adapter", "notebooks", "evaluation", "data", "release")
        for a in store.client.list_artifacts(version.run_id, folder or None)
    }
    for path in (
        "job.yaml",
        "model_card.md",
        "release/gate.json",
        "adapter/model.safetensors",
        "adapter/tunebook_manifest.json",
        "evaluation/predictions.jsonl",
        "evaluation/decision_rule.json",
        "data/dataset_version.json",
        "notebooks/00_define_the_job.ipynb",
        "notebooks/04_evaluate.ipynb",
        "notebooks/05_release.ipynb",
    ):
        assert path in logged, path
    card_text = (good_dir / "release" / "model_card.md").read_text()
    for heading in (
        "## Intended use",
        "## Lineage",
        "## Training",
        "## Test split",
        "## Release gate",
        "## Serving",
        "## Known failure modes",
    ):
        assert heading in card_text


def test_shuffled_label_adapter_is_stopped_by_the_gate_with_the_failing_checks_named(released):
    runs, _, (bad_dir, bad) = released
    result = bad.results["05_release"]
    assert not result["gate_passed"] and not result["promoted"] and result["version"] == "2"
    # Its probabilities carry no information, so the decision rule fitted on validation flattens them and, under the
    # card's costs (a missed escalation costs 10), routes every ticket to escalate: no must-never failure, but whole
    # answers and the other classes drop, and that is what the gate names.
    assert {"no_drop:(whole answers)", "no_drop:billing", "no_drop:technical"} <= set(result["failed_checks"])
    rule = json.loads((bad_dir / "evaluation" / "decision_rule.json").read_text())
    assert rule["fitted_on"]["split"] == "validation" and rule["thresholds"].keys() <= {"escalate"}
    store = registry.open_registry(workspace=runs)
    assert registry.aliases(store, "support_triage") == {"champion": "1", "challenger": "2"}
    assert (
        bad_dir / "release" / "champion"
    ).is_dir()  # the champion's stored predictions, fetched for the paired gate
    run_id = registry.get_version(store, "support_triage", 2).run_id
    assert [a.path for a in store.client.list_artifacts(run_id, "release")] == [
        "release/gate.json"
    ]  # not the champion's files
    book = nbformat.read(bad_dir / "05_release.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)
    assert (
        "gating against champion v1" in printed
        and "Gate FAILED against champion v1: no_drop:(whole answers)" in printed
    )
    drops = RunFolder(bad_dir).read_gate().drops
    assert drops["(whole answers)"]["reference"] == 1.0 and drops["(whole answers)"]["significant_drop"]


def test_rollback_restores_the_earlier_champion(released, capsys):
    runs, _, _ = released
    where = ["--job", "support_triage", "--runs-dir", str(runs)]
    assert cli.main(["promote", *where, "--version", "2"]) == 2
    assert "failed its gate" in capsys.readouterr().err
    assert cli.main(["promote", *where, "--version", "2", "--force", "--reason", "testing the way back"]) == 0
    store = registry.open_registry(workspace=runs)
    assert registry.aliases(store, "support_triage")["champion"] == "2"
    assert cli.main(["rollback", *where]) == 0
    assert "rolled back from version 2 to version 1" in capsys.readouterr().out
    assert registry.aliases(store, "support_triage")["champion"] == "1"
    assert cli.main(["rollback", *where]) == 2 and "first champion" in capsys.readouterr().err
    assert cli.main(["versions", *where]) == 0 and "champion" in capsys.readouterr().out


def test_the_champion_is_re_scored_when_the_test_split_differs(released, tiny_model):
    runs, (good_dir, _), (bad_dir, _) = released
    store = registry.open_registry(workspace=runs)
    bad = RunFolder(bad_dir)
    card = bad.read_job_card()
    test = bad.read_splits()["test"]
    same, name, version = gating.reference_predictions(store, card, bad, test, tiny_model)
    assert name == "champion v1" and version == "1" and len(same) == len(test)
    subset = test.head(12)
    rescored, name, _ = gating.reference_predictions(store, card, bad, subset, tiny_model, scratch=bad_dir / "scratch")
    assert name == "champion v1 (re-scored on this test split)"
    good = RunFolder(good_dir)
    stored = good.read_predictions(good.tuned_predictions).set_index("id")
    assert (rescored.set_index("id")["prediction"] == stored.loc[subset["id"], "prediction"]).all()


def test_a_released_adapter_is_never_registered_again(released, tmp_path):
    import shutil

    runs, (good_dir, _), _ = released
    store = registry.open_registry(workspace=runs)

    def evidence(run: RunFolder) -> publish.Evidence:
        return publish.Evidence(run, *(None,) * 6, {}, {})

    good = RunFolder(good_dir)
    with pytest.raises(TunebookError, match="already released"):
        publish.publish_run(store, good.read_job_card(), evidence(good))
    copy = RunFolder(tmp_path / "copy")
    shutil.copytree(good_dir, copy.root)
    copy.registered.unlink()
    with pytest.raises(TunebookError, match="already version 1 of 'support_triage'.*never overwritten"):
        publish.publish_run(store, good.read_job_card(), evidence(copy))
    assert len(registry.versions(store, "support_triage")) == 2
