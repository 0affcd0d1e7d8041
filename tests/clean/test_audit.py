"""The audit finds each kind of planted problem, with the right rows."""

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.clean import audit
from tunebook.data import examples as data
from tunebook.data import neardup
from tunebook.data import splits as dataset
from tunebook.errors import DataError


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


@pytest.fixture(scope="module")
def clean(card):
    examples, invalid = data.load_examples(card)
    return data.clean(examples, invalid)[0]


def with_rows(clean: pd.DataFrame, rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """The clean example data plus planted rows (id, text, target) at the end."""
    start = int(clean["row"].max()) + 1
    planted = pd.DataFrame(
        {
            "row": range(start, start + len(rows)),
            "id": [r[0] for r in rows],
            "text": [r[1] for r in rows],
            "target": [r[2] for r in rows],
            "tags": "",
        }
    )
    return pd.concat([clean, planted], ignore_index=True)


def test_minhash_estimates_jaccard():
    a = neardup.shingles("the quick brown fox jumps over the lazy dog near the river bank today")
    b = neardup.shingles("the quick brown fox jumps over the lazy dog near the river bank tonight")
    exact = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
    signatures = neardup.minhash_signatures([a, b], num_perm=256)
    assert (signatures[0] == signatures[1]).mean() == pytest.approx(exact, abs=0.1)


def test_near_duplicates_and_near_conflicts_are_found_with_their_rows(card, clean):
    source = clean[clean["id"] == "T0001"].iloc[0]
    paraphrase = source["text"] + " Thanks"
    conflict_source = clean[clean["id"] == "T0004"].iloc[0]
    planted = with_rows(
        clean, [("P1", paraphrase, source["target"]), ("P2", conflict_source["text"] + " Please advise.", "technical")]
    )
    found = audit.run_audit(card, planted, near_threshold=0.7)
    assert found.near_duplicates[["id_a", "id_b"]].values.tolist() == [["T0001", "P1"]]
    assert found.near_duplicates["row_b"].tolist() == [int(planted.loc[planted["id"] == "P1", "row"].iloc[0])]
    assert found.near_conflicts[["id_a", "target_a", "id_b", "target_b"]].values.tolist() == [
        ["T0004", "escalate", "P2", "technical"]
    ]
    assert found.summary["near_duplicate_pairs"] == 1 and found.summary["near_conflict_pairs"] == 1


def test_lsh_banding_follows_the_threshold():
    assert neardup.lsh_rows(0.8, 64) == 5
    assert neardup.lsh_rows(0.3, 64) == 1
    for threshold in (0.5, 0.7, 0.8, 0.9):
        rows = neardup.lsh_rows(threshold, 64)
        assert (1 - threshold**rows) ** (64 // rows) <= 0.01


def test_threshold_is_respected(clean):
    text = "my parcel with the blue lamp never arrived and the tracking page has said in transit for nine days now"
    other = "my parcel with the red chair never arrived and the tracking page has said delayed for nine days now"
    pairs = neardup.near_duplicate_pairs([text, other], threshold=0.9)
    assert pairs.empty
    loose = neardup.near_duplicate_pairs([text, other], threshold=0.3)
    assert loose[["i", "j"]].values.tolist() == [[0, 1]]


def test_near_duplicate_groups_stay_in_one_split(card, clean):
    rows = []
    for k, base in enumerate(clean.groupby("target").head(2).itertuples()):
        rows.append((f"N{k}", base.text + " Thanks in advance.", base.target))
    planted = with_rows(clean, rows)
    groups = audit.near_groups(planted, audit.run_audit(card, planted, near_threshold=0.7))
    with_groups = dataset.split(planted, card, seed=3, groups=groups)
    assert audit.cross_split_near_duplicates(with_groups, 0.7).empty
    without = dataset.split(planted, card, seed=3)
    assert len(audit.cross_split_near_duplicates(without, 0.7)) > 0  # the check would catch a leak


def test_suspected_label_error_is_listed_with_its_row(card, clean):
    billing = clean[clean["target"] == "billing"].iloc[0]
    planted = with_rows(
        clean, [("L1", billing["text"] + " Also my card was charged twice for the same invoice.", "shipping")]
    )
    suspects = audit.suspected_label_errors(card, planted, threshold=0.4)
    assert "L1" in suspects["id"].tolist()
    row = suspects[suspects["id"] == "L1"].iloc[0]
    assert row["suggested"] == "billing" and row["target"] == "shipping"


def test_balance_flags_rare_labels_and_hard_coverage(card, clean):
    few = pd.concat([clean[clean["target"] != "feature_request"], clean[clean["target"] == "feature_request"].head(3)])
    table = audit.balance(card, few, min_count=10)
    assert table.loc["feature_request", "too_rare"] and not table.loc["billing", "too_rare"]
    expected_hard = few[few["target"] == "billing"]["tags"].eq("hard").sum()
    assert table.loc["billing", "hard"] == expected_hard


def test_token_lengths_flag_what_max_length_cuts(card, clean, tokenizer):
    planted = with_rows(clean.head(3), [("X1", "word " * 400, "billing")])
    lengths = audit.token_lengths(tokenizer, card, planted, max_length=300)
    assert lengths.set_index("id").loc["X1", "prompt_cut"]
    assert not lengths.set_index("id").loc[clean["id"].iloc[0], "prompt_cut"]
    first = lengths.iloc[0]
    tight = audit.token_lengths(tokenizer, card, planted.head(1), max_length=int(first["prompt_tokens"]) + 1)
    assert tight["answer_cut"].all() and not tight["prompt_cut"].any()


def test_review_decisions_relabel_drop_and_keep(card, tmp_path):
    examples, invalid = data.load_examples(card)
    decisions_path = data.save_decisions(
        {
            "T0247": {"id": "T0247", "action": "relabel", "target": "billing"},
            "T0001": {"id": "T0001", "action": "drop", "note": "test"},
        },
        tmp_path / "decisions.yaml",
    )
    decisions = data.load_decisions(decisions_path, card)
    decided, report = data.apply_decisions(card, examples, decisions)
    kept, removed = data.clean(decided, invalid)
    assert "T0001" not in set(kept["id"])
    assert {r["id"]: r["reason"] for r in report} == {
        "T0001": "review decision: drop (test)",
        "T0247": "review decision: relabelled to billing",
    }
    # relabelled, the conflict T0190/T0247 becomes an exact duplicate: T0190 is kept, T0247 dropped as its duplicate
    assert "T0190" in set(kept["id"]) and any(
        r["id"] == "T0247" and r["reason"].startswith("duplicate of row") for r in removed
    )


def test_keep_decision_protects_a_conflict(card):
    examples, invalid = data.load_examples(card)
    kept, _ = data.clean(examples, invalid, keep={"T0190"})
    assert "T0190" in set(kept["id"]) and "T0247" not in set(kept["id"])


def test_bad_decisions_are_named(card, tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("- {id: T0001, action: relabel, target: biling}\n")
    with pytest.raises(
        DataError, match=r"decision 1: 'biling' is not one of the labels .* \(did you mean 'billing'\?\)"
    ):
        data.load_decisions(path, card)
    path.write_text("- {id: T0001, action: maybe}\n")
    with pytest.raises(DataError, match="action: keep | relabel | drop"):
        data.load_decisions(path, card)
    path.write_text("- {id: NOPE, action: drop}\n")
    examples, _ = data.load_examples(card)
    with pytest.raises(DataError, match=r"ids that are not in the data: \['NOPE'\]"):
        data.apply_decisions(card, examples, data.load_decisions(path, card))


def test_broken_jsonl_line_can_be_skipped_and_listed(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "a", "label": "billing"}\n{"text": "b", "label": \n[1, 2]\n{"text": "c", "label": "account"}\n'
    )
    skipped = []
    frame = data.load_table(path, bad_lines="skip", skipped=skipped)
    assert frame["text"].tolist() == ["a", "c"]
    assert [(s["line"], s["reason"].split(" (")[0]) for s in skipped] == [
        (2, "not valid JSON"),
        (3, "expected a JSON object per line, got list"),
    ]


def test_ragged_csv_names_the_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("id,text,label\n1,hello,billing\n2,one,two,three\n")
    with pytest.raises(DataError, match=r"ragged.csv: cannot be parsed as CSV: .*line 3"):
        data.load_table(path)


def test_review_items_cover_every_finding(card, clean):
    source = clean.iloc[0]
    planted = with_rows(clean, [("P1", source["text"] + " thanks", source["target"])])
    found = audit.run_audit(card, planted, near_threshold=0.7)
    items = audit.review_items(found)
    assert [i["id"] for i in items if i["kind"] == "near duplicate"] == ["P1"]
    suspects = [i["id"] for i in items if i["kind"] == "suspected label error"]
    assert suspects == found.suspected_errors["id"].tolist()
    assert [
        i["id"] for i in audit.needs_review(found, {})
    ] == suspects  # near duplicates follow the policy, no review needed
    decided = {suspects[0]: {"id": suspects[0], "action": "keep"}} if suspects else {}
    assert len(audit.needs_review(found, decided)) == len(suspects) - len(decided)


def test_batched_token_counts_match_the_training_encoding(card, clean, tokenizer):
    from tunebook.modeling.prompts import encode_parts, features_from

    sample = clean.head(20)
    lengths = audit.token_lengths(tokenizer, card, sample, max_length=4096)
    for row, counted in zip(sample.itertuples(), lengths.itertuples()):
        features = features_from(*encode_parts(tokenizer, card, row.text, row.target), 4096)
        supervised = sum(label != -100 for label in features["labels"])
        assert (counted.prompt_tokens, counted.answer_tokens) == (len(features["input_ids"]) - supervised, supervised)
