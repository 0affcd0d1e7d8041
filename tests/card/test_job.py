"""Job card validation and the decision frame."""

import pytest
import yaml
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.card.tasks import task_of
from tunebook.define import approach
from tunebook.errors import JobCardError, TunebookError


def example_card_dict() -> dict:
    return yaml.safe_load((EXAMPLE / "job.yaml").read_text())


def problems_for(**changes) -> list[str]:
    data = example_card_dict()
    data.update(changes)
    with pytest.raises(JobCardError) as caught:
        job.parse_job_card(data, "card.yaml")
    return caught.value.problems


def test_example_card_loads_and_resolves_data_path():
    card = job.load_job_card(EXAMPLE / "job.yaml")
    assert card.task_kind == "classification"
    assert card.label_names == ["billing", "technical", "account", "shipping", "feature_request", "escalate"]
    assert card.data.path == str((EXAMPLE / "tickets.csv").resolve())


def test_unknown_task_kind_is_named_with_the_allowed_kinds():
    problems = problems_for(task_kind="summarisation")
    assert len(problems) == 1
    assert problems[0].startswith("task_kind: unknown task kind 'summarisation'")
    assert "classification, extraction, tool_selection, drafting" in problems[0]


def test_empty_and_duplicate_labels_are_reported():
    assert any(
        p.startswith("labels:") and "at least two" in p
        for p in problems_for(labels=[], escalate_label=None, error_costs={}, must_never=[])
    )
    labels = example_card_dict()["labels"] + [{"name": "billing", "definition": "again"}]
    assert any("duplicate name(s) ['billing']" in p for p in problems_for(labels=labels))


def test_cost_matrix_must_name_known_labels():
    problems = problems_for(error_costs={"refunds": {"*": 3}, "billing": {"shiping": 2}})
    assert any(p.startswith("error_costs.refunds:") for p in problems)
    assert any(p.startswith("error_costs.billing.shiping:") for p in problems)


def test_target_outside_unit_interval_names_the_field():
    problems = problems_for(targets={"macro_f1": 1.5})
    assert any(p.startswith("targets.macro_f1:") for p in problems)


def test_misspelled_field_is_rejected():
    problems = problems_for(descripton="typo")
    assert problems == ["descripton: unknown field; remove it or check its spelling"]


def test_every_problem_is_listed_at_once():
    problems = problems_for(task_kind="nope", targets={"accuracy": -0.1})
    assert {p.split(":")[0] for p in problems} == {"task_kind", "targets.accuracy"}


def test_missing_card_file(tmp_path):
    with pytest.raises(TunebookError, match="job card not found"):
        job.load_job_card(tmp_path / "nope.yaml")


def test_error_costs_and_must_never():
    card = job.load_job_card(EXAMPLE / "job.yaml")
    assert card.error_cost("escalate", "billing") == 10
    assert card.error_cost("billing", "escalate") == 2
    assert card.error_cost("billing", "shipping") == 1
    assert card.error_cost("billing", "billing") == 0
    assert card.is_must_never("escalate", "shipping")
    assert not card.is_must_never("shipping", "escalate")


@pytest.mark.parametrize(
    ("answers", "expected", "proceed"),
    [
        ({}, "fine-tuning", True),
        ({"prompting_solves_most": True}, "prompting", False),
        ({"behaviour_not_knowledge": False, "prompting_solves_most": True}, "rag", False),
        ({"behaviour_not_knowledge": False}, "hybrid", True),
        ({"can_evaluate": False}, "not-yet", False),
        ({"repeats_enough": False}, "prompting", False),
    ],
)
def test_decision_frame(answers, expected, proceed):
    data = example_card_dict()
    data["decision"].update(answers)
    decision = approach.decide_approach(job.parse_job_card(data))
    assert decision.approach == expected
    assert decision.proceed_to_training is proceed
    assert decision.reasons


def test_save_and_reload_round_trip(tmp_path):
    card = job.load_job_card(EXAMPLE / "job.yaml")
    again = job.load_job_card(job.save_job_card(card, tmp_path / "job.yaml"))
    assert again == card
    assert job.card_hash(again) == job.card_hash(card)


def other_card(example: str) -> dict:
    data = yaml.safe_load((EXAMPLE.parent / example / "job.yaml").read_text())
    return job._inline_files(data, EXAMPLE.parent / example / "job.yaml")


@pytest.mark.parametrize("example", ["support_triage", "order_extraction", "support_tools", "reply_drafting"])
def test_every_example_card_is_valid(example):
    card = job.load_job_card(EXAMPLE.parent / example / "job.yaml")
    assert approach.decide_approach(card).approach == "fine-tuning"
    assert task_of(card).overview(card)


def test_invalid_json_schema_is_named():
    data = other_card("order_extraction")
    data["output_schema"]["properties"]["quantity"]["type"] = "integr"
    with pytest.raises(JobCardError) as caught:
        job.parse_job_card(data)
    assert any(
        p.startswith("output_schema: invalid JSON Schema at properties/quantity/type") for p in caught.value.problems
    )


def test_extraction_weights_and_must_never_name_real_fields():
    data = other_card("order_extraction")
    data["field_weights"]["colour"] = 2
    data["must_never"] = [{"field": "sku"}]
    with pytest.raises(JobCardError) as caught:
        job.parse_job_card(data)
    assert {p.split(":")[0] for p in caught.value.problems} == {"field_weights.colour", "must_never[0].field"}


def test_tool_catalogue_problems():
    data = other_card("support_tools")
    data["tools"].append(dict(data["tools"][0]))
    data["tools"][1] = {**data["tools"][1], "parameters": {"type": "object", "required": "order_id"}}
    with pytest.raises(JobCardError) as caught:
        job.parse_job_card(data)
    problems = caught.value.problems
    assert any("duplicate name(s) ['track_parcel']" in p for p in problems)
    assert any(p.startswith("tools[1].parameters: invalid JSON Schema") for p in problems)


def test_drafting_rules_are_checked():
    data = other_card("reply_drafting")
    data["rules"]["required_patterns"][0]["regex"] = "^Hi ("
    data["rules"]["min_words"] = 100
    data["must_never"] = [{"rule": "no_swearing"}]
    with pytest.raises(JobCardError) as caught:
        job.parse_job_card(data)
    keys = {p.split(":")[0] for p in caught.value.problems}
    assert keys == {"rules.required_patterns[0].regex", "rules", "must_never[0].rule"}


def test_kind_specific_fields_are_required():
    for example, message in (
        ("order_extraction", "output_schema: an extraction job needs"),
        ("reply_drafting", "rules: a drafting job needs"),
    ):
        data = other_card(example)
        data.pop("output_schema", None), data.pop("rules", None), data.pop("must_never", None)
        with pytest.raises(JobCardError, match=message):
            job.parse_job_card(data)


def test_missing_schema_file_is_named(tmp_path):
    card = yaml.safe_load((EXAMPLE.parent / "order_extraction" / "job.yaml").read_text())
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(JobCardError, match=r"output_schema_file: file not found: .*schema.json"):
        job.load_job_card(tmp_path / "job.yaml")


def test_every_task_kind_registers_its_card_checks():
    from tunebook.card import schema
    from tunebook.card.tasks import KINDS

    assert sorted(KINDS) == sorted(job.TASK_KINDS) == sorted(schema._CARD_CHECKS)
    assert all(schema._CARD_CHECKS[name].__self__ is kind for name, kind in KINDS.items())


def test_tunebook_define_writes_what_00_writes_and_never_overwrites(tmp_path, capsys):
    from conftest import EXAMPLE

    from tunebook import cli
    from tunebook.core.runfolder import RunFolder, Step

    run_dir = tmp_path / "run"
    assert cli.main(["define", str(run_dir), "-p", f"JOB_CARD={EXAMPLE / 'job.yaml'}"]) == 0
    assert "recommended approach fine-tuning" in capsys.readouterr().out
    run = RunFolder(run_dir)
    card = run.read_job_card()
    assert card == job.load_job_card(EXAMPLE / "job.yaml")
    assert run.read_approach() == approach.decide_approach(card)
    results = run.read_results(Step.DEFINE)
    assert (results.job, results.job_card_sha256, results.forced) == (card.name, job.card_hash(card), False)
    assert cli.main(["define", str(run_dir), "-p", f"JOB_CARD={EXAMPLE / 'job.yaml'}"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert cli.main(["define", str(tmp_path / "other")]) == 2
    assert "-p JOB_CARD=PATH" in capsys.readouterr().err and not (tmp_path / "other").exists()
