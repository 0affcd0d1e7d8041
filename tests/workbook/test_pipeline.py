"""The workbook's runner and command line through papermill on the tiny model: other task kinds, steps run alone,
checkpoints, refusals (the shared finished run's own tests are in test_workbook.py)."""

import json

import nbformat
import pandas as pd
import pytest
import yaml
from conftest import write_job

from tunebook import cli
from tunebook.core.runfolder import RunFolder
from tunebook.errors import TunebookError
from tunebook.workbook import parameters
from tunebook.workbook import runner as pipeline


def test_unknown_parameter_is_rejected_before_anything_runs(tmp_path):
    with pytest.raises(TunebookError) as caught:
        pipeline.run_workbook({"EPOCHZ": 1}, tmp_path, "bad", progress=False)
    assert "unknown parameter EPOCHZ (did you mean 'EPOCHS'?)" in str(caught.value)
    assert "Known parameters: ALPHA, ATTENTION, BAD_LINES, BASE_MODEL, BATCH_SIZE" in str(caught.value)
    assert not (tmp_path / "bad").exists()


def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(TunebookError, match=r"EPOCHS must be float \(default 2.0\), got 'two'"):
        pipeline.run_workbook({"EPOCHS": "two"}, tmp_path, "bad", progress=False)


def test_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(TunebookError, match="already exists; runs are never overwritten"):
        pipeline.new_run_dir(tmp_path, "taken")


@pytest.mark.workbook
def test_failing_notebook_stops_the_run_and_keeps_the_failing_cell(tmp_path, capsys):
    card = write_job(tmp_path / "job")
    (tmp_path / "job" / "tickets.csv").unlink()
    code = cli.main(["run", "--runs-dir", str(tmp_path / "runs"), "--name", "broken", "-p", f"JOB_CARD={card}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "notebook 01_clean_the_data failed" in err and "data file not found" in err
    executed = nbformat.read(tmp_path / "runs" / "broken" / "01_clean_the_data.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "DataError"
    assert not (tmp_path / "runs" / "broken" / "02_prove_the_baseline.ipynb").exists()


@pytest.mark.workbook
def test_bad_job_card_fails_in_the_first_notebook(tmp_path, capsys):
    card = write_job(tmp_path / "job", task_kind="poetry")
    code = cli.main(
        ["run", "--runs-dir", str(tmp_path / "runs"), "--name", "badcard", "-p", f"JOB_CARD={card}", "--steps", "00"]
    )
    assert code == 1
    assert "unknown task kind 'poetry'" in capsys.readouterr().err


@pytest.mark.workbook
def test_the_console_holds_tunebooks_lines_and_the_kernels_output_goes_to_the_run_folder(tmp_path, capfd):
    card = write_job(tmp_path / "job")
    code = cli.main(
        ["run", "--runs-dir", str(tmp_path / "runs"), "--name", "quiet", "-p", f"JOB_CARD={card}", "--steps", "00"]
    )
    shown = capfd.readouterr()
    assert code == 0 and "Kernel is running over TCP" not in shown.err + shown.out
    assert [line.split(" done in")[0] for line in shown.out.splitlines() if " done in " in line] == [
        "[tunebook] 00_define_the_job"
    ]
    log = RunFolder(tmp_path / "runs" / "quiet").console_log.read_text()
    assert log.startswith("==== 00_define_the_job") and "TCP" not in log  # IPC sockets: no unencrypted-TCP warning


def test_cli_reads_config_file_and_typed_overrides(tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text("EPOCHS: 1.5\nQUANTIZATION: none\n")
    args = cli.build_parser().parse_args(
        ["run", "--config", str(config), "-p", "MAX_STEPS=7", "-p", "QUANTIZATION=nf4"]
    )
    merged = {**cli.load_config(args.config), **cli.parse_assignments(args.param)}
    assert merged == {"EPOCHS": 1.5, "QUANTIZATION": "nf4", "MAX_STEPS": 7}
    with pytest.raises(TunebookError, match="KEY=VALUE"):
        cli.parse_assignments(["MAX_STEPS"])


@pytest.mark.workbook
@pytest.mark.parametrize("example", ["order_extraction", "support_tools", "reply_drafting"])
def test_other_task_kinds_run_the_whole_workbook(example, tiny_model, tmp_path):
    card = write_job(tmp_path / "job", per_label=3, example=example)
    params = {
        "JOB_CARD": str(card),
        "BASE_MODEL": tiny_model,
        "MAX_STEPS": 2,
        "BATCH_SIZE": 4,
        "LORA_R": 4,
        "K_SHOTS": 1,
        "COMPARE_METHODS": "",
        "FORCE_TRAINING": True,
    }
    run_dir, summary = pipeline.run_workbook(params, tmp_path / "runs", example, progress=False)
    run = RunFolder(run_dir)
    baseline, tuned = run.read_scores(run.baseline_scores()).as_dict(), run.read_scores(run.tuned_scores).as_dict()
    recorded = summary.results["02_prove_the_baseline"]
    primary = {
        "order_extraction": "field_accuracy",
        "support_tools": "argument_exact_match",
        "reply_drafting": "rule_pass_rate",
    }[example]
    assert baseline["primary"] == tuned["primary"] == primary
    assert recorded["metrics"][primary] == pytest.approx(baseline[primary], abs=1e-4)
    expected = {"trivial", "zero-shot", "1-shot", "retrieval 1-shot"} | (
        {"classical"} if example == "support_tools" else set()
    )
    assert set(recorded["variants"]) == expected
    assert recorded["verdict"].startswith("On validation, the best cheap baseline")
    assert baseline["variant"] == recorded["variant"]
    assert summary.results["05_release"]["primary"] == primary
    assert run.trained_weights() is not None
    watched = run.read_results("06_monitor")  # no example traffic beside this job's data: nothing sent, nothing fired
    assert watched.logged == 0 and not watched.alert and watched.report == "" and not run.inference_log.exists()


@pytest.mark.workbook
def test_when_the_frame_says_prompting_training_is_skipped_and_the_baseline_ships(tiny_model, tmp_path):
    card = write_job(tmp_path / "job", per_label=3)
    data = yaml.safe_load(card.read_text())
    data["decision"]["prompting_solves_most"] = True
    card.write_text(yaml.safe_dump(data))
    run_dir, summary = pipeline.run_workbook(
        {"JOB_CARD": str(card), "BASE_MODEL": tiny_model, "K_SHOTS": 0, "BOOTSTRAP_RESAMPLES": 100}, tmp_path, "p"
    )
    assert summary.results["00_define_the_job"]["approach"] == "prompting"
    assert summary.stopped is None and "recommends prompting, not fine-tuning" in summary.skipped["03_train_qlora"]
    run = RunFolder(run_dir)
    skipped = json.loads(run.notebook("03_train_qlora").read_text())["cells"][0]
    assert "Skipped in this run" in "".join(skipped["source"]) and "FORCE_TRAINING=true" in "".join(skipped["source"])
    assert not run.adapter_dir.exists() and "03_train_qlora" not in summary.results
    chosen = summary.results["02_prove_the_baseline"]["variant"]
    released = summary.results["05_release"]
    assert released["system_variant"] == chosen == run.read_system().variant and not run.read_system().trained
    assert summary.results["04_evaluate"]["general_regression"] is None
    assert "06_monitor" in summary.results


@pytest.mark.workbook
def test_review_decisions_replay_headless_with_the_same_hash(tmp_path, tiny_model):
    card = write_job(tmp_path / "job", per_label=5)
    first_id = pd.read_csv(tmp_path / "job" / "tickets.csv")["id"].iloc[0]
    decisions = tmp_path / "review_decisions.yaml"
    decisions.write_text(f"- {{id: {first_id}, action: drop, note: off-topic}}\n")
    params = {"JOB_CARD": str(card), "DECISIONS_FILE": str(decisions), "BASE_MODEL": tiny_model}
    hashes = []
    for name in ("one", "two"):
        run_dir, summary = pipeline.run_workbook(
            params, tmp_path / "runs", name, steps=pipeline.NOTEBOOKS[:2], progress=False
        )
        run = RunFolder(run_dir)
        report = json.loads(run.cleaning_report.read_text())
        assert [r["reason"] for r in report if r["id"] == first_id] == ["review decision: drop (off-topic)"]
        assert run.data_card.read_text().startswith("# Data card: support_triage")
        hashes.append(summary.results["01_clean_the_data"]["dataset_hash"])
    _, plain = pipeline.run_workbook(
        {**params, "DECISIONS_FILE": ""}, tmp_path / "runs", "plain", steps=pipeline.NOTEBOOKS[:2], progress=False
    )
    assert hashes[0] == hashes[1] != plain.results["01_clean_the_data"]["dataset_hash"]


@pytest.mark.workbook
def test_frozen_test_set_is_kept_as_given_and_leaks_are_removed(tmp_path, tiny_model):
    card = write_job(tmp_path / "job", per_label=6)
    frame = pd.read_csv(tmp_path / "job" / "tickets.csv")
    test = frame.groupby("label").head(1)
    train = frame.drop(test.index)
    leak = test.iloc[0]
    train = pd.concat([train, pd.DataFrame([{**leak.to_dict(), "id": "LEAK", "text": leak["text"] + " thanks"}])])
    train.to_csv(tmp_path / "job" / "tickets.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    params = {
        "JOB_CARD": str(card),
        "TEST_FILE": str(tmp_path / "test.csv"),
        "BASE_MODEL": tiny_model,
        "NEAR_DUP_THRESHOLD": 0.7,
    }
    run_dir, summary = pipeline.run_workbook(
        params, tmp_path / "runs", "frozen", steps=pipeline.NOTEBOOKS[:2], progress=False
    )
    run = RunFolder(run_dir)
    saved = run.read_splits()["test"]
    assert sorted(saved["id"]) == sorted(test["id"].astype(str)) and sorted(saved["text"]) == sorted(test["text"])
    report = json.loads(run.cleaning_report.read_text())
    assert [r["id"] for r in report if "test-set row" in r["reason"]] == ["LEAK"]
    assert summary.results["01_clean_the_data"]["splits"]["test"] == len(test)
    # counts: the card's file is "read" and "kept"; the frozen test set is counted on its own, not as kept rows
    version = run.read_dataset_version()
    splits = summary.results["01_clean_the_data"]["splits"]
    assert version.rows_before == len(train) and version.rows_after == splits["train"] + splits["val"] < len(train)
    assert version.test_source.rows == len(test)
    data_card = run.data_card.read_text()
    assert (
        f"- rows: {len(train)} read, {splits['train'] + splits['val']} kept (train {splits['train']}, val {splits['val']}); "
        f"frozen test set: {len(test)} rows from `{tmp_path / 'test.csv'}`, unchanged"
    ) in data_card


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, tiny_model):
    """A run folder after 00 and 01, ready for training."""
    root = tmp_path_factory.mktemp("prepared")
    card = write_job(root / "job", per_label=4)
    run_dir, _ = pipeline.run_workbook(
        {"JOB_CARD": str(card), "BASE_MODEL": tiny_model},
        root / "runs",
        "prep",
        steps=pipeline.NOTEBOOKS[:2],
        progress=False,
    )
    return run_dir


def test_tunebook_clean_does_what_01_did(prepared_run, tmp_path):
    import shutil

    notebook = RunFolder(prepared_run)
    alone = RunFolder(tmp_path / "alone")
    shutil.copytree(prepared_run, alone.root)
    shutil.rmtree(alone.data_dir)
    alone.results_file("01_clean_the_data").unlink()
    assert cli.main(["clean", str(alone.root)]) == 0
    assert cli.main(["clean", str(alone.root)]) == 2  # never overwritten
    assert alone.read_dataset_version() == notebook.read_dataset_version()
    assert alone.read_results("01_clean_the_data") == notebook.read_results("01_clean_the_data")
    for name in ("train", "val", "test"):
        assert alone.split_file(name).read_bytes() == notebook.split_file(name).read_bytes()
    from tunebook.clean.step import CleanSettings

    with pytest.raises(TunebookError, match="NEAR_DUPLICATES must be one of drop, keep, got 'maybe'"):
        CleanSettings.from_parameters({"NEAR_DUPLICATES": "maybe"})


def test_every_training_parameter_of_03_reaches_the_train_config():
    from tunebook.train import recipe

    around = {"BASE_MODEL", "RESUME", "COMPARE_METHODS", "COMPARE_STEPS", "COMPARE_VAL_EXAMPLES"}
    declared = {p.name for p in recipe.TrainSettings.parameters()}
    assert declared - around == {p.name for p in recipe.TrainConfig.parameters()}
    config = recipe.TrainSettings().config()
    assert type(config) is recipe.TrainConfig and config == recipe.TrainConfig()
    assert (
        config.quantization == "nf4"
        and config.target_modules == "all-linear"
        and config.epochs == 2.0
        and config.general_mix == 0.5
    )


def test_the_notebook_and_the_command_line_read_training_parameters_the_same_way():
    import argparse

    from tunebook.train import recipe

    # a notebook hands its whole namespace: parameters, imports and its own variables
    namespace = {p.name: p.default for p in recipe.TrainSettings.parameters()} | {"np": 1, "RUN_DIR": "x"}
    namespace["LORA_TARGET_MODULES"] = "q_proj, v_proj"
    from_notebook = recipe.TrainSettings.from_parameters(namespace)
    given = argparse.Namespace(config=None, param=["LORA_TARGET_MODULES=q_proj,v_proj"])
    from_cli = recipe.TrainSettings.from_parameters(cli._step_parameters("03_train_qlora", given))
    assert from_notebook == from_cli and from_cli.config().target_modules == "q_proj,v_proj"


@pytest.mark.parametrize("step", list(parameters.SETTINGS), ids=lambda s: s[:2])
def test_each_parameters_cell_is_its_steps_declaration_as_papermill_reads_it(step):
    import papermill

    path = pipeline.notebooks_dir() / f"{step}.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == parameters.SETTINGS[step].cell_source(), (
        f"{path.name}'s parameters cell differs from {parameters.SETTINGS[step].__name__}: paste cell_source() into it"
    )
    theirs = papermill.inspect_notebook(str(path))
    ours = parameters.SETTINGS[step].parameters()
    assert list(theirs) == ["RUN_DIR", *(p.name for p in ours)]
    for p in ours:
        default = p.default if p.notebook_default is None else p.notebook_default
        read = theirs[p.name]
        assert (read["inferred_type_name"], eval(read["default"]), read["help"]) == (p.type_name, default, p.help)


def test_a_step_command_runs_without_the_notebooks_or_papermill(tmp_path):
    # an installed wheel has no notebooks folder beside it: `tunebook train` must read its declaration alone
    import os
    import subprocess
    import sys

    code = (
        "import sys; from tunebook import cli; code = cli.main(['train', 'no-such-run', '-p', 'MAX_STEPS=1']); "
        "assert code == 2, code; assert 'papermill' not in sys.modules, 'papermill was imported'"
    )
    env = {**os.environ, "TUNEBOOK_NOTEBOOKS": str(tmp_path / "no-notebooks")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no-such-run" in done.stderr and "notebooks not found" not in done.stderr


def test_parameters_are_listed_with_their_constraints(capsys):
    assert cli.main(["parameters", "03"]) == 0
    shown = capsys.readouterr().out
    assert "QUANTIZATION: str = 'nf4' (one of nf4, int8, none)" in shown and "TRAFFIC_ROWS" not in shown
    assert cli.main(["parameters", "9"]) == 2


def test_a_constraint_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(TunebookError, match=r"LORA_DROPOUT must be >= 0 and < 1, got 1.5"):
        pipeline.run_workbook({"LORA_DROPOUT": 1.5}, tmp_path, "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_step_command_takes_the_workshop_profile_and_keeps_only_its_own_parameters(tmp_path):
    import argparse

    from tunebook.workbook.workshop import profile_path

    profile = yaml.safe_load(profile_path().read_text())
    assert "TRAFFIC_ROWS" in profile and "MAX_STEPS" in profile  # a profile of every notebook, not of 03 alone
    train = cli._step_parameters("03_train_qlora", argparse.Namespace(config=str(profile_path()), param=["SEED=3"]))
    assert train["MAX_STEPS"] == profile["MAX_STEPS"] and train["SEED"] == 3 and "TRAFFIC_ROWS" not in train
    typo = tmp_path / "typo.yaml"
    typo.write_text("MAX_STEPZ: 3\n")  # a name no notebook declares is still a mistake
    with pytest.raises(TunebookError, match="unknown parameter MAX_STEPZ"):
        cli._step_parameters("03_train_qlora", argparse.Namespace(config=str(typo), param=[]))
    with pytest.raises(TunebookError, match="unknown parameter TRAFFIC_ROWS"):  # typed for this step: a slip
        cli._step_parameters("03_train_qlora", argparse.Namespace(config=None, param=["TRAFFIC_ROWS=3"]))


@pytest.mark.workbook
def test_tunebook_train_trains_a_prepared_run_folder(prepared_run, tiny_model, tmp_path, capfd):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(prepared_run, run_dir)
    code = cli.main(
        [
            "train",
            str(run_dir),
            "-p",
            f"BASE_MODEL={tiny_model}",
            "-p",
            "MAX_STEPS=2",
            "-p",
            "QUANTIZATION=none",
            "-p",
            "LORA_TARGET_MODULES=q_proj,v_proj",
        ]
    )
    assert code == 0
    shown = capfd.readouterr()
    assert "{'loss'" not in shown.out + shown.err and "'eval_loss'" not in shown.out + shown.err  # kept, not printed
    run = RunFolder(run_dir)
    manifest = run.read_manifest()
    assert manifest.steps == 2 and manifest.config["target_modules"] == "q_proj,v_proj" and manifest.processes == 1
    assert cli.main(["train", str(tmp_path / "run"), "-p", "LORA_RANK=4"]) == 2  # misspelled parameter: refused
    assert run.read_results("03_train_qlora").steps == 2
    assert (
        cli.main(
            [
                "run",
                "--continue",
                str(run_dir),
                "--steps",
                "02,04",
                "-p",
                f"BASE_MODEL={tiny_model}",
                "-p",
                "K_SHOTS=0",
            ]
        )
        == 0
    )
    assert run.notebook("04_evaluate").is_file() and run.tuned_scores.is_file()
    # `tunebook baseline` does 02's work with the same function the notebook calls, and gets the same answers
    prepared = RunFolder(tmp_path / "prepared")
    shutil.copytree(prepared_run, prepared.root)
    assert cli.main(["baseline", str(prepared.root), "-p", f"BASE_MODEL={tiny_model}", "-p", "K_SHOTS=0"]) == 0
    assert cli.main(["baseline", str(prepared.root), "-p", f"BASE_MODEL={tiny_model}"]) == 2  # never overwritten
    notebook, command = run.read_results("02_prove_the_baseline"), prepared.read_results("02_prove_the_baseline")
    assert (command.variant, command.best_prompting, command.verdict) == (
        notebook.variant,
        notebook.best_prompting,
        notebook.verdict,
    )
    assert command.metrics == pytest.approx(notebook.metrics, abs=1e-6)
    # `tunebook evaluate` does 04's work with the same function the notebook calls, and gets the same answers
    alone = RunFolder(tmp_path / "alone")
    shutil.copytree(run_dir, alone.root)
    shutil.rmtree(alone.evaluation_dir)
    alone.results_file("04_evaluate").unlink()
    assert cli.main(["evaluate", str(alone.root), "-p", f"BASE_MODEL={tiny_model}"]) == 0
    assert cli.main(["evaluate", str(alone.root), "-p", f"BASE_MODEL={tiny_model}"]) == 2  # never overwritten
    assert alone.read_predictions(alone.tuned_predictions)["prediction"].tolist() == (
        run.read_predictions(run.tuned_predictions)["prediction"].tolist()
    )
    notebook, command = run.read_results("04_evaluate"), alone.read_results("04_evaluate")
    assert command.metrics == pytest.approx(notebook.metrics, abs=1e-6)
    assert (command.beats_baseline, command.baseline_variant) == (notebook.beats_baseline, notebook.baseline_variant)
    assert cli.main(["run", "--continue", str(run_dir), "--steps", "04"]) == 2  # never overwritten
    assert cli.main(["train", str(run_dir), "-p", "JOB_CARD=other.yaml"]) == 2  # not silently ignored
    assert (
        cli.main(["run", "--continue", str(run_dir), "--steps", "05", "-p", "EPOCHS=2"]) == 2
    )  # no step 05 uses EPOCHS


def test_training_runs_unchanged_under_torchrun_with_two_processes(prepared_run, tiny_model, tmp_path):
    # CPU processes talking over gloo: the same code path accelerate launch / torchrun uses across GPUs.
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    run_dir = tmp_path / "run"
    shutil.copytree(prepared_run, run_dir)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "-m",
        "tunebook.cli",
        "train",
        str(run_dir),
        "-p",
        f"BASE_MODEL={tiny_model}",
        "-p",
        "MAX_STEPS=2",
        "-p",
        "BATCH_SIZE=2",
        "-p",
        "QUANTIZATION=none",
    ]
    # CUDA_VISIBLE_DEVICES="": two processes on one GPU would both ask for cuda:<rank>; this test is about the gloo path.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunFolder(run_dir)
    manifest = run.read_manifest()
    assert manifest.processes == 2 and manifest.steps == 2
    assert run.trained_weights() is not None and not run.checkpoints.exists()


@pytest.mark.workbook
def test_a_checkpoint_is_the_run_folder_before_a_notebook_which_then_runs_alone(tiny_model, tmp_path, capsys):
    from tunebook.workbook import workshop

    card = write_job(tmp_path / "job", per_label=3)
    tiny = {"JOB_CARD": str(card), "BASE_MODEL": tiny_model, "FORCE_TRAINING": True, "K_SHOTS": 1}
    tiny.update({"MAX_STEPS": 2, "BATCH_SIZE": 4, "LORA_R": 4, "COMPARE_METHODS": ""})
    profile = tmp_path / "profile.yaml"  # the shipped workshop profile, on the tiny model
    profile.write_text(yaml.safe_dump({**yaml.safe_load(workshop.profile_path().read_text()), **tiny}))
    into = tmp_path / "runs" / "me"
    assert cli.main(["checkpoint", "03", "--into", str(into), "--config", str(profile)]) == 0
    run = RunFolder(into)
    assert [p.name[:2] for p in run.notebooks()] == ["00", "01", "02"] and run.has_results("02_prove_the_baseline")
    printed = capsys.readouterr().out
    assert f'set RUN_DIR = "{into.resolve()}"' in printed and f"--continue {into.resolve()} --steps 03" in printed
    assert cli.main(["run", "--continue", str(into), "--steps", "03", "--config", str(profile)]) == 0  # 03 alone
    assert run.trained_weights() is not None and run.has_results("03_train_qlora")
    assert run.read_manifest().config["max_steps"] == 2  # the profile's parameters reached it
    assert cli.main(["checkpoint", "03", "--into", str(into)]) == 2  # never into an existing folder
    assert cli.main(["checkpoint", "00", "--into", str(tmp_path / "runs" / "other")]) == 2
    assert "nothing runs before 00_define_the_job" in capsys.readouterr().err
