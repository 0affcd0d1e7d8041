"""Loading, cleaning, splitting and versioning data."""

import re

import pandas as pd
import pytest
import yaml
from conftest import EXAMPLE, write_job

from tunebook.card import schema as job
from tunebook.core import tables
from tunebook.core.runfolder import RunFolder
from tunebook.data import examples as data
from tunebook.data import splits as dataset
from tunebook.errors import DataError


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def planted_dirt() -> dict[str, set[str]]:
    """Ids of the dirt listed in examples/support_triage/DIRT.md."""
    text = (EXAMPLE / "DIRT.md").read_text()
    sections = dict(re.findall(r"## ([^\n]+)\n(.*?)(?=\n## |\Z)", text, flags=re.S))
    ids = {title: set(re.findall(r"\| (T\d{4}) \|", body)) for title, body in sections.items()}
    return {
        "duplicates": ids["Duplicates (same text, same label)"],
        "conflict": set(re.findall(r"T\d{4}", sections["Conflicting label (same text, different label)"])),
        "empty": ids["Empty text"],
    }


def test_cleaning_finds_exactly_the_planted_dirt(card):
    examples, invalid = data.load_examples(card)
    kept, report = data.clean(examples, invalid)
    dirt = planted_dirt()
    by_reason = {
        "duplicate": {r["id"] for r in report if r["reason"].startswith("duplicate of row")},
        "conflict": {r["id"] for r in report if r["reason"].startswith("conflicting targets")},
        "empty": {r["id"] for r in report if r["reason"] == "empty text"},
    }
    assert by_reason == {"duplicate": dirt["duplicates"], "conflict": dirt["conflict"], "empty": dirt["empty"]}
    assert len(kept) + len(report) == len(examples)
    assert kept["id"].is_unique


def test_duplicates_after_normalisation_keep_the_first():
    rows = pd.DataFrame(
        {
            "row": [1, 2, 3],
            "id": ["a", "b", "c"],
            "text": ["Where is  my parcel?", "WHERE is my parcel? ", "other"],
            "target": ["shipping", "shipping", "billing"],
            "tags": ["", "", ""],
        }
    )
    kept, report = data.clean(rows)
    assert kept["id"].tolist() == ["a", "c"]
    assert report == [
        {"row": 2, "id": "b", "text": "WHERE is my parcel? ", "target": "shipping", "reason": "duplicate of row 1"}
    ]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*missing\.csv"):
        data.load_table(tmp_path / "missing.csv")


def test_csv_without_text_column_names_it_and_suggests(tmp_path):
    path = write_job(tmp_path, rows=[{"id": "1", "txt": "hello", "label": "billing"}])
    card = job.load_job_card(path)
    with pytest.raises(
        DataError, match=r"no column 'text' \(data.text_column in the job card\) \(did you mean 'txt'\?\)"
    ):
        data.load_examples(card)


def test_csv_without_label_column(tmp_path):
    path = write_job(tmp_path, rows=[{"id": "1", "text": "hello"}])
    with pytest.raises(DataError, match=r"tickets.csv: no column 'label'"):
        data.load_examples(job.load_job_card(path))


def test_label_outside_card_names_file_row_and_id(tmp_path):
    rows = [{"id": "A1", "text": "x", "label": "billing"}, {"id": "A2", "text": "y", "label": "biling"}]
    path = write_job(tmp_path, rows=rows)
    with pytest.raises(DataError) as caught:
        data.load_examples(job.load_job_card(path))
    message = str(caught.value)
    assert "tickets.csv: 1 label(s) outside the job card's label set" in message
    assert "row 2 (id A2): 'biling' (did you mean 'billing'?)" in message


def test_empty_dataset(tmp_path):
    path = write_job(tmp_path, rows=[])
    (tmp_path / "tickets.csv").write_text("id,text,label,tags\n")
    with pytest.raises(DataError, match="header but no rows"):
        data.load_examples(job.load_job_card(path))
    (tmp_path / "tickets.csv").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        data.load_examples(job.load_job_card(path))


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "billing"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: not valid JSON"):
        data.load_table(path)


def test_non_utf8_file_is_reported(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9,billing\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        data.load_table(path)


def test_split_is_stratified_disjoint_and_deterministic(card):
    kept, _ = data.clean(*data.load_examples(card))
    splits = dataset.split(kept, card, test_fraction=0.2, val_fraction=0.1, seed=0)
    ids = [set(frame["id"]) for frame in splits.values()]
    assert sum(len(i) for i in ids) == len(kept)
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for frame in splits.values():
        assert set(frame["target"]) == set(card.label_names)
    test_share = splits["test"]["target"].value_counts() / kept["target"].value_counts()
    assert test_share.between(0.15, 0.25).all()
    again = dataset.split(kept, card, seed=0)
    assert all(tables.frame_hash(splits[n]) == tables.frame_hash(again[n]) for n in tables.SPLITS)
    other = dataset.split(kept, card, seed=1)
    assert tables.frame_hash(other["test"]) != tables.frame_hash(splits["test"])


def test_too_rare_label_cannot_be_split(card):
    rows = pd.DataFrame(
        {
            "row": [1, 2, 3, 4],
            "id": list("abcd"),
            "text": list("wxyz"),
            "target": ["billing"] * 3 + ["account"],
            "tags": [""] * 4,
        }
    )
    with pytest.raises(DataError, match=r"fewer than 3 clean examples.*'account': 1"):
        dataset.split(rows, card)


def test_dataset_version_round_trip(card, tmp_path):
    examples, invalid = data.load_examples(card)
    kept, report = data.clean(examples, invalid)
    splits = dataset.split(kept, card)
    version = dataset.dataset_version(splits, card.data.path, {"seed": 0}, len(examples))
    run = RunFolder(tmp_path)
    run.write_dataset(splits, version, report)
    reloaded = run.read_splits()
    assert {n: tables.frame_hash(f) for n, f in reloaded.items()} == {n: v.hash for n, v in version.splits.items()}
    assert run.read_dataset_version() == version
    assert version.rows_after == len(kept)
    assert version.source.sha256 == tables.file_hash(card.data.path)


PLANTED = {  # from each example's DIRT.md
    "order_extraction": {
        "duplicate": {"E0045", "E0098", "E0164", "E0233"},
        "conflict": {"E0162", "E0191"},
        "empty": {"E0142"},
        "invalid": {"E0267"},
    },
    "support_tools": {
        "duplicate": {"S0048", "S0132", "S0190", "S0284"},
        "conflict": {"S0104", "S0223"},
        "empty": {"S0097"},
        "invalid": {"S0159", "S0252"},
    },
    "reply_drafting": {
        "duplicate": {"D0053", "D0153", "D0234"},
        "conflict": {"D0149", "D0180"},
        "empty": {"D0098"},
        "invalid": {"D0125", "D0208"},
    },
}


@pytest.mark.parametrize("example", sorted(PLANTED))
def test_cleaning_finds_the_planted_dirt_of_every_example(example):
    card = job.load_job_card(EXAMPLE.parent / example / "job.yaml")
    examples, invalid = data.load_examples(card)
    _, report = data.clean(examples, invalid)
    found = {"duplicate": set(), "conflict": set(), "empty": set(), "invalid": set()}
    for item in report:
        for prefix, name in (
            ("duplicate of row", "duplicate"),
            ("conflicting targets", "conflict"),
            ("empty text", "empty"),
            ("invalid target", "invalid"),
        ):
            if item["reason"].startswith(prefix):
                found[name].add(item["id"])
    assert found == PLANTED[example]
    assert {r["id"]: r["row"] for r in report} == {
        r["id"]: int(examples.loc[examples["id"] == r["id"], "row"].iloc[0]) for r in report
    }


def test_repeated_ids_are_refused(tmp_path):
    path = write_job(
        tmp_path, rows=[{"id": "A", "text": "x", "label": "billing"}, {"id": "A", "text": "y", "label": "account"}]
    )
    with pytest.raises(DataError, match=r"ids must be unique .* repeated: \['A'\]"):
        data.load_examples(job.load_job_card(path))


def test_made_up_ids_of_a_frozen_test_file_do_not_collide_with_the_training_file(tmp_path):
    card_path = write_job(tmp_path / "job", per_label=3)
    unnamed = yaml.safe_load(card_path.read_text())
    unnamed["data"].pop("id_column", None)  # the default: an id column if the file has one
    card_path.write_text(yaml.safe_dump(unnamed))
    card = job.load_job_card(card_path)
    frame = pd.read_csv(tmp_path / "job" / "tickets.csv").drop(columns="id")
    frame.to_csv(tmp_path / "job" / "tickets.csv", index=False)
    frame.head(4).assign(text=lambda f: f["text"] + " (test)").to_csv(tmp_path / "test.csv", index=False)
    examples, _ = data.load_examples(card)
    frozen, _ = data.load_frozen_test(tmp_path / "test.csv", card, examples)
    assert examples["id"].iloc[0] == "row-1" and frozen["id"].tolist() == [
        "test-row-1",
        "test-row-2",
        "test-row-3",
        "test-row-4",
    ]
    # real ids shared by both files are refused, naming them
    with_ids = pd.read_csv(EXAMPLE / "tickets.csv").head(3)
    with_ids.to_csv(tmp_path / "job" / "tickets.csv", index=False)
    with_ids.to_csv(tmp_path / "test.csv", index=False)
    examples, _ = data.load_examples(card)
    with pytest.raises(DataError, match=rf"ids \['{with_ids['id'][0]}'.*also name rows of"):
        data.load_frozen_test(tmp_path / "test.csv", card, examples)


def test_the_tags_and_id_columns_are_optional_and_a_near_miss_is_named(tmp_path):
    source = EXAMPLE.parent / "order_extraction"
    rows = pd.read_json(source / "orders.jsonl", lines=True).head(5)[["text", "target"]]  # no id, no tags
    folder = tmp_path / "job"
    card_path = write_job(folder, example="order_extraction", per_label=1)  # the card names id and tags columns
    rows.to_json(folder / "orders.jsonl", orient="records", lines=True)
    examples, _ = data.load_examples(job.load_job_card(card_path))  # was: "no column 'tags' (did you mean 'target'?)"
    assert examples["tags"].tolist() == [""] * 5 and examples["id"].tolist() == [f"row-{i}" for i in range(1, 6)]
    rows.assign(tag="hard").to_json(
        folder / "orders.jsonl", orient="records", lines=True
    )  # a column the card misnames
    with pytest.raises(
        DataError, match=r"no column 'tags' \(data.tags_column in the job card\) \(did you mean 'tag'\?\)"
    ):
        data.load_examples(job.load_job_card(card_path))
