"""The ``radfm`` command: one sub-command per job.

A known error (a bad sample, a missing file, a registry that cannot do it, a bad config …) is one line on stderr,
``radfm <command>: error: …``, and exit code 2; ``--debug`` (or ``RADFM_DEBUG=1``) shows its traceback. An
unexpected exception is a bug: its traceback, exit code 1 (:mod:`radfm.cli_errors`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from radfm.cli_errors import DEBUG_ENV, debug_enabled, report, run_guarded

Handler = Callable[[argparse.Namespace], int]


def _flows_module(module: str, argv: Sequence[str], debug: bool = False) -> int:
    """Run ``python -m flows.<module> …``: the library never imports flows/ (the dependency points the other way),
    so the CLI hands over to a child process (which reports its own errors the same way; ``--debug`` reaches it
    as ``RADFM_DEBUG=1``)."""
    import os
    import subprocess

    env = {**os.environ, DEBUG_ENV: "1"} if debug else None
    return subprocess.call([sys.executable, "-m", f"flows.{module}", *argv], env=env)


def _demo(args: argparse.Namespace) -> int:
    """``radfm demo --quick`` (without --quick, :func:`main` hands the command line to the pipeline flow)."""
    from radfm.demo_model import run

    result = run(steps=args.steps)
    if result["accuracy"] <= result["majority"]:
        print("the model did not beat the majority baseline: it has not learned from the images")
        return 1
    return 0


def _flows(args: argparse.Namespace) -> int:
    only = getattr(args, "only", None) or []  # `list` takes no --only
    return _flows_module("serve", [args.action, *sum((["--only", o] for o in only), [])], args.debug)


def _model_info(args: argparse.Namespace) -> int:
    from radfm.model import factory, presets

    cfg = presets.preset(args.preset)
    model = factory.build_on_meta(cfg)
    print(f"{cfg.name}: {factory.format_counts(factory.count_parameters(model))}")
    return 0


def _import_checkpoint(args: argparse.Namespace) -> int:
    from radfm.model.convert import import_checkpoint

    report = import_checkpoint(args.path, args.out, preset=args.preset, tokenizer_dir=args.tokenizer,
                               strict=not args.lenient)
    print(report.summary())
    return 0


def _ingest(args: argparse.Namespace) -> int:
    """Import into ``OUT/manifest.jsonl`` (+ ``manifest.profile.json`` beside it); a known error is one line."""

    from radfm.data import importers
    from radfm.data.profile import load_profile, profile_path, summary

    common = {"on_error": args.on_error}
    manifest = Path(args.out) / "manifest.jsonl"
    try:
        if args.kind == "table":
            samples, quarantine = importers.ingest_table(args.source, args.out, image_root=args.image_root,
                                                         task=args.task, **common)
        elif args.kind == "medmnist":
            samples, quarantine = importers.ingest_medmnist(args.source, args.out, name=args.name,
                                                            max_per_split=args.max_per_split, **common)
        else:
            samples, quarantine = importers.ingest_dicom_folder(args.source, args.reports, args.out, **common)
        profile = load_profile(manifest)
    except (OSError, ValueError) as exc:  # SampleError is a ValueError: it names the sample, file and reason
        # Every ValueError here is about the user's table or files (pandas' EmptyDataError included): one line.
        return report("radfm ingest", exc, args.debug, known=True)
    print(f"{len(samples)} samples written under {args.out} ({manifest.name}); {len(quarantine)} quarantined")
    if profile is not None:
        print(f"question profile: {profile_path(manifest)} ({summary(profile)}); `radfm validate {args.out}` "
              "shows it")
    return 0


def _data(args: argparse.Namespace) -> int:
    from radfm.data import versioning

    root = args.repo
    if args.action == "version":
        print(versioning.data_version(root, args.target))
        return 0
    import os

    remote_url = args.remote_url or os.environ.get("RADFM_DVC_REMOTE_URL")
    if remote_url:
        versioning.init_repo(root)
        versioning.configure_remote(root, remote_url, local=True)
    if args.action == "add":
        print(versioning.add(root, args.target))
    elif args.action == "push":
        versioning.push(root, args.target)
        print(f"pushed {args.target} ({versioning.data_version(root, args.target)})")
    else:
        print(f"pulled {args.target} ({versioning.pull(root, args.target)})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from radfm.eval.radbench import evaluate_checkpoint
    from radfm.eval.report import summary_markdown

    with _local_checkpoint(args.model) as model_dir:
        summary = evaluate_checkpoint(model_dir, args.manifest, args.out, data_root=args.data_root,
                                      split=args.split, batch_size=args.batch_size, limit=args.limit,
                                      ablate=not args.no_ablate, embedding=not args.no_embedding,
                                      num_beams=args.num_beams)
    print(summary_markdown(summary).split("## per family")[0])
    print(f"per-sample CSV, summary and report.html in {args.out}")
    return 0


MODEL_URI_SCHEMES = ("models:/", "runs:/")


@contextmanager
def _local_checkpoint(model: str) -> Iterator[str]:
    """The checkpoint directory behind ``model`` for as long as the block runs: a folder as given, or a registered
    or logged model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``) fetched from the
    tracking store ``radfm predict`` reads (MLFLOW_TRACKING_URI, else $RADFM_HOME/mlflow.db) into a temporary
    folder. The pyfunc's artifact *is* the checkpoint folder (radfm.registry.pyfunc), so RadBench scores exactly
    the weights, tokenizer and image transform that predict and the served model use."""
    if not model.startswith(MODEL_URI_SCHEMES):
        yield model
        return
    import tempfile

    import mlflow

    from radfm.registry.registry import default_tracking_uri, health_check

    uri = default_tracking_uri()
    _require_registry(uri)
    health_check(uri)  # MLflow's own client retries a dead server for minutes
    with tempfile.TemporaryDirectory(prefix="radfm-eval-model-") as tmp:
        previous = mlflow.get_tracking_uri()
        # Set, not only passed: a models:/ URI is resolved against the registry URI, which follows the tracking
        # URI (as in radfm.registry.inference.load).
        mlflow.set_tracking_uri(uri)
        try:
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=tmp))
        finally:
            mlflow.set_tracking_uri(previous)
        yield str(_checkpoint_in(root, model))


def _checkpoint_in(root: Path, model: str) -> Path:
    """The checkpoint folder inside a downloaded MLflow model: the pyfunc's ``checkpoint`` artifact named by its
    MLmodel file, else the one folder that holds a radfm checkpoint (config + weights)."""
    import yaml

    from radfm.model.checkpoint import CONFIG, WEIGHTS

    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
        path = ((flavor.get("artifacts") or {}).get("checkpoint") or {}).get("path")
        if path and (root / path / CONFIG).is_file():
            return root / path
    found = sorted({c.parent for c in root.rglob(CONFIG) if (c.parent / WEIGHTS).is_file()})
    if len(found) != 1:
        what = "no radfm checkpoint" if not found else f"{len(found)} radfm checkpoints"
        raise FileNotFoundError(f"{model} holds {what} ({CONFIG} + {WEIGHTS}): name a model logged by "
                                "`radfm register` or the pipeline")
    return found[0]


def _register(args: argparse.Namespace) -> int:
    from radfm.registry.registry import default_tracking_uri, register_checkpoint

    version = register_checkpoint(args.checkpoint, args.radbench, name=args.name,
                                  tracking_uri=default_tracking_uri())
    print(f"registered {args.name} version {version.version} as challenger")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from radfm.registry.promotion import rollback
    from radfm.registry.registry import RegistryError, default_tracking_uri

    try:
        uri = default_tracking_uri()
        _require_registry(uri)
        moved = rollback(args.name, to=args.to, tracking_uri=uri)
    except (RegistryError, ConnectionError, ValueError) as exc:
        return report("radfm rollback", exc, args.debug, known=True)
    print(f"{args.name}: champion is version {moved['to']} again (was {moved['from']})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    import json

    import yaml

    from radfm.registry.promotion import Gate, MissingMetricsError, promote
    from radfm.registry.registry import RegistryError, default_tracking_uri

    try:
        gate = None
        if args.gate:
            text = Path(args.gate).read_text()
            gate = Gate.from_dict(json.loads(text) if args.gate.endswith(".json") else yaml.safe_load(text))
        uri = default_tracking_uri()
        _require_registry(uri)
        decision = promote(args.name, version=args.version, gate=gate, tracking_uri=uri)
    except (MissingMetricsError, RegistryError, ConnectionError, ValueError, OSError, yaml.YAMLError) as exc:
        # a gate file that does not parse or names an unknown field is the user's input, as is a version number
        return report("radfm promote", exc, args.debug, known=True)
    if decision.refused:
        # One line, exit 2: the decision (and which families failed) is recorded on the version in the registry.
        print(f"radfm promote: REFUSED {args.name} version {decision.version} "
              f"(champion stays {decision.champion_version or 'unset'}): {decision.reason}", file=sys.stderr)
        return 2
    print(f"{'PROMOTED' if decision.promoted else 'not promoted'}: {decision.reason}")
    return 0


def _require_registry(uri: str) -> None:
    from radfm.registry.registry import require_store

    require_store(uri)


def _predict(args: argparse.Namespace) -> int:
    from radfm.registry.inference import check_inputs, check_num_beams, predict
    from radfm.registry.registry import default_tracking_uri

    # The inputs first (milliseconds: prompt, max_new_tokens, image count and headers), then the registry; the
    # context is checked by the model itself before it does any work.
    images = check_inputs(args.prompt, args.image, args.max_new_tokens)
    check_num_beams(args.num_beams, "--num-beams")
    uri = default_tracking_uri()
    if args.model.startswith(("models:/", "runs:/")):
        _require_registry(uri)
    print(predict(args.model, args.prompt, images, max_new_tokens=args.max_new_tokens, tracking_uri=uri,
                  num_beams=args.num_beams))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from radfm.validation import run_cli

    return int(run_cli(args) or 0)


def _services(args: argparse.Namespace) -> int:
    from radfm.services import run_cli

    return int(run_cli(args) or 0)


def _hand_off(sub: argparse._SubParsersAction, name: str, help: str, what: str) -> None:
    """A sub-command whose command line belongs to another parser (``main`` hands it over before argparse):
    listed in ``radfm --help`` with its help line, everything after the name passed through unparsed."""
    p = sub.add_parser(name, help=help, description=help, add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=what)


def build_parser() -> argparse.ArgumentParser:
    """The ``radfm`` parser. Every sub-command and option carries a help line (tests/test_cli_help.py walks it)."""
    parser = argparse.ArgumentParser(prog="radfm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also RADFM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="`radfm COMMAND --help` tells more")

    def command(name: str, help: str, func: Handler | None = None, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        if func is not None:
            p.set_defaults(func=func)
        return p

    p = command("demo", "the main job on the embedded default: the radfm-pipeline flow on MedMD-synth", _demo)
    p.add_argument("--quick", action="store_true", help="only the model: train the tiny preset on phantoms (~30 s)")
    p.add_argument("--steps", type=int, default=120, help="--quick: training steps")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the pipeline (default: experiment=demo_tiny)")

    # `train` and `pipeline` are handed to their own parsers by main() before argparse runs; they are declared
    # here so that `radfm --help` lists them.
    _hand_off(sub, "train", "train a model: Hydra's command line (`radfm train --help`; e.g. `radfm train "
              "experiment=demo_tiny trainer.max_steps=100`, `-m` for a sweep)",
              "Hydra overrides (key=value), -m/--multirun, --cfg job …")
    _hand_off(sub, "pipeline", "run the radfm-pipeline flow: data → validation → training → RadBench → "
              "registration → promotion (`radfm pipeline --help`)", "Hydra overrides and the flow's options")

    p = command("flows", "the Prefect deployments of prefect.yaml: serve their schedules here, or list them")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="serve or list")
    a = actions.add_parser("serve", help="run the deployments' cron schedules from this machine until stopped",
                           description="run the deployments' cron schedules from this machine until stopped")
    a.add_argument("--only", action="append", default=None, help="serve only this deployment (repeatable)")
    a.set_defaults(func=_flows)
    actions.add_parser("list", help="the deployments, their flows and crons",
                       description="the deployments, their flows and crons").set_defaults(func=_flows)

    p = command("model-info", "parameter counts of a preset (built on the meta device)", _model_info)
    p.add_argument("--preset", default="tiny", help="model preset: tiny, small or base (the RadFM 13B shape)")

    p = command("import-checkpoint", "map the released RadFM checkpoint onto this model", _import_checkpoint)
    p.add_argument("path", help="pytorch_model.bin / .safetensors file or a folder of shards")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--preset", default="base", help="preset whose shape the checkpoint has")
    p.add_argument("--tokenizer", default=None, help="local LLaMA tokenizer directory")
    p.add_argument("--lenient", action="store_true", help="report unmapped keys instead of failing")

    p = command("eval", "RadBench: score a model beside blind and image-ablated baselines", _eval)
    p.add_argument("--model", required=True, help="checkpoint directory (radfm save_pretrained), or a registered "
                   "model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model (from MLFLOW_TRACKING_URI, "
                   "as `radfm predict`)")
    p.add_argument("--manifest", required=True, help="manifest (JSONL/Parquet) holding the split to score")
    p.add_argument("--data-root", default=None, help="folder the image paths are relative to (default: the "
                   "manifest's folder)")
    p.add_argument("--out", required=True, help="output folder: predictions.csv, summary.json/.md, report.html")
    p.add_argument("--split", default="test", help="manifest split to score")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward/generate call")
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows of the split")
    p.add_argument("--no-ablate", action="store_true", help="skip the image-ablated baseline (the second pass of the model)")
    p.add_argument("--no-embedding", action="store_true", help="skip the embedding similarity of reports and rationales")
    p.add_argument("--num-beams", type=int, default=1, help="open answers by beam search over N beams (1: greedy)")

    p = command("register", "log a checkpoint as an MLflow model and register it as challenger", _register)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (radfm save_pretrained)")
    p.add_argument("--radbench", required=True, help="radfm eval output folder or its summary.json")
    p.add_argument("--name", default="radfm", help="registered model name")

    p = command("promote", "move `champion` to the challenger if it passes the gate", _promote)
    p.add_argument("--name", default="radfm", help="registered model name")
    p.add_argument("--version", default=None, help="version to promote (default: the challenger)")
    p.add_argument("--gate", default=None, help="gate as YAML/JSON (required_tasks, min_gain, max_regression, floors, "
                   "baselines, min_family_rows); refused: exit 2")

    p = command("rollback", "move `champion` back to the previous champion (no gate: an operator's decision, "
                "recorded on both versions)", _rollback)
    p.add_argument("--name", default="radfm", help="registered model name")
    p.add_argument("--to", default=None, help="the version to restore (default: the newest earlier version the "
                   "gate promoted)")

    p = command("predict", "answer a prompt about one or more images with a registered model (limits: the model's "
                "context, RADFM_MAX_IMAGES images (16), the readers' image size limits)", _predict)
    p.add_argument("--model", default="models:/radfm@champion", help="models:/NAME@ALIAS, models:/NAME/VERSION, "
                   "runs:/RUN_ID/model or a logged model's folder (default: the champion)")
    p.add_argument("--prompt", required=True, help="the question or instruction")
    p.add_argument("--image", action="append", default=[], help="an image or scan (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="at most the model's context minus the prompt")
    p.add_argument("--num-beams", type=int, default=1, help="beam search over N beams (1: greedy; at most 8)")

    from radfm.app import add_parser as add_app_parser  # cheap: Gradio and the model load only when it runs

    add_app_parser(sub)

    _hand_off(sub, "synth", "generate MedMD-synth (`radfm synth --help`)", "--out DIR, --n, --seed, --variant …")

    p = command("ingest", "import your own data into a manifest")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND", help="what to import")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output data root: OUT/manifest.jsonl, its profile, images/")
    common.add_argument("--on-error", choices=["raise", "quarantine"], default="raise",
                        help="a bad row stops the import (raise), or is set aside in manifest.quarantine.jsonl "
                        "(quarantine)")
    for kind, help, source in (
            ("table", "a CSV/TSV/JSONL table: image and question + answer (or report) per row; id, split, "
             "task, family, labels, choices optional",
             "CSV, TSV or JSONL table"),
            ("medmnist", "a MedMNIST .npz: diagnosis questions in its official splits", "MedMNIST .npz file"),
            ("dicom", "a folder of DICOM studies with a CSV of reports: de-identified report samples",
             "folder of DICOM studies (one sub-folder per study or series)")):
        k = kinds.add_parser(kind, help=help, description=help, parents=[common])
        k.add_argument("source", help=source)
        k.set_defaults(func=_ingest)
        if kind == "table":
            k.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: "
                           "the table's folder)")
            k.add_argument("--task", default=None, help="task for rows without one")
        elif kind == "medmnist":
            k.add_argument("--name", default=None, help="MedMNIST dataset name (default: from the file name)")
            k.add_argument("--max-per-split", type=int, default=None, help="at most N samples of each split")
        else:
            k.add_argument("--reports", required=True, help="CSV of reports, one row per study (keyed by StudyInstanceUID, "
                           "AccessionNumber or the sub-folder name)")

    p = command("data", "version the dataset with DVC (S3 remote from the environment)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do with the version")
    repo = argparse.ArgumentParser(add_help=False)
    repo.add_argument("--repo", default=".", help="DVC repository root (default: here)")
    repo.add_argument("--target", default="data", help="the DVC-tracked folder")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--remote-url", default=None, help="s3://bucket/path (default: $RADFM_DVC_REMOTE_URL; "
                        "endpoint: $RADFM_S3_ENDPOINT_URL)")
    for action, help, parents in (
            ("add", "record the folder's version (dvc add → data.dvc; commit that file)", [repo, remote]),
            ("push", "upload the recorded version to the S3 remote", [repo, remote]),
            ("pull", "download the recorded version from the S3 remote", [repo, remote]),
            ("version", "print the folder's version (the md5 DVC computes for it in the workspace: data.dvc's once "
             "added; the one every run logs)", [repo])):
        actions.add_parser(action, help=help, description=help, parents=parents).set_defaults(func=_data)

    p = command("validate", "Great Expectations suites on a manifest and its images", _validate)
    p.add_argument("data", help="data root (holds the manifest)")
    p.add_argument("--manifest", default=None,
                   help="default: DATA/manifest.jsonl, else the one manifest under DATA/manifests/")
    p.add_argument("--out", default=None, help="report folder (default: $RADFM_HOME/validation/<name>)")
    p.add_argument("--config", default=None, help="YAML of thresholds (default: conf/validation/default.yaml)")
    p.add_argument("--mostly", type=float, default=None, help="override every expectation's `mostly`")
    p.add_argument("--no-images", action="store_true", help="manifest suite only (skip image statistics)")

    p = command("services", "start/stop MLflow, Prefect, a Ray head and an S3 API on 127.0.0.1")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do with them")
    only = argparse.ArgumentParser(add_help=False)
    only.add_argument("--only", default=None, help="comma list of mlflow,prefect,ray,s3 (default: all)")
    for action, help in (("up", "start them (those already running are kept) and print the export lines"),
                         ("down", "stop them (their data and logs stay under $RADFM_HOME/services/)"),
                         ("status", "which are running, and where")):
        actions.add_parser(action, help=help, description=help, parents=[only]).set_defaults(func=_services)

    for name, p in _parsers(parser):
        if name.split()[-1] not in ("train", "pipeline", "synth") and not _has_subcommands(p):
            # also after the sub-command; SUPPRESS keeps the sub-parser's default from undoing `radfm --debug …`
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _parsers(parser: argparse.ArgumentParser, prefix: str = "radfm") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every sub-parser under ``parser``, nested ones included, as (``"radfm data add"``, parser)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                out.append((f"{prefix} {name}", p))
                out += _parsers(p, f"{prefix} {name}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``radfm`` command line → its exit code (0 done, 2 a known error or a refused gate, 1 a bug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv[:1] == ["--debug"]:  # the global flag, before the sub-command
        debug = True
        argv.pop(0)
    debug = debug_enabled(debug)
    prog = f"radfm {argv[0]}" if argv and not argv[0].startswith("-") else "radfm"
    if argv[:1] == ["synth"]:
        # MedMD-synth owns its own argument parser: hand it everything after the sub-command.
        from radfm.data import synth
        from radfm.logs import show_progress

        show_progress()  # the generator's progress lines (no logging is configured here)
        return run_guarded(prog, lambda: synth.main(argv[1:]), debug)
    if argv[:1] == ["demo"] and "--quick" not in argv and not {"-h", "--help"} & set(argv):
        # The main job: the pipeline flow on the embedded default (its parser takes --refresh, overrides …).
        return _flows_module("pipeline", argv[1:], debug)
    if argv[:1] == ["pipeline"]:
        # The flow's own parser owns the command line (Hydra overrides, --refresh, --gate …).
        return _flows_module("pipeline", argv[1:], debug)
    if argv[:1] == ["train"]:
        # Hydra owns the command line of training (overrides, -m multirun); its entry reports errors as we do.
        from radfm.train.entry import run as train_run

        return train_run(argv[1:], debug=debug, argv0=f"{sys.argv[0]} train")
    args = build_parser().parse_args(argv)
    args.debug = debug or bool(getattr(args, "debug", False))

    def run() -> int:
        from radfm.logs import show_progress
        from radfm.paths import configure_caches

        configure_caches()
        show_progress()  # ingest, eval …: their progress lines (no logging is configured here)
        return int(args.func(args) or 0)

    return run_guarded(prog, run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
