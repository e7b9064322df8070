"""The ``radfm-pipeline`` flow: data → validation → training → RadBench → MLflow registry → gated promotion.

Run it with ``python -m flows.pipeline [HYDRA OVERRIDES…]`` (what ``make demo`` does on the embedded default:
MedMD-synth, the tiny preset, the CPU), or as the ``radfm-pipeline`` deployment in ``prefect.yaml``.
(Importing ``flows.pipeline`` runs ``flows/__init__`` first, which places Prefect's files under RADFM_HOME.)
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import tasks
from flows.params import DataSpec, EvalSpec, PipelineParams


def _run(task_fn: Any, refresh: bool, timings: dict[str, dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
    """Call a task, record its state (Completed / Cached) and the seconds of its own work, and re-raise its
    failure so the flow stops at the failed task."""
    fn = task_fn.with_options(refresh_cache=True) if refresh and task_fn.cache_key_fn else task_fn
    t0 = time.perf_counter()
    state = fn(*args, return_state=True, **kwargs)
    wall = time.perf_counter() - t0
    name = task_fn.name
    if state.is_failed() or state.is_crashed():
        timings[name] = {"state": state.name, "wall_s": wall, "work_s": wall}
        state.result()  # raises the task's exception: the flow fails here, with the task's message
    result = state.result()
    cached = state.name == "Cached"
    timings[name] = {"state": state.name, "wall_s": wall, "work_s": 0.0 if cached else float(result["seconds"])}
    return result


def _tracking_uri(cfg: dict[str, Any]) -> str:
    return str(cfg.get("logger", {}).get("tracking_uri") or cfg["paths"]["mlflow_uri"])


def _first_test_image(manifest: str, root: str, split: str) -> str | None:
    from radfm.data.manifest import read_manifest, resolve_image_path

    for s in read_manifest(manifest):
        if s.split == split and s.images:
            path = resolve_image_path(root, s.images[0].path)
            return str(path) if Path(str(path)).is_file() else None
    return None


@flow(name="radfm-pipeline", log_prints=True, persist_result=True)
def radfm_pipeline(params: PipelineParams = PipelineParams()) -> dict[str, Any]:  # noqa: B008 (pydantic default)
    """One reproducible run from data to a (possibly promoted) registered model; returns what it did."""
    from radfm.paths import home_path
    from radfm.train.compose import fingerprint

    logger = get_run_logger()
    t_flow = time.perf_counter()
    timings: dict[str, dict[str, Any]] = {}
    refresh = params.refresh

    composed = _run(tasks.compose_config, False, timings, params.config_name, params.overrides)
    data = _run(tasks.prepare_data, False, timings, composed["cfg"], params.data)
    cfg = data["cfg"]
    # The run folder is named by what determines the model (config + data version): the same inputs name the
    # same run, which is what lets a cached training result stand for the files it wrote.
    run_key = fingerprint(cfg, data["version"])
    cfg["run_name"] = f"pipeline-{run_key}"
    logger.info("data version %s, run %s", data["version"], cfg["run_name"])

    uri = _tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        _run(tasks.check_tracking, False, timings, uri)
    validation_dir = str(home_path("validation", run_key))
    _run(tasks.validate_data, refresh, timings, data["root"], data["manifest"], data["version"],
         params.validation_config, params.validate_images, validation_dir)
    run_dir = Path(str(cfg["paths"]["runs_dir"])) / cfg["run_name"]
    # A cached result is only as good as the files it names: refresh a stage whose outputs were deleted.
    trained = _run(tasks.train_model, refresh or not (run_dir / "model").is_dir(), timings, cfg)
    bench = _run(tasks.radbench, refresh or not (run_dir / "radbench" / "summary.json").is_file(), timings,
                 trained, data["manifest"], data["root"], params.eval, uri if trained.get("run_id") else None,
                 validation_dir)
    result: dict[str, Any] = {"data_version": data["version"], "run_name": cfg["run_name"],
                              "run_id": trained.get("run_id"), "model_dir": trained["model_dir"],
                              "radbench_dir": bench["dir"], "summary": bench["summary"], "tracking_uri": uri}
    if params.registry:
        example = _first_test_image(data["manifest"], data["root"], params.eval.split)
        reg = _run(tasks.register_model, refresh, timings, trained, bench["dir"], params.model_name, uri, example)
        result.update(version=reg["version"], model_id=reg["model_id"], model_name=params.model_name)
        if params.promote:
            decision = _run(tasks.promote_model, False, timings, params.model_name, reg["version"], params.gate, uri,
                            trained["model_dir"])
            result["decision"] = {k: decision.get(k) for k in ("promoted", "refused", "reason", "version",
                                                                "champion_version", "failed_families")}
    wall = time.perf_counter() - t_flow
    work = sum(t["work_s"] for t in timings.values())
    result["timings"] = {"stages": timings, "flow_wall_s": wall, "work_s": work,
                         "overhead_s": wall - work, "overhead_ratio": (wall - work) / wall if wall else 0.0}
    create_markdown_artifact(summary_markdown(result), key="radfm-pipeline",
                             description="RadBench table, stage timings and where to look")
    return result


def _ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   → http://127.0.0.1:5000"


def summary_markdown(result: dict[str, Any]) -> str:
    """The RadBench headline table, the stages and the links, as Markdown (artifact and terminal)."""
    from radfm.eval.report import headline_table

    rows = headline_table(result["summary"])
    lines = ["# radfm pipeline", "", f"data version `{result['data_version']}` · run `{result['run_name']}`"
             f" · MLflow run `{result.get('run_id')}`", "", "## RadBench (test split)", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    if "version" in result:
        d = result.get("decision") or {}
        if not d:
            verdict = "not evaluated for promotion"
        elif d.get("promoted"):
            verdict = "promoted to champion"
        elif d.get("refused"):
            verdict = (f"**REFUSED by the promotion gate** (champion stays {d.get('champion_version') or 'unset'}): "
                       f"{d.get('reason')}")
        else:
            verdict = f"not promoted ({d.get('reason')})"
        lines += ["", "## Registry", "", f"`{result['model_name']}` version {result['version']} "
                  f"(LoggedModel `{result.get('model_id')}`): {verdict}"]
        failed = d.get("failed_families") or {}
        if failed:
            lines += ["", "| closed family | n | model | blind | image-ablated | short by |", "|---|---|---|---|---|---|"]
            lines += [f"| {k} | {v.get('n')} | {v.get('model', '-')} | {v.get('blind', '-')} | "
                      f"{v.get('ablated', '-')} | {v.get('short_by', '-')} |" for k, v in failed.items()]
    t = result.get("timings")
    if t:
        lines += ["", "## Stages", "", "| stage | state | wall s | work s |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['state']} | {v['wall_s']:.1f} | {v['work_s']:.1f} |" for k, v in t["stages"].items()]
        lines += ["", f"flow {t['flow_wall_s']:.1f} s, task work {t['work_s']:.1f} s, orchestration "
                  f"{t['overhead_s']:.1f} s ({100 * t['overhead_ratio']:.1f}%)"]
    lines += ["", "## Where to look", "", f"- MLflow: `{_ui_hint(result['tracking_uri'])}`",
              f"- RadBench report: `{result['radbench_dir']}/report.html`"]
    return "\n".join(lines) + "\n"


# The libraries the tasks import (~10 s together on the reference 2-core VM), in the order the tasks need them.
PRELOAD = ("great_expectations", "lightning", "mlflow", "radfm.validation.run", "radfm.train.train",
           "sentence_transformers", "radfm.eval.radbench")


def preload_imports(modules: tuple[str, ...] = PRELOAD) -> threading.Thread:
    """Import ``modules`` in a daemon thread and return it.

    Why: a run with no ``PREFECT_API_URL`` first waits ~10 s for Prefect's temporary API, a subprocess busy on
    one core, while the main thread only polls it. Importing the tasks' libraries meanwhile, on the other core,
    takes them off the tasks' clocks. A module that fails to import here is left alone: its task imports it
    again and reports the error where it belongs.
    """
    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the task that needs it raises it, with its own context
                continue

    thread = threading.Thread(target=run, name="radfm-preload-imports", daemon=True)
    thread.start()
    return thread


def quiet_console_tracebacks() -> None:
    """Keep tracebacks out of the terminal: Prefect logs a failed task's and flow's traceback on the console
    (three times for one error); the run's logs in the Prefect API keep them, and ``--debug`` shows them here."""
    import logging

    class NoTraceback(logging.Formatter):
        def __init__(self, inner: logging.Formatter | None) -> None:
            super().__init__()
            self.inner = inner or logging.Formatter()

        def format(self, record: logging.LogRecord) -> str:
            if record.exc_info or record.exc_text or record.stack_info:
                # a copy: the same record goes on to other handlers (the API's) with its traceback
                record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                                "stack_info": None})
            return self.inner.format(record)

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in ("prefect", "prefect.flow_runs",
                                                                          "prefect.task_runs"))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, NoTraceback):
                handler.setFormatter(NoTraceback(handler.formatter))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m flows.pipeline`` (and of ``radfm pipeline`` / ``radfm demo``)."""
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The parser of :func:`parse_args` (a test walks it: every option has help)."""
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=demo_tiny)")
    parser.add_argument("--refresh", action="store_true", help="recompute cached stages")
    parser.add_argument("--gate", default=None, help="promotion gate YAML/JSON (default: the built-in gate, which "
                        "refuses a version that does not beat both baselines on every closed family with >= 20 test "
                        "rows; `baselines: false` relaxes it). Refused: exit 2")
    parser.add_argument("--no-register", action="store_true", help="stop after RadBench: no MLflow model, no "
                        "registry version (and so no promotion)")
    parser.add_argument("--no-promote", action="store_true", help="register the version as challenger but leave "
                        "champion where it is (`radfm promote` later)")
    parser.add_argument("--eval-limit", type=int, default=None, help="score only the first N test rows in RadBench "
                        "(a quick look; the gate then judges fewer rows)")
    parser.add_argument("--data-kind", choices=["config", "dvc"], default="config",
                        help="config: the Hydra data group; dvc: the DVC-tracked --data-repo/--data-target "
                        "(`dvc pull`-ed first when a DVC remote is configured, else the workspace as it is)")
    parser.add_argument("--data-repo", default=".", help="DVC repository root (--data-kind dvc)")
    parser.add_argument("--data-target", default="data", help="the DVC-tracked folder (--data-kind dvc)")
    parser.add_argument("--data-manifest", default=None, help="the manifest inside --data-target, e.g. "
                        "medmd-synth/manifest.jsonl (default: the folder's own manifest.jsonl)")
    parser.add_argument("--data-version", default=None, help="fail unless the data has this version (md5)")
    parser.add_argument("--json", default=None, help="also write the run's result (timings, RadBench) here")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, in Prefect's logs "
                        "too (also RADFM_DEBUG=1); without it a known error is one line, exit 2")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pipeline [--refresh] [--no-promote] [--gate G] [--debug] [OVERRIDE …]`` → exit code: 0
    done, 2 a refused gate or a known error (one line on stderr), 1 a bug (its traceback)."""
    from radfm.cli_errors import debug_enabled, run_guarded

    args = parse_args(argv)
    debug = debug_enabled(args.debug)
    if not debug:
        quiet_console_tracebacks()
    return run_guarded("radfm pipeline", lambda: run_command(args), debug)


def run_command(args: argparse.Namespace) -> int:
    """Run the flow for parsed ``args``, print its summary and where to look → exit code (2: the gate refused)."""
    import os

    params = PipelineParams(overrides=args.overrides or ["experiment=demo_tiny"], refresh=args.refresh,
                            gate=args.gate, registry=not args.no_register, promote=not args.no_promote,
                            eval=EvalSpec(limit=args.eval_limit), data=data_spec(args))
    t0 = time.perf_counter()
    preload_imports()
    result = radfm_pipeline(params)
    total = time.perf_counter() - t0
    print("\n" + summary_markdown(result))
    prefect_home = os.environ.get("PREFECT_HOME", "")
    print(f"- Prefect UI: `PREFECT_HOME={prefect_home} prefect server start --host 127.0.0.1`"
          "   → http://127.0.0.1:4200 (this run is in that database)")
    print(f"\nwhole command: {total:.1f} s (flow {result['timings']['flow_wall_s']:.1f} s; the rest is Prefect's "
          "start-up of its local API)")
    if args.json:
        import json

        out = {k: v for k, v in result.items() if k != "summary"}
        out.update(command_wall_s=total, radbench=result["summary"]["tasks"],
                   families=result["summary"].get("families", {}))
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    failing = [k for k, v in result["summary"]["tasks"].items() if not v.get("beats_both")]
    if failing:
        print(f"WARNING: the model does not beat both baselines on {failing}: it is not learning from the images")
    return exit_code(result)


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The ``--data-*`` options as the flow's data parameter (``--data-kind dvc --data-manifest
    medmd-synth/manifest.jsonl`` is the data of the ``nightly-retrain`` deployment)."""
    return DataSpec(kind=args.data_kind, repo=args.data_repo, target=args.data_target, manifest=args.data_manifest,
                    version=args.data_version)


def exit_code(result: dict[str, Any]) -> int:
    """2 (one line on stderr) when the promotion gate refused the version, else 0. A refusal is recorded in the
    registry; the flow itself completes and returns its result (a scheduled retrain that is refused is normal)."""
    d = result.get("decision") or {}
    if not d.get("refused"):
        return 0
    print(f"radfm pipeline: {result.get('model_name')} version {d.get('version')} REFUSED by the promotion gate "
          f"(champion stays {d.get('champion_version') or 'unset'}): {d.get('reason')}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
