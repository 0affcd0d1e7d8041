"""Command line: ``tunebook run`` runs the workbook; ``tunebook define``, ``clean``, ``baseline``, ``train`` (also under
``accelerate launch`` / ``torchrun``) ``evaluate`` and ``release`` run one step on a run folder; ``tunebook predict`` serves a
job's released champion on a file; ``tunebook versions`` / ``promote`` / ``rollback`` manage the registry;
``tunebook prepare-model`` caches the bundled model."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from tunebook.errors import TunebookError


def parse_assignments(items: list[str]) -> dict:
    """Parse ``KEY=VALUE`` pairs; values are read as YAML scalars (3 -> int, 0.5 -> float, true -> bool)."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TunebookError(f"-p expects KEY=VALUE, got '{item}'.")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return parsed


def load_config(path: str | None) -> dict:
    """Read a YAML mapping of notebook parameters."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise TunebookError(f"config file not found: {file}")
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise TunebookError(f"{file}: expected a YAML mapping of PARAMETER: value.")
    return data


def given_parameters(config: str | None, typed: dict) -> dict:
    """The parameters a user gave: the config file's, overridden by the parsed -p KEY=VALUE assignments."""
    return {**load_config(config), **typed}


def absolute_paths(parameters: dict) -> dict:
    """Make a given JOB_CARD and a local BASE_MODEL absolute, since notebooks run inside the run folder. An empty
    JOB_CARD is dropped: 00's declared default (the bundled example beside the notebooks) applies."""
    resolved = dict(parameters)
    if resolved.get("JOB_CARD"):
        resolved["JOB_CARD"] = str(Path(resolved["JOB_CARD"]).expanduser().resolve())
    else:
        resolved.pop("JOB_CARD", None)
    model = resolved.get("BASE_MODEL")
    if isinstance(model, str) and model not in ("", "bundled") and Path(model).expanduser().exists():
        resolved["BASE_MODEL"] = str(Path(model).expanduser().resolve())
    return resolved


def _run(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.core.runfolder import RunFolder, Step
    from tunebook.workbook.parameters import declared_parameters
    from tunebook.workbook.runner import NOTEBOOKS, run_workbook

    typed = parse_assignments(args.param)
    parameters = absolute_paths(given_parameters(args.config, typed))
    steps = NOTEBOOKS
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",")]
        steps = tuple(n for n in NOTEBOOKS if any(n.startswith(w) for w in wanted))
        if not steps:
            raise TunebookError(f"--steps {args.steps} matches none of {', '.join(NOTEBOOKS)}.")
        declared = declared_parameters()
        # a config file (the workshop profile) covers every notebook; a -p typed for a step that does not run is a slip
        unused = [k for k in typed if k in declared and not set(declared[k].notebooks) & set(steps)]
        if unused:
            raise TunebookError(f"{', '.join(unused)} would be ignored: no notebook in --steps {args.steps} uses it.")
    if args.continue_run:
        if args.name:
            raise TunebookError("--continue names the run folder itself; drop --name.")
        folder = Path(args.continue_run)
        run_dir, summary = run_workbook(parameters, folder.parent, folder.name, steps, continue_run=True)
    else:
        name = args.name or time.strftime("run-%Y%m%d-%H%M%S")
        run_dir, summary = run_workbook(parameters, args.runs_dir, name, steps)
    run = RunFolder(run_dir)
    for step, reason in summary.skipped.items():
        print(f"[tunebook] {step} was skipped: {reason}")
    if run.has_results(Step.RELEASE):
        release = run.read_results(Step.RELEASE)
        print(f"[tunebook] {release.summary}{_chance(run) if release.system_kind in ('adapter', 'mixed') else ''}")
        outcome = (
            "promoted to champion"
            if release.promoted
            else f"gate failed ({', '.join(release.failed_checks)}); champion unchanged"
        )
        shipped = "the trained model" if release.system_kind in ("adapter", "mixed") else release.system_variant
        print(f"[tunebook] registered {shipped} ({release.system_kind}) as version {release.version}: {outcome}")
        if run.has_results(Step.MONITOR):
            watched = run.read_results(Step.MONITOR)
            verdict = f"ALERT ({', '.join(watched.fired)})" if watched.alert else "quiet"
            print(
                f"[tunebook] monitor: {verdict} on {watched.logged} answers of version {watched.version} "
                f"({watched.labelled} labelled); report: {run_dir / watched.report}"
            )
    elif run.has_results(Step.BASELINE):
        print(f"[tunebook] baseline: {run.read_results(Step.BASELINE).verdict}")
    print(f"[tunebook] results: {run_dir} ({run.relative(run.summary)}, executed notebooks, artifacts)")
    return 0


def _chance(run) -> str:
    """What 04's paired test says of the tuned system against the best baseline, for the closing line."""
    paired = run.read_comparison().mcnemar
    said = (
        "better beyond chance" if paired.better else "worse beyond chance" if paired.significant else "could be chance"
    )
    return f"; paired test on the same {paired.n} examples (fixed {paired.fixed}, broke {paired.broken}): p = {paired.p_value:.2g}, {said}"


def _step_parameters(step: str, args: argparse.Namespace) -> dict:
    """A step's parameters for running it alone on a run folder: its declared defaults, then --config, then -p."""
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.core.runfolder import Step
    from tunebook.core.settings import check_parameters
    from tunebook.workbook.parameters import SETTINGS, declared_parameters

    every = declared_parameters()
    declared = {p.name: p for p in SETTINGS[Step(step)].parameters()}
    # a config file may be a profile of the whole workbook (workshop/profile.yaml): what other notebooks take is
    # theirs; a name no notebook declares, or a -p this step does not take, is still refused
    config = {k: v for k, v in load_config(args.config).items() if k not in every or k in declared}
    given = absolute_paths({**config, **parse_assignments(args.param)})
    if "JOB_CARD" not in given and step == Step.DEFINE:
        raise TunebookError(
            "tunebook define needs the job card: -p JOB_CARD=PATH, the YAML file that defines the job."
        )
    check_parameters(given, declared)
    return {**{k: p.default for k, p in declared.items()}, **given}


def _define(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.core.runfolder import Step
    from tunebook.define.step import define_run_folder

    defined = define_run_folder(args.run_dir, _step_parameters(Step.DEFINE, args))
    print(
        f"[tunebook] job {defined.card.name} ({defined.card.task_kind}): recommended approach "
        f"{defined.approach.approach}; {'train' if defined.results.proceed_to_training else 'no training'} "
        f"in {args.run_dir}"
    )
    return 0


def _clean(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.clean.step import clean_run_folder
    from tunebook.core.runfolder import Step

    _, cleaned = clean_run_folder(args.run_dir, _step_parameters(Step.CLEAN, args))
    print(
        f"[tunebook] dataset version {cleaned.version.hash[:12]}: "
        + ", ".join(f"{name} {len(frame)}" for name, frame in cleaned.splits.items())
        + f"; {len(cleaned.review)} findings to review; data card: {cleaned.data_card}"
    )
    return 0


def _baseline(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.baseline.step import prove_run_folder
    from tunebook.core.runfolder import Step

    proof = prove_run_folder(args.run_dir, _step_parameters(Step.BASELINE, args))
    print(f"[tunebook] best on validation: {proof.best.name}; {proof.verdict.text}")
    return 0


def _train(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.core.runfolder import RunFolder, Step
    from tunebook.train.step import recorded_results, train_run_folder

    result = train_run_folder(args.run_dir, _step_parameters(Step.TRAIN, args))
    if os.environ.get("RANK", "0") == "0":
        RunFolder(Path(args.run_dir)).write_results(Step.TRAIN, recorded_results(result))
    print(
        f"[tunebook] validation loss {result.val_loss_before:.3f} -> {result.val_loss_after:.3f}; adapter: {result.adapter_dir}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.core.runfolder import Step
    from tunebook.evaluate.step import evaluate_run_folder

    result = evaluate_run_folder(args.run_dir, _step_parameters(Step.EVALUATE, args)).results()
    evaluated = "tuned" if result.system_kind in ("adapter", "mixed") else f"{result.system_variant} (no training)"
    print(
        f"[tunebook] {evaluated} {result.primary} {result.metrics[result.primary]:.3f}; against the best baseline "
        f"({result.baseline_variant}): {'better' if result.beats_baseline else 'not shown better'}, "
        f"McNemar p = {result.mcnemar_p_value}"
    )
    return 0


def _release(args: argparse.Namespace) -> int:
    # deferred, as in every command here: each imports only what it runs, so `tunebook --help` starts at once
    from tunebook.core.runfolder import Step
    from tunebook.release.step import release_run_folder

    parameters = _step_parameters(Step.RELEASE, args)
    if getattr(args, "knowledge", None):
        from tunebook.release.step import release_knowledge  # deferred: as above

        into = args.into or f"{Path(args.run_dir).resolve()}-knowledge-{time.strftime('%Y%m%d-%H%M%S')}"
        result = release_knowledge(args.run_dir, args.knowledge, into, parameters)
        print(f"[tunebook] knowledge update written to {into}")
    else:
        result = release_run_folder(args.run_dir, parameters)
    outcome = "promoted to champion" if result.promoted else f"gate failed ({', '.join(result.failed_checks)})"
    print(f"[tunebook] {result.summary}")
    print(
        f"[tunebook] registered {result.system_variant} ({result.system_kind}) as version {result.version}: {outcome}"
    )
    return 0


def _parameters(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.workbook.parameters import parameter_table

    table = parameter_table(args.step)
    if not table:
        raise TunebookError(f"no notebook starts with {args.step!r}; name one of 00 to 06, or none for all.")
    print(table)
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.modeling.models import resolve_base_model

    print(f"[tunebook] base model ready: {resolve_base_model(args.model)}")
    return 0


def _copy_workbook(args: argparse.Namespace) -> int:
    # deferred: as above
    from tunebook.workbook.bundle import copy_workbook

    into = copy_workbook(args.into)
    print(f"[tunebook] workbook copied to {into}: open it with `jupyter lab {into / 'notebooks'}`")
    print(f"[tunebook] `tunebook run` uses these notebooks when TUNEBOOK_NOTEBOOKS={into / 'notebooks'}")
    return 0


def _store(args: argparse.Namespace):
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.registry.store import open_registry

    return open_registry(args.tracking_uri, workspace=args.runs_dir)


def _predict(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.serving.serve import predict_file

    result = predict_file(
        _store(args), args.job, args.input, args.output, args.base_model, args.version, args.batch_size
    )
    print(
        f"[tunebook] {len(result)} predictions by '{args.job}' version {result['model_version'].iloc[0] if len(result) else '-'}: {args.output}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Replace this process with ``mlflow models serve`` on the job's champion (or version), with this environment's
    programs on PATH (MLflow starts uvicorn by name) and the registry and base model it was given."""
    # deferred, as in every command here: each imports only what it runs
    from tunebook.registry.store import champion, get_version
    from tunebook.serving.pyfunc import BASE_MODEL_ENV

    store = _store(args)
    chosen = get_version(store, args.job, args.version) if args.version else champion(store, args.job)
    if chosen is None:
        raise TunebookError(f"job '{args.job}' has no champion in {store.uri}: release one with 05_release first.")
    uri = f"models:/{args.job}/{chosen.version}" if args.version else f"models:/{args.job}@champion"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if args.base_model:
        env[BASE_MODEL_ENV] = args.base_model
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    command += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    print(f"[tunebook] serving {uri} (version {chosen.version}) on http://{args.host}:{args.port}", flush=True)
    os.execve(sys.executable, command, env)
    return 0  # not reached: the server replaces this process


def _export(args: argparse.Namespace) -> int:
    """Export a version and print its parity table; exit 3 when a form is not for release, naming it."""
    # deferred: as above
    from tunebook.export.forms import parity_table
    from tunebook.export.step import export_version

    result = export_version(
        _store(args),
        args.job,
        args.version,
        into=args.into,
        forms=tuple(f.strip() for f in args.forms.split(",") if f.strip()),
        base_model=args.base_model,
        gguf_types=tuple(t.strip() for t in args.gguf_types.split(",") if t.strip()),
        threads=args.threads,
        min_agreement=args.min_agreement,
        examples=args.examples,
    )
    print(parity_table(result.parity))
    for part, seconds in result.seconds.items():
        print(f"[tunebook] {part}: {seconds:.1f} s")
    for form, why in result.skipped.items():
        print(f"[tunebook] {form} not written: {why}")
    print(f"[tunebook] version {result.version} exported to {result.folder}: {', '.join(result.manifests)}")
    if result.not_for_release:
        for form, why in result.not_for_release.items():
            print(f"[tunebook] NOT FOR RELEASE: {form}: {why}")
        return 3
    return 0


def _versions(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.registry.store import versions

    table = versions(_store(args), args.job)
    print(table.to_string() if len(table) else f"[tunebook] '{args.job}' has no registered versions.")
    return 0


def _promote(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.registry.register import promote

    done = promote(_store(args), args.job, args.version, args.force, args.reason, args.require_shadow)
    print(f"[tunebook] '{done.model}' champion: version {done.champion} (was {done.replaced or 'none'})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.registry.register import rollback

    done = rollback(_store(args), args.job)
    print(f"[tunebook] '{done.model}' champion rolled back from version {done.replaced} to version {done.champion}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.monitor.step import watch

    where = f" --runs-dir {args.runs_dir}" + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")
    out = args.out or f"{args.runs_dir}/monitoring/{args.job}-{time.strftime('%Y%m%d-%H%M%S')}"
    verdict = watch(_store(args), args.job, args.log, out, args.labels, args.version, args.rollback_on_alert, where)
    for problem in verdict.log_problems:
        print(f"[tunebook] skipped {problem}", file=sys.stderr)
    print(f"[tunebook] {verdict.summary()}\n[tunebook] report: {out}/report.html")
    return 1 if verdict.alert else 0


def _shadow(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.monitor.shadow import run_shadow

    out = args.out or f"{args.runs_dir}/shadow/{args.job}-v{args.version}-{time.strftime('%Y%m%d-%H%M%S')}"
    verdict, disagreements = run_shadow(_store(args), args.job, args.log, args.version, out, args.base_model)
    print(f"[tunebook] {verdict.summary()}")
    if len(disagreements):
        print(disagreements.head(10).to_string(index=False))
    print(f"[tunebook] shadow window: {out}")
    return 1 if verdict.alert else 0


def _export_traffic(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.monitor.feedback import export_labelled_traffic
    from tunebook.serving.serve import fetch_release

    _, release = fetch_release(_store(args), args.job)
    rows = export_labelled_traffic(release.read_job_card(), args.log, args.labels, args.out)
    print(f"[tunebook] {len(rows)} labelled requests written as candidate training rows: {args.out}")
    return 0


def _registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job", required=True, help="job name (the job card's `name`), which names the registered model"
    )
    parser.add_argument(
        "--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI, else RUNS_DIR/mlflow.db)"
    )
    parser.add_argument(
        "--runs-dir", default="runs", help="folder whose mlflow.db is the default registry (default: runs)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``tunebook`` argument parser."""
    parser = argparse.ArgumentParser(prog="tunebook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the notebooks with papermill into a new run folder")
    run.add_argument("--config", help="YAML file of notebook parameters")
    run.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a notebook parameter (repeatable)"
    )
    run.add_argument("--name", help="run folder name (default: run-<timestamp>)")
    run.add_argument("--runs-dir", default="runs", help="folder that holds run folders (default: runs)")
    run.add_argument("--steps", help="comma-separated notebook prefixes to run, e.g. 00,01,02")
    run.add_argument(
        "--continue",
        dest="continue_run",
        metavar="RUN_DIR",
        help="run --steps in this existing run folder (e.g. 04,05 after `tunebook train`)",
    )
    run.set_defaults(func=_run)
    for name, step, function, what in (
        ("define", "00_define_the_job", _define, "read and check a job card into a new run folder"),
        ("clean", "01_clean_the_data", _clean, "audit, clean, split and version the data of a run folder after 00"),
        ("baseline", "02_prove_the_baseline", _baseline, "run the cheap alternatives of a run folder after 01"),
        ("train", "03_train_qlora", _train, "train on a run folder prepared by 00 and 01"),
        ("evaluate", "04_evaluate", _evaluate, "evaluate the system of a run folder against its baselines"),
        ("release", "05_release", _release, "gate, register and promote the system a run folder evaluated"),
    ):
        command = sub.add_parser(name, help=f"{what} (what {step} does)")
        command.add_argument("run_dir", help="the run folder")
        command.add_argument("--config", help=f"YAML file of {step} parameters")
        command.add_argument(
            "-p",
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a {step} parameter (repeatable; `tunebook parameters {step[:2]}` lists them)",
        )
        command.set_defaults(func=function)
        if name == "release":
            command.add_argument(
                "--knowledge",
                metavar="DIR",
                help="release RUN_DIR's system answering from these documents instead (nothing retrained)",
            )
            command.add_argument(
                "--into", metavar="NEW_RUN_DIR", help="with --knowledge: the new run folder (default: beside RUN_DIR)"
            )
    joining = sub.add_parser(
        "checkpoint", help="a new run folder as it stands before a notebook (the workshop profile), to join there"
    )
    joining.add_argument("step", help="the notebook to join at, e.g. 03")
    joining.add_argument("--into", required=True, help="the new run folder, e.g. runs/me")
    joining.add_argument("--config", help="YAML file of notebook parameters (default: workshop/profile.yaml)")
    joining.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a notebook parameter (repeatable)"
    )
    joining.set_defaults(func=_checkpoint)
    listing_parameters = sub.add_parser(
        "parameters", help="list each step's parameters: type, default, accepted values and what each does"
    )
    listing_parameters.add_argument("step", nargs="?", help="a notebook prefix such as 03 (default: every step)")
    listing_parameters.set_defaults(func=_parameters)
    copying = sub.add_parser(
        "workbook", help="copy the notebooks, bundled examples and workshop kit into a folder, to open and edit"
    )
    copying.add_argument("into", help="a new or empty folder")
    copying.set_defaults(func=_copy_workbook)
    prepare = sub.add_parser("prepare-model", help="convert the bundled base model once and cache it")
    prepare.add_argument("--model", default="bundled", help="'bundled', a local folder or a hub id")
    prepare.set_defaults(func=_prepare_model)
    serve = sub.add_parser("predict", help="predict a file of inputs with a job's released champion")
    _registry_arguments(serve)
    serve.add_argument("--input", required=True, help="CSV, JSONL or Parquet file with the card's text column")
    serve.add_argument("--output", required=True, help="JSONL file to write (never overwritten)")
    serve.add_argument("--version", help="a registered version instead of the champion")
    serve.add_argument(
        "--base-model", default="bundled", help="the base model the adapter was trained on (default: bundled)"
    )
    serve.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
    serve.set_defaults(func=_predict)
    serving = sub.add_parser("serve", help="serve a job's champion over HTTP (mlflow models serve, set up for it)")
    _registry_arguments(serving)
    serving.add_argument("--version", help="a registered version instead of the champion")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serving.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    serving.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    serving.add_argument(
        "--base-model", default="", help="where this machine keeps the base model, if the system needs one"
    )
    serving.set_defaults(func=_serve)
    exporting = sub.add_parser(
        "export",
        help="write a version as a merged model, adapter, GGUF and Ollama Modelfile, each checked on the test split",
    )
    _registry_arguments(exporting)
    exporting.add_argument("--version", help="a registered version instead of the champion")
    exporting.add_argument("--into", default="exports", help="folder to write JOB-vVERSION/ into (default: exports)")
    exporting.add_argument(
        "--forms", default="merged,adapter,gguf,ollama", help="comma-separated forms (default: all four)"
    )
    exporting.add_argument("--gguf-types", default="f16,q8_0,q4_k_m", help="GGUF types (default: f16,q8_0,q4_k_m)")
    exporting.add_argument(
        "--base-model", default="bundled", help="the base model the adapter was trained on (default: bundled)"
    )
    exporting.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: the cores free now)")
    exporting.add_argument(
        "--min-agreement",
        type=float,
        default=0.95,
        help="share of test answers a form must give as the evaluated adapter did (default: 0.95, as 05's parity)",
    )
    exporting.add_argument("--examples", type=int, default=0, help="check on the first N test examples (default: all)")
    exporting.set_defaults(func=_export)
    listing = sub.add_parser("versions", help="list a job's registered versions, aliases and gate verdicts")
    _registry_arguments(listing)
    listing.set_defaults(func=_versions)
    promoting = sub.add_parser("promote", help="make a registered version the champion")
    _registry_arguments(promoting)
    promoting.add_argument("--version", required=True, help="the version to promote")
    promoting.add_argument(
        "--force", action="store_true", help="promote a version that failed its gate (needs --reason)"
    )
    promoting.add_argument("--reason", default="", help="why a failed gate is overridden (recorded on the version)")
    promoting.add_argument(
        "--require-shadow", action="store_true", help="refuse unless the version ran in shadow without an alert"
    )
    promoting.set_defaults(func=_promote)
    back = sub.add_parser("rollback", help="move a job's champion back to the version it replaced")
    _registry_arguments(back)
    back.set_defaults(func=_rollback)
    watching = sub.add_parser(
        "monitor", help="watch a released version on its inference log; exit 1 on an alert, 0 when quiet"
    )
    _registry_arguments(watching)
    watching.add_argument("--log", required=True, help="the inference log (JSON lines written by the served model)")
    watching.add_argument("--labels", help="delayed labels: a file with id and label columns")
    watching.add_argument("--version", help="the version to watch (default: the champion)")
    watching.add_argument("--out", help="new folder for alerts.json and report.html (default: under RUNS_DIR)")
    watching.add_argument(
        "--rollback-on-alert", action="store_true", help="move the champion back to the version it replaced"
    )
    watching.set_defaults(func=_monitor)
    shadowing = sub.add_parser(
        "shadow", help="answer the champion's logged traffic with another version; exit 1 if its window alerts"
    )
    _registry_arguments(shadowing)
    shadowing.add_argument("--version", required=True, help="the challenger version to run in shadow")
    shadowing.add_argument("--log", required=True, help="the champion's inference log (with texts)")
    shadowing.add_argument("--out", help="new folder for shadow.json and the disagreements (default: under RUNS_DIR)")
    shadowing.add_argument("--base-model", help="the base model on this machine (default: as released)")
    shadowing.set_defaults(func=_shadow)
    exporting = sub.add_parser(
        "export-traffic", help="write labelled logged requests as candidate training rows (for 01's LABELLED_TRAFFIC)"
    )
    _registry_arguments(exporting)
    exporting.add_argument("--log", required=True, help="the inference log")
    exporting.add_argument("--labels", required=True, help="delayed labels: a file with id and label columns")
    exporting.add_argument("--out", required=True, help="CSV file to write (never overwritten)")
    exporting.set_defaults(func=_export_traffic)
    return parser


def _checkpoint(args: argparse.Namespace) -> int:
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.workbook.runner import NOTEBOOKS
    from tunebook.workbook.workshop import build_checkpoint, profile_path, steps_before

    config = args.config or str(profile_path())
    parameters = absolute_paths(given_parameters(config, parse_assignments(args.param)))
    done = steps_before(args.step)
    print(f"[tunebook] building {args.into}: {', '.join(done)} with {config}", flush=True)
    run_dir = build_checkpoint(args.step, args.into, parameters)
    following = next(n for n in NOTEBOOKS if n not in done)
    print(
        f"[tunebook] ready: {run_dir} stands before {following}. In JupyterLab open notebooks/{following}.ipynb and "
        f'set RUN_DIR = "{run_dir}"; headless: tunebook run --continue {run_dir} --steps {following[:2]}'
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one clear message and exit with status 2 (a failed notebook: 1)."""
    # deferred: a command imports only what it runs, so `tunebook --help` starts at once
    from tunebook.workbook.runner import NotebookFailed

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NotebookFailed as error:
        print(f"[tunebook] error: {error}", file=sys.stderr)
        return 1
    except TunebookError as error:
        print(f"[tunebook] error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
