"""The ``radfm`` command: one sub-command per job.

A known error (a bad sample, a missing file, a registry that cannot do it, a bad config …) is one line on stderr,
``radfm <command>: error: …``, and exit code 2; ``--debug`` (or ``RADFM_DEBUG=1``) shows its traceback. An
unexpected exception is a bug: its traceback, exit code 1 (:mod:`radfm.cli_errors`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

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
    return _flows_module("serve", [args.action, *sum((["--only", o] for o in args.only or []), [])], args.debug)


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


def _synth(args: argparse.Namespace) -> int:
    from radfm.data import synth

    return int(synth.main(args.rest) or 0)


def _ingest(args: argparse.Namespace) -> int:
    """Import into ``OUT/manifest.jsonl`` (+ ``manifest.profile.json`` beside it); a known error is one line."""
    from pathlib import Path

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
            if not args.reports:
                raise SystemExit("radfm ingest dicom needs --reports REPORTS.csv")
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

    summary = evaluate_checkpoint(args.model, args.manifest, args.out, data_root=args.data_root, split=args.split,
                                  batch_size=args.batch_size, limit=args.limit, ablate=not args.no_ablate,
                                  embedding=not args.no_embedding)
    print(summary_markdown(summary).split("## per family")[0])
    print(f"per-sample CSV, summary and report.html in {args.out}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from radfm.registry.registry import default_tracking_uri, register_checkpoint

    version = register_checkpoint(args.checkpoint, args.radbench, name=args.name,
                                  tracking_uri=default_tracking_uri())
    print(f"registered {args.name} version {version.version} as challenger")
    return 0


def _promote(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

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
    """Refuse a SQLite tracking store that does not exist: MLflow would create an empty one (logging its table
    migrations) and then report the model as unknown, which hides the real problem."""
    from pathlib import Path

    from radfm.registry.registry import RegistryError

    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        raise RegistryError(f"no MLflow registry at {path}: register a model first (`radfm register --checkpoint "
                            "DIR --radbench DIR`), or set MLFLOW_TRACKING_URI to the tracking server that holds it")


def _predict(args: argparse.Namespace) -> int:
    from radfm.registry.inference import check_inputs, predict
    from radfm.registry.registry import default_tracking_uri

    # The inputs first (milliseconds: prompt, max_new_tokens, image count and headers), then the registry; the
    # context is checked by the model itself before it does any work.
    images = check_inputs(args.prompt, args.image, args.max_new_tokens)
    uri = default_tracking_uri()
    if args.model.startswith(("models:/", "runs:/")):
        _require_registry(uri)
    print(predict(args.model, args.prompt, images, max_new_tokens=args.max_new_tokens, tracking_uri=uri))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from radfm.validation import run_cli

    return int(run_cli(args) or 0)


def _services(args: argparse.Namespace) -> int:
    from radfm.services import run_cli

    return int(run_cli(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radfm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also RADFM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on the embedded default: the radfm-pipeline flow on MedMD-synth")
    p.add_argument("--quick", action="store_true", help="only the model: train the tiny preset on phantoms (~30 s)")
    p.add_argument("--steps", type=int, default=120, help="--quick: training steps")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the pipeline (default: experiment=demo_tiny)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("pipeline", help="run the radfm-pipeline flow (see `radfm pipeline --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("flows", help="serve the Prefect deployments of prefect.yaml here, or list them")
    p.add_argument("action", choices=["serve", "list"])
    p.add_argument("--only", action="append", default=None, help="one deployment name (repeatable)")
    p.set_defaults(func=_flows)

    p = sub.add_parser("model-info", help="parameter counts of a preset (built on the meta device)")
    p.add_argument("--preset", default="tiny")
    p.set_defaults(func=_model_info)

    p = sub.add_parser("import-checkpoint", help="map the released RadFM checkpoint onto this model")
    p.add_argument("path", help="pytorch_model.bin / .safetensors file or a folder of shards")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--preset", default="base")
    p.add_argument("--tokenizer", default=None, help="local LLaMA tokenizer directory")
    p.add_argument("--lenient", action="store_true", help="report unmapped keys instead of failing")
    p.set_defaults(func=_import_checkpoint)

    p = sub.add_parser("eval", help="RadBench: score a checkpoint beside blind and image-ablated baselines")
    p.add_argument("--model", required=True, help="checkpoint directory (radfm save_pretrained)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--data-root", default=None, help="default: the manifest's folder")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward/generate call")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-ablate", action="store_true")
    p.add_argument("--no-embedding", action="store_true")
    p.set_defaults(func=_eval)

    p = sub.add_parser("register", help="log a checkpoint as an MLflow model and register it as challenger")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--radbench", required=True, help="radfm eval output folder or its summary.json")
    p.add_argument("--name", default="radfm")
    p.set_defaults(func=_register)

    p = sub.add_parser("promote", help="move `champion` to the challenger if it passes the gate")
    p.add_argument("--name", default="radfm")
    p.add_argument("--version", default=None)
    p.add_argument("--gate", default=None, help="gate as YAML/JSON (required_tasks, min_gain, max_regression, floors, "
                   "baselines, min_family_rows); refused: exit 2")
    p.set_defaults(func=_promote)

    p = sub.add_parser("predict", help="answer a prompt about one or more images with a registered model (limits: "
                       "the model's context, RADFM_MAX_IMAGES images (16), the readers' image size limits)")
    p.add_argument("--model", default="models:/radfm@champion")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", action="append", default=[], help="an image or scan (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="at most the model's context minus the prompt")
    p.set_defaults(func=_predict)

    p = sub.add_parser("synth", help="generate MedMD-synth (see `radfm synth --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_synth)

    p = sub.add_parser("ingest", help="import your own data into a manifest")
    p.add_argument("kind", choices=["table", "medmnist", "dicom"])
    p.add_argument("source", help="CSV/JSONL table, MedMNIST .npz, or DICOM folder")
    p.add_argument("--out", required=True, help="output data root: OUT/manifest.jsonl, its profile, images/")
    p.add_argument("--image-root", default=None, help="table importer: folder the image paths are relative to")
    p.add_argument("--task", default=None, help="table importer: task for rows without one")
    p.add_argument("--name", default=None, help="MedMNIST dataset name (default: from the file name)")
    p.add_argument("--max-per-split", type=int, default=None)
    p.add_argument("--reports", default=None, help="DICOM importer: CSV of reports")
    p.add_argument("--on-error", choices=["raise", "quarantine"], default="raise")
    p.set_defaults(func=_ingest)

    p = sub.add_parser("data", help="version the dataset with DVC (S3 remote from the environment)")
    p.add_argument("action", choices=["add", "push", "pull", "version"])
    p.add_argument("--repo", default=".", help="DVC repository root (default: here)")
    p.add_argument("--target", default="data")
    p.add_argument("--remote-url", default=None, help="s3://bucket/path (default: $RADFM_DVC_REMOTE_URL; endpoint: $RADFM_S3_ENDPOINT_URL)")
    p.set_defaults(func=_data)

    p = sub.add_parser("validate", help="Great Expectations suites on a manifest and its images")
    p.add_argument("data", help="data root (holds the manifest)")
    p.add_argument("--manifest", default=None,
                   help="default: DATA/manifest.jsonl, else the one manifest under DATA/manifests/")
    p.add_argument("--out", default=None, help="report folder (default: $RADFM_HOME/validation/<name>)")
    p.add_argument("--config", default=None, help="YAML of thresholds (default: conf/validation/default.yaml)")
    p.add_argument("--mostly", type=float, default=None, help="override every expectation's `mostly`")
    p.add_argument("--no-images", action="store_true", help="manifest suite only (skip image statistics)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("services", help="start/stop MLflow, Prefect, a Ray head and an S3 API on 127.0.0.1")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--only", default=None, help="comma list of mlflow,prefect,ray,s3 (default: all)")
    p.set_defaults(func=_services)
    for name, p in sub.choices.items():
        if name not in ("pipeline", "synth"):  # the hand-offs keep their own command line
            # also after the sub-command; SUPPRESS keeps the sub-parser's default from undoing `radfm --debug …`
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


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
        from radfm.paths import configure_caches

        configure_caches()
        return int(args.func(args) or 0)

    return run_guarded(prog, run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
